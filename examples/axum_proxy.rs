//! The service-mesh case: an axum reverse proxy that forwards its callers' requests, bodies
//! streamed as they arrive, to an upstream API, adding a bearer token from the layer.
//!
//! The proxy's client is hyper-util under `BearerAuthLayer`, whose default replay policy keeps up
//! to 64 KiB of each streamed body so that a request whose token the upstream rejects can be
//! sent again. On a timeline:
//!
//! 1. an 8 MiB upload, streamed by the caller in 64 KiB chunks, goes through without being
//!    buffered: the upstream has its first chunk before the caller sends the second one;
//! 2. the upstream revokes the token; a small (4 KiB) streamed upload gets a 401, the proxy
//!    fetches a new token and replays the body it kept, and the caller sees a 200;
//! 3. the upstream revokes that token too; an 8 MiB upload cannot be replayed (it outgrew what
//!    the proxy keeps), so the caller gets the 401, and the next request a fresh token.
//!
//! Everything runs on 127.0.0.1 and ends in about a second. The example checks what it claims
//! and exits with an error if something does not hold:
//!
//! ```text
//! cargo run --example axum_proxy
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, TRANSFER_ENCODING, WWW_AUTHENTICATE};
use http::StatusCode;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{source_fn, BearerAuth, BearerAuthLayer, BoxError, Token, TokenRequest};

const CHUNK: usize = 64 * 1024;
const LARGE: usize = 8 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // However the servers behave, the example ends within 20 s.
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "the example did not finish within 20 s")?
}

async fn run() -> Result<(), BoxError> {
    let start = Instant::now();
    let log = move |what: &dyn Display| println!("[{:>4} ms] {what}", start.elapsed().as_millis());

    let api = Api::new(start);
    let upstream = api.serve().await?;
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
    .await?;
    // The proxy's callers have no token.
    let caller: Client<HttpConnector, ChannelBody> =
        Client::builder(TokioExecutor::new()).build_http();
    log(&format_args!(
        "upstream API on {upstream}, proxy on {proxy}"
    ));

    println!("-- 1. an 8 MiB upload streams through the proxy");
    let gate = api.reached("large");
    let (status, body) = upload(
        &caller,
        proxy,
        "large",
        CHUNK,
        LARGE / CHUNK,
        Some(gate),
        log,
    )
    .await?;
    log(&format_args!("caller got {status}: {body}"));
    check(status == StatusCode::OK, "the large upload succeeded")?;
    check(
        body == format!("Bearer tok-1 bytes={LARGE}"),
        "the upstream counted 8 MiB",
    )?;

    println!("-- 2. the upstream revokes tok-1; a 4 KiB upload is replayed with tok-2");
    api.revoke("tok-1");
    let (status, body) = upload(&caller, proxy, "small", 1024, 4, None, log).await?;
    log(&format_args!("caller got {status}: {body}"));
    check(status == StatusCode::OK, "the caller never saw the 401")?;
    check(
        body == "Bearer tok-2 bytes=4096",
        "the replay delivered all 4 KiB",
    )?;
    let stats = layer.cache().stats();
    log(&format_args!(
        "cache: fetches={} rejections={} replays={}",
        stats.fetches, stats.rejections, stats.replays
    ));
    check(stats.replays == 1, "one replay")?;

    println!("-- 3. the upstream revokes tok-2; an 8 MiB upload cannot be replayed");
    api.revoke("tok-2");
    let (status, _) = upload(
        &caller,
        proxy,
        "large-again",
        CHUNK,
        LARGE / CHUNK,
        None,
        log,
    )
    .await?;
    log(&format_args!("caller got {status}"));
    check(status == StatusCode::UNAUTHORIZED, "the caller got the 401")?;
    let (status, body) = upload(&caller, proxy, "after", 1024, 1, None, log).await?;
    log(&format_args!("next upload: caller got {status}: {body}"));
    check(
        body == "Bearer tok-3 bytes=1024",
        "the next upload got a fresh token",
    )?;

    println!("-- summary");
    let stats = layer.cache().stats();
    log(&format_args!(
        "cache: fetches={} rejections={} replays={}",
        stats.fetches, stats.rejections, stats.replays
    ));
    check(
        (stats.fetches, stats.rejections, stats.replays) == (3, 2, 1),
        "three fetches, two rejections, one replay",
    )?;
    println!("all checks passed");
    Ok(())
}

/// Uploads `chunks` chunks of `chunk` bytes through the proxy, streamed from a task. With a
/// `gate`, the task sends the second chunk only once the gate opens.
async fn upload(
    caller: &Client<HttpConnector, ChannelBody>,
    proxy: SocketAddr,
    id: &str,
    chunk: usize,
    chunks: usize,
    gate: Option<watch::Receiver<bool>>,
    log: impl Fn(&dyn Display) + Send + Copy + 'static,
) -> Result<(StatusCode, String), BoxError> {
    let (tx, rx) = mpsc::channel(2);
    let sender = tokio::spawn(async move {
        let data = Bytes::from(vec![b'x'; chunk]);
        for i in 0..chunks {
            if i == 1 {
                if let Some(mut gate) = gate.clone() {
                    let opened = gate.wait_for(|open| *open);
                    if tokio::time::timeout(Duration::from_secs(5), opened)
                        .await
                        .is_err()
                    {
                        let _ = tx.send(Err(io::Error::other("upstream saw nothing"))).await;
                        return Err("the upstream got no byte before the caller's second chunk");
                    }
                    log(&format_args!(
                        "caller: the upstream has the first chunk; sending the other {}",
                        chunks - 1
                    ));
                }
            }
            if tx.send(Ok(data.clone())).await.is_err() {
                // The proxy stopped reading: it answered before the body ended.
                return Ok(i);
            }
        }
        Ok(chunks)
    });
    let request = http::Request::post(format!("http://{proxy}/upload"))
        .header("x-upload-id", id)
        .body(ChannelBody { rx })?;
    log(&format_args!(
        "caller: POST /upload ({} bytes, streamed)",
        chunk * chunks
    ));
    let response = caller.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let sent = sender.await??;
    log(&format_args!("caller: sent {sent} of {chunks} chunks"));
    Ok((status, String::from_utf8(body.to_vec())?))
}

// ---------------------------------------------------------------------------------------------
// The proxy.

/// The proxy's client: hyper-util under the layer, which keeps axum's body type while it keeps
/// a copy of each body for a replay (crate feature `axum`).
type Upstream = BearerAuth<Client<HttpConnector, Body>>;

#[derive(Clone)]
struct Proxy {
    client: Upstream,
    upstream: SocketAddr,
}

async fn forward(State(proxy): State<Proxy>, mut req: Request) -> Response {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = format!("http://{}{path}", proxy.upstream).parse().unwrap();
    // Hop-by-hop: the proxy's client frames the body itself.
    req.headers_mut().remove(HOST);
    req.headers_mut().remove(TRANSFER_ENCODING);
    match proxy.client.oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(error) => {
            eprintln!("proxy: {error}");
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

/// A request body fed chunk by chunk from a channel, as a caller streams an upload.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
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
        SizeHint::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream API: counts the bytes of each upload as they stream in, keeping none.

#[derive(Clone)]
struct Api {
    start: Instant,
    valid: Arc<Mutex<HashSet<String>>>,
    issued: Arc<AtomicUsize>,
    /// The `x-upload-id` of the last upload whose first bytes arrived with a valid token.
    started: Arc<watch::Sender<String>>,
}

impl Api {
    fn new(start: Instant) -> Self {
        Self {
            start,
            valid: Arc::default(),
            issued: Arc::default(),
            started: Arc::new(watch::Sender::new(String::new())),
        }
    }

    fn log(&self, what: impl Display) {
        println!("[{:>4} ms] {what}", self.start.elapsed().as_millis());
    }

    /// Issues `tok-1`, `tok-2`, ..., each valid until revoked.
    fn source(&self) -> impl tower_bearer::TokenSource {
        let api = self.clone();
        source_fn(move |_: TokenRequest| {
            let api = api.clone();
            async move {
                let token = format!("tok-{}", api.issued.fetch_add(1, Ordering::SeqCst) + 1);
                api.valid.lock().unwrap().insert(token.clone());
                api.log(format_args!("authorization server: issued {token}"));
                Ok::<_, Infallible>(Token::new(token).with_expires_in(Duration::from_secs(3600)))
            }
        })
    }

    fn revoke(&self, token: &str) {
        self.valid.lock().unwrap().remove(token);
        self.log(format_args!("upstream: revoked {token}"));
    }

    /// A gate that opens once the first bytes of upload `id` reached the upstream.
    fn reached(&self, id: &str) -> watch::Receiver<bool> {
        let (open, gate) = watch::channel(false);
        let mut started = self.started.subscribe();
        let id = id.to_owned();
        tokio::spawn(async move {
            if started.wait_for(|started| *started == id).await.is_ok() {
                open.send_replace(true);
            }
        });
        gate
    }

    async fn serve(&self) -> Result<SocketAddr, BoxError> {
        serve(
            Router::new()
                .route("/upload", post(upload_handler))
                .with_state(self.clone()),
        )
        .await
    }
}

/// Counts the upload's bytes as they stream in and answers with the token it accepted and the
/// count. A rejected upload is read to its end too, then answered 401 `invalid_token`.
async fn upload_handler(State(api): State<Api>, req: Request) -> Response {
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let valid = authorization
        .strip_prefix("Bearer ")
        .is_some_and(|token| api.valid.lock().unwrap().contains(token));
    let id = req
        .headers()
        .get("x-upload-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = req.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            api.log(format_args!(
                "upstream: upload {id} broke off after {bytes} bytes"
            ));
            return status(StatusCode::BAD_REQUEST);
        };
        if let Some(data) = frame.data_ref() {
            if bytes == 0 && valid {
                api.log(format_args!(
                    "upstream: first {} bytes of {id} arrived",
                    data.len()
                ));
                api.started.send_replace(id.clone());
            }
            bytes += data.len();
        }
    }
    if !valid {
        api.log(format_args!(
            "upstream: {id} with {authorization}: {bytes} bytes, 401"
        ));
        let mut response = status(StatusCode::UNAUTHORIZED);
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token""#.parse().unwrap(),
        );
        return response;
    }
    api.log(format_args!(
        "upstream: {id} with {authorization}: {bytes} bytes, 200"
    ));
    Response::new(Body::from(format!("{authorization} bytes={bytes}")))
}

fn status(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
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
