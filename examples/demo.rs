//! A self-contained tour of `tower-bearer` against a real (in-process) OAuth 2.0 token endpoint
//! and a real API, both plain hyper servers on 127.0.0.1.
//!
//! It shows, on a timeline:
//!
//! 1. the first request waiting for the first token;
//! 2. later requests reusing the cached token without a fetch;
//! 3. a background refresh ahead of expiry that no request waits for;
//! 4. a token revoked by the server: one 401, answered by the layer with a new token and a
//!    replay, so the caller sees 200.
//!
//! Tokens live 2 seconds so that the whole story takes about 2 seconds. The demo checks what it
//! claims and exits with an error if something does not hold, so it doubles as a smoke test:
//!
//! ```text
//! cargo run --example demo
//! ```

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{self, ClientCredentials};
use tower_bearer::{BearerAuth, BearerAuthLayer, BoxError, TokenCache};

/// The client credentials the token endpoint knows.
const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret";

/// How long the token endpoint's tokens live. Real ones live minutes or hours; 2 seconds keeps
/// the demo short.
const TOKEN_LIFETIME: Duration = Duration::from_secs(2);

/// Stop using a token this long before its stated expiry (clock skew, time in flight). The
/// cache caps it at a quarter of the lifetime; here a token is usable for 1.75 s.
const EXPIRY_SKEW: Duration = Duration::from_millis(250);

/// Start one background refresh this long before the end of a token's usable life. With the
/// default 25 % jitter the refresh starts between 0.81 s and 1.0 s after the token was
/// requested: early enough that the new token arrives long before the old one is unusable.
const REFRESH_AHEAD: Duration = Duration::from_millis(750);

/// The authenticated API client: hyper-util's pooled client under the bearer layer.
type ApiClient = BearerAuth<Client<HttpConnector, Full<Bytes>>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let issuer = Arc::new(Issuer::default());
    let token_url: Uri =
        format!("{}/token", serve(token_endpoint(issuer.clone())).await?).parse()?;
    let hello: Uri = format!("{}/hello", serve(api(issuer.clone())).await?).parse()?;

    // The source is the only place that knows how tokens are obtained. The cache decides when,
    // and the layer stamps them on requests.
    let source = client_credentials(&token_url, CLIENT_ID, CLIENT_SECRET)?;
    let cache = TokenCache::builder(source)
        .expiry_skew(EXPIRY_SKEW)
        .refresh_ahead(REFRESH_AHEAD)
        // A token endpoint that hangs must not hold requests for the default 30 s.
        .fetch_timeout(Duration::from_secs(1))
        // Tokens shorter than 10 s are used for 10 s by default (so that an endpoint answering
        // `expires_in: 0` is not called on every request); the demo's 2-second tokens are real.
        .min_lifetime(Duration::from_millis(500))
        .build();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // `from_cache` rather than `BearerAuthLayer::new`: the demo keeps a handle on the cache to
    // read its stats. Clones of a cache share its state.
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(http);

    let mut demo = Demo {
        start,
        client,
        hello,
        issuer: issuer.clone(),
        requests: 0,
    };
    demo.log(format_args!(
        "token endpoint {token_url}, API {}",
        demo.hello
    ));

    println!("-- 1. cold start: the first request waits for the first token");
    let token = demo.request().await?;
    check(token == "tok-1", "the first request carries tok-1")?;

    println!("-- 2. the cached token is reused: no fetch");
    for _ in 0..3 {
        let token = demo.request().await?;
        check(token == "tok-1", "cached requests carry tok-1")?;
    }
    check(issuer.calls() == 1, "cached requests cause no fetch")?;

    println!("-- 3. tok-1 is due for a refresh at ~0.8-1.0 s: the first request after that");
    println!("      starts a background fetch and still goes out with tok-1; nobody waits");
    let before = cache.stats();
    demo.log(format_args!(
        "stats before: fetches={} waits={}",
        before.fetches, before.waits
    ));
    // Keep the traffic going, as a real client would. tok-1 stays usable until 1.75 s, so the
    // new token must have replaced it by 1.5 s.
    let mut refreshed = false;
    for _ in 0..6 {
        sleep(Duration::from_millis(250)).await;
        let token = demo.request().await?;
        if token != "tok-1" {
            check(token == "tok-2", "the refreshed token is tok-2")?;
            refreshed = true;
            break;
        }
    }
    check(
        refreshed,
        "tok-2 replaced tok-1 before tok-1 became unusable",
    )?;
    let after = cache.stats();
    demo.log(format_args!(
        "stats after:  fetches={} waits={} (no request waited for the refresh)",
        after.fetches, after.waits
    ));
    check(after.fetches == 2, "exactly one background refresh")?;
    check(after.waits == before.waits, "no request waited for it")?;

    println!("-- 4. the API revokes tok-2: the next request gets a 401, the layer fetches tok-3");
    println!("      and replays the request; the caller only sees the 200");
    issuer.revoke("tok-2");
    demo.log("revoked tok-2 on the API server");
    let token = demo.request().await?;
    check(token == "tok-3", "the replay carries tok-3")?;
    let stats = cache.stats();
    demo.log(format_args!(
        "401s sent by the API={}, cache rejections={} replays={}",
        issuer.unauthorized(),
        stats.rejections,
        stats.replays
    ));
    check(issuer.unauthorized() == 1, "the API answered one 401")?;
    check(
        stats.rejections == 1 && stats.replays == 1,
        "one rejection, one replay",
    )?;

    println!("-- summary");
    demo.log(format_args!(
        "{} requests, {} token endpoint calls; {stats:?}",
        demo.requests,
        issuer.calls()
    ));
    check(
        issuer.calls() == 3 && stats.fetches == 3,
        "3 token fetches in all",
    )?;
    // The two waits: the cold start, and the replay waiting for the token that replaced tok-2.
    check(
        stats.waits == 2 && stats.fetch_failures == 0,
        "2 waits, no failures",
    )?;
    // Every other request went out at once with the cached token, the revoked one included.
    check(
        stats.hits == demo.requests as u64 - 1,
        "every request but the first was a cache hit",
    )?;
    println!("all checks passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The token source: the crate's client-credentials grant. Nothing else in the demo knows how
// tokens are obtained.
// ---------------------------------------------------------------------------------------------

/// A client-credentials grant (RFC 6749 §4.4) against `token_url`, with HTTP Basic client
/// authentication (the default). The grant has its own HTTP client: token requests must not go
/// through the bearer layer (they would wait for the very token they fetch).
fn client_credentials(
    token_url: &Uri,
    client_id: &str,
    client_secret: &str,
) -> Result<ClientCredentials, BoxError> {
    // Plain http is accepted because the token endpoint is on loopback; any other host would
    // need https.
    let endpoint = oauth2::TokenEndpoint::builder(token_url.to_string(), client_id)
        .client_secret(client_secret)
        .build()?;
    Ok(ClientCredentials::new(endpoint))
}

// ---------------------------------------------------------------------------------------------
// The servers. They share an `Issuer`: what the token endpoint issues, the API accepts.
// ---------------------------------------------------------------------------------------------

/// The authorization server's state, shared by the token endpoint and the API.
#[derive(Default)]
struct Issuer {
    /// Calls to the token endpoint that issued a token.
    calls: AtomicUsize,
    /// 401 responses sent by the API.
    unauthorized: AtomicUsize,
    tokens: Mutex<Tokens>,
}

#[derive(Default)]
struct Tokens {
    /// Each token issued, with the instant it expires.
    issued: HashMap<String, Instant>,
    revoked: HashSet<String>,
}

impl Issuer {
    fn issue(&self) -> String {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok-{n}");
        self.lock()
            .issued
            .insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
        token
    }

    /// Whether `token` was issued here, has not expired and has not been revoked.
    fn accepts(&self, token: &str) -> bool {
        let tokens = self.lock();
        !tokens.revoked.contains(token)
            && tokens
                .issued
                .get(token)
                .is_some_and(|expires_at| Instant::now() < *expires_at)
    }

    /// Revokes `token` (RFC 7009 would do it over HTTP; a call is enough here).
    fn revoke(&self, token: &str) {
        self.lock().revoked.insert(token.to_owned());
    }

    /// Counts a 401 sent by the API.
    fn reject(&self) {
        self.unauthorized.fetch_add(1, Ordering::SeqCst);
    }

    fn unauthorized(&self) -> usize {
        self.unauthorized.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `POST /token`: the client-credentials grant, for one client, with HTTP Basic auth.
fn token_endpoint(
    issuer: Arc<Issuer>,
) -> impl Fn(Request<Incoming>) -> BoxFuture<Response<Full<Bytes>>> + Clone {
    let expected = format!(
        "Basic {}",
        base64(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes())
    );
    move |req: Request<Incoming>| {
        let issuer = issuer.clone();
        let expected = expected.clone();
        Box::pin(async move {
            if req.method() != Method::POST || req.uri().path() != "/token" {
                return text(StatusCode::NOT_FOUND, "not found");
            }
            if req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
                let mut response = json(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#);
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"token\""),
                );
                return response;
            }
            let Ok(body) = req.into_body().collect().await else {
                return json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#);
            };
            let body = body.to_bytes();
            let grant_type = form_urlencoded::parse(&body)
                .find(|(name, _)| name == "grant_type")
                .map(|(_, value)| value);
            if grant_type.as_deref() != Some("client_credentials") {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"unsupported_grant_type"}"#,
                );
            }
            let token = issuer.issue();
            json(
                StatusCode::OK,
                &format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}}}"#,
                    TOKEN_LIFETIME.as_secs()
                ),
            )
        })
    }
}

/// `GET /hello`: answers only requests bearing a token the issuer accepts, and (for the demo
/// only: never echo credentials in real life) says which token it was.
fn api(
    issuer: Arc<Issuer>,
) -> impl Fn(Request<Incoming>) -> BoxFuture<Response<Full<Bytes>>> + Clone {
    move |req: Request<Incoming>| {
        let issuer = issuer.clone();
        Box::pin(async move {
            if req.method() != Method::GET || req.uri().path() != "/hello" {
                return text(StatusCode::NOT_FOUND, "not found");
            }
            match bearer_token(req.headers()) {
                Some(token) if issuer.accepts(token) => {
                    text(StatusCode::OK, &format!("hello, your token was {token}"))
                }
                // RFC 6750 §3: `invalid_token` tells the client a new token may help, which is
                // what makes the layer fetch one and replay.
                Some(_) => {
                    issuer.reject();
                    unauthorized(r#"Bearer error="invalid_token""#)
                }
                None => {
                    issuer.reject();
                    unauthorized("Bearer")
                }
            }
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves `handler` over HTTP/1.1 on a fresh port of 127.0.0.1; returns the base URL.
async fn serve<H>(handler: H) -> Result<String, BoxError>
where
    H: Fn(Request<Incoming>) -> BoxFuture<Response<Full<Bytes>>> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    continue;
                }
            };
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if let Err(error) = http1::Builder::new().serve_connection(io, service).await {
                    eprintln!("connection failed: {error}");
                }
            });
        }
    });
    Ok(url)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = response(status, "application/json", body);
    // RFC 6749 §5.1: token responses must not be cached.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unauthorized(challenge: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized");
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

fn response(status: StatusCode, content_type: &'static str, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// ---------------------------------------------------------------------------------------------
// The demo's timeline and checks.
// ---------------------------------------------------------------------------------------------

/// What the timeline needs: the clock, the client under test, and the issuer to report on.
struct Demo {
    start: Instant,
    client: ApiClient,
    hello: Uri,
    issuer: Arc<Issuer>,
    requests: usize,
}

impl Demo {
    fn log(&self, what: impl Display) {
        println!("[{:>5} ms] {what}", self.start.elapsed().as_millis());
    }

    /// Sends one `GET /hello` through the authenticated client, logs it, and returns the token
    /// the API saw. Fails unless the caller got a 200.
    async fn request(&mut self) -> Result<String, BoxError> {
        self.requests += 1;
        let request = Request::get(self.hello.clone()).body(Full::default())?;
        let response = self.client.ready().await?.call(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8(body.to_vec())?;
        let token = body
            .strip_prefix("hello, your token was ")
            .unwrap_or("no token")
            .to_owned();
        self.log(format_args!(
            "request {} -> {} carrying {token} (token endpoint calls so far: {})",
            self.requests,
            status.as_u16(),
            self.issuer.calls()
        ));
        check(status == StatusCode::OK, "every request ends in 200")?;
        Ok(token)
    }
}

/// Fails the demo when something it claims does not hold.
fn check(holds: bool, claim: &str) -> Result<(), BoxError> {
    if holds {
        Ok(())
    } else {
        Err(format!("check failed: {claim}").into())
    }
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic authentication uses.
fn base64(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}
