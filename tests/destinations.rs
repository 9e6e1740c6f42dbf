//! One layer, several destinations (#14), over real sockets on 127.0.0.1:
//!
//! 1. a tonic client calling two gRPC services of one server through one `Channel` stack, the
//!    key of each call chosen by `Destinations::select` from the gRPC service name, each
//!    service's interceptor accepting only tokens of its own audience;
//! 2. an axum gateway forwarding to two upstreams (two origins) and a third, unmapped one
//!    through one layer with an origin table: each upstream receives only its own token, the
//!    unmapped one none, and a 401 from one upstream replays that request only and leaves the
//!    other key's token alone.
//!
//! The token source issues `<audience>-tok-<n>` for the audience of the key it is asked for, so
//! a token that went to the wrong destination shows in what that destination saw.

#[allow(dead_code)]
mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::uri::PathAndQuery;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic_health::pb::health_check_response::ServingStatus;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_bearer::auth::{Destinations, RequestHead};
use tower_bearer::{
    source_fn, BearerAuthLayer, Origin, Token, TokenCache, TokenKey, TokenRequest, TokenSource,
};

use support::{loopback, within};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(future: F) -> F::Output {
    within(LIMIT, "a step of the test", future).await
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The authorization server: one token per audience at a time
// ---------------------------------------------------------------------------------------------

/// Issues `<audience>-tok-<n>` (`n` counted per audience) for the audience of the key it is
/// asked for; a token is valid, for its own audience only, until revoked.
#[derive(Clone, Default)]
struct Audiences {
    issued: Arc<Mutex<HashMap<String, Vec<String>>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
    /// The key of every call to the source, in order.
    asked: Arc<Mutex<Vec<TokenKey>>>,
}

impl Audiences {
    fn source(&self) -> impl TokenSource {
        let this = self.clone();
        source_fn(move |req: TokenRequest| {
            lock(&this.asked).push(req.key().clone());
            let audience = req.key().audiences().next().unwrap_or("none").to_owned();
            let mut issued = lock(&this.issued);
            let tokens = issued.entry(audience.clone()).or_default();
            let token = format!("{audience}-tok-{}", tokens.len() + 1);
            tokens.push(token.clone());
            async move {
                Ok::<_, Infallible>(Token::new(token).with_expires_in(Duration::from_secs(3600)))
            }
        })
    }

    /// Whether an API of `audience` accepts the `Authorization` value `authorization`.
    fn accepts(&self, audience: &str, authorization: &str) -> bool {
        let Some(token) = authorization.strip_prefix("Bearer ") else {
            return false;
        };
        lock(&self.issued)
            .get(audience)
            .is_some_and(|tokens| tokens.iter().any(|t| t == token))
            && !lock(&self.revoked).contains(token)
    }

    fn revoke(&self, token: &str) {
        lock(&self.revoked).insert(token.to_owned());
    }

    /// The tokens issued for `audience`, in order.
    fn issued(&self, audience: &str) -> Vec<String> {
        lock(&self.issued)
            .get(audience)
            .cloned()
            .unwrap_or_default()
    }

    /// The keys the source was asked for, in order.
    fn asked(&self) -> Vec<TokenKey> {
        lock(&self.asked).clone()
    }
}

/// What one destination saw: the `Authorization` of each request ("none" without one) and
/// whether it was accepted.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, bool)>>>);

impl Seen {
    fn push(&self, authorization: Option<&str>, accepted: bool) {
        let authorization = authorization.unwrap_or("none").to_owned();
        lock(&self.0).push((authorization, accepted));
    }

    fn get(&self) -> Vec<(String, bool)> {
        lock(&self.0).clone()
    }
}

fn accepted(token: &str) -> (String, bool) {
    (format!("Bearer {token}"), true)
}

fn rejected(token: &str) -> (String, bool) {
    (format!("Bearer {token}"), false)
}

// ---------------------------------------------------------------------------------------------
// 1. A tonic client, two gRPC services, one Channel
// ---------------------------------------------------------------------------------------------

mod grpc {
    use super::*;

    use tonic::body::Body;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Channel, Server};
    use tonic::{Request, Response, Status};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_prost::ProstCodec;

    /// The hand-written second service's only method.
    pub(super) const INVENTORY_COUNT: &str = "/test.Inventory/Count";

    /// An interceptor accepting only valid tokens of `audience`, recording what it saw.
    fn only(
        audiences: &Audiences,
        audience: &'static str,
        seen: &Seen,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + 'static {
        let (audiences, seen) = (audiences.clone(), seen.clone());
        move |req: Request<()>| {
            let authorization = req
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok());
            let ok = authorization.is_some_and(|value| audiences.accepts(audience, value));
            seen.push(authorization, ok);
            if ok {
                Ok(req)
            } else {
                Err(Status::unauthenticated("not a token of this service"))
            }
        }
    }

    /// `/test.Inventory/Count`, unary, written with tonic's `server::Grpc`: answers SERVING.
    async fn inventory(req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
        let handler = service_fn(|_: Request<HealthCheckRequest>| async {
            Ok::<_, Status>(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving.into(),
            }))
        });
        let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
        Ok(tonic::server::Grpc::new(codec).unary(handler, req).await)
    }

    /// One server on a fresh port of 127.0.0.1 with two services, each behind its own
    /// interceptor: Health (audience `health`) and Inventory (audience `inventory`).
    pub(super) async fn serve(audiences: &Audiences, health: &Seen, stock: &Seen) -> SocketAddr {
        let (listener, addr) = loopback().await;
        let (_reporter, health_service) = tonic_health::server::health_reporter();
        let health_service =
            InterceptedService::new(health_service, only(audiences, "health", health));
        let inventory_service =
            InterceptedService::new(service_fn(inventory), only(audiences, "inventory", stock));
        let routes = service_fn(move |req: http::Request<Body>| {
            let health = health_service.clone();
            let inventory = inventory_service.clone();
            async move {
                if req.uri().path().starts_with("/test.Inventory/") {
                    inventory.oneshot(req).await
                } else {
                    health.oneshot(req).await
                }
            }
        });
        tokio::spawn(Server::builder().serve_with_incoming(routes, TcpIncoming::from(listener)));
        addr
    }

    pub(super) async fn connect(addr: SocketAddr) -> Channel {
        let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
        bounded(endpoint.connect()).await.unwrap()
    }

    /// A unary Health `Check` through `client`.
    pub(super) async fn check<T>(client: T) -> Result<ServingStatus, Status>
    where
        T: tonic::client::GrpcService<Body>,
        T::Error: Into<tower_bearer::BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<tower_bearer::BoxError> + Send,
    {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let response = bounded(HealthClient::new(client).check(request)).await?;
        Ok(response.into_inner().status())
    }

    /// A unary `/test.Inventory/Count` through `client`.
    pub(super) async fn count<T>(client: T) -> Result<ServingStatus, Status>
    where
        T: tonic::client::GrpcService<Body>,
        T::Error: Into<tower_bearer::BoxError> + std::fmt::Debug,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<tower_bearer::BoxError> + Send,
    {
        let mut grpc = tonic::client::Grpc::new(client);
        bounded(grpc.ready()).await.expect("client ready");
        let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let request = Request::new(HealthCheckRequest {
            service: "widgets".into(),
        });
        let path = PathAndQuery::from_static(INVENTORY_COUNT);
        Ok(bounded(grpc.unary(request, path, codec))
            .await?
            .into_inner()
            .status())
    }
}

/// The gRPC service name of a request's path, `/package.Service/Method`.
fn grpc_service<'a>(head: &'a RequestHead<'_>) -> Option<&'a str> {
    head.uri().path().strip_prefix('/')?.split('/').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_stack_calls_two_grpc_services_each_with_its_own_audience() {
    let audiences = Audiences::default();
    let (health_seen, inventory_seen) = (Seen::default(), Seen::default());
    let addr = grpc::serve(&audiences, &health_seen, &inventory_seen).await;

    let keyed = TokenCache::builder(audiences.source()).build_keyed();
    let health = TokenKey::audience_of("health");
    let inventory = TokenKey::audience_of("inventory");
    let destinations = Destinations::new(keyed.clone()).select({
        let (health, inventory) = (health.clone(), inventory.clone());
        move |head: &RequestHead<'_>| match grpc_service(head)? {
            "grpc.health.v1.Health" => Some(health.clone()),
            "test.Inventory" => Some(inventory.clone()),
            _ => None,
        }
    });
    // One `Channel`, one stack, both services.
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::destinations(destinations))
        .service(grpc::connect(addr).await);

    for _ in 0..2 {
        assert_eq!(
            grpc::check(client.clone()).await.unwrap(),
            ServingStatus::Serving
        );
        assert_eq!(
            grpc::count(client.clone()).await.unwrap(),
            ServingStatus::Serving
        );
    }

    // Each interceptor saw only tokens of its own audience, and accepted all of them.
    assert_eq!(
        health_seen.get(),
        [accepted("health-tok-1"), accepted("health-tok-1")]
    );
    assert_eq!(
        inventory_seen.get(),
        [accepted("inventory-tok-1"), accepted("inventory-tok-1")]
    );
    // One fetch per audience, and the source was asked for these two keys only.
    assert_eq!(audiences.issued("health"), ["health-tok-1"]);
    assert_eq!(audiences.issued("inventory"), ["inventory-tok-1"]);
    let asked: HashSet<TokenKey> = audiences.asked().into_iter().collect();
    assert_eq!(asked, HashSet::from([health.clone(), inventory.clone()]));
    for key in [&health, &inventory] {
        let stats = keyed.stats(key).expect("the key is held");
        assert_eq!((stats.fetches, stats.rejections, stats.replays), (1, 0, 0));
    }
    assert_eq!(keyed.total_stats().fetches, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_service_no_key_selects_gets_no_token() {
    // `select` maps Health only: Inventory calls go out bare and its interceptor refuses them,
    // while Health keeps its token. No token of one service leaks to the other.
    let audiences = Audiences::default();
    let (health_seen, inventory_seen) = (Seen::default(), Seen::default());
    let addr = grpc::serve(&audiences, &health_seen, &inventory_seen).await;

    let keyed = TokenCache::builder(audiences.source()).build_keyed();
    let health = TokenKey::audience_of("health");
    let destinations = Destinations::new(keyed.clone()).select({
        let health = health.clone();
        move |head: &RequestHead<'_>| {
            (grpc_service(head)? == "grpc.health.v1.Health").then(|| health.clone())
        }
    });
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::destinations(destinations))
        .service(grpc::connect(addr).await);

    assert_eq!(
        grpc::check(client.clone()).await.unwrap(),
        ServingStatus::Serving
    );
    let refused = grpc::count(client.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    assert_eq!(health_seen.get(), [accepted("health-tok-1")]);
    assert_eq!(inventory_seen.get(), [("none".to_owned(), false)]);
    assert_eq!(audiences.asked(), [health]);
    assert_eq!(keyed.total_stats().rejections, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. An axum gateway, two upstreams and an unmapped third, one layer
// ---------------------------------------------------------------------------------------------

mod gateway {
    use super::*;

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::response::{IntoResponse, Response};
    use axum::routing::any;
    use axum::Router;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower_bearer::BearerAuth;

    async fn serve(router: Router) -> SocketAddr {
        let (listener, addr) = loopback().await;
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// An upstream API. With an audience, it accepts only valid tokens of that audience (401
    /// otherwise); without one it needs no token. It answers with its name and the size of the
    /// body it received.
    #[derive(Clone)]
    struct Upstream {
        name: &'static str,
        audience: Option<&'static str>,
        audiences: Audiences,
        seen: Seen,
    }

    async fn upstream(State(up): State<Upstream>, req: Request) -> Response {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        let ok = match up.audience {
            Some(audience) => authorization
                .as_deref()
                .is_some_and(|value| up.audiences.accepts(audience, value)),
            None => true,
        };
        // Read the body before answering, as servers do, so that a 401 is never lost to a
        // reset of a connection with unread bytes.
        let body = req.into_body().collect().await.unwrap().to_bytes();
        up.seen.push(authorization.as_deref(), ok);
        if !ok {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        format!("{} got {} bytes", up.name, body.len()).into_response()
    }

    /// The gateway's client: hyper-util under one layer for every upstream.
    type Upstreams = BearerAuth<Client<HttpConnector, Body>>;

    #[derive(Clone)]
    struct Forward {
        client: Upstreams,
        /// The first segment of the gateway's path → the upstream it forwards to.
        routes: Arc<HashMap<&'static str, SocketAddr>>,
    }

    /// `/<upstream>/<rest>` goes to `http://<upstream's address>/<rest>`.
    async fn forward(State(gateway): State<Forward>, mut req: Request) -> Response {
        let path = req.uri().path().to_owned();
        let (name, rest) = path[1..].split_once('/').unwrap_or((&path[1..], ""));
        let Some(addr) = gateway.routes.get(name) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        *req.uri_mut() = format!("http://{addr}/{rest}").parse().unwrap();
        req.headers_mut().remove(HOST);
        match gateway.client.oneshot(req).await {
            Ok(response) => response.map(Body::new),
            Err(_) => StatusCode::BAD_GATEWAY.into_response(),
        }
    }

    pub(super) struct Stack {
        pub(super) audiences: Audiences,
        /// What upstreams `billing`, `search` and `public` saw.
        pub(super) billing: Seen,
        pub(super) search: Seen,
        pub(super) public: Seen,
        pub(super) keyed: tower_bearer::cache::KeyedCache,
        pub(super) billing_key: TokenKey,
        pub(super) search_key: TokenKey,
        gateway: SocketAddr,
        caller: Client<HttpConnector, Full<Bytes>>,
    }

    impl Stack {
        /// Three upstreams; the layer's origin table maps the first two to their audiences and
        /// leaves the third out.
        pub(super) async fn start() -> Self {
            let audiences = Audiences::default();
            let (billing, search, public) = (Seen::default(), Seen::default(), Seen::default());
            let mut routes = HashMap::new();
            for (name, audience, seen) in [
                ("billing", Some("billing"), &billing),
                ("search", Some("search"), &search),
                ("public", None, &public),
            ] {
                let state = Upstream {
                    name,
                    audience,
                    audiences: audiences.clone(),
                    seen: seen.clone(),
                };
                let router = Router::new()
                    .route("/{*path}", any(upstream))
                    .with_state(state);
                routes.insert(name, serve(router).await);
            }

            let keyed = TokenCache::builder(audiences.source())
                .max_keys(16)
                .build_keyed();
            let billing_key = TokenKey::audience_of("billing");
            let search_key = TokenKey::audience_of("search");
            let origin =
                |name: &str| -> Origin { format!("http://{}", routes[name]).parse().unwrap() };
            let destinations = Destinations::new(keyed.clone())
                .origin(origin("billing"), billing_key.clone())
                .origin(origin("search"), search_key.clone());
            let client = ServiceBuilder::new()
                .layer(BearerAuthLayer::destinations(destinations))
                .service(Client::builder(TokioExecutor::new()).build_http());
            let forward = Forward {
                client,
                routes: Arc::new(routes),
            };
            let gateway = serve(
                Router::new()
                    .route("/{*path}", any(self::forward))
                    .with_state(forward),
            )
            .await;
            Self {
                audiences,
                billing,
                search,
                public,
                keyed,
                billing_key,
                search_key,
                gateway,
                // The gateway's callers have no token.
                caller: Client::builder(TokioExecutor::new()).build_http(),
            }
        }

        /// POSTs `body` to the gateway at `path`; the status and the text of the answer.
        pub(super) async fn post(&self, path: &str, body: &'static str) -> (StatusCode, String) {
            let request = http::Request::post(format!("http://{}{path}", self.gateway))
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let response = bounded(self.caller.request(request)).await.unwrap();
            let status = response.status();
            let body = bounded(response.into_body().collect())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }

        /// (fetches, rejections, replays) of `key`.
        pub(super) fn stats(&self, key: &TokenKey) -> (u64, u64, u64) {
            let stats = self.keyed.stats(key).expect("the key is held");
            (stats.fetches, stats.rejections, stats.replays)
        }
    }
}

fn ok(text: &str) -> (StatusCode, String) {
    (StatusCode::OK, text.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_sends_each_upstream_its_own_token_and_the_unmapped_one_none() {
    let stack = gateway::Stack::start().await;

    for _ in 0..2 {
        assert_eq!(
            stack.post("/billing/invoices", "invoice").await,
            ok("billing got 7 bytes")
        );
        assert_eq!(
            stack.post("/search/query", "q=x").await,
            ok("search got 3 bytes")
        );
        assert_eq!(
            stack.post("/public/status", "").await,
            ok("public got 0 bytes")
        );
    }

    assert_eq!(
        stack.billing.get(),
        [accepted("billing-tok-1"), accepted("billing-tok-1")]
    );
    assert_eq!(
        stack.search.get(),
        [accepted("search-tok-1"), accepted("search-tok-1")]
    );
    // The unmapped origin gets no token at all, neither of the mapped keys' nor a default one.
    assert_eq!(
        stack.public.get(),
        [("none".to_owned(), true), ("none".to_owned(), true)]
    );
    let asked: HashSet<TokenKey> = stack.audiences.asked().into_iter().collect();
    assert_eq!(
        asked,
        HashSet::from([stack.billing_key.clone(), stack.search_key.clone()])
    );
    assert_eq!(stack.stats(&stack.billing_key), (1, 0, 0));
    assert_eq!(stack.stats(&stack.search_key), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_one_upstream_replays_that_request_only_and_leaves_the_other_key_alone() {
    let stack = gateway::Stack::start().await;
    assert_eq!(
        stack.post("/billing/invoices", "invoice").await,
        ok("billing got 7 bytes")
    );
    assert_eq!(
        stack.post("/search/query", "q=x").await,
        ok("search got 3 bytes")
    );

    stack.audiences.revoke("billing-tok-1");
    // Billing refuses tok-1; the layer fetches billing's next token and replays the request,
    // body included; the caller sees only the success.
    assert_eq!(
        stack.post("/billing/invoices", "invoice-2").await,
        ok("billing got 9 bytes")
    );
    assert_eq!(
        stack.billing.get(),
        [
            accepted("billing-tok-1"),
            rejected("billing-tok-1"),
            accepted("billing-tok-2")
        ]
    );
    assert_eq!(stack.stats(&stack.billing_key), (2, 1, 1));

    // Search was not called by the replay, and its token was neither dropped nor fetched again.
    assert_eq!(stack.search.get(), [accepted("search-tok-1")]);
    assert_eq!(stack.stats(&stack.search_key), (1, 0, 0));
    assert_eq!(
        stack.post("/search/query", "q=y").await,
        ok("search got 3 bytes")
    );
    assert_eq!(
        stack.search.get(),
        [accepted("search-tok-1"), accepted("search-tok-1")]
    );
    assert_eq!(stack.stats(&stack.search_key), (1, 0, 0));
    assert_eq!(stack.audiences.issued("search"), ["search-tok-1"]);
    assert_eq!(
        stack.audiences.issued("billing"),
        ["billing-tok-1", "billing-tok-2"]
    );
    assert!(stack.public.get().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. The origin table itself
// ---------------------------------------------------------------------------------------------

/// The `Authorization` a request to `uri` leaves with through `client` ("none" without one).
async fn sent_with<S>(client: &S, uri: &str, key: Option<&TokenKey>) -> String
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<String>,
            Error = tower_bearer::BoxError,
        > + Clone,
{
    let mut request = support::get(uri);
    if let Some(key) = key {
        request.extensions_mut().insert(key.clone());
    }
    let response = bounded(client.clone().oneshot(request)).await.unwrap();
    response.into_body()
}

#[tokio::test]
async fn the_origin_table_matches_as_origin_matches_does_and_a_key_in_extensions_wins() {
    let audiences = Audiences::default();
    let keyed = TokenCache::builder(audiences.source()).build_keyed();
    let key = |audience: &str| TokenKey::audience_of(audience);
    let origin = |origin: &str| -> Origin { origin.parse().unwrap() };
    let mut destinations = Destinations::new(keyed.clone())
        .origin(origin("https://API.example.com"), key("a"))
        .origin(origin("https://api.example.com:8443"), key("b"))
        .origin(origin("http://api.example.com"), key("c"))
        // The same origin again: the first one added wins, as with a scan of the table.
        .origin(origin("https://api.example.com:443"), key("shadowed"))
        .origin(origin("http://[::1]:8080"), key("v6"))
        .origin(origin("https://x.io"), key("short"));
    // Enough origins that a table scanned in order and one looked up by hash would differ if
    // the lookup lost any of them.
    for i in 0..300 {
        destinations = destinations.origin(
            origin(&format!("https://svc-{i}.internal.example")),
            key(&format!("svc{i}")),
        );
    }
    let echo = service_fn(|req: http::Request<Full<Bytes>>| async move {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .map_or("none", |value| value.to_str().unwrap())
            .to_owned();
        Ok::<_, Infallible>(http::Response::new(authorization))
    });
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::destinations(destinations))
        .service(echo);

    for (uri, expected) in [
        ("https://api.example.com/x", "Bearer a-tok-1"),
        ("https://Api.Example.COM:443/x?q=1", "Bearer a-tok-1"),
        ("https://user@api.example.com/x", "Bearer a-tok-1"),
        ("https://api.example.com:8443/x", "Bearer b-tok-1"),
        ("http://api.example.com:80/x", "Bearer c-tok-1"),
        ("http://API.EXAMPLE.COM/x", "Bearer c-tok-1"),
        ("http://[::1]:8080/x", "Bearer v6-tok-1"),
        ("https://X.IO/", "Bearer short-tok-1"),
        ("http://api.example.com:8443/x", "none"),
        ("https://api.example.com.evil.test/x", "none"),
        ("https://api.example.co/x", "none"),
        ("https://x.io.evil.test/", "none"),
        ("ws://api.example.com/x", "none"),
        ("/relative/path", "none"),
    ] {
        assert_eq!(sent_with(&client, uri, None).await, expected, "{uri}");
    }
    for i in 0..300 {
        let uri = format!("https://svc-{i}.internal.example/v1");
        let expected = format!("Bearer svc{i}-tok-1");
        assert_eq!(sent_with(&client, &uri, None).await, expected, "{uri}");
    }
    assert!(!audiences.asked().contains(&key("shadowed")));

    // A key in the request's extensions wins over the table, and over no match at all.
    let chosen = key("chosen");
    for uri in ["https://api.example.com/x", "https://elsewhere.example/x"] {
        assert_eq!(
            sent_with(&client, uri, Some(&chosen)).await,
            "Bearer chosen-tok-1",
            "{uri}"
        );
    }
    assert_eq!(keyed.stats(&chosen).unwrap().fetches, 1);
}
