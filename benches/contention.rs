//! Benchmark 2, contention: a multi-thread runtime (one worker per core), 256 tasks each
//! sending 64 requests through its own clone of one service, so every clone shares one layer (and one token
//! cache). One iteration is one batch of 16,384 requests, timed from the first spawn to the last
//! join.
//!
//! The same batch runs with no middleware (`bare`), with tower-http's `AddAuthorization::bearer`
//! (`add_authorization`), with a hand-written `Arc<Mutex<Option<Token>>>` cache (`mutex_cache`),
//! with the hand-written floor of `benches/common/mod.rs` (`floor`, `floor_replay`) and with
//! `BearerAuthLayer` (`bearer_no_replay`, `bearer_replay`). Target: the layer's
//! throughput ≥ 0.95 × `add_authorization`'s.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};
use tower_http::auth::AddAuthorizationLayer;

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::Paired;
use common::{
    paired_enabled, prepared_value, request, timed_on, Body, CachedToken, Floor, MutexAuth, TOKEN,
};

const TASKS: usize = 256;
const PER_TASK: usize = 64;

/// The inner service: answers at once, 200 if the request carries the token (401 otherwise, so
/// that a variant that loses its token fails the run instead of measuring nothing).
#[derive(Clone, Copy, Debug)]
struct Api {
    expect_token: bool,
}

impl<B> Service<Request<B>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let auth = req.headers().get(header::AUTHORIZATION);
        let ok = !self.expect_token
            || auth
                .is_some_and(|v| v.as_bytes().strip_prefix(b"Bearer ") == Some(TOKEN.as_bytes()));
        black_box(&req);
        let mut response = Response::new(Full::default());
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

// --- The harness. ---------------------------------------------------------------------------

/// One batch: `TASKS` tasks, each sending `PER_TASK` requests through its own clone of `svc`.
async fn batch<S>(svc: &S)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let req = request();
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

fn bench<S>(c: &mut Criterion, rt: &Runtime, name: &str, svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let mut group = c.benchmark_group("contention");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    batch(&svc).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let bare = Api {
        expect_token: false,
    };
    let api = Api { expect_token: true };

    bench(c, &rt, "bare", bare);
    bench(
        c,
        &rt,
        "add_authorization",
        AddAuthorizationLayer::bearer(TOKEN)
            .as_sensitive(true)
            .layer(api),
    );
    let token = Arc::new(Mutex::new(Some(CachedToken {
        access_token: TOKEN.to_owned(),
        expires_at: Instant::now() + Duration::from_secs(3600),
    })));
    bench(c, &rt, "mutex_cache", MutexAuth { inner: api, token });

    let current = Arc::new(ArcSwap::from_pointee(prepared_value()));
    bench(
        c,
        &rt,
        "floor",
        Floor {
            inner: api,
            current: current.clone(),
            replay: false,
        },
    );
    bench(
        c,
        &rt,
        "floor_replay",
        Floor {
            inner: api,
            current,
            replay: true,
        },
    );

    let source =
        StaticToken::from_token(Token::new(TOKEN).with_expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source);
    rt.block_on(layer.cache().token()).expect("token");
    bench(
        c,
        &rt,
        "bearer_no_replay",
        layer.clone().without_replay().layer(api),
    );
    bench(c, &rt, "bearer_replay", layer.layer(api));
    if paired_enabled() {
        let add_authorization = AddAuthorizationLayer::bearer(TOKEN)
            .as_sensitive(true)
            .layer(api);
        let mut checks = Paired::default();
        checks.check(
            "contention/floor:add_authorization",
            None,
            timed_batches(
                &rt,
                Floor {
                    inner: api,
                    current: Arc::new(ArcSwap::from_pointee(prepared_value())),
                    replay: false,
                },
            ),
            timed_batches(&rt, add_authorization.clone()),
        );
        // Throughput ≥ 0.95 × `add_authorization`'s: batch time ≤ 1 / 0.95 × its.
        checks.check(
            "contention/bearer_replay:add_authorization",
            Some(1.0 / 0.95),
            timed_batches(&rt, layer.layer(api)),
            timed_batches(&rt, add_authorization.clone()),
        );
        checks.check(
            "contention/bearer_no_replay:add_authorization",
            Some(1.0 / 0.95),
            timed_batches(&rt, layer.clone().without_replay().layer(api)),
            timed_batches(&rt, add_authorization.clone()),
        );
        // The same service on both sides: how far from 1 the paired check strays by itself.
        checks.check(
            "contention/add_authorization:add_authorization",
            None,
            timed_batches(&rt, add_authorization.clone()),
            timed_batches(&rt, add_authorization),
        );
        checks.run();
    }
    let stats = layer.cache().stats();
    assert_eq!(
        (stats.fetches, stats.waits),
        (1, 1),
        "the cached path fetched or waited"
    );
}

// --- The paired check. -----------------------------------------------------------------------

/// One side of a paired check (see [`Paired`]): each call times one batch through `svc`.
fn timed_batches<S>(rt: &Runtime, svc: S) -> impl FnMut() -> f64 + '_
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    move || timed_on(rt, batch(&svc))
}

criterion_group!(benches, contention);
criterion_main!(benches);
