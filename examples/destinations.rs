//! One layer, many destinations: a client (here, the outbound side of a gateway) calls two APIs,
//! `billing` and `search`, each of which accepts only tokens issued for its own audience. One
//! `BearerAuthLayer` serves both: an origin table maps each request to a `TokenKey`, the keyed
//! cache holds one token per key, and the token source is asked for each key's token with the
//! key in its `TokenRequest`. A request to an origin in no table goes out without a token.
//!
//! Everything runs on 127.0.0.1; the example checks what it claims and exits with an error if
//! something does not hold:
//!
//! ```text
//! cargo run --example destinations
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_bearer::auth::Destinations;
use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenCache, TokenKey, TokenRequest};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tokio::time::timeout(Duration::from_secs(30), run()).await?
}

async fn run() -> Result<(), BoxError> {
    let billing = serve("billing").await?;
    let search = serve("search").await?;
    let elsewhere = serve("elsewhere").await?;

    // The token source. A real one is `oauth2::ClientCredentials`, which asks its token endpoint
    // for the key's audiences, scopes and resources; this stand-in issues `<audience>-token-<n>`.
    let fetches = Arc::new(AtomicUsize::new(0));
    let source = source_fn({
        let fetches = fetches.clone();
        move |req: TokenRequest| {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let audience = req.key().audiences().next().unwrap_or("none").to_owned();
            println!("   token source: a token for audience {audience:?}");
            async move {
                Ok::<_, Infallible>(
                    Token::new(format!("{audience}-token-{n}"))
                        .with_expires_in(Duration::from_secs(600)),
                )
            }
        }
    });

    // One keyed cache, and which key each origin gets.
    let cache = TokenCache::builder(source).max_keys(100).build_keyed();
    let destinations = Destinations::new(cache.clone())
        .origin(
            format!("http://{billing}").parse()?,
            TokenKey::audience_of("billing"),
        )
        .origin(
            format!("http://{search}").parse()?,
            TokenKey::audience_of("search"),
        );
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::destinations(destinations))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let call = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            let request = Request::get(format!("http://{addr}/"))
                .body(Full::default())
                .expect("a valid request");
            let response = client.oneshot(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, String::from_utf8(body.to_vec())?))
        }
    };

    println!("-- 1. billing and search, called at once, each get a token for its own audience");
    let (to_billing, to_search) = tokio::join!(call(billing), call(search));
    let (to_billing, to_search) = (to_billing?, to_search?);
    println!("   billing answered {to_billing:?}");
    println!("   search answered {to_search:?}");
    check(
        to_billing.0 == StatusCode::OK
            && to_billing
                .1
                .starts_with("billing saw Bearer billing-token-"),
        "billing received a billing token",
    )?;
    check(
        to_search.0 == StatusCode::OK && to_search.1.starts_with("search saw Bearer search-token-"),
        "search received a search token",
    )?;

    println!("-- 2. more calls reuse the cached tokens: no new fetch");
    for _ in 0..5 {
        call(billing).await?;
        call(search).await?;
    }
    check(
        fetches.load(Ordering::SeqCst) == 2,
        "2 fetches in all, one per audience",
    )?;
    let billing_stats = cache
        .stats(&TokenKey::audience_of("billing"))
        .expect("held");
    check(billing_stats.fetches == 1, "billing's key fetched once")?;

    println!("-- 3. an origin in no table gets no token");
    let to_elsewhere = call(elsewhere).await?;
    println!("   elsewhere answered {to_elsewhere:?}");
    check(
        to_elsewhere == (StatusCode::UNAUTHORIZED, "elsewhere saw no token".into()),
        "no token went to the unmapped origin",
    )?;
    println!("all checks passed");
    Ok(())
}

/// An API that accepts only `Bearer <name>-token-…` and answers with what it saw.
async fn serve(name: &'static str) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let (status, text) = match auth {
                    Some(auth) if auth.starts_with(&format!("Bearer {name}-token-")) => {
                        (StatusCode::OK, format!("{name} saw {auth}"))
                    }
                    Some(auth) => (StatusCode::UNAUTHORIZED, format!("{name} refused {auth}")),
                    None => (StatusCode::UNAUTHORIZED, format!("{name} saw no token")),
                };
                let mut response = Response::new(Full::new(Bytes::from(text)));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}

fn check(holds: bool, claim: &str) -> Result<(), BoxError> {
    if holds {
        println!("   ok: {claim}");
        Ok(())
    } else {
        Err(format!("claim does not hold: {claim}").into())
    }
}
