//! The token exchange against a scripted token endpoint (a transport that records each form and
//! answers what the test says), on Tokio's paused clock.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::service_fn;

use super::*;
use crate::oauth2::{ErrorCode, ErrorKind};
use crate::{source_fn, StaticToken, TokenCache};

type Form = Vec<(String, String)>;

/// The forms the scripted endpoint received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Form>>>);

impl Seen {
    fn forms(&self) -> Vec<Form> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The values of `name` in the `n`th form.
    fn values(&self, n: usize, name: &str) -> Vec<String> {
        self.forms()[n]
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A token endpoint whose answer to each form is `answer(form)`: a status and a JSON body.
fn scripted(
    answer: impl Fn(&Form) -> (u16, String) + Send + Sync + 'static,
) -> (TokenEndpoint, Seen) {
    let seen = Seen::default();
    let answer = Arc::new(answer);
    let transport = {
        let seen = seen.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let seen = seen.clone();
            let answer = answer.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                let form: Form = form_urlencoded::parse(&body).into_owned().collect();
                let (status, body) = answer(&form);
                seen.0.lock().unwrap().push(form);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                Ok::<_, crate::BoxError>(response)
            }
        })
    };
    let endpoint = TokenEndpoint::builder("https://sts.example.com/token", "exchanger")
        .client_secret("client-s3cret")
        .transport(transport)
        .build()
        .unwrap();
    (endpoint, seen)
}

/// An endpoint that issues `issued` access tokens (`xt-1`, `xt-2`, ...) living an hour.
fn issuing(issued: &'static str) -> (TokenEndpoint, Seen) {
    let n = Arc::new(AtomicUsize::new(0));
    scripted(move |_| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        (
            200,
            format!(
                r#"{{"access_token":"xt-{n}","token_type":"Bearer","expires_in":3600,"issued_token_type":"{issued}"}}"#
            ),
        )
    })
}

fn pairs(pairs: &[(&str, &str)]) -> Form {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The OAuth 2.0 error inside a source's failure.
fn oauth_error(error: SourceError) -> (Error, RetryHint) {
    let retry = error.retry();
    let error = *error.into_inner().downcast::<Error>().unwrap();
    (error, retry)
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[tokio::test(start_paused = true)]
async fn the_form_carries_every_parameter_in_order() {
    let (endpoint, seen) = issuing(TokenExchange::JWT);
    let mut exchange = TokenExchange::new(endpoint, StaticToken::new("subject-jwt"))
        .subject_token_type(TokenExchange::JWT)
        .actor(StaticToken::new("actor-at"), TokenExchange::ACCESS_TOKEN)
        .requested_token_type(TokenExchange::JWT)
        .audience("billing")
        .audience("ledger")
        .resource("https://billing.example.com/")
        .resource("https://ledger.example.com/")
        .scope("invoices:read")
        .scope("invoices:write")
        .param("vendor_hint", "x");
    let token = exchange
        .call(TokenRequest::new(Reason::Initial))
        .await
        .unwrap();
    assert_eq!(token.access_token().secret(), "xt-1");
    assert_eq!(
        seen.forms(),
        vec![pairs(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ),
            ("subject_token", "subject-jwt"),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("actor_token", "actor-at"),
            (
                "actor_token_type",
                "urn:ietf:params:oauth:token-type:access_token"
            ),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:jwt"
            ),
            ("scope", "invoices:read invoices:write"),
            ("audience", "billing"),
            ("audience", "ledger"),
            ("resource", "https://billing.example.com/"),
            ("resource", "https://ledger.example.com/"),
            ("vendor_hint", "x"),
        ])]
    );
}

#[tokio::test(start_paused = true)]
async fn by_default_the_subject_is_an_access_token_and_nothing_else_is_sent() {
    let (endpoint, seen) = issuing(TokenExchange::ACCESS_TOKEN);
    let exchange = TokenExchange::from_subject_token(endpoint, "subject-at");
    exchange.request_token().await.unwrap();
    assert_eq!(
        seen.forms(),
        vec![pairs(&[
            ("grant_type", TokenExchange::GRANT_TYPE),
            ("subject_token", "subject-at"),
            ("subject_token_type", TokenExchange::ACCESS_TOKEN),
        ])]
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_key_replaces_audiences_resources_and_scopes() {
    let (endpoint, seen) = issuing(TokenExchange::ACCESS_TOKEN);
    let exchange = TokenExchange::from_subject_token(endpoint, "subject-at")
        .audience("configured")
        .resource("https://configured.example.com/")
        .scope("configured");
    let key = TokenKey::builder()
        .audience("from-key")
        .scope("key:scope")
        .build();
    exchange.request_token_for(&key).await.unwrap();
    assert_eq!(seen.values(0, "audience"), ["from-key"]);
    assert_eq!(seen.values(0, "scope"), ["key:scope"]);
    assert_eq!(
        seen.values(0, "resource"),
        ["https://configured.example.com/"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_without_issued_token_type_is_refused() {
    let (endpoint, _) = scripted(|_| {
        (
            200,
            r#"{"access_token":"xt","token_type":"Bearer","expires_in":60}"#.into(),
        )
    });
    let mut exchange = TokenExchange::from_subject_token(endpoint, "subject-at");
    let (error, retry) = oauth_error(
        exchange
            .call(TokenRequest::new(Reason::Initial))
            .await
            .unwrap_err(),
    );
    assert_eq!(error.kind(), ErrorKind::InvalidResponse);
    assert!(
        error.to_string().contains("no issued_token_type"),
        "{error}"
    );
    assert!(!error.to_string().contains("xt"), "{error}");
    assert_eq!(retry, RetryHint::NotSoon);

    // Not a string is no better.
    let (endpoint, _) =
        scripted(|_| (200, r#"{"access_token":"xt","issued_token_type":7}"#.into()));
    let error = TokenExchange::from_subject_token(endpoint, "s")
        .request_token()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse);
}

#[tokio::test(start_paused = true)]
async fn an_issued_type_other_than_the_requested_one_is_refused_naming_both() {
    let (endpoint, _) = issuing(TokenExchange::ACCESS_TOKEN);
    let exchange = TokenExchange::from_subject_token(endpoint, "subject-at")
        .requested_token_type(TokenExchange::ID_TOKEN);
    let error = exchange.request_token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidResponse);
    let text = error.to_string();
    assert!(text.contains(TokenExchange::ID_TOKEN), "{text}");
    assert!(text.contains(TokenExchange::ACCESS_TOKEN), "{text}");

    // Without a requested type, any issued type is taken.
    let (endpoint, _) = issuing(TokenExchange::JWT);
    let response = TokenExchange::from_subject_token(endpoint, "subject-at")
        .request_token()
        .await
        .unwrap();
    assert_eq!(
        response.extra().get("issued_token_type"),
        Some(&Value::String(TokenExchange::JWT.into()))
    );
}

/// Runs `test` on a current-thread runtime with a paused clock, and returns what was logged.
fn logged<F: Future<Output = ()>>(test: F) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);
    runtime.block_on(test);
    let log = buffer.0.lock().unwrap().clone();
    String::from_utf8(log).unwrap()
}

#[test]
fn a_token_that_is_not_an_access_token_is_served_without_a_warning() {
    let log = logged(async {
        let (endpoint, _) = scripted(|_| {
            (
                200,
                format!(
                    r#"{{"access_token":"id.token.jwt","token_type":"N_A","issued_token_type":"{}"}}"#,
                    TokenExchange::ID_TOKEN
                ),
            )
        });
        let exchange = TokenExchange::from_subject_token(endpoint, "subject-at")
            .requested_token_type(TokenExchange::ID_TOKEN);
        let token = TokenCache::new(exchange).token().await.unwrap();
        assert_eq!(token.token_type(), Some(TokenExchange::NOT_APPLICABLE));
        assert_eq!(token.access_token().secret(), "id.token.jwt");
    });
    assert!(!log.contains("not a bearer token"), "{log}");

    // The warning this test looks for is still given for a type nobody knows.
    let log = logged(async {
        let (endpoint, _) = scripted(|_| {
            (
                200,
                r#"{"access_token":"mac","token_type":"MAC","issued_token_type":"x"}"#.into(),
            )
        });
        let exchange = TokenExchange::from_subject_token(endpoint, "subject-at");
        TokenCache::new(exchange).token().await.unwrap();
    });
    assert!(log.contains("not a bearer token"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_subject_source_is_named_and_nothing_is_sent() {
    let (endpoint, seen) = issuing(TokenExchange::ACCESS_TOKEN);
    let subject = source_fn(|_: TokenRequest| async {
        Err::<Token, _>(io::Error::other(
            "/var/run/secrets/tokens/sts: no such file",
        ))
    });
    let mut exchange = TokenExchange::new(endpoint.clone(), subject);
    let (error, retry) = oauth_error(
        exchange
            .call(TokenRequest::new(Reason::Initial))
            .await
            .unwrap_err(),
    );
    assert_eq!(error.kind(), ErrorKind::SubjectToken);
    assert_eq!(
        chain(&error),
        "token exchange could not get its input token: the subject token source failed: \
         /var/run/secrets/tokens/sts: no such file"
    );
    // It may come back: backed off as configured.
    assert!(error.is_retryable());
    assert_eq!(retry, RetryHint::Backoff);
    assert_eq!(seen.count(), 0);

    // What the subject source says about trying again is kept.
    let subject = source_fn(|_: TokenRequest| async {
        Err::<Token, _>(SourceError::new("invalid_client").not_soon())
    });
    let mut exchange = TokenExchange::new(endpoint.clone(), subject);
    let (error, retry) = oauth_error(
        exchange
            .call(TokenRequest::new(Reason::Initial))
            .await
            .unwrap_err(),
    );
    assert!(!error.is_retryable());
    assert_eq!(retry, RetryHint::NotSoon);
    assert_eq!(
        std::error::Error::source(&error).unwrap().to_string(),
        "invalid_client",
        "the wrapper is gone"
    );

    // The actor's source, named as such; and an empty token is no token.
    let actor = source_fn(|_: TokenRequest| async {
        Err::<Token, _>(SourceError::new("down").with_retry_after(Duration::from_secs(7)))
    });
    let exchange = TokenExchange::from_subject_token(endpoint.clone(), "s")
        .actor(actor, TokenExchange::ACCESS_TOKEN);
    let error = exchange.request_token().await.unwrap_err();
    assert!(
        error.to_string().contains("the actor token source failed"),
        "{error}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    let error = TokenExchange::from_subject_token(endpoint, "")
        .request_token()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SubjectToken);
    assert!(error.to_string().contains("gave an empty token"), "{error}");
    assert_eq!(seen.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_subject_needs_a_new_one() {
    let (endpoint, _) = scripted(|_| {
        (
            400,
            r#"{"error":"invalid_grant","error_description":"subject_token is invalid"}"#.into(),
        )
    });
    let mut exchange = TokenExchange::from_subject_token(endpoint, "revoked");
    let (error, retry) = oauth_error(
        exchange
            .call(TokenRequest::new(Reason::Initial))
            .await
            .unwrap_err(),
    );
    assert_eq!(error.code(), Some(&ErrorCode::InvalidGrant));
    assert!(error.needs_reauthorization());
    assert_eq!(retry, RetryHint::NotSoon);
}

#[tokio::test(start_paused = true)]
async fn the_identity_holds_a_digest_of_the_subject_never_the_subject() {
    let (endpoint, _) = issuing(TokenExchange::ACCESS_TOKEN);
    let exchange = TokenExchange::from_subject_token(endpoint.clone(), "subject-one")
        .audience("billing")
        .param("client_assertion", "an-assertion");
    let identity = exchange.identity().await.unwrap();
    assert_eq!(identity, exchange.identity_for("subject-one", None));
    let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(b"subject-one"));
    assert_eq!(
        identity,
        format!(
            "token_url=https%3A%2F%2Fsts.example.com%2Ftoken&client_id=exchanger\
             &grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &subject_sha256={digest}&scope=&audience=billing"
        )
    );
    assert!(!identity.contains("subject-one") && !identity.contains("an-assertion"));
    // Two replicas with different subjects never share a key; nor with different actors.
    assert_ne!(identity, exchange.identity_for("subject-two", None));
    let with_actor = exchange
        .clone()
        .actor(StaticToken::new("a"), TokenExchange::JWT);
    assert_ne!(
        with_actor.identity_for("subject-one", Some("actor-1")),
        with_actor.identity_for("subject-one", Some("actor-2"))
    );
    assert!(!with_actor
        .identity_for("subject-one", Some("actor-1"))
        .contains("actor-1"));
}

#[tokio::test(start_paused = true)]
async fn subject_tokens_stay_out_of_debug_and_of_echoed_errors() {
    let (endpoint, _) = scripted(|form| {
        let subject = &form.iter().find(|(k, _)| k == "subject_token").unwrap().1;
        let actor = &form.iter().find(|(k, _)| k == "actor_token").unwrap().1;
        (
            400,
            format!(
                r#"{{"error":"invalid_request","error_description":"bad {subject} for {actor}"}}"#
            ),
        )
    });
    let exchange = TokenExchange::from_subject_token(endpoint, "subj-S3CRET")
        .actor(StaticToken::new("actor-S3CRET"), TokenExchange::JWT)
        .param("subject_token", "param-S3CRET");
    let error = exchange.request_token().await.unwrap_err();
    let shown = format!("{error} {error:?} {exchange:?}");
    assert!(!shown.contains("S3CRET"), "{shown}");
    assert!(
        error.to_string().contains("bad <redacted> for <redacted>"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_token_carries_the_digest_of_its_subject_and_a_new_subject_is_used_at_once() {
    let (endpoint, seen) = issuing(TokenExchange::JWT);
    let reasons: Arc<Mutex<Vec<Reason>>> = Arc::default();
    let subject = {
        let reasons = reasons.clone();
        source_fn(move |req: TokenRequest| {
            let mut reasons = reasons.lock().unwrap();
            reasons.push(req.reason());
            let token = Token::new(format!("file-{}", reasons.len()));
            async move { Ok::<_, io::Error>(token) }
        })
    };
    let mut exchange = TokenExchange::new(endpoint, subject).subject_token_type(TokenExchange::JWT);
    for (n, reason) in [(1, Reason::Initial), (2, Reason::Forced)] {
        let token = exchange.call(TokenRequest::new(reason)).await.unwrap();
        let subject = format!("file-{n}");
        assert_eq!(seen.values(n - 1, "subject_token"), [subject.as_str()]);
        assert_eq!(
            token.extensions().get::<SubjectDigest>(),
            Some(&SubjectDigest::of(&subject))
        );
    }
    // The subject source is told why: a forced refresh may want a fresh subject too.
    assert_eq!(*reasons.lock().unwrap(), [Reason::Initial, Reason::Forced]);
}

#[tokio::test(start_paused = true)]
async fn an_exchanged_token_is_not_kept_past_its_subject() {
    // The subject rotates: each token of its source lives 10 minutes, and is cached; the
    // server's tokens live an hour.
    let (endpoint, seen) = issuing(TokenExchange::ACCESS_TOKEN);
    let subjects: Arc<Mutex<Vec<(SubjectDigest, Instant)>>> = Arc::default();
    let subject = {
        let subjects = subjects.clone();
        source_fn(move |_: TokenRequest| {
            let mut subjects = subjects.lock().unwrap();
            let token = format!("subject-{}", subjects.len() + 1);
            let end = Instant::now() + Duration::from_secs(600);
            subjects.push((SubjectDigest::of(&token), end));
            let token = Token::new(token).with_expires_in(Duration::from_secs(600));
            async move { Ok::<_, io::Error>(token) }
        })
    };
    let subject = TokenCache::new(subject);
    let exchange = TokenExchange::new(endpoint.clone(), subject.clone());
    let token = exchange
        .clone()
        .call(TokenRequest::new(Reason::Initial))
        .await
        .unwrap();
    // Cut to when the subject's cache stops using it (10 minutes less its 30 s skew).
    let Some(Expiry::At(end)) = token.expiry() else {
        panic!("{token:?}")
    };
    assert_eq!(end - Instant::now(), Duration::from_secs(570));

    // Through a cache, for an hour: each token served was made from a subject that is still
    // valid, and a new subject is used soon after each rotation.
    let cache = TokenCache::new(exchange);
    let mut used = Vec::new();
    for _ in 0..120 {
        let token = cache.token().await.unwrap();
        let made_from = token.extensions().get::<SubjectDigest>().unwrap().clone();
        let subjects = subjects.lock().unwrap().clone();
        let (_, subject_end) = subjects
            .iter()
            .find(|(digest, _)| *digest == made_from)
            .unwrap();
        assert!(Instant::now() < *subject_end);
        if used.last() != Some(&made_from) {
            used.push(made_from);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
    }
    let rotations = subjects.lock().unwrap().len();
    assert!((6..=8).contains(&rotations), "{rotations} subjects");
    assert!(
        used.len() + 1 >= rotations,
        "{} of {rotations} subjects used",
        used.len()
    );
    // About one exchange per subject, not one per request: at most two, when the exchange's
    // refresh (randomly jittered) comes just before the subject's own and trades the old
    // subject, whose little remaining life then brings one more exchange.
    assert!(seen.count() <= 2 * rotations, "{} exchanges", seen.count());

    // Unless told otherwise.
    let token = TokenExchange::new(endpoint, subject)
        .within_subject_expiry(false)
        .call(TokenRequest::new(Reason::Initial))
        .await
        .unwrap();
    let Some(Expiry::At(end)) = token.expiry() else {
        panic!("{token:?}")
    };
    assert_eq!(end - Instant::now(), Duration::from_secs(3600));
}
