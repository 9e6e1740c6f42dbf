//! The device authorization grant against a scripted server, under Tokio's paused clock: every
//! request is recorded with the instant it was sent, so the polling schedule is exact.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::service_fn;

use super::*;
use crate::oauth2::{ClientAuth, ErrorKind};
use crate::BoxError;

const DEVICE_URL: &str = "https://as.example/device_authorization";
const TOKEN_URL: &str = "https://as.example/token";
const DEVICE_CODE: &str = "dc-SECRET-GmRhmhcxhwAzkoEqiMEg";

/// A device authorization response with `extra` fields added (`"interval":...`, ...).
fn device(extra: &str) -> Reply {
    let body = format!(
        r#"{{"device_code":"{DEVICE_CODE}","user_code":"WDJB-MJHT",
            "verification_uri":"https://as.example/device","expires_in":1800{extra}}}"#
    );
    Reply::Json(200, body)
}

fn error(code: &str) -> Reply {
    Reply::Json(400, format!(r#"{{"error":"{code}"}}"#))
}

fn pending() -> Reply {
    error("authorization_pending")
}

fn tokens() -> Reply {
    Reply::Json(
        200,
        r#"{"access_token":"at-SECRET","token_type":"Bearer","expires_in":3600,
            "refresh_token":"rt-SECRET"}"#
            .into(),
    )
}

enum Reply {
    Json(u16, String),
    /// A status with `Retry-After` in seconds and no body.
    RetryAfter(u16, u64),
    /// The connection fails.
    Fail,
    /// No answer at all: the endpoint's timeout (2 s here) ends the request.
    Hang,
}

/// One request the server received.
#[derive(Debug)]
struct Seen {
    at: Duration,
    path: String,
    authorization: Option<String>,
    form: String,
}

/// A server answering each request with the next reply of its script; a request past the end of
/// the script fails the test.
#[derive(Clone)]
struct Script {
    start: Instant,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
        Self {
            start: Instant::now(),
            replies: Arc::new(Mutex::new(replies.into_iter().collect())),
            seen: Arc::default(),
        }
    }

    fn endpoint(&self, auth: ClientAuth) -> TokenEndpoint {
        let this = self.clone();
        let transport = service_fn(move |req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let path = req.uri().path().to_owned();
                let authorization = req
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = req.into_body().collect().await?.to_bytes();
                this.seen.lock().unwrap().push(Seen {
                    at: this.start.elapsed(),
                    path: path.clone(),
                    authorization,
                    form: String::from_utf8(body.to_vec()).unwrap(),
                });
                let reply = this.replies.lock().unwrap().pop_front();
                let (status, body, retry_after) = match reply {
                    Some(Reply::Json(status, body)) => (status, body, None),
                    Some(Reply::RetryAfter(status, secs)) => (status, String::new(), Some(secs)),
                    Some(Reply::Fail) => return Err(BoxError::from("connection reset")),
                    Some(Reply::Hang) => std::future::pending().await,
                    None => panic!("unexpected request to {path}"),
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
                if let Some(secs) = retry_after {
                    headers.insert(RETRY_AFTER, secs.into());
                }
                Ok::<_, BoxError>(response)
            }
        });
        let mut builder = TokenEndpoint::builder(TOKEN_URL, "cli")
            .auth(auth)
            .timeout(Duration::from_secs(2))
            .transport(transport);
        if auth != ClientAuth::None {
            builder = builder.client_secret("cs-SECRET");
        }
        builder.build().unwrap()
    }

    fn grant(&self) -> DeviceAuthorization {
        DeviceAuthorization::new(self.endpoint(ClientAuth::None), DEVICE_URL)
    }

    /// When each poll of the token endpoint was sent, from the start.
    fn polls(&self) -> Vec<u64> {
        let seen = self.seen.lock().unwrap();
        let polls = seen.iter().filter(|s| s.path == "/token");
        polls.map(|s| s.at.as_secs()).collect()
    }

    fn left(&self) -> usize {
        self.replies.lock().unwrap().len()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn pending_slow_down_pending_success_at_the_exact_instants() {
    let script = Script::new([
        device(""),
        pending(),
        error("slow_down"),
        pending(),
        tokens(),
    ]);
    let grant = script
        .grant()
        .scope("openid")
        .scope("offline_access")
        .resource("https://api.example");
    let prompt = grant.start().await.unwrap();
    assert_eq!(prompt.interval(), secs(5), "RFC 8628's default");
    assert_eq!(prompt.expires_in(), secs(1800));
    assert_eq!(prompt.expires_at(), Some(script.start + secs(1800)));
    let tokens = grant.wait(&prompt).await.unwrap();
    assert_eq!(tokens.access_token().secret(), "at-SECRET");
    // 5 s apart, then 10 s apart from the `slow_down` on.
    assert_eq!(script.polls(), [5, 10, 20, 30]);
    assert_eq!(script.start.elapsed(), secs(30));

    let seen = script.seen.lock().unwrap();
    assert_eq!(seen[0].path, "/device_authorization");
    assert_eq!(
        seen[0].form,
        "scope=openid+offline_access&resource=https%3A%2F%2Fapi.example&client_id=cli"
    );
    assert_eq!(
        seen[1].form,
        format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code\
             &device_code={DEVICE_CODE}&client_id=cli"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn access_denied_ends_the_wait() {
    let script = Script::new([device(""), pending(), error("access_denied")]);
    let grant = script.grant();
    let error = grant.authorize(|_| {}).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::AccessDenied));
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert!(!error.is_retryable());
    assert_eq!(script.polls(), [5, 10]);
    // Nothing polls after the end (a request past the script would panic in the transport).
    tokio::time::sleep(secs(600)).await;
    assert_eq!(script.polls(), [5, 10]);
}

#[tokio::test(start_paused = true)]
async fn expired_token_from_the_server_ends_the_wait() {
    let script = Script::new([device(""), pending(), pending(), error("expired_token")]);
    let error = script.grant().authorize(|_| {}).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::ExpiredToken));
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(script.polls(), [5, 10, 15]);
    assert_eq!(script.left(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_wait_ends_when_the_device_code_expires_with_no_poll_after() {
    let script = Script::new([
        Reply::Json(
            200,
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://as.example/d",
                "expires_in":12}"#
                .into(),
        ),
        pending(),
        pending(),
    ]);
    let grant = script.grant();
    let prompt = grant.start().await.unwrap();
    let error = grant.wait(&prompt).await.unwrap_err();
    // Polls at 5 and 10; one at 15 would be past the code's 12 s: the wait ends at 12 s.
    assert_eq!(script.polls(), [5, 10]);
    assert_eq!(script.start.elapsed(), secs(12));
    assert_eq!(error.kind(), ErrorKind::Authorization);
    assert_eq!(error.code(), Some(&ErrorCode::ExpiredToken));
    assert!(!error.is_retryable());
    let text = error.to_string();
    assert!(
        text.starts_with("authorization was not given in time (expired_token): the device code expired 12s after"),
        "{text}"
    );
    assert!(std::error::Error::source(&error).is_none(), "{error:?}");

    // A prompt that expired already: no poll at all.
    let error = grant.wait(&prompt).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::ExpiredToken));
    assert_eq!(script.polls(), [5, 10]);
}

#[tokio::test(start_paused = true)]
async fn failed_polls_back_off_exponentially_within_the_deadline() {
    let script = Script::new([
        device(""),
        Reply::Fail,                 // at 5: wait 10
        Reply::Hang,                 // at 15, times out at 17: wait 20
        Reply::Json(503, "".into()), // at 37: wait 40
        Reply::Json(500, r#"{"error":"temporarily_unavailable"}"#.into()), // at 77: capped, 60
        pending(),                   // at 137: the interval again
        tokens(),                    // at 142
    ]);
    let tokens = script.grant().authorize(|_| {}).await.unwrap();
    assert_eq!(tokens.access_token().secret(), "at-SECRET");
    assert_eq!(script.polls(), [5, 15, 37, 77, 137, 142]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_backoff_is_honoured() {
    let script = Script::new([device(""), Reply::RetryAfter(429, 45), tokens()]);
    script.grant().authorize(|_| {}).await.unwrap();
    assert_eq!(script.polls(), [5, 50]);
}

#[tokio::test(start_paused = true)]
async fn failures_do_not_outlive_the_device_code() {
    let script = Script::new([
        Reply::Json(
            200,
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://as.example/d",
                "expires_in":30}"#
                .into(),
        ),
        Reply::Fail, // at 5: wait 10
        Reply::Fail, // at 15: wait 20, past the deadline
    ]);
    let error = script.grant().authorize(|_| {}).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::ExpiredToken));
    assert_eq!(script.polls(), [5, 15]);
    assert_eq!(script.start.elapsed(), secs(30));
    // The user may never have had a chance: the failing polls are the cause, not the user.
    let text = error.to_string();
    assert!(
        text.contains("while polling the token endpoint failed"),
        "{text}"
    );
    let cause = std::error::Error::source(&error).expect("the last failure");
    let cause = cause.downcast_ref::<Error>().expect("the poll's error");
    assert!(cause.is_retryable(), "{cause}");
}

#[tokio::test(start_paused = true)]
async fn interval_and_expires_in_as_strings_and_a_floor_for_the_interval() {
    let script = Script::new([device(r#","interval":"7""#), pending(), tokens()]);
    let grant = script.grant();
    let prompt = grant.start().await.unwrap();
    assert_eq!(prompt.interval(), secs(7));
    grant.wait(&prompt).await.unwrap();
    assert_eq!(script.polls(), [7, 14]);

    let script = Script::new([
        Reply::Json(
            200,
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://as.example/d",
                "expires_in":"600","interval":0}"#
                .into(),
        ),
        pending(),
        tokens(),
    ]);
    let grant = script.grant();
    let prompt = grant.start().await.unwrap();
    assert_eq!(prompt.expires_in(), secs(600));
    assert_eq!(
        prompt.interval(),
        secs(1),
        "no tight loop on an interval of 0"
    );
    grant.wait(&prompt).await.unwrap();
    assert_eq!(script.polls(), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn the_callback_gets_the_prompt_before_the_first_poll() {
    let script = Script::new([
        Reply::Json(
            200,
            r#"{"device_code":"dc-x","user_code":"WDJB-MJHT","verification_url":"https://www.google.com/device",
                "verification_uri_complete":"https://as.example/d?user_code=WDJB-MJHT",
                "expires_in":1800,"interval":5}"#
                .into(),
        ),
        tokens(),
    ]);
    let shown = Arc::new(Mutex::new(None));
    let seen = shown.clone();
    let polls_then = script.clone();
    script
        .grant()
        .authorize(move |prompt| {
            *seen.lock().unwrap() = Some((prompt.clone(), polls_then.polls().len()));
        })
        .await
        .unwrap();
    let (prompt, polls) = shown.lock().unwrap().take().unwrap();
    assert_eq!(polls, 0);
    assert_eq!(prompt.user_code(), "WDJB-MJHT");
    // Google's spelling.
    assert_eq!(prompt.verification_uri(), "https://www.google.com/device");
    assert_eq!(
        prompt.verification_uri_complete(),
        Some("https://as.example/d?user_code=WDJB-MJHT")
    );
    assert_eq!(
        prompt.to_string(),
        "Open https://www.google.com/device and enter the code WDJB-MJHT"
    );
    // The user code is shown, the device code never.
    let debug = format!("{prompt:?} {prompt:#?}");
    assert!(debug.contains("WDJB-MJHT"), "{debug}");
    assert!(debug.contains("DeviceCode(<redacted>)"), "{debug}");
    assert!(!debug.contains("dc-x"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn unusable_device_authorization_responses_are_typed_errors() {
    let ok = r#""device_code":"dc","user_code":"U","verification_uri":"https://as.example/d""#;
    for (body, what) in [
        (format!("{{{ok}}}"), "no expires_in"),
        (format!(r#"{{{ok},"expires_in":"soon"}}"#), "expires_in is not a number: soon"),
        (format!(r#"{{{ok},"expires_in":60,"interval":[]}}"#), "interval is not a number"),
        (
            r#"{"user_code":"U","verification_uri":"https://as.example/d","expires_in":60}"#.into(),
            "no device_code",
        ),
        (
            r#"{"device_code":"","user_code":"U","verification_uri":"https://a/d","expires_in":60}"#
                .into(),
            "device_code is empty",
        ),
        (
            r#"{"device_code":"dc","user_code":7,"verification_uri":"https://a/d","expires_in":60}"#
                .into(),
            "user_code is not a string",
        ),
        (
            r#"{"device_code":"dc","user_code":"U\u001b[2J","verification_uri":"https://a/d","expires_in":60}"#
                .into(),
            "user_code is not a short printable text",
        ),
        (
            r#"{"device_code":"dc","user_code":"U","expires_in":60}"#.into(),
            "no verification_uri",
        ),
        (
            r#"{"device_code":"dc","user_code":"U","verification_uri":"javascript:alert(1)","expires_in":60}"#
                .into(),
            "verification_uri is not an https URL",
        ),
        // A right-to-left override would show the rest of the line reversed.
        (
            r#"{"device_code":"dc","user_code":"AB\u202eCD","verification_uri":"https://a/d","expires_in":60}"#
                .into(),
            "user_code is not a short printable text",
        ),
        (
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://a/\u202emoc.elgoog","expires_in":60}"#
                .into(),
            "verification_uri is not an https URL",
        ),
        // A trusted-looking name before the real host (RFC 8628 §5.4).
        (
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://accounts.example@evil.example/d","expires_in":60}"#
                .into(),
            "verification_uri is not an https URL",
        ),
        // Plain http to another host, as for the endpoints.
        (
            r#"{"device_code":"dc","user_code":"U","verification_uri":"http://as.example/d","expires_in":60}"#
                .into(),
            "verification_uri is not an https URL",
        ),
        ("[]".into(), "the body is JSON but not an object"),
    ] {
        let script = Script::new([Reply::Json(200, body)]);
        let error = script.grant().start().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{what}");
        let text = error.to_string();
        assert!(
            text.starts_with("device authorization endpoint answered something unusable"),
            "{text}"
        );
        assert!(text.contains(what), "{what}: {text}");
    }

    // An unusable `verification_uri_complete` is dropped: the user can still type the code.
    for complete in [r"\u0007bell", "https://as.example@evil.example/d?c=1"] {
        let field = format!(r#","verification_uri_complete":"{complete}""#);
        let script = Script::new([device(&field)]);
        let prompt = script.grant().start().await.unwrap();
        assert_eq!(prompt.verification_uri_complete(), None, "{complete}");
    }
    // Loopback may be plain http, as the endpoints may be.
    let field = r#","verification_uri_complete":"http://127.0.0.1:8080/d?c=1""#;
    let script = Script::new([device(field)]);
    let prompt = script.grant().start().await.unwrap();
    assert_eq!(
        prompt.verification_uri_complete(),
        Some("http://127.0.0.1:8080/d?c=1")
    );
}

#[tokio::test(start_paused = true)]
async fn the_client_authenticates_at_the_device_endpoint_as_at_the_token_endpoint() {
    let script = Script::new([
        device(""),
        tokens(),
        Reply::Json(401, r#"{"error":"invalid_client"}"#.into()),
    ]);
    let endpoint = script.endpoint(ClientAuth::Basic);
    let grant = DeviceAuthorization::new(endpoint.clone(), DEVICE_URL);
    grant.authorize(|_| {}).await.unwrap();
    {
        let seen = script.seen.lock().unwrap();
        let basic = seen[0].authorization.clone();
        assert!(basic.as_deref().is_some_and(|b| b.starts_with("Basic ")));
        assert_eq!(
            seen[1].authorization, basic,
            "the same client authentication"
        );
        // Never an empty form: `client_id` goes along with Basic.
        assert_eq!(seen[0].form, "client_id=cli");
    }

    // A refusal there is worded as the device authorization endpoint's.
    let error = grant.start().await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::InvalidClient));
    assert_eq!(
        error.to_string(),
        "device authorization endpoint refused the request (HTTP 401, invalid_client)"
    );
}

#[tokio::test(start_paused = true)]
async fn the_device_code_is_redacted_from_errors() {
    let echo = format!(
        r#"{{"error":"invalid_grant","error_description":"unknown device code {DEVICE_CODE}"}}"#
    );
    let script = Script::new([device(""), Reply::Json(400, echo)]);
    let error = script.grant().authorize(|_| {}).await.unwrap_err();
    assert_eq!(error.code(), Some(&ErrorCode::InvalidGrant));
    let text = format!("{error} {error:?}");
    assert!(text.contains("unknown device code <redacted>"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn the_device_endpoint_must_be_https_unless_loopback() {
    let script = Script::new([]);
    let endpoint = script.endpoint(ClientAuth::None);
    let insecure = DeviceAuthorization::new(endpoint.clone(), "http://as.example/device");
    let error = insecure.start().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("must use https"), "{error}");
    assert!(script.seen.lock().unwrap().is_empty(), "nothing was sent");

    let script = Script::new([device("")]);
    let endpoint = script.endpoint(ClientAuth::None);
    for url in ["http://127.0.0.1:8080/device", "http://localhost/device"] {
        let script = Script::new([device("")]);
        let grant = DeviceAuthorization::new(script.endpoint(ClientAuth::None), url);
        grant.start().await.unwrap();
    }
    DeviceAuthorization::new(endpoint, "http://as.example/device")
        .allow_insecure_http()
        .start()
        .await
        .unwrap();
}

#[test]
fn from_metadata_takes_the_device_endpoint_and_its_mtls_alias() {
    let doc = br#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token",
        "device_authorization_endpoint":"https://as.example/device",
        "mtls_endpoint_aliases":{"device_authorization_endpoint":"https://mtls.as.example/device"}}"#;
    let metadata = crate::oauth2::discovery::parse(doc, "https://as.example", false).unwrap();
    assert_eq!(
        metadata.device_authorization_endpoint(),
        Some("https://as.example/device")
    );
    let script = Script::new([]);
    let public = DeviceAuthorization::from_metadata(&metadata, script.endpoint(ClientAuth::None));
    assert_eq!(
        &*public.unwrap().device_authorization_endpoint,
        "https://as.example/device"
    );
    let endpoint = TokenEndpoint::builder(TOKEN_URL, "cli")
        .auth(ClientAuth::TlsClientAuth)
        .transport(service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
        }))
        .build()
        .unwrap();
    let mtls = DeviceAuthorization::from_metadata(&metadata, endpoint).unwrap();
    assert_eq!(
        &*mtls.device_authorization_endpoint,
        "https://mtls.as.example/device"
    );

    let doc = br#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token"}"#;
    let metadata = crate::oauth2::discovery::parse(doc, "https://as.example", false).unwrap();
    let error = DeviceAuthorization::from_metadata(&metadata, script.endpoint(ClientAuth::None))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Metadata);
    assert!(
        error.to_string().contains("device_authorization_endpoint"),
        "{error}"
    );
}
