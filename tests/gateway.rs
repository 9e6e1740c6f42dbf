//! tower-bearer in a gateway built on hyper, over real loopback HTTP/1.1: the gateway forwards
//! each `Request<Incoming>` it receives to an upstream API through hyper-util's `Client` under
//! the bearer layer. The client stack is written as a user writes it, with no type alias and no
//! mapping of bodies: `ServiceBuilder::new().layer(layer.replay_wrapped()).service(client)`,
//! the client's body type inferred.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenRequest};

#[allow(dead_code)]
mod support;

use support::loopback;

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

type Reply = Response<BoxBody<Bytes, hyper::Error>>;

fn status(status: StatusCode) -> Reply {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// The upstream API: accepts the current token, and answers an upload with its size and the
/// token it came with. Records what each attempt carried and how much of its body it read.
#[derive(Clone, Default)]
struct Upstream {
    valid: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn set_valid(&self, token: &str) {
        *self.valid.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.to_owned());
    }

    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Reply, BoxError> {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let valid = self
            .valid
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if valid.is_none_or(|valid| token != format!("Bearer {valid}")) {
            // The body is read and dropped before the answer: over HTTP/1.1, an answer before a
            // large body is read makes hyper's client fail the exchange instead of returning
            // the 401 (a matter between client and server, not the layer's).
            req.into_body().collect().await?;
            self.seen.lock().unwrap().push(format!("{token} rejected"));
            return Ok(status(StatusCode::UNAUTHORIZED));
        }
        let len = req.into_body().collect().await?.to_bytes().len();
        self.seen
            .lock()
            .unwrap()
            .push(format!("{token} accepted {len} bytes"));
        let text = format!("{len}");
        Ok(Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed(),
        ))
    }
}

/// A gateway whose tokens come from a source that issues `tok-1`, `tok-2`, … and makes each
/// one the upstream's valid token.
struct Gateway {
    addr: SocketAddr,
    upstream: Upstream,
    layer: BearerAuthLayer<tower_bearer::replay::ReplayWrapped>,
}

impl Gateway {
    async fn start() -> Self {
        let upstream = Upstream::default();
        let (listener, upstream_addr) = loopback().await;
        tokio::spawn({
            let upstream = upstream.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let service = service_fn(move |req| upstream.clone().handle(req));
                    tokio::spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
                }
            }
        });

        let issued = Arc::new(Mutex::new(0));
        let source = source_fn({
            let upstream = upstream.clone();
            move |_: TokenRequest| {
                let mut issued = issued.lock().unwrap_or_else(PoisonError::into_inner);
                *issued += 1;
                let token = format!("tok-{issued}");
                upstream.set_valid(&token);
                async move { Ok::<_, Infallible>(Token::new(token)) }
            }
        });

        // The stack under test, as a user writes it.
        let layer = BearerAuthLayer::new(source).replay_wrapped();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(Client::builder(TokioExecutor::new()).build_http());

        let (listener, addr) = loopback().await;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let client = client.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        *req.uri_mut() = format!("http://{upstream_addr}{path}").parse()?;
                        let response = match client.oneshot(req).await {
                            Ok(response) => response.map(BodyExt::boxed),
                            Err(_) => status(StatusCode::BAD_GATEWAY),
                        };
                        Ok::<_, BoxError>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Self {
            addr,
            upstream,
            layer,
        }
    }

    /// Uploads `len` bytes through the gateway; the status and the upstream's answer.
    async fn upload(&self, len: usize) -> (StatusCode, String) {
        let caller = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::post(format!("http://{}/uploads", self.addr))
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap();
        let response = tokio::time::timeout(LIMIT, caller.request(request))
            .await
            .expect("the gateway answers in time")
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Makes the upstream refuse the current token, as a revocation does.
    fn revoke(&self) {
        *self
            .upstream
            .valid
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some("revoked".to_owned());
    }
}

#[tokio::test]
async fn forwarded_uploads_carry_the_token_and_a_rejected_one_is_replayed_whole() {
    let gateway = Gateway::start().await;
    assert_eq!(gateway.upload(1000).await, (StatusCode::OK, "1000".into()));

    gateway.revoke();
    // Under the replay cap (64 KiB): the layer keeps what it streams and replays it.
    assert_eq!(
        gateway.upload(48 * 1024).await,
        (StatusCode::OK, (48 * 1024).to_string())
    );
    assert_eq!(
        gateway.upstream.seen(),
        [
            "Bearer tok-1 accepted 1000 bytes".to_owned(),
            "Bearer tok-1 rejected".to_owned(),
            format!("Bearer tok-2 accepted {} bytes", 48 * 1024),
        ]
    );
    let stats = gateway.layer.cache().stats();
    assert_eq!(
        (stats.fetches, stats.rejections, stats.replays),
        (2, 1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_upload_over_the_cap_gets_its_401_back_and_the_next_one_a_new_token() {
    let gateway = Gateway::start().await;
    assert_eq!(gateway.upload(10).await.0, StatusCode::OK);
    gateway.revoke();
    // Its Content-Length says it outgrows the cap: nothing is kept, no replay.
    assert_eq!(
        gateway.upload(256 * 1024).await,
        (StatusCode::UNAUTHORIZED, String::new())
    );
    assert_eq!(gateway.upload(10).await, (StatusCode::OK, "10".into()));
    let stats = gateway.layer.cache().stats();
    assert_eq!(
        (stats.fetches, stats.rejections, stats.replays),
        (2, 1, 0),
        "{stats:?}"
    );
}
