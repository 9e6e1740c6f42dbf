//! [`RedisStore`]: the shared store on Redis or Valkey.

use std::fmt;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::watch;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::seal::FINGERPRINT;
use super::store::{StoreFuture, Stored, TokenStore};
use crate::BoxError;

/// Writes the token and frees the lease, only if the caller still holds the lease: a replica
/// whose lease expired mid-fetch (and was taken by another) writes nothing.
/// The replicas waiting for that lease are told on [`WRITES_CHANNEL`]; `pcall`, so that a user
/// the server's ACLs do not let publish still writes (a script is not rolled back) and is told
/// it did.
const PUT_IF_OWNER: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if ARGV[5] ~= '' then
    redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
  end
  redis.call('DEL', KEYS[2])
  redis.pcall('PUBLISH', ARGV[4], KEYS[1])
  return 1
end
return 0";

/// The Pub/Sub channel a token's write is announced on (the message is the store key, which
/// holds no secret), so that replicas waiting for it read it at once.
pub const WRITES_CHANNEL: &str = "tower-bearer:written";

/// The value, its time to live by the server's clock (milliseconds; negative when there is no
/// value), whether its lease is held, and the refresh token kept beside it, read at one
/// instant.
const READ: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('EXISTS', KEYS[2]),
        redis.call('GET', KEYS[3]), redis.call('PTTL', KEYS[4])}";

/// Records a failed fetch for ARGV[2] ms and frees the lease, if the caller holds it; the
/// waiters are woken to read it.
const FAIL_IF_OWNER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[3], KEYS[2])
  return 1
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the token only if it is still the one rejected: the fingerprint is compared on the
/// server, so a token another replica wrote since is never dropped.
const DELETE_IF_FINGERPRINT: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, tonumber(ARGV[2]), tonumber(ARGV[3])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

static PUT_IF_OWNER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUT_IF_OWNER));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ));
static FAIL_IF_OWNER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FAIL_IF_OWNER));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static DELETE_IF_FINGERPRINT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(DELETE_IF_FINGERPRINT));

/// The shared store on Redis or Valkey (any server speaking RESP with Lua scripting: Redis 6 or
/// later, Valkey 7 or later), through the `redis` crate's [`ConnectionManager`], which
/// reconnects by itself after the server comes back.
///
/// The lease of a token's key is kept at the key followed by `:lease`. Writes and deletes that
/// depend on what is stored run as Lua scripts (`EVALSHA`, reloaded after a server restart), so
/// they are atomic on the server. Keys carry a hash tag, so a key and its lease are in the same
/// Redis Cluster slot (a cluster needs a connection that routes by key, which this type does
/// not make: implement [`TokenStore`] on a cluster connection).
///
/// ```no_run
/// use tower_bearer::shared::RedisStore;
///
/// # async fn run() -> Result<(), tower_bearer::BoxError> {
/// let store = RedisStore::connect("redis://redis.internal:6379/0").await?;
/// # drop(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    /// Bumped on each write announced on [`WRITES_CHANNEL`], by a task subscribed to it; none
    /// for a store made [from a connection](Self::from_connection).
    writes: Option<watch::Receiver<u64>>,
}

impl RedisStore {
    /// A store at `url` (`redis://[user:password@]host:port/db`; `rediss://` needs the `redis`
    /// crate's TLS features, which this crate does not turn on). Connects lazily: a server
    /// that is down at startup is one more store error, not a startup failure.
    ///
    /// The connection gives up on an answer after one second and on a connection attempt after
    /// half a second, and retries connecting with a backoff of at most half a second, so that
    /// sharing resumes soon after a restarted server answers; the shared layer's own
    /// [store timeout](super::SharedCacheLayer::store_timeout) is what bounds a request.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL, or no Tokio runtime is running.
    pub fn open(url: &str) -> Result<Self, BoxError> {
        // The connection manager spawns a task, which would panic outside a runtime.
        tokio::runtime::Handle::try_current()
            .map_err(|_| "RedisStore::open needs a Tokio runtime")?;
        let client = Client::open(url).map_err(sanitized)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            // Retried until the server answers: a reconnection that gave up would fail the
            // first operation after the server is back, making every replica fetch once. Each
            // operation is bounded by the store timeout anyway.
            .set_number_of_retries(usize::MAX)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(sanitized)?;
        let (notices, writes) = watch::channel(0);
        tokio::spawn(follow_writes(client, notices));
        Ok(Self {
            connection,
            writes: Some(writes),
        })
    }

    /// A store at `url`, as [`open`](Self::open) makes it, connected before it is returned if
    /// the server answers within a second. At startup, call this rather than `open`: the first
    /// store operation then does not pay for the connection, which could exceed the
    /// [store timeout](super::SharedCacheLayer::store_timeout) and make a replica fetch on its own
    /// just when the fleet starts together. A server that does not answer is not an error: the
    /// store connects later, as with `open`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        let store = Self::open(url)?;
        let mut connection = store.connection.clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<()>(&mut connection);
        let failure = match tokio::time::timeout(Duration::from_secs(1), ping).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(sanitized(error)),
            Err(_) => Some("no answer within 1 s".into()),
        };
        if let Some(error) = failure {
            tracing::warn!(%error, "the shared token store does not answer yet; connecting later");
        }
        Ok(store)
    }

    /// A store over a connection manager configured by the application. It does not follow
    /// the announcements of writes (that takes a Pub/Sub connection of its own, which
    /// [`open`](Self::open) makes): replicas waiting for another's fetch find its token at
    /// their next [poll](super::SharedCacheLayer::poll_interval).
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self {
            connection,
            writes: None,
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's info may hold a password.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// Follows [`WRITES_CHANNEL`] on a Pub/Sub connection of its own, bumping `notices` on each
/// message, until every [`RedisStore`] clone is dropped. Reconnects with a backoff of at most
/// half a second; writes missed while disconnected are covered by one bump on reconnecting
/// (waiting replicas then read the store again) and by their polling.
async fn follow_writes(client: Client, notices: watch::Sender<u64>) {
    let bump = || notices.send_modify(|count| *count = count.wrapping_add(1));
    let mut delay = Duration::from_millis(10);
    loop {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(WRITES_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            () = notices.closed() => return,
            subscribed = tokio::time::timeout(Duration::from_millis(500), subscribe) => subscribed,
        };
        if let Ok(Err(error)) = &subscribed {
            if error.code() == Some("NOPERM") {
                tracing::warn!(
                    channel = WRITES_CHANNEL,
                    "the shared token store does not let this user subscribe to the channel \
                     writes are announced on; replicas waiting for another's fetch poll instead"
                );
                // Dropping the sender closes the channel: waiters go on polling.
                return;
            }
        }
        if let Ok(Ok(pubsub)) = subscribed {
            delay = Duration::from_millis(10);
            bump();
            let mut messages = pubsub.into_on_message();
            loop {
                let next = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx));
                tokio::select! {
                    () = notices.closed() => return,
                    message = next => match message {
                        Some(_) => bump(),
                        // The connection is gone (a server restart, a network fault).
                        None => break,
                    },
                }
            }
        }
        tokio::select! {
            () = notices.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn lease_key(key: &str) -> String {
    format!("{key}:lease")
}

fn refresh_key(key: &str) -> String {
    format!("{key}:refresh")
}

fn failed_key(key: &str) -> String {
    format!("{key}:failed")
}

/// A Redis error as text that carries no command arguments or credentials: its kind and code.
fn sanitized(error: redis::RedisError) -> BoxError {
    let text = match error.code() {
        Some(code) => format!("redis error {:?} ({code})", error.kind()),
        None if error.is_timeout() => "redis: timed out".to_owned(),
        None if error.is_connection_refusal() => "redis: connection refused".to_owned(),
        None if error.is_io_error() => "redis: I/O error".to_owned(),
        None => format!("redis error {:?}", error.kind()),
    };
    text.into()
}

impl TokenStore for RedisStore {
    fn read<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Stored> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            type Read = (Option<Vec<u8>>, i64, i64, Option<Vec<u8>>, i64);
            let (value, ttl, leased, refresh, failed): Read = READ_SCRIPT
                .key(key)
                .key(lease_key(key))
                .key(refresh_key(key))
                .key(failed_key(key))
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            let mut stored = Stored::new(value, leased == 1);
            if let Some(refresh) = refresh {
                stored = stored.with_refresh(refresh);
            }
            if let Ok(failed) = u64::try_from(failed) {
                stored = stored.with_failed(Duration::from_millis(failed));
            }
            Ok(match u64::try_from(ttl) {
                Ok(ttl) => stored.with_ttl(Duration::from_millis(ttl)),
                // No value, or a value without a time to live (not written by this crate).
                Err(_) => stored,
            })
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let taken: Option<String> = redis::cmd("SET")
                .arg(lease_key(key))
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(taken.is_some())
        })
    }

    fn put_if_owner<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        value: &'a [u8],
        ttl: Duration,
        refresh: Option<(&'a [u8], Duration)>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (refresh, refresh_ttl) = refresh.unwrap_or((b"", Duration::ZERO));
            let written: i64 = PUT_IF_OWNER_SCRIPT
                .key(key)
                .key(lease_key(key))
                .key(refresh_key(key))
                .arg(owner)
                .arg(value)
                .arg(millis(ttl))
                .arg(WRITES_CHANNEL)
                .arg(refresh)
                .arg(millis(refresh_ttl))
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(written == 1)
        })
    }

    fn renew<'a>(&'a self, key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let renewed: i64 = RENEW_SCRIPT
                .key(lease_key(key))
                .arg(owner)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(renewed == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let released: i64 = RELEASE_SCRIPT
                .key(lease_key(key))
                .arg(owner)
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(released == 1)
        })
    }

    fn fail_if_owner<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        hold: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let failed: i64 = FAIL_IF_OWNER_SCRIPT
                .key(lease_key(key))
                .key(failed_key(key))
                .arg(owner)
                .arg(millis(hold))
                .arg(WRITES_CHANNEL)
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(failed == 1)
        })
    }

    fn writes(&self) -> Option<watch::Receiver<u64>> {
        self.writes.clone()
    }

    fn delete_if_fingerprint<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a [u8],
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            // Lua strings count from 1, both ends included.
            let deleted: i64 = DELETE_IF_FINGERPRINT_SCRIPT
                .key(key)
                .arg(fingerprint)
                .arg(FINGERPRINT.start + 1)
                .arg(FINGERPRINT.end)
                .invoke_async(&mut connection)
                .await
                .map_err(sanitized)?;
            Ok(deleted == 1)
        })
    }
}

/// A time to live in milliseconds, at least one (Redis refuses zero) and at most 2^46 (over
/// 2,000 years; Redis refuses a deadline past the largest 64-bit millisecond time).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 1 << 46)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(RedisStore::open("redis://127.0.0.1:1/").is_err());
    }

    #[tokio::test]
    async fn errors_name_no_credentials() {
        assert!(RedisStore::open("not a url").is_err());
        let error = RedisStore::open("redis+unknown://user:hunter2@127.0.0.1/").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
