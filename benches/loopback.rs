//! Benchmark 4, end to end on loopback: hyper-util's client calling a hyper server on
//! 127.0.0.1, over HTTP/1.1 (a pool of connections) and HTTP/2 (prior knowledge, one connection), bare and with
//! `BearerAuthLayer` (default settings: cached token, replay on).
//!
//! The server runs on its own runtime (one worker thread); the client on the benchmark's thread
//! (a current-thread runtime), as in a load generator whose client is the bottleneck. One
//! iteration is a batch of 512 requests: 16 tasks, each sending 32 requests one after the other
//! and reading each response body. Target: throughput with the layer ≥ 0.97 × bare.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};

const TASKS: usize = 16;
const PER_TASK: usize = 32;

/// A JWT-sized access token.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoIn0.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJzdWIiOiJiZW5jaC1jbGllbnQiLCJhdWQiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwic2NvcGUiOiJvcmRlcnM6d3JpdGUifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2lnbmF0dXJlLXNpZ25hdHVyZQ";

type Body = Full<Bytes>;

/// The API: reads the body, answers 200 with a small body and says whether the request carried
/// the token.
async fn api(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().strip_prefix(b"Bearer ") == Some(TOKEN.as_bytes()));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    black_box(body.ok());
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"id":1,"ok":true}"#)));
    response.headers_mut().insert(
        "x-authorized",
        header::HeaderValue::from_static(if authorized { "yes" } else { "no" }),
    );
    Ok(response)
}

/// Starts the server on its own runtime and thread; returns its address.
fn server() -> SocketAddr {
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
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(api))
                        .await;
                });
            }
        })
    });
    addr
}

fn request(addr: SocketAddr) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/orders?limit=10"))
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "loadgen/1.0")
        .header(header::ACCEPT, "application/json")
        .header(header::ACCEPT_ENCODING, "identity")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "7d4c6a1e-93b5-4b8f-a3a0-2f1e9c7b5d10")
        .body(Full::new(Bytes::from_static(
            br#"{"item":42,"quantity":1}"#,
        )))
        .unwrap()
}

/// Sends one request and reads the whole response; returns the server's `x-authorized`.
async fn send<S>(svc: &mut S, addr: SocketAddr) -> bool
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let authorized = response.headers()["x-authorized"] == "yes";
    let body = response.into_body().collect().await.unwrap().to_bytes();
    black_box(body);
    authorized
}

async fn batch<S>(svc: &S, addr: SocketAddr, authorized: bool)
where
    S: Service<Request<Body>, Response = Response<Incoming>> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    let local = tokio::task::LocalSet::new();
    for _ in 0..TASKS {
        let mut svc = svc.clone();
        local.spawn_local(async move {
            for _ in 0..PER_TASK {
                assert_eq!(send(&mut svc, addr).await, authorized);
            }
        });
    }
    local.await;
}

fn bench<S>(c: &mut Criterion, rt: &Runtime, addr: SocketAddr, name: &str, svc: S, authorized: bool)
where
    S: Service<Request<Body>, Response = Response<Incoming>> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    // Connections are opened (and the token fetched) before the measurement.
    rt.block_on(batch(&svc, addr, authorized));
    let mut group = c.benchmark_group("loopback");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    batch(&svc, addr, authorized).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let addr = server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let source = StaticToken::from_token(Token::new(TOKEN).expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source);

    for (proto, http2) in [("http1", false), ("http2", true)] {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Body> = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .pool_max_idle_per_host(TASKS)
            .build(connector);
        bench(
            c,
            &rt,
            addr,
            &format!("{proto}_bare"),
            client.clone(),
            false,
        );
        bench(
            c,
            &rt,
            addr,
            &format!("{proto}_bearer"),
            layer.layer(client),
            true,
        );
    }
    assert_eq!(layer.cache().stats().fetches, 1);
}

criterion_group!(benches, loopback);
criterion_main!(benches);
