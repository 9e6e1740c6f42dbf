//! Interoperability with a real, certified authorization server: `oidc-provider` (npm, pinned in
//! `tests/peers`), started by each test on a free loopback port. `scripts/test.sh` installs it.

#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::auth::Destinations;
use tower_bearer::oauth2::{
    AuthorizationCode, ClientAuth, ClientCredentials, ErrorCode, ErrorKind, LoopbackRedirect,
    MemoryStore, RefreshTokenSource, TokenEndpoint, TokenResponse,
};
use tower_bearer::{source_fn, BearerAuthLayer, RefreshToken, TokenCache, TokenKey, TokenRequest};

use support::get;
use support::oidc_peer::{http, sign_in};

/// A running `oidc-provider`; killed on drop (and it exits by itself when its stdin closes).
struct Peer {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl Peer {
    fn start() -> Self {
        Self::start_with_ttl(60)
    }

    fn start_with_ttl(ttl: u64) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oidc-provider")
                .exists(),
            "oidc-provider is not installed: run scripts/test.sh (it runs `npm ci` in tests/peers)"
        );
        let mut child = Command::new("node")
            .arg("oidc-server.mjs")
            .current_dir(dir)
            .env("TOKEN_TTL", ttl.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start node: Node.js 20+ must be installed");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("oidc-provider did not start: {line:?}"));
        Self {
            child,
            _stdin: stdin,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    fn client(&self, id: &str, secret: Option<&str>, auth: ClientAuth) -> TokenEndpoint {
        let mut builder = TokenEndpoint::builder(self.url("/token"), id).auth(auth);
        if let Some(secret) = secret {
            builder = builder.client_secret(secret);
        }
        builder.build().unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn cc(
    peer: &Peer,
    id: &str,
    secret: &str,
    auth: ClientAuth,
) -> Result<TokenResponse, tower_bearer::oauth2::Error> {
    ClientCredentials::new(peer.client(id, Some(secret), auth))
        .request_token()
        .await
}

#[tokio::test]
async fn client_credentials_with_every_client_authentication() {
    let peer = Peer::start();
    for auth in [ClientAuth::Basic, ClientAuth::BasicRaw, ClientAuth::Post] {
        let response = cc(&peer, "cc-client", "cc-secret", auth).await.unwrap();
        assert!(!response.access_token().secret().is_empty(), "{auth:?}");
        assert_eq!(
            response.expires_in(),
            Some(Duration::from_secs(60)),
            "{auth:?}"
        );
        assert!(response
            .token_type()
            .unwrap()
            .eq_ignore_ascii_case("bearer"));
    }
}

#[tokio::test]
async fn a_secret_with_reserved_characters_works_only_when_encoded() {
    let peer = Peer::start();
    let secret = "a b:c+d/e%f&g=h";
    cc(&peer, "cc-weird", secret, ClientAuth::Basic)
        .await
        .unwrap();
    cc(&peer, "cc-weird", secret, ClientAuth::Post)
        .await
        .unwrap();
    let err = cc(&peer, "cc-weird", secret, ClientAuth::BasicRaw)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OAuth);
    assert_eq!(err.code(), Some(&ErrorCode::InvalidRequest));
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!err.to_string().contains(secret));
}

#[tokio::test]
async fn scopes_and_a_resource_give_a_jwt_access_token() {
    let peer = Peer::start();
    let response =
        ClientCredentials::new(peer.client("cc-client", Some("cc-secret"), ClientAuth::Basic))
            .scope("api:read")
            .resource("urn:tower-bearer:api")
            .request_token()
            .await
            .unwrap();
    assert_eq!(
        response.access_token().secret().split('.').count(),
        3,
        "a JWT"
    );
    assert_eq!(response.scope(), Some("api:read"));

    let err =
        ClientCredentials::new(peer.client("cc-client", Some("cc-secret"), ClientAuth::Basic))
            .resource("urn:unknown")
            .request_token()
            .await
            .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidTarget));
}

#[tokio::test]
async fn a_wrong_secret_is_a_typed_invalid_client() {
    let peer = Peer::start();
    let err = cc(&peer, "cc-client", "wrong", ClientAuth::Basic)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OAuth);
    assert_eq!(err.code(), Some(&ErrorCode::InvalidClient));
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong"));
    assert!(!format!("{err:?}").contains("wrong"));
}

#[tokio::test]
async fn an_unknown_grant_is_a_typed_error() {
    let peer = Peer::start();
    let err =
        ClientCredentials::new(peer.client("cc-client", Some("cc-secret"), ClientAuth::Basic))
            .grant_type("urn:example:unknown")
            .request_token()
            .await
            .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::UnsupportedGrantType));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn the_layer_gets_tokens_from_the_server_through_the_default_client() {
    let peer = Peer::start();
    let source =
        ClientCredentials::new(peer.client("cc-client", Some("cc-secret"), ClientAuth::Basic))
            .scope("api:read")
            .resource("urn:tower-bearer:api");
    let layer = BearerAuthLayer::new(source);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            seen.lock()
                .unwrap()
                .push(req.headers()["authorization"].to_str().unwrap().to_owned());
            async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
            }
        })
    };
    let svc = ServiceBuilder::new().layer(layer.clone()).service(api);
    for _ in 0..5 {
        svc.clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .all(|s| s == &seen[0] && s.starts_with("Bearer ey")));
    assert_eq!(layer.cache().stats().fetches, 1);
}

/// The whole authorization code flow with PKCE, driven without a person.
async fn log_in(peer: &Peer, client: &TokenEndpoint) -> TokenResponse {
    log_in_for(peer, client, &[], None).await
}

/// [`log_in`] asking also for `scopes` and, if given, for `resource`.
async fn log_in_for(
    peer: &Peer,
    client: &TokenEndpoint,
    scopes: &[&str],
    resource: Option<&str>,
) -> TokenResponse {
    let mut grant = AuthorizationCode::new(client.clone(), peer.url("/auth"))
        .scope("openid")
        .scope("offline_access")
        .param("prompt", "consent");
    for scope in scopes {
        grant = grant.scope(*scope);
    }
    if let Some(resource) = resource {
        grant = grant.resource(resource);
    }
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let request = grant
        .authorization_request(redirect.redirect_uri())
        .unwrap();
    assert!(request.url().contains("code_challenge_method=S256"));
    let browser = {
        let (url, redirect_uri) = (request.url().to_owned(), redirect.redirect_uri().to_owned());
        tokio::spawn(async move { sign_in(&http(), &url, &redirect_uri).await })
    };
    let response = redirect
        .receive(&request, Some(&peer.issuer), Duration::from_secs(20))
        .await
        .unwrap();
    browser.await.unwrap();
    assert_eq!(response.issuer(), Some(peer.issuer.as_str()));
    grant.exchange(&request, &response).await.unwrap()
}

fn public_client(peer: &Peer) -> TokenEndpoint {
    peer.client("public-native", None, ClientAuth::None)
}

async fn me(
    peer: &Peer,
    svc: impl tower::Service<
        Request<Full<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = tower::BoxError,
    >,
) -> (StatusCode, String) {
    let response = svc.oneshot(get(&peer.url("/me"))).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn authorization_code_with_pkce_then_refresh_with_rotation() {
    let peer = Peer::start();
    let client = public_client(&peer);
    let tokens = log_in(&peer, &client).await;
    assert!(tokens.refresh_token().is_some());
    assert!(tokens.extra().get("id_token").is_some());
    let first_refresh = tokens.refresh_token().unwrap().clone();

    let store = MemoryStore::new();
    let source = RefreshTokenSource::from_response(client.clone(), tokens)
        .unwrap()
        .store(store.clone());
    // The first token is the one from the code exchange; the second comes from a refresh.
    let a = source.request_token().await.unwrap();
    let b = source.request_token().await.unwrap();
    assert_ne!(a.access_token(), b.access_token());
    let rotated = store.get().expect("the rotated refresh token was saved");
    assert_ne!(rotated, first_refresh);
    assert_eq!(source.refresh_token().await, rotated);

    // The layer calls the server's own bearer-protected endpoint with it.
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source.clone()))
        .service(http());
    let (status, body) = me(&peer, svc).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("test-user"));

    // Reusing a refresh token that was rotated away is refused, and says so.
    let stale = RefreshTokenSource::new(client, first_refresh);
    let err = stale.request_token().await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidGrant));
    assert!(err.needs_reauthorization());
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("authorize again"));
    // It stays refused (that the server is not called again is shown in tests/secrets.rs).
    let again = stale.request_token().await.unwrap_err();
    assert_eq!(again.code(), Some(&ErrorCode::InvalidGrant));
}

#[tokio::test]
async fn a_revoked_token_is_answered_by_one_401_and_a_successful_replay() {
    let peer = Arc::new(Peer::start());
    let client = public_client(&peer);
    // Revoking an access token revokes its whole grant here, refresh token included, so each
    // fetch signs in again.
    let logins = Arc::new(AtomicUsize::new(0));
    let source = {
        let (peer, client, logins) = (peer.clone(), client.clone(), logins.clone());
        source_fn(move |_: TokenRequest| {
            let (peer, client, logins) = (peer.clone(), client.clone(), logins.clone());
            async move {
                logins.fetch_add(1, Ordering::SeqCst);
                Ok::<_, tower_bearer::oauth2::Error>(log_in(&peer, &client).await.into_token())
            }
        })
    };
    let cache = TokenCache::new(source);
    let api_calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .map_request({
            let api_calls = api_calls.clone();
            move |req: Request<Full<Bytes>>| {
                api_calls.fetch_add(1, Ordering::SeqCst);
                req
            }
        })
        .service(http());
    assert_eq!(me(&peer, svc.clone()).await.0, StatusCode::OK);

    let token = cache.token().await.unwrap();
    let form = format!(
        "token={}&token_type_hint=access_token&client_id=public-native",
        token.access_token().secret()
    );
    let revoke = Request::post(peer.url("/token/revocation"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .unwrap();
    assert_eq!(
        http().request(revoke).await.unwrap().status(),
        StatusCode::OK
    );

    let (status, body) = me(&peer, svc).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = cache.stats();
    assert_eq!((stats.rejections, stats.replays), (1, 1));
    assert_eq!(
        api_calls.load(Ordering::SeqCst),
        3,
        "two requests, one replay"
    );
    assert_eq!(logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_ahead_with_no_401() {
    let peer = Peer::start_with_ttl(3);
    let client = public_client(&peer);
    let tokens = log_in(&peer, &client).await;
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3)));
    let source = RefreshTokenSource::from_response(client, tokens).unwrap();
    // 3-second tokens are under the default lifetime floor (10 s), which would use each for
    // 10 s: lowered so that their own timeline applies.
    let cache = TokenCache::builder(source)
        .min_lifetime(Duration::from_secs(1))
        .build();
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(http());
    let start = tokio::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let (status, body) = me(&peer, svc.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = cache.stats();
    assert_eq!(stats.rejections, 0, "{stats:?}");
    assert!(stats.fetches >= 4, "8 s of 3 s tokens: {stats:?}");
    assert!(requests > 30);
}

/// The first access token of a login counts its lifetime from the code exchange, not from when
/// it is first used: a 4-second token first asked for 5 seconds after the exchange is not sent
/// (it would be answered 401), the refresh token is used at once instead. One asked for within
/// half its lifetime is served as it is.
#[tokio::test]
async fn the_first_token_of_a_login_is_not_served_after_it_expired() {
    let peer = Peer::start_with_ttl(4);
    let client = public_client(&peer);

    let tokens = log_in(&peer, &client).await;
    let first_refresh_token = tokens.refresh_token().unwrap().clone();
    let expires_at = tokens.expires_at().expect("requested_at + expires_in");
    assert_eq!(
        expires_at.duration_since(tokens.requested_at().unwrap()),
        Duration::from_secs(4)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let source = RefreshTokenSource::from_response(client.clone(), tokens).unwrap();
    let cache = TokenCache::builder(source.clone())
        .min_lifetime(Duration::from_secs(1))
        .build();
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(http());
    let (status, body) = me(&peer, svc).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = cache.stats();
    assert_eq!((stats.rejections, stats.replays), (0, 0), "{stats:?}");
    assert_ne!(
        source.refresh_token().await,
        first_refresh_token,
        "refreshed (and rotated) instead of serving the dead token"
    );

    // Within half of its lifetime, the first token is served: no refresh.
    let tokens = log_in(&peer, &client).await;
    let first_refresh_token = tokens.refresh_token().unwrap().clone();
    let source = RefreshTokenSource::from_response(client, tokens).unwrap();
    let cache = TokenCache::builder(source.clone())
        .min_lifetime(Duration::from_secs(1))
        .build();
    let token = cache.token().await.unwrap();
    assert!(matches!(token.expiry(), Some(tower_bearer::Expiry::At(_))));
    assert_eq!(source.refresh_token().await, first_refresh_token);
}

#[tokio::test]
async fn a_refresh_token_given_by_hand_works() {
    let peer = Peer::start();
    let client = public_client(&peer);
    let tokens = log_in(&peer, &client).await;
    let refresh_token = RefreshToken::new(tokens.refresh_token().unwrap().secret());
    let source = RefreshTokenSource::new(client, refresh_token.clone());
    let token = source.request_token().await.unwrap();
    assert_ne!(token.refresh_token(), Some(&refresh_token), "rotated");
}

// ---------------------------------------------------------------------------------------------
// Several destinations (#14)
// ---------------------------------------------------------------------------------------------

/// The two resource servers `tests/peers/oidc-server.mjs` knows, each with its own scopes.
const API: &str = "urn:tower-bearer:api";
const BILLING: &str = "urn:tower-bearer:billing";

/// The claims of a JWT, read without checking its signature (the test only needs to know what
/// the server put in it).
fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// The audience of a JWT: `aud` may be a string or an array of one.
fn audience(claims: &serde_json::Value) -> &str {
    match &claims["aud"] {
        serde_json::Value::String(aud) => aud,
        serde_json::Value::Array(auds) if auds.len() == 1 => auds[0].as_str().unwrap(),
        other => panic!("unexpected aud: {other}"),
    }
}

type Seen = Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A small HTTP API on a free loopback port that answers 200 to everything and records the
/// `Authorization` header of each request; its origin and what it saw.
async fn recording_api() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |headers: http::HeaderMap| async move {
            let auth = headers
                .get(http::header::AUTHORIZATION)
                .map(|value| value.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(auth);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (origin, seen)
}

/// The bearer tokens an API saw; every request must have carried one.
fn bearer_tokens(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|auth| {
            auth.as_deref()
                .and_then(|auth| auth.strip_prefix("Bearer "))
                .unwrap_or_else(|| panic!("a request without its token: {auth:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn one_layer_gets_a_jwt_per_resource_and_each_api_receives_only_its_own() {
    let peer = Peer::start();
    let (api, api_seen) = recording_api().await;
    let (billing, billing_seen) = recording_api().await;
    let (elsewhere, elsewhere_seen) = recording_api().await;

    // One client-credentials source, configured with nothing: each key says what it is for.
    let source =
        ClientCredentials::new(peer.client("cc-client", Some("cc-secret"), ClientAuth::Basic));
    let keyed = TokenCache::builder(source).max_keys(8).build_keyed();
    let api_key = TokenKey::builder().resource(API).scope("api:read").build();
    let billing_key = TokenKey::builder()
        .resource(BILLING)
        .scope("billing:read")
        .build();
    let destinations = Destinations::new(keyed.clone())
        .origin(api.parse().unwrap(), api_key.clone())
        .origin(billing.parse().unwrap(), billing_key.clone());
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::destinations(destinations))
        .service(http());

    for _ in 0..3 {
        for origin in [&api, &billing, &elsewhere] {
            let response = svc
                .clone()
                .oneshot(get(&format!("{origin}/items")))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{origin}");
        }
    }

    let api_tokens = bearer_tokens(&api_seen);
    let billing_tokens = bearer_tokens(&billing_seen);
    assert_eq!(api_tokens.len(), 3);
    assert_eq!(billing_tokens.len(), 3);
    assert!(
        api_tokens.iter().all(|t| t == &api_tokens[0]),
        "one token per key"
    );
    assert!(billing_tokens.iter().all(|t| t == &billing_tokens[0]));
    assert_ne!(api_tokens[0], billing_tokens[0]);

    let api_claims = claims(&api_tokens[0]);
    assert_eq!(audience(&api_claims), API, "{api_claims}");
    assert_eq!(api_claims["scope"], "api:read", "{api_claims}");
    let billing_claims = claims(&billing_tokens[0]);
    assert_eq!(audience(&billing_claims), BILLING, "{billing_claims}");
    assert_eq!(billing_claims["scope"], "billing:read", "{billing_claims}");

    // An origin mapped to no key gets no token at all.
    assert_eq!(*elsewhere_seen.lock().unwrap(), vec![None; 3]);

    assert_eq!(keyed.stats(&api_key).unwrap().fetches, 1);
    assert_eq!(keyed.stats(&billing_key).unwrap().fetches, 1);
    assert_eq!(keyed.total_stats().fetches, 2);
}

#[tokio::test]
async fn a_refresh_token_is_down_scoped_per_key() {
    let peer = Peer::start();
    let client = public_client(&peer);
    let tokens = log_in_for(&peer, &client, &["api:read", "api:write"], Some(API)).await;
    let source = RefreshTokenSource::from_response(client, tokens).unwrap();
    let keyed = TokenCache::builder(source.clone())
        .max_keys(8)
        .build_keyed();
    let read = TokenKey::builder().resource(API).scope("api:read").build();
    let write = TokenKey::builder().resource(API).scope("api:write").build();
    let both = TokenKey::builder()
        .resource(API)
        .scope("api:read api:write")
        .build();

    // At once: the refreshes for the keys take turns on the one (rotating) refresh token.
    let (r, w, b) = tokio::join!(keyed.token(&read), keyed.token(&write), keyed.token(&both));
    let (r, w, b) = (r.unwrap(), w.unwrap(), b.unwrap());
    for (token, scope) in [
        (&r, "api:read"),
        (&w, "api:write"),
        (&b, "api:read api:write"),
    ] {
        let claims = claims(token.access_token().secret());
        assert_eq!(claims["scope"], scope, "{claims}");
        assert_eq!(audience(&claims), API, "{claims}");
    }
    assert_ne!(r.access_token(), w.access_token());

    // Cached per key from now on.
    assert_eq!(
        keyed.token(&read).await.unwrap().access_token(),
        r.access_token()
    );
    assert_eq!(
        keyed.token(&write).await.unwrap().access_token(),
        w.access_token()
    );
    assert_eq!(keyed.total_stats().fetches, 3);
}
