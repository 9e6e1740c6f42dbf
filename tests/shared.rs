//! The shared cache level on a real `redis-server` (Debian's package; `scripts/test.sh`
//! installs it): distributed single flight across caches and across processes, a lease holder
//! that dies, a server killed and restarted under traffic, rejection across the fleet, and
//! tokens encrypted at rest.
//!
//! Redis runs in real time, so these tests do too, with short lifetimes and every wait bounded.
//! The fleet tests run this very binary again as child processes: the ignored test
//! `child_replica` is their entry point, selected with `--ignored --exact` and given its
//! configuration in environment variables.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};
use tower_bearer::oauth2::RefreshTokenSource;
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
use tower_bearer::shared::{
    RedisStore, SealingKey, SharedCacheLayer, SharedStats, StoreFuture, Stored, TokenStore,
};
use tower_bearer::{BearerAuthLayer, Reason, RefreshToken, Token, TokenCache, TokenRequest};

use support::redis_server::{RedisServer, Reply};
use support::{loopback, read_request, within, write_response, Calls};

const KEY: [u8; 32] = [0x5a; 32];
const CHILD_ENV: &str = "TOWER_BEARER_SHARED_CHILD";

/// A replica's shared level: its own connection to the server.
async fn shared_layer(redis: &RedisServer) -> SharedCacheLayer {
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    SharedCacheLayer::new(store, SealingKey::new(KEY), "test-issuer client=fleet")
}

/// Each cache's first `token()` in a task of its own, all started together.
fn all_at_once(
    caches: &[TokenCache],
) -> Vec<tokio::task::JoinHandle<Result<Token, tower_bearer::Error>>> {
    caches
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A token endpoint served over HTTP, counting its requests
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    first_arrived: Arc<Notify>,
}

impl Endpoint {
    /// Answers `fleet-<n>` (living five minutes) after `delay`; the first request is never
    /// answered if `hold_first`.
    async fn start(delay: Duration, hold_first: bool) -> Self {
        let (listener, addr) = loopback().await;
        let this = Self {
            addr,
            requests: Arc::default(),
            first_arrived: Arc::default(),
        };
        let server = this.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let server = server.clone();
                tokio::spawn(async move { server.answer(&mut stream, delay, hold_first).await });
            }
        });
        this
    }

    async fn answer(&self, stream: &mut TcpStream, delay: Duration, hold_first: bool) {
        if read_request(stream).await.is_none() {
            return;
        }
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            self.first_arrived.notify_one();
            if hold_first {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(delay).await;
        let body =
            format!(r#"{{"access_token":"fleet-{n}","token_type":"Bearer","expires_in":300}}"#);
        let _ = write_response(stream, "200 OK", "application/json", "", body.as_bytes()).await;
    }

    fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A replica as an application builds it: client credentials at `token_url`, behind the shared
/// level, behind the cache.
async fn replica(token_url: &str, redis_url: &str, lease_ttl: Duration) -> TokenCache {
    let endpoint = TokenEndpoint::builder(token_url, "fleet")
        .client_secret("s3cr3t")
        .build()
        .unwrap();
    let source = ClientCredentials::new(endpoint);
    let store = RedisStore::connect(redis_url).await.unwrap();
    let shared = SharedCacheLayer::new(store, SealingKey::new(KEY), source.identity())
        .lease_ttl(lease_ttl)
        .max_wait(lease_ttl * 3);
    TokenCache::builder(shared.layer(source)).build()
}

/// Runs this test binary again as a replica process that fetches one token and prints it.
fn spawn_replica(endpoint: &Endpoint, redis: &RedisServer, lease_ttl: Duration) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_replica",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("CHILD_TOKEN_URL", endpoint.token_url())
        .env("CHILD_REDIS_URL", redis.url())
        .env("CHILD_LEASE_TTL_MS", lease_ttl.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The token a replica process printed.
fn printed_token(child: Child) -> String {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "a replica process failed");
    let text = String::from_utf8(output.stdout).unwrap();
    // The test harness prints the test's name on the same line.
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("TOKEN="))
        .unwrap_or_else(|| panic!("no token printed in {text:?}"))
        .to_owned()
}

#[test]
#[ignore = "the entry point of the replica processes the fleet tests start"]
fn child_replica() {
    assert_eq!(
        std::env::var(CHILD_ENV).as_deref(),
        Ok("1"),
        "run by the fleet tests only"
    );
    let var = |name: &str| std::env::var(name).unwrap();
    let lease_ttl = Duration::from_millis(var("CHILD_LEASE_TTL_MS").parse().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = runtime.block_on(async {
        let cache = replica(&var("CHILD_TOKEN_URL"), &var("CHILD_REDIS_URL"), lease_ttl).await;
        cache.token().await.unwrap()
    });
    println!("TOKEN={}", token.access_token().secret());
}

// ---------------------------------------------------------------------------------------------
// A fleet fetches once
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_caches_cold_together_fetch_once() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::from_millis(200), Duration::from_secs(300));
    // Each replica its own connection, as separate processes would have.
    let mut layers = Vec::new();
    for _ in 0..64 {
        layers.push(shared_layer(&redis).await);
    }
    let caches: Vec<TokenCache> = layers
        .iter()
        .map(|layer| TokenCache::new(layer.layer(source.clone())))
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = caches
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await.map(|t| t.access_token().clone()) })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(
            within(Duration::from_secs(10), "a replica's token", task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let slowest = started.elapsed();
    assert_eq!(calls.count(), 1, "token requests for 64 replicas");
    assert!(tokens.iter().all(|t| t.secret() == "tok-1"));
    let total =
        |count: fn(SharedStats) -> u64| layers.iter().map(|l| count(l.stats())).sum::<u64>();
    assert_eq!((total(|s| s.misses), total(|s| s.hits)), (1, 63));
    assert_eq!(total(|s| s.store_errors) + total(|s| s.bypasses), 0);
    // The fetch (200 ms), plus a few store round trips and polls (25-50 ms each).
    assert!(
        slowest < Duration::from_secs(2),
        "slowest replica: {slowest:?}"
    );
    eprintln!("64 replicas cold: 1 token request, slowest replica after {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_replicas_are_woken_by_the_write_not_by_their_poll() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::from_millis(200), Duration::from_secs(300));
    // Polls 20-40 s apart: a replica that finds its token sooner was told of the write.
    let mut layers = Vec::new();
    for _ in 0..8 {
        layers.push(
            shared_layer(&redis)
                .await
                .poll_interval(Duration::from_secs(20))
                .max_wait(Duration::from_secs(60)),
        );
    }
    let caches: Vec<TokenCache> = layers
        .iter()
        .map(|layer| TokenCache::new(layer.layer(source.clone())))
        .collect();
    let started = Instant::now();
    let tasks = all_at_once(&caches);
    for task in tasks {
        let token = within(Duration::from_secs(10), "a replica's token", task).await;
        assert_eq!(token.unwrap().unwrap().access_token().secret(), "tok-1");
    }
    let slowest = started.elapsed();
    assert_eq!(calls.count(), 1);
    let waits: u64 = layers.iter().map(|layer| layer.stats().lease_waits).sum();
    assert!(
        waits >= 1,
        "no replica waited for the lease: the test shows nothing"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "the slowest replica took {slowest:?}: woken by its poll, not by the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_longer_than_the_lease_keeps_the_lease() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    // A fetch of 1.2 s, four times the lease's 300 ms: renewed every 100 ms, the lease stays.
    let source = calls.lasting(Duration::from_millis(1200), Duration::from_secs(300));
    let mut caches = Vec::new();
    for _ in 0..4 {
        let layer = shared_layer(&redis)
            .await
            .lease_ttl(Duration::from_millis(300));
        caches.push(TokenCache::new(layer.layer(source.clone())));
    }
    let tasks = all_at_once(&caches);
    for task in tasks {
        let token = within(Duration::from_secs(10), "a replica's token", task).await;
        assert_eq!(token.unwrap().unwrap().access_token().secret(), "tok-1");
    }
    assert_eq!(calls.count(), 1, "one fetch, however long it took");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_cold_together_make_one_token_request() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::start(Duration::from_millis(300), false).await;
    let lease_ttl = Duration::from_secs(5);
    let children: Vec<Child> = (0..8)
        .map(|_| spawn_replica(&endpoint, &redis, lease_ttl))
        .collect();
    let tokens = within(
        Duration::from_secs(60),
        "eight replica processes",
        tokio::task::spawn_blocking(move || {
            children.into_iter().map(printed_token).collect::<Vec<_>>()
        }),
    )
    .await
    .unwrap();
    assert_eq!(endpoint.count(), 1, "token requests from 8 processes");
    assert_eq!(tokens, vec!["fleet-1"; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_fetch_is_taken_over_after_the_lease_ttl() {
    let redis = RedisServer::start();
    // The first token request (the holder's) is never answered.
    let endpoint = Endpoint::start(Duration::from_millis(50), true).await;
    let lease_ttl = Duration::from_millis(1500);
    let mut holder = spawn_replica(&endpoint, &redis, lease_ttl);
    within(
        Duration::from_secs(30),
        "the holder's token request",
        endpoint.first_arrived.notified(),
    )
    .await;
    let lease_taken = Instant::now();
    let Reply::Array(leases) = redis.raw(&[b"KEYS", b"tower-bearer:*:lease"]) else {
        panic!("KEYS did not answer an array");
    };
    assert_eq!(leases.len(), 1, "the holder took the lease before fetching");
    holder.kill().unwrap();
    holder.wait().unwrap();

    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(replica(&endpoint.token_url(), &redis.url(), lease_ttl).await);
    }
    let tasks = all_at_once(&caches);
    for task in tasks {
        let token = within(Duration::from_secs(10), "a replica's token", task)
            .await
            .unwrap()
            .expect("every request succeeds");
        assert_eq!(token.access_token().secret(), "fleet-2");
    }
    let took = lease_taken.elapsed();
    assert_eq!(
        endpoint.count(),
        2,
        "the dead holder's request, then one more"
    );
    assert!(
        took >= lease_ttl - Duration::from_millis(200),
        "taken over after {took:?}, before the lease expired"
    );
}

// ---------------------------------------------------------------------------------------------
// The store is never a new way to fail
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_traffic_then_restarted() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let calls = Calls::default();
    // Two-second tokens: each replica refreshes about every 0.7 s.
    let source = calls.lasting(Duration::from_millis(20), Duration::from_secs(2));
    let replicas = 4;
    let mut layers = Vec::new();
    for _ in 0..replicas {
        layers.push(shared_layer(&redis).await);
    }
    let caches: Vec<TokenCache> = layers
        .iter()
        .map(|layer| TokenCache::new(layer.layer(source.clone())))
        .collect();
    let hits = |layers: &[SharedCacheLayer]| layers.iter().map(|l| l.stats().hits).sum::<u64>();
    let errors =
        |layers: &[SharedCacheLayer]| layers.iter().map(|l| l.stats().store_errors).sum::<u64>();

    // Steady traffic: every replica asks for its token every 10 ms, for `period`.
    let traffic = |period: Duration| {
        let caches = caches.clone();
        async move {
            let end = Instant::now() + period;
            let mut served = 0usize;
            while Instant::now() < end {
                for cache in &caches {
                    let token =
                        within(Duration::from_secs(1), "a request's token", cache.token()).await;
                    token.expect("no request fails");
                    served += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            served
        }
    };

    traffic(Duration::from_secs(3)).await;
    let shared_before = calls.count();
    assert!(
        hits(&layers) > 0,
        "replicas shared tokens while the server was up"
    );

    redis.kill();
    let calls_at_kill = calls.count();
    let served = traffic(Duration::from_secs(3)).await;
    let while_down = calls.count() - calls_at_kill;
    assert!(served > 100, "requests went on: {served}");
    assert!(errors(&layers) > 0, "the store errors were counted");
    // Each replica fetches its own token about every 0.7 s: 4 x 3 s / 0.7 s ~ 17, and never
    // once per request.
    assert!(
        while_down <= replicas * 8,
        "{while_down} token requests in 3 s while down"
    );

    let _restarted = RedisServer::start_on(port);
    let hits_at_restart = hits(&layers);
    // The connections come back on their own; allow them a few seconds.
    let mut resumed = false;
    for _ in 0..10 {
        traffic(Duration::from_millis(500)).await;
        if hits(&layers) > hits_at_restart {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "sharing resumed after the restart");
    let calls_resumed = calls.count();
    traffic(Duration::from_secs(3)).await;
    let after = calls.count() - calls_resumed;
    assert!(
        after < while_down,
        "shared again: {after} token requests in 3 s, {while_down} while down"
    );
    eprintln!(
        "token requests: {shared_before} in 3 s up, {while_down} in 3 s down, {after} in 3 s after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_store_is_replaced() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::ZERO, Duration::from_secs(300));
    let layer = shared_layer(&redis).await;
    TokenCache::new(layer.layer(source.clone()))
        .token()
        .await
        .unwrap();
    let key = redis.token_keys().remove(0);
    redis.raw(&[b"SET", &key, b"\x01not a sealed token at all, just bytes"]);

    let other = shared_layer(&redis).await;
    let token = TokenCache::new(other.layer(source)).token().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-2");
    assert_eq!(other.stats().store_errors, 1);
    let value = redis.only_value();
    assert_eq!(value[0], 1, "overwritten with a sealed token (format 1)");
    assert!(!value.ends_with(b"just bytes"));
}

/// A store that never answers.
struct Silent;

impl TokenStore for Silent {
    fn read<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Stored> {
        Box::pin(std::future::pending())
    }
    fn try_lease<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> StoreFuture<'a, bool> {
        Box::pin(std::future::pending())
    }
    fn put_if_owner<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a [u8],
        _: Duration,
        _: Option<(&'a [u8], Duration)>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(std::future::pending())
    }
    fn release<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::pending())
    }
    fn delete_if_fingerprint<'a>(&'a self, _: &'a str, _: &'a [u8]) -> StoreFuture<'a, bool> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_does_not_answer_costs_one_store_timeout() {
    let calls = Calls::default();
    let source = calls.lasting(Duration::from_millis(100), Duration::from_secs(300));
    let layer = SharedCacheLayer::new(Silent, SealingKey::new(KEY), "silent")
        .store_timeout(Duration::from_millis(30));
    let log = support::Log::default();
    let _logging = tracing::subscriber::set_default(log.subscriber(
        tracing::Level::WARN,
        tracing_subscriber::fmt::format::FmtSpan::NONE,
    ));
    let caches: Vec<TokenCache> = (0..3)
        .map(|_| TokenCache::new(layer.layer(source.clone())))
        .collect();
    let started = Instant::now();
    for cache in &caches {
        cache.token().await.unwrap();
    }
    // Each replica: one store timeout, then its own fetch.
    assert_eq!(started.elapsed(), Duration::from_millis(3 * 130));
    assert_eq!(calls.count(), 3);
    let stats = layer.stats();
    assert_eq!((stats.store_errors, stats.bypasses, stats.hits), (3, 3, 0));
    let warnings = log.lines_with("the shared token store failed");
    assert_eq!(warnings.len(), 1, "logged once per episode: {warnings:?}");
}

// ---------------------------------------------------------------------------------------------
// Rejection across the fleet, and secrets at rest
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_of_a_token_already_replaced_deletes_nothing() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::ZERO, Duration::from_secs(300));
    let (a_layer, b_layer) = (shared_layer(&redis).await, shared_layer(&redis).await);
    let a = TokenCache::new(a_layer.layer(source.clone()));
    let b = TokenCache::new(b_layer.layer(source.clone()));

    assert_eq!(a.token().await.unwrap().access_token().secret(), "tok-1");
    assert_eq!(b.token().await.unwrap().access_token().secret(), "tok-1");
    // Replica A replaces tok-1 (a forced refresh will not take the token it replaces).
    assert_eq!(a.refresh().await.unwrap().access_token().secret(), "tok-2");
    let stored = redis.only_value();

    // Replica B's API refuses tok-1, which B still holds.
    let api = service_fn(|req: Request<Full<Bytes>>| async move {
        let auth = req
            .headers()
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let status = if auth == "Bearer tok-1" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(auth).unwrap())
    });
    let client = BearerAuthLayer::from_cache(b.clone()).layer(api);
    let response = client
        .oneshot(support::get("http://api.test/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.body(),
        "Bearer tok-2",
        "replayed with the fleet's newer token"
    );

    assert_eq!(
        redis.only_value(),
        stored,
        "the newer token is still stored"
    );
    assert_eq!(b_layer.stats().deletes, 0);
    assert_eq!(calls.count(), 2, "no token request for the rejection");

    // A rejection of the stored token itself deletes it, and one new token is fetched.
    let rejected = Token::new("tok-2");
    let fresh = b_layer
        .layer(source.clone())
        .oneshot(TokenRequest::new(Reason::Rejected).with_current(rejected))
        .await
        .unwrap();
    assert_eq!(fresh.access_token().secret(), "tok-3");
    assert_eq!(b_layer.stats().deletes, 1);
    assert_ne!(redis.only_value(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_are_ciphertext() {
    let redis = RedisServer::start();
    let source = tower_bearer::source_fn(|_req: TokenRequest| async {
        Ok::<_, std::io::Error>(
            Token::new("access-in-the-clear")
                .with_refresh_token("refresh-in-the-clear".into())
                .with_expires_in(Duration::from_secs(300)),
        )
    });
    let cache = TokenCache::new(shared_layer(&redis).await.layer(source));
    cache.token().await.unwrap();
    let value = redis.only_value();
    let contains = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"access-in-the-clear") && !contains(b"refresh-in-the-clear"));
    let key = String::from_utf8(redis.token_keys().remove(0)).unwrap();
    // The refresh token, kept beside the token under a key of its own, sealed too.
    let refresh_key = format!("{key}:refresh");
    let Reply::Bulk(Some(refresh)) = redis.raw(&[b"GET", refresh_key.as_bytes()]) else {
        panic!("no refresh token beside the token");
    };
    assert!(!refresh.windows(20).any(|w| w == b"refresh-in-the-clear"));
    assert!(
        !key.contains("fleet") && !key.contains("test-issuer"),
        "{key}"
    );
    // The time to live in the store follows the token's lifetime.
    let Reply::Integer(ttl) = redis.raw(&[b"PTTL", key.as_bytes()]) else {
        panic!("PTTL");
    };
    assert!((290_000..=300_000).contains(&ttl), "{ttl} ms");

    // The same check sees a token stored in clear.
    redis.raw(&[b"FLUSHALL"]);
    let store = RedisStore::open(&redis.url()).unwrap();
    let clear = SharedCacheLayer::new(store, SealingKey::insecure_plaintext(), "test-issuer");
    TokenCache::new(clear.layer(source)).token().await.unwrap();
    let value = redis.only_value();
    assert!(value.windows(19).any(|w| w == b"access-in-the-clear"));
}

// ---------------------------------------------------------------------------------------------
// The store's atomic operations, and a holder whose write fails
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_owner_writes_renews_or_releases() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let (key, ttl) = ("tower-bearer:{ownership}", Duration::from_secs(30));
    assert!(store.try_lease(key, "owner-a", ttl).await.unwrap());
    assert!(
        !store.try_lease(key, "owner-b", ttl).await.unwrap(),
        "a second lease"
    );
    assert!(!store
        .put_if_owner(key, "owner-b", b"b", ttl, None)
        .await
        .unwrap());
    assert!(!store.renew(key, "owner-b", ttl).await.unwrap());
    assert!(!store.release(key, "owner-b").await.unwrap());
    let stored = store.read(key).await.unwrap();
    assert_eq!(
        (stored.value, stored.leased),
        (None, true),
        "b changed nothing"
    );

    assert!(store.renew(key, "owner-a", ttl).await.unwrap());
    assert!(store
        .put_if_owner(key, "owner-a", b"a", ttl, Some((b"r", ttl)))
        .await
        .unwrap());
    let stored = store.read(key).await.unwrap();
    assert_eq!(stored.value.as_deref(), Some(&b"a"[..]));
    assert_eq!(
        stored.refresh.as_deref(),
        Some(&b"r"[..]),
        "the refresh token beside it"
    );
    assert!(!stored.leased, "the write freed the lease");
    let left = stored.ttl.expect("the server's time to live");
    assert!(left > Duration::from_secs(25) && left <= ttl, "{left:?}");

    // A lease that expired and was taken by another: its first holder writes nothing.
    let short = Duration::from_millis(100);
    assert!(store.try_lease(key, "owner-c", short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.try_lease(key, "owner-d", ttl).await.unwrap());
    assert!(!store
        .put_if_owner(key, "owner-c", b"c", ttl, None)
        .await
        .unwrap());
    assert_eq!(
        store.read(key).await.unwrap().value.as_deref(),
        Some(&b"a"[..])
    );
}

/// A store whose writes never answer in time (the write is lost with its timeout).
struct SlowWrites(RedisStore);

impl TokenStore for SlowWrites {
    fn read<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Stored> {
        self.0.read(key)
    }
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.0.try_lease(key, owner, ttl)
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
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.0.put_if_owner(key, owner, value, ttl, refresh).await
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> StoreFuture<'a, bool> {
        self.0.release(key, owner)
    }
    fn delete_if_fingerprint<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a [u8],
    ) -> StoreFuture<'a, bool> {
        self.0.delete_if_fingerprint(key, fingerprint)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_frees_the_lease_at_once() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::from_millis(20), Duration::from_secs(300));
    let slow = RedisStore::connect(&redis.url()).await.unwrap();
    fn layer(store: impl TokenStore) -> SharedCacheLayer {
        SharedCacheLayer::new(
            store,
            SealingKey::new(KEY),
            "test-issuer client=slow-writes",
        )
        .lease_ttl(Duration::from_secs(20))
        .max_wait(Duration::from_secs(60))
    }
    let first = TokenCache::new(layer(SlowWrites(slow)).layer(source.clone()));
    within(
        Duration::from_secs(5),
        "the first replica's token",
        first.token(),
    )
    .await
    .unwrap();
    // Its write timed out and was lost; its lease must not make the next replica wait for the
    // lease's 20 s.
    let second_store = RedisStore::connect(&redis.url()).await.unwrap();
    let second = TokenCache::new(layer(second_store).layer(source.clone()));
    let token = within(
        Duration::from_secs(5),
        "the second replica's token",
        second.token(),
    )
    .await
    .unwrap();
    assert_eq!(
        token.access_token().secret(),
        "tok-2",
        "fetched again, nothing was shared"
    );
    assert_eq!(calls.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_never_expires_is_shared() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::from_millis(20), Duration::MAX);
    let mut caches = Vec::new();
    for _ in 0..2 {
        caches.push(TokenCache::new(
            shared_layer(&redis).await.layer(source.clone()),
        ));
    }
    for cache in &caches {
        let token = within(Duration::from_secs(5), "a replica's token", cache.token()).await;
        assert_eq!(token.unwrap().access_token().secret(), "tok-1");
    }
    assert_eq!(
        calls.count(),
        1,
        "the second replica read the first one's token"
    );
}

// ---------------------------------------------------------------------------------------------
// A refresh-token grant shared by a fleet, at a server that rotates refresh tokens
// ---------------------------------------------------------------------------------------------

/// A token endpoint for one grant whose refresh tokens rotate: `rt-<n>` is redeemable once,
/// for `at-<n+1>` (living `lifetime`) and `rt-<n+1>`; presenting a used one is counted and
/// refused with `invalid_grant`, as servers that detect refresh token reuse do.
#[derive(Clone, Default)]
struct RotatingGrant {
    latest: Arc<AtomicUsize>,
    refreshes: Arc<AtomicUsize>,
    reuses: Arc<AtomicUsize>,
}

impl RotatingGrant {
    async fn start(self, lifetime_s: u64) -> SocketAddr {
        let (listener, addr) = loopback().await;
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let grant = self.clone();
                tokio::spawn(async move {
                    let Some((_, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let presented = form_urlencoded::parse(&body)
                        .find(|(name, _)| name == "refresh_token")
                        .map(|(_, value)| value.into_owned())
                        .unwrap_or_default();
                    let latest = grant.latest.load(Ordering::SeqCst);
                    if presented != format!("rt-{latest}") {
                        grant.reuses.fetch_add(1, Ordering::SeqCst);
                        let body = br#"{"error":"invalid_grant"}"#;
                        let _ = write_response(
                            &mut stream,
                            "400 Bad Request",
                            "application/json",
                            "",
                            body,
                        )
                        .await;
                        return;
                    }
                    let next = latest + 1;
                    grant.latest.store(next, Ordering::SeqCst);
                    grant.refreshes.fetch_add(1, Ordering::SeqCst);
                    let body = format!(
                        r#"{{"access_token":"at-{next}","token_type":"Bearer","expires_in":{lifetime_s},"refresh_token":"rt-{next}"}}"#
                    );
                    let _ = write_response(
                        &mut stream,
                        "200 OK",
                        "application/json",
                        "",
                        body.as_bytes(),
                    )
                    .await;
                });
            }
        });
        addr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sharing_a_rotating_refresh_grant_never_reuses_a_refresh_token() {
    let redis = RedisServer::start();
    let grant = RotatingGrant::default();
    let addr = grant.clone().start(3).await;
    // Four replicas, each with the grant's first refresh token, as a deploy hands them out.
    let mut caches = Vec::new();
    for _ in 0..4 {
        let endpoint = TokenEndpoint::builder(format!("http://{addr}/token"), "fleet")
            .client_secret("s3cr3t")
            .build()
            .unwrap();
        let source = RefreshTokenSource::new(endpoint, RefreshToken::new("rt-0"));
        let shared = shared_layer(&redis).await;
        caches.push(TokenCache::new(shared.layer(source)));
    }
    // About three token lifetimes of traffic from every replica (3 s tokens, refreshed 1 s
    // before their usable end at the latest).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        for cache in &caches {
            within(Duration::from_secs(5), "a replica's token", cache.token())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        grant.reuses.load(Ordering::SeqCst),
        0,
        "a refresh token was redeemed twice"
    );
    let refreshes = grant.refreshes.load(Ordering::SeqCst);
    // One refresh per token lifetime for the whole fleet (three to six in 8 s of 3 s tokens),
    // not one per replica.
    assert!(
        (2..=7).contains(&refreshes),
        "{refreshes} refreshes for the fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_shared_so_the_fleet_does_not_ask_in_turn() {
    let redis = RedisServer::start();
    let asked = Arc::new(AtomicUsize::new(0));
    // A token endpoint that answers 429 with `Retry-After: 2` after 100 ms.
    let source = {
        let asked = asked.clone();
        tower_bearer::source_fn(move |_: TokenRequest| {
            let asked = asked.clone();
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<Token, _>(
                    tower_bearer::SourceError::new("429 Too Many Requests")
                        .with_retry_after(Duration::from_secs(2)),
                )
            }
        })
    };
    let mut layers = Vec::new();
    for _ in 0..8 {
        layers.push(shared_layer(&redis).await);
    }
    let caches: Vec<TokenCache> = layers
        .iter()
        .map(|layer| TokenCache::new(layer.layer(source.clone())))
        .collect();
    let tasks = all_at_once(&caches);
    for task in tasks {
        let result = within(Duration::from_secs(5), "a replica's answer", task).await;
        assert!(result.unwrap().is_err(), "no token to be had");
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the fleet asked once, not once per replica"
    );
    let shared: u64 = layers
        .iter()
        .map(|layer| layer.stats().failures_shared)
        .sum();
    assert_eq!(
        shared, 7,
        "seven replicas were answered with the first one's refusal"
    );
}

/// What the store says is not authenticated: a time to live lengthened by hand (or a value
/// restored from a backup) does not make a token outlive its sealed expiry, and a failure hold
/// of hours set by a misconfigured replica or by hand holds the fleet back 5 minutes at most.
#[tokio::test]
async fn a_stores_times_are_bounded_by_what_the_token_says() {
    let redis = RedisServer::start();
    let calls = Calls::default();
    let source = calls.lasting(Duration::ZERO, Duration::from_secs(300));
    TokenCache::new(shared_layer(&redis).await.layer(source.clone()))
        .token()
        .await
        .unwrap();
    let key = redis.token_keys().remove(0);
    redis.raw(&[b"PEXPIRE", &key, b"36000000"]);
    let reader = shared_layer(&redis).await;
    let token = TokenCache::new(reader.layer(source.clone()))
        .token()
        .await
        .unwrap();
    assert_eq!(calls.count(), 1, "read from the store");
    match token.expiry() {
        Some(tower_bearer::Expiry::In(left)) => {
            assert!(left <= Duration::from_secs(360), "{left:?}")
        }
        other => panic!("{other:?}"),
    }

    redis.raw(&[b"DEL", &key]);
    let mut failed = key.clone();
    failed.extend_from_slice(b":failed");
    redis.raw(&[b"SET", &failed, b"1", b"PX", b"36000000"]);
    let err = TokenCache::new(shared_layer(&redis).await.layer(source))
        .token()
        .await
        .unwrap_err();
    let text = support::chain(&err);
    assert!(text.contains("the fleet asks again in 300s"), "{text}");
    assert_eq!(calls.count(), 1, "held back, not fetched");
}

/// At startup a server that is down is not an error: `connect` gives up waiting after a
/// second (here nothing listens, so at once) and returns a store that connects later; a
/// replica then fetches its own tokens.
#[tokio::test]
async fn connect_to_a_server_that_is_down_is_not_an_error() {
    let (listener, addr) = loopback().await;
    drop(listener);
    let started = Instant::now();
    let store = within(
        Duration::from_secs(5),
        "connect to a closed port",
        RedisStore::connect(&format!("redis://{addr}/")),
    )
    .await
    .expect("a store that connects later");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let calls = Calls::default();
    let layer = SharedCacheLayer::new(store, SealingKey::new([7; 32]), "down-at-startup");
    let token =
        TokenCache::new(layer.layer(calls.lasting(Duration::ZERO, Duration::from_secs(60))))
            .token()
            .await
            .unwrap();
    assert_eq!(token.access_token().secret(), "tok-1");
    assert!(layer.stats().store_errors >= 1, "{:?}", layer.stats());
}
