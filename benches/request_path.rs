//! Benchmark 1, per-request cost on the cached path.
//!
//! A trivial inner service that answers at once, and a realistic request (a POST with six headers
//! and a small body), called through:
//!
//! - `bare`: no middleware;
//! - `add_authorization`: tower-http's `AddAuthorization::bearer`, a static header (the lower
//!   bound of any bearer middleware);
//! - `mutex_cache`: a hand-written `Arc<Mutex<Option<Token>>>` cache, what users write today;
//! - `floor` / `floor_replay`: a hand-written floor of the work the layer must do (`Floor`, in
//!   `benches/common/mod.rs`, shared with `benches/contention.rs`): one lock-free
//!   load of a prepared header value (`ArcSwap`, the safe-Rust atomic load of a shared pointer),
//!   one insert, the 401 check and, for replay, one clone of the request and of the service kept
//!   until the response;
//! - `floor_local`: a stricter floor, for information: each service clone keeps the value it
//!   last saw, checked with one plain atomic load of a shared generation counter (the crate's
//!   own access pattern, without its expiry check);
//! - `bearer_no_replay` / `bearer_replay`: `BearerAuthLayer` with replay off and on;
//! - `add_authorization_cloned` / `bearer_no_replay_cloned`: the same, with the service cloned
//!   for every request (`svc.clone().oneshot(req)`, and what tower-http's `FollowRedirect` does),
//!   for information.
//!
//! Each request is built (with `Request::builder`, as a client builds it) outside the timed
//! section (`iter_batched`); the timed section is
//! `poll_ready`, `call`, one poll of the response future (which must be ready at once) and
//! whatever the inner service drops. Targets: `bearer_no_replay` ≤ 1.10 × `add_authorization`,
//! `bearer_replay` ≤ 1.10 × `floor_replay`.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};
use tower_http::auth::AddAuthorizationLayer;

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::{check_statistics, Paired};
use common::{
    call_now, paired_enabled, prepared_value, request, Body, CachedToken, Floor, MutexAuth, TOKEN,
};

/// Requests built ahead of each timed batch. Small, so that the batch's memory is reused from
/// one batch to the next instead of being returned to the system and faulted in again.
const BATCH: u64 = 256;

/// The inner service: looks at the token and answers 200 at once. With `check`, it also
/// asserts the token is the expected one (done once per variant, outside the measurement).
#[derive(Clone, Copy, Debug)]
struct Api {
    check: Option<bool>,
}

impl Api {
    const FAST: Api = Api { check: None };
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
        if let Some(expect) = self.check {
            let expected = format!("Bearer {TOKEN}");
            assert_eq!(auth.is_some(), expect, "authorization header presence");
            if let Some(auth) = auth {
                assert_eq!(auth.as_bytes(), expected.as_bytes());
            }
            assert_eq!(req.headers().len(), 6 + usize::from(expect));
        }
        black_box(auth);
        black_box(&req);
        ready(Ok(Response::new(Full::default())))
    }
}

// --- A stricter floor. ---------------------------------------------------------------------

/// A stricter floor: each clone of the service keeps the header value it last saw and the
/// generation it was published with; a request does one plain atomic load of the shared
/// generation and, if it is unchanged, clones the value it already holds (no shared pointer
/// load, no lock). This is the crate's own access pattern (`Local` in `src/cache.rs`) without
/// its expiry check and hit counting.
#[derive(Clone)]
struct LocalFloor<S> {
    inner: S,
    shared: Arc<Published>,
    local: (u64, HeaderValue),
}

struct Published {
    generation: std::sync::atomic::AtomicU64,
    value: Mutex<HeaderValue>,
}

impl<S, B> Service<Request<B>> for LocalFloor<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let generation = self
            .shared
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if generation != self.local.0 {
            self.local = (generation, self.shared.value.lock().unwrap().clone());
        }
        req.headers_mut()
            .insert(header::AUTHORIZATION, self.local.1.clone());
        self.inner.call(req)
    }
}

// --- A service cloned for every request. ---------------------------------------------------

/// Calls a clone of `S` for each request, as `svc.clone().oneshot(req)` does.
#[derive(Clone)]
struct ClonePerRequest<S>(S);

impl<S, B> Service<Request<B>> for ClonePerRequest<S>
where
    S: Service<Request<B>> + Clone,
    S::Error: Debug,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut svc = self.0.clone();
        let waker = Waker::noop();
        match svc.poll_ready(&mut Context::from_waker(waker)) {
            Poll::Ready(Ok(())) => svc.call(req),
            other => panic!("the clone is not ready: {other:?}"),
        }
    }
}

// --- The harness. ---------------------------------------------------------------------------

/// Benchmarks `make(Api)`, after checking once that it stamps the token (`stamps`).
fn bench<S>(c: &mut Criterion, name: &str, stamps: bool, make: impl Fn(Api) -> S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let template = request();
    let mut checked = make(Api {
        check: Some(stamps),
    });
    call_now(&mut checked, &mut cx, template.clone());

    let mut svc = make(Api::FAST);
    let mut group = c.benchmark_group("request_path");
    group.bench_function(name, |b| {
        b.iter_batched(
            request,
            |req| call_now(&mut svc, &mut cx, black_box(req)),
            BatchSize::NumIterations(BATCH),
        )
    });
    group.finish();
}

fn request_path(c: &mut Criterion) {
    // In every mode, so that `cargo bench -- --test` checks what the paired checks print.
    check_statistics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    bench(c, "bare", false, |api| api);

    let add_authorization = AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true);
    bench(c, "add_authorization", true, |api| {
        add_authorization.layer(api)
    });

    let token = Arc::new(Mutex::new(Some(CachedToken {
        access_token: TOKEN.to_owned(),
        expires_at: Instant::now() + Duration::from_secs(3600),
    })));
    bench(c, "mutex_cache", true, |inner| MutexAuth {
        inner,
        token: token.clone(),
    });

    let current = Arc::new(ArcSwap::from_pointee(prepared_value()));
    bench(c, "floor", true, |inner| Floor {
        inner,
        current: current.clone(),
        replay: false,
    });
    let published = Arc::new(Published {
        generation: std::sync::atomic::AtomicU64::new(1),
        value: Mutex::new(prepared_value()),
    });
    bench(c, "floor_local", true, |inner| LocalFloor {
        inner,
        shared: published.clone(),
        local: (0, HeaderValue::from_static("")),
    });
    bench(c, "floor_replay", true, |inner| Floor {
        inner,
        current: current.clone(),
        replay: true,
    });

    let source =
        StaticToken::from_token(Token::new(TOKEN).with_expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source);
    let token = rt.block_on(layer.cache().token()).expect("token");
    assert_eq!(token.access_token().secret(), TOKEN);
    let no_replay = layer.clone().without_replay();
    bench(c, "bearer_no_replay", true, |api| no_replay.layer(api));
    bench(c, "bearer_replay", true, |api| layer.layer(api));
    bench(c, "add_authorization_cloned", true, |api| {
        ClonePerRequest(add_authorization.layer(api))
    });
    bench(c, "bearer_no_replay_cloned", true, |api| {
        ClonePerRequest(no_replay.layer(api))
    });
    if paired_enabled() {
        let mut checks = Paired::default();
        checks.check(
            "request_path/floor:add_authorization",
            None,
            timed_batches(Floor {
                inner: Api::FAST,
                current: current.clone(),
                replay: false,
            }),
            timed_batches(add_authorization.layer(Api::FAST)),
        );
        checks.check(
            "request_path/floor_local:add_authorization",
            None,
            timed_batches(LocalFloor {
                inner: Api::FAST,
                shared: published.clone(),
                local: (0, HeaderValue::from_static("")),
            }),
            timed_batches(add_authorization.layer(Api::FAST)),
        );
        checks.check(
            "request_path/bearer_no_replay:add_authorization",
            Some(1.10),
            timed_batches(no_replay.layer(Api::FAST)),
            timed_batches(add_authorization.layer(Api::FAST)),
        );
        checks.check(
            "request_path/bearer_replay:floor_replay",
            Some(1.10),
            timed_batches(layer.layer(Api::FAST)),
            timed_batches(Floor {
                inner: Api::FAST,
                current: current.clone(),
                replay: true,
            }),
        );
        checks.check(
            "request_path/bearer_replay:add_authorization",
            None,
            timed_batches(layer.layer(Api::FAST)),
            timed_batches(add_authorization.layer(Api::FAST)),
        );
        checks.check(
            "request_path/bearer_no_replay_cloned:add_authorization_cloned",
            None,
            timed_batches(ClonePerRequest(no_replay.layer(Api::FAST))),
            timed_batches(ClonePerRequest(add_authorization.layer(Api::FAST))),
        );
        // The same service on both sides: how far from 1 the paired check strays by itself.
        checks.check(
            "request_path/add_authorization:add_authorization",
            None,
            timed_batches(add_authorization.layer(Api::FAST)),
            timed_batches(add_authorization.layer(Api::FAST)),
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

/// One side of a paired check (see [`Paired`]): each call times `BATCH` requests through `svc`.
/// The requests are built before the timed section; their responses are kept until the next
/// call and dropped before it is timed.
fn timed_batches<S>(mut svc: S) -> impl FnMut() -> f64
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let waker = Waker::noop();
    let mut out = Vec::with_capacity(BATCH as usize);
    move || {
        let mut cx = Context::from_waker(waker);
        let requests: Vec<_> = (0..BATCH).map(|_| request()).collect();
        out.clear();
        let start = Instant::now();
        for req in requests {
            out.push(call_now(&mut svc, &mut cx, black_box(req)));
        }
        start.elapsed().as_secs_f64()
    }
}

criterion_group!(benches, request_path);
criterion_main!(benches);
