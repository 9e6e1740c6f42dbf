//! Harness pieces shared by the benchmarks: the token and the request they send, the hand-written
//! middlewares they compare the layer with, the in-process server, and the paired check
//! (`paired.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tower::{BoxError, Service, ServiceExt};

pub(crate) mod paired;

/// A JWT-sized access token.
pub(crate) const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoIn0.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJzdWIiOiJiZW5jaC1jbGllbnQiLCJhdWQiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwic2NvcGUiOiJvcmRlcnM6d3JpdGUifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZQ";

pub(crate) type Body = Full<Bytes>;

/// A request as a client sends it: six headers and a small JSON body.
pub(crate) fn request() -> Request<Body> {
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

// --- What users write today: a token behind a mutex. ---------------------------------------

pub(crate) struct CachedToken {
    pub(crate) access_token: String,
    pub(crate) expires_at: Instant,
}

#[derive(Clone)]
pub(crate) struct MutexAuth<S> {
    pub(crate) inner: S,
    pub(crate) token: Arc<Mutex<Option<CachedToken>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The cached path sends at once; the slow path is boxed.
    #[project = MutexProj]
    pub(crate) enum MutexFuture<F, T> {
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

/// One lock-free load of a prepared header value (`ArcSwap`, the safe-Rust atomic load of a
/// shared pointer), one insert, the 401 check and, with `replay`, one clone of the request and
/// of the service kept until the response.
#[derive(Clone)]
pub(crate) struct Floor<S> {
    pub(crate) inner: S,
    pub(crate) current: Arc<ArcSwap<HeaderValue>>,
    pub(crate) replay: bool,
}

pin_project! {
    pub(crate) struct FloorFuture<F, B, S> {
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
        let response = ready!(this.future.poll(cx))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // A replay would be sent from `kept` here; never taken in these benchmarks.
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

/// The header value of `TOKEN`, built like the crate's: a shared `Bytes`, marked sensitive.
pub(crate) fn prepared_value() -> HeaderValue {
    let mut value = HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {TOKEN}"))).unwrap();
    value.set_sensitive(true);
    value
}

// --- An in-process server. -----------------------------------------------------------------

/// Starts a hyper server (HTTP/1.1 and HTTP/2) answering with `handler` on 127.0.0.1, on its own
/// runtime (one worker) and thread; returns its address.
pub(crate) fn spawn_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handler))
                        .await;
                });
            }
        })
    });
    addr
}

// --- The paired check. -----------------------------------------------------------------------

/// Whether to run the paired check after the criterion benchmarks: only when criterion measures
/// (`--bench`, which `cargo bench` passes; without it, as under `cargo test --all-targets`,
/// criterion only tests that each benchmark runs), not in `--test`, `--list` or `--profile-time`
/// runs, not when a benchmark filter is given, and not with `BENCH_PAIRED=0`.
pub(crate) fn paired_enabled() -> bool {
    if std::env::var("BENCH_PAIRED").is_ok_and(|v| v == "0") {
        return false;
    }
    let takes_value = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--plotting-backend",
        "--output-format",
        "--color",
        "--format",
        "-s",
        "-b",
        "-c",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|arg| arg == "--bench") {
        return false;
    }
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

/// Runs `work` to completion on `rt`; returns the seconds it took.
pub(crate) fn timed_on(rt: &Runtime, work: impl Future) -> f64 {
    rt.block_on(async {
        let start = Instant::now();
        work.await;
        start.elapsed().as_secs_f64()
    })
}

/// `poll_ready`, `call` and one poll of the response future, which must be ready at once and
/// 200: the cached path of a layer, timed without a runtime.
#[inline]
pub(crate) fn call_now<S, B, RB>(svc: &mut S, cx: &mut Context<'_>, req: Request<B>) -> Response<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("inner service not ready: {other:?}"),
    }
    let mut future = std::pin::pin!(svc.call(req));
    match future.as_mut().poll(cx) {
        Poll::Ready(Ok(response)) => {
            assert_eq!(response.status(), StatusCode::OK);
            response
        }
        Poll::Ready(Err(error)) => panic!("request failed: {error:?}"),
        Poll::Pending => panic!("the cached path went pending"),
    }
}

/// Prints the source calls of each storm for `scripts/bench.sh` (the most in any storm, and
/// how many storms ran).
pub(crate) fn report_storm_calls(name: &str, calls: &[u64]) {
    let max = calls.iter().copied().max().unwrap_or(0);
    println!("STORM_SOURCE_CALLS {name} {max} {}", calls.len());
}
