//! A second cache level shared by a fleet of replicas, on Redis or Valkey (feature `redis`).
//!
//! When 200 replicas start at once, each one's [`TokenCache`](crate::TokenCache) would fetch
//! its own token: 200 token requests against an endpoint that rate-limits or bills them.
//! [`SharedCacheLayer`] wraps the token source in a layer that looks in a shared store first, so a
//! fleet fetches once:
//!
//! - **A hit**: the store holds a token that is still valid (and is not the one the cache is
//!   replacing): it is returned, and the source is not called.
//! - **A miss**: one replica takes the store's *lease* for that token (a lock with a time to
//!   live and an owner id), fetches from the source, writes the token, encrypted, with a time
//!   to live of its remaining lifetime, and frees the lease, both only if it still holds the
//!   lease (atomically, on the server). The others wait until the token is there, or the
//!   lease is gone and they take it: woken by the holder's write, which the store announces
//!   ([`TokenStore::writes`]; `RedisStore` publishes it on [`WRITES_CHANNEL`]), and reading the
//!   store every [`poll_interval`](SharedCacheLayer::poll_interval) (plus jitter) in case an
//!   announcement is lost. The holder renews its lease while its fetch runs; the
//!   lease of a replica that died expires after [`lease_ttl`](SharedCacheLayer::lease_ttl).
//! - **A rejection** (HTTP 401): the cache asks for a new token saying which one was rejected
//!   ([`TokenRequest::current`](crate::TokenRequest::current)). The store deletes it only if
//!   it still holds that same token, comparing fingerprints on the server; a token another
//!   replica already wrote in its place is kept and shared.
//!
//! The in-process cache stays the first level and its cached path is unchanged: the shared
//! level is visited only when the cache would call its source (a first fetch, a refresh ahead
//! of expiry, an expiry, a rejection), so at most once per token lifetime per replica.
//!
//! # The store is never a new way to fail
//!
//! Every store operation is bounded by [`store_timeout`](SharedCacheLayer::store_timeout) (50 ms by
//! default). Whatever goes wrong, the replica fetches from its source itself, as it would
//! without the shared level:
//!
//! | the store is | what happens |
//! |---|---|
//! | down (refused, reset, unreachable) | each fetch costs at most one store timeout more, then calls the source; the cache's single flight still makes that one fetch per replica and token. A warning is logged once per episode, each failed operation is counted in [`SharedStats::store_errors`]. When the store answers again, sharing resumes by itself (the Redis connection manager reconnects). |
//! | slow | as down, for an operation that takes longer than the timeout. One that answers within it adds its round trip: a hit reads once; a miss reads, takes the lease, reads again, and writes (four operations; releases and lease renewals run in tasks of their own). |
//! | flushed, restarted empty, or evicting | a miss: one replica fetches and writes the token again. A lease lost with the data makes a second replica fetch at worst. |
//! | answering garbage (another sealing key, another writer) | the value is not used: the replica takes the lease, fetches, and overwrites it. Counted as a store error; logged once until a stored value opens again. |
//! | fine, but the token endpoint refuses | the lease holder records the failure for the source's `Retry-After` (up to 5 minutes) or [`failure_hold`](SharedCacheLayer::failure_hold); the other replicas fail at once with it (a [`SourceError`](crate::SourceError) saying when to try again, counted in [`SharedStats::failures_shared`]) instead of asking the refusing server in turn. |
//! | holding a lease no one frees (its replica died mid-fetch) | waiters fetch after the lease expires, and fetch without the store once they waited [`max_wait`](SharedCacheLayer::max_wait). |
//!
//! # Keys and secrets
//!
//! A token is stored under the [prefix](SharedCacheLayer::prefix) followed by the SHA-256 digest of
//! the *identity* given to [`SharedCacheLayer::new`] (say what makes a token: the token endpoint,
//! client id and grant, never a secret; `oauth2::ClientCredentials::identity` says it for that
//! source) and of the request's [`TokenKey`](crate::TokenKey). Two sources with different
//! identities never share a token; nor do two token keys.
//!
//! Tokens (refresh tokens included) are encrypted with AES-256-GCM under a key derived from
//! the [`SealingKey`]; the store key is authenticated with them, so a value copied under
//! another key does not open. Storing tokens in clear needs [`SealingKey::insecure_plaintext`].
//! A stored token's remaining lifetime is read from the store's clock (the value's time to
//! live, which the writer set to the token's remaining lifetime; [`Stored::ttl`]), so replicas
//! whose clocks disagree still agree on when a token expires.
//!
//! # Refresh tokens
//!
//! The access token is stored without its refresh token. The grant's latest refresh token is
//! kept beside it, sealed under a key of its own that lives
//! [`refresh_token_ttl`](SharedCacheLayer::refresh_token_ttl), and goes only to the replica
//! holding the lease: after taking it, that replica reads the store again and hands the stored
//! refresh token to its source ([`TokenRequest::with_refresh_token`](crate::TokenRequest::with_refresh_token), which
//! `oauth2::RefreshTokenSource` redeems instead of its own). Its write of the new token and
//! refresh token checks, atomically on the server, that it still holds the lease: that is the
//! compare-and-swap. While a replica holds the lease no other replica writes, so the value it
//! replaces is the one it read (or none: expired, or deleted by a rejection), no two replicas
//! redeem one refresh token, and a replica whose lease expired mid-fetch writes nothing over its
//! successor's. A fleet can therefore share one grant even at a server that rotates refresh
//! tokens and revokes a grant whose refresh token is reused. With several
//! [token keys](crate::TokenKey) of one rotating grant, each key keeps its own copy and a refresh
//! for one makes the others' stale: share such a grant with one key.
//!
//! # Why the `redis` crate
//!
//! [`RedisStore`] uses the `redis` crate rather than `fred`. Both are maintained and speak
//! to Valkey too. `redis` gives what this store needs and no more: Lua scripts invoked by hash
//! and reloaded after a server restart, and a tokio connection manager that connects lazily
//! and reconnects by itself. With the features used here (`tokio-comp`, `connection-manager`,
//! `script`) it adds no TLS stack and no OpenSSL (42 crates over the default features, most
//! of them `url`'s Unicode tables); `fred`'s
//! strengths (pools, cluster and sentinel routing, client-side caching, its own reconnection
//! policies and metrics) serve applications that talk to Redis all the time, not a store
//! visited once per token lifetime. A cluster or sentinel deployment can implement
//! [`TokenStore`] on either crate.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_bearer::shared::{RedisStore, SealingKey, SharedCacheLayer};
//! use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenCache, TokenRequest};
//! use tower::Layer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_bearer::BoxError> {
//! # let key_bytes = [0u8; 32];
//! // The same 32-byte key on every replica, from the secret store the app already uses.
//! let key = SealingKey::new(key_bytes);
//! let store = RedisStore::connect("redis://redis.internal:6379/0").await?;
//! let source = source_fn(|_req: TokenRequest| async {
//!     // The real grant, such as `oauth2::ClientCredentials`.
//!     Ok::<_, std::io::Error>(Token::new("t0k3n").with_expires_in(Duration::from_secs(300)))
//! });
//! let shared = SharedCacheLayer::new(store, key, "https://login.example.com/token client=billing")
//!     .store_timeout(Duration::from_millis(50));
//! let cache = TokenCache::builder(shared.layer(source)).build();
//! let auth = BearerAuthLayer::from_cache(cache);
//! # drop(auth);
//! # Ok(())
//! # }
//! ```

mod redis;
mod seal;
mod service;
mod store;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, CacheLabel};
use tower_layer::Layer;

pub use self::redis::{RedisStore, WRITES_CHANNEL};
pub use seal::{InvalidKeyLength, SealingKey, FINGERPRINT};
pub use service::SharedCache;
pub use store::{StoreFuture, Stored, TokenStore};

/// Adds the shared store in front of a token source: see the [module docs](self).
///
/// Clones share their store, key and counters.
#[derive(Clone)]
pub struct SharedCacheLayer {
    store: Arc<dyn TokenStore>,
    sealing: Arc<SealingKey>,
    config: Config,
    state: Arc<State>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) identity: String,
    pub(crate) prefix: String,
    pub(crate) store_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    /// `None`: 10 s, or twice the lease's time to live if that is more.
    pub(crate) max_wait: Option<Duration>,
    pub(crate) poll_interval: Duration,
    pub(crate) min_remaining: Duration,
    pub(crate) default_lifetime: Duration,
    pub(crate) refresh_token_ttl: Duration,
    pub(crate) failure_hold: Duration,
}

impl Config {
    pub(crate) fn max_wait(&self) -> Duration {
        self.max_wait
            .unwrap_or_else(|| (self.lease_ttl * 2).max(Duration::from_secs(10)))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The identity is the user's text, which may carry more than it should: its digest
        // tells configurations apart without showing it.
        let digest = ring::digest::digest(&ring::digest::SHA256, self.identity.as_bytes());
        let digest: String = digest.as_ref()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        f.debug_struct("Config")
            .field("identity_sha256", &format_args!("{digest}…"))
            .field("prefix", &self.prefix)
            .field("store_timeout", &self.store_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("max_wait", &self.max_wait())
            .field("poll_interval", &self.poll_interval)
            .field("min_remaining", &self.min_remaining)
            .field("default_lifetime", &self.default_lifetime)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("failure_hold", &self.failure_hold)
            .finish()
    }
}

/// What the counters and the once-per-episode log share between a layer and its services.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) failures_shared: AtomicU64,
    /// Whether the store is failing: set by the first error of an episode (which logs), cleared
    /// by the next answer.
    pub(crate) failing: AtomicBool,
    /// Whether a value that does not open was logged, since the last one that opened.
    pub(crate) garbage: AtomicBool,
    /// The `cache` label of this level's [metrics](crate::metrics).
    pub(crate) label: CacheLabel,
}

// Each count goes to `SharedStats` and to the metrics recorder, if any.
impl State {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        metrics::store_hit(&self.label);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::store_miss(&self.label);
    }

    pub(crate) fn lease_wait(&self) {
        self.lease_waits.fetch_add(1, Ordering::Relaxed);
        metrics::store_lease_wait(&self.label);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        metrics::store_error(&self.label);
    }
}

/// What a shared level has done so far. Read it with [`SharedCacheLayer::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Token requests answered from the store (after waiting for another replica's fetch, or
    /// not).
    pub hits: u64,
    /// Token requests that found no usable token, took the lease and called the source.
    pub misses: u64,
    /// Token requests that waited for another replica's lease.
    pub lease_waits: u64,
    /// Store operations that failed, timed out, or read a value that does not open.
    pub store_errors: u64,
    /// Token requests that called the source without the store: it failed, or the lease was
    /// waited for [`max_wait`](SharedCacheLayer::max_wait).
    pub bypasses: u64,
    /// Rejected tokens deleted from the store (deletes that found another token are not
    /// counted).
    pub deletes: u64,
    /// Token requests answered with another replica's failure, recorded in the store moments
    /// before, instead of asking the token endpoint again (see
    /// [`failure_hold`](SharedCacheLayer::failure_hold)).
    pub failures_shared: u64,
}

impl SharedCacheLayer {
    /// A shared level on `store`, sealing tokens with `key`, for the tokens of the source
    /// described by `identity` (the token endpoint, client id and grant, or any text that
    /// differs between sources that must not share tokens; it is hashed into the store key, but
    /// must not hold a secret).
    pub fn new(store: impl TokenStore, key: SealingKey, identity: impl Into<String>) -> Self {
        Self {
            store: Arc::new(store),
            sealing: Arc::new(key),
            config: Config {
                identity: identity.into(),
                prefix: "tower-bearer:".to_owned(),
                store_timeout: Duration::from_millis(50),
                lease_ttl: Duration::from_secs(5),
                max_wait: None,
                poll_interval: Duration::from_millis(25),
                min_remaining: Duration::from_secs(1),
                default_lifetime: Duration::from_secs(3600),
                refresh_token_ttl: Duration::from_secs(24 * 3600),
                failure_hold: Duration::from_secs(1),
            },
            state: Arc::default(),
        }
    }

    /// The value of the label `cache` on the store [metrics] this level records
    /// (`tower_bearer_store_*`), as [`TokenCacheBuilder::metrics_label`] does for a cache. Give
    /// it a fixed name from your configuration.
    ///
    /// Default: none (the store metrics carry no `cache` label).
    ///
    /// [`TokenCacheBuilder::metrics_label`]: crate::cache::TokenCacheBuilder::metrics_label
    #[cfg(feature = "metrics")]
    pub fn metrics_label(mut self, name: impl Into<String>) -> Self {
        // Set before the layer makes any service: the state is not shared yet.
        self.state = Arc::new(State {
            label: CacheLabel::named(name.into()),
            ..State::default()
        });
        self
    }

    /// How long a refresh token stays in the store after it was written (each refresh writes
    /// the grant's latest again). Set it to the refresh token's lifetime at the server, or
    /// less: a replica that finds no refresh token in the store redeems its own.
    ///
    /// Default: 24 hours.
    pub fn refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.config.refresh_token_ttl = ttl;
        self
    }

    /// How long the fleet leaves a token alone after the replica holding its lease failed to
    /// get it, when the source did not say when to come back: meanwhile the other replicas
    /// fail at once with that failure (a [`SourceError`](crate::SourceError) saying when to try
    /// again) instead of taking the lease in turn and asking a server that just refused. A
    /// source error with a `Retry-After` ([`SourceError::with_retry_after`](crate::SourceError::with_retry_after))
    /// holds the fleet that long instead. Either is capped at 5 minutes, as is a hold read from
    /// the store.
    ///
    /// Default: 1 s.
    pub fn failure_hold(mut self, hold: Duration) -> Self {
        self.config.failure_hold = hold.min(service::MAX_FAILURE_HOLD);
        self
    }

    /// The text store keys start with, to share a server with other applications.
    ///
    /// Default: `tower-bearer:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// How long one store operation may take before the replica goes on without the store.
    ///
    /// Default: 50 ms.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// How long a lease lasts unless renewed: a replica renews its lease every third of this
    /// while its fetch runs, so a lease expires only when its replica died (or cannot reach
    /// the store), and another replica then fetches. Shorter takes over sooner after a crash;
    /// it must stay well above the store's round trip. At least 30 ms (shorter would renew in a
    /// loop).
    ///
    /// Default: 5 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How long a replica waits for other replicas' leases before it fetches without the
    /// store. Keep it, plus a fetch, under the cache's
    /// [fetch timeout](crate::cache::TokenCacheBuilder::fetch_timeout).
    ///
    /// Default: 10 s, or twice the [lease's time to live](Self::lease_ttl) if that is more, so
    /// that a dead replica's lease can expire and a live one fetch. (A live replica renews its
    /// lease however long its fetch takes: waiting for it is waiting for a token.)
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.config.max_wait = Some(wait);
        self
    }

    /// How often a replica waiting for another's lease reads the store again, if no announced
    /// write ([`TokenStore::writes`]) wakes it first; each wait is this plus a random part of up
    /// to as much again, so that waiters spread out.
    ///
    /// At least 1 ms.
    ///
    /// Default: 25 ms (waits of 25 to 50 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The least remaining lifetime a stored token must have to be used; one that expires sooner
    /// is fetched anew (and the source's token is not stored when it is this short).
    ///
    /// Default: 1 s.
    pub fn min_remaining(mut self, remaining: Duration) -> Self {
        self.config.min_remaining = remaining;
        self
    }

    /// How long a token without a stated expiry is kept in the store. Match it with the
    /// cache's [default lifetime](crate::cache::TokenCacheBuilder::default_lifetime).
    ///
    /// Default: 1 hour.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = lifetime;
        self
    }

    /// What the services of this layer (and its clones) have done so far.
    pub fn stats(&self) -> SharedStats {
        self.state.stats()
    }
}

impl<S> Layer<S> for SharedCacheLayer {
    type Service = SharedCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SharedCache::new(
            inner,
            Arc::new(service::Shared {
                store: self.store.clone(),
                sealing: self.sealing.clone(),
                config: self.config.clone(),
                state: self.state.clone(),
                random: ring::rand::SystemRandom::new(),
            }),
        )
    }
}

impl fmt::Debug for SharedCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCacheLayer")
            .field("sealing", &self.sealing)
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn stats(&self) -> SharedStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SharedStats {
            hits: read(&self.hits),
            misses: read(&self.misses),
            lease_waits: read(&self.lease_waits),
            store_errors: read(&self.store_errors),
            bypasses: read(&self.bypasses),
            deletes: read(&self.deletes),
            failures_shared: read(&self.failures_shared),
        }
    }
}
