//! Hostile token endpoints and APIs: what they send back must not control our logs or our
//! errors, must not become a token, and must not make the layer hammer the token endpoint.
//!
//! The token endpoint is a tower service handed to `TokenEndpoint::builder(..).transport(..)`, so each
//! test scripts its answers byte for byte and counts the requests it gets; the API is a
//! `service_fn`. Time is Tokio's paused clock, and every `tracing` event is captured, so that
//! the tests can read the log lines an operator would see.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::error::Error as _;
use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{
    self, ClientAuth, ClientCredentials, RefreshTokenSource, TokenEndpoint,
};
use tower_bearer::{BearerAuthLayer, ErrorKind, Expiry, TokenCache};
use tracing_subscriber::fmt::format::FmtSpan;

use support::{chain, token_error, within, Calls, Log};

const SECRET: &str = "cs-S3CRET/with+reserved=chars&more";

// ---------------------------------------------------------------------------------------------
// A scripted token endpoint, an API, and the log
// ---------------------------------------------------------------------------------------------

/// One answer of the token endpoint.
#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, Some("application/json"), body)
    }
}

/// The token endpoint: answers every request with `answer(request)`, and keeps the requests it
/// received, each as `authorization: <header>` and the form body on the next lines.
#[derive(Clone)]
struct Endpoint {
    seen: Arc<Mutex<Vec<String>>>,
    answer: Arc<dyn Fn(&str) -> Answer + Send + Sync>,
}

impl Endpoint {
    fn new(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            answer: Arc::new(answer),
        }
    }

    fn always(answer: Answer) -> Self {
        Self::new(move |_| answer.clone())
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn client(&self, auth: ClientAuth) -> TokenEndpoint {
        let this = self.clone();
        let transport = service_fn(move |req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let authorization = req
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = req.into_body().collect().await?.to_bytes();
                let request = format!(
                    "authorization: {authorization}\n\n{}",
                    String::from_utf8_lossy(&body)
                );
                let answer = (this.answer)(&request);
                this.seen.lock().unwrap().push(request);
                let mut response = Response::new(Full::new(Bytes::from(answer.body)));
                *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
                if let Some(content_type) = answer.content_type {
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, content_type.parse().unwrap());
                }
                Ok::<_, BoxError>(response)
            }
        });
        TokenEndpoint::builder("https://auth.example.com/token", "hostile-client")
            .client_secret(SECRET)
            .auth(auth)
            .transport(transport)
            .build()
            .unwrap()
    }

    /// A cache over client credentials, with backoff short enough for a test.
    fn cache(&self, auth: ClientAuth) -> TokenCache {
        TokenCache::builder(ClientCredentials::new(self.client(auth)))
            .backoff(Duration::from_millis(10), Duration::from_millis(20))
            .build()
    }
}

/// An API that answers 200 with the `Authorization` header it got, or `status` if set.
fn api(
    status: Option<StatusCode>,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut response = Response::new(auth);
        if let Some(status) = status {
            *response.status_mut() = status;
        }
        ready(Ok(response))
    })
}

fn get() -> Request<Full<Bytes>> {
    support::get("https://api.example.com/")
}

/// Runs `test` on a current-thread runtime with a paused clock (so that every task, the fetches
/// included, runs on this thread under the capturing subscriber), and returns the log.
fn logged<F: std::future::Future<Output = ()>>(test: impl FnOnce(Log) -> F) -> Log {
    let log = Log::default();
    let subscriber = log.subscriber(tracing::Level::DEBUG, FmtSpan::NONE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);
    runtime.block_on(within(
        Duration::from_secs(3600),
        "the test (in virtual time)",
        test(log.clone()),
    ));
    log
}

/// The OAuth 2.0 error behind a failed request.
fn oauth_error(error: BoxError) -> oauth2::Error {
    token_error(error)
        .source_as::<oauth2::Error>()
        .expect("an OAuth 2.0 error")
        .clone()
}

/// Everything a person may see of an error: `Display` of the chain, `Debug`, the accessors.
fn everything_shown(error: &oauth2::Error) -> String {
    format!(
        "{error} | {error:?} | {:?} | {:?} | {:?}",
        error.code().map(|c| c.as_str()),
        error.description(),
        error.uri()
    )
}

fn assert_safe(text: &str) {
    for bad in [
        '\r', '\n', '\u{1b}', '\u{85}', '\u{2028}', '\u{202e}', '\u{200b}',
    ] {
        assert!(!text.contains(bad), "{bad:?} in {text:?}");
    }
}

async fn failing_request(cache: &TokenCache) -> BoxError {
    ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(api(None, Arc::default()))
        .oneshot(get())
        .await
        .expect_err("no token")
}

// ---------------------------------------------------------------------------------------------
// 1-3. What a server sends back does not control our logs or our errors
// ---------------------------------------------------------------------------------------------

const FORGED: &str = "x\r\n2026-11-30T00:00:00.000000Z  INFO tower_bearer: token accepted \u{1b}[31m\u{85}\u{2028}\u{202e}\u{200b}";

#[test]
fn server_text_cannot_forge_log_lines_or_errors() {
    // The same forging text as JSON (escaped), as form data (percent-encoded), and in an error
    // page (raw).
    let json = serde_json::json!({
        "error": format!("invalid_client{FORGED}"),
        "error_description": FORGED,
        "error_uri": format!("https://x/{FORGED}"),
    })
    .to_string();
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("error", &format!("bad{FORGED}"))
        .append_pair("error_description", FORGED)
        .finish();
    let answers = [
        Answer::json(400, json),
        Answer::new(400, Some("application/x-www-form-urlencoded"), form),
        Answer::new(503, Some("text/plain"), FORGED),
    ];
    for answer in answers {
        let endpoint = Endpoint::always(answer);
        let log = logged(|_| async {
            let cache = endpoint.cache(ClientAuth::Basic);
            let error = oauth_error(failing_request(&cache).await);
            let shown = everything_shown(&error);
            assert_safe(&shown);
            // Escaped, not dropped: the operator still sees what was sent.
            assert!(shown.contains("x\\r\\n2026-11-30"), "{shown}");
            assert!(shown.contains("\\u{1b}[31m"), "{shown}");
        });
        let text = log.text();
        let warnings = log.lines_with("token fetch failed");
        assert_eq!(warnings.len(), 1, "{text}");
        assert!(warnings[0].contains("\\r\\n2026-11-30"), "{}", warnings[0]);
        // Every line of the log is one event of ours: none was forged.
        for line in text.lines() {
            assert!(
                !line.starts_with("2026-11-30T00:00:00.000000Z"),
                "a forged line: {line:?}"
            );
            assert_safe(line);
        }
    }
}

#[test]
fn server_text_is_bounded_and_says_it_was_cut() {
    // Under the 1 MiB that is read of a body.
    let huge = "d".repeat(400_000);
    let json = format!(
        r#"{{"error":"{}","error_description":"{huge}","error_uri":"{huge}"}}"#,
        "e".repeat(5000)
    );
    for answer in [
        Answer::json(400, json),
        Answer::new(502, Some("text/html"), format!("<html>{huge}</html>")),
    ] {
        let endpoint = Endpoint::always(answer);
        let log = logged(|_| async {
            let cache = endpoint.cache(ClientAuth::Basic);
            let error = failing_request(&cache).await;
            // The error and its causes, as a log line shows them.
            let chain = chain(&*error);
            assert!(chain.len() < 1_500, "{} bytes: {chain}", chain.len());
            assert!(chain.contains("bytes in all]"), "{chain}");
            let error = oauth_error(error);
            for text in [
                error.description(),
                error.uri(),
                error.code().map(|c| c.as_str()),
            ]
            .into_iter()
            .flatten()
            {
                assert!(text.len() <= 300, "{} bytes", text.len());
            }
        });
        let warning = &log.lines_with("token fetch failed")[0];
        assert!(warning.len() < 1_500, "{} bytes", warning.len());
    }
}

#[test]
fn credentials_echoed_by_the_server_are_redacted() {
    let basic = STANDARD.encode(format!(
        "hostile-client:{}",
        form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
    ));
    let raw_basic = STANDARD.encode(format!("hostile-client:{SECRET}"));
    for auth in [ClientAuth::Post, ClientAuth::Basic, ClientAuth::BasicRaw] {
        // A proxy's error page quoting the request it got, and a server repeating the secret it
        // refused.
        let endpoint = Endpoint::new(move |request| {
            Answer::new(
                400,
                Some("text/plain"),
                format!("bad request:\n{request}\nraw secret {SECRET}"),
            )
        });
        let json_echo = Endpoint::always(Answer::json(
            401,
            serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("client_secret {SECRET} is not {}", "ours"),
            })
            .to_string(),
        ));
        // Echoes in encodings the request did not use: an HTML page with entities, lowercase
        // percent-encoding, a JSON body with `\/` and `\u0026` escapes, a wrapped line.
        let html = SECRET.replace('&', "&amp;");
        let lower: String = form_urlencoded::byte_serialize(SECRET.as_bytes())
            .collect::<String>()
            .to_lowercase()
            .replace("s3cret", "S3CRET");
        let json = SECRET.replace('/', "\\/").replace('&', "\\u0026");
        let (head, tail) = SECRET.split_at(10);
        let encoded = Endpoint::always(Answer::new(
            502,
            Some("text/html"),
            format!(
                "<p>client_secret: {html}</p><p>{lower}</p><pre>{{\"s\":\"{json}\"}}</pre>\
                 <p>{head}\n    {tail}</p>"
            ),
        ));
        for endpoint in [endpoint, json_echo, encoded] {
            let log = logged(|_| async {
                let cache = endpoint.cache(auth);
                let error = oauth_error(failing_request(&cache).await);
                let shown = everything_shown(&error);
                assert!(
                    shown.contains("<redacted>") || shown.contains("<withheld"),
                    "{shown}"
                );
                for secret in [
                    SECRET,
                    &form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>(),
                    &basic,
                    &raw_basic,
                    "S3CRET",
                ] {
                    assert!(!shown.contains(secret), "{auth:?}: {secret} in {shown}");
                }
            });
            assert!(!log.text().contains("S3CRET"), "{}", log.text());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-5. Only a JSON string (or a declared form) becomes a token
// ---------------------------------------------------------------------------------------------

#[test]
fn values_that_are_not_json_strings_never_become_tokens() {
    let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let unreadable = "not a readable JSON value";
    for (token, why) in [
        (nested.as_str(), unreadable),
        ("1e400", unreadable),
        (r#""ab\ud800cd""#, unreadable),
        (r#""\udc00\"\\""#, unreadable),
        ("42", "a JSON number"),
        (r#"{"t":"x"}"#, "a JSON object"),
        ("true", "a JSON boolean"),
    ] {
        let body = format!(r#"{{"access_token":{token},"token_type":"Bearer","expires_in":60}}"#);
        let endpoint = Endpoint::always(Answer::json(200, body));
        logged(|_| async {
            let cache = endpoint.cache(ClientAuth::Basic);
            let error = oauth_error(failing_request(&cache).await);
            assert_eq!(error.kind(), oauth2::ErrorKind::InvalidResponse, "{token}");
            let description = error.description().unwrap();
            assert!(description.contains(why), "{token}: {description}");
            assert!(description.starts_with("access_token is"), "{description}");
        });
    }
}

#[test]
fn a_page_that_mentions_access_token_is_not_a_form() {
    let page = "<html><body><a href=\"/login?x=1&access_token=junk&y=2\">sign in</a></body></html>";
    for content_type in [Some("text/html; charset=utf-8"), Some("text/plain"), None] {
        let endpoint = Endpoint::always(Answer::new(200, content_type, page));
        logged(|_| async {
            let cache = endpoint.cache(ClientAuth::Basic);
            let error = oauth_error(failing_request(&cache).await);
            assert_eq!(error.kind(), oauth2::ErrorKind::InvalidResponse);
            let description = error.description().unwrap();
            let expected = match content_type {
                Some(value) => format!("Content-Type {value}, {} bytes", page.len()),
                None => format!("no Content-Type, {} bytes", page.len()),
            };
            assert!(description.contains(&expected), "{description}");
            assert!(!description.contains("junk"), "{description}");
        });
    }
    // Form data still works where it is declared, or where the body is nothing else, even with
    // the punctuation lax encoders leave unescaped (`:` and `/` in scopes).
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("text/html"),
        None,
    ] {
        let endpoint = Endpoint::always(Answer::new(
            200,
            content_type,
            "access_token=tok-form&token_type=bearer&expires_in=3600&scope=user:email+https://x/y\n",
        ));
        logged(|_| async {
            let token = endpoint.cache(ClientAuth::Basic).token().await.unwrap();
            assert_eq!(token.access_token().secret(), "tok-form");
            assert_eq!(token.scope(), Some("user:email https://x/y"));
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 6-7. Lifetimes and rejections never make us hammer the token endpoint
// ---------------------------------------------------------------------------------------------

#[test]
fn a_zero_lifetime_costs_one_fetch_per_floor_and_one_warning() {
    let endpoint = Endpoint::new(|_| {
        Answer::json(
            200,
            r#"{"access_token":"tok","token_type":"Bearer","expires_in":0}"#,
        )
    });
    for (floor, most) in [(None, 61), (Some(Duration::from_secs(10)), 7)] {
        let log = logged(|_| async {
            let before = endpoint.calls();
            let mut cache =
                TokenCache::builder(ClientCredentials::new(endpoint.client(ClientAuth::Basic)));
            if let Some(floor) = floor {
                cache = cache.min_lifetime(floor);
            }
            let cache = cache.build();
            let svc = ServiceBuilder::new()
                .layer(BearerAuthLayer::from_cache(cache.clone()))
                .service(api(None, Arc::default()));
            // 100 requests a second for a minute: 6,000 requests.
            for _ in 0..60 {
                for _ in 0..100 {
                    let response = svc.clone().oneshot(get()).await.unwrap();
                    assert_eq!(response.body(), "Bearer tok");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // At most one fetch per floor (1 s by default), plus the first.
            let calls = endpoint.calls() - before;
            assert!((1..=most).contains(&calls), "{floor:?}: {calls} fetches");
            assert_eq!(cache.stats().fetches as usize, calls);
        });
        assert_eq!(log.lines_with("under the floor").len(), 1, "{}", log.text());
    }
}

#[test]
fn an_api_that_rejects_every_token_costs_one_fetch_per_interval() {
    let endpoint = Endpoint::new(|_| {
        Answer::json(
            200,
            r#"{"access_token":"tok","token_type":"Bearer","expires_in":3600}"#,
        )
    });
    let api_calls = Arc::new(AtomicUsize::new(0));
    let log = logged(|_| async {
        let cache = endpoint.cache(ClientAuth::Basic);
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_cache(cache.clone()))
            .service(api(Some(StatusCode::UNAUTHORIZED), api_calls.clone()));
        for _ in 0..1_000 {
            let response = svc.clone().oneshot(get()).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "the 401 is returned"
            );
        }
        // The first request: a fetch, a 401, a fetch and a replay, a 401. Then the token is
        // kept: each request is replayed with it once, and its 401 returned.
        assert_eq!(endpoint.calls(), 2);
        assert_eq!(api_calls.load(Ordering::SeqCst), 2_000);
        let stats = cache.stats();
        assert_eq!(
            (stats.rejections, stats.replays),
            (2_000, 1_000),
            "{stats:?}"
        );
        assert_eq!(stats.kept_rejections, 1_999, "{stats:?}");
        // After the interval, one more rejection-driven fetch.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for _ in 0..1_000 {
            svc.clone().oneshot(get()).await.unwrap();
        }
        assert_eq!(endpoint.calls(), 3);
        assert_eq!(cache.stats().replays, 2_000);
    });
    let warnings = log.lines_with("rejected the current token soon after");
    assert_eq!(warnings.len(), 2, "once per episode: {}", log.text());
    assert!(warnings[0].contains("WARN"));
}

// ---------------------------------------------------------------------------------------------
// 8. A token's lifetime counts from its request, also for the first token of a refresh source
// ---------------------------------------------------------------------------------------------

#[test]
fn the_first_token_of_a_refresh_source_is_not_served_dead() {
    let endpoint = Endpoint::new(|body| {
        let token = if body.contains("grant_type=refresh_token") {
            "tok-refreshed"
        } else {
            "tok-first"
        };
        Answer::json(
            200,
            format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":4,"refresh_token":"rt-{}"}}"#,
                body.len()
            ),
        )
    });
    let api_calls = Arc::new(AtomicUsize::new(0));
    logged(|_| async {
        let client = endpoint.client(ClientAuth::Basic);
        // A response this crate received knows when its request was sent.
        let response = ClientCredentials::new(client.clone())
            .request_token()
            .await
            .unwrap();
        assert_eq!(
            response.expires_at().unwrap() - response.requested_at().unwrap(),
            Duration::from_secs(4)
        );
        let deadline = response.expires_at().unwrap();
        assert_eq!(
            response.clone().into_token().expiry(),
            Some(Expiry::At(deadline))
        );

        // First used 5 s after its request: dead. The source refreshes instead of serving it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let source = RefreshTokenSource::from_response(client.clone(), response).unwrap();
        let cache = TokenCache::builder(source)
            .min_lifetime(Duration::ZERO)
            .build();
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_cache(cache.clone()))
            .service(api(None, api_calls.clone()));
        let response = svc.oneshot(get()).await.unwrap();
        assert_eq!(response.body(), "Bearer tok-refreshed");
        assert_eq!(endpoint.calls(), 2);

        // First used 1 s after its request: served, and refreshed before its 4 s are up.
        let response = ClientCredentials::new(client.clone())
            .request_token()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let source = RefreshTokenSource::from_response(client, response).unwrap();
        let cache = TokenCache::builder(source)
            .min_lifetime(Duration::ZERO)
            .build();
        let token = cache.token().await.unwrap();
        assert_eq!(token.access_token().secret(), "tok-first");
        assert_eq!(endpoint.calls(), 3);
        // Its 3 s left make it usable for 2 s (a skew of 1 s), refreshed ahead from 0.125 s to
        // 0.1 s before that (a twentieth of its usable life, widened by the jitter): the first
        // use after 1.9 s starts the refresh.
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert_eq!(
            cache.token().await.unwrap().access_token().secret(),
            "tok-first"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let token = cache.token().await.unwrap();
        assert_eq!(token.access_token().secret(), "tok-refreshed");
        assert_eq!(endpoint.calls(), 4);
    });
}

// ---------------------------------------------------------------------------------------------
// 9, 11. Counters that are true when read, a huge token (10, a panicking source: tests/core.rs)
// ---------------------------------------------------------------------------------------------

#[test]
fn hits_are_true_when_read() {
    logged(|_| async {
        let cache = TokenCache::new(tower_bearer::StaticToken::new("tok"));
        let layer = BearerAuthLayer::from_cache(cache.clone());
        // One long-lived service and its clones, none dropped before the stats are read.
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(api(None, Arc::default()));
        let clones: Vec<_> = (0..3).map(|_| svc.clone()).collect();
        for _ in 0..10 {
            svc.ready().await.unwrap().call(get()).await.unwrap();
        }
        // The first request waited for the fetch; the other nine were hits.
        let stats = cache.stats();
        assert_eq!((stats.waits, stats.hits), (1, 9), "{stats:?}");
        for mut clone in clones {
            clone.ready().await.unwrap().call(get()).await.unwrap();
        }
        assert_eq!(cache.stats().hits, 12);
        drop(svc);
        assert_eq!(cache.stats().hits, 12, "dropping a service loses no hit");
        cache.token().await.unwrap();
        assert_eq!(cache.stats().hits, 13);
        // Many short-lived clones, one after the other: each counts in the slot the one before
        // gave back.
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_cache(cache.clone()))
            .service(api(None, Arc::default()));
        for _ in 0..10_000 {
            svc.clone().oneshot(get()).await.unwrap();
        }
        assert_eq!(cache.stats().hits, 10_013);
        // More clones alive at once than there are slots (64): those without one add their hits
        // in batches of 64 and when they are dropped.
        let mut clones: Vec<_> = (0..500).map(|_| svc.clone()).collect();
        for clone in &mut clones {
            clone.ready().await.unwrap().call(get()).await.unwrap();
        }
        let hits = cache.stats().hits;
        assert!((10_013 + 56..10_513).contains(&hits), "{hits}");
        drop(clones);
        assert_eq!(cache.stats().hits, 10_513);
    });
}

#[test]
fn tokens_over_64_kib_are_refused() {
    for (len, accepted) in [(64 * 1024, true), (64 * 1024 + 1, false), (1 << 20, false)] {
        logged(|_| async {
            let cache = TokenCache::new(tower_bearer::StaticToken::new("t".repeat(len)));
            match cache.token().await {
                Ok(token) => {
                    assert!(accepted);
                    assert_eq!(token.access_token().secret().len(), len);
                }
                Err(error) => {
                    assert!(!accepted, "{error}");
                    assert_eq!(error.kind(), ErrorKind::TokenTooLarge);
                    let cause = error.source().unwrap().to_string();
                    assert_eq!(
                        cause,
                        format!(
                            "the access token is {len} bytes long, over the limit of 65536 bytes"
                        )
                    );
                    assert_eq!(tower_bearer::cache::MAX_TOKEN_BYTES, 65536);
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent rejections of one token, and a refresh that panics
// ---------------------------------------------------------------------------------------------

/// Many requests in flight with one token, all answered 401 together (the token was revoked):
/// one of them drops it, and every other one replays with its replacement, none is returned
/// with its 401 and none counts as a rejection to keep. On two threads, so that rejections
/// really race.
#[test]
fn concurrent_rejections_of_one_token_all_replay_with_its_replacement() {
    const IN_FLIGHT: usize = 200;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fetches = Calls::default();
        let cache = TokenCache::new(fetches.lasting(Duration::ZERO, Duration::from_secs(3600)));
        cache.token().await.unwrap();
        // Requests with tok-1 wait until all of them are in flight, then are refused together.
        let barrier = Arc::new(tokio::sync::Barrier::new(IN_FLIGHT));
        let api = service_fn(move |req: Request<Full<Bytes>>| {
            let barrier = barrier.clone();
            async move {
                let auth = req.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
                let mut response = Response::new(auth.clone());
                if auth == "Bearer tok-1" {
                    barrier.wait().await;
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Infallible>(response)
            }
        });
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::from_cache(cache.clone()))
            .service(api);
        let requests: Vec<_> = (0..IN_FLIGHT)
            .map(|_| tokio::spawn(svc.clone().oneshot(get())))
            .collect();
        for request in requests {
            let response = tokio::time::timeout(Duration::from_secs(30), request)
                .await
                .expect("answered")
                .unwrap()
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.body(), "Bearer tok-2");
        }
        assert_eq!(fetches.count(), 2);
        let stats = cache.stats();
        assert_eq!(stats.rejections, IN_FLIGHT as u64, "{stats:?}");
        assert_eq!(stats.replays, IN_FLIGHT as u64, "{stats:?}");
        assert_eq!(stats.kept_rejections, 0, "{stats:?}");
    });
}

/// A refresh that panics (here the store that saves a rotated refresh token) is reported as a
/// panic, not as an unreachable token endpoint.
#[test]
fn a_refresh_that_panics_is_reported_as_a_panic() {
    struct PanickingStore;

    impl oauth2::RefreshTokenStore for PanickingStore {
        fn save(&self, _: &tower_bearer::RefreshToken) -> Result<(), BoxError> {
            panic!("bug in the store");
        }
    }

    let endpoint = Endpoint::always(Answer::json(
        200,
        r#"{"access_token":"tok","token_type":"Bearer","expires_in":60,"refresh_token":"rt-2"}"#,
    ));
    logged(|_| async {
        let source = RefreshTokenSource::new(
            endpoint.client(ClientAuth::Basic),
            tower_bearer::RefreshToken::new("rt-1"),
        )
        .store(PanickingStore);
        let cache = TokenCache::new(source);
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Panicked, "{error:?}");
        assert_eq!(error.to_string(), "token source panicked");
    });
}
