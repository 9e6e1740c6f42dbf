//! Soak: 1,000,000 requests through one layer on Tokio's paused clock.
//!
//! A fixed-seed xorshift generator decides, per request, whether the inner service answers
//! 401 to its first attempt (2 %), whether it takes a few virtual milliseconds to answer, and
//! whether the caller gives up on it (about 1 %: after its first poll, or after a random
//! timeout). Every ~100 requests the clock moves forward by 2 to 8 s, so the 60-second tokens
//! are refreshed ahead of expiry every few hundred requests; every 50 batches the clock jumps
//! past a token's whole life while nothing is in flight, so a batch of 1,000 requests queues up
//! behind one fetch. Every 37th fetch fails, so backoff and its errors are exercised too.
//!
//! Checked at the end: every request came back (answered, failed with a typed error, or
//! cancelled; none hung); the inner service saw each request at most twice, twice only after
//! its own 401; no request carried an expired or unknown token; the source was called no more
//! than expiries and rejections explain; the cache's counters agree with what the inner
//! service and the source counted; and nothing grows with the number of requests: no task is
//! left, the live `Token`s and the runtime's tasks stay bounded, and the source's state is
//! referenced as often as before the first request.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceExt};
use tower_bearer::{
    source_fn, BearerAuthLayer, ErrorKind, Reason, Token, TokenCache, TokenRequest,
};

const REQUESTS: u32 = 1_000_000;
const BATCH: u32 = 1_000;
/// After this many spawns the driver sleeps for a virtual millisecond, so that the requests
/// spawned so far run and overlap, and fetches and slow answers in flight can finish.
const SPAWN_BURST: u32 = 50;
const LIFETIME: Duration = Duration::from_secs(60);
const FETCH_LATENCY: Duration = Duration::from_millis(1);
/// Every this many calls to the source, one fails.
const FAIL_EVERY: u64 = 37;
/// A request still pending after this long (virtual time) counts as hung.
const HANG: Duration = Duration::from_secs(3600);
/// Real time the whole soak may take (about 15 s in a debug build on 2 cores).
const WALL_LIMIT: Duration = Duration::from_secs(600);

/// xorshift64*: deterministic, good enough to pick test cases.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Counts the live copies of the tokens the source handed out: attached to each token with
/// `Token::with_extension`, so every clone of a token clones one of these.
#[derive(Debug)]
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Clone for Live {
    fn clone(&self) -> Self {
        Self::new(&self.0)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The token source's state: `tok-<n>` for the n-th call, the stated expiry of each, and why
/// each was asked for.
#[derive(Default)]
struct Issuer {
    calls: AtomicU64,
    failures: AtomicU64,
    /// Stated expiry of `tok-<n>`, by `n`; `None` for calls that failed.
    expiries: Mutex<Vec<Option<Instant>>>,
    reasons: Mutex<Vec<Reason>>,
    live: Arc<AtomicUsize>,
}

impl Issuer {
    fn valid(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(n) = header
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer tok-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        let expiries = self.expiries.lock().unwrap();
        matches!(expiries.get(n), Some(Some(expiry)) if Instant::now() < *expiry)
    }

    fn count(&self, reason: Reason) -> usize {
        let reasons = self.reasons.lock().unwrap();
        reasons.iter().filter(|r| **r == reason).count()
    }
}

/// What the inner service counts.
struct Server {
    /// How many times the inner service was called with each request id.
    seen: Vec<AtomicU8>,
    calls: AtomicU64,
    unauthorized: AtomicU64,
    /// Requests that carried no token, an unknown one, or one past its stated expiry.
    bad_token: AtomicU64,
    issuer: Arc<Issuer>,
}

/// What the driver decided for one request, carried in its extensions (which a replay copies).
#[derive(Clone, Copy, Debug)]
struct Plan {
    id: u32,
    /// The inner service answers 401 to the first attempt.
    reject: bool,
    /// Virtual milliseconds the inner service takes to answer.
    latency_ms: u64,
    cancel: Cancel,
}

#[derive(Clone, Copy, Debug)]
enum Cancel {
    Never,
    /// The response future is dropped if its first poll does not finish it.
    FirstPoll,
    /// The response future is dropped after this many virtual milliseconds.
    After(u64),
}

#[derive(Debug)]
enum Outcome {
    Answered(StatusCode),
    Failed(Option<ErrorKind>),
    Cancelled,
    Hung,
}

async fn request<S>(mut svc: S, plan: Plan) -> (Plan, Outcome)
where
    S: Service<Request<()>, Response = Response<u32>, Error = BoxError>,
{
    let work = async {
        let req = Request::builder().extension(plan).body(()).unwrap();
        if let Err(error) = svc.ready().await {
            return Outcome::Failed(kind(&error));
        }
        let future = svc.call(req);
        let result = match plan.cancel {
            Cancel::Never => future.await,
            Cancel::FirstPoll => {
                let mut future = pin!(future);
                let first = std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
                    Poll::Ready(result) => Poll::Ready(Some(result)),
                    Poll::Pending => Poll::Ready(None),
                })
                .await;
                match first {
                    Some(result) => result,
                    None => return Outcome::Cancelled,
                }
            }
            Cancel::After(ms) => {
                match tokio::time::timeout(Duration::from_millis(ms), future).await {
                    Ok(result) => result,
                    Err(_) => return Outcome::Cancelled,
                }
            }
        };
        match result {
            Ok(response) => {
                assert_eq!(*response.body(), plan.id, "a response for another request");
                Outcome::Answered(response.status())
            }
            Err(error) => Outcome::Failed(kind(&error)),
        }
    };
    let outcome = tokio::time::timeout(HANG, work)
        .await
        .unwrap_or(Outcome::Hung);
    (plan, outcome)
}

fn kind(error: &BoxError) -> Option<ErrorKind> {
    error
        .downcast_ref::<tower_bearer::Error>()
        .map(tower_bearer::Error::kind)
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    unauthorized: u64,
    other_status: u64,
    source_errors: u64,
    other_errors: u64,
    cancelled: u64,
    hung: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok
            + self.unauthorized
            + self.other_status
            + self.source_errors
            + self.other_errors
            + self.cancelled
            + self.hung
    }
}

#[tokio::test(start_paused = true)]
async fn one_million_requests() {
    let wall = std::time::Instant::now();
    let started = Instant::now();

    let issuer = Arc::new(Issuer::default());
    let source = {
        let issuer = issuer.clone();
        source_fn(move |req: TokenRequest| {
            let issuer = issuer.clone();
            async move {
                let n = issuer.calls.fetch_add(1, Ordering::SeqCst);
                issuer.reasons.lock().unwrap().push(req.reason());
                tokio::time::sleep(FETCH_LATENCY).await;
                if n % FAIL_EVERY == FAIL_EVERY - 1 {
                    issuer.failures.fetch_add(1, Ordering::SeqCst);
                    issuer.expiries.lock().unwrap().push(None);
                    return Err(io::Error::other("token endpoint unavailable"));
                }
                let expiry = Instant::now() + LIFETIME;
                issuer.expiries.lock().unwrap().push(Some(expiry));
                Ok(Token::new(format!("tok-{n}"))
                    .with_expires_in(LIFETIME)
                    .with_extension(Live::new(&issuer.live)))
            }
        })
    };
    // The server refuses 2 % of first attempts at random, every few virtual milliseconds: with
    // the default rejection interval most of them would be returned without a replay (an API
    // that refuses fresh tokens). This soak is about the replay machinery, so the limit is off.
    let cache = TokenCache::builder(source)
        .backoff(Duration::from_millis(2), Duration::from_millis(20))
        .rejection_interval(Duration::ZERO)
        .build();
    let layer = BearerAuthLayer::from_cache(cache.clone());

    let server = Arc::new(Server {
        seen: (0..REQUESTS).map(|_| AtomicU8::new(0)).collect(),
        calls: AtomicU64::new(0),
        unauthorized: AtomicU64::new(0),
        bad_token: AtomicU64::new(0),
        issuer: issuer.clone(),
    });
    let inner = {
        let server = server.clone();
        service_fn(move |req: Request<()>| {
            let plan = *req.extensions().get::<Plan>().expect("the plan is copied");
            let attempt = server.seen[plan.id as usize].fetch_add(1, Ordering::SeqCst) + 1;
            server.calls.fetch_add(1, Ordering::Relaxed);
            // Checked when the request is sent, as a server would.
            let valid = server.issuer.valid(req.headers().get(AUTHORIZATION));
            if !valid {
                server.bad_token.fetch_add(1, Ordering::SeqCst);
            }
            let server = server.clone();
            async move {
                if plan.latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
                }
                let status = if !valid || (plan.reject && attempt == 1) {
                    // Counted when the layer sees it: the same poll.
                    server.unauthorized.fetch_add(1, Ordering::SeqCst);
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::OK
                };
                let response = Response::builder().status(status).body(plan.id).unwrap();
                Ok::<_, io::Error>(response)
            }
        })
    };
    let svc = tower::Layer::layer(&layer, inner);
    // The test's handle, the server's and the source the cache keeps.
    let baseline = Arc::strong_count(&issuer);

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut set = JoinSet::new();
    let mut tally = Tally::default();
    let mut planned_rejects = 0u64;
    let mut planned_cancels = 0u64;
    let (mut small_advances, mut big_advances) = (0u64, 0u64);
    let (mut max_live, mut max_tasks) = (0usize, 0usize);
    let metrics = tokio::runtime::Handle::current().metrics();

    for batch in 0..REQUESTS / BATCH {
        if batch % 50 == 49 {
            // Nothing in flight: every token is past its life; the whole batch waits for one
            // fetch.
            tokio::time::advance(LIFETIME + Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
            big_advances += 1;
        }
        for i in 0..BATCH {
            if rng.chance(10) {
                // Let the requests already spawned go first, then move the clock by less than
                // any refresh-ahead window (so a token's timer always gets its turn before the
                // token could expire unnoticed), then let the timers run.
                tokio::task::yield_now().await;
                tokio::time::advance(Duration::from_millis(2_000 + rng.below(6_000))).await;
                tokio::task::yield_now().await;
                small_advances += 1;
            }
            let reject = rng.chance(20);
            let latency_ms = if rng.chance(100) {
                1 + rng.below(20)
            } else {
                0
            };
            let cancel = match rng.below(1000) {
                0..=4 => Cancel::FirstPoll,
                5..=9 => Cancel::After(rng.below(30)),
                _ => Cancel::Never,
            };
            planned_rejects += u64::from(reject);
            planned_cancels += u64::from(!matches!(cancel, Cancel::Never));
            let plan = Plan {
                id: batch * BATCH + i,
                reject,
                latency_ms,
                cancel,
            };
            set.spawn(request(svc.clone(), plan));
            if i % SPAWN_BURST == SPAWN_BURST - 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        while let Some(joined) = set.join_next().await {
            let (plan, outcome) = joined.expect("a request task panicked");
            let seen = server.seen[plan.id as usize].load(Ordering::SeqCst);
            assert!(seen <= 2, "{plan:?} reached the inner service {seen} times");
            match outcome {
                Outcome::Answered(StatusCode::OK) => {
                    tally.ok += 1;
                    let expected = if plan.reject { 2 } else { 1 };
                    assert_eq!(seen, expected, "{plan:?}");
                }
                Outcome::Answered(StatusCode::UNAUTHORIZED) => tally.unauthorized += 1,
                Outcome::Answered(_) => tally.other_status += 1,
                Outcome::Failed(Some(ErrorKind::Source)) => {
                    tally.source_errors += 1;
                    // Failed before being sent, or after its 401 while waiting to replay.
                    assert!(seen <= 1, "{plan:?} failed after {seen} attempts");
                }
                Outcome::Failed(kind) => {
                    tally.other_errors += 1;
                    eprintln!("{plan:?} failed: {kind:?}");
                }
                Outcome::Cancelled => tally.cancelled += 1,
                Outcome::Hung => tally.hung += 1,
            }
            if seen == 2 {
                assert!(plan.reject, "{plan:?} was replayed without a 401");
            }
        }
        max_live = max_live.max(issuer.live.load(Ordering::SeqCst));
        max_tasks = max_tasks.max(metrics.num_alive_tasks());
        // `HANG` is virtual time: it catches a deadlock, not a livelock. This bounds real time.
        assert!(
            wall.elapsed() < WALL_LIMIT,
            "batch {batch} still running after {:?}",
            wall.elapsed()
        );
    }

    let elapsed = started.elapsed();
    let stats = cache.stats();
    let calls = issuer.calls.load(Ordering::SeqCst);
    let failures = issuer.failures.load(Ordering::SeqCst);
    let unauthorized = server.unauthorized.load(Ordering::SeqCst);
    let inner_calls = server.calls.load(Ordering::SeqCst);
    let twice = server
        .seen
        .iter()
        .filter(|seen| seen.load(Ordering::SeqCst) == 2)
        .count() as u64;
    let reasons = [
        Reason::Initial,
        Reason::Expiring,
        Reason::Expired,
        Reason::Rejected,
        Reason::Forced,
    ]
    .map(|reason| (reason, issuer.count(reason)));
    eprintln!(
        "soak: {REQUESTS} requests in {:?} (wall), {elapsed:?} virtual; {tally:?}; \
         planned 401s {planned_rejects}, cancels {planned_cancels}; advances {small_advances} + \
         {big_advances}; source calls {calls} ({failures} failed) {reasons:?}; inner calls \
         {inner_calls}, 401s {unauthorized}; {stats:?}; max live tokens {max_live}, max tasks \
         {max_tasks}",
        wall.elapsed()
    );

    // Every request came back, and none hung.
    assert_eq!(tally.total(), u64::from(REQUESTS), "{tally:?}");
    assert_eq!(tally.hung, 0, "{tally:?}");
    assert_eq!(tally.other_errors, 0, "{tally:?}");
    assert_eq!(tally.other_status, 0, "{tally:?}");
    // A 401 is replayed, and the replay carries a fresh token that the server accepts.
    assert_eq!(tally.unauthorized, 0, "{tally:?}");
    assert!(tally.cancelled > 0 && tally.source_errors > 0, "{tally:?}");

    // No request was sent without a token, with an unknown one or with an expired one.
    assert_eq!(server.bad_token.load(Ordering::SeqCst), 0);

    // The cache's counters agree with what the inner service and the source saw.
    assert_eq!(stats.fetches, calls);
    assert_eq!(stats.fetch_failures, failures);
    assert_eq!(stats.rejections, unauthorized);
    assert_eq!(
        stats.replays, twice,
        "each replay reached the inner service"
    );
    assert_eq!(stats.replay_rejections, 0);
    assert!(stats.replays <= stats.rejections);
    assert!(
        stats.hits + stats.waits >= inner_calls,
        "every request that was sent got its token from the cache: {stats:?}, {inner_calls} sent"
    );

    // Source calls: one per rejection at most, plus what time explains. A token is used for at
    // least 3/8 of its usable life (45 s) before it is refreshed, and each clock jump ends at
    // most one token.
    let successes = calls - failures;
    let min_life = Duration::from_secs(45) * 3 / 8;
    let by_time = (elapsed.as_secs_f64() / min_life.as_secs_f64()).ceil() as u64;
    let bound = 1 + unauthorized + by_time + big_advances;
    assert!(
        successes <= bound,
        "{successes} tokens fetched; at most {bound} explained ({unauthorized} rejections, \
         {by_time} by time, {big_advances} jumps)"
    );
    let rejected_fetches = issuer.count(Reason::Rejected) as u64;
    assert!(
        rejected_fetches <= unauthorized + failures,
        "{rejected_fetches} fetches for rejections"
    );
    assert!(rejected_fetches > 0, "{reasons:?}");
    assert!(issuer.count(Reason::Expiring) > 0, "{reasons:?}");
    assert!(issuer.count(Reason::Expired) > 0, "{reasons:?}");
    assert_eq!(issuer.count(Reason::Initial), 1, "one initial fetch");

    // Nothing grows with the number of requests.
    assert!(max_live <= 2, "{max_live} tokens alive at once");
    assert!(max_tasks <= 8, "{max_tasks} tasks alive after a batch");
    assert_eq!(
        Arc::strong_count(&issuer),
        baseline,
        "no fetch holds the source"
    );
    drop(svc);
    drop(layer);
    drop(cache);
    tokio::task::yield_now().await;
    assert_eq!(
        issuer.live.load(Ordering::SeqCst),
        0,
        "the cache kept a token"
    );
    assert_eq!(Arc::strong_count(&issuer), 2, "the test's and the server's");
}
