//! Behaviour of the layer and its cache: single flight, refresh ahead, rejection and replay,
//! failures, backpressure, placements and secrecy. Time is Tokio's paused clock throughout.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tokio_test::{assert_pending, assert_ready};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_bearer::replay::{KeptBody, ReplayableBody};
use tower_bearer::{
    source_fn, BearerAuth, BearerAuthLayer, Error, ErrorKind, Placement, Reason, StaticToken,
    Token, TokenCache, TokenRequest,
};

use support::{get, token_error, Calls};

type Body = Full<Bytes>;

/// An API that accepts the tokens in `accepted` (all if `None`) and answers with the
/// `Authorization` header it saw.
fn api(
    accepted: Option<Arc<Mutex<Vec<String>>>>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible, Future = impl Send>
       + Clone
       + Send {
    service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let seen = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let ok = match (&seen, &accepted) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(seen), Some(accepted)) => accepted
                .lock()
                .unwrap()
                .iter()
                .any(|t| *seen == format!("Bearer {t}")),
        };
        let mut response = Response::new(seen.unwrap_or_default());
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="test", error="invalid_token""#),
            );
        }
        async move { Ok::<_, Infallible>(response) }
    })
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_requests_with_an_empty_cache_make_one_fetch() {
    let tokens = Calls::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = BearerAuth::new(
        api(None, calls.clone()),
        tokens.lasting(Duration::from_millis(50), Duration::from_secs(600)),
    );
    let tasks: Vec<_> = (0..10_000)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "Bearer tok-1");
    }
    assert_eq!(tokens.count(), 1);
    assert_eq!(tokens.reasons(), [Reason::Initial]);
    assert_eq!(calls.load(Ordering::SeqCst), 10_000);
    assert_eq!(svc.cache().stats().waits, 10_000);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_requests_on_an_expired_token_make_one_fetch() {
    let tokens = Calls::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = BearerAuth::new(
        api(None, calls.clone()),
        tokens.lasting(Duration::from_millis(50), Duration::from_secs(60)),
    );
    svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;

    let tasks: Vec<_> = (0..10_000)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().body(), "Bearer tok-2");
    }
    assert_eq!(tokens.count(), 2);
    assert_eq!(tokens.reasons(), [Reason::Initial, Reason::Expired]);
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_rejections_of_one_token_cause_one_refresh() {
    let tokens = Calls::default();
    let accepted = Arc::new(Mutex::new(vec!["tok-1".to_owned()]));
    let api_calls = Arc::new(AtomicUsize::new(0));
    let cache =
        TokenCache::new(tokens.lasting(Duration::from_millis(10), Duration::from_secs(600)));
    cache.token().await.unwrap();

    // Both requests are in flight with tok-1 when the server stops accepting it.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let inner = {
        let api = api(Some(accepted.clone()), api_calls.clone());
        let barrier = barrier.clone();
        let accepted = accepted.clone();
        service_fn(move |req: Request<Body>| {
            let (api, barrier, accepted) = (api.clone(), barrier.clone(), accepted.clone());
            async move {
                if req.headers()[AUTHORIZATION] == "Bearer tok-1" {
                    if barrier.wait().await.is_leader() {
                        accepted.lock().unwrap().push("tok-2".to_owned());
                        accepted.lock().unwrap().retain(|t| t != "tok-1");
                    }
                    barrier.wait().await;
                }
                api.oneshot(req).await
            }
        })
    };
    let svc = BearerAuth::from_cache(inner, cache.clone());
    let (a, b) = tokio::join!(
        svc.clone().oneshot(get("http://api.test/a")),
        svc.clone().oneshot(get("http://api.test/b")),
    );
    assert_eq!(a.unwrap().body(), "Bearer tok-2");
    assert_eq!(b.unwrap().body(), "Bearer tok-2");
    assert_eq!(tokens.count(), 2);
    assert_eq!(tokens.reasons(), [Reason::Initial, Reason::Rejected]);
    let stats = cache.stats();
    assert_eq!((stats.rejections, stats.replays), (2, 2));
    assert_eq!(api_calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_of_an_already_replaced_token_causes_no_fetch() {
    let tokens = Calls::default();
    let cache = TokenCache::new(tokens.lasting(Duration::ZERO, Duration::from_secs(600)));
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BearerAuthLayer::from_cache(cache.clone()),
    );
    cache.token().await.unwrap();

    handle.allow(2);
    assert_ready!(svc.poll_ready()).unwrap();
    let response = tokio::spawn(svc.call(get("http://api.test/")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-1");

    // Another part of the program replaced tok-1 while the request was in flight.
    cache.refresh().await.unwrap();
    assert_eq!(tokens.count(), 2);

    let mut unauthorized = Response::new(Body::default());
    *unauthorized.status_mut() = StatusCode::UNAUTHORIZED;
    send.send_response(unauthorized);

    let (replay, send) = handle.next_request().await.unwrap();
    assert_eq!(replay.headers()[AUTHORIZATION], "Bearer tok-2");
    send.send_response(Response::new(Body::from("ok")));
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(tokens.count(), 2, "a stale rejection must not fetch");
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-2"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejected_request_is_replayed_exactly_once() {
    let tokens = Calls::default();
    let api_calls = Arc::new(AtomicUsize::new(0));
    let nothing_accepted = Arc::new(Mutex::new(Vec::new()));
    let svc = BearerAuth::new(
        api(Some(nothing_accepted), api_calls.clone()),
        tokens.lasting(Duration::ZERO, Duration::from_secs(600)),
    );
    let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.body(),
        "Bearer tok-2",
        "the replay's answer is returned"
    );
    assert_eq!(api_calls.load(Ordering::SeqCst), 2);
    let stats = svc.cache().stats();
    assert_eq!((stats.rejections, stats.replays), (2, 1));
    // The replay's token was fetched because of a rejection moments ago: its own rejection
    // points at the API, so it is kept rather than dropped for yet another fetch, and the next
    // rejected request is replayed with it...
    assert_eq!(stats.kept_rejections, 1);
    let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.body(),
        "Bearer tok-2",
        "replayed with the kept token"
    );
    assert_eq!(api_calls.load(Ordering::SeqCst), 4);
    assert_eq!(tokens.count(), 2);
    // ...until the rejection interval has passed.
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = svc.oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.body(), "Bearer tok-3");
    assert_eq!((api_calls.load(Ordering::SeqCst), tokens.count()), (6, 3));
}

#[tokio::test(start_paused = true)]
async fn the_replay_is_an_identical_request_with_the_new_token() {
    let tokens = Calls::default();
    let cache = TokenCache::new(tokens.lasting(Duration::ZERO, Duration::from_secs(600)));
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BearerAuthLayer::from_cache(cache.clone()),
    );
    handle.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let mut req = Request::post("http://api.test/items?x=1")
        .header("content-type", "application/json")
        .header(AUTHORIZATION, "Basic c3RhbGU=")
        .body(Body::from(r#"{"a":1}"#))
        .unwrap();
    req.extensions_mut().insert(42u32);
    let response = tokio::spawn(svc.call(req));

    let (first, send) = handle.next_request().await.unwrap();
    assert_eq!(first.headers()[AUTHORIZATION], "Bearer tok-1");
    let mut unauthorized = Response::new(Body::default());
    *unauthorized.status_mut() = StatusCode::UNAUTHORIZED;
    send.send_response(unauthorized);

    // The replay goes through a clone that must be polled ready: it waits for capacity.
    tokio::task::yield_now().await;
    assert!(tokio_test::task::spawn(handle.next_request())
        .poll()
        .is_pending());
    handle.allow(1);
    let (replay, send) = handle.next_request().await.unwrap();
    assert_eq!(replay.method(), "POST");
    assert_eq!(replay.uri(), "http://api.test/items?x=1");
    assert_eq!(replay.headers()["content-type"], "application/json");
    assert_eq!(replay.headers().get_all(AUTHORIZATION).iter().count(), 1);
    assert_eq!(replay.headers()[AUTHORIZATION], "Bearer tok-2");
    assert_eq!(replay.extensions().get::<u32>(), Some(&42));
    let body = replay.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"a":1}"#);
    send.send_response(Response::new(Body::from("created")));
    assert_eq!(response.await.unwrap().unwrap().status(), StatusCode::OK);
}

fn respond_with(
    status: StatusCode,
    challenge: Option<&'static str>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Body::default());
        *response.status_mut() = status;
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        async move { Ok::<_, Infallible>(response) }
    })
}

#[tokio::test(start_paused = true)]
async fn insufficient_scope_and_forbidden_are_returned_as_they_are() {
    let cases = [
        (
            StatusCode::UNAUTHORIZED,
            Some(r#"Bearer realm="x", error="insufficient_scope", scope="admin""#),
        ),
        (
            StatusCode::UNAUTHORIZED,
            Some(r#"Basic realm="y", Bearer error=insufficient_scope"#),
        ),
        (StatusCode::FORBIDDEN, None),
        (
            StatusCode::FORBIDDEN,
            Some(r#"Bearer error="invalid_token""#),
        ),
    ];
    for (status, challenge) in cases {
        let tokens = Calls::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = BearerAuth::new(
            respond_with(status, challenge, calls.clone()),
            tokens.lasting(Duration::ZERO, Duration::from_secs(600)),
        );
        let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(response.status(), status, "{challenge:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{challenge:?}");
        assert_eq!(tokens.count(), 1, "{challenge:?}");
        assert_eq!(svc.cache().stats().replays, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_401_without_a_challenge_or_with_other_challenges_is_a_rejection() {
    for challenge in [
        None,
        Some(r#"Bearer realm="r", error="invalid_token", error_description="expired""#),
        Some(r#"DPoP algs="ES256", Bearer realm="r""#),
        Some("garbage \"unterminated"),
    ] {
        let tokens = Calls::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = BearerAuth::new(
            respond_with(StatusCode::UNAUTHORIZED, challenge, calls.clone()),
            tokens.lasting(Duration::ZERO, Duration::from_secs(600)),
        );
        svc.clone().oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{challenge:?}");
        assert_eq!(svc.cache().stats().replays, 1, "{challenge:?}");
    }
}

/// A body of the caller's own that cannot be sent twice: its `ReplayableBody` keeps nothing.
struct Streaming(#[allow(dead_code)] Vec<u8>);

impl ReplayableBody for Streaming {
    fn split(self, _cap: usize) -> (Self, Option<KeptBody<Self>>) {
        (self, None)
    }

    fn resend(_kept: KeptBody<Self>) -> Option<Self> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_gets_its_401_back_and_drops_the_token() {
    let tokens = Calls::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Streaming>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let auth = req.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
            let mut response = Response::new(auth);
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let svc = BearerAuth::new(
        inner,
        tokens.lasting(Duration::ZERO, Duration::from_secs(600)),
    );
    let req = || {
        Request::put("http://api.test/")
            .body(Streaming(vec![1, 2, 3]))
            .unwrap()
    };
    let response = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "Bearer tok-1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The next request does not carry the rejected token.
    let response = svc.oneshot(req()).await.unwrap();
    assert_eq!(response.body(), "Bearer tok-2");
}

#[tokio::test(start_paused = true)]
async fn every_cloneable_body_type_is_replayed() {
    async fn replays<B: ReplayableBody + Send + 'static>(body: B) -> usize {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let calls = calls.clone();
            service_fn(move |_req: Request<B>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(());
                if n == 0 {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let svc = BearerAuth::new(inner, StaticToken::new("t"));
        let response = svc.oneshot(Request::new(body)).await.unwrap();
        let calls = calls.load(Ordering::SeqCst);
        let expected = if calls == 2 {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(response.status(), expected);
        calls
    }
    assert_eq!(replays(Full::new(Bytes::from_static(b"x"))).await, 2);
    assert_eq!(replays(Empty::<Bytes>::new()).await, 2);
    assert_eq!(replays(String::from("x")).await, 2);
    assert_eq!(replays(Bytes::from_static(b"x")).await, 2);
    assert_eq!(replays(vec![1u8]).await, 2);
    assert_eq!(replays(()).await, 2);
    assert_eq!(replays("x").await, 2);
    assert_eq!(replays(&b"x"[..]).await, 2);
    // Any `Full` whose data is cloneable, not only `Full<Bytes>`.
    assert_eq!(replays(Full::new(&b"x"[..])).await, 2);
}

#[tokio::test(start_paused = true)]
async fn replay_can_be_switched_off() {
    let tokens = Calls::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(tokens.lasting(Duration::ZERO, Duration::from_secs(600)))
                .without_replay(),
        )
        .service(respond_with(StatusCode::UNAUTHORIZED, None, calls.clone()));
    let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.count(), 1);
    svc.oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(tokens.count(), 2, "the rejected token was dropped");
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_makes_no_request_wait() {
    let tokens = Calls::default();
    let cache =
        TokenCache::builder(tokens.lasting(Duration::from_millis(200), Duration::from_secs(100)))
            .build();
    let svc = BearerAuth::from_cache(api(None, Arc::default()), cache.clone());
    let mut seen = Vec::new();
    for _ in 0..400 {
        let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if seen.last() != Some(response.body()) {
            seen.push(response.body().clone());
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    // 200 seconds of 100-second tokens: refreshed several times, ahead of expiry each time.
    let stats = cache.stats();
    assert!(tokens.count() >= 3, "{} fetches", tokens.count());
    assert_eq!(
        stats.waits, 1,
        "only the very first request waited: {stats:?}"
    );
    // Every fetched token was used, except perhaps one fetched after the last request.
    assert!(tokens.count() - seen.len() <= 1, "{seen:?}");
    assert!(tokens.reasons()[1..].iter().all(|r| *r == Reason::Expiring));
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_do_not_refresh_in_a_loop() {
    let tokens = Calls::default();
    // Under the default floor (10 s) these tokens would be used for 10 s; without it, their own
    // timeline applies.
    let cache = TokenCache::builder(tokens.lasting(Duration::ZERO, Duration::from_secs(5)))
        .min_lifetime(Duration::ZERO)
        .build();
    let svc = BearerAuth::from_cache(api(None, Arc::default()), cache);
    for _ in 0..100 {
        svc.clone().oneshot(get("http://api.test/")).await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // 10 seconds of 5-second tokens: each is used for at least 3/8 of its usable 3.75 s.
    assert!(
        (2..=8).contains(&tokens.count()),
        "{} fetches",
        tokens.count()
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_request_that_started_a_fetch_leaves_the_others_served() {
    let tokens = Calls::default();
    let svc = BearerAuth::new(
        api(None, Arc::default()),
        tokens.lasting(Duration::from_secs(1), Duration::from_secs(600)),
    );
    let first = tokio::spawn(svc.clone().oneshot(get("http://api.test/")));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(tokens.count(), 1, "the first request started the fetch");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    let (a, b) = tokio::join!(
        svc.clone().oneshot(get("http://api.test/")),
        svc.clone().oneshot(get("http://api.test/")),
    );
    assert_eq!(a.unwrap().body(), "Bearer tok-1");
    assert_eq!(b.unwrap().body(), "Bearer tok-1");
    assert_eq!(tokens.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_gives_a_typed_error_and_is_not_hammered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        source_fn(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<Token, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused")) }
        })
    };
    let api_calls = Arc::new(AtomicUsize::new(0));
    let svc = BearerAuth::new(api(None, api_calls.clone()), source);

    let err = token_error(
        svc.clone()
            .oneshot(get("http://api.test/"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind(), ErrorKind::Source);
    assert_eq!(
        err.source_as::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "refused"
    );

    // During the backoff, requests fail at once with the same error.
    for _ in 0..1_000 {
        let err = token_error(
            svc.clone()
                .oneshot(get("http://api.test/"))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.kind(), ErrorKind::Source);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Over 10 minutes of requests every 100 ms, fetches are bounded by the backoff
    // (1 s doubling to 60 s, shortened by up to half): far fewer than the 6,000 requests.
    for _ in 0..6_000 {
        let _ = svc.clone().oneshot(get("http://api.test/")).await;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let fetches = calls.load(Ordering::SeqCst);
    assert!((8..=30).contains(&fetches), "{fetches} fetches");
    assert_eq!(
        api_calls.load(Ordering::SeqCst),
        0,
        "nothing sent without a token"
    );
    assert_eq!(svc.cache().stats().fetch_failures, fetches as u64);
}

#[tokio::test(start_paused = true)]
async fn a_still_valid_token_is_used_while_refreshes_fail() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        source_fn(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(Token::new("tok-1").with_expires_in(Duration::from_secs(100)))
                } else {
                    Err(io::Error::other("token endpoint down"))
                }
            }
        })
    };
    // The fixed window of 0.x gives the failing refreshes a long time to be retried in: the
    // usable life ends at 75 s (100 s minus a 25 s skew); the refresh starts by 37.5 s.
    let cache = TokenCache::builder(source)
        .refresh_ahead(Duration::from_secs(300))
        .build();
    let svc = BearerAuth::from_cache(api(None, Arc::default()), cache);
    for _ in 0..740 {
        let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(response.body(), "Bearer tok-1");
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let fetches = calls.load(Ordering::SeqCst);
    assert!((3..=12).contains(&fetches), "{fetches} fetches");
    // Sleeping (rather than advancing the clock) lets the cache's timers run first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = token_error(svc.oneshot(get("http://api.test/")).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Source);
}

#[tokio::test(start_paused = true)]
async fn the_source_recovers_after_failures() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        source_fn(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(io::Error::other("down"))
                } else {
                    Ok(Token::new("tok-ok"))
                }
            }
        })
    };
    let svc = BearerAuth::new(api(None, Arc::default()), source);
    let mut answers = Vec::new();
    for _ in 0..50 {
        answers.push(svc.clone().oneshot(get("http://api.test/")).await.is_ok());
        tokio::time::advance(Duration::from_millis(200)).await;
    }
    assert!(!answers[0]);
    assert!(answers[49]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_source_times_out() {
    let source = source_fn(|_| std::future::pending::<Result<Token, Infallible>>());
    let cache = TokenCache::builder(source)
        .fetch_timeout(Duration::from_secs(2))
        .build();
    let start = tokio::time::Instant::now();
    let svc = BearerAuth::from_cache(api(None, Arc::default()), cache);
    let err = token_error(svc.oneshot(get("http://api.test/")).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(err.to_string().contains("timed out"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_fails_the_waiters_instead_of_hanging() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        source_fn(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("bug in the token source");
                }
                Ok::<_, Infallible>(Token::new("tok"))
            }
        })
    };
    let svc = BearerAuth::new(api(None, Arc::default()), source);
    let err = token_error(
        svc.clone()
            .oneshot(get("http://api.test/"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.to_string(), "token source panicked");
    tokio::time::advance(Duration::from_secs(2)).await;
    let response = svc.oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.body(), "Bearer tok");
}

#[tokio::test(start_paused = true)]
async fn a_token_that_is_not_a_header_value_is_never_sent() {
    for bad in [
        "tok\r\nX-Injected: 1",
        "tok\nen",
        "tok\0",
        "tok\x7f",
        "tök",
        "",
    ] {
        let api_calls = Arc::new(AtomicUsize::new(0));
        let svc = BearerAuth::new(api(None, api_calls.clone()), StaticToken::new(bad));
        let err = token_error(svc.oneshot(get("http://api.test/")).await.unwrap_err());
        assert_eq!(err.kind(), ErrorKind::InvalidToken, "{bad:?}");
        assert!(!err.to_string().contains(bad) || bad.is_empty());
        assert_eq!(api_calls.load(Ordering::SeqCst), 0, "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_unready_inner_service_makes_the_layer_unready() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BearerAuthLayer::new(StaticToken::new("tok")),
    );
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready!(svc.poll_ready()).unwrap();
    // The request waits for the first token; the ready service travels with it.
    let response = tokio::spawn(svc.call(get("http://api.test/")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok");
    send.send_response(Response::new(Body::default()));
    response.await.unwrap().unwrap();
    assert_pending!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn errors_of_the_inner_service_pass_through() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BearerAuthLayer::new(StaticToken::new("tok")),
    );
    handle.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let response = tokio::spawn(svc.call(get("http://api.test/")));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(io::Error::other("connection reset"));
    let err = response.await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<Error>().is_none());
    assert_eq!(err.to_string(), "connection reset");
}

async fn stamped(placement: Placement, uri: &str, token: Token) -> Request<Body> {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request<Body>, Response<Body>, _>(
        BearerAuthLayer::new(StaticToken::from_token(token)).placement(placement),
    );
    handle.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let mut req = get(uri);
    req.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Basic b2xk"));
    let response = tokio::spawn(svc.call(req));
    let (req, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Body::default()));
    response.await.unwrap().unwrap();
    req
}

#[tokio::test(start_paused = true)]
async fn each_placement_puts_the_token_where_it_belongs() {
    let token = || Token::new("a.b-c_d~e+f/g=").with_token_type("bearer");
    let req = stamped(Placement::default(), "http://api.test/", token()).await;
    let value = &req.headers()[AUTHORIZATION];
    assert_eq!(value, "Bearer a.b-c_d~e+f/g=");
    assert!(value.is_sensitive());
    assert_eq!(req.headers().get_all(AUTHORIZATION).iter().count(), 1);

    let req = stamped(Placement::authorization_raw(), "http://api.test/", token()).await;
    assert_eq!(req.headers()[AUTHORIZATION], "a.b-c_d~e+f/g=");
    assert!(req.headers()[AUTHORIZATION].is_sensitive());

    let scheme = Placement::authorization_scheme("Token").unwrap();
    let req = stamped(scheme, "http://api.test/", token()).await;
    assert_eq!(req.headers()[AUTHORIZATION], "Token a.b-c_d~e+f/g=");
    assert!(req.headers()[AUTHORIZATION].is_sensitive());

    let custom = Placement::header(http::HeaderName::from_static("x-api-key"));
    let req = stamped(custom, "http://api.test/", token()).await;
    assert_eq!(req.headers()["x-api-key"], "a.b-c_d~e+f/g=");
    assert!(req.headers()["x-api-key"].is_sensitive());
    assert_eq!(req.headers()[AUTHORIZATION], "Basic b2xk", "left alone");

    let custom = Placement::header_with_scheme(http::HeaderName::from_static("x-auth"), "Bearer");
    let req = stamped(custom.unwrap(), "http://api.test/", token()).await;
    assert_eq!(req.headers()["x-auth"], "Bearer a.b-c_d~e+f/g=");

    let uri = "http://api.test/search?q=a%20b+c&access_token=old&page=2#frag";
    let req = stamped(Placement::query(), uri, token()).await;
    assert_eq!(
        req.uri(),
        "http://api.test/search?q=a%20b+c&page=2&access_token=a.b-c_d%7Ee%2Bf%2Fg%3D"
    );
    assert_eq!(req.headers()["cache-control"], "no-store");
    let req = stamped(Placement::query(), "http://api.test", token()).await;
    assert_eq!(
        req.uri(),
        "http://api.test/?access_token=a.b-c_d%7Ee%2Bf%2Fg%3D"
    );

    assert!(Placement::authorization_scheme("").is_err());
    assert!(Placement::authorization_scheme("Bad Scheme").is_err());
    assert!(Placement::authorization_scheme("Bad\r\n").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_cache_shared_by_two_layers_fetches_once() {
    let tokens = Calls::default();
    let cache = TokenCache::new(tokens.lasting(Duration::from_millis(5), Duration::from_secs(600)));
    let a = BearerAuth::from_cache(api(None, Arc::default()), cache.clone());
    let b = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()).placement(Placement::authorization_raw()))
        .service(api(None, Arc::default()));
    let (ra, rb) = tokio::join!(
        a.oneshot(get("http://a.test/")),
        b.oneshot(get("http://b.test/"))
    );
    assert_eq!(ra.unwrap().body(), "Bearer tok-1");
    assert_eq!(rb.unwrap().body(), "tok-1");
    assert_eq!(tokens.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn tokens_without_expiry_live_for_the_default_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        source_fn(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Token::new("tok")) }
        })
    };
    let cache = TokenCache::builder(source)
        .default_lifetime(Duration::from_secs(60))
        .refresh_ahead(Duration::from_secs(300))
        .jitter(0.0)
        .build();
    cache.token().await.unwrap();
    // With the fixed window of 0.x: usable until 45 s (60 s minus a 15 s skew); refreshed ahead from 22.5 s. Sleeping
    // (rather than advancing the clock) lets the cache's timers run first.
    tokio::time::sleep(Duration::from_secs(22)).await;
    cache.token().await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cache.token().await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn expiry_counts_from_when_the_request_was_sent() {
    let tokens = Calls::default();
    // The token endpoint takes 20 s to answer a 60 s token: 40 s are left when it arrives.
    let cache =
        TokenCache::builder(tokens.lasting(Duration::from_secs(20), Duration::from_secs(60)))
            .expiry_skew(Duration::ZERO)
            .refresh_ahead(Duration::ZERO)
            .build();
    cache.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(39)).await;
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-1"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-2"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_refresh_and_invalidate() {
    let tokens = Calls::default();
    let cache = TokenCache::new(tokens.lasting(Duration::ZERO, Duration::from_secs(600)));
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-1"
    );
    assert_eq!(
        cache.refresh().await.unwrap().access_token().secret(),
        "tok-2"
    );
    cache.invalidate();
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-3"
    );
    assert_eq!(
        tokens.reasons(),
        [Reason::Initial, Reason::Forced, Reason::Initial]
    );
}

/// After `invalidate`, the next fetch names the dropped token, so that a source sharing tokens
/// with other processes (a shared cache level) does not answer with that very token.
#[tokio::test]
async fn the_fetch_after_invalidate_names_the_dropped_token() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let source = {
        let seen = seen.clone();
        tower_bearer::source_fn(move |req: TokenRequest| {
            let mut seen = seen.lock().unwrap();
            seen.push(req.current().map(|t| t.access_token().secret().to_owned()));
            let token = Token::new(format!("tok-{}", seen.len()));
            async move { Ok::<_, std::io::Error>(token.with_expires_in(Duration::from_secs(600))) }
        })
    };
    let cache = TokenCache::new(source);
    cache.token().await.unwrap();
    cache.invalidate();
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-2"
    );
    assert_eq!(*seen.lock().unwrap(), [None, Some("tok-1".to_owned())]);
}

#[test]
fn fetching_outside_a_runtime_is_a_typed_error() {
    let cache = TokenCache::new(StaticToken::new("tok"));
    let mut token = std::pin::pin!(cache.token());
    let waker = std::task::Waker::noop();
    let poll = token
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    let std::task::Poll::Ready(Err(err)) = poll else {
        panic!("expected an error at once");
    };
    assert_eq!(err.kind(), ErrorKind::NoRuntime);
}

#[tokio::test(start_paused = true)]
async fn no_debug_output_shows_a_secret() {
    const SECRET: &str = "super-secret-token-value";
    let token = Token::new(SECRET)
        .with_refresh_token(tower_bearer::RefreshToken::new("refresh-secret-value"))
        .with_scope("read");
    let cache = TokenCache::new(StaticToken::from_token(token.clone()));
    let layer = BearerAuthLayer::from_cache(cache.clone());
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api(None, Arc::default()));
    let mut svc_clone = svc.clone();
    svc_clone.ready().await.unwrap();
    let future = svc_clone.call(get("http://api.test/"));
    let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.body(), &format!("Bearer {SECRET}"));

    let err = Error::clone(&token_error(
        BearerAuth::new(api(None, Arc::default()), StaticToken::new("bad\ntoken"))
            .oneshot(get("http://api.test/"))
            .await
            .unwrap_err(),
    ));
    let rendered = [
        format!("{token:?}"),
        format!("{:?}", token.access_token()),
        format!("{:?}", token.refresh_token()),
        format!("{:?}", StaticToken::from_token(token.clone())),
        format!("{cache:?}"),
        format!("{:?}", cache.stats()),
        format!("{layer:?}"),
        format!("{:?}", layer.clone().without_replay()),
        format!("{:?}", BearerAuth::from_cache((), cache.clone())),
        format!("{future:?}"),
        format!("{:?}", Placement::query()),
        format!("{:?}", TokenCache::builder(StaticToken::new(SECRET))),
        format!("{err:?} {err}"),
    ];
    for text in rendered {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("refresh-secret-value"), "{text}");
        assert!(
            !text.contains("bad\ntoken") && !text.contains("bad\\ntoken"),
            "{text}"
        );
    }
    future.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn grpc_status_16_counts_only_on_http2_responses() {
    // gRPC runs over HTTP/2 only. An HTTP/1.1 200 that happens to carry `grpc-status: 16` is an
    // ordinary response; the same on HTTP/2 is a rejection, replayed once.
    for (version, expected_calls) in [(http::Version::HTTP_11, 1), (http::Version::HTTP_2, 2)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let calls = calls.clone();
            service_fn(move |_req: Request<Body>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(Body::default());
                *response.version_mut() = version;
                let status = if n == 0 { "16" } else { "0" };
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(status));
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let svc = BearerAuth::new(inner, StaticToken::new("tok"));
        svc.clone().oneshot(get("http://grpc.test/")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), expected_calls, "{version:?}");
        assert_eq!(svc.cache().stats().replays, expected_calls as u64 - 1);
    }
}

/// An API that rejects the odd tokens (`tok-1`, `tok-3`, ...), answers with its tag and counts
/// its clones.
struct Tagged {
    tag: &'static str,
    clones: Arc<AtomicUsize>,
}

impl Clone for Tagged {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            tag: self.tag,
            clones: self.clones.clone(),
        }
    }
}

impl Service<Request<Body>> for Tagged {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut response = Response::new(self.tag.to_owned());
        let token = req.headers()[AUTHORIZATION].to_str().unwrap();
        let n: u32 = token.strip_prefix("Bearer tok-").unwrap().parse().unwrap();
        if n % 2 == 1 {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok(response))
    }
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_is_cloned_for_replays_not_for_every_request() {
    let tokens = Calls::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let inner = Tagged {
        tag: "first",
        clones: clones.clone(),
    };
    let mut svc = BearerAuth::new(
        inner,
        tokens.lasting(Duration::ZERO, Duration::from_secs(600)),
    );
    async fn send(svc: &mut BearerAuth<Tagged>) -> Response<String> {
        let svc = svc.ready().await.unwrap();
        svc.call(get("http://api.test/")).await.unwrap()
    }
    // The first request waits for the token: it takes the ready inner service and leaves a
    // clone (1), and the spare that replays are cloned from is made (2). `tok-1` is rejected and
    // the replay clones the spare (3).
    assert_eq!(send(&mut svc).await.status(), StatusCode::OK);
    assert_eq!(clones.load(Ordering::SeqCst), 3);
    assert_eq!(svc.cache().stats().replays, 1);

    // A thousand accepted requests on the cached path clone nothing.
    for _ in 0..1_000 {
        assert_eq!(send(&mut svc).await.status(), StatusCode::OK);
    }
    assert_eq!(clones.load(Ordering::SeqCst), 3);

    // After `get_mut`, replays go through the inner service as changed: `tok-3` is rejected
    // (after the rejection interval) and the replay with `tok-4` answers from a clone of the
    // changed service.
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.get_mut().tag = "second";
    svc.cache().invalidate();
    let response = send(&mut svc).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "second");
    assert_eq!((tokens.count(), svc.cache().stats().replays), (4, 2));
}

/// The token source learns which token a fetch replaces (`TokenRequest::current`), so that a
/// source sharing tokens with other processes never hands that one back.
#[tokio::test(start_paused = true)]
async fn the_cache_tells_its_source_which_token_it_replaces() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let source = source_fn(move |req: TokenRequest| {
        let current = req.current().map(|t| t.access_token().secret().to_owned());
        log.lock().unwrap().push((req.reason(), current));
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok::<_, std::io::Error>(
                Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(600)),
            )
        }
    });
    let cache = TokenCache::builder(source)
        .refresh_ahead(Duration::from_secs(60))
        .build();
    cache.token().await.unwrap();
    // Into the refresh window: a background refresh replaces tok-1.
    tokio::time::advance(Duration::from_secs(560)).await;
    tokio::task::yield_now().await;
    cache.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        cache.token().await.unwrap().access_token().secret(),
        "tok-2"
    );

    // The API refuses tok-2: the fetch for the replay names it.
    let api = service_fn(|req: Request<Full<Bytes>>| async move {
        let refused = req.headers()["authorization"] == "Bearer tok-2";
        let status = if refused {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
    });
    let client = tower::Layer::layer(&BearerAuthLayer::from_cache(cache.clone()), api);
    let response = client
        .oneshot(support::get("http://api.test/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // An application's forced refresh names the current token too.
    assert_eq!(
        cache.refresh().await.unwrap().access_token().secret(),
        "tok-4"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (Reason::Initial, None),
            (Reason::Expiring, Some("tok-1".to_owned())),
            (Reason::Rejected, Some("tok-2".to_owned())),
            (Reason::Forced, Some("tok-3".to_owned())),
        ]
    );
}
