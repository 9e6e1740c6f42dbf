//! tower-bearer in a tonic client stack, over real loopback HTTP/2: tonic's `Channel` behind the
//! bearer layer, against a tonic server whose interceptor accepts only current tokens.
//!
//! The server serves tonic-health's pre-generated Health service (no `protoc`), and two methods
//! written by hand with tonic's `server::Grpc` and tonic-health's message types: a
//! client-streaming upload, and a server-streaming call that revokes its token and ends with
//! UNAUTHENTICATED in the trailers after one message.
//!
//! The client stack is the one the `grpc` module documents, with nothing between the layers and
//! the `Channel` (the crate feature `tonic` keeps tonic's body type through replays):
//!
//! ```text
//! BearerAuth (default Replay policy) -> RejectOnTrailers -> Channel
//! ```

#[allow(dead_code)]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_prost::ProstCodec;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_bearer::grpc::{RejectOnTrailers, RejectOnTrailersLayer};
use tower_bearer::replay::NoReplay;
use tower_bearer::{BearerAuth, BearerAuthLayer};

use support::{loopback, within, Issuer};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

/// The hand-written client-streaming method: counts the messages it receives.
const UPLOAD: &str = "/test.Uploads/Upload";
/// The hand-written server-streaming method: one message, then UNAUTHENTICATED in the trailers.
const REJECT_MID_STREAM: &str = "/test.Uploads/RejectMidStream";

async fn bounded<F: Future>(future: F) -> F::Output {
    within(LIMIT, "a step of the test", future).await
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// What the server knows and saw.
#[derive(Default)]
struct Api {
    /// The tokens it accepts: issued by its token source, not revoked.
    tokens: Issuer,
    /// Every call its interceptor saw: the `authorization` value and whether it was accepted.
    calls: Mutex<Vec<(String, bool)>>,
    /// The messages of each upload that reached the handler.
    uploads: Mutex<Vec<Vec<String>>>,
}

impl Api {
    fn revoke(&self, token: &str) {
        self.tokens.revoke(token);
    }

    fn calls(&self) -> Vec<(String, bool)> {
        lock(&self.calls).clone()
    }

    fn uploads(&self) -> Vec<Vec<String>> {
        lock(&self.uploads).clone()
    }

    /// Whether the interceptor sees `call` within `LIMIT / 2` (so a caller bounded by `LIMIT`
    /// still gets to report it).
    async fn saw(&self, call: (String, bool)) -> bool {
        let wait = async {
            while !lock(&self.calls).contains(&call) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(LIMIT / 2, wait).await.is_ok()
    }
}

fn accepted(token: &str) -> (String, bool) {
    (format!("Bearer {token}"), true)
}

fn rejected(token: &str) -> (String, bool) {
    (format!("Bearer {token}"), false)
}

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Serves the Health service and the hand-written methods on a fresh port of 127.0.0.1, behind
/// an interceptor that accepts only valid tokens. A rejection is trailers-only:
/// `grpc-status: 16` in the response headers.
async fn serve(api: Arc<Api>) -> SocketAddr {
    let (listener, addr) = loopback().await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let handlers = api.clone();
    let routes = service_fn(move |req: http::Request<Body>| {
        let health = health.clone();
        let api = handlers.clone();
        async move {
            match req.uri().path() {
                UPLOAD => Ok(upload(api, req).await),
                REJECT_MID_STREAM => Ok(reject_mid_stream(api, req).await),
                _ => health.oneshot(req).await,
            }
        }
    });
    let interceptor = move |req: Request<()>| {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ok = bearer(req.metadata()).is_some_and(|token| api.tokens.is_valid(token));
        lock(&api.calls).push((authorization, ok));
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated("token not valid"))
        }
    };
    let service = InterceptedService::new(routes, interceptor);
    tokio::spawn(Server::builder().serve_with_incoming(service, TcpIncoming::from(listener)));
    addr
}

/// Client streaming: receives every message, records their `service` fields, answers SERVING.
async fn upload(api: Arc<Api>, req: http::Request<Body>) -> http::Response<Body> {
    let handler = service_fn(move |req: Request<Streaming<HealthCheckRequest>>| {
        let api = api.clone();
        async move {
            let mut messages = req.into_inner();
            let mut received = Vec::new();
            while let Some(message) = messages.message().await? {
                received.push(message.service);
            }
            lock(&api.uploads).push(received);
            Ok::<_, Status>(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving.into(),
            }))
        }
    });
    let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
    tonic::server::Grpc::new(codec)
        .client_streaming(handler, req)
        .await
}

/// Server streaming: revokes the call's token, sends one message, then ends with
/// UNAUTHENTICATED in the trailers.
async fn reject_mid_stream(api: Arc<Api>, req: http::Request<Body>) -> http::Response<Body> {
    let handler = service_fn(move |req: Request<HealthCheckRequest>| {
        let api = api.clone();
        async move {
            if let Some(token) = bearer(req.metadata()) {
                api.revoke(token);
            }
            let messages = vec![
                Ok(HealthCheckResponse {
                    status: ServingStatus::Serving.into(),
                }),
                Err(Status::unauthenticated("token revoked")),
            ];
            Ok::<_, Status>(Response::new(tokio_stream::iter(messages)))
        }
    });
    let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
    tonic::server::Grpc::new(codec)
        .server_streaming(handler, req)
        .await
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// The client stack: `Channel` behind the bearer layer.
type Client = BearerAuth<RejectOnTrailers<Channel>>;

struct Fixture {
    api: Arc<Api>,
    addr: SocketAddr,
    layer: BearerAuthLayer,
    client: Client,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|layer, _| layer).await
    }

    /// A fixture whose layer is configured by `configure`, given the server's address.
    async fn with(configure: impl FnOnce(BearerAuthLayer, SocketAddr) -> BearerAuthLayer) -> Self {
        let api = Arc::new(Api::default());
        let addr = serve(api.clone()).await;
        let layer = BearerAuthLayer::new(api.tokens.source());
        let layer = configure(layer, addr);
        let channel = connect(addr).await;
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .layer(RejectOnTrailersLayer::new(&layer))
            .service(channel);
        Self {
            api,
            addr,
            layer,
            client,
        }
    }

    /// A fixture whose client made one call with tok-1, which the server then revoked.
    async fn revoked() -> Self {
        let f = Self::new().await;
        f.assert_serving().await;
        f.api.revoke("tok-1");
        f
    }

    /// A unary Health `Check` through the client answers SERVING.
    async fn assert_serving(&self) {
        let status = check(self.client.clone()).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
    }

    /// Calls to the token source.
    fn issued(&self) -> usize {
        self.api.tokens.issued()
    }

    /// (fetches, rejections, replays)
    fn stats(&self) -> (u64, u64, u64) {
        let stats = self.layer.cache().stats();
        (stats.fetches, stats.rejections, stats.replays)
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    bounded(endpoint.connect()).await.unwrap()
}

/// A unary Health `Check` through `client`.
async fn check<T>(client: T) -> Result<ServingStatus, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<tower_bearer::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tower_bearer::BoxError> + Send,
{
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = bounded(HealthClient::new(client).check(request)).await?;
    Ok(response.into_inner().status())
}

/// A client-streaming call sending `messages`.
async fn upload_through<T, S>(client: &T, messages: S) -> Result<ServingStatus, Status>
where
    T: tonic::client::GrpcService<Body> + Clone,
    T::Error: Into<tower_bearer::BoxError> + std::fmt::Debug,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tower_bearer::BoxError> + Send,
    S: Stream<Item = HealthCheckRequest> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(client.clone());
    bounded(grpc.ready()).await.expect("client ready");
    let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let call = grpc.client_streaming(
        Request::new(messages),
        PathAndQuery::from_static(UPLOAD),
        codec,
    );
    Ok(bounded(call).await?.into_inner().status())
}

/// `n` messages of `size` bytes each, named `m0`, `m1`, ...
fn messages(n: usize, size: usize) -> Vec<HealthCheckRequest> {
    (0..n)
        .map(|i| HealthCheckRequest {
            service: format!("m{i}-{}", "x".repeat(size)),
        })
        .collect()
}

fn names(messages: &[HealthCheckRequest]) -> Vec<String> {
    messages.iter().map(|m| m.service.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_carries_the_token() {
    let f = Fixture::new().await;

    f.assert_serving().await;
    assert_eq!(f.api.calls(), [accepted("tok-1")]);
    assert_eq!(f.stats(), (1, 0, 0));

    // The cached token is reused.
    f.assert_serving().await;
    assert_eq!(f.api.calls(), [accepted("tok-1"), accepted("tok-1")]);
    assert_eq!(f.stats(), (1, 0, 0));
    assert_eq!(f.issued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_replayed_once() {
    let f = Fixture::revoked().await;

    // The interceptor rejects tok-1 (trailers-only UNAUTHENTICATED); the layer fetches tok-2 and
    // replays; the caller sees only the success.
    f.assert_serving().await;
    assert_eq!(
        f.api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    assert_eq!(f.stats(), (2, 1, 1));
    assert_eq!(f.issued(), 2);

    // tok-2 stays in use.
    f.assert_serving().await;
    assert_eq!(f.api.calls().last(), Some(&accepted("tok-2")));
    assert_eq!(f.stats(), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_call_is_replayed_with_all_its_messages() {
    let f = Fixture::revoked().await;

    // Five messages of ~8 KiB: several HTTP/2 data frames, well under the 64 KiB cap.
    let sent = messages(5, 8 * 1024);
    let status = upload_through(&f.client, tokio_stream::iter(sent.clone())).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);

    // The rejected attempt never reached the handler; the replay delivered every message.
    assert_eq!(f.api.uploads(), [names(&sent)]);
    assert_eq!(
        f.api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    assert_eq!(f.stats(), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_stack_replays_a_streaming_call_with_the_channel_as_it_is() {
    // The stack of the README, nothing else: the layer, then tonic's `Channel`.
    let api = Arc::new(Api::default());
    let addr = serve(api.clone()).await;
    let channel = connect(addr).await;
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(api.tokens.source()))
        .service(channel);

    assert_eq!(check(client.clone()).await.unwrap(), ServingStatus::Serving);
    api.revoke("tok-1");
    let sent = messages(3, 1024);
    let status = upload_through(&client, tokio_stream::iter(sent.clone())).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    assert_eq!(api.uploads(), [names(&sent)]);
    assert_eq!(
        api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    assert_eq!(api.tokens.issued(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_rejected_while_still_streaming_is_replayed_with_the_rest() {
    let f = Fixture::revoked().await;

    // Two messages at once, the rest only once the server has rejected the first attempt, so
    // the rejection always arrives mid-upload: the replay must send what the first attempt kept,
    // then what it never read.
    let sent = messages(6, 100);
    let (tx, rx) = mpsc::channel(8);
    let producer = tokio::spawn({
        let sent = sent.clone();
        let api = f.api.clone();
        async move {
            let mut rejected_mid_upload = false;
            for (i, message) in sent.into_iter().enumerate() {
                if i == 2 {
                    rejected_mid_upload = api.saw(rejected("tok-1")).await;
                }
                if tx.send(message).await.is_err() {
                    break;
                }
            }
            rejected_mid_upload
        }
    });
    let status = upload_through(&f.client, ReceiverStream::new(rx)).await;
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    assert!(
        bounded(producer).await.unwrap(),
        "the server did not reject tok-1 while the upload was open"
    );

    assert_eq!(f.api.uploads(), [names(&sent)]);
    assert_eq!(
        f.api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    assert_eq!(f.stats(), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_in_trailers_drops_the_token_without_replay() {
    let f = Fixture::new().await;
    f.assert_serving().await;

    let mut grpc = tonic::client::Grpc::new(f.client.clone());
    bounded(grpc.ready()).await.unwrap();
    let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    let call = grpc.server_streaming(request, PathAndQuery::from_static(REJECT_MID_STREAM), codec);
    let mut stream = bounded(call).await.unwrap().into_inner();

    // One message, then the call ends with UNAUTHENTICATED, as the server sent it.
    let first = bounded(stream.message()).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let status = bounded(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "token revoked");

    // Not replayed (the server saw the call once), but the token is dropped...
    assert_eq!(f.api.calls(), [accepted("tok-1"), accepted("tok-1")]);
    assert_eq!(f.stats(), (1, 1, 0));

    // ...so the next call fetches tok-2 first, rather than being rejected and replayed.
    f.assert_serving().await;
    assert_eq!(
        f.api.calls(),
        [accepted("tok-1"), accepted("tok-1"), accepted("tok-2")]
    );
    assert_eq!(f.stats(), (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_after_revocation_share_one_fetch() {
    let f = Fixture::revoked().await;

    // Spawned: the stack's futures are `Send`.
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(check(f.client.clone())))
        .collect();
    for call in calls {
        let status = bounded(call).await.unwrap();
        assert_eq!(status.unwrap(), ServingStatus::Serving);
    }

    let (fetches, rejections, replays) = f.stats();
    assert_eq!(fetches, 2, "one fetch replaced tok-1 for every call");
    assert_eq!(rejections, replays, "every rejected call was replayed");
    let after: Vec<_> = f.api.calls().into_iter().skip(1).collect();
    let rejected_calls = after.iter().filter(|c| **c == rejected("tok-1")).count();
    assert_eq!(rejected_calls as u64, rejections);
    assert_eq!(after.iter().filter(|c| **c == accepted("tok-2")).count(), 8);
    assert_eq!(after.len(), 8 + rejected_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_watching_switched_off_keeps_the_stack_type_and_leaves_the_token() {
    let api = Arc::new(Api::default());
    let addr = serve(api.clone()).await;
    let layer = BearerAuthLayer::new(api.tokens.source());
    let channel = connect(addr).await;
    let stack = |watch: bool| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .layer(RejectOnTrailersLayer::new(&layer).enabled(watch))
            .service(channel.clone())
    };
    // Both settings make one type (what `option_layer` cannot do for this layer).
    let [_watching, client] = [stack(true), stack(false)];

    let mut grpc = tonic::client::Grpc::new(client.clone());
    bounded(grpc.ready()).await.unwrap();
    let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    let call = grpc.server_streaming(request, PathAndQuery::from_static(REJECT_MID_STREAM), codec);
    let mut stream = bounded(call).await.unwrap().into_inner();
    bounded(stream.message()).await.unwrap().unwrap();
    let status = bounded(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Unwatched: the token is kept, so the next call carries it, is rejected, and is replayed.
    assert_eq!(layer.cache().stats().rejections, 0);
    assert_eq!(check(client.clone()).await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    let stats = layer.cache().stats();
    assert_eq!((stats.fetches, stats.rejections, stats.replays), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replay_the_rejection_comes_back_and_the_next_call_fetches() {
    let api = Arc::new(Api::default());
    let addr = serve(api.clone()).await;
    let layer: BearerAuthLayer<NoReplay> =
        BearerAuthLayer::new(api.tokens.source()).without_replay();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(RejectOnTrailersLayer::new(&layer))
        .service(connect(addr).await);

    assert_eq!(check(client.clone()).await.unwrap(), ServingStatus::Serving);
    api.revoke("tok-1");
    let status = check(client.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "token not valid");
    assert_eq!(check(client.clone()).await.unwrap(), ServingStatus::Serving);

    assert_eq!(
        api.calls(),
        [accepted("tok-1"), rejected("tok-1"), accepted("tok-2")]
    );
    let stats = layer.cache().stats();
    assert_eq!((stats.fetches, stats.rejections, stats.replays), (2, 1, 0));
    assert_eq!(api.tokens.issued(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_origins_fails_calls_whose_uri_has_no_origin() {
    // tonic's clients send path-only URIs (`Channel` adds its origin later) unless built
    // `with_origin`. Under `only_origins`, nothing says where such a call goes: it fails with
    // `UnknownOrigin` instead of going out without its token, and reaches no server.
    let f = Fixture::with(|layer, addr| {
        layer.only_origins([format!("http://{addr}").parse().unwrap()])
    })
    .await;

    let status = check(f.client.clone()).await.unwrap_err();
    let error = std::iter::successors(
        Some(&status as &(dyn std::error::Error + 'static)),
        |error| error.source(),
    )
    .find_map(|error| error.downcast_ref::<tower_bearer::Error>())
    .unwrap_or_else(|| panic!("no tower_bearer::Error in {status:?}"));
    assert_eq!(error.kind(), tower_bearer::ErrorKind::UnknownOrigin);
    assert!(f.api.calls().is_empty(), "{:?}", f.api.calls());
    assert_eq!(f.issued(), 0, "no token is fetched for it");

    let origin: http::Uri = format!("http://{}", f.addr).parse().unwrap();
    let mut health = HealthClient::with_origin(f.client.clone(), origin);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = bounded(health.check(request)).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(f.api.calls(), [accepted("tok-1")]);
    assert_eq!(f.stats(), (1, 0, 0));
}
