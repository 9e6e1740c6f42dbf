//! Benchmark 6, one layer serving 100 destinations (#14): `BearerAuthLayer::destinations` with
//! a keyed cache, each request mapped to the token of its destination's `TokenKey`.
//!
//! - Cached path (as `benches/request_path.rs`, current-thread, a trivial inner service, the same
//!   POST, built outside the timed section): requests sent in turn to 100 origins
//!   (`https://api-<i>.example.com`) through
//!   - `add_authorization`: tower-http's `AddAuthorization::bearer`, a static header;
//!   - `bearer_no_replay`: the single-key layer (`BearerAuthLayer::new`), replay off;
//!   - `keyed_no_replay`: an origin table of the 100 origins, each with its own key, replay off;
//!   - `keyed_select_no_replay`: the same keys chosen by `Destinations::select` (a `HashMap` of
//!     hosts in the closure), replay off.
//!
//!   Targets: `keyed_no_replay` ≤ 1.15 × `add_authorization`; `bearer_no_replay` ≤ 1.10 × it
//!   (request_path's target for the single-key layer, in this run). Two references, for
//!   information: `static_100_values`, 100 static header values handed to the requests in turn
//!   by a counter (what reading 100 distinct tokens costs the inner service, with nothing spent
//!   on choosing one), and `by_host_by_hand`, a `HashMap` from host to static header value in a
//!   service written by hand (what the issue says users do today, without any token cache).
//! - Contention (as `benches/contention.rs`: 2 workers, 256 tasks × 64 requests, each task
//!   through its own clone of the service; one task on the runtime spawns, awaits and times
//!   them): `contention_100_keys`, task `t` sending to origin `t % 100` through the origin
//!   table of 100 keys, against `contention_one_key_100_origins`, the same tasks sending the same
//!   requests through a table mapping all 100 origins to one key. Target: throughput ≥ 0.95 ×
//!   one key's. For information: every task sending to origin 0 (`contention_one_key`: one key,
//!   but also one URI for all requests), the single-key layer on the 100 origins
//!   (`contention_single_key`) and on origin 0 alone (paired check only), `AddAuthorization`
//!   (`contention_add_authorization`), and each task sending to the 100 origins in turn
//!   (`contention_100_keys_mixed`: every request is a task's first to its key, the worst case of
//!   the per-clone view of each key).
//! - Storm: 10,000 tasks, 100 per key, let loose together while the tokens of all 100 keys have
//!   expired; the source answers after 1 ms. It must be called exactly 100 times per storm,
//!   once per key (the benchmark panics otherwise), and every request must carry its own key's
//!   token (the API answers 401 otherwise, and the benchmark panics). A line
//!   `STORM_SOURCE_CALLS destinations/storm_expired_10000_100_keys <calls per storm> <storms>`
//!   goes to the log for `scripts/bench.sh`. `storm_fresh_10000_100_keys` is the same storm on
//!   fresh tokens, for comparison.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use http::header;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::auth::{Destinations, RequestHead};
use tower_bearer::cache::KeyedCache;
use tower_bearer::{
    source_fn, BearerAuthLayer, Origin, StaticToken, Token, TokenCache, TokenKey, TokenRequest,
};
use tower_http::auth::AddAuthorizationLayer;

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::Paired;
use common::{call_now, paired_enabled, report_storm_calls, request, Body, TOKEN};

/// Destinations, each an origin with a key of its own.
const DESTINATIONS: usize = 100;
/// Requests built ahead of each timed batch of the cached path.
const BATCH: u64 = 256;
const TASKS: usize = 256;
const PER_TASK: usize = 64;
const STORM: usize = 10_000;
/// How long the token source of the storm takes to answer.
const FETCH_LATENCY: Duration = Duration::from_millis(1);

/// The destinations: origin `https://api-<i>.example.com` and key `audience_of("api-<i>")`.
struct Table {
    uris: Vec<Uri>,
    origins: Vec<Origin>,
    keys: Vec<TokenKey>,
}

impl Table {
    fn new() -> Self {
        let hosts: Vec<String> = (0..DESTINATIONS)
            .map(|i| format!("api-{i}.example.com"))
            .collect();
        Self {
            uris: hosts
                .iter()
                .map(|host| {
                    format!("https://{host}/v1/orders?limit=10")
                        .parse()
                        .unwrap()
                })
                .collect(),
            origins: hosts
                .iter()
                .map(|host| format!("https://{host}").parse().unwrap())
                .collect(),
            keys: (0..DESTINATIONS)
                .map(|i| TokenKey::audience_of(format!("api-{i}")))
                .collect(),
        }
    }

    /// Every origin mapped to its key.
    fn by_origin(&self, cache: &KeyedCache) -> Destinations {
        self.origins
            .iter()
            .zip(&self.keys)
            .fold(Destinations::new(cache.clone()), |d, (origin, key)| {
                d.origin(origin.clone(), key.clone())
            })
    }

    /// Every origin mapped to one key, the first: the same table and lookups as
    /// [`by_origin`](Self::by_origin), one token.
    fn all_to_one_key(&self, cache: &KeyedCache) -> Destinations {
        self.origins
            .iter()
            .fold(Destinations::new(cache.clone()), |d, origin| {
                d.origin(origin.clone(), self.keys[0].clone())
            })
    }

    /// Every host mapped to its key, by `select`.
    fn by_select(&self, cache: &KeyedCache) -> Destinations {
        let hosts: HashMap<String, TokenKey> = self
            .uris
            .iter()
            .zip(&self.keys)
            .map(|(uri, key)| (uri.host().unwrap().to_owned(), key.clone()))
            .collect();
        Destinations::new(cache.clone())
            .select(move |head: &RequestHead<'_>| hosts.get(head.uri().host()?).cloned())
    }

    /// The benchmark's request, sent to destination `i`.
    fn request(&self, i: usize) -> Request<Body> {
        let mut req = request();
        *req.uri_mut() = self.uris[i % DESTINATIONS].clone();
        req
    }
}

/// The inner service: answers 200 at once to a request carrying the token, 401 otherwise (so a
/// variant that loses its token fails the run instead of measuring nothing).
#[derive(Clone, Copy, Debug)]
struct Api;

impl<B> Service<Request<B>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let auth = req.headers().get(header::AUTHORIZATION);
        let ok =
            auth.is_some_and(|v| v.as_bytes().strip_prefix(b"Bearer ") == Some(TOKEN.as_bytes()));
        black_box(&req);
        let mut response = Response::new(Full::default());
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

/// `Bearer <TOKEN>` as a header value of its own, marked sensitive as the layer's are.
fn static_value() -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("Bearer {TOKEN}")).expect("a header value");
    value.set_sensitive(true);
    value
}

/// A reference, not a layer anyone would use: stamps the header value `choose` picks for each
/// request's URI (none: no header), then answers as [`Api`].
#[derive(Clone)]
struct Reference<F>(F);

impl<B, F> Service<Request<B>> for Reference<F>
where
    F: FnMut(&Uri) -> Option<HeaderValue>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(value) = (self.0)(req.uri()) {
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        Api.call(req)
    }
}

/// One static header value per destination (100 allocations, as 100 keys hold 100 tokens),
/// given to the requests in turn by a counter, so choosing one costs nothing: what the inner
/// service pays for reading 100 tokens instead of one, which any layer serving 100
/// destinations pays too.
fn static_values() -> Reference<impl FnMut(&Uri) -> Option<HeaderValue> + Clone> {
    let values: Arc<[HeaderValue]> = (0..DESTINATIONS).map(|_| static_value()).collect();
    let mut next = 0;
    Reference(move |_: &Uri| {
        next += 1;
        Some(values[next % values.len()].clone())
    })
}

/// What the issue says users write today: a map from host to a static header value in a
/// service of their own (std's `HashMap`, no token cache behind it).
fn by_host(table: &Table) -> Reference<impl FnMut(&Uri) -> Option<HeaderValue> + Clone> {
    let values: Arc<HashMap<String, HeaderValue>> = Arc::new(
        table
            .uris
            .iter()
            .map(|uri| (uri.host().expect("a host").to_owned(), static_value()))
            .collect(),
    );
    Reference(move |uri: &Uri| uri.host().and_then(|host| values.get(host)).cloned())
}

// --- The cached path. -----------------------------------------------------------------------

/// Batches of `BATCH` requests to the first `spread` destinations in turn, built before they
/// are timed.
struct Batches {
    table: Arc<Table>,
    spread: usize,
    next: usize,
}

impl Batches {
    fn next(&mut self) -> Vec<Request<Body>> {
        let start = self.next;
        self.next = (start + BATCH as usize) % self.spread;
        (start..start + BATCH as usize)
            .map(|i| self.table.request(i % self.spread))
            .collect()
    }
}

fn bench_path<S>(c: &mut Criterion, table: &Arc<Table>, name: &str, spread: usize, mut svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut group = c.benchmark_group("destinations");
    group.bench_function(name, |b| {
        let mut batches = Batches {
            table: table.clone(),
            spread,
            next: 0,
        };
        let mut ready = Vec::new();
        b.iter_batched(
            || {
                if ready.is_empty() {
                    ready = batches.next();
                }
                ready.pop().unwrap()
            },
            |req| call_now(&mut svc, &mut cx, black_box(req)),
            BatchSize::NumIterations(BATCH),
        )
    });
    group.finish();
}

/// One side of a paired check of the cached path: each call times `BATCH` requests through
/// `svc`, to the first `spread` destinations in turn.
fn timed_path<S>(table: &Arc<Table>, spread: usize, mut svc: S) -> impl FnMut() -> f64
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let waker = Waker::noop();
    let mut out = Vec::with_capacity(BATCH as usize);
    let mut batches = Batches {
        table: table.clone(),
        spread,
        next: 0,
    };
    move || {
        let mut cx = Context::from_waker(waker);
        let requests = batches.next();
        out.clear();
        let start = Instant::now();
        for req in requests {
            out.push(call_now(&mut svc, &mut cx, black_box(req)));
        }
        start.elapsed().as_secs_f64()
    }
}

fn static_source() -> StaticToken {
    StaticToken::from_token(Token::new(TOKEN).with_expires_in(Duration::from_secs(3600)))
}

/// A keyed cache holding a token for every key of `table`.
fn warm_keyed(rt: &Runtime, table: &Table) -> KeyedCache {
    let keyed = TokenCache::builder(static_source())
        .max_keys(2 * DESTINATIONS)
        .build_keyed();
    for key in &table.keys {
        rt.block_on(keyed.token(key)).expect("token");
    }
    keyed
}

fn cached_path(c: &mut Criterion, table: &Arc<Table>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let add_authorization = AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true);
    let single = BearerAuthLayer::new(static_source()).without_replay();
    rt.block_on(single.cache().token()).expect("token");
    let keyed = warm_keyed(&rt, table);
    let by_origin = BearerAuthLayer::destinations(table.by_origin(&keyed)).without_replay();
    let by_select = BearerAuthLayer::destinations(table.by_select(&keyed)).without_replay();
    let static_values = static_values();
    let by_host = by_host(table);

    bench_path(
        c,
        table,
        "add_authorization",
        DESTINATIONS,
        add_authorization.layer(Api),
    );
    bench_path(
        c,
        table,
        "bearer_no_replay",
        DESTINATIONS,
        single.layer(Api),
    );
    bench_path(
        c,
        table,
        "keyed_no_replay",
        DESTINATIONS,
        by_origin.layer(Api),
    );
    bench_path(
        c,
        table,
        "keyed_select_no_replay",
        DESTINATIONS,
        by_select.layer(Api),
    );
    bench_path(
        c,
        table,
        "keyed_one_destination_no_replay",
        1,
        by_origin.layer(Api),
    );
    bench_path(
        c,
        table,
        "static_100_values",
        DESTINATIONS,
        static_values.clone(),
    );
    bench_path(c, table, "by_host_by_hand", DESTINATIONS, by_host.clone());

    if paired_enabled() {
        let mut checks = Paired::default();
        checks.check(
            "destinations/keyed_no_replay:add_authorization",
            Some(1.15),
            timed_path(table, DESTINATIONS, by_origin.layer(Api)),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        checks.check(
            "destinations/bearer_no_replay:add_authorization",
            Some(1.10),
            timed_path(table, DESTINATIONS, single.layer(Api)),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        checks.check(
            "destinations/keyed_select_no_replay:add_authorization",
            None,
            timed_path(table, DESTINATIONS, by_select.layer(Api)),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        // The same layer with every request to one of its 100 destinations: what spreading the
        // requests over 100 keys' caches costs, the lookup being the same.
        checks.check(
            "destinations/keyed_one_destination_no_replay:add_authorization",
            None,
            timed_path(table, 1, by_origin.layer(Api)),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        // References: 100 static values chosen for free (what reading 100 tokens costs), and a
        // map from host to static value written by hand.
        checks.check(
            "destinations/static_100_values:add_authorization",
            None,
            timed_path(table, DESTINATIONS, static_values),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        checks.check(
            "destinations/by_host_by_hand:add_authorization",
            None,
            timed_path(table, DESTINATIONS, by_host),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        // The same service on both sides: how far from 1 the paired check strays by itself.
        checks.check(
            "destinations/add_authorization:add_authorization",
            None,
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
            timed_path(table, DESTINATIONS, add_authorization.layer(Api)),
        );
        checks.run();
    }
    assert_served_from_cache(&keyed, table);
}

/// Every request was served from the cache: one fetch per key (the warm-up), no waits beyond
/// the warm-up's.
fn assert_served_from_cache(keyed: &KeyedCache, table: &Table) {
    for key in &table.keys {
        let stats = keyed.stats(key).expect("the key is held");
        assert_eq!(
            (stats.fetches, stats.waits),
            (1, 1),
            "the cached path fetched or waited"
        );
    }
}

// --- Contention. ----------------------------------------------------------------------------

/// Which destination request `r` of task `t` goes to.
#[derive(Clone, Copy)]
enum Spread {
    /// Destination 0 for every request.
    OneKey,
    /// Destination `t % 100` for every request of task `t`.
    TaskPerKey,
    /// Destination `(t + r) % 100`: each task sends to the destinations in turn.
    Mixed,
}

impl Spread {
    fn destination(self, task: usize, request: usize) -> usize {
        match self {
            Spread::OneKey => 0,
            Spread::TaskPerKey => task % DESTINATIONS,
            Spread::Mixed => (task + request) % DESTINATIONS,
        }
    }
}

/// Times `iters` batches on `rt`: one task on the runtime spawns each batch's tasks, awaits them
/// and takes the time, so that the benchmark's own thread does not compete with the two workers
/// for the two cores each time a task ends (as `benches/dpop.rs` does since #16).
fn time_batches<S>(
    rt: &Runtime,
    table: &Arc<Table>,
    svc: &S,
    spread: Spread,
    iters: u64,
) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let (table, svc) = (table.clone(), svc.clone());
    rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            batch(&table, svc.clone(), spread).await;
        }
        start.elapsed()
    }))
    .expect("the timing task")
}

/// One batch: `TASKS` tasks, each sending `PER_TASK` requests through its own clone of `svc`.
async fn batch<S>(table: &Arc<Table>, svc: S, spread: Spread)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let mut tasks = Vec::with_capacity(TASKS);
    for t in 0..TASKS {
        let mut svc = svc.clone();
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..PER_TASK {
                let req = table.request(spread.destination(t, r));
                let response = svc.ready().await.unwrap().call(req).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                black_box(response);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn bench_contention<S>(
    c: &mut Criterion,
    rt: &Runtime,
    table: &Arc<Table>,
    name: &str,
    svc: S,
    spread: Spread,
) where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let mut group = c.benchmark_group("destinations");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| time_batches(rt, table, &svc, spread, iters))
    });
    group.finish();
}

/// One side of a paired contention check: each call times one batch.
fn timed_contention<'a, S>(
    rt: &'a Runtime,
    table: &'a Arc<Table>,
    svc: S,
    spread: Spread,
) -> impl FnMut() -> f64 + 'a
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    move || time_batches(rt, table, &svc, spread, 1).as_secs_f64()
}

fn contention(c: &mut Criterion, table: &Arc<Table>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keyed = warm_keyed(&rt, table);
    let layer = BearerAuthLayer::destinations(table.by_origin(&keyed)).without_replay();
    let single = BearerAuthLayer::new(static_source()).without_replay();
    rt.block_on(single.cache().token()).expect("token");
    let add_authorization = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(Api);

    let svc = layer.layer(Api);
    let one_key = BearerAuthLayer::destinations(table.all_to_one_key(&keyed))
        .without_replay()
        .layer(Api);
    bench_contention(
        c,
        &rt,
        table,
        "contention_one_key_100_origins",
        one_key.clone(),
        Spread::TaskPerKey,
    );
    bench_contention(
        c,
        &rt,
        table,
        "contention_one_key",
        svc.clone(),
        Spread::OneKey,
    );
    bench_contention(
        c,
        &rt,
        table,
        "contention_100_keys",
        svc.clone(),
        Spread::TaskPerKey,
    );
    bench_contention(
        c,
        &rt,
        table,
        "contention_100_keys_mixed",
        svc.clone(),
        Spread::Mixed,
    );
    bench_contention(
        c,
        &rt,
        table,
        "contention_single_key",
        single.layer(Api),
        Spread::TaskPerKey,
    );
    bench_contention(
        c,
        &rt,
        table,
        "contention_add_authorization",
        add_authorization.clone(),
        Spread::TaskPerKey,
    );

    if paired_enabled() {
        let mut checks = Paired::default();
        // Throughput ≥ 0.95 × one key's: batch time ≤ 1 / 0.95 × its. The same tasks sending
        // the same requests through the same origin table, whose 100 origins map to 100 keys on
        // one side and to one key on the other.
        checks.check(
            "destinations/contention_100_keys:contention_one_key_100_origins",
            Some(1.0 / 0.95),
            timed_contention(&rt, table, svc.clone(), Spread::TaskPerKey),
            timed_contention(&rt, table, one_key.clone(), Spread::TaskPerKey),
        );
        // Before, the target's check: every task sending to one origin (one URI, one key), so
        // its requests differ too.
        checks.check(
            "destinations/contention_100_keys:contention_one_key",
            None,
            timed_contention(&rt, table, svc.clone(), Spread::TaskPerKey),
            timed_contention(&rt, table, svc.clone(), Spread::OneKey),
        );
        // What sending to one origin instead of 100 changes for the single-key layer, which has
        // one token either way: the part of the row above that is not about keys.
        checks.check(
            "destinations/contention_single_key:contention_single_key_one_origin",
            None,
            timed_contention(&rt, table, single.layer(Api), Spread::TaskPerKey),
            timed_contention(&rt, table, single.layer(Api), Spread::OneKey),
        );
        checks.check(
            "destinations/contention_100_keys:contention_single_key",
            None,
            timed_contention(&rt, table, svc.clone(), Spread::TaskPerKey),
            timed_contention(&rt, table, single.layer(Api), Spread::TaskPerKey),
        );
        checks.check(
            "destinations/contention_100_keys_mixed:contention_one_key",
            None,
            timed_contention(&rt, table, svc.clone(), Spread::Mixed),
            timed_contention(&rt, table, svc.clone(), Spread::OneKey),
        );
        checks.check(
            "destinations/contention_100_keys:contention_add_authorization",
            None,
            timed_contention(&rt, table, svc.clone(), Spread::TaskPerKey),
            timed_contention(&rt, table, add_authorization, Spread::TaskPerKey),
        );
        checks.run();
    }
    assert_served_from_cache(&keyed, table);
}

// --- The storm. -----------------------------------------------------------------------------

/// A token source for the storm: `tok-<audience>-<n>`, counting its calls, answering after
/// `FETCH_LATENCY`, its tokens living the lifetime currently set.
#[derive(Clone)]
struct Source {
    calls: Arc<AtomicU64>,
    lifetime_ms: Arc<AtomicU64>,
}

impl Source {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn keyed(&self) -> KeyedCache {
        let this = self.clone();
        let source = source_fn(move |req: TokenRequest| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let lifetime = Duration::from_millis(this.lifetime_ms.load(Ordering::SeqCst));
            let audience = req.key().audiences().next().unwrap_or("none").to_owned();
            async move {
                tokio::time::sleep(FETCH_LATENCY).await;
                let token = Token::new(format!("tok-{audience}-{n}")).with_expires_in(lifetime);
                Ok::<_, Infallible>(token)
            }
        });
        // As in benches/storms.rs: a short-lived token simply expires, untouched.
        TokenCache::builder(source)
            .expiry_skew(Duration::ZERO)
            .refresh_ahead(Duration::ZERO)
            .jitter(0.0)
            .min_lifetime(Duration::ZERO)
            .rejection_interval(Duration::ZERO)
            .max_keys(2 * DESTINATIONS)
            .build_keyed()
    }
}

/// The storm's API: 200 to a request carrying a token of its host's audience
/// (`api-<i>.example.com` takes `tok-api-<i>-<n>`), 401 to any other.
#[derive(Clone, Copy)]
struct StormApi;

impl Service<Request<Body>> for StormApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let audience = req
            .uri()
            .host()
            .and_then(|h| h.strip_suffix(".example.com"));
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer tok-"));
        let ok = matches!((audience, token), (Some(a), Some(t))
            if t.strip_prefix(a).is_some_and(|rest| rest.starts_with('-')));
        let mut response = Response::new(Full::default());
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

/// Lets `STORM` tasks loose at once through clones of `svc`, task `t` sending to destination
/// `t % 100`; returns the time from the opening of the gate until the last response.
async fn storm<S>(table: &Arc<Table>, svc: &S) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let (open, gate) = watch::channel(false);
    let parked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(STORM);
    for t in 0..STORM {
        let mut svc = svc.clone();
        let mut gate = gate.clone();
        let parked = parked.clone();
        let req = table.request(t);
        tasks.push(tokio::spawn(async move {
            parked.fetch_add(1, Ordering::SeqCst);
            gate.wait_for(|open| *open).await.unwrap();
            let response = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "a token of another key");
            black_box(response);
        }));
    }
    while parked.load(Ordering::SeqCst) < STORM {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    open.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn storms(c: &mut Criterion, table: &Arc<Table>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let source = Source {
        calls: Arc::default(),
        lifetime_ms: Arc::new(AtomicU64::new(3_600_000)),
    };
    let keyed = source.keyed();
    let svc = BearerAuthLayer::destinations(table.by_origin(&keyed)).layer(StormApi);
    for key in &table.keys {
        rt.block_on(keyed.token(key)).unwrap();
    }
    let fetches = |keyed: &KeyedCache| -> Vec<u64> {
        table
            .keys
            .iter()
            .map(|key| keyed.stats(key).expect("the key is held").fetches)
            .collect()
    };

    let mut group = c.benchmark_group("destinations");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(STORM as u64));

    let mut calls = Vec::new();
    group.bench_function("storm_fresh_10000_100_keys", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = source.calls();
                    total += storm(table, &svc).await;
                    calls.push(source.calls() - before);
                }
                total
            })
        })
    });
    assert!(
        calls.iter().all(|&n| n == 0),
        "a fresh token was fetched again"
    );
    report_storm_calls("destinations/storm_fresh_10000_100_keys", &calls);

    let waits = Arc::new(AtomicBool::new(false));
    let mut calls = Vec::new();
    group.bench_function("storm_expired_10000_100_keys", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Tokens that expire 20 ms from now for every key, then left alone until
                    // they have.
                    source.lifetime_ms.store(20, Ordering::SeqCst);
                    let refreshes: Vec<_> = table
                        .keys
                        .iter()
                        .map(|key| {
                            let cache = keyed.cache(key);
                            tokio::spawn(async move { cache.refresh().await })
                        })
                        .collect();
                    for refresh in refreshes {
                        refresh.await.unwrap().unwrap();
                    }
                    source.lifetime_ms.store(3_600_000, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(25)).await;

                    let before = source.calls();
                    let fetches_before = fetches(&keyed);
                    let waits_before = keyed.total_stats().waits;
                    total += storm(table, &svc).await;
                    let n = source.calls() - before;
                    assert_eq!(
                        n, DESTINATIONS as u64,
                        "a storm on {DESTINATIONS} expired keys called the source {n} times"
                    );
                    let per_key: Vec<u64> = fetches(&keyed)
                        .iter()
                        .zip(&fetches_before)
                        .map(|(after, before)| after - before)
                        .collect();
                    assert!(
                        per_key.iter().all(|&n| n == 1),
                        "fetches per key in one storm: {per_key:?}"
                    );
                    if keyed.total_stats().waits > waits_before {
                        waits.store(true, Ordering::Relaxed);
                    }
                    calls.push(n);
                }
                total
            })
        })
    });
    assert!(
        waits.load(Ordering::Relaxed),
        "no request waited: the tokens had not expired"
    );
    report_storm_calls("destinations/storm_expired_10000_100_keys", &calls);
    group.finish();
}

fn destinations(c: &mut Criterion) {
    let table = Arc::new(Table::new());
    cached_path(c, &table);
    contention(c, &table);
    storms(c, &table);
}

criterion_group!(benches, destinations);
criterion_main!(benches);
