//! Benchmark 1, per-request cost on the cached path.
//!
//! A trivial inner service that answers at once, and a realistic request (a POST with six headers
//! and a small body), called through:
//!
//! - `bare`: no middleware;
//! - `add_authorization`: tower-http's `AddAuthorization::bearer`, a static header (the lower
//!   bound of any bearer middleware);
//! - `mutex_cache`: a hand-written `Arc<Mutex<Option<Token>>>` cache, what users write today;
//! - `floor` / `floor_replay`: a hand-written floor of the work the layer must do: one lock-free
//!   load of a prepared header value (`ArcSwap`, the safe-Rust atomic load of a shared pointer),
//!   one insert, the 401 check and, for replay, one clone of the request and of the service kept
//!   until the response;
//! - `floor_local`: a stricter floor, for information: each service clone keeps the value it
//!   last saw, checked with one plain atomic load of a shared generation counter;
//! - `bearer_no_replay` / `bearer_replay`: `BearerAuthLayer` with replay off and on.
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
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{ready as ready_poll, Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};
use tower_http::auth::AddAuthorizationLayer;

/// Requests built ahead of each timed batch. Small, so that the batch's memory is reused from
/// one batch to the next instead of being returned to the system and faulted in again.
const BATCH: u64 = 256;

/// A JWT-sized access token.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoIn0.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJzdWIiOiJiZW5jaC1jbGllbnQiLCJhdWQiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwic2NvcGUiOiJvcmRlcnM6d3JpdGUifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZQ";

type Body = Full<Bytes>;

/// A request as a client sends it: six headers and a small JSON body.
fn request() -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("https://api.example.com/v1/orders?limit=10")
        .header(header::HOST, "api.example.com")
        .header(header::USER_AGENT, "loadgen/1.0")
        .header(header::ACCEPT, "application/json")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "7d4c6a1e-93b5-4b8f-a3a0-2f1e9c7b5d10")
        .body(Full::new(Bytes::from_static(
            br#"{"item":42,"quantity":1}"#,
        )))
        .unwrap()
}

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

// --- What users write today: a token behind a mutex. ---------------------------------------

struct CachedToken {
    access_token: String,
    expires_at: Instant,
}

#[derive(Clone)]
struct MutexAuth<S> {
    inner: S,
    token: Arc<Mutex<Option<CachedToken>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for MutexAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = MutexFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let value = {
            let guard = self.token.lock().unwrap();
            match &*guard {
                Some(token) if token.expires_at > Instant::now() => {
                    HeaderValue::from_str(&format!("Bearer {}", token.access_token)).ok()
                }
                _ => None,
            }
        };
        match value {
            Some(value) => {
                req.headers_mut().insert(header::AUTHORIZATION, value);
                MutexFuture::Cached {
                    inner: self.inner.call(req),
                }
            }
            None => {
                // The slow path users write: fetch, store, then send. Not taken here.
                let token = self.token.clone();
                let mut inner = self.inner.clone();
                MutexFuture::Fetching {
                    inner: Box::pin(async move {
                        let fetched = TOKEN.to_owned();
                        let value = HeaderValue::from_str(&format!("Bearer {fetched}"))?;
                        *token.lock().unwrap() = Some(CachedToken {
                            access_token: fetched,
                            expires_at: Instant::now() + Duration::from_secs(3600),
                        });
                        req.headers_mut().insert(header::AUTHORIZATION, value);
                        tower::ServiceExt::ready(&mut inner)
                            .await
                            .map_err(Into::into)?
                            .call(req)
                            .await
                            .map_err(Into::into)
                    }),
                }
            }
        }
    }
}

pin_project! {
    /// The cached path sends at once; the slow path is boxed.
    #[project = MutexProj]
    enum MutexFuture<F, T> {
        Cached { #[pin] inner: F },
        Fetching { inner: BoxFuture<Result<T, tower::BoxError>> },
    }
}

impl<F, T, E> Future for MutexFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<tower::BoxError>,
{
    type Output = Result<T, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MutexProj::Cached { inner } => inner.poll(cx).map_err(Into::into),
            MutexProj::Fetching { inner } => inner.as_mut().poll(cx),
        }
    }
}

// --- The floor: the same work the layer must do, and nothing else. -------------------------

#[derive(Clone)]
struct Floor<S> {
    inner: S,
    current: Arc<ArcSwap<HeaderValue>>,
    replay: bool,
}

pin_project! {
    struct FloorFuture<F, B, S> {
        #[pin]
        future: F,
        kept: Option<(Request<B>, S)>,
    }
}

impl<F, B, S, RB, E> Future for FloorFuture<F, B, S>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready_poll!(this.future.poll(cx))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // A replay would be sent from `kept` here; never taken in this benchmark.
            black_box(this.kept.take());
        }
        Poll::Ready(Ok(response))
    }
}

impl<S, B, RB> Service<Request<B>> for Floor<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    B: Clone,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future, B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let kept = self.replay.then(|| (req.clone(), self.inner.clone()));
        req.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::clone(&self.current.load()),
        );
        FloorFuture {
            future: self.inner.call(req),
            kept,
        }
    }
}

/// A stricter floor: each clone of the service keeps the header value it last saw and the
/// generation it was published with; a request does one plain atomic load of the shared
/// generation and, if it is unchanged, clones the value it already holds (no shared pointer
/// load, no lock). Not what the crate does today; shown to size what that design would save.
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

fn prepared_value() -> HeaderValue {
    // Built like the crate's: a shared `Bytes`, marked sensitive.
    let mut value = HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {TOKEN}"))).unwrap();
    value.set_sensitive(true);
    value
}

// --- The harness. ---------------------------------------------------------------------------

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// `poll_ready`, `call` and one poll of the response future, which must be ready at once.
#[inline]
fn call_now<S, B, RB>(svc: &mut S, cx: &mut Context<'_>, req: Request<B>) -> Response<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("inner service not ready: {other:?}"),
    }
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => {
            assert_eq!(response.status(), StatusCode::OK);
            response
        }
        Poll::Ready(Err(error)) => panic!("request failed: {error:?}"),
        Poll::Pending => panic!("the cached path went pending"),
    }
}

/// Benchmarks `make(Api)`, after checking once that it stamps the token (`stamps`).
fn bench<S>(c: &mut Criterion, name: &str, stamps: bool, make: impl Fn(Api) -> S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
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

    let source = StaticToken::from_token(Token::new(TOKEN).expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source);
    let token = rt.block_on(layer.cache().token()).expect("token");
    assert_eq!(token.access_token().secret(), TOKEN);
    let no_replay = layer.clone().without_replay();
    bench(c, "bearer_no_replay", true, |api| no_replay.layer(api));
    bench(c, "bearer_replay", true, |api| layer.layer(api));
    if paired_enabled() {
        paired(
            "request_path/floor:add_authorization",
            Floor {
                inner: Api::FAST,
                current: current.clone(),
                replay: false,
            },
            add_authorization.layer(Api::FAST),
        );
        paired(
            "request_path/floor_local:add_authorization",
            LocalFloor {
                inner: Api::FAST,
                shared: published.clone(),
                local: (0, HeaderValue::from_static("")),
            },
            add_authorization.layer(Api::FAST),
        );
        paired(
            "request_path/bearer_no_replay:add_authorization",
            no_replay.layer(Api::FAST),
            add_authorization.layer(Api::FAST),
        );
        paired(
            "request_path/bearer_replay:floor_replay",
            layer.layer(Api::FAST),
            Floor {
                inner: Api::FAST,
                current: current.clone(),
                replay: true,
            },
        );
    }
    let stats = layer.cache().stats();
    assert_eq!(
        (stats.fetches, stats.waits),
        (1, 1),
        "the cached path fetched or waited"
    );
}

// --- The paired check. -----------------------------------------------------------------------

/// Whether to run the paired check after the criterion benchmarks: not in `--test`, `--list` or
/// `--profile-time` runs, not when a benchmark filter is given, and not with `BENCH_PAIRED=0`.
/// Times `BATCH` requests through `a` and `b` alternately (the order swapped every round) for
/// about two seconds, and reports the median ratio of `a`'s time to `b`'s. Both see the same
/// moments of the machine, so a slow patch of it cannot fall on one side only.
fn paired<A, B>(label: &str, mut a: A, mut b: B)
where
    A: Service<Request<Body>, Response = Response<Body>>,
    A::Error: Debug,
    B: Service<Request<Body>, Response = Response<Body>>,
    B::Error: Debug,
{
    fn timed<S>(svc: &mut S, cx: &mut Context<'_>, out: &mut Vec<Response<Body>>) -> f64
    where
        S: Service<Request<Body>, Response = Response<Body>>,
        S::Error: Debug,
    {
        let requests: Vec<_> = (0..BATCH).map(|_| request()).collect();
        out.clear();
        let start = Instant::now();
        for req in requests {
            out.push(call_now(svc, cx, black_box(req)));
        }
        start.elapsed().as_secs_f64()
    }
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::with_capacity(BATCH as usize);
    let mut ratios = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end || ratios.len() < 100 {
        let (ta, tb) = if ratios.len() % 2 == 0 {
            let ta = timed(&mut a, &mut cx, &mut out);
            (ta, timed(&mut b, &mut cx, &mut out))
        } else {
            let tb = timed(&mut b, &mut cx, &mut out);
            (timed(&mut a, &mut cx, &mut out), tb)
        };
        ratios.push(ta / tb);
    }
    report_paired(label, &mut ratios);
}

fn paired_enabled() -> bool {
    if std::env::var("BENCH_PAIRED").is_ok_and(|v| v == "0") {
        return false;
    }
    let takes_value = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--plotting-backend",
        "--output-format",
        "--color",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut previous = "";
    for arg in &args {
        if matches!(arg.as_str(), "--test" | "--list") || arg.starts_with("--profile-time") {
            return false;
        }
        if !arg.starts_with('-') && !takes_value.contains(&previous) {
            return false;
        }
        previous = arg;
    }
    true
}

/// The median of `ratios`, printed for `scripts/bench.sh` as
/// `PAIRED <group>/<numerator>:<denominator> <median time ratio> <rounds>`.
fn report_paired(label: &str, ratios: &mut [f64]) {
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("PAIRED {label} {median:.4} {}", ratios.len());
}

criterion_group!(benches, request_path);
criterion_main!(benches);
