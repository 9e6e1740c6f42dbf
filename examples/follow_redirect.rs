//! The bearer layer under tower-http's `FollowRedirect`: `only_origins` keeps the token from
//! following a redirect to another origin.
//!
//! Two servers on 127.0.0.1: A, the API the token is for, whose `/go` redirects (302) to B, a
//! server on another port and so another origin. `FollowRedirect` sits outside the bearer layer
//! so that every hop goes through the layer, which stamps a token on each request it sees.
//!
//! 1. With `only_origins([A])`: A gets the token, B gets a request without one.
//! 2. Without it: B gets the token too. tower-http's standard redirect policy strips
//!    credentials that the *caller* put on a request before a cross-origin hop, but the token is
//!    added below `FollowRedirect`, on every hop: that is the leak `only_origins` prevents.
//!
//! The example checks what it claims and exits with an error if something does not hold:
//!
//! ```text
//! cargo run --example follow_redirect
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::{BearerAuthLayer, BoxError, Origin, StaticToken};
use tower_http::follow_redirect::{FollowRedirectLayer, RequestUri};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // However the servers behave, the example ends within 10 s.
    tokio::time::timeout(Duration::from_secs(10), run())
        .await
        .map_err(|_| "the example did not finish within 10 s")?
}

async fn run() -> Result<(), BoxError> {
    let seen = Seen::default();
    let b = serve(Router::new().fallback(server_b).with_state(seen.clone())).await?;
    let a = serve(
        Router::new()
            .fallback(server_a)
            .with_state((seen.clone(), b)),
    )
    .await?;
    println!("A (the API, trusted) on http://{a}, B (another origin) on http://{b}");
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    println!("-- 1. only_origins([http://{a}])");
    let origin_a: Origin = format!("http://{a}").parse()?;
    let guarded = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(BearerAuthLayer::new(StaticToken::new("t0k3n")).only_origins([origin_a]))
        .service(http.clone());
    let visits = follow(guarded, a, &seen).await?;
    check(
        visits == [("A", Some("Bearer t0k3n")), ("B", None)],
        "A got the token, B did not",
    )?;

    println!("-- 2. without only_origins");
    let leaky = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(BearerAuthLayer::new(StaticToken::new("t0k3n")))
        .service(http);
    let visits = follow(leaky, a, &seen).await?;
    check(
        visits == [("A", Some("Bearer t0k3n")), ("B", Some("Bearer t0k3n"))],
        "without only_origins, the token follows the redirect to B",
    )?;
    println!("all checks passed");
    Ok(())
}

/// `GET http://A/go` through `client`, following the redirect; returns which server saw which
/// `Authorization`.
async fn follow<S>(client: S, a: SocketAddr, seen: &Seen) -> Result<Vec<Visit>, BoxError>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let request = http::Request::get(format!("http://{a}/go")).body(Full::default())?;
    let response = client.oneshot(request).await.map_err(Into::into)?;
    let landed = response
        .extensions()
        .get::<RequestUri>()
        .map(|uri| uri.0.clone());
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "   GET http://{a}/go -> {status} from {} ({:?})",
        landed.map_or_else(|| "?".to_owned(), |uri| uri.to_string()),
        String::from_utf8_lossy(&body)
    );
    check(status == StatusCode::OK, "the redirect was followed to B")?;
    let visits = seen.take();
    for (server, authorization) in &visits {
        println!(
            "   {server} saw Authorization: {}",
            authorization.unwrap_or("(none)")
        );
    }
    Ok(visits)
}

/// Which server saw which `Authorization`, in order. Only the example's own token is ever
/// recorded, so it is kept as a `&'static str`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Visit>>>);

/// A server, and the `Authorization` it saw (if any).
type Visit = (&'static str, Option<&'static str>);

impl Seen {
    fn record(&self, server: &'static str, req: &Request) {
        let authorization = req.headers().get(AUTHORIZATION).map(|value| {
            if value == "Bearer t0k3n" {
                "Bearer t0k3n"
            } else {
                "(another value)"
            }
        });
        self.0.lock().unwrap().push((server, authorization));
    }

    fn take(&self) -> Vec<Visit> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A: redirects `/go` to B.
async fn server_a(State((seen, b)): State<(Seen, SocketAddr)>, req: Request) -> Response {
    seen.record("A", &req);
    Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, format!("http://{b}/landing"))
        .body(Body::empty())
        .unwrap()
}

/// B: another origin.
async fn server_b(State(seen): State<Seen>, req: Request) -> &'static str {
    seen.record("B", &req);
    "landed on B"
}

async fn serve(router: Router) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Fails the example when something it claims does not hold.
fn check(holds: bool, claim: &str) -> Result<(), BoxError> {
    if holds {
        Ok(())
    } else {
        Err(format!("check failed: {claim}").into())
    }
}
