//! hyper-util's legacy `Client` under the bearer layer, calling an axum API that checks tokens,
//! over HTTP/1.1 and over HTTP/2 (prior knowledge, as between services inside a cluster).
//!
//! For each protocol, on a timeline:
//!
//! 1. the first request waits for the first token (`tok-1`) and gets a 200;
//! 2. the API revokes `tok-1`: the next request gets a 401, which the layer answers by fetching
//!    a new token and replaying the request, so the caller sees a 200.
//!
//! Everything runs on 127.0.0.1 and ends in well under a second. The example checks what it
//! claims and exits with an error if something does not hold:
//!
//! ```text
//! cargo run --example hyper_client
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{source_fn, BearerAuth, BearerAuthLayer, BoxError, Token, TokenRequest};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // However the servers behave, the example ends within 10 s.
    tokio::time::timeout(Duration::from_secs(10), run())
        .await
        .map_err(|_| "the example did not finish within 10 s")?
}

async fn run() -> Result<(), BoxError> {
    let start = Instant::now();
    for http2 in [false, true] {
        scenario(start, http2).await?;
    }
    println!("all checks passed");
    Ok(())
}

async fn scenario(start: Instant, http2: bool) -> Result<(), BoxError> {
    let log = |what: &dyn Display| println!("[{:>4} ms] {what}", start.elapsed().as_millis());
    let (name, version) = if http2 {
        ("HTTP/2 (prior knowledge)", Version::HTTP_2)
    } else {
        ("HTTP/1.1", Version::HTTP_11)
    };
    println!("-- {name}");

    let api = Api::default();
    let addr = api.serve().await?;
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let http: Client<HttpConnector, Full<Bytes>> = builder.build_http();
    // The source stands for the authorization server that issues the API's tokens.
    let layer = BearerAuthLayer::new(api.source());
    let client = ServiceBuilder::new().layer(layer.clone()).service(http);
    log(&format_args!("API on http://{addr}, client speaks {name}"));

    let (status, seen) = whoami(&client, addr, version).await?;
    log(&format_args!(
        "GET /whoami -> {status}, the API accepted {seen}"
    ));
    check(
        status == StatusCode::OK && seen == "Bearer tok-1",
        "the first request carries tok-1",
    )?;
    check(layer.cache().stats().fetches == 1, "one fetch")?;

    api.revoke("tok-1");
    log(&"the API revokes tok-1");
    let (status, seen) = whoami(&client, addr, version).await?;
    log(&format_args!(
        "GET /whoami -> {status}, the API accepted {seen}"
    ));
    for hit in api.hits() {
        log(&format_args!("  the API saw: {hit}"));
    }
    let stats = layer.cache().stats();
    log(&format_args!(
        "cache: fetches={} rejections={} replays={}",
        stats.fetches, stats.rejections, stats.replays
    ));
    check(
        status == StatusCode::OK && seen == "Bearer tok-2",
        "the replay carries tok-2",
    )?;
    check(
        api.statuses() == [200, 401, 200],
        "the API answered 200, 401, 200",
    )?;
    check(
        (stats.fetches, stats.rejections, stats.replays) == (2, 1, 1),
        "two fetches, one rejection, one replay",
    )?;
    Ok(())
}

/// `GET /whoami` through the authenticated client: the status and what the API accepted.
async fn whoami(
    client: &BearerAuth<Client<HttpConnector, Full<Bytes>>>,
    addr: SocketAddr,
    version: Version,
) -> Result<(StatusCode, String), BoxError> {
    let request = http::Request::get(format!("http://{addr}/whoami")).body(Full::default())?;
    let response = client.clone().oneshot(request).await?;
    check(
        response.version() == version,
        "the response came over the expected protocol",
    )?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

// ---------------------------------------------------------------------------------------------
// The API: axum, accepting only the tokens its authorization server issued and did not revoke.

#[derive(Clone, Default)]
struct Api {
    valid: Arc<Mutex<HashSet<String>>>,
    issued: Arc<AtomicUsize>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

/// One request the API answered.
struct Hit {
    version: Version,
    authorization: Option<String>,
    status: StatusCode,
}

impl Display for Hit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authorization = self.authorization.as_deref().unwrap_or("no token");
        write!(
            f,
            "{:?} {authorization} -> {}",
            self.version,
            self.status.as_u16()
        )
    }
}

impl Api {
    /// Issues `tok-1`, `tok-2`, ..., each valid until revoked.
    fn source(&self) -> impl tower_bearer::TokenSource {
        let api = self.clone();
        source_fn(move |_: TokenRequest| {
            let api = api.clone();
            async move {
                let token = format!("tok-{}", api.issued.fetch_add(1, Ordering::SeqCst) + 1);
                api.valid.lock().unwrap().insert(token.clone());
                Ok::<_, Infallible>(Token::new(token).with_expires_in(Duration::from_secs(3600)))
            }
        })
    }

    fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().remove(token);
    }

    fn hits(&self) -> Vec<String> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(Hit::to_string)
            .collect()
    }

    fn statuses(&self) -> Vec<u16> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|hit| hit.status.as_u16())
            .collect()
    }

    /// Serves the API on 127.0.0.1. `axum::serve` takes HTTP/1.1 and HTTP/2 with prior
    /// knowledge on the same port.
    async fn serve(&self) -> Result<SocketAddr, BoxError> {
        let router = Router::new()
            .route("/whoami", get(whoami_handler))
            .with_state(self.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(addr)
    }
}

/// Answers with the `Authorization` it accepted, or 401 `invalid_token`.
async fn whoami_handler(State(api): State<Api>, req: Request) -> Response {
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let valid = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| api.valid.lock().unwrap().contains(token));
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    api.hits.lock().unwrap().push(Hit {
        version: req.version(),
        authorization: authorization.clone(),
        status,
    });
    match authorization {
        Some(authorization) if valid => Response::new(Body::from(authorization)),
        _ => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
            .body(Body::empty())
            .unwrap(),
    }
}

/// Fails the example when something it claims does not hold.
fn check(holds: bool, claim: &str) -> Result<(), BoxError> {
    if holds {
        Ok(())
    } else {
        Err(format!("check failed: {claim}").into())
    }
}
