//! The metrics of the feature `metrics`: each one documented in the table of `src/metrics.rs`
//! (and of the README) moves as the table says, carries only the documented labels, and the
//! table, the README and the names the crate records are the same set. Each test records into a
//! recorder of its own (`metrics::with_local_recorder` around a current-thread runtime with a
//! paused clock, so that every task of the test records on the test's thread). With the feature
//! `redis`, the store metrics are recorded by a shared level on a real `redis-server` (started
//! as `tests/shared.rs` starts it), on a clock that runs.

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder};
use metrics::{SharedString, Unit};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_bearer::grpc::RejectOnTrailersLayer;
use tower_bearer::metrics as names;
use tower_bearer::{source_fn, BearerAuthLayer, ErrorKind, Token, TokenCache, TokenRequest};
use tower_test::mock;

use support::get;

type Body = http_body_util::Full<Bytes>;

const SECOND: Duration = Duration::from_secs(1);

/// One series: a name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Counter,
    Histogram,
}

/// A recorder that keeps every counter and histogram sample, by series.
#[derive(Default)]
struct Recorded {
    counters: Mutex<HashMap<Series, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Series, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn series(key: &Key) -> Series {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|label| (label.key().to_owned(), label.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(counters.entry(series(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        panic!("the crate records no gauge, yet registered {key:?}");
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(series(key)).or_default().clone())
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

impl Recorded {
    /// The counter with exactly these labels (0 if never recorded).
    fn counter(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        let key = (name.to_owned(), labels(with));
        self.counters
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// The counter summed over all its label sets.
    fn total(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The samples of the histogram with exactly these labels.
    fn samples(&self, name: &str, with: &[(&str, &str)]) -> Vec<f64> {
        let key = (name.to_owned(), labels(with));
        self.histograms
            .lock()
            .unwrap()
            .get(&key)
            .map_or_else(Vec::new, |s| s.0.lock().unwrap().clone())
    }

    /// Every series recorded so far (counters at zero included), with its kind.
    fn seen(&self) -> BTreeMap<Series, Kind> {
        let mut seen = BTreeMap::new();
        for key in self.counters.lock().unwrap().keys() {
            seen.insert(key.clone(), Kind::Counter);
        }
        for key in self.histograms.lock().unwrap().keys() {
            seen.insert(key.clone(), Kind::Histogram);
        }
        seen
    }

    /// Everything recorded, to compare before and after something that must record nothing.
    fn snapshot(&self) -> (BTreeMap<Series, u64>, BTreeMap<Series, usize>) {
        let counters = self.counters.lock().unwrap();
        let histograms = self.histograms.lock().unwrap();
        (
            counters
                .iter()
                .map(|(k, c)| (k.clone(), c.load(Ordering::SeqCst)))
                .collect(),
            histograms
                .iter()
                .map(|(k, s)| (k.clone(), s.0.lock().unwrap().len()))
                .collect(),
        )
    }
}

/// Runs `scenario` on a paused current-thread runtime that records into a new recorder, and
/// returns that recorder with what the scenario returned.
fn run<F, T>(scenario: impl FnOnce(Arc<Recorded>) -> F) -> Arc<Recorded>
where
    F: Future<Output = T>,
{
    run_on(true, scenario)
}

/// As [`run`], on a clock that runs: a real server (Redis) answers in real time, and a paused
/// clock would expire the store timeout while the runtime waits for its answer.
fn run_on<F, T>(paused: bool, scenario: impl FnOnce(Arc<Recorded>) -> F) -> Arc<Recorded>
where
    F: Future<Output = T>,
{
    let recorded = Arc::new(Recorded::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    metrics::with_local_recorder(&*recorded, || {
        runtime.block_on(scenario(recorded.clone()));
        drop(runtime);
    });
    recorded
}

fn approx(samples: &[f64], expected: &[f64]) -> bool {
    samples.len() == expected.len()
        && samples
            .iter()
            .zip(expected)
            .all(|(s, e)| (s - e).abs() < 1e-3)
}

/// A source that answers after `delay` with `tok-1`, `tok-2`, … each lasting `lifetime`.
fn numbered(
    delay: Duration,
    lifetime: Duration,
) -> (impl tower_bearer::TokenSource, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let source = source_fn(move |_: TokenRequest| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Token::new(format!("tok-{n}")).with_expires_in(lifetime))
        }
    });
    (source, calls)
}

/// An API that accepts only the tokens numbered at least `min_ok`.
fn api(
    min_ok: usize,
) -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible, Future = impl Send>
       + Clone
       + Send {
    service_fn(move |req: Request<Body>| {
        let seen = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let n: usize = seen
            .strip_prefix("Bearer tok-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut response = Response::new(seen);
        if n < min_ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

fn status(code: StatusCode) -> Response<String> {
    let mut response = Response::new(String::new());
    *response.status_mut() = code;
    response
}

// The scenarios: each returns its recorder, so that the last test can check that together they
// move every documented metric.

fn first_fetch_then_cached_path() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, _) = numbered(Duration::from_millis(200), Duration::from_secs(3600));
        let layer = BearerAuthLayer::new(source);
        let mut svc = layer.layer(api(1));
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(get("http://api.test/"))
            .await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);

        let fetches = names::TOKEN_FETCHES;
        assert_eq!(recorded.counter(fetches, &[("reason", "initial")]), 1);
        assert_eq!(recorded.total(fetches), 1);
        let took = recorded.samples(names::TOKEN_FETCH_DURATION, &[("outcome", "success")]);
        assert!(approx(&took, &[0.2]), "fetch latency {took:?}");
        assert_eq!(recorded.counter(names::TOKEN_WAITS, &[]), 1);
        let waited = recorded.samples(names::TOKEN_WAIT_DURATION, &[]);
        assert!(approx(&waited, &[0.2]), "wait {waited:?}");

        // The cached path, through fresh clones and the same one: nothing is recorded.
        let before = recorded.snapshot();
        for _ in 0..100 {
            let response = svc
                .ready()
                .await
                .unwrap()
                .call(get("http://api.test/"))
                .await;
            assert_eq!(response.unwrap().status(), StatusCode::OK);
            let response = svc.clone().oneshot(get("http://api.test/")).await;
            assert_eq!(response.unwrap().status(), StatusCode::OK);
            layer.cache().token().await.unwrap();
        }
        assert_eq!(
            recorded.snapshot(),
            before,
            "the cached path recorded something"
        );
        assert_eq!(layer.cache().stats().hits, 300);
    })
}

fn refresh_reasons() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, _) = numbered(Duration::ZERO, Duration::from_secs(100));
        let cache = TokenCache::builder(source)
            .expiry_skew(Duration::ZERO)
            .refresh_ahead(Duration::from_secs(10))
            .jitter(0.0)
            .build();
        cache.token().await.unwrap();
        // Inside the refresh window: one background refresh, no wait.
        tokio::time::sleep(Duration::from_secs(95)).await;
        cache.token().await.unwrap();
        tokio::time::sleep(SECOND).await;
        assert_eq!(cache.stats().fetches, 2);
        // Past the new token's life with no request: the next one waits for an `expired` fetch.
        tokio::time::sleep(Duration::from_secs(200)).await;
        cache.token().await.unwrap();
        cache.refresh().await.unwrap();

        let fetches = names::TOKEN_FETCHES;
        for reason in ["initial", "expiring", "expired", "forced"] {
            assert_eq!(
                recorded.counter(fetches, &[("reason", reason)]),
                1,
                "{reason}"
            );
        }
        assert_eq!(recorded.total(fetches), 4);
        // The `initial` and `expired` fetches were waited for, and so was the forced refresh.
        assert_eq!(recorded.counter(names::TOKEN_WAITS, &[]), 3);
        assert_eq!(cache.stats().waits, 3);
    })
}

fn failures_and_backoff() -> Arc<Recorded> {
    run(|recorded| async move {
        let failing = source_fn(|_: TokenRequest| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Token, _>(io::Error::other("token endpoint down"))
        });
        let cache = TokenCache::builder(failing)
            .backoff(Duration::from_secs(10), Duration::from_secs(60))
            .build();
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Source);
        // Within the backoff: refused at once, without a fetch.
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Source);
        let failures = names::TOKEN_FETCH_FAILURES;
        assert_eq!(recorded.counter(failures, &[("kind", "source")]), 1);
        assert_eq!(recorded.counter(names::BACKOFF_REFUSALS, &[]), 1);
        assert_eq!(recorded.total(names::TOKEN_FETCHES), 1);
        let took = recorded.samples(names::TOKEN_FETCH_DURATION, &[("outcome", "failure")]);
        assert!(approx(&took, &[0.05]), "failed fetch latency {took:?}");

        let slow = source_fn(|_: TokenRequest| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Token::new("late"))
        });
        let cache = TokenCache::builder(slow).fetch_timeout(SECOND).build();
        assert_eq!(cache.token().await.unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(recorded.counter(failures, &[("kind", "timeout")]), 1);
        let took = recorded.samples(names::TOKEN_FETCH_DURATION, &[("outcome", "failure")]);
        assert!(approx(&took, &[0.05, 1.0]), "timeout latency {took:?}");

        let unstampable =
            source_fn(|_: TokenRequest| async { Ok::<_, Infallible>(Token::new("line\nbreak")) });
        let cache = TokenCache::new(unstampable);
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidToken);
        assert_eq!(recorded.counter(failures, &[("kind", "invalid_token")]), 1);
        assert_eq!(recorded.total(failures), 3);
    })
}

fn rejection_and_replay() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, calls) = numbered(Duration::ZERO, Duration::from_secs(3600));
        let svc = BearerAuthLayer::new(source).layer(api(2));
        let response = svc.oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "Bearer tok-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let rejections = names::REJECTIONS;
        assert_eq!(recorded.counter(rejections, &[("outcome", "dropped")]), 1);
        assert_eq!(recorded.total(rejections), 1);
        assert_eq!(recorded.counter(names::REPLAYS, &[]), 1);
        assert_eq!(recorded.counter(names::REPLAY_REJECTIONS, &[]), 0);
        let fetches = names::TOKEN_FETCHES;
        assert_eq!(recorded.counter(fetches, &[("reason", "rejected")]), 1);
        // The first request waited twice: for its first token and for the one to replay with.
        assert_eq!(recorded.counter(names::TOKEN_WAITS, &[]), 2);
    })
}

fn rejected_replay() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, _) = numbered(Duration::ZERO, Duration::from_secs(3600));
        let svc = BearerAuthLayer::new(source).layer(api(usize::MAX));
        let response = svc.oneshot(get("http://api.test/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        // The replay's fresh token was refused moments after a drop: kept, not dropped again.
        let rejections = names::REJECTIONS;
        assert_eq!(recorded.counter(rejections, &[("outcome", "dropped")]), 1);
        assert_eq!(recorded.counter(rejections, &[("outcome", "kept")]), 1);
        assert_eq!(recorded.total(rejections), 2);
        assert_eq!(recorded.counter(names::REPLAYS, &[]), 1);
        assert_eq!(recorded.counter(names::REPLAY_REJECTIONS, &[]), 1);
        assert_eq!(recorded.total(names::TOKEN_FETCHES), 2);
    })
}

fn rejection_of_a_replaced_token() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, calls) = numbered(Duration::ZERO, Duration::from_secs(3600));
        let layer = BearerAuthLayer::new(source);
        layer.cache().token().await.unwrap();
        let (inner, mut handle) = mock::pair::<Request<Body>, Response<String>>();
        let svc = layer.layer(inner);
        let first = tokio::spawn(svc.clone().oneshot(get("http://api.test/")));
        let second = tokio::spawn(svc.clone().oneshot(get("http://api.test/")));
        let (req, first_sent) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-1");
        let (req, second_sent) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-1");

        // The first rejection drops tok-1; the second finds it replaced already.
        first_sent.send_response(status(StatusCode::UNAUTHORIZED));
        let (req, first_replayed) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-2");
        second_sent.send_response(status(StatusCode::UNAUTHORIZED));
        let (req, second_replayed) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer tok-2");
        first_replayed.send_response(status(StatusCode::OK));
        second_replayed.send_response(status(StatusCode::OK));
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let rejections = names::REJECTIONS;
        assert_eq!(recorded.counter(rejections, &[("outcome", "dropped")]), 1);
        assert_eq!(recorded.counter(rejections, &[("outcome", "replaced")]), 1);
        assert_eq!(recorded.counter(names::REPLAYS, &[]), 2);
    })
}

/// A gRPC answer whose status comes in its trailers, after data: UNAUTHENTICATED.
type TrailersBody =
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn unauthenticated_in_trailers() -> Response<TrailersBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("16"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"partial answer"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::new(StreamBody::new(tokio_stream::iter(frames)))
}

fn grpc_trailer_rejections() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, _) = numbered(Duration::ZERO, Duration::from_secs(3600));
        let bearer = BearerAuthLayer::new(source);
        bearer.cache().token().await.unwrap();
        let grpc = service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(unauthenticated_in_trailers())
        });
        let svc = bearer.layer(RejectOnTrailersLayer::new(&bearer).layer(grpc));
        let call = || {
            let mut req = get("http://api.test/pkg.Service/Method");
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            svc.clone().oneshot(req)
        };
        // Two calls carry tok-1; the first one's trailers drop it, the second's find it gone.
        let first = call().await.unwrap();
        let second = call().await.unwrap();
        first.into_body().collect().await.unwrap();
        second.into_body().collect().await.unwrap();

        let rejections = names::REJECTIONS;
        assert_eq!(recorded.counter(rejections, &[("outcome", "dropped")]), 1);
        assert_eq!(recorded.counter(rejections, &[("outcome", "replaced")]), 1);
        assert_eq!(
            recorded.counter(names::REPLAYS, &[]),
            0,
            "trailers come too late to replay"
        );
    })
}

fn labelled_caches() -> Arc<Recorded> {
    run(|recorded| async move {
        let (source, _) = numbered(Duration::ZERO, Duration::from_secs(3600));
        let billing = TokenCache::builder(source)
            .metrics_label("billing")
            .build_keyed();
        // Keys are unbounded: two keys, one series.
        for audience in ["ledger", "invoices"] {
            let key = tower_bearer::TokenKey::audience_of(audience);
            billing.token(&key).await.unwrap();
        }
        let (source, _) = numbered(Duration::ZERO, Duration::from_secs(3600));
        TokenCache::builder(source)
            .metrics_label("search")
            .build()
            .token()
            .await
            .unwrap();

        let fetches = names::TOKEN_FETCHES;
        let initial = ("reason", "initial");
        assert_eq!(
            recorded.counter(fetches, &[("cache", "billing"), initial]),
            2
        );
        assert_eq!(
            recorded.counter(fetches, &[("cache", "search"), initial]),
            1
        );
        assert_eq!(recorded.counter(fetches, &[initial]), 0);
        let waits = names::TOKEN_WAITS;
        assert_eq!(recorded.counter(waits, &[("cache", "billing")]), 2);
    })
}

/// The shared level on a real `redis-server` (feature `redis`): a first fetch is a store miss,
/// a second replica's read a hit, a replica finding another's lease a lease wait, a store that
/// does not answer a store error; each labelled with the level's `metrics_label`.
#[cfg(feature = "redis")]
fn shared_store() -> Arc<Recorded> {
    use tower_bearer::shared::{RedisStore, SealingKey, SharedCacheLayer};

    let redis = support::redis_server::RedisServer::start();
    let url = redis.url();
    // A port with no server: bound, then freed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let recorded = run_on(false, move |recorded| async move {
        let fleet = [("cache", "fleet")];
        let store = |what: &'static str| {
            let counted = recorded.clone();
            move || counted.counter(what, &fleet)
        };
        let (misses, hits) = (store(names::STORE_MISSES), store(names::STORE_HITS));
        let (waits, errors) = (store(names::STORE_LEASE_WAITS), store(names::STORE_ERRORS));
        let replica = |url: String, identity: &'static str| async move {
            let store = RedisStore::connect(&url).await.unwrap();
            SharedCacheLayer::new(store, SealingKey::new([7; 32]), identity).metrics_label("fleet")
        };
        // Long enough for the other replica to find the lease taken (it polls every 25-50 ms).
        let calls = support::Calls::default();
        let source = calls.lasting(Duration::from_millis(300), Duration::from_secs(300));
        let bounded = |what: &'static str, cache: TokenCache| async move {
            let token = tokio::time::timeout(Duration::from_secs(10), cache.token()).await;
            token.unwrap_or_else(|_| panic!("{what}: no token within 10 s"))
        };

        let first = replica(url.clone(), "one").await;
        bounded("first", TokenCache::new(first.layer(source.clone())))
            .await
            .unwrap();
        assert_eq!((misses(), hits(), waits(), errors()), (1, 0, 0, 0));

        let second = replica(url.clone(), "one").await;
        let token = bounded("second", TokenCache::new(second.layer(source.clone())))
            .await
            .unwrap();
        assert_eq!(token.access_token().secret(), "tok-1");
        assert_eq!((misses(), hits(), waits(), errors()), (1, 1, 0, 0));

        // Two replicas of another source start together: one fetches, the other waits for it.
        let (a, b) = (replica(url.clone(), "two").await, replica(url, "two").await);
        let (a, b) = (
            TokenCache::new(a.layer(source.clone())),
            TokenCache::new(b.layer(source.clone())),
        );
        let (a, b) = tokio::join!(bounded("a", a), bounded("b", b));
        assert_eq!(a.unwrap().access_token(), b.unwrap().access_token());
        assert_eq!((misses(), hits(), waits(), errors()), (2, 2, 1, 0));
        assert_eq!(calls.count(), 2, "one fetch per source");

        let down = RedisStore::open(&format!("redis://{closed}/")).unwrap();
        let down =
            SharedCacheLayer::new(down, SealingKey::new([7; 32]), "one").metrics_label("fleet");
        bounded("down", TokenCache::new(down.layer(source)))
            .await
            .unwrap();
        assert!(
            errors() >= 1,
            "a store that does not answer is a store error"
        );
        assert_eq!(errors(), down.stats().store_errors);
        assert_eq!((misses(), hits(), waits()), (2, 2, 1));

        // Nothing of the shared level is recorded without its label.
        for name in [
            names::STORE_MISSES,
            names::STORE_HITS,
            names::STORE_LEASE_WAITS,
            names::STORE_ERRORS,
        ] {
            assert_eq!(recorded.counter(name, &[]), 0, "{name} without its label");
        }
    });
    drop(redis);
    recorded
}

#[cfg(feature = "redis")]
#[test]
fn the_shared_store_records_misses_hits_lease_waits_and_errors() {
    shared_store();
}

#[test]
fn a_fetch_records_its_reason_latency_and_wait_and_the_cached_path_records_nothing() {
    first_fetch_then_cached_path();
}

#[test]
fn fetches_record_why_they_were_made() {
    refresh_reasons();
}

#[test]
fn failures_record_their_kind_and_the_backoff_its_refusals() {
    failures_and_backoff();
}

#[test]
fn a_401_records_the_rejection_that_dropped_the_token_and_the_replay() {
    rejection_and_replay();
}

#[test]
fn a_rejected_replay_is_recorded_with_the_kept_rejection() {
    rejected_replay();
}

#[test]
fn a_rejection_of_a_token_already_replaced_is_recorded_as_such() {
    rejection_of_a_replaced_token();
}

#[test]
fn grpc_trailers_record_their_rejections() {
    grpc_trailer_rejections();
}

#[test]
fn a_named_cache_labels_its_metrics_and_keys_are_no_label() {
    labelled_caches();
}

/// The rows of the first metrics table in `text` (lines starting with `prefix`): name, type,
/// and the label keys.
fn table(text: &str, prefix: &str) -> BTreeMap<String, (Kind, BTreeSet<String>)> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix(prefix) else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(name) = cells[0]
            .strip_prefix("`tower_bearer_")
            .and_then(|rest| rest.strip_suffix('`'))
        else {
            continue;
        };
        let kind = match cells[1] {
            "counter" => Kind::Counter,
            "histogram" => Kind::Histogram,
            other => panic!("unknown metric type {other:?} in {line}"),
        };
        let labels = cells[2]
            .split(',')
            .map(|label| label.trim().trim_matches('`').to_owned())
            .filter(|label| !label.is_empty())
            .collect();
        let previous = rows.insert(format!("tower_bearer_{name}"), (kind, labels));
        assert!(previous.is_none(), "{name} is in the table twice");
    }
    rows
}

fn source_of(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_tables_the_constants_and_what_is_recorded_are_the_same_metrics() {
    let module = source_of("src/metrics.rs");
    let documented = table(&module, "//! | ");
    assert!(documented.len() >= 13, "{documented:?}");
    let readme = table(&source_of("README.md"), "| ");
    assert_eq!(
        readme, documented,
        "the README's table and the module's differ"
    );

    // The constants of the module: its string literals naming a metric, outside of comments.
    let constants: BTreeSet<String> = module
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter_map(|line| {
            let start = line.find("\"tower_bearer_")? + 1;
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_owned())
        })
        .collect();
    let listed: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        constants, listed,
        "the module's constants and its table differ"
    );

    // Together the scenarios record every documented metric, each as its documented type with
    // exactly its documented labels (and `cache` when named). The shared store's are recorded
    // with the feature `redis` only (and a `redis-server`, as `tests/shared.rs` needs).
    let mut recorded: BTreeMap<String, (Kind, BTreeSet<String>)> = BTreeMap::new();
    let documented_labels = |name: &str| documented.get(name).map(|(_, labels)| labels.clone());
    #[allow(unused_mut)]
    let mut scenarios: Vec<fn() -> Arc<Recorded>> = vec![
        first_fetch_then_cached_path,
        refresh_reasons,
        failures_and_backoff,
        rejection_and_replay,
        rejected_replay,
        rejection_of_a_replaced_token,
        grpc_trailer_rejections,
        labelled_caches,
    ];
    #[cfg(feature = "redis")]
    scenarios.push(shared_store);
    for scenario in scenarios {
        for ((name, labels), kind) in scenario().seen() {
            for (key, value) in &labels {
                assert!(
                    !value.contains("tok-") && !value.contains("ledger"),
                    "{name}: a label carries a token or a key: {key}={value}"
                );
                let allowed: &[&str] = match key.as_str() {
                    "reason" => &["initial", "expiring", "expired", "rejected", "forced"],
                    "kind" => &[
                        "source",
                        "timeout",
                        "invalid_token",
                        "token_too_large",
                        "panicked",
                    ],
                    "outcome" => &["success", "failure", "dropped", "replaced", "kept"],
                    "cache" => &["billing", "search", "fleet"],
                    other => panic!("{name}: undocumented label {other}"),
                };
                assert!(allowed.contains(&value.as_str()), "{name}: {key}={value}");
            }
            let keys: BTreeSet<String> = labels
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| key != "cache")
                .collect();
            assert_eq!(
                Some(&keys),
                documented_labels(&name).as_ref(),
                "{name}'s labels"
            );
            let (seen_kind, _) = recorded.entry(name.clone()).or_insert((kind, keys));
            assert_eq!(*seen_kind, kind, "{name} recorded as two types");
        }
    }
    let expected: BTreeMap<String, (Kind, BTreeSet<String>)> = documented
        .into_iter()
        .filter(|(name, _)| cfg!(feature = "redis") || !name.starts_with("tower_bearer_store_"))
        .collect();
    assert_eq!(recorded, expected, "recorded metrics differ from the table");
}
