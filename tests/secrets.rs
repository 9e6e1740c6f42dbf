//! No secret in `Debug`, `Display` or logs: one full flow with distinctive secrets (every one
//! contains `SECRET`), through client credentials, a refresh token source with rotation, the
//! authorization code grant with PKCE, the device authorization grant (whose device code is a
//! credential), token exchange, the layer with a replay after a 401, and failures, with
//! all `tracing` output at TRACE captured; then `Debug` of every public type and `Display` of
//! every error. None of it may contain a token, a refresh token, a code, a verifier or a client
//! secret.

#[allow(dead_code)]
mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::Debug;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_bearer::grpc::RejectOnTrailersLayer;
use tower_bearer::oauth2::{
    self, AuthorizationCode, AuthorizationResponse, ClientAuth, ClientCredentials, ClientSecret,
    DeviceAuthorization, ErrorCode, FileStore, LoopbackRedirect, MemoryStore, Pkce,
    RefreshTokenSource, SubjectDigest, TokenEndpoint, TokenExchange, TokenResponse,
};
use tower_bearer::replay::{NoReplay, Replay, ReplayPolicy, ReplayWrapped};
use tower_bearer::{
    challenge, source_fn, AccessToken, BearerAuthLayer, ErrorKind, Expiry, Origin, Placement,
    Reason, RefreshToken, StaticToken, Token, TokenCache, TokenRequest,
};
use tracing_subscriber::fmt::format::FmtSpan;

use support::{chain, header, loopback, read_request, within, write_response, Log};

const CLIENT_SECRET: &str = "cs-SECRET-1234";
const WRONG_SECRET: &str = "cs-SECRET-wrong";
const CODE: &str = "code-SECRET-42";

// ---------------------------------------------------------------------------------------------
// An in-process authorization server
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Auth {
    /// Refresh tokens that may be used (once each: every use rotates).
    refresh_tokens: Mutex<HashSet<String>>,
    issued: AtomicU64,
    /// Whether the authorization code was exchanged already (codes are single-use).
    code_used: AtomicBool,
    /// Polls of the token endpoint with the device code `dc-SECRET-ok`.
    device_polls: AtomicU64,
    /// Every request received, head and body, to check that the secrets were really used.
    requests: Mutex<Vec<String>>,
}

/// A token endpoint for the client credentials, refresh token (rotating) and authorization
/// code grants. Clients: `cc-client`, `crlf-client` (gets an access token with CR/LF) and
/// `rt-client`, all with `CLIENT_SECRET`; `ac-client`, public.
struct AuthServer {
    url: String,
    auth: Arc<Auth>,
}

impl AuthServer {
    async fn start() -> Self {
        let (listener, addr) = loopback().await;
        let url = format!("http://{addr}");
        let auth = Arc::new(Auth::default());
        auth.refresh_tokens
            .lock()
            .unwrap()
            .insert("rt-SECRET-1".to_owned());
        let state = auth.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, state.clone()));
            }
        });
        Self { url, auth }
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }

    fn calls(&self) -> usize {
        self.auth.requests.lock().unwrap().len()
    }

    fn saw(&self, text: &str) -> bool {
        self.auth
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|request| request.contains(text))
    }
}

async fn serve(mut stream: TcpStream, auth: Arc<Auth>) {
    let Some((head, body)) = read_request(&mut stream).await else {
        return;
    };
    auth.requests
        .lock()
        .unwrap()
        .push(format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body)));
    let (status, json) = token_endpoint(&auth, &head, &body);
    let challenge = if status == 401 {
        "www-authenticate: Basic realm=\"token\"\r\n"
    } else {
        ""
    };
    let status = format!("{status} X");
    let extra = format!("cache-control: no-store\r\n{challenge}");
    let _ = write_response(
        &mut stream,
        &status,
        "application/json",
        &extra,
        json.as_bytes(),
    )
    .await;
}

fn token_endpoint(auth: &Auth, head: &str, body: &[u8]) -> (u16, String) {
    if head.starts_with("POST /device ") {
        return device_endpoint(body);
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str);
    // client_secret_basic (id and secret form-urlencoded, RFC 6749 §2.3.1) or client_secret_post.
    let (id, secret) = match header(head, "authorization").and_then(|v| v.strip_prefix("Basic ")) {
        Some(b64) => {
            let decoded = String::from_utf8(STANDARD.decode(b64).unwrap_or_default()).unwrap();
            let (id, secret) = decoded.split_once(':').unwrap_or(("", ""));
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (decode(id), Some(decode(secret)))
        }
        None => (
            field("client_id").unwrap_or_default().to_owned(),
            field("client_secret").map(str::to_owned),
        ),
    };
    let authenticated = match id.as_str() {
        "cc-client" | "crlf-client" | "rt-client" => secret.as_deref() == Some(CLIENT_SECRET),
        "ac-client" => secret.is_none(),
        _ => false,
    };
    if !authenticated {
        return (
            401,
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
                .to_owned(),
        );
    }
    let n = auth.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let invalid_grant = (
        400,
        r#"{"error":"invalid_grant","error_description":"the grant was revoked"}"#.to_owned(),
    );
    match field("grant_type") {
        Some("client_credentials") if id == "crlf-client" => (
            200,
            r#"{"access_token":"at-SECRET-crlf\r\nX-Injected: 1","token_type":"Bearer"}"#
                .to_owned(),
        ),
        Some("client_credentials") => (
            200,
            format!(
                r#"{{"access_token":"at-SECRET-cc-{n}","token_type":"Bearer","expires_in":2,"scope":"read"}}"#
            ),
        ),
        Some("refresh_token") => {
            let presented = field("refresh_token").unwrap_or_default();
            let mut valid = auth.refresh_tokens.lock().unwrap();
            if !valid.remove(presented) {
                return invalid_grant;
            }
            let rotated = format!("rt-SECRET-rot-{n}");
            valid.insert(rotated.clone());
            (
                200,
                format!(
                    r#"{{"access_token":"at-SECRET-rt-{n}","token_type":"bearer","expires_in":3600,"refresh_token":"{rotated}"}}"#
                ),
            )
        }
        Some("authorization_code")
            if field("code") == Some(CODE)
                && field("code_verifier").is_some_and(|v| v.len() >= 43)
                && !auth.code_used.swap(true, Ordering::SeqCst) =>
        {
            auth.refresh_tokens
                .lock()
                .unwrap()
                .insert("rt-SECRET-ac".to_owned());
            (
                200,
                r#"{"access_token":"at-SECRET-ac","token_type":"bearer","expires_in":3600,
                    "refresh_token":"rt-SECRET-ac","id_token":"idt-SECRET-jwt",
                    "scope":"openid offline_access","session_key":"sk-SECRET-vendor"}"#
                    .to_owned(),
            )
        }
        Some("authorization_code") => invalid_grant,
        // RFC 8693: a subject this server issued (a client-credentials token); a server that
        // refuses another one and repeats the subject and actor tokens in its description.
        Some("urn:ietf:params:oauth:grant-type:token-exchange") => {
            let subject = field("subject_token").unwrap_or_default();
            let actor = field("actor_token").unwrap_or_default();
            if subject.starts_with("at-SECRET-cc-") {
                return (
                    200,
                    format!(
                        r#"{{"access_token":"at-SECRET-xt-{n}","token_type":"Bearer","expires_in":60,
                            "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}}"#
                    ),
                );
            }
            (
                400,
                format!(
                    r#"{{"error":"invalid_grant","error_description":"unknown subject_token {subject} (actor {actor})"}}"#
                ),
            )
        }
        // The device code grant: a failure whose page echoes the device code, a pending
        // poll, then tokens; or, for the denied one, a refusal echoing it.
        Some("urn:ietf:params:oauth:grant-type:device_code") => match field("device_code") {
            Some(code @ "dc-SECRET-ok") => match auth.device_polls.fetch_add(1, Ordering::SeqCst) {
                0 => (503, format!("busy; retry device_code={code}")),
                1 => (400, r#"{"error":"authorization_pending"}"#.to_owned()),
                _ => (
                    200,
                    r#"{"access_token":"at-SECRET-device","token_type":"Bearer","expires_in":60,
                        "refresh_token":"rt-SECRET-device"}"#
                        .to_owned(),
                ),
            },
            Some(code) => (
                400,
                format!(r#"{{"error":"access_denied","error_description":"{code} was denied"}}"#),
            ),
            None => invalid_grant,
        },
        _ => (400, r#"{"error":"unsupported_grant_type"}"#.to_owned()),
    }
}

/// RFC 8628's device authorization endpoint: a device code per request, `dc-SECRET-ok`, or
/// `dc-SECRET-deny` when the scope is `deny`.
fn device_endpoint(body: &[u8]) -> (u16, String) {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    if form.get("client_id").map(String::as_str) != Some("ac-client") {
        return (401, r#"{"error":"invalid_client"}"#.to_owned());
    }
    let code = match form.get("scope").map(String::as_str) {
        Some("deny") => "dc-SECRET-deny",
        _ => "dc-SECRET-ok",
    };
    (
        200,
        format!(
            r#"{{"device_code":"{code}","user_code":"WDJB-MJHT","expires_in":"60","interval":1,
                "verification_uri":"http://127.0.0.1:9/device",
                "verification_uri_complete":"http://127.0.0.1:9/device?user_code=WDJB-MJHT"}}"#
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The API behind the layer
// ---------------------------------------------------------------------------------------------

/// Accepts any bearer token it has not revoked; answers 401 `invalid_token` otherwise. Records
/// the `Debug` of the headers of every request it receives.
#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<String>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
    debug: Arc<Mutex<Vec<String>>>,
}

type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

impl Api {
    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answer,
    > + Clone
           + Send
           + Debug
           + 'static {
        let api = self.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            api.debug
                .lock()
                .unwrap()
                .push(format!("{:?} {:?}", req.headers(), req));
            let token = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            api.seen.lock().unwrap().push(token.clone());
            let mut response = Response::new(Full::default());
            if token.is_empty() || api.revoked.lock().unwrap().contains(&token) {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="api", error="invalid_token""#),
                );
            }
            std::future::ready(Ok(response))
        })
    }

    /// Revokes every token seen so far.
    fn revoke_seen(&self) {
        let seen = self.seen.lock().unwrap().clone();
        self.revoked.lock().unwrap().extend(seen);
    }

    fn last(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn get() -> Request<Full<Bytes>> {
    support::get("http://127.0.0.1:9/items")
}

// ---------------------------------------------------------------------------------------------
// Capturing what is rendered
// ---------------------------------------------------------------------------------------------

/// Everything rendered, labelled.
#[derive(Default)]
struct Rendered(Vec<(String, String)>);

impl Rendered {
    fn debug<T: Debug + ?Sized>(&mut self, label: &str, value: &T) {
        self.0.push((label.to_owned(), format!("{value:?}")));
        self.0
            .push((format!("{label} (alternate)"), format!("{value:#?}")));
    }

    /// `Display` of an error, of its whole source chain, and its `Debug`.
    fn error(&mut self, label: &str, error: &(dyn StdError + 'static)) {
        self.debug(label, error);
        self.0.push((format!("{label} (display)"), chain(error)));
    }

    /// A boxed error from the layer: a `tower_bearer::Error`, rendered as itself.
    fn boxed(&mut self, label: &str, error: &BoxError) -> tower_bearer::Error {
        let error = error
            .downcast_ref::<tower_bearer::Error>()
            .unwrap_or_else(|| panic!("{label}: not a tower_bearer::Error: {error:?}"))
            .clone();
        self.error(label, &error);
        error
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn no_secret_in_debug_display_or_trace_logs() {
    let log = Log::default();
    let subscriber = log.subscriber(tracing::Level::TRACE, FmtSpan::FULL);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A current-thread runtime: spawned tasks (fetches, timers, connections) run on this
    // thread, under this subscriber.
    let guard = tracing::subscriber::set_default(subscriber);
    let (rendered, mut secrets) =
        runtime.block_on(within(Duration::from_secs(30), "the flow", flow()));
    drop(runtime);
    drop(guard);

    // The Basic credentials as sent, and the secrets as URL-encoded in forms: still `SECRET`.
    for id in ["cc-client", "crlf-client", "rt-client"] {
        for secret in [CLIENT_SECRET, WRONG_SECRET] {
            secrets.push(STANDARD.encode(format!("{id}:{secret}")));
        }
    }
    secrets.push("SECRET".to_owned());

    let log = log.text();
    // The log is real: the events of the flow are there.
    for expected in [
        "fetching a token",
        "token fetched",
        "token due for refresh",
        "token rejected by the server; dropped",
        "replaying with a new token",
        "token fetch failed",
        "invalid_client",
        "not a valid HTTP header value: the access token is empty or holds a byte",
        "refresh token refused",
        "token_fetch",
        "reason=Forced",
        "unknown subject_token <redacted> (actor <redacted>)",
        "polling the token endpoint failed; backing off",
        "busy; retry device_code=<redacted>",
    ] {
        assert!(log.contains(expected), "the log lacks {expected:?}:\n{log}");
    }
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log shows {secret:?}:\n{log}"
        );
    }
    assert!(rendered.0.len() > 100, "{}", rendered.0.len());
    for (label, text) in &rendered.0 {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{label} shows {secret:?}: {text}"
            );
        }
    }
}

/// The whole flow. Returns what was rendered and the secrets that are not spelled out in this
/// file (the PKCE verifiers are random).
async fn flow() -> (Rendered, Vec<String>) {
    let mut out = Rendered::default();
    let mut secrets = Vec::new();
    let server = AuthServer::start().await;
    let api = Api::default();

    // --- Client credentials, refresh ahead, and a replay after a 401 ---------------------------
    let builder = TokenEndpoint::builder(server.token_url(), "cc-client")
        .client_secret(ClientSecret::new(CLIENT_SECRET))
        .timeout(Duration::from_secs(5));
    out.debug("TokenEndpointBuilder", &builder);
    let client = builder.build().unwrap();
    out.debug("TokenEndpoint", &client);
    out.debug("ClientSecret", &ClientSecret::new(CLIENT_SECRET));
    let source = ClientCredentials::new(client.clone())
        .scope("read")
        .audience("https://api.test");
    out.debug("ClientCredentials", &source);
    // A credential given as a form parameter (a JWT bearer grant's assertion, a password).
    let assertion = ClientCredentials::new(client.clone())
        .grant_type("urn:ietf:params:oauth:grant-type:jwt-bearer")
        .param("assertion", "jwt-SECRET-assertion")
        .param("password", "pw-SECRET");
    out.debug("ClientCredentials (assertion param)", &assertion);
    // The token lives 2 s; refresh ahead is capped at half of it: due after 1 s.
    let cache_builder = TokenCache::builder(source)
        .expiry_skew(Duration::ZERO)
        .refresh_ahead(Duration::from_secs(10))
        .jitter(0.0)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .min_lifetime(Duration::ZERO);
    out.debug("TokenCacheBuilder", &cache_builder);
    let cache = cache_builder.build();
    let origin: Origin = "http://127.0.0.1:9".parse().unwrap();
    out.debug("Origin", &origin);
    out.0.push(("Origin (display)".into(), origin.to_string()));
    let layer = BearerAuthLayer::from_cache(cache.clone()).only_origins([origin]);
    out.debug("BearerAuthLayer", &layer);
    let mut svc = layer.layer(api.service());
    out.debug("BearerAuth", &svc);

    // First request: waits for the first fetch.
    svc.ready().await.unwrap();
    let future = svc.call(get());
    out.debug("ResponseFuture (waiting)", &future);
    assert_eq!(future.await.unwrap().status(), StatusCode::OK);
    assert_eq!(api.last(), "Bearer at-SECRET-cc-1");
    out.debug("TokenCache", &cache);
    out.debug("BearerAuth (with a token)", &svc);
    let token = cache.token().await.unwrap();
    out.debug("Token (from the cache)", &token);
    out.debug("AccessToken", token.access_token());

    // On the cached path.
    svc.ready().await.unwrap();
    let future = svc.call(get());
    out.debug("ResponseFuture (sent)", &future);
    assert_eq!(future.await.unwrap().status(), StatusCode::OK);

    // Refresh ahead, in the background.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..100 {
        if cache.stats().fetches == 2 && cache.token().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.stats().fetches, 2);
    let response = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.last(), "Bearer at-SECRET-cc-2");

    // The API revokes the token: 401, the token is dropped, the request replayed.
    svc.ready().await.unwrap();
    api.revoke_seen();
    let response = svc.call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.last(), "Bearer at-SECRET-cc-3");
    let stats = cache.stats();
    assert_eq!((stats.rejections, stats.replays), (1, 1), "{stats:?}");
    out.debug("CacheStats", &stats);
    out.debug("TokenCache (after a replay)", &cache);
    assert!(server.saw(&format!(
        "authorization: Basic {}",
        STANDARD.encode(format!("cc-client:{CLIENT_SECRET}"))
    )));

    // Other layers over the same cache.
    let no_replay = BearerAuthLayer::from_cache(cache.clone()).without_replay();
    out.debug("BearerAuthLayer<NoReplay>", &no_replay);
    out.debug("BearerAuth<NoReplay>", &no_replay.layer(api.service()));
    let streaming = BearerAuthLayer::from_cache(cache.clone())
        .replay_policy(ReplayWrapped::new().cap(1024))
        .placement(Placement::query());
    out.debug("BearerAuthLayer<ReplayWrapped>", &streaming);
    let trailers = RejectOnTrailersLayer::new(&streaming);
    out.debug("RejectOnTrailersLayer", &trailers);
    out.debug("RejectOnTrailers", &trailers.layer(api.service()));

    // --- Token exchange (RFC 8693): subject and actor tokens are credentials too --------------
    let exchange = TokenExchange::new(client.clone(), cache.clone())
        .actor(
            StaticToken::new("act-SECRET-1"),
            TokenExchange::ACCESS_TOKEN,
        )
        .audience("https://billing.test");
    out.debug("TokenExchange", &exchange);
    let exchanged = TokenCache::new(exchange.clone());
    let response = BearerAuthLayer::from_cache(exchanged.clone())
        .layer(api.service())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        api.last().starts_with("Bearer at-SECRET-xt-"),
        "{}",
        api.last()
    );
    assert!(server.saw("subject_token=at-SECRET-cc-"));
    assert!(server.saw("actor_token=act-SECRET-1"));
    let token = exchanged.token().await.unwrap();
    out.debug("Token (exchanged)", &token);
    out.debug(
        "SubjectDigest",
        token.extensions().get::<SubjectDigest>().unwrap(),
    );
    out.0.push((
        "TokenExchange::identity".into(),
        exchange.identity().await.unwrap(),
    ));
    out.debug("TokenCache (exchanged)", &exchanged);
    // Refused, with both tokens repeated in the server's description.
    let refused = TokenExchange::from_subject_token(client.clone(), "st-SECRET-unknown")
        .actor(StaticToken::new("act-SECRET-2"), TokenExchange::JWT);
    out.debug("TokenExchange (fixed subject)", &refused);
    let error = refused.request_token().await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::InvalidGrant));
    assert!(server.saw("subject_token=st-SECRET-unknown"));
    out.error("oauth2::Error (token exchange)", &error);
    let error = BearerAuthLayer::new(refused)
        .layer(api.service())
        .oneshot(get())
        .await
        .unwrap_err();
    out.boxed("Error (token exchange refused)", &error);
    let failing_subject = TokenExchange::new(
        client.clone(),
        source_fn(|_: TokenRequest| async {
            Err::<Token, _>(io::Error::other("no token file at /var/run/tokens/sts"))
        }),
    );
    out.error(
        "oauth2::Error (subject source)",
        &failing_subject.request_token().await.unwrap_err(),
    );

    // --- Failures -----------------------------------------------------------------------------
    // The token endpoint refuses the client: 401 invalid_client.
    let wrong = TokenEndpoint::builder(server.token_url(), "cc-client")
        .client_secret(WRONG_SECRET)
        .build()
        .unwrap();
    out.debug("TokenEndpoint (wrong secret)", &wrong);
    let failing = TokenCache::builder(ClientCredentials::new(wrong))
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build();
    let error = BearerAuthLayer::from_cache(failing.clone())
        .layer(api.service())
        .oneshot(get())
        .await
        .unwrap_err();
    let error = out.boxed("Error (invalid_client)", &error);
    let cause = error.source_as::<oauth2::Error>().unwrap();
    assert_eq!(cause.code(), Some(&ErrorCode::InvalidClient));
    assert_eq!(cause.status(), Some(StatusCode::UNAUTHORIZED));
    out.error("oauth2::Error (invalid_client)", cause);
    out.debug("ErrorCode", cause.code().unwrap());
    out.debug("oauth2::ErrorKind", &cause.kind());
    out.debug("TokenCache (failing)", &failing);

    // A CR/LF access token is refused, never sent.
    let crlf = TokenEndpoint::builder(server.token_url(), "crlf-client")
        .client_secret(CLIENT_SECRET)
        .build()
        .unwrap();
    let crlf_cache = TokenCache::new(ClientCredentials::new(crlf));
    let seen_before = api.seen.lock().unwrap().len();
    let error = BearerAuthLayer::from_cache(crlf_cache.clone())
        .layer(api.service())
        .oneshot(get())
        .await
        .unwrap_err();
    let error = out.boxed("Error (CR/LF token)", &error);
    assert_eq!(error.kind(), ErrorKind::InvalidToken);
    out.debug("ErrorKind", &error.kind());
    out.debug("TokenCache (CR/LF)", &crlf_cache);
    assert_eq!(api.seen.lock().unwrap().len(), seen_before);

    // A source that does not answer in time.
    let slow = TokenCache::builder(source_fn(|_: TokenRequest| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, io::Error>(Token::new("at-SECRET-slow"))
    }))
    .fetch_timeout(Duration::from_millis(20))
    .build();
    let error = slow.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    out.error("Error (timeout)", &error);

    // A source failing with an error of its own.
    let broken = TokenCache::new(source_fn(|_: TokenRequest| async {
        Err::<Token, _>(io::Error::other("vault unreachable"))
    }));
    out.error("Error (source)", &broken.token().await.unwrap_err());

    // --- Refresh token with rotation, a replay, a forced refresh, stores ----------------------
    let rt_client = TokenEndpoint::builder(server.token_url(), "rt-client")
        .client_secret(CLIENT_SECRET)
        .auth(ClientAuth::Post)
        .build()
        .unwrap();
    out.debug("ClientAuth", &ClientAuth::Post);
    let store = MemoryStore::new();
    let source = RefreshTokenSource::new(rt_client.clone(), RefreshToken::new("rt-SECRET-1"))
        .store(store.clone());
    out.debug("RefreshTokenSource", &source);
    let rt_cache = TokenCache::new(source.clone());
    let mut rt_svc = BearerAuthLayer::from_cache(rt_cache.clone()).layer(api.service());
    let response = rt_svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        api.last().starts_with("Bearer at-SECRET-rt-"),
        "{}",
        api.last()
    );
    api.revoke_seen();
    let response = rt_svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(rt_cache.stats().replays, 1);
    let forced = rt_cache.refresh().await.unwrap();
    out.debug("Token (refreshed)", &forced);
    let latest = source.refresh_token().await;
    assert!(latest.secret().starts_with("rt-SECRET-rot-"));
    assert_eq!(store.get().as_ref(), Some(&latest));
    assert_eq!(rt_cache.stats().fetches, 3);
    out.debug("RefreshToken", &latest);
    out.debug("MemoryStore", &store);
    out.debug("RefreshTokenSource (rotated)", &source);
    out.debug("TokenCache (refresh token)", &rt_cache);
    assert!(server.saw(&format!("client_secret={CLIENT_SECRET}")));

    // A file store.
    let dir = std::env::temp_dir().join(format!("tower-bearer-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file_store = FileStore::new(dir.join("refresh-token"));
    let file_source =
        RefreshTokenSource::new(rt_client.clone(), latest.clone()).store(file_store.clone());
    out.debug("RefreshTokenSource (file)", &file_source);
    file_source.request_token().await.unwrap();
    let loaded = file_store.load().unwrap().unwrap();
    assert!(loaded.secret().starts_with("rt-SECRET-rot-"));
    out.debug("FileStore", &file_store);
    out.debug("RefreshToken (loaded)", &loaded);
    std::fs::remove_dir_all(&dir).unwrap();

    // A revoked refresh token: invalid_grant ends the source, without calling the server again.
    let revoked = RefreshTokenSource::new(rt_client.clone(), RefreshToken::new("rt-SECRET-gone"));
    let error = revoked.request_token().await.unwrap_err();
    assert!(error.needs_reauthorization());
    out.error("oauth2::Error (invalid_grant)", &error);
    let calls = server.calls();
    let revoked_cache = TokenCache::new(revoked.clone());
    let error = revoked_cache.token().await.unwrap_err();
    assert_eq!(server.calls(), calls);
    out.error("Error (invalid_grant)", &error);
    out.debug("RefreshTokenSource (dead)", &revoked);

    // --- Authorization code with PKCE --------------------------------------------------------
    let public = TokenEndpoint::builder(server.token_url(), "ac-client")
        .auth(ClientAuth::None)
        .build()
        .unwrap();
    let grant = AuthorizationCode::new(public.clone(), format!("{}/authorize", server.url))
        .scope("openid")
        .scope("offline_access")
        .param("prompt", "consent");
    out.debug("AuthorizationCode", &grant);
    let redirect = LoopbackRedirect::bind().await.unwrap();
    out.debug("LoopbackRedirect", &redirect);
    let request = grant
        .authorization_request(redirect.redirect_uri())
        .unwrap();
    secrets.push(request.pkce().verifier().to_owned());
    out.debug("AuthorizationRequest", &request);
    out.debug("Pkce", request.pkce());
    let query = format!("code={CODE}&state={}", request.state());
    let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
    out.debug("AuthorizationResponse", &response);
    let tokens = grant.exchange(&request, &response).await.unwrap();
    assert!(server.saw(&format!("code_verifier={}", request.pkce().verifier())));
    assert_eq!(tokens.extra().len(), 2);
    out.debug("TokenResponse", &tokens);
    out.debug("ExtraFields", tokens.extra());
    out.debug("Token (into_token)", &tokens.clone().into_token());
    let ac_source = RefreshTokenSource::from_response(public.clone(), tokens).unwrap();
    out.debug("RefreshTokenSource (from a response)", &ac_source);
    let ac_cache = TokenCache::new(ac_source.clone());
    let first = ac_cache.token().await.unwrap();
    assert_eq!(first.access_token().secret(), "at-SECRET-ac");
    let refreshed = ac_cache.refresh().await.unwrap();
    assert!(refreshed
        .access_token()
        .secret()
        .starts_with("at-SECRET-rt-"));
    out.debug("TokenCache (authorization code)", &ac_cache);

    // Redirect errors.
    let forged = format!("code={CODE}&state=not-the-state");
    out.error(
        "oauth2::Error (state)",
        &AuthorizationResponse::from_query(&forged, &request, None).unwrap_err(),
    );
    let denied = format!(
        "error=access_denied&error_description=no&state={}",
        request.state()
    );
    out.error(
        "oauth2::Error (access_denied)",
        &AuthorizationResponse::from_query(&denied, &request, None).unwrap_err(),
    );
    let issuer = format!(
        "code={CODE}&state={}&iss=https://evil.test",
        request.state()
    );
    out.error(
        "oauth2::Error (iss)",
        &AuthorizationResponse::from_query(&issuer, &request, Some("https://good.test"))
            .unwrap_err(),
    );
    out.error(
        "oauth2::Error (PKCE)",
        &Pkce::from_verifier("v-SECRET-too-short").unwrap_err(),
    );
    out.error(
        "oauth2::Error (config)",
        &TokenEndpoint::builder("http://auth.example.com/token", "x")
            .client_secret(CLIENT_SECRET)
            .build()
            .unwrap_err(),
    );
    let error = grant.exchange(&request, &response).await.unwrap_err(); // the code is used up
    out.error("oauth2::Error (used code)", &error);
    let pkce = Pkce::new().unwrap();
    secrets.push(pkce.verifier().to_owned());
    out.debug("Pkce (new)", &pkce);
    drop(redirect);

    // --- The device authorization grant ------------------------------------------------------
    let grant =
        DeviceAuthorization::new(public.clone(), format!("{}/device", server.url)).scope("openid");
    out.debug("DeviceAuthorization", &grant);
    out.debug(
        "DeviceAuthorization (password param)",
        &grant.clone().param("password", "pw-SECRET"),
    );
    let mut shown = None;
    let tokens = grant
        .authorize(|prompt| shown = Some(prompt.clone()))
        .await
        .unwrap();
    let prompt = shown.unwrap();
    out.debug("DevicePrompt", &prompt);
    out.0
        .push(("DevicePrompt (display)".into(), prompt.to_string()));
    assert!(
        format!("{prompt:?}").contains("WDJB-MJHT"),
        "the user code is shown"
    );
    assert!(server.saw("device_code=dc-SECRET-ok"));
    assert_eq!(tokens.access_token().secret(), "at-SECRET-device");
    out.debug("TokenResponse (device)", &tokens);
    let device_source = grant.into_refresh_source(tokens).unwrap();
    out.debug("RefreshTokenSource (device)", &device_source);
    let denied =
        DeviceAuthorization::new(public.clone(), format!("{}/device", server.url)).scope("deny");
    let error = denied.authorize(|_| {}).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::AccessDenied));
    assert!(
        error.to_string().contains("<redacted> was denied"),
        "{error}"
    );
    out.error("oauth2::Error (device access_denied)", &error);
    let prompt = denied.start().await.unwrap();
    out.debug("DevicePrompt (denied)", &prompt);

    // --- Token responses parsed directly -----------------------------------------------------
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let parsed = TokenResponse::parse(
        StatusCode::OK,
        &headers,
        br#"{"access_token":"at-SECRET-p","refresh_token":"rt-SECRET-p","expires_in":"60","id_token":"idt-SECRET-p"}"#,
    )
    .unwrap();
    out.debug("TokenResponse (parsed)", &parsed);
    for (status, body) in [
        (
            400,
            &br#"{"error":"invalid_request","error_description":"bad"}"#[..],
        ),
        (
            200,
            br#"{"access_token":"at-SECRET-q","expires_in":"soon"}"#,
        ),
        (200, br#"{"token_type":"bearer"}"#),
        (200, br#"["at-SECRET-r"]"#),
        (302, br#"at-SECRET-s"#),
        (500, br#"<html>oops</html>"#),
    ] {
        let status = StatusCode::from_u16(status).unwrap();
        let error = TokenResponse::parse(status, &headers, body).unwrap_err();
        out.error(&format!("oauth2::Error (parse {status})"), &error);
    }

    // --- The core types ----------------------------------------------------------------------
    let token = Token::new("at-SECRET-core")
        .with_token_type("Bearer")
        .with_expires_in(Duration::from_secs(60))
        .with_refresh_token(RefreshToken::new("rt-SECRET-core"))
        .with_scope("read write")
        .with_extension(AccessToken::new("at-SECRET-extension"));
    out.debug("Token", &token);
    out.debug("Expiry", &token.expiry().unwrap());
    out.debug("Expiry::At", &Expiry::At(tokio::time::Instant::now()));
    out.debug("AccessToken (new)", &AccessToken::new("at-SECRET-new"));
    out.debug("RefreshToken (new)", &RefreshToken::new("rt-SECRET-new"));
    out.debug("TokenRequest", &TokenRequest::new(Reason::Rejected));
    out.debug("Reason", &Reason::Expiring);
    out.debug("StaticToken", &StaticToken::new("at-SECRET-static"));
    out.debug(
        "StaticToken (from a token)",
        &StaticToken::from_token(token.clone()),
    );
    let captured = String::from("at-SECRET-captured");
    let closure = source_fn(move |_: TokenRequest| {
        let token = Token::new(captured.clone());
        async move { Ok::<_, Infallible>(token) }
    });
    out.debug("SourceFn", &closure);
    let static_cache = TokenCache::new(StaticToken::from_token(token.clone()));
    static_cache.token().await.unwrap();
    out.debug("TokenCache (static)", &static_cache);
    out.debug("Placement::bearer", &Placement::bearer());
    out.debug("Placement::query", &Placement::query());
    out.debug(
        "Placement::authorization_raw",
        &Placement::authorization_raw(),
    );
    out.debug(
        "Placement::header_with_scheme",
        &Placement::header_with_scheme(http::HeaderName::from_static("x-api-key"), "Key").unwrap(),
    );
    out.error(
        "InvalidScheme",
        &Placement::authorization_scheme("bad scheme").unwrap_err(),
    );
    out.error(
        "InvalidOrigin",
        &"at-SECRET-origin".parse::<Origin>().unwrap_err(),
    );
    out.debug("Replay", &Replay::new());
    out.debug("NoReplay", &NoReplay);
    out.debug("ReplayWrapped", &ReplayWrapped::new());

    // What a streaming replay keeps: the head (with credentials of its own) is not shown.
    let body = BoxBody::new(Full::new(Bytes::from_static(b"body-SECRET-upload")));
    let mut request = Request::post("http://127.0.0.1:9/upload")
        .body(body)
        .unwrap();
    let mut sensitive = HeaderValue::from_static("Bearer at-SECRET-manual");
    sensitive.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, sensitive);
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_static("key-SECRET-header"));
    let (prepared, kept) = <ReplayWrapped as ReplayPolicy<BoxBody<Bytes, Infallible>>>::keep(
        &ReplayWrapped::new(),
        request,
    );
    out.debug("ReplayBody", prepared.body());
    out.debug("KeptRequest", &kept.expect("a streaming body is kept"));
    let collected = prepared.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&collected[..], b"body-SECRET-upload");

    let challenges = challenge::parse(r#"Bearer realm="api", error="invalid_token""#).unwrap();
    out.debug("Challenge", &challenges);
    out.error("challenge::ParseError", &challenge::parse("=").unwrap_err());

    // The requests the API received: stamped headers are sensitive, so `Debug` hides them.
    for (i, text) in api.debug.lock().unwrap().iter().enumerate() {
        assert!(text.contains("Sensitive"), "{text}");
        out.0
            .push((format!("request {i} at the API"), text.clone()));
    }
    (out, secrets)
}

// ---------------------------------------------------------------------------------------------
// Workload identity sources: the App Service identity header, the GitHub Actions request token
// and the tokens the services hand out
// ---------------------------------------------------------------------------------------------

const IDENTITY_SECRET: &str = "idh-SECRET-7";
const REQUEST_SECRET: &str = "rqt-SECRET-8";

#[test]
fn workload_sources_keep_their_secrets() {
    let log = Log::default();
    let subscriber = log.subscriber(tracing::Level::TRACE, FmtSpan::FULL);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guard = tracing::subscriber::set_default(subscriber);
    let (rendered, secrets) = runtime.block_on(within(
        Duration::from_secs(30),
        "the workload flow",
        workload_flow(),
    ));
    drop(runtime);
    drop(guard);
    let log = log.text();
    for expected in ["fetching a token", "token fetched", "token fetch failed"] {
        assert!(log.contains(expected), "the log lacks {expected:?}:\n{log}");
    }
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log shows a secret:\n{log}"
        );
        for (label, text) in &rendered.0 {
            assert!(
                !text.contains(secret.as_str()),
                "{label} shows a secret: {text}"
            );
        }
    }
}

/// Each source fetches through a layer and fails once; returns what was rendered, and the
/// secrets: the two configured ones and every token handed out.
async fn workload_flow() -> (Rendered, Vec<String>) {
    use support::metadata::{self, Gcp, Imds};
    use tower_bearer::workload::{AzureManagedIdentity, GcpMetadata, GitHubActionsOidc};
    use tower_bearer::TokenKey;

    let mut out = Rendered::default();
    let mut secrets = vec![IDENTITY_SECRET.to_owned(), REQUEST_SECRET.to_owned()];
    let api = service_fn(|req: Request<Full<Bytes>>| {
        let ok = req.headers().contains_key(AUTHORIZATION);
        let mut response = Response::new(Full::<Bytes>::default());
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let key = TokenKey::default();

    // GCP: a token through the layer, and a refusal for an unknown account.
    let gcp = Gcp::new(Duration::from_secs(3600), Duration::from_secs(300));
    let source = GcpMetadata::builder()
        .transport(gcp.fake.transport())
        .build()
        .unwrap();
    out.debug("GcpMetadata", &source);
    out.debug("GcpMetadataBuilder", &GcpMetadata::builder());
    let token = source.request_token_for(&key).await.unwrap();
    secrets.push(token.access_token().secret().to_owned());
    out.debug("GCP Token", &token);
    let mut layered = tower_bearer::BearerAuth::new(api, source);
    let response = layered.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let nobody = GcpMetadata::builder()
        .account("nobody")
        .transport(gcp.fake.transport())
        .build()
        .unwrap();
    let mut failing = tower_bearer::BearerAuth::new(api, nobody);
    let error = failing
        .ready()
        .await
        .unwrap()
        .call(get())
        .await
        .unwrap_err();
    out.boxed("GCP layer error", &error);

    // Azure IMDS with a retry, and App Service with its header right, then wrong.
    let imds = Imds::new([(429, None)]);
    let source = AzureManagedIdentity::builder()
        .resource("https://vault.azure.net")
        .retry_delay(Duration::from_millis(1))
        .transport(imds.fake.transport())
        .build()
        .unwrap();
    let token = source.request_token_for(&key).await.unwrap();
    secrets.push(token.access_token().secret().to_owned());
    out.debug("IMDS Token", &token);
    let app = metadata::app_service(IDENTITY_SECRET);
    let builder = AzureManagedIdentity::builder()
        .app_service("http://127.0.0.1:9/msi/token", IDENTITY_SECRET)
        .resource("https://vault.azure.net")
        .transport(app.transport());
    out.debug("AzureManagedIdentityBuilder", &builder);
    let source = builder.build().unwrap();
    out.debug("AzureManagedIdentity", &source);
    let token = source.request_token_for(&key).await.unwrap();
    secrets.push(token.access_token().secret().to_owned());
    let mut layered = tower_bearer::BearerAuth::new(api, source);
    let response = layered.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A hostile endpoint echoing the header it got: the error cuts it out.
    let echo = service_fn(|req: Request<Full<Bytes>>| {
        let header = req.headers()["x-identity-header"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut response = Response::new(Full::new(Bytes::from(format!(
            r#"{{"statusCode":400,"message":"bad header {header}"}}"#
        ))));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let echoing = AzureManagedIdentity::builder()
        .app_service("http://127.0.0.1:9/msi/token", IDENTITY_SECRET)
        .resource("https://vault.azure.net")
        .transport(echo)
        .build()
        .unwrap();
    let mut failing = tower_bearer::BearerAuth::new(api, echoing);
    let error = failing
        .ready()
        .await
        .unwrap()
        .call(get())
        .await
        .unwrap_err();
    let error = out.boxed("App Service layer error", &error);
    assert!(
        chain(&error).contains("bad header <redacted>"),
        "{}",
        chain(&error)
    );

    // GitHub: a JWT, as a token and as a client assertion; a wrong request token.
    let github = metadata::github(REQUEST_SECRET, Duration::from_secs(300));
    let builder = GitHubActionsOidc::builder()
        .request_url("http://127.0.0.1:9/idtoken?api-version=2.0")
        .request_token(REQUEST_SECRET)
        .audience("api://AzureADTokenExchange")
        .transport(github.transport());
    out.debug("GitHubActionsOidcBuilder", &builder);
    let source = builder.build().unwrap();
    out.debug("GitHubActionsOidc", &source);
    let token = source.request_token_for(&key).await.unwrap();
    secrets.push(token.access_token().secret().to_owned());
    out.debug("GitHub Token", &token);
    let mut layered = tower_bearer::BearerAuth::new(api, source);
    let response = layered.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let wrong = GitHubActionsOidc::builder()
        .request_url("http://127.0.0.1:9/idtoken?api-version=2.0")
        .request_token("rqt-SECRET-wrong")
        .audience("a")
        .transport(github.transport())
        .build()
        .unwrap();
    secrets.push("rqt-SECRET-wrong".to_owned());
    let error = wrong.request_token_for(&key).await.unwrap_err();
    out.error("GitHub error", &error);
    (out, secrets)
}
