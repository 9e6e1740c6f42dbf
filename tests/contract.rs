//! A second, independent suite written from the public documentation only: what a user of the
//! layer and of `TokenCache` can observe. Time is Tokio's paused clock unless a test says
//! otherwise.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::buffer::BufferLayer;
use tower::limit::ConcurrencyLimitLayer;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_bearer::{
    BearerAuth, BearerAuthLayer, ErrorKind, Placement, Reason, StaticToken, Token, TokenCache,
    TokenRequest,
};
use tower_test::mock;

use support::{get, token_error, within, Calls};

type Body = Full<Bytes>;

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

fn with_header(mut req: Request<Body>, name: &'static str, value: &'static str) -> Request<Body> {
    req.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    req
}

type Answer = std::future::Ready<Result<Response<String>, Infallible>>;

/// An API that accepts `Bearer tok-N` for `N >= min_ok` and answers with the `Authorization`
/// header it saw. A request header `x-answer` forces an answer: `scope` (401 with
/// `insufficient_scope`), `forbidden` (403) or `reject` (401 `invalid_token` whatever the token).
fn api(
    min_ok: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible, Future = Answer>
       + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let seen = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let generation = seen
            .strip_prefix("Bearer tok-")
            .and_then(|n| n.parse::<usize>().ok());
        let forced = req
            .headers()
            .get("x-answer")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut response = Response::new(seen);
        let challenge = match forced.as_deref() {
            Some("scope") => Some(r#"Bearer error="insufficient_scope", scope="admin""#),
            Some("forbidden") => {
                *response.status_mut() = StatusCode::FORBIDDEN;
                None
            }
            Some("reject") => Some(r#"Bearer error="invalid_token""#),
            _ => match generation {
                Some(n) if n >= min_ok.load(Ordering::SeqCst) => None,
                _ => Some(r#"Bearer realm="api", error="invalid_token""#),
            },
        };
        if let Some(challenge) = challenge {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

fn open_api(
) -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible, Future = Answer>
       + Clone
       + Send
       + 'static {
    api(Arc::new(AtomicUsize::new(0)), Arc::default())
}

/// Sends one request through a clone of `svc` and returns the `Authorization` it carried.
async fn send<S>(svc: &S) -> String
where
    S: Service<Request<Body>, Response = Response<String>, Error = BoxError> + Clone,
{
    let response = svc.clone().oneshot(get("http://api.test/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", response.body());
    response.into_body()
}

// ---------------------------------------------------------------------------------------------
// Expiry: `expires_at`, zero and huge lifetimes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_expires_at_token_follows_the_documented_timeline() {
    // Default timing (adaptive): skew 30 s of an hour's token, refresh at least 1/20 of the
    // usable life before its end.
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |n| {
        Ok(Token::new(format!("tok-{n}"))
            .with_expires_at(Instant::now() + Duration::from_secs(3600)))
    });
    let cache = TokenCache::new(source);
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let start = Instant::now();

    assert_eq!(send(&svc).await, "Bearer tok-1");
    // Well before the refresh point (about 3570 - 223 = 3347 s at the earliest).
    tokio::time::sleep_until(start + Duration::from_secs(3100)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1");
    assert_eq!(calls.count(), 1, "no refresh before the window");

    // Inside the window, before the end of the usable life (3570 s): the token was used since
    // it arrived, so its timer starts one background refresh at the refresh point, without
    // waiting for a request; requests go on with the current token meanwhile.
    tokio::time::sleep_until(start + Duration::from_secs(3560)).await;
    assert_eq!(
        calls.count(),
        2,
        "the used token is refreshed at its refresh point"
    );
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Expiring]);
    assert_eq!(send(&svc).await, "Bearer tok-2");
    assert_eq!(cache.stats().waits, 1, "only the first request waited");
}

#[tokio::test(start_paused = true)]
async fn a_token_nobody_used_since_it_arrived_is_refreshed_by_the_next_request_only() {
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |n| {
        Ok(Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(3600)))
    });
    let cache = TokenCache::new(source);
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let start = Instant::now();

    // The first request waits for the token and is its only use.
    assert_eq!(send(&svc).await, "Bearer tok-1");
    // Past its refresh point (3 times the fetch latency or 1/20 of the usable life before the
    // usable end, 3570 s), not past that end: an idle cache does not fetch by itself.
    tokio::time::sleep_until(start + Duration::from_secs(3565)).await;
    assert_eq!(calls.count(), 1, "no refresh of a token nobody used");
    // A request in the window uses the current token and starts the refresh.
    assert_eq!(send(&svc).await, "Bearer tok-1");
    tokio::time::sleep(SECOND).await;
    assert_eq!(calls.count(), 2);
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Expiring]);
    assert_eq!(cache.stats().waits, 1, "only the first request waited");
}

#[tokio::test(start_paused = true)]
async fn an_expires_at_token_is_not_used_after_its_usable_life() {
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |n| {
        Ok(Token::new(format!("tok-{n}"))
            .with_expires_at(Instant::now() + Duration::from_secs(100)))
    });
    let cache = TokenCache::builder(source)
        .expiry_skew(Duration::ZERO)
        .refresh_ahead(Duration::ZERO)
        .jitter(0.0)
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache);

    assert_eq!(send(&svc).await, "Bearer tok-1");
    tokio::time::sleep(Duration::from_secs(99)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1");
    assert_eq!(calls.count(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        send(&svc).await,
        "Bearer tok-2",
        "expired token must not be sent"
    );
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Expired]);
}

#[tokio::test(start_paused = true)]
async fn a_token_already_past_its_expires_at_still_serves_its_waiters() {
    let calls = Calls::default();
    // The deadline is the instant the source is asked; the answer comes 1 s later, when even
    // the lifetime floor (1 s from the request) has passed.
    let source = calls.source(SECOND, |n| {
        Ok(Token::new(format!("tok-{n}")).with_expires_at(Instant::now()))
    });
    let svc = BearerAuth::new(open_api(), source);
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for waiter in waiters {
        let response = waiter.await.unwrap().unwrap();
        assert_eq!(response.body(), "Bearer tok-1");
    }
    assert_eq!(calls.count(), 1, "one fetch for all waiters");
    assert_eq!(
        send(&svc).await,
        "Bearer tok-2",
        "the next request fetches again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_lifetime_token_serves_the_waiters_of_its_fetch() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(SECOND, Duration::ZERO));
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let waiters: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for waiter in waiters {
        let response = within(DAY, "waiter", waiter).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "Bearer tok-1");
    }
    assert_eq!(calls.count(), 1);
    // The fetch took as long as the lifetime floor (1 s): never usable again, so the next user
    // waits for a new one; it is not served the dead token.
    assert_eq!(send(&svc).await, "Bearer tok-2");
    let token = within(DAY, "token()", cache.token()).await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-3");
    assert_eq!(
        calls.reasons(),
        [Reason::Initial, Reason::Expired, Reason::Expired]
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_lifetime_is_used_for_the_floor_not_refetched_per_request() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(Duration::ZERO, Duration::ZERO));
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    for _ in 0..100 {
        assert_eq!(send(&svc).await, "Bearer tok-1");
    }
    assert_eq!(calls.count(), 1, "no fetch per request");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(send(&svc).await, "Bearer tok-2", "after the floor (1 s)");

    // A higher floor, and none at all.
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::ZERO, Duration::ZERO))
        .min_lifetime(Duration::from_secs(10))
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1");
    assert_eq!(calls.count(), 1);
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::ZERO, Duration::ZERO))
        .min_lifetime(Duration::ZERO)
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache);
    for n in 1..=5 {
        assert_eq!(send(&svc).await, format!("Bearer tok-{n}"));
    }
}

#[tokio::test(start_paused = true)]
async fn huge_lifetimes_and_settings_do_not_panic_or_overflow() {
    let far = Instant::now() + Duration::from_secs(10_000 * 365 * 86_400);
    let makers: Vec<Arc<dyn Fn() -> Token + Send + Sync>> = vec![
        Arc::new(|| Token::new("tok-7").with_expires_in(Duration::MAX)),
        Arc::new(|| Token::new("tok-7")),
        Arc::new(move || Token::new("tok-7").with_expires_at(far)),
    ];
    for make in makers {
        let calls = Calls::default();
        let source = calls.source(Duration::ZERO, move |_| Ok(make()));
        let cache = TokenCache::builder(source)
            .expiry_skew(Duration::MAX)
            .refresh_ahead(Duration::MAX)
            .default_lifetime(Duration::MAX)
            .fetch_timeout(Duration::MAX)
            .build();
        let svc = BearerAuth::from_cache(open_api(), cache.clone());
        assert_eq!(send(&svc).await, "Bearer tok-7");
        // A year later the token is still in use: saturated, not wrapped around to the past.
        tokio::time::sleep(365 * DAY).await;
        assert_eq!(send(&svc).await, "Bearer tok-7");
        assert_eq!(calls.count(), 1);
        let refreshed = within(DAY, "refresh()", cache.refresh()).await.unwrap();
        assert_eq!(refreshed.access_token().secret(), "tok-7");
        assert_eq!(calls.count(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_huge_backoff_does_not_panic_or_hang() {
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |_| Err(io::Error::other("endpoint down")));
    let cache = TokenCache::builder(source)
        .backoff(Duration::MAX, Duration::MAX)
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let err = within(
        DAY,
        "first request",
        svc.clone().oneshot(get("http://api.test/")),
    )
    .await
    .unwrap_err();
    assert_eq!(token_error(err).kind(), ErrorKind::Source);
    // Backing off (forever): fails at once with the last error, without asking the source.
    let err = within(DAY, "second request", svc.oneshot(get("http://api.test/")))
        .await
        .unwrap_err();
    assert_eq!(token_error(err).kind(), ErrorKind::Source);
    assert_eq!(calls.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// `TokenCache::refresh`
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn refresh_joins_a_fetch_in_flight_instead_of_duplicating_it() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(Duration::from_secs(10), Duration::from_secs(600)));
    let svc = BearerAuth::from_cache(open_api(), cache.clone());

    let request = tokio::spawn(svc.clone().oneshot(get("http://api.test/")));
    tokio::time::sleep(SECOND).await;
    assert_eq!(calls.count(), 1, "the request started a fetch");

    let refreshed = within(DAY, "refresh()", cache.refresh()).await.unwrap();
    assert_eq!(refreshed.access_token().secret(), "tok-1");
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.body(), "Bearer tok-1");
    assert_eq!(calls.count(), 1, "joined, not duplicated");

    // Several refreshes at once make one fetch too, and requests meanwhile keep using the
    // still-valid token.
    let (a, b, c) = tokio::join!(
        cache.refresh(),
        cache.refresh(),
        svc.clone().oneshot(get("http://api.test/"))
    );
    assert_eq!(a.unwrap().access_token().secret(), "tok-2");
    assert_eq!(b.unwrap().access_token().secret(), "tok-2");
    assert_eq!(c.unwrap().body(), "Bearer tok-1");
    assert_eq!(calls.count(), 2);
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Forced]);
    assert_eq!(send(&svc).await, "Bearer tok-2");
}

#[tokio::test(start_paused = true)]
async fn refresh_joins_a_background_refresh_in_flight() {
    let calls = Calls::default();
    let cache =
        TokenCache::builder(calls.lasting(Duration::from_secs(10), Duration::from_secs(100)))
            .expiry_skew(Duration::ZERO)
            .refresh_ahead(Duration::from_secs(20))
            .jitter(0.0)
            .build();
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    assert_eq!(send(&svc).await, "Bearer tok-1");
    // tok-1 was asked for at 0 s: due at 80 s, expires at 100 s.
    tokio::time::sleep(Duration::from_secs(85)).await;
    assert_eq!(send(&svc).await, "Bearer tok-1", "no wait in the window");
    tokio::time::sleep(SECOND).await;
    assert_eq!(calls.count(), 2, "a background refresh runs");
    let refreshed = within(DAY, "refresh()", cache.refresh()).await.unwrap();
    assert_eq!(refreshed.access_token().secret(), "tok-2");
    assert_eq!(calls.count(), 2);
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Expiring]);
}

#[tokio::test(start_paused = true)]
async fn refresh_ignores_the_failure_backoff() {
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |n| match n {
        1 => Err(io::Error::other("endpoint down")),
        n => Ok(Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(600))),
    });
    let cache = TokenCache::builder(source)
        .backoff(Duration::from_secs(60), Duration::from_secs(60))
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let err = token_error(svc.clone().oneshot(get("http://a/")).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Source);
    assert_eq!(
        err.source_as::<io::Error>().unwrap().to_string(),
        "endpoint down"
    );
    // Backing off: the next request fails at once and the source is left alone.
    let err = token_error(svc.clone().oneshot(get("http://a/")).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Source);
    assert_eq!(calls.count(), 1);
    // `refresh` does not wait for the backoff.
    let token = cache.refresh().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-2");
    assert_eq!(send(&svc).await, "Bearer tok-2");
    assert_eq!(calls.count(), 2);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_leaves_the_still_valid_token_in_use() {
    let calls = Calls::default();
    let source = calls.source(Duration::ZERO, |n| match n {
        1 => Ok(Token::new("tok-1").with_expires_in(Duration::from_secs(600))),
        _ => Err(io::Error::other("endpoint down")),
    });
    let cache = TokenCache::new(source);
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    assert_eq!(send(&svc).await, "Bearer tok-1");
    assert_eq!(cache.refresh().await.unwrap_err().kind(), ErrorKind::Source);
    // DESIGN.md: a still-valid token keeps being used while refreshes back off.
    let response = svc.clone().oneshot(get("http://a/")).await;
    assert_eq!(response.unwrap().body(), "Bearer tok-1");
    assert_eq!(calls.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Composition with tower middleware.
// ---------------------------------------------------------------------------------------------

/// Answers the mock's requests: `Bearer tok-N` with `N >= min_ok` gets 200, anything else 401.
/// Each answer comes after `delay`. Records the largest number of requests in flight at once.
fn serve_mock(
    mut handle: mock::Handle<Request<Body>, Response<String>>,
    min_ok: Arc<AtomicUsize>,
    delay: Duration,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (in_flight2, peak2) = (in_flight.clone(), peak.clone());
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let now = in_flight2.fetch_add(1, Ordering::SeqCst) + 1;
            peak2.fetch_max(now, Ordering::SeqCst);
            let seen = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let ok = seen
                .strip_prefix("Bearer tok-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= min_ok.load(Ordering::SeqCst));
            let in_flight = in_flight2.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut response = Response::new(seen);
                if !ok {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                send.send_response(response);
            });
        }
    });
    (in_flight, peak)
}

#[tokio::test(start_paused = true)]
async fn the_layer_over_buffer_and_concurrency_limit_keeps_the_limit_and_single_flight() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(SECOND, Duration::from_secs(3600)));
    let (inner, handle) = mock::pair::<Request<Body>, Response<String>>();
    let min_ok = Arc::new(AtomicUsize::new(1));
    let (_, peak) = serve_mock(handle, min_ok.clone(), Duration::from_millis(10));
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .layer(BufferLayer::new(8))
        .layer(ConcurrencyLimitLayer::new(2))
        .service(inner);

    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for request in requests {
        let response = within(DAY, "request", request).await.unwrap().unwrap();
        assert_eq!(response.body(), "Bearer tok-1");
    }
    assert_eq!(calls.count(), 1);
    assert!(peak.load(Ordering::SeqCst) <= 2, "limit kept");

    // Rejections are replayed through the same stack, still one fetch for all of them.
    min_ok.store(2, Ordering::SeqCst);
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for request in requests {
        let response = within(DAY, "replayed request", request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "Bearer tok-2");
    }
    assert_eq!(calls.count(), 2);
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Rejected]);
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "limit kept during replays"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_under_a_concurrency_limit_of_one_does_not_deadlock() {
    let calls = Calls::default();
    let (inner, handle) = mock::pair::<Request<Body>, Response<String>>();
    let min_ok = Arc::new(AtomicUsize::new(2));
    serve_mock(handle, min_ok, Duration::ZERO);
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(
            calls.lasting(SECOND, Duration::from_secs(3600)),
        ))
        .layer(ConcurrencyLimitLayer::new(1))
        .service(inner);
    let response = within(DAY, "request", svc.oneshot(get("http://api.test/")))
        .await
        .unwrap();
    assert_eq!(response.body(), "Bearer tok-2");
}

#[tokio::test(start_paused = true)]
async fn a_buffer_over_the_layer_works_its_futures_are_send() {
    let calls = Calls::default();
    let (inner, handle) = mock::pair::<Request<Body>, Response<String>>();
    serve_mock(handle, Arc::new(AtomicUsize::new(1)), Duration::ZERO);
    let svc = ServiceBuilder::new()
        .buffer(4)
        .layer(BearerAuthLayer::new(
            calls.lasting(SECOND, Duration::from_secs(3600)),
        ))
        .service(inner);
    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://api.test/"))))
        .collect();
    for request in requests {
        let response = within(DAY, "request", request).await.unwrap().unwrap();
        assert_eq!(response.body(), "Bearer tok-1");
    }
    assert_eq!(calls.count(), 1);
}

#[test]
fn the_futures_users_spawn_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let cache = TokenCache::new(StaticToken::new("tok"));
    assert_send(&cache.token());
    assert_send(&cache.refresh());
    let mut svc = BearerAuth::from_cache(open_api(), cache);
    assert_send(&svc.call(get("http://api.test/")));
}

#[tokio::test(start_paused = true)]
async fn a_replay_waits_for_the_inner_service_to_be_ready_again() {
    let calls = Calls::default();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<Body>, Response<String>, _>(
        BearerAuthLayer::new(calls.lasting(Duration::ZERO, Duration::from_secs(3600))),
    );
    // Warm the cache so the request takes the fast path.
    tokio::spawn({
        let cache = svc.get_ref().cache().clone();
        async move { cache.token().await }
    })
    .await
    .unwrap()
    .unwrap();

    handle.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let response = tokio::spawn(svc.call(get("http://api.test/")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-1");
    let mut rejected = Response::new(String::new());
    *rejected.status_mut() = StatusCode::UNAUTHORIZED;
    send.send_response(rejected);

    // The inner service has no capacity left: the replay must wait for it.
    tokio::time::sleep(SECOND).await;
    assert!(!response.is_finished());
    assert_pending!(handle.poll_request());
    assert_eq!(calls.count(), 2, "the new token is already fetched");

    handle.allow(1);
    let (req, send) = within(DAY, "replay", handle.next_request()).await.unwrap();
    assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-2");
    send.send_response(Response::new("ok".to_owned()));
    assert_eq!(response.await.unwrap().unwrap().body(), "ok");
}

#[derive(Clone)]
struct RetryErrors(usize);

impl<E> tower::retry::Policy<TokenRequest, Token, E> for RetryErrors {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut TokenRequest,
        result: &mut Result<Token, E>,
    ) -> Option<Self::Future> {
        if result.is_err() && self.0 > 0 {
            self.0 -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &TokenRequest) -> Option<TokenRequest> {
        Some(req.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_wrapped_in_retry_is_one_fetch_for_the_cache() {
    let calls = Calls::default();
    let flaky = calls.source(Duration::ZERO, |n| {
        if n < 3 {
            Err(io::Error::other(format!("attempt {n} failed")))
        } else {
            Ok(Token::new(format!("tok-{n}")))
        }
    });
    let source = ServiceBuilder::new().retry(RetryErrors(5)).service(flaky);
    let cache = TokenCache::new(source);
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    assert_eq!(send(&svc).await, "Bearer tok-3");
    assert_eq!(
        calls.count(),
        3,
        "the retry layer called the closure three times"
    );
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (1, 0), "{stats:?}");

    // A retry policy that gives up: the last error reaches the caller, typed.
    let calls = Calls::default();
    let down = calls.source(Duration::ZERO, |n| {
        Err(io::Error::other(format!("attempt {n}")))
    });
    let source = ServiceBuilder::new().retry(RetryErrors(2)).service(down);
    let svc = BearerAuth::new(open_api(), source);
    let err = token_error(svc.oneshot(get("http://a/")).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Source);
    assert_eq!(
        err.source_as::<io::Error>().unwrap().to_string(),
        "attempt 3"
    );
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_source_wrapped_in_timeout_fails_typed_and_recovers() {
    let calls = Calls::default();
    // The first call hangs for an hour, later ones answer at once.
    let slow_then_fast = calls.source(Duration::ZERO, |n| {
        Ok(Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(600)))
    });
    let hang_first = {
        let calls = calls.clone();
        tower::util::MapFuture::new(slow_then_fast, move |fut| {
            let first = calls.count() == 1;
            async move {
                if first {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                fut.await
            }
        })
    };
    let source = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(hang_first);
    let cache = TokenCache::builder(source).backoff(SECOND, SECOND).build();
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    let started = Instant::now();
    let err = token_error(svc.clone().oneshot(get("http://a/")).await.unwrap_err());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Source);
    assert!(err.source_as::<tower::timeout::error::Elapsed>().is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(send(&svc).await, "Bearer tok-2");

    // The cache's own fetch timeout is reported as `Timeout`.
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::from_secs(3600), Duration::ZERO))
        .fetch_timeout(Duration::from_secs(2))
        .build();
    let started = Instant::now();
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// `Placement::query`
// ---------------------------------------------------------------------------------------------

/// An API answering with the request target it saw and its `Cache-Control`; 401 for any
/// `access_token` other than the accepted one.
fn uri_api(
    accepted: &'static str,
    hits: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible, Future = Answer>
       + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let target = req.uri().to_string();
        let cache_control = req
            .headers()
            .get(CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let ok = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|p| p == accepted);
        let mut response = Response::new(format!("{target} | {cache_control}"));
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

#[tokio::test(start_paused = true)]
async fn the_query_placement_handles_odd_uris() {
    // A token with characters that must be percent-encoded in a query.
    let token = "a b+c/d=e&f%g";
    let encoded = "access_token=a+b%2Bc%2Fd%3De%26f%25g";
    let cases = [
        ("/path", format!("/path?{encoded}")),
        ("/path?", format!("/path?{encoded}")),
        (
            "/p?a=1&access_token=old&b=2",
            format!("/p?a=1&b=2&{encoded}"),
        ),
        ("/p?access_token=x&access_token=y", format!("/p?{encoded}")),
        ("/p?access_token", format!("/p?{encoded}")),
        ("/p?access_token=", format!("/p?{encoded}")),
        ("/p?&&a=1&&", format!("/p?a=1&{encoded}")),
        (
            "/p?ACCESS_TOKEN=1&access_tokens=2&x=access_token",
            format!("/p?ACCESS_TOKEN=1&access_tokens=2&x=access_token&{encoded}"),
        ),
        (
            "/a%20b?q=%20+x&r=%26",
            format!("/a%20b?q=%20+x&r=%26&{encoded}"),
        ),
        ("http://h.test", format!("http://h.test/?{encoded}")),
        (
            "https://user@h.test:8443/x?y=1",
            format!("https://user@h.test:8443/x?y=1&{encoded}"),
        ),
    ];
    for (uri, expected) in cases {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(StaticToken::new(token)).placement(Placement::query()))
            .service(uri_api(encoded, hits.clone()));
        let response = svc.oneshot(get(uri)).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{uri}: {}",
            response.body()
        );
        assert_eq!(response.body(), &format!("{expected} | no-store"), "{uri}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_query_placement_never_sends_a_request_without_its_token() {
    // Targets with no room for a query: the request fails typed or carries the token.
    let requests = [
        (Method::CONNECT, "h.test:443"),
        (Method::OPTIONS, "*"),
        (Method::GET, "h.test"),
    ];
    for (method, uri) in requests {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(StaticToken::new("tok")).placement(Placement::query()))
            .service(uri_api("access_token=tok", hits.clone()));
        let weird = || {
            Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(Body::default())
                .unwrap()
        };
        // Once while the token is being fetched, once with it cached.
        for warm in [false, true] {
            if warm {
                let response = svc.clone().oneshot(get("/warm")).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
            let before = hits.load(Ordering::SeqCst);
            match svc.clone().oneshot(weird()).await {
                Ok(response) => {
                    let body = response.body();
                    assert_eq!(response.status(), StatusCode::OK, "{uri}: {body}");
                    assert!(body.contains("access_token=tok"), "{uri}");
                }
                Err(err) => {
                    assert_eq!(token_error(err).kind(), ErrorKind::InvalidToken, "{uri}");
                    let sent = hits.load(Ordering::SeqCst) - before;
                    assert_eq!(sent, 0, "{uri} sent without its token (warm: {warm})");
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_replay_with_the_query_placement_carries_only_the_new_token() {
    let calls = Calls::default();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(calls.lasting(Duration::ZERO, Duration::from_secs(600)))
                .placement(Placement::query()),
        )
        .service(uri_api("access_token=tok-2", hits.clone()));
    let response = svc.oneshot(get("/search?q=1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "/search?q=1&access_token=tok-2 | no-store");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// `CacheStats`
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cache_stats_count_what_happened() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(SECOND, Duration::from_secs(3600)));
    let min_ok = Arc::new(AtomicUsize::new(1));
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = BearerAuth::from_cache(api(min_ok.clone(), hits.clone()), cache.clone());
    let stats = |f: u64, ff: u64, w: u64, rj: u64, rp: u64| {
        let s = cache.stats();
        assert_eq!(
            (
                s.fetches,
                s.fetch_failures,
                s.waits,
                s.rejections,
                s.replays
            ),
            (f, ff, w, rj, rp),
            "{s:?}"
        );
    };
    stats(0, 0, 0, 0, 0);

    // Five requests on an empty cache: one fetch, five waits.
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("http://a/"))))
        .collect();
    for request in requests {
        request.await.unwrap().unwrap();
    }
    stats(1, 0, 5, 0, 0);

    // Cached: nothing waits.
    send(&svc).await;
    stats(1, 0, 5, 0, 0);

    // tok-1 is rejected: one rejection, one fetch, one wait, one replay.
    min_ok.store(2, Ordering::SeqCst);
    assert_eq!(send(&svc).await, "Bearer tok-2");
    stats(2, 0, 6, 1, 1);

    // `insufficient_scope` and 403 are neither rejections nor replayed.
    let hits_before = hits.load(Ordering::SeqCst);
    let r = svc
        .clone()
        .oneshot(with_header(get("http://a/"), "x-answer", "scope"));
    assert_eq!(r.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = svc
        .clone()
        .oneshot(with_header(get("http://a/"), "x-answer", "forbidden"));
    assert_eq!(r.await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        hits_before + 2,
        "sent once each"
    );
    stats(2, 0, 6, 1, 1);

    // A replay that is rejected too, once the rejection interval since tok-1's rejection has
    // passed: two rejections, one replay, and its answer returned.
    tokio::time::advance(Duration::from_secs(10)).await;
    let r = svc
        .clone()
        .oneshot(with_header(get("http://a/"), "x-answer", "reject"));
    assert_eq!(r.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hits.load(Ordering::SeqCst), hits_before + 4);
    stats(3, 0, 7, 3, 2);
    // The token the replay carried was fetched because of a rejection moments ago: it is kept
    // (counted), not dropped for a fourth fetch.
    assert_eq!(cache.stats().kept_rejections, 1);
    assert_eq!(send(&svc).await, "Bearer tok-3");
    stats(3, 0, 7, 3, 2);

    // A token that cannot be a header value counts as a failed fetch.
    let bad = TokenCache::new(StaticToken::new("bad\r\ntoken"));
    assert_eq!(
        bad.token().await.unwrap_err().kind(),
        ErrorKind::InvalidToken
    );
    let s = bad.stats();
    assert_eq!((s.fetches, s.fetch_failures, s.waits), (1, 1, 1), "{s:?}");
}

// ---------------------------------------------------------------------------------------------
// Documented details that are easy to get wrong.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_fetch_after_an_unreplayed_rejection_says_rejected() {
    let calls = Calls::default();
    let min_ok = Arc::new(AtomicUsize::new(2));
    let svc = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(calls.lasting(Duration::ZERO, Duration::from_secs(600)))
                .without_replay(),
        )
        .service(api(min_ok, Arc::default()));
    let response = svc.clone().oneshot(get("http://a/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(send(&svc).await, "Bearer tok-2");
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Rejected]);
}

#[tokio::test(start_paused = true)]
async fn a_token_is_used_for_three_eighths_of_its_usable_life_whatever_the_jitter() {
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::ZERO, Duration::from_secs(100)))
        .expiry_skew(Duration::ZERO)
        .refresh_ahead(Duration::MAX)
        .jitter(1.0)
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache.clone());
    for round in 1..=20 {
        cache.refresh().await.unwrap();
        let fetches = calls.count();
        // Usable life 100 s; 3/8 of it is 37.5 s.
        tokio::time::sleep(Duration::from_secs(37)).await;
        send(&svc).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            calls.count(),
            fetches,
            "round {round}: refreshed before 3/8 of its life"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn advancing_the_paused_clock_past_expiry_then_yielding_is_enough() {
    // DESIGN.md: tests use `pause()` and `advance()`; the cache's docs ask for one yield after
    // `advance()`, so that the token's timer task runs before the next request.
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::ZERO, Duration::from_secs(100)))
        .expiry_skew(Duration::ZERO)
        .refresh_ahead(Duration::ZERO)
        .jitter(0.0)
        .build();
    let svc = BearerAuth::from_cache(open_api(), cache);
    assert_eq!(send(&svc).await, "Bearer tok-1");
    tokio::time::advance(Duration::from_secs(101)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        send(&svc).await,
        "Bearer tok-2",
        "an expired token was sent"
    );
}

#[test]
fn a_cache_outliving_its_runtime_still_fetches_on_another() {
    let calls = Calls::default();
    let cache = TokenCache::new(calls.lasting(Duration::ZERO, Duration::from_secs(600)));

    // Runtime 1 starts a fetch and shuts down before the fetch task ever runs.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let mut token = std::pin::pin!(cache.token());
        let poll = std::future::poll_fn(|cx| Poll::Ready(token.as_mut().poll(cx))).await;
        assert!(poll.is_pending());
    });
    drop(first);

    // Runtime 2 gets a token.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        let token = within(DAY, "token() on a new runtime", async {
            loop {
                match cache.token().await {
                    Ok(token) => break token,
                    // A cancelled fetch may be reported once; the next call must fetch again.
                    Err(err) if err.kind() == ErrorKind::Cancelled => {
                        tokio::time::sleep(SECOND).await;
                    }
                    Err(err) => panic!("{err:?}"),
                }
            }
        })
        .await;
        assert!(token.access_token().secret().starts_with("tok-"));
    });
}

#[tokio::test(start_paused = true)]
async fn a_poll_ready_then_call_pair_never_hits_an_unready_clone() {
    // tower-test's mock panics when `call` is made on a clone that was not polled ready; the
    // layer clones its inner service on the waiting and replay paths.
    let calls = Calls::default();
    let (inner, handle) = mock::pair::<Request<Body>, Response<String>>();
    serve_mock(handle, Arc::new(AtomicUsize::new(2)), Duration::ZERO);
    let mut svc = BearerAuth::new(inner, calls.lasting(SECOND, Duration::from_secs(600)));
    let mut futures = Vec::new();
    for _ in 0..5 {
        svc.ready().await.unwrap();
        futures.push(tokio::spawn(svc.call(get("http://a/"))));
    }
    for future in futures {
        let response = within(DAY, "request", future).await.unwrap().unwrap();
        assert_eq!(response.body(), "Bearer tok-2");
    }
    assert_eq!(calls.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Real threads, real time.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_and_rejections_on_two_threads_are_single_flight() {
    let calls = Calls::default();
    let cache =
        TokenCache::new(calls.lasting(Duration::from_millis(50), Duration::from_secs(3600)));
    let min_ok = Arc::new(AtomicUsize::new(1));
    let hits = Arc::new(AtomicUsize::new(0));
    // Answers take 20 ms, so that the requests of a wave are in flight together.
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .map_future(|answer| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer.await
        })
        .service(api(min_ok.clone(), hits.clone()));

    let run = |svc: BearerAuth<_>| async move {
        let requests: Vec<_> = (0..1000)
            .map(|_| tokio::spawn(svc.clone().oneshot(get("http://a/"))))
            .collect();
        let mut bodies = Vec::new();
        for request in requests {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            bodies.push(response.into_body());
        }
        bodies
    };

    let bodies = tokio::time::timeout(Duration::from_secs(30), run(svc.clone()))
        .await
        .expect("cold start did not finish");
    assert!(bodies.iter().all(|b| b == "Bearer tok-1"));
    assert_eq!(calls.count(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1000);

    // Every request now carries a rejected token: concurrent 401s, one refresh.
    min_ok.store(2, Ordering::SeqCst);
    let bodies = tokio::time::timeout(Duration::from_secs(30), run(svc.clone()))
        .await
        .expect("rejections did not finish");
    assert!(bodies.iter().all(|b| b == "Bearer tok-2"));
    assert_eq!(calls.count(), 2, "single flight for concurrent rejections");
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Rejected]);
    let stats = cache.stats();
    assert!(
        stats.rejections >= 2,
        "rejections were concurrent: {stats:?}"
    );
    assert_eq!(stats.rejections, stats.replays, "{stats:?}");
    assert_eq!(hits.load(Ordering::SeqCst) as u64, 2000 + stats.replays);
}

#[test]
fn a_token_fetched_on_a_runtime_that_shut_down_still_expires() {
    let calls = Calls::default();
    let cache = TokenCache::builder(calls.lasting(Duration::ZERO, Duration::from_secs(100)))
        .expiry_skew(Duration::ZERO)
        .refresh_ahead(Duration::ZERO)
        .jitter(0.0)
        .build();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = first.block_on(cache.token()).unwrap();
    assert_eq!(token.access_token().secret(), "tok-1");
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        tokio::time::sleep(Duration::from_secs(200)).await;
        let token = within(DAY, "token()", cache.token()).await.unwrap();
        assert_eq!(
            token.access_token().secret(),
            "tok-2",
            "tok-1 expired 100 s ago"
        );
    });
}

#[tokio::test(start_paused = true)]
async fn a_grpc_unauthenticated_answer_is_a_rejection_and_is_replayed() {
    let calls = Calls::default();
    let hits = Arc::new(AtomicUsize::new(0));
    let grpc = {
        let hits = hits.clone();
        service_fn(move |req: Request<Body>| {
            hits.fetch_add(1, Ordering::SeqCst);
            let status = if req.headers()[AUTHORIZATION] == "Bearer tok-1" {
                "16"
            } else {
                "0"
            };
            let mut response = Response::new(String::new());
            // gRPC runs over HTTP/2 only, and the layer looks for its status there only.
            *response.version_mut() = http::Version::HTTP_2;
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static(status));
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let cache = TokenCache::new(calls.lasting(Duration::ZERO, Duration::from_secs(600)));
    let svc = BearerAuth::from_cache(grpc, cache.clone());
    let response = svc
        .oneshot(get("http://grpc.test/pkg.Svc/Method"))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(calls.reasons(), [Reason::Initial, Reason::Rejected]);
    assert_eq!(cache.stats().replays, 1);
}
