//! The device authorization grant (RFC 8628) against a real authorization server, `oidc-provider`
//! (tests/peers/oidc-server.mjs, its `features.deviceFlow` on, client `device-cli`). The user's
//! part is played by an HTTP client with a cookie jar that does what a person does in a browser:
//! opens the verification URI, types the user code into the form (with its xsrf field),
//! presses Continue (or Abort) on the confirmation page, and goes through the login
//! interaction. The polling schedule itself is tested under the paused clock in
//! `src/oauth2/device/tests.rs`; here the clock is real, so each flow takes one 5 s interval.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{
    ClientAuth, DeviceAuthorization, DevicePrompt, Discovery, Error, ErrorCode, ErrorKind,
    TokenEndpoint, TokenResponse,
};
use tower_bearer::{BearerAuthLayer, TokenCache};

use support::get;
use support::oidc_peer::{http, Http, OidcPeer};

/// Every step of a flow must finish within this (the server's interval is 5 s).
const LIMIT: Duration = Duration::from_secs(30);

/// What the user does on the verification page.
#[derive(Clone, Copy, PartialEq)]
enum User {
    Approves,
    Aborts,
}

/// A browser: a cookie jar (paths ignored: all of them go to the one server) and the pages it
/// gets, redirects followed.
struct Browser {
    http: Http,
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        Self {
            http: http(),
            jar: BTreeMap::new(),
        }
    }

    /// Requests `url` (a form POST if `form` is given), follows redirects with GET, and
    /// returns the last page's status and text.
    async fn open(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> (StatusCode, String) {
        let mut url: http::Uri = url.parse().unwrap();
        let mut form = form.map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        });
        for _ in 0..10 {
            let mut request = match form.take() {
                Some(body) => Request::builder()
                    .method(Method::POST)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(body))),
                None => Request::builder().body(Full::default()),
            }
            .unwrap();
            *request.uri_mut() = url.clone();
            let cookie = self.jar.iter().map(|(k, v)| format!("{k}={v}"));
            let cookie = cookie.collect::<Vec<_>>().join("; ");
            if !cookie.is_empty() {
                request
                    .headers_mut()
                    .insert(COOKIE, cookie.parse().unwrap());
            }
            let response = self.http.request(request).await.unwrap();
            for value in response.headers().get_all(SET_COOKIE) {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                if let Some((k, v)) = pair.split_once('=') {
                    self.jar.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
            let status = response.status();
            if !status.is_redirection() {
                let body = response.into_body().collect().await.unwrap().to_bytes();
                return (status, String::from_utf8_lossy(&body).into_owned());
            }
            let location = response.headers()[LOCATION].to_str().unwrap();
            url = if location.starts_with('/') {
                let origin = format!(
                    "{}://{}",
                    url.scheme_str().unwrap(),
                    url.authority().unwrap()
                );
                format!("{origin}{location}").parse().unwrap()
            } else {
                location.parse().unwrap()
            };
        }
        panic!("too many redirects");
    }
}

/// The hidden `xsrf` field of the verification page's form.
fn xsrf(page: &str) -> String {
    let at = page
        .find(r#"name="xsrf" value=""#)
        .expect("a form with an xsrf field")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

/// The user's part of the flow, as a person does it in a browser; returns the last page.
async fn enter_code(verification_uri: String, user_code: String, user: User) -> String {
    let mut browser = Browser::new();
    let (status, page) = browser.open(&verification_uri, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Enter the code displayed on your device"),
        "{page}"
    );
    let token = xsrf(&page);
    let entered = [("xsrf", token.as_str()), ("user_code", user_code.as_str())];
    let (status, page) = browser.open(&verification_uri, Some(&entered)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Confirm Device"), "{page}");
    assert!(
        page.contains(&user_code),
        "the confirmation shows the code: {page}"
    );
    let button = match user {
        User::Approves => ("confirm", "yes"),
        User::Aborts => ("abort", "yes"),
    };
    let pressed = [entered[0], entered[1], button];
    let (status, page) = browser.open(&verification_uri, Some(&pressed)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

/// The grant for the public client `device-cli`, found through the server's metadata.
async fn device_cli(peer: &OidcPeer) -> DeviceAuthorization {
    let metadata = Discovery::new(&peer.issuer).fetch().await.unwrap();
    assert_eq!(
        metadata.device_authorization_endpoint(),
        Some(peer.url("/device/auth").as_str())
    );
    let endpoint = TokenEndpoint::from_metadata(&metadata, "device-cli")
        .auth(ClientAuth::None)
        .build()
        .unwrap();
    DeviceAuthorization::from_metadata(&metadata, endpoint)
        .unwrap()
        .scope("openid")
        .scope("offline_access")
}

/// Runs the whole grant with `user` doing their part once shown the prompt; returns its
/// result, the prompt and the last page the user saw.
async fn run(
    grant: &DeviceAuthorization,
    user: User,
) -> (Result<TokenResponse, Error>, DevicePrompt, String) {
    // The prompt, and the user's part started when it was shown.
    type Shown = Option<(DevicePrompt, JoinHandle<String>)>;
    let shown: Arc<Mutex<Shown>> = Arc::default();
    let prompt_user = {
        let shown = shown.clone();
        move |prompt: &DevicePrompt| {
            let part = tokio::spawn(enter_code(
                prompt.verification_uri().to_owned(),
                prompt.user_code().to_owned(),
                user,
            ));
            *shown.lock().unwrap() = Some((prompt.clone(), part));
        }
    };
    let result = support::within(LIMIT, "the device grant", grant.authorize(prompt_user)).await;
    let (prompt, part) = shown.lock().unwrap().take().expect("the user was prompted");
    let page = support::within(LIMIT, "the user's part", part)
        .await
        .unwrap();
    (result, prompt, page)
}

/// `/me` (userinfo) through a layer over `cache`: its status and body.
async fn userinfo(peer: &OidcPeer, cache: &TokenCache) -> (StatusCode, String) {
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(http());
    let response = svc.oneshot(get(&peer.url("/me"))).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_user_approves_and_the_tokens_work_at_userinfo_and_are_refreshed() {
    let peer = OidcPeer::start(&json!([]));
    let grant = device_cli(&peer).await;
    let started = Instant::now();
    let (result, prompt, page) = run(&grant, User::Approves).await;
    assert!(page.contains("Sign-in Success"), "{page}");
    let tokens = result.unwrap();
    // The server sends no `interval`: the first poll is RFC 8628's 5 s after the prompt.
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(prompt.interval(), Duration::from_secs(5));
    assert_eq!(prompt.expires_in(), Duration::from_secs(600));
    assert_eq!(prompt.verification_uri(), peer.url("/device"));
    let complete = format!("{}?user_code={}", peer.url("/device"), prompt.user_code());
    assert_eq!(prompt.verification_uri_complete(), Some(complete.as_str()));
    let scope = tokens.scope().unwrap_or_default();
    assert!(scope.split(' ').any(|s| s == "openid"), "{scope}");
    assert!(tokens.refresh_token().is_some(), "offline_access gives one");
    let first = tokens.access_token().clone();

    // Behind the layer, at the server's own bearer-protected endpoint.
    let cache = TokenCache::new(grant.into_refresh_source(tokens).unwrap());
    let (status, body) = userinfo(&peer, &cache).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("test-user"), "{body}");
    assert_eq!(cache.token().await.unwrap().access_token(), &first);

    // A refresh through the RefreshTokenSource: a new access token, which works too.
    let refreshed = cache.refresh().await.unwrap();
    assert_ne!(refreshed.access_token(), &first);
    let (status, body) = userinfo(&peer, &cache).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("test-user"), "{body}");
    assert_eq!(cache.stats().fetches, 2);
}

#[tokio::test]
async fn a_user_who_aborts_on_the_verification_page_ends_the_wait_with_access_denied() {
    let peer = OidcPeer::start(&json!([]));
    let grant = device_cli(&peer).await;
    let (result, _, page) = run(&grant, User::Aborts).await;
    assert!(
        page.contains("The Sign-in request was interrupted"),
        "{page}"
    );
    let error = result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(error.code(), Some(&ErrorCode::AccessDenied));
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!error.is_retryable());
    assert!(
        error
            .to_string()
            .starts_with("token endpoint refused the request (HTTP 400, access_denied)"),
        "{error}"
    );
}

#[tokio::test]
async fn a_device_code_nobody_approves_ends_the_wait_when_it_expires() {
    // `OidcPeer::start_with` takes paths for its environment; a number is a path too.
    let ttl = std::path::Path::new("2");
    let peer = OidcPeer::start_with(&json!([]), &[("DEVICE_CODE_TTL", ttl)]);
    let grant = device_cli(&peer).await;
    let prompt = grant.start().await.unwrap();
    assert_eq!(prompt.expires_in(), Duration::from_secs(2));
    let error = support::within(LIMIT, "the wait", grant.wait(&prompt))
        .await
        .unwrap_err();
    // At the code's expiry, not at the first poll, which would have been due 3 s later.
    let expired = prompt.expires_at().unwrap();
    let late = Instant::now() - expired;
    assert!(
        Instant::now() >= expired && late < Duration::from_secs(3),
        "{late:?}"
    );
    assert_eq!(error.code(), Some(&ErrorCode::ExpiredToken));
    assert_eq!(error.kind(), ErrorKind::Authorization);

    // The server agrees: the code is refused on the verification page now.
    let mut browser = Browser::new();
    let (_, page) = browser.open(prompt.verification_uri(), None).await;
    let entered = [
        ("xsrf", xsrf(&page)),
        ("user_code", prompt.user_code().to_owned()),
    ];
    let entered: Vec<(&str, &str)> = entered.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, page) = browser
        .open(prompt.verification_uri(), Some(&entered))
        .await;
    assert!(page.contains("The code you entered is incorrect"), "{page}");
}

#[tokio::test]
async fn a_confidential_client_authenticates_at_the_device_endpoint() {
    let client = json!({
        "client_id": "device-confidential",
        "client_secret": "dc-secret",
        "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
        "response_types": [],
        "redirect_uris": [],
    });
    let peer = OidcPeer::start(&json!([client]));
    let device_url = peer.url("/device/auth");
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let endpoint = TokenEndpoint::builder(peer.url("/token"), "device-confidential")
            .client_secret("dc-secret")
            .auth(auth)
            .build()
            .unwrap();
        let prompt = DeviceAuthorization::new(endpoint, &device_url)
            .start()
            .await
            .unwrap();
        assert!(!prompt.user_code().is_empty(), "{auth:?}");
    }
    let wrong = TokenEndpoint::builder(peer.url("/token"), "device-confidential")
        .client_secret("not-the-secret")
        .build()
        .unwrap();
    let error = DeviceAuthorization::new(wrong, &device_url)
        .start()
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::InvalidClient));
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(
        error.to_string().starts_with(
            "device authorization endpoint refused the request (HTTP 401, invalid_client)"
        ),
        "{error}"
    );
    assert!(!format!("{error} {error:?}").contains("not-the-secret"));
}
