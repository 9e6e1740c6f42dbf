//! Faults of the token endpoint: integration tests against an in-process endpoint (a raw
//! `TcpListener`, so that it can misbehave at the byte level) whose behaviour is switched at
//! run time.
//!
//! Time is real (the network is), every loop is bounded in count and wall time, and every test
//! runs under a global timeout. For each fault the tests check that nothing panics, that
//! requests get a typed error naming the cause, that the number of token-endpoint calls stays
//! within what the backoff allows, that a still-valid token keeps being used, that everything
//! resumes once the endpoint recovers, and that no request is ever sent without its token.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_bearer::cache::CacheStats;
use tower_bearer::oauth2::{self, ClientCredentials, TokenEndpoint};
use tower_bearer::{BearerAuthLayer, ErrorKind, Expiry, TokenCache};

use support::{chain, read_request, token_error, within, write_response};

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

/// The cache's backoff: 50 ms after the first failure, doubling up to 400 ms.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// The OAuth 2.0 client's request timeout: a hanging endpoint fails with `Timeout` after it.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);
/// The cache's fetch timeout, above the client's so that the client's more specific error wins.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two requests of a loop.
const TICK: Duration = Duration::from_millis(10);
/// The lifetime of the token that must outlive an outage (`expires_in: 2`), and its usable
/// life: the expiry skew is 100 ms, so it is used for 1.9 s from when its request was sent.
/// With `refresh_ahead(1 s)` capped at half the usable life and no jitter, its refresh ahead
/// starts 0.95 s after that.
const SKEW: Duration = Duration::from_millis(100);
const USABLE: Duration = Duration::from_millis(1900);
/// Slack around instants the tests cannot observe exactly (when a token's request was sent).
const MARGIN: Duration = Duration::from_millis(50);
/// How long recovery may take once the endpoint answers again: the backoff in progress (at most
/// `BACKOFF_MAX`), then one fetch. Generous, for loaded machines.
const RECOVERY: Duration = Duration::from_millis(1500);
/// How long a test may run at all.
const TEST_LIMIT: Duration = Duration::from_secs(40);

/// The most fetches the cache may start within `span` when all of them fail.
///
/// Fetches never overlap, and after the k-th consecutive failure the next fetch waits until the
/// backoff delay is over. That delay is `full_k = min(50 ms · 2^(k-1), 400 ms)` shortened by a
/// random amount of at most half ("equal jitter"), so it is at least `full_k / 2`: 25, 50, 100,
/// 200, 200, ... ms. Two consecutive fetches thus start at least that far apart, and `n` fetches
/// need `25 + 50 + ... (n-1 terms) <= span`. (Failures before the window only make the delays
/// longer.) Over 1 s that is 8 fetches, over 1.5 s 10, over 2.4 s 15.
fn max_fetches(span: Duration) -> u64 {
    let mut fetches = 1;
    let mut elapsed = Duration::ZERO;
    let mut full = BACKOFF_MIN;
    loop {
        elapsed += full / 2;
        if elapsed > span {
            return fetches;
        }
        fetches += 1;
        full = (full * 2).min(BACKOFF_MAX);
    }
}

#[test]
fn the_fetch_bound_is_what_the_comment_says() {
    assert_eq!(max_fetches(Duration::from_millis(10)), 1);
    assert_eq!(max_fetches(Duration::from_millis(25)), 2);
    assert_eq!(max_fetches(Duration::from_secs(1)), 8);
    assert_eq!(max_fetches(Duration::from_millis(1500)), 10);
    assert_eq!(max_fetches(Duration::from_millis(2400)), 15);
}

async fn bounded<F: Future>(fut: F) -> F::Output {
    within(TEST_LIMIT, "the test", fut).await
}

// ---------------------------------------------------------------------------------------------
// The token endpoint
// ---------------------------------------------------------------------------------------------

/// What the endpoint does with the next token request.
#[derive(Clone, Debug)]
enum Mode {
    /// `200 {"access_token":"tok-N","token_type":"Bearer","expires_in":<this JSON>}`.
    Normal(&'static str),
    /// This status with an HTML error page, and a `Retry-After` if given.
    Status(u16, Option<&'static str>),
    /// The listener is closed: connections are refused.
    Refused,
    /// Reads the request and never answers.
    Hang,
    /// Announces 100 bytes of body, sends 20 and closes the connection.
    CloseMidBody,
    /// `200` with a body that is neither JSON nor form data.
    Garbage,
    /// `200` with a 10 MiB body, its length declared or chunked.
    Huge { declared: bool },
    /// `200 {"access_token":<this JSON>,"token_type":"Bearer","expires_in":60}`.
    AccessToken(&'static str),
}

struct State {
    mode: Mutex<Mode>,
    /// Token requests received (whatever the answer).
    calls: AtomicU64,
    /// Tokens issued in `Normal` mode.
    issued: AtomicU64,
}

/// A token endpoint on 127.0.0.1 whose behaviour can be switched at run time.
struct Endpoint {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// While refusing: the port, bound but not listening.
    reserved: Mutex<Option<tokio::net::TcpSocket>>,
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl Endpoint {
    async fn start(mode: Mode) -> Self {
        let listener = listen("127.0.0.1:0".parse().unwrap()).expect("bind the token endpoint");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Normal("60")),
            calls: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        });
        let endpoint = Self {
            addr,
            accept: Mutex::new(Some(spawn_accept(listener, state.clone()))),
            reserved: Mutex::new(None),
            state,
        };
        endpoint.set_mode(mode).await;
        endpoint
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Switches the behaviour. `Refused` closes the listener; any other mode opens it again on
    /// the same port.
    async fn set_mode(&self, mode: Mode) {
        let refused = matches!(mode, Mode::Refused);
        *self.state.mode.lock().unwrap() = mode;
        let running = self.accept.lock().unwrap().take();
        match (running, refused) {
            (Some(task), true) => {
                task.abort();
                let _ = task.await; // the listener is dropped with the task
                                    // Keep the port bound without listening: connections are refused, and no other
                                    // test running in parallel can be given this port and answer in our place.
                let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
                socket.set_reuseaddr(true).expect("SO_REUSEADDR");
                socket.bind(self.addr).expect("keep the port");
                *self.reserved.lock().unwrap() = Some(socket);
            }
            (Some(task), false) => *self.accept.lock().unwrap() = Some(task),
            (None, true) => {}
            (None, false) => {
                drop(self.reserved.lock().unwrap().take());
                let mut attempts = 0;
                let listener = loop {
                    match listen(self.addr) {
                        Ok(listener) => break listener,
                        Err(_) if attempts < 100 => {
                            attempts += 1;
                            tokio::time::sleep(TICK).await;
                        }
                        Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
                    }
                };
                *self.accept.lock().unwrap() = Some(spawn_accept(listener, self.state.clone()));
            }
        }
    }
}

fn spawn_accept(listener: TcpListener, state: Arc<State>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, state.clone()));
                }
                Err(_) => tokio::time::sleep(TICK).await,
            }
        }
    })
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    if read_request(&mut stream).await.is_none() {
        return;
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    let mode = state.mode.lock().unwrap().clone();
    let _ = answer(&mut stream, mode, &state).await;
}

const JSON: &str = "application/json";
const HUGE: usize = 10 * 1024 * 1024;

async fn answer(stream: &mut TcpStream, mode: Mode, state: &State) -> io::Result<()> {
    match mode {
        Mode::Normal(expires_in) => {
            let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!(
                r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            write_response(stream, "200 OK", JSON, "", body.as_bytes()).await
        }
        Mode::Status(status, retry_after) => {
            let extra = retry_after
                .map(|value| format!("retry-after: {value}\r\n"))
                .unwrap_or_default();
            let body = format!("<html><body><h1>{status}</h1>upstream trouble</body></html>");
            let status = format!("{status} Trouble");
            write_response(stream, &status, "text/html", &extra, body.as_bytes()).await
        }
        // A connection accepted just before the listener closed: closed unanswered.
        Mode::Refused => Ok(()),
        Mode::Hang => std::future::pending().await,
        Mode::CloseMidBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 100\r\nconnection: close\r\n\r\n";
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(br#"{"access_token":"tok"#).await?;
            stream.flush().await
            // Dropped here: the connection closes 80 bytes short.
        }
        Mode::Garbage => {
            let body = br#"{"access_token":"tok-1","expires_in":3600"#;
            write_response(stream, "200 OK", JSON, "", body).await
        }
        Mode::Huge { declared } => {
            let framing = if declared {
                format!("content-length: {HUGE}")
            } else {
                "transfer-encoding: chunked".to_owned()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\
                 connection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            let piece = vec![b' '; 64 * 1024];
            for _ in 0..HUGE / piece.len() {
                if !declared {
                    stream
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                }
                stream.write_all(&piece).await?;
                if !declared {
                    stream.write_all(b"\r\n").await?;
                }
            }
            if !declared {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            stream.flush().await
        }
        Mode::AccessToken(token) => {
            let body =
                format!(r#"{{"access_token":{token},"token_type":"Bearer","expires_in":60}}"#);
            write_response(stream, "200 OK", JSON, "", body.as_bytes()).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

type Api = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError>;
type Outcome = Result<String, tower_bearer::Error>;

/// Client credentials against the endpoint, a cache with short timings, and the layer over an
/// API that answers with the `Authorization` header it received and records it.
struct Harness {
    endpoint: Endpoint,
    cache: TokenCache,
    api: Api,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    successes: usize,
}

/// What the endpoint and the cache have counted so far.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    stats: CacheStats,
    calls: u64,
}

impl Harness {
    /// Without the cache's lifetime floor: the tests' tokens live 2 s, under the default floor
    /// of 10 s, and their timelines are what these tests are about.
    async fn new(mode: Mode) -> Self {
        Self::with_floor(mode, Duration::ZERO).await
    }

    async fn with_floor(mode: Mode, min_lifetime: Duration) -> Self {
        let endpoint = Endpoint::start(mode).await;
        let client = TokenEndpoint::builder(endpoint.url(), "faults-client")
            .client_secret("secret")
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("an OAuth 2.0 client");
        let cache = TokenCache::builder(ClientCredentials::new(client))
            .backoff(BACKOFF_MIN, BACKOFF_MAX)
            .fetch_timeout(FETCH_TIMEOUT)
            .expiry_skew(SKEW)
            .refresh_ahead(Duration::from_secs(1))
            .jitter(0.0)
            .min_lifetime(min_lifetime)
            .build();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = service_fn(move |req: Request<Full<Bytes>>| {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .map(|value| value.to_str().unwrap_or("<not text>").to_owned());
            record.lock().unwrap().push(auth.clone());
            async move {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                    auth.unwrap_or_default(),
                ))))
            }
        });
        let api = BoxCloneService::new(BearerAuthLayer::from_cache(cache.clone()).layer(inner));
        Self {
            endpoint,
            cache,
            api,
            seen,
            successes: 0,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            stats: self.cache.stats(),
            calls: self.endpoint.calls(),
        }
    }

    /// One request: the `Authorization` header the API received, or the token error.
    async fn send(&mut self) -> Outcome {
        let request = self.api.clone().oneshot(Request::new(Full::default()));
        match within(Duration::from_secs(5), "a request", request).await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                self.successes += 1;
                Ok(String::from_utf8(body.to_vec()).unwrap())
            }
            Err(error) => Err(token_error(error)),
        }
    }

    /// A request every `TICK` until `deadline`: each one's start and outcome.
    async fn run_until(&mut self, deadline: Instant) -> Vec<(Instant, Outcome)> {
        let mut outcomes = Vec::new();
        while Instant::now() < deadline {
            let at = Instant::now();
            outcomes.push((at, self.send().await));
            tokio::time::sleep(TICK).await;
        }
        outcomes
    }

    /// Requests every `TICK` until one succeeds, within `RECOVERY`: when the successful one
    /// started, when it ended, and the header it carried.
    async fn until_ok(&mut self) -> (Instant, Instant, String) {
        let switched = Instant::now();
        loop {
            let started = Instant::now();
            if let Ok(header) = self.send().await {
                return (started, Instant::now(), header);
            }
            assert!(
                switched.elapsed() < RECOVERY,
                "no recovery within {RECOVERY:?} of the endpoint answering again"
            );
            tokio::time::sleep(TICK).await;
        }
    }

    /// Every request the API received carried a token the endpoint issued.
    fn assert_every_request_had_its_token(&self) {
        let seen = self.seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            self.successes,
            "requests reached the API but failed"
        );
        for header in seen.iter() {
            let header = header
                .as_deref()
                .expect("a request was sent without its token");
            assert!(
                header.starts_with("Bearer tok-"),
                "unexpected Authorization: {header:?}"
            );
        }
    }
}

/// The OAuth 2.0 error behind a failed fetch, reached both ways the crate documents.
fn oauth_cause(err: &tower_bearer::Error) -> &oauth2::Error {
    assert_eq!(err.kind(), ErrorKind::Source, "{}", chain(err));
    let via_source = err
        .source()
        .and_then(|source| source.downcast_ref::<oauth2::Error>())
        .unwrap_or_else(|| panic!("source() is not an oauth2::Error: {err:?}"));
    let cause = err
        .source_as::<oauth2::Error>()
        .unwrap_or_else(|| panic!("source_as gives no oauth2::Error: {err:?}"));
    assert!(std::ptr::eq(via_source, cause));
    cause
}

fn expect_http(err: &tower_bearer::Error, status: u16) -> &oauth2::Error {
    let cause = oauth_cause(err);
    assert_eq!(cause.kind(), oauth2::ErrorKind::Http, "{cause:?}");
    assert_eq!(cause.status().map(|s| s.as_u16()), Some(status));
    assert!(cause.is_retryable());
    assert!(
        chain(err).contains(&format!("HTTP {status}")),
        "{}",
        chain(err)
    );
    cause
}

// ---------------------------------------------------------------------------------------------
// One fault, through outage, recovery, outage under a valid token, and recovery
// ---------------------------------------------------------------------------------------------

async fn exercise(fault: Mode, check: fn(&tower_bearer::Error)) {
    let refused = matches!(fault, Mode::Refused);
    let mut h = Harness::new(fault.clone()).await;

    // 1. The endpoint misbehaves from the start: no token can be had.
    let before = h.snapshot();
    let start = Instant::now();
    let outcomes = h.run_until(start + Duration::from_secs(1)).await;
    let span = start.elapsed();
    let after = h.snapshot();
    // (Against a hanging endpoint, a request that starts a fetch waits `CLIENT_TIMEOUT`.)
    assert!(outcomes.len() >= 3, "too few requests: {}", outcomes.len());
    for (_, outcome) in &outcomes {
        check(outcome.as_ref().expect_err("no token can be had"));
    }
    let fetches = after.stats.fetches - before.stats.fetches;
    assert!(
        (1..=max_fetches(span)).contains(&fetches),
        "{fetches} fetches in {span:?}, at most {} allowed",
        max_fetches(span)
    );
    // Requests are sequential, so each fetch was started by one request that waited for it,
    // and the others failed at once with the last error, not calling the source.
    assert_eq!(after.stats.fetch_failures, fetches, "{:?}", after.stats);
    assert_eq!(after.stats.waits, fetches, "{:?}", after.stats);
    assert_eq!(after.stats.hits, 0, "{:?}", after.stats);
    let calls = after.calls - before.calls;
    assert_eq!(calls, if refused { 0 } else { fetches });
    assert!(h.seen.lock().unwrap().is_empty());

    // 2. The endpoint recovers: the first request after the backoff fetches, once.
    let before = h.snapshot();
    h.endpoint.set_mode(Mode::Normal("2")).await;
    let (t0, t1, first) = h.until_ok().await;
    let after = h.snapshot();
    assert_eq!(after.stats.fetches - before.stats.fetches, 1);
    assert_eq!(after.stats.fetch_failures, before.stats.fetch_failures);
    assert_eq!(after.calls - before.calls, 1);
    assert!(first.starts_with("Bearer tok-"), "{first}");

    // 3. It fails again while that token is valid: the token keeps being used until its usable
    //    life ends, the refreshes ahead of expiry fail and back off, then requests fail typed.
    h.endpoint.set_mode(fault.clone()).await;
    let before = h.snapshot();
    let switched = Instant::now();
    let outcomes = h.run_until(t1 + USABLE + Duration::from_millis(500)).await;
    let span = switched.elapsed();
    let after = h.snapshot();
    let (mut kept, mut failed) = (0, 0);
    for (at, outcome) in &outcomes {
        if *at + MARGIN < t0 + USABLE {
            assert_eq!(
                outcome.as_ref().ok(),
                Some(&first),
                "the valid token was not used at {:?} of {USABLE:?}",
                at.duration_since(t0)
            );
        } else if *at > t1 + USABLE + MARGIN {
            check(outcome.as_ref().expect_err("the token has expired"));
        }
        match outcome {
            Ok(header) => {
                assert_eq!(header, &first);
                kept += 1;
            }
            Err(error) => {
                check(error);
                failed += 1;
            }
        }
    }
    assert!(kept >= 50, "the valid token served only {kept} requests");
    assert!(failed >= 2, "only {failed} requests after expiry");
    let fetches = after.stats.fetches - before.stats.fetches;
    assert!(
        (1..=max_fetches(span)).contains(&fetches),
        "{fetches} fetches in {span:?}, at most {} allowed",
        max_fetches(span)
    );
    assert_eq!(
        after.stats.fetch_failures - before.stats.fetch_failures,
        fetches
    );
    // Every success was served from the cache, without waiting.
    assert_eq!(after.stats.hits - before.stats.hits, kept);
    assert!(after.stats.waits - before.stats.waits <= failed);
    let calls = after.calls - before.calls;
    assert_eq!(calls, if refused { 0 } else { fetches });

    // 4. It recovers after the token expired: the next fetch succeeds and requests resume.
    let before = h.snapshot();
    h.endpoint.set_mode(Mode::Normal("60")).await;
    let (_, _, second) = h.until_ok().await;
    assert_ne!(second, first);
    for _ in 0..20 {
        assert_eq!(h.send().await.ok(), Some(second.clone()));
    }
    let after = h.snapshot();
    assert_eq!(after.stats.fetches - before.stats.fetches, 1);
    assert_eq!(after.calls - before.calls, 1);

    h.assert_every_request_had_its_token();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500() {
    bounded(exercise(Mode::Status(500, None), |err| {
        let cause = expect_http(err, 500);
        assert!(cause.description().unwrap().contains("upstream trouble"));
        assert_eq!(cause.retry_after(), None);
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503() {
    bounded(exercise(Mode::Status(503, None), |err| {
        expect_http(err, 503);
    }))
    .await;
}

/// Fetches within `span` when every delay between them is at least `gap`.
fn fetches_with_gap(span: Duration, gap: Duration) -> u64 {
    1 + (span.as_nanos() / gap.as_nanos()) as u64
}

/// The fetches a failing endpoint gets in one second of sequential requests.
async fn fetches_in_one_second(fault: Mode) -> (u64, Duration) {
    let mut h = Harness::new(fault).await;
    let start = Instant::now();
    h.run_until(start + Duration::from_secs(1)).await;
    (h.snapshot().stats.fetches, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_refusals_stretch_the_backoff() {
    bounded(async {
        // `Retry-After: 7` is honoured up to the backoff maximum: every delay is 400 ms.
        let (fetches, span) = fetches_in_one_second(Mode::Status(429, Some("7"))).await;
        let bound = fetches_with_gap(span, BACKOFF_MAX);
        assert!(
            (1..=bound).contains(&fetches),
            "{fetches} fetches in {span:?}, at most {bound}"
        );
        // A 400 is not worth retrying soon: every delay is at least half the maximum.
        let (fetches, span) = fetches_in_one_second(Mode::Status(400, None)).await;
        let bound = fetches_with_gap(span, BACKOFF_MAX / 2);
        assert!(
            (1..=bound).contains(&fetches),
            "{fetches} fetches in {span:?}, at most {bound}"
        );
        // The premise: both bounds are tighter than the plain schedule's, so a backoff that
        // ignored `Retry-After` or the refusal would fail the checks above.
        assert!(
            fetches_with_gap(Duration::from_secs(1), BACKOFF_MAX / 2)
                < max_fetches(Duration::from_secs(1))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_with_retry_after() {
    // The bounds of the plain schedule hold too; the server's `Retry-After` reaches the caller
    // in the error.
    bounded(exercise(Mode::Status(429, Some("7")), |err| {
        let cause = expect_http(err, 429);
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(7)));
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused() {
    bounded(exercise(Mode::Refused, |err| {
        let cause = oauth_cause(err);
        assert_eq!(cause.kind(), oauth2::ErrorKind::Transport, "{cause:?}");
        assert!(cause.is_retryable());
        assert!(
            cause.source().is_some(),
            "the transport error is the source"
        );
        assert!(
            chain(err).contains("could not be reached"),
            "{}",
            chain(err)
        );
        // The cause is named all the way down: an io::Error saying the connection was refused.
        let mut source = cause.source();
        let mut refused = false;
        while let Some(inner) = source {
            if let Some(io) = inner.downcast_ref::<io::Error>() {
                refused |= io.kind() == io::ErrorKind::ConnectionRefused;
            }
            source = inner.source();
        }
        assert!(refused, "{}", chain(err));
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_never_answers() {
    bounded(exercise(Mode::Hang, |err| {
        let cause = oauth_cause(err);
        assert_eq!(cause.kind(), oauth2::ErrorKind::Timeout, "{cause:?}");
        assert!(cause.is_retryable());
        assert!(chain(err).contains("timed out"), "{}", chain(err));
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_mid_body() {
    bounded(exercise(Mode::CloseMidBody, |err| {
        let cause = oauth_cause(err);
        assert_eq!(cause.kind(), oauth2::ErrorKind::Transport, "{cause:?}");
        assert!(cause.is_retryable());
        assert!(cause.source().is_some(), "the body error is the source");
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_json() {
    bounded(exercise(Mode::Garbage, |err| {
        let cause = oauth_cause(err);
        assert_eq!(
            cause.kind(),
            oauth2::ErrorKind::InvalidResponse,
            "{cause:?}"
        );
        assert_eq!(cause.status(), Some(StatusCode::OK));
        assert_eq!(
            cause.description(),
            Some(
                "the body is neither a JSON object nor form data (Content-Type application/json, \
                 41 bytes)"
            )
        );
        assert!(!cause.is_retryable());
    }))
    .await;
}

fn expect_too_large(err: &tower_bearer::Error) {
    let cause = oauth_cause(err);
    assert_eq!(cause.kind(), oauth2::ErrorKind::BodyTooLarge, "{cause:?}");
    assert_eq!(cause.status(), Some(StatusCode::OK));
    assert!(chain(err).contains("too large"), "{}", chain(err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_body_with_content_length() {
    bounded(exercise(Mode::Huge { declared: true }, expect_too_large)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_body_chunked() {
    bounded(exercise(Mode::Huge { declared: false }, expect_too_large)).await;
}

fn expect_invalid_token(err: &tower_bearer::Error) {
    assert_eq!(err.kind(), ErrorKind::InvalidToken, "{err:?}");
    assert_eq!(
        err.to_string(),
        "token source returned an access token that is not a valid HTTP header value"
    );
    let cause = err.source().expect("the reason").to_string();
    assert!(cause.contains("not printable ASCII"), "{cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_with_cr_lf() {
    bounded(exercise(
        Mode::AccessToken(r#""tok-evil\r\nX-Injected: 1""#),
        expect_invalid_token,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_with_control_characters() {
    bounded(exercise(
        Mode::AccessToken(r#""tok-\u0000\u0007\u001b[31m\u007f""#),
        expect_invalid_token,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_not_a_number() {
    bounded(exercise(Mode::Normal(r#""abc""#), |err| {
        let cause = oauth_cause(err);
        assert_eq!(
            cause.kind(),
            oauth2::ErrorKind::InvalidResponse,
            "{cause:?}"
        );
        let description = cause.description().unwrap();
        assert!(
            description.starts_with("expires_in is not a number"),
            "{description}"
        );
        assert!(description.contains("abc"), "{description}");
    }))
    .await;
}

/// Many requests at once during an outage still make one fetch per backoff step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_during_an_outage_share_each_failed_fetch() {
    bounded(async {
        let h = Harness::new(Mode::Status(503, None)).await;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(1);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let api = h.api.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                while Instant::now() < deadline {
                    let result = api.clone().oneshot(Request::new(Full::default())).await;
                    let error = result.expect_err("the endpoint is down");
                    let error = error
                        .downcast::<tower_bearer::Error>()
                        .expect("a tower_bearer::Error");
                    expect_http(&error, 503);
                    errors += 1;
                    tokio::time::sleep(TICK).await;
                }
                errors
            }));
        }
        let mut errors = 0;
        for task in tasks {
            errors += task.await.expect("no panic");
        }
        let span = start.elapsed();
        let stats = h.cache.stats();
        assert!(errors >= 80, "{errors}");
        assert!(
            (1..=max_fetches(span)).contains(&stats.fetches),
            "{stats:?} in {span:?}"
        );
        assert_eq!(stats.fetch_failures, stats.fetches);
        assert_eq!(h.endpoint.calls(), stats.fetches);
        // Each fetch was waited for by at least the request that started it.
        assert!(stats.waits >= stats.fetches, "{stats:?}");
        assert_eq!(stats.hits, 0);
        assert!(h.seen.lock().unwrap().is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Odd but valid lifetimes
// ---------------------------------------------------------------------------------------------

/// `expires_in` of zero or less: the token is expired when it arrives. Under the cache's
/// lifetime floor (`min_lifetime`, 10 s by default) it is used for the floor anyway, so that
/// such an endpoint is not called once per request; a hundred sequential requests and a burst of
/// concurrent ones make one token request. Without the floor, each request (or group of
/// concurrent requests) fetches anew, and never in a loop of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_zero_or_negative() {
    bounded(async {
        for expires_in in ["0", "-5", r#""-5""#, "-0.5", "0.0"] {
            let mut h =
                Harness::with_floor(Mode::Normal(expires_in), Duration::from_secs(10)).await;
            let first = h.send().await.expect("a token");
            for _ in 0..99 {
                assert_eq!(h.send().await.ok(), Some(first.clone()), "{expires_in}");
            }
            for result in futures_join(&h.api, 16).await {
                assert_eq!(result.ok(), Some(first.clone()), "{expires_in}");
                h.successes += 1;
            }
            let stats = h.cache.stats();
            assert_eq!(stats.fetches, 1, "{expires_in}: {stats:?}");
            assert_eq!(
                (stats.waits, stats.hits),
                (1, 115),
                "{expires_in}: {stats:?}"
            );
            assert_eq!(h.endpoint.calls(), 1);
            h.assert_every_request_had_its_token();

            let mut h = Harness::new(Mode::Normal(expires_in)).await;
            let mut headers = Vec::new();
            for _ in 0..20 {
                headers.push(
                    h.send()
                        .await
                        .expect("an expired-on-arrival token still serves"),
                );
            }
            headers.dedup();
            assert_eq!(headers.len(), 20, "{expires_in}: each request fetched anew");
            let stats = h.cache.stats();
            assert_eq!(stats.fetches, 20, "{expires_in}: {stats:?}");
            assert_eq!(stats.waits, 20, "{expires_in}: {stats:?}");
            assert_eq!(stats.hits, 0, "{expires_in}: {stats:?}");
            assert_eq!(stats.fetch_failures, 0, "{expires_in}: {stats:?}");
            assert_eq!(h.endpoint.calls(), 20);

            // Concurrent requests share fetches: never more fetches than requests.
            let results = futures_join(&h.api, 16).await;
            for result in &results {
                let header = result.as_ref().expect("served");
                assert!(header.starts_with("Bearer tok-"), "{header}");
            }
            h.successes += results.len();
            let stats = h.cache.stats();
            assert!(
                (21..=36).contains(&stats.fetches),
                "{expires_in}: {stats:?}"
            );
            assert_eq!(h.endpoint.calls(), stats.fetches);
            h.assert_every_request_had_its_token();
        }
    })
    .await;
}

/// `expires_in` beyond what an `Instant` can hold: saturated, and one fetch serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_huge() {
    const CENTURY: Duration = Duration::from_secs(36_525 * 24 * 60 * 60);
    bounded(async {
        for expires_in in [
            "1e300",
            "18446744073709551616",
            "18446744073709551615",
            r#""1e300""#,
            r#""1e400""#,
            "123456789012345678901234567890",
        ] {
            let mut h = Harness::new(Mode::Normal(expires_in)).await;
            let first = h.send().await.expect("a token");
            for _ in 0..49 {
                assert_eq!(h.send().await.ok(), Some(first.clone()), "{expires_in}");
            }
            let results = futures_join(&h.api, 16).await;
            for result in results {
                assert_eq!(result.ok(), Some(first.clone()), "{expires_in}");
                h.successes += 1;
            }
            let token = h.cache.token().await.expect("the cached token");
            // A century from when the token request was sent.
            let Some(Expiry::At(deadline)) = token.expiry() else {
                panic!("{expires_in}: {:?}", token.expiry());
            };
            let left = deadline.duration_since(tokio::time::Instant::now());
            assert!(
                left <= CENTURY && left > CENTURY - TEST_LIMIT,
                "{expires_in}: {left:?}"
            );
            let stats = h.cache.stats();
            assert_eq!(stats.fetches, 1, "{expires_in}: {stats:?}");
            assert_eq!(stats.waits, 1, "{expires_in}: {stats:?}");
            // 49 + 16 requests and the `token()` call.
            assert_eq!(stats.hits, 66, "{expires_in}: {stats:?}");
            assert_eq!(h.endpoint.calls(), 1);
            h.assert_every_request_had_its_token();
        }
    })
    .await;
}

/// `n` requests at once.
async fn futures_join(api: &Api, n: usize) -> Vec<Result<String, BoxError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let response = api.oneshot(Request::new(Full::default())).await?;
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(String::from_utf8(body.to_vec())?)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("no panic"));
    }
    results
}
