//! Benchmark 3, storms: many requests needing a token at the same moment. Each storm is timed
//! from the moment it is let loose until every request has its response, and its source calls are
//! counted: the benchmark panics unless a storm calls the token source exactly once.
//!
//! - `expired_10000`: 10,000 tasks, each holding a clone of the service, wait at a gate while the
//!   cached token expires; the gate opens and all of them send at once. The source answers after
//!   1 ms, like a fast token endpoint. `fresh_10000` is the same storm on a fresh token (no
//!   fetch), for comparison.
//! - `rejected_1000`: 1,000 requests carrying the same token reach the API together (it holds
//!   them at a barrier), which answers all of them 401; each is replayed with the new token.
//!   `accepted_1000` is the same with the token accepted (no 401, no fetch, no replay).
//!
//! A line `STORM_SOURCE_CALLS <benchmark> <calls per storm> <storms>` is printed per benchmark
//! for `scripts/bench.sh`.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tokio::sync::{watch, Barrier};
use tower::{Layer, Service, ServiceExt};
use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenCache, TokenRequest};

// Only `request` and `Body` are used here.
#[allow(dead_code)]
mod common;

use common::{report_storm_calls, request, Body};

const EXPIRED_STORM: usize = 10_000;
const REJECTED_STORM: usize = 1_000;
/// How long the token source takes to answer.
const FETCH_LATENCY: Duration = Duration::from_millis(1);

/// A token source that numbers its tokens (`tok-1`, `tok-2`, …), counts its calls, answers
/// after `FETCH_LATENCY`, and gives its tokens the lifetime currently set.
#[derive(Clone)]
struct Source {
    calls: Arc<AtomicU64>,
    lifetime_ms: Arc<AtomicU64>,
}

impl Source {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            lifetime_ms: Arc::new(AtomicU64::new(3_600_000)),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn cache(&self) -> TokenCache {
        let this = self.clone();
        let source = source_fn(move |_: TokenRequest| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let lifetime = Duration::from_millis(this.lifetime_ms.load(Ordering::SeqCst));
            async move {
                tokio::time::sleep(FETCH_LATENCY).await;
                Ok::<_, Infallible>(Token::new(format!("tok-{n}")).with_expires_in(lifetime))
            }
        });
        // No skew and no refresh ahead: a short-lived token simply expires, untouched. No floors
        // either: the storms come back to back, each with its 20 ms token or its rejection.
        TokenCache::builder(source)
            .expiry_skew(Duration::ZERO)
            .refresh_ahead(Duration::ZERO)
            .jitter(0.0)
            .min_lifetime(Duration::ZERO)
            .rejection_interval(Duration::ZERO)
            .build()
    }
}

/// The API: answers 200 to a request carrying a token numbered at least `accept_from`, 401 to
/// an older one. Requests carrying token number `hold` wait at `barrier` first, so that they
/// are all in flight together.
#[derive(Clone)]
struct Api {
    accept_from: Arc<AtomicU64>,
    hold: Arc<AtomicU64>,
    barrier: Arc<Mutex<Arc<Barrier>>>,
    rejected: Arc<AtomicU64>,
}

impl Api {
    fn new() -> Self {
        Self {
            accept_from: Arc::new(AtomicU64::new(0)),
            hold: Arc::new(AtomicU64::new(0)),
            barrier: Arc::new(Mutex::new(Arc::new(Barrier::new(1)))),
            rejected: Arc::default(),
        }
    }
}

fn token_number(req: &Request<Body>) -> u64 {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .expect("a request without its token");
    value
        .strip_prefix("Bearer tok-")
        .and_then(|n| n.parse().ok())
        .expect("a token of the source")
}

impl Service<Request<Body>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let n = token_number(&req);
        let accepted = n >= self.accept_from.load(Ordering::SeqCst);
        let barrier =
            (n == self.hold.load(Ordering::SeqCst)).then(|| self.barrier.lock().unwrap().clone());
        if !accepted {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(async move {
            black_box(req);
            if let Some(barrier) = barrier {
                barrier.wait().await;
            }
            let mut response = Response::new(Full::default());
            if !accepted {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok(response)
        })
    }
}

/// Lets `n` tasks loose at once through clones of `svc`; returns the time from the opening of
/// the gate until the last response.
async fn storm<S>(svc: &S, n: usize) -> Duration
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let (open, gate) = watch::channel(false);
    let parked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut svc = svc.clone();
        let mut gate = gate.clone();
        let parked = parked.clone();
        let req = request();
        tasks.push(tokio::spawn(async move {
            parked.fetch_add(1, Ordering::SeqCst);
            gate.wait_for(|open| *open).await.unwrap();
            let response = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            black_box(response);
        }));
    }
    while parked.load(Ordering::SeqCst) < n {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    open.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn expired(c: &mut Criterion, rt: &Runtime) {
    let source = Source::new();
    let cache = source.cache();
    let api = Api::new();
    let svc = BearerAuthLayer::from_cache(cache.clone()).layer(api);
    rt.block_on(cache.token()).unwrap();

    let mut group = c.benchmark_group("storms");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(EXPIRED_STORM as u64));

    let mut calls = Vec::new();
    group.bench_function("fresh_10000", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = source.calls();
                    total += storm(&svc, EXPIRED_STORM).await;
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
    report_storm_calls("storms/fresh_10000", &calls);

    let waits = Arc::new(AtomicBool::new(false));
    let mut calls = Vec::new();
    group.bench_function("expired_10000", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A token that expires 20 ms from now, then left alone until it has.
                    source.lifetime_ms.store(20, Ordering::SeqCst);
                    cache.refresh().await.unwrap();
                    source.lifetime_ms.store(3_600_000, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(25)).await;

                    let before = source.calls();
                    let waits_before = cache.stats().waits;
                    total += storm(&svc, EXPIRED_STORM).await;
                    let n = source.calls() - before;
                    assert_eq!(
                        n, 1,
                        "a storm on an expired token called the source {n} times"
                    );
                    if cache.stats().waits > waits_before {
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
        "no request waited: the token had not expired"
    );
    report_storm_calls("storms/expired_10000", &calls);
    group.finish();
}

fn rejected(c: &mut Criterion, rt: &Runtime) {
    let source = Source::new();
    let cache = source.cache();
    let api = Api::new();
    let svc = BearerAuthLayer::from_cache(cache.clone()).layer(api.clone());
    rt.block_on(cache.token()).unwrap();

    let mut group = c.benchmark_group("storms");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(REJECTED_STORM as u64));

    // The token every request of the next storm carries: the current one.
    let current = |cache: &TokenCache| {
        let token = rt.block_on(cache.token()).unwrap();
        token.access_token().secret()[4..].parse::<u64>().unwrap()
    };

    for (name, reject) in [("accepted_1000", false), ("rejected_1000", true)] {
        let mut calls = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let n = current(&cache);
                    api.hold.store(n, Ordering::SeqCst);
                    api.accept_from
                        .store(if reject { n + 1 } else { n }, Ordering::SeqCst);
                    *api.barrier.lock().unwrap() = Arc::new(Barrier::new(REJECTED_STORM));
                    let before = source.calls();
                    let rejected_before = api.rejected.load(Ordering::SeqCst);
                    let replays_before = cache.stats().replays;

                    total += rt.block_on(storm(&svc, REJECTED_STORM));

                    let fetched = source.calls() - before;
                    let rejected = api.rejected.load(Ordering::SeqCst) - rejected_before;
                    let replays = cache.stats().replays - replays_before;
                    let expected = if reject { REJECTED_STORM as u64 } else { 0 };
                    assert_eq!(
                        (rejected, replays),
                        (expected, expected),
                        "401s and replays"
                    );
                    assert_eq!(
                        fetched,
                        u64::from(reject),
                        "a storm of {rejected} 401s called the source {fetched} times"
                    );
                    calls.push(fetched);
                }
                total
            })
        });
        report_storm_calls(&format!("storms/{name}"), &calls);
    }
    group.finish();
}

fn storms(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    expired(c, &rt);
    rejected(c, &rt);
}

criterion_group!(benches, storms);
criterion_main!(benches);
