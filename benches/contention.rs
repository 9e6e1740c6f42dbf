//! Benchmark 2, contention: a multi-thread runtime (one worker per core), 256 tasks each
//! sending 64 requests through its own clone of one service, so every clone shares one layer (and one token
//! cache). One iteration is one batch of 16,384 requests, timed from the first spawn to the last
//! join.
//!
//! The same batch runs with no middleware (`bare`), with tower-http's `AddAuthorization::bearer`
//! (`add_authorization`), with a hand-written `Arc<Mutex<Option<Token>>>` cache (`mutex_cache`),
//! with the hand-written floor of `benches/request_path.rs` (`floor`, `floor_replay`) and with
//! `BearerAuthLayer` (`bearer_no_replay`, `bearer_replay`). Target: the layer's
//! throughput ≥ 0.95 × `add_authorization`'s.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready as ready_poll, Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::runtime::Runtime;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};
use tower_http::auth::AddAuthorizationLayer;

const TASKS: usize = 256;
const PER_TASK: usize = 64;

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

pin_project! {
    /// The cached path sends at once; the slow path is boxed.
    #[project = MutexProj]
    enum MutexFuture<F, T> {
        Cached { #[pin] inner: F },
        Fetching { inner: BoxFuture<Result<T, BoxError>> },
    }
}

impl<F, T, E> Future for MutexFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MutexProj::Cached { inner } => inner.poll(cx).map_err(Into::into),
            MutexProj::Fetching { inner } => inner.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for MutexAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = MutexFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
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
                        inner
                            .ready()
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

fn prepared_value() -> HeaderValue {
    // Built like the crate's: a shared `Bytes`, marked sensitive.
    let mut value = HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {TOKEN}"))).unwrap();
    value.set_sensitive(true);
    value
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

    let source = StaticToken::from_token(Token::new(TOKEN).expires_in(Duration::from_secs(3600)));
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
        paired(
            &rt,
            "contention/floor:add_authorization",
            Floor {
                inner: api,
                current: Arc::new(ArcSwap::from_pointee(prepared_value())),
                replay: false,
            },
            add_authorization.clone(),
        );
        paired(
            &rt,
            "contention/bearer_replay:add_authorization",
            layer.layer(api),
            add_authorization.clone(),
        );
        paired(
            &rt,
            "contention/bearer_no_replay:add_authorization",
            layer.clone().without_replay().layer(api),
            add_authorization,
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
/// Runs batches through `a` and `b` alternately (the order swapped every round) for about three
/// seconds, and reports the median ratio of `a`'s batch time to `b`'s.
fn paired<A, B>(rt: &Runtime, label: &str, a: A, b: B)
where
    A: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    A::Future: Send,
    A::Error: std::fmt::Debug + Send,
    B: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    B::Future: Send,
    B::Error: std::fmt::Debug + Send,
{
    let mut ratios = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    rt.block_on(async {
        while Instant::now() < end || ratios.len() < 10 {
            let first = Instant::now();
            if ratios.len() % 2 == 0 {
                batch(&a).await;
            } else {
                batch(&b).await;
            }
            let second = Instant::now();
            if ratios.len() % 2 == 0 {
                batch(&b).await;
            } else {
                batch(&a).await;
            }
            let (t1, t2) = (
                (second - first).as_secs_f64(),
                second.elapsed().as_secs_f64(),
            );
            ratios.push(if ratios.len() % 2 == 0 {
                t1 / t2
            } else {
                t2 / t1
            });
        }
    });
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

criterion_group!(benches, contention);
criterion_main!(benches);
