//! The stacks users have, over real sockets on 127.0.0.1:
//!
//! 1. hyper-util's legacy `Client` (HTTP/1.1 and HTTP/2 prior knowledge) calling an axum API
//!    that checks tokens;
//! 2. an axum reverse proxy forwarding streamed request bodies to that API with a token from the
//!    layer (the service-mesh case): a large upload streamed through without being buffered, a
//!    small one replayed after a 401, a large one that cannot be replayed;
//! 3. the layer under tower-http's `FollowRedirect`, where `only_origins` keeps the token from
//!    following a redirect to another origin.
//!
//! Every wait is bounded, so a broken stack fails instead of hanging.

#[allow(dead_code)]
mod support;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, HOST, LOCATION, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use http::{StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{BearerAuth, BearerAuthLayer, TokenCache, TokenSource};
use tower_http::follow_redirect::{FollowRedirectLayer, RequestUri};

use support::{loopback, Issuer};

/// The bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    support::within(LIMIT, what, future).await
}

async fn serve(router: Router) -> SocketAddr {
    let (listener, addr) = loopback().await;
    // `axum::serve` runs hyper-util's auto connection builder: HTTP/1.1, and HTTP/2 with prior
    // knowledge (h2c), on the same port.
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn text(response: Response<hyper::body::Incoming>) -> String {
    let body = within("response body", response.into_body().collect())
        .await
        .expect("response body")
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The token API: accepts only the tokens its source issued and did not revoke.

/// One request the API answered.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    version: Version,
    authorization: Option<String>,
    status: StatusCode,
    /// Request body bytes received.
    bytes: u64,
}

#[derive(Clone, Default)]
struct Api {
    tokens: Issuer,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Everything the API reached, in order: the `x-upload-id` of an upload whose first bytes
    /// it received, or `<id>:401` for an upload `/guarded-upload` rejected. All of it, not the
    /// last only: a replay reaching the API right after its rejection must not hide the
    /// rejection from a waiter that looks a moment later.
    started: Arc<watch::Sender<Vec<String>>>,
}

impl Api {
    /// The token source of the API's authorization server: each token it issues, `tok-N`, is
    /// valid until revoked.
    fn source(&self) -> impl TokenSource {
        self.tokens.source()
    }

    fn revoke(&self, token: &str) {
        self.tokens.revoke(token);
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn statuses(&self) -> Vec<u16> {
        self.hits().iter().map(|hit| hit.status.as_u16()).collect()
    }

    async fn serve(&self) -> SocketAddr {
        let router = Router::new()
            .route("/whoami", get(whoami))
            .route("/upload", post(upload))
            .route("/guarded-upload", post(guarded_upload))
            .with_state(self.clone());
        serve(router).await
    }

    /// The `Authorization` of `req`, and whether it carries a valid token.
    fn check(&self, req: &Request) -> (Option<String>, bool) {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        let valid = authorization
            .as_deref()
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|token| self.tokens.is_valid(token));
        (authorization, valid)
    }

    fn record(
        &self,
        req_path: &str,
        version: Version,
        authorization: Option<String>,
        status: StatusCode,
        bytes: u64,
    ) {
        self.hits.lock().unwrap().push(Hit {
            path: req_path.to_owned(),
            version,
            authorization,
            status,
            bytes,
        });
    }
}

fn unauthorized() -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
        .body(Body::empty())
        .unwrap()
}

/// Answers with the `Authorization` it accepted.
async fn whoami(State(api): State<Api>, req: Request) -> Response {
    let (authorization, valid) = api.check(&req);
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    api.record(
        req.uri().path(),
        req.version(),
        authorization.clone(),
        status,
        0,
    );
    if !valid {
        return unauthorized();
    }
    Response::new(Body::from(authorization.unwrap()))
}

/// Reads the body as a stream, counting its bytes (nothing is kept), and answers with the
/// `Authorization` it accepted and the count. A request with a rejected token is read to its
/// end before the 401, as servers do that read requests before answering (so the 401 is never
/// lost to a TCP reset of a connection with unread bytes).
async fn upload(State(api): State<Api>, req: Request) -> Response {
    let (authorization, valid) = api.check(&req);
    let id = req
        .headers()
        .get("x-upload-id")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let version = req.version();
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            api.record(
                &path,
                version,
                authorization,
                StatusCode::BAD_REQUEST,
                bytes,
            );
            return StatusCode::BAD_REQUEST.into_response();
        };
        if let Some(data) = frame.data_ref() {
            if bytes == 0 && !data.is_empty() && valid {
                api.started.send_modify(|seen| seen.push(id.clone()));
            }
            bytes += data.len() as u64;
        }
    }
    let status = if valid {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    api.record(&path, version, authorization.clone(), status, bytes);
    if !valid {
        return unauthorized();
    }
    Response::new(Body::from(format!(
        "{} bytes={bytes}",
        authorization.unwrap()
    )))
}

/// Like `upload`, but a request with a rejected token gets its 401 at once, its body unread, as
/// from an authentication middleware in front of the handler.
async fn guarded_upload(State(api): State<Api>, req: Request) -> Response {
    let (authorization, valid) = api.check(&req);
    if !valid {
        api.record(
            req.uri().path(),
            req.version(),
            authorization,
            StatusCode::UNAUTHORIZED,
            0,
        );
        if let Some(id) = req.headers().get("x-upload-id") {
            let event = format!("{}:401", id.to_str().unwrap());
            api.started.send_modify(|seen| seen.push(event));
        }
        return unauthorized();
    }
    upload(State(api), req).await
}

/// Asserts what the cache counted: (fetches, rejections, replays).
#[track_caller]
fn assert_counts(cache: &TokenCache, expected: (u64, u64, u64)) {
    let stats = cache.stats();
    assert_eq!(
        (stats.fetches, stats.rejections, stats.replays),
        expected,
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. hyper-util's legacy Client calling the API, over HTTP/1.1 and HTTP/2.

async fn hyper_client_scenario(http2: bool) {
    let api = Api::default();
    let addr = api.serve().await;
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let client: Client<HttpConnector, Full<Bytes>> = builder.build_http();
    let layer = BearerAuthLayer::new(api.source());
    let client = ServiceBuilder::new().layer(layer.clone()).service(client);
    let expected = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let url = format!("http://{addr}/whoami");
    let get = || http::Request::get(&url).body(Full::default()).unwrap();

    let response = within("first request", client.clone().oneshot(get()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), expected);
    assert_eq!(text(response).await, "Bearer tok-1");
    assert_eq!(layer.cache().stats().fetches, 1);

    api.revoke("tok-1");
    let response = within("request after revocation", client.clone().oneshot(get()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "Bearer tok-2");

    let hits = api.hits();
    assert_eq!(api.statuses(), [200, 401, 200]);
    assert!(
        hits.iter()
            .all(|hit| hit.version == expected && hit.path == "/whoami"),
        "{hits:?}"
    );
    assert_eq!(hits[1].authorization.as_deref(), Some("Bearer tok-1"));
    assert_counts(layer.cache(), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_http1() {
    hyper_client_scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_http2() {
    hyper_client_scenario(true).await;
}

// ---------------------------------------------------------------------------------------------
// 2. An axum reverse proxy adding the token to streamed requests it forwards.

/// The proxy's client: hyper-util under the layer, which keeps axum's body type while it keeps a
/// copy of the body for a replay (crate feature `axum`).
type Upstream = BearerAuth<Client<HttpConnector, Body>>;

#[derive(Clone)]
struct Proxy {
    client: Upstream,
    upstream: SocketAddr,
}

async fn forward(State(proxy): State<Proxy>, mut req: Request) -> Response {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = format!("http://{}{path}", proxy.upstream).parse().unwrap();
    // Hop-by-hop: the proxy's client frames the body itself (from its size hint).
    req.headers_mut().remove(HOST);
    req.headers_mut().remove(TRANSFER_ENCODING);
    match proxy.client.oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// A request body fed chunk by chunk from a channel, as a client streams an upload.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    len: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

const CHUNK: usize = 64 * 1024;
const LARGE: usize = 8 * 1024 * 1024;

struct ProxyStack {
    api: Api,
    layer: BearerAuthLayer,
    proxy: SocketAddr,
    client: Client<HttpConnector, ChannelBody>,
}

impl ProxyStack {
    async fn start() -> Self {
        let api = Api::default();
        let upstream = api.serve().await;
        let layer = BearerAuthLayer::new(api.source());
        let proxy = Proxy {
            client: ServiceBuilder::new()
                .layer(layer.clone())
                .service(Client::builder(TokioExecutor::new()).build_http()),
            upstream,
        };
        let proxy = serve(
            Router::new()
                .route("/{*path}", any(forward))
                .with_state(proxy),
        )
        .await;
        // The proxy's callers have no token.
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            api,
            layer,
            proxy,
            client,
        }
    }

    /// Uploads `chunks` chunks of `chunk` bytes through the proxy, the chunks sent by a task
    /// that waits for `gate` (if any) after the first chunk. Returns the response and whether
    /// the sender got through every chunk.
    async fn upload(
        &self,
        id: &str,
        path: &str,
        chunk: usize,
        chunks: usize,
        content_length: bool,
        gate: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
    ) -> (StatusCode, String, bool) {
        let (tx, rx) = mpsc::channel(2);
        let total = (chunk * chunks) as u64;
        let body = ChannelBody {
            rx,
            len: content_length.then_some(total),
        };
        let mut gate = gate;
        let sender = tokio::spawn(async move {
            let data = Bytes::from(vec![b'x'; chunk]);
            for i in 0..chunks {
                if i == 1 {
                    if let Some(gate) = gate.as_mut() {
                        if !gate.await {
                            let error = io::Error::other("the upstream saw no byte in time");
                            let _ = tx.send(Err(error)).await;
                            return false;
                        }
                    }
                }
                let sent = tokio::time::timeout(LIMIT, tx.send(Ok(data.clone()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return false;
                }
            }
            true
        });
        let mut req = http::Request::post(format!("http://{}{path}", self.proxy))
            .header("x-upload-id", id)
            .body(body)
            .unwrap();
        if content_length {
            req.headers_mut().insert(CONTENT_LENGTH, total.into());
        }
        let response = within("upload through the proxy", self.client.request(req))
            .await
            .expect("proxy response");
        let status = response.status();
        let body = text(response).await;
        let sent_all = within("upload sender", sender).await.unwrap();
        (status, body, sent_all)
    }

    /// A gate that opens once the upstream reached `event`: `<id>` when it received the first
    /// bytes of upload `id` with a valid token, `<id>:401` when `/guarded-upload` rejected it.
    /// False if that does not happen within a few seconds.
    fn upstream_reached(&self, id: &str) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let mut started = self.api.started.subscribe();
        let id = id.to_owned();
        Box::pin(async move {
            let wait = started.wait_for(|seen| seen.contains(&id));
            matches!(
                tokio::time::timeout(Duration::from_secs(10), wait).await,
                Ok(Ok(_))
            )
        })
    }
}

/// (a) An 8 MiB upload, streamed in 64 KiB chunks with no length, goes through a proxy that
/// keeps at most 64 KiB: the upstream counts every byte, and it received the first chunk before
/// the client sent the second one, so nothing on the way buffered the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_streams_a_large_upload_without_buffering() {
    let stack = ProxyStack::start().await;
    let gate = stack.upstream_reached("large");
    let (status, body, sent_all) = stack
        .upload("large", "/upload", CHUNK, LARGE / CHUNK, false, Some(gate))
        .await;
    assert!(
        sent_all,
        "the client could not send every chunk: the upload was held back"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("Bearer tok-1 bytes={LARGE}"));
    let hits = stack.api.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].bytes, LARGE as u64);

    // The same with a Content-Length, which tells the layer up front that the body outgrows
    // what it keeps: it streams through, and the 401 comes back.
    let gate = stack.upstream_reached("large-with-length");
    let (status, body, sent_all) = stack
        .upload(
            "large-with-length",
            "/upload",
            CHUNK,
            LARGE / CHUNK,
            true,
            Some(gate),
        )
        .await;
    assert!(sent_all);
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("Bearer tok-1 bytes={LARGE}"))
    );
    assert_counts(stack.layer.cache(), (1, 0, 0));
}

/// (b) A small streamed upload whose token was revoked: the upstream answers 401, the proxy
/// replays the body it kept with a fresh token, and the upstream receives all of it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_replays_a_small_upload_after_401() {
    let stack = ProxyStack::start().await;
    let (status, body, _) = stack
        .upload("warm-up", "/upload", 1024, 1, false, None)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Bearer tok-1 bytes=1024")
    );

    stack.api.revoke("tok-1");
    let (status, body, sent_all) = stack.upload("small", "/upload", 1024, 4, false, None).await;
    assert!(sent_all);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "Bearer tok-2 bytes=4096");
    let hits = stack.api.hits();
    assert_eq!(stack.api.statuses(), [200, 401, 200], "{hits:?}");
    assert_eq!(hits[1].authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!((hits[1].bytes, hits[2].bytes), (4096, 4096));
    assert_counts(stack.layer.cache(), (2, 1, 1));
}

/// (b') The same with an upstream that answers 401 at once, before reading the body (an
/// authentication middleware): the replay sends what the first attempt kept, then the part of
/// the caller's stream that the first attempt never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_replays_a_small_upload_rejected_before_it_was_read() {
    let stack = ProxyStack::start().await;
    let (status, _, _) = stack
        .upload("warm-up", "/guarded-upload", 1024, 1, false, None)
        .await;
    assert_eq!(status, StatusCode::OK);

    stack.api.revoke("tok-1");
    // The caller sends its second chunk only once the upstream has rejected the first attempt.
    let gate = stack.upstream_reached("small:401");
    let (status, body, sent_all) = stack
        .upload("small", "/guarded-upload", 1024, 4, false, Some(gate))
        .await;
    assert!(sent_all);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "Bearer tok-2 bytes=4096");
    assert_eq!(stack.api.statuses(), [200, 401, 200]);
    assert_counts(stack.layer.cache(), (2, 1, 1));
}

/// (c) A large upload whose token was revoked cannot be replayed (it outgrew the 64 KiB the
/// proxy keeps): the caller gets the 401, and the next request gets a fresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_returns_401_for_a_large_upload_it_cannot_replay() {
    let stack = ProxyStack::start().await;
    let (status, _, _) = stack
        .upload("warm-up", "/upload", 1024, 1, false, None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Without a length: the layer keeps the first 64 KiB, then gives up on a replay.
    stack.api.revoke("tok-1");
    let (status, _, sent_all) = stack
        .upload("large", "/upload", CHUNK, LARGE / CHUNK, false, None)
        .await;
    assert!(sent_all);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let hits = stack.api.hits();
    assert_eq!(stack.api.statuses(), [200, 401], "{hits:?}");
    assert_eq!(hits[1].bytes, LARGE as u64);
    let stats = stack.layer.cache().stats();
    assert_eq!((stats.rejections, stats.replays), (1, 0), "{stats:?}");

    // The rejected token was dropped: the next upload carries a fresh one.
    let (status, body, _) = stack.upload("after", "/upload", 1024, 1, false, None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Bearer tok-2 bytes=1024")
    );

    // With a Content-Length over the cap: not replayed, the 401 comes back.
    stack.api.revoke("tok-2");
    let (status, _, sent_all) = stack
        .upload(
            "large-with-length",
            "/upload",
            CHUNK,
            LARGE / CHUNK,
            true,
            None,
        )
        .await;
    assert!(sent_all);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.api.statuses(), [200, 401, 200, 401]);
    assert_counts(stack.layer.cache(), (2, 2, 0));
}

// ---------------------------------------------------------------------------------------------
// 3. FollowRedirect over the layer: the token never follows a redirect to another origin.

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Visit>>>);

/// A path a server was asked for, and the `Authorization` that came with it.
type Visit = (String, Option<String>);

impl Seen {
    fn record(&self, req: &Request) {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        self.0
            .lock()
            .unwrap()
            .push((req.uri().path().to_owned(), authorization));
    }

    fn take(&self) -> Vec<Visit> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn redirect(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, location)
        .body(Body::empty())
        .unwrap()
}

/// Server B, another origin: records what it saw.
async fn landing(State(seen): State<Seen>, req: Request) -> &'static str {
    seen.record(&req);
    "landed on B"
}

#[derive(Clone)]
struct ServerA {
    seen: Seen,
    b: SocketAddr,
}

/// Server A, the trusted API: `/go` redirects to B, `/here` to A's own `/home`.
async fn server_a(State(a): State<ServerA>, req: Request) -> Response {
    a.seen.record(&req);
    match req.uri().path() {
        "/go" => redirect(&format!("http://{}/landing", a.b)),
        "/here" => redirect("/home"),
        _ => Response::new(Body::from("home on A")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_redirect_never_carries_the_token_to_another_origin() {
    let seen_b = Seen::default();
    let b = serve(
        Router::new()
            .route("/landing", get(landing))
            .with_state(seen_b.clone()),
    )
    .await;
    let seen_a = Seen::default();
    let a = serve(
        Router::new()
            .route("/{*path}", get(server_a))
            .with_state(ServerA {
                seen: seen_a.clone(),
                b,
            }),
    )
    .await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        http::Request::get(format!("http://{a}{path}"))
            .body(Full::default())
            .unwrap()
    };

    // With only_origins: A gets the token, B does not.
    let api = Api::default();
    let layer =
        BearerAuthLayer::new(api.source()).only_origins([format!("http://{a}").parse().unwrap()]);
    let guarded = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(layer.clone())
        .service(client.clone());
    let response = within("redirected request", guarded.clone().oneshot(get("/go")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let landed = response.extensions().get::<RequestUri>().unwrap().0.clone();
    assert_eq!(landed.to_string(), format!("http://{b}/landing"));
    assert_eq!(text(response).await, "landed on B");
    assert_eq!(
        seen_a.take(),
        [("/go".to_owned(), Some("Bearer tok-1".to_owned()))]
    );
    assert_eq!(seen_b.take(), [("/landing".to_owned(), None)]);

    // A redirect within A keeps the token.
    let response = within("same-origin redirect", guarded.oneshot(get("/here")))
        .await
        .unwrap();
    assert_eq!(text(response).await, "home on A");
    let token = Some("Bearer tok-1".to_owned());
    assert_eq!(
        seen_a.take(),
        [
            ("/here".to_owned(), token.clone()),
            ("/home".to_owned(), token)
        ]
    );
    assert_eq!(layer.cache().stats().fetches, 1);

    // Without only_origins, the layer under FollowRedirect stamps every hop: tower-http's
    // FilterCredentials strips credentials the *caller* set, but the token is added below it,
    // so B gets it. This is the leak only_origins prevents.
    let leaky = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(BearerAuthLayer::new(api.source()))
        .service(client);
    let response = within("redirected request", leaky.oneshot(get("/go")))
        .await
        .unwrap();
    assert_eq!(text(response).await, "landed on B");
    assert_eq!(
        seen_a.take(),
        [("/go".to_owned(), Some("Bearer tok-2".to_owned()))]
    );
    assert_eq!(
        seen_b.take(),
        [("/landing".to_owned(), Some("Bearer tok-2".to_owned()))]
    );
}
