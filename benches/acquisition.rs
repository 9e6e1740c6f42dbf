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

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, TokenResponse as _, TokenUrl};
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::Paired;
use common::{paired_enabled, spawn_server, timed_on, Body};

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const ACCESS_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl";
const TOKEN_RESPONSE: &str = r#"{"access_token":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl","token_type":"Bearer","expires_in":3600,"scope":"orders:write"}"#;

/// The token endpoint: a client-credentials POST with HTTP Basic client authentication gets the
/// fixed token response; anything else gets 400.
async fn token_endpoint(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
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

fn acquisition(c: &mut Criterion) {
    let addr = spawn_server(token_endpoint);
    let token_url = format!("http://{addr}/oauth2/token");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // This crate: its default client (hyper-util; rustls for https, plain http to loopback).
    let endpoint = TokenEndpoint::builder(token_url.as_str(), CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .build()
        .expect("token endpoint");
    let ours = ClientCredentials::new(endpoint);
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
        // Chunks of 20 token requests.
        let chunk_ours = || {
            timed_on(&rt, async {
                for _ in 0..20 {
                    black_box(ours.request_token().await.expect("token"));
                }
            })
        };
        let chunk_theirs = || {
            timed_on(&rt, async {
                for _ in 0..20 {
                    let response = theirs
                        .exchange_client_credentials()
                        .request_async(&http)
                        .await
                        .expect("token");
                    black_box(response);
                }
            })
        };
        let mut checks = Paired::default();
        // No slower: time ≤ 1.00 × the `oauth2` crate's.
        checks.check(
            "acquisition/tower_bearer:oauth2_crate",
            Some(1.0),
            chunk_ours,
            chunk_theirs,
        );
        // The same client on both sides: how far from 1 the paired check strays by itself.
        checks.check(
            "acquisition/tower_bearer:tower_bearer",
            None,
            chunk_ours,
            chunk_ours,
        );
        checks.run();
    }
}

criterion_group!(benches, acquisition);
criterion_main!(benches);
