//! Benchmark 5, token acquisition: one client-credentials token request against an in-process
//! token endpoint on 127.0.0.1 (hyper, on its own runtime and thread, answering a fixed JSON token
//! response), sent by this crate (`ClientCredentials::request_token`, which bypasses every cache,
//! through its default hyper-util client) and by the `oauth2` crate 5.x with its own reqwest
//! client (`BasicClient` + `exchange_client_credentials().request_async`). Both clients are built
//! once, so both reuse their keep-alive connection. Target: this crate no slower.

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, TokenResponse as _, TokenUrl};
use tokio::net::TcpListener;
use tower_bearer::oauth2::{Client, ClientCredentials};

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const ACCESS_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl";
const TOKEN_RESPONSE: &str = r#"{"access_token":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl","token_type":"Bearer","expires_in":3600,"scope":"orders:write"}"#;

/// The token endpoint: a client-credentials POST with HTTP Basic client authentication gets the
/// fixed token response; anything else gets 400.
async fn token_endpoint(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
    let post = req.method() == Method::POST;
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let grant = body
        .as_ref()
        .is_ok_and(|b| b.windows(29).any(|w| w == b"grant_type=client_credentials"));
    let mut response = if basic && post && grant {
        Response::new(Full::new(Bytes::from_static(TOKEN_RESPONSE.as_bytes())))
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(
            br#"{"error":"invalid_request"}"#,
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Starts the token endpoint on its own runtime and thread; returns its address.
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
                        .serve_connection(
                            TokioIo::new(stream),
                            hyper::service::service_fn(token_endpoint),
                        )
                        .await;
                });
            }
        })
    });
    addr
}

fn acquisition(c: &mut Criterion) {
    let addr = server();
    let token_url = format!("http://{addr}/oauth2/token");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // This crate: its default client (hyper-util; rustls for https, plain http to loopback).
    let client = Client::builder(token_url.as_str(), CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .build()
        .expect("client");
    let ours = ClientCredentials::new(client);
    let token = rt
        .block_on(ours.request_token())
        .expect("token")
        .into_token();
    assert_eq!(token.access_token().secret(), ACCESS_TOKEN);

    // The `oauth2` crate: `BasicClient` with its reqwest client, redirects off as it advises.
    let theirs = BasicClient::new(ClientId::new(CLIENT_ID.to_owned()))
        .set_client_secret(ClientSecret::new(CLIENT_SECRET.to_owned()))
        .set_token_uri(TokenUrl::new(token_url.clone()).expect("token URL"));
    let http = oauth2::reqwest::ClientBuilder::new()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client");
    let response = rt
        .block_on(theirs.exchange_client_credentials().request_async(&http))
        .expect("token");
    assert_eq!(response.access_token().secret(), ACCESS_TOKEN);

    let mut group = c.benchmark_group("acquisition");
    group.bench_function("tower_bearer", |b| {
        let ours = &ours;
        b.to_async(&rt).iter(|| async move {
            let response = ours.request_token().await.expect("token");
            black_box(response)
        })
    });
    group.bench_function("oauth2_crate", |b| {
        let (theirs, http) = (&theirs, &http);
        b.to_async(&rt).iter(|| async move {
            let response = theirs
                .exchange_client_credentials()
                .request_async(http)
                .await
                .expect("token");
            black_box(response)
        })
    });
    group.finish();

    if paired_enabled() {
        // Chunks of 20 token requests, alternately (the order swapped every round).
        let chunk_ours = || async {
            let start = Instant::now();
            for _ in 0..20 {
                black_box(ours.request_token().await.expect("token"));
            }
            start.elapsed().as_secs_f64()
        };
        let chunk_theirs = || async {
            let start = Instant::now();
            for _ in 0..20 {
                let response = theirs
                    .exchange_client_credentials()
                    .request_async(&http)
                    .await
                    .expect("token");
                black_box(response);
            }
            start.elapsed().as_secs_f64()
        };
        let mut ratios = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        rt.block_on(async {
            while Instant::now() < end || ratios.len() < 20 {
                let (a, b) = if ratios.len() % 2 == 0 {
                    let a = chunk_ours().await;
                    (a, chunk_theirs().await)
                } else {
                    let b = chunk_theirs().await;
                    (chunk_ours().await, b)
                };
                ratios.push(a / b);
            }
        });
        report_paired("acquisition/tower_bearer:oauth2_crate", &mut ratios);
    }
}

// --- The paired check. -----------------------------------------------------------------------

/// Whether to run the paired check after the criterion benchmarks: not in `--test`, `--list` or
/// `--profile-time` runs, not when a benchmark filter is given, and not with `BENCH_PAIRED=0`.
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

criterion_group!(benches, acquisition);
criterion_main!(benches);
