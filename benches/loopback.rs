//! Benchmark 4, end to end on loopback: hyper-util's client calling a hyper server on
//! 127.0.0.1, over HTTP/1.1 (a pool of connections) and HTTP/2 (prior knowledge, one connection), bare and with
//! `BearerAuthLayer` (default settings: cached token, replay on). `*_add_authorization` sends
//! the same header with tower-http's `AddAuthorization` (static, marked sensitive as the layer
//! marks it), to tell what the token costs on the wire from what the layer costs.
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
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::{BearerAuthLayer, StaticToken, Token};
use tower_http::auth::AddAuthorizationLayer;

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::Paired;
use common::{paired_enabled, spawn_server, timed_on, Body, TOKEN};

const TASKS: usize = 16;
const PER_TASK: usize = 32;

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
    let addr = spawn_server(api);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let source =
        StaticToken::from_token(Token::new(TOKEN).with_expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source);
    let no_replay = layer.clone().without_replay();
    // The paired checks of both protocols run together, interleaved, after every benchmark.
    let paired = paired_enabled();
    let mut checks = Paired::default();

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
        // The same header, static: what the token itself costs on the wire (marked sensitive, as
        // the layer marks it, so HTTP/2 never indexes it).
        let static_header = AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true);
        bench(
            c,
            &rt,
            addr,
            &format!("{proto}_add_authorization"),
            static_header.layer(client.clone()),
            true,
        );
        if http2 {
            // The same static header not marked sensitive, which HPACK could index. h2 never
            // indexes `Authorization` whatever the flag (`Header::skip_value_index`), so this
            // shows that marking the token sensitive costs nothing on HTTP/2 (paired ≈ 1).
            let indexed = AddAuthorizationLayer::bearer(TOKEN).as_sensitive(false);
            bench(
                c,
                &rt,
                addr,
                "http2_add_authorization_indexed",
                indexed.layer(client.clone()),
                true,
            );
            if paired {
                checks.check(
                    "loopback/http2_add_authorization:http2_add_authorization_indexed",
                    None,
                    timed_batches(&rt, addr, static_header.layer(client.clone()), true),
                    timed_batches(&rt, addr, indexed.layer(client.clone()), true),
                );
            }
        }
        bench(
            c,
            &rt,
            addr,
            &format!("{proto}_bearer"),
            layer.layer(client.clone()),
            true,
        );
        if !http2 {
            // Replay off: what keeping a copy of each request costs end to end.
            bench(
                c,
                &rt,
                addr,
                "http1_bearer_no_replay",
                no_replay.layer(client.clone()),
                true,
            );
        }
        if paired {
            if !http2 {
                checks.check(
                    "loopback/http1_bearer:http1_bearer_no_replay",
                    None,
                    timed_batches(&rt, addr, layer.layer(client.clone()), true),
                    timed_batches(&rt, addr, no_replay.layer(client.clone()), true),
                );
                checks.check(
                    "loopback/http1_bearer_no_replay:http1_bare",
                    None,
                    timed_batches(&rt, addr, no_replay.layer(client.clone()), true),
                    timed_batches(&rt, addr, client.clone(), false),
                );
                checks.check(
                    "loopback/http1_bearer_no_replay:http1_add_authorization",
                    None,
                    timed_batches(&rt, addr, no_replay.layer(client.clone()), true),
                    timed_batches(&rt, addr, static_header.layer(client.clone()), true),
                );
            }
            // Throughput ≥ 0.97 × bare: batch time ≤ 1 / 0.97 × bare's.
            checks.check(
                format!("loopback/{proto}_bearer:{proto}_bare"),
                Some(1.0 / 0.97),
                timed_batches(&rt, addr, layer.layer(client.clone()), true),
                timed_batches(&rt, addr, client.clone(), false),
            );
            checks.check(
                format!("loopback/{proto}_bearer:{proto}_add_authorization"),
                None,
                timed_batches(&rt, addr, layer.layer(client.clone()), true),
                timed_batches(&rt, addr, static_header.layer(client.clone()), true),
            );
            // The same service on both sides: how far from 1 the paired check strays by itself.
            checks.check(
                format!("loopback/{proto}_bare:{proto}_bare"),
                None,
                timed_batches(&rt, addr, client.clone(), false),
                timed_batches(&rt, addr, client, false),
            );
        }
    }
    if paired {
        checks.run();
    }
    assert_eq!(layer.cache().stats().fetches, 1);
}

// --- The paired check. -----------------------------------------------------------------------

/// One side of a paired check (see [`Paired`]): each call times one batch through `svc`.
fn timed_batches<S>(
    rt: &Runtime,
    addr: SocketAddr,
    svc: S,
    authorized: bool,
) -> impl FnMut() -> f64 + '_
where
    S: Service<Request<Body>, Response = Response<Incoming>> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    move || timed_on(rt, batch(&svc, addr, authorized))
}

criterion_group!(benches, loopback);
criterion_main!(benches);
