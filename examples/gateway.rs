//! `tower-bearer` in a gateway built on hyper: each request the gateway receives (a
//! `Request<Incoming>`, streamed from its caller) is forwarded to an upstream API through
//! hyper-util's `Client` under the bearer layer, which adds the token. The upstream API, the
//! gateway and the caller all run here on 127.0.0.1.
//!
//! It shows:
//!
//! 1. the gateway's client stack in five lines: no type alias, no mapping of bodies.
//!    `replay_wrapped()` wraps each `Incoming` body in a `ReplayBody` that keeps up to 64 KiB
//!    of it as it streams through, and hyper-util's client takes that body type as it is;
//! 2. the upstream API revoking the token: the layer fetches a new one and replays the upload,
//!    and the caller only sees the answer.
//!
//! The example checks what it claims and exits with an error if something does not hold:
//!
//! ```text
//! cargo run --example gateway
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenRequest};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tokio::time::timeout(Duration::from_secs(30), run()).await?
}

async fn run() -> Result<(), BoxError> {
    let api = Api::default();
    let upstream = serve(api.clone().into_service()).await?;

    // The gateway's client: the bearer layer over hyper-util's client, as it is.
    let tokens = source_fn({
        let api = api.clone();
        move |_: TokenRequest| {
            let token = api.issue();
            async move {
                Ok::<_, Infallible>(Token::new(token).with_expires_in(Duration::from_secs(600)))
            }
        }
    });
    let layer = BearerAuthLayer::new(tokens).replay_wrapped();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http());

    // The gateway: forwards what it receives, body streaming through.
    let gateway = serve(service_fn(move |mut req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let path = req.uri().path().to_owned();
            *req.uri_mut() = format!("http://{upstream}{path}").parse()?;
            let response = match client.oneshot(req).await {
                Ok(response) => response.map(BodyExt::boxed),
                Err(error) => {
                    eprintln!("gateway: upstream failed: {error}");
                    status(StatusCode::BAD_GATEWAY)
                }
            };
            Ok::<_, BoxError>(response)
        }
    }))
    .await?;

    let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let upload = |len: usize| {
        let request = Request::post(format!("http://{gateway}/uploads"))
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .expect("a valid request");
        caller.request(request)
    };

    println!("-- 1. an upload through the gateway gets the first token");
    let response = upload(1000).await?;
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    println!("   upstream answered: {text}");
    check(
        text == "1000 bytes with tok-1",
        "the upload arrived with tok-1",
    )?;

    println!("-- 2. the upstream API revokes tok-1: the gateway's next upload is rejected, and");
    println!("      the layer fetches tok-2 and replays the upload from what it kept");
    api.revoke("tok-1");
    let response = upload(32 * 1024).await?;
    let status = response.status();
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    println!("   upstream answered: {status} {text}");
    check(status == StatusCode::OK, "the caller sees 200")?;
    check(
        text == "32768 bytes with tok-2",
        "the replay carried all 32768 bytes and tok-2",
    )?;
    let stats = layer.cache().stats();
    println!(
        "   cache: fetches={} rejections={} replays={}",
        stats.fetches, stats.rejections, stats.replays
    );
    check(
        stats.fetches == 2 && stats.rejections == 1 && stats.replays == 1,
        "2 fetches, 1 rejection, 1 replay",
    )?;
    println!("all checks passed");
    Ok(())
}

/// The upstream API: accepts the tokens it issued and has not revoked, and answers an upload
/// with its size and the token it came with.
#[derive(Clone, Default)]
struct Api {
    issued: Arc<AtomicUsize>,
    valid: Arc<Mutex<Vec<String>>>,
}

impl Api {
    fn issue(&self) -> String {
        let token = format!("tok-{}", self.issued.fetch_add(1, Ordering::SeqCst) + 1);
        self.valid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.clone());
        token
    }

    fn revoke(&self, token: &str) {
        self.valid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|valid| valid != token);
    }

    fn into_service(
        self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<BoxBody<Bytes, hyper::Error>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        service_fn(move |req: Request<Incoming>| {
            let api = self.clone();
            async move {
                let token = req
                    .headers()
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .map(str::to_owned);
                let valid = api
                    .valid
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let Some(token) = token.filter(|token| valid.contains(token)) else {
                    let mut response = status(StatusCode::UNAUTHORIZED);
                    response.headers_mut().insert(
                        "www-authenticate",
                        http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                    );
                    return Ok::<_, BoxError>(response);
                };
                let len = req.into_body().collect().await?.to_bytes().len();
                let text = format!("{len} bytes with {token}");
                Ok(Response::new(
                    Full::new(Bytes::from(text))
                        .map_err(|never| match never {})
                        .boxed(),
                ))
            }
        })
    }
}

fn status(status: StatusCode) -> Response<BoxBody<Bytes, hyper::Error>> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// Serves `service` over HTTP/1.1 on a free loopback port.
async fn serve<S>(service: S) -> Result<SocketAddr, BoxError>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<BoxBody<Bytes, hyper::Error>>,
        > + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
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
