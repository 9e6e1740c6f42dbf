//! The token state shared by every clone of a layer: single-flight fetches, refresh ahead of
//! expiry, compare-and-swap invalidation of rejected tokens and failure backoff.
//!
//! # How a request finds its token
//!
//! The current token lives behind an [`ArcSwapOption`], together with the header values that
//! carry it, already built. A request loads it without a lock and without reading the clock: a
//! small timer task per token flips its phase from *fresh* to *due* at the refresh-ahead point and
//! to *expired* at the end of its usable life. The first request that sees *due* starts one
//! background fetch and goes on with the current token; only an expired or missing token sends
//! requests to the slow path, where they wait for the one fetch in flight.
//!
//! Fetches run in spawned tasks, so dropping the request that started one cancels nothing.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};
use tower::ServiceExt;

use crate::error::{Chain, ErrorKind};
use crate::source::BoxSource;
use crate::stripe::{self, STRIPES};
use crate::token::secret_bytes;
use crate::{Error, Expiry, Reason, Token, TokenRequest, TokenSource};

const FRESH: u8 = 0;
const DUE: u8 = 1;
const KICKED: u8 = 2;
const EXPIRED: u8 = 3;

/// Lifetimes are capped so that adding them to an `Instant` can never overflow (Tokio caps its
/// own timers the same way).
const MAX_LIFETIME: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A token cache: the shared state behind [`BearerAuthLayer`](crate::BearerAuthLayer).
///
/// Every layer made with [`BearerAuthLayer::new`](crate::BearerAuthLayer::new) creates one. Build
/// one yourself to change its timing, to share it between several layers (two clients with the
/// same credentials then fetch one token), or to read tokens outside of a tower stack. Clones
/// share the same state.
///
/// A cache needs a Tokio runtime when it fetches: fetches run in spawned tasks.
///
/// # Testing with a paused clock
///
/// A fresh token is served without reading the clock; a small timer task per token notices when
/// it enters its refresh window and when it expires. After `tokio::time::advance`, let that task
/// run before the next request (`tokio::task::yield_now().await`, or use `tokio::time::sleep`,
/// which runs due timers in order). Inside the refresh window the clock is read on every
/// request, so a timer that runs late never lets an expired token out unless the refresh-ahead
/// window was set to zero.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::{BearerAuthLayer, StaticToken, TokenCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_bearer::Error> {
/// let cache = TokenCache::builder(StaticToken::new("t0k3n"))
///     .refresh_ahead(Duration::from_secs(60))
///     .build();
/// let api = BearerAuthLayer::from_cache(cache.clone());
/// let uploads = BearerAuthLayer::from_cache(cache.clone());
/// # drop((api, uploads));
///
/// let token = cache.token().await?;
/// assert_eq!(token.access_token().secret(), "t0k3n");
/// assert_eq!(cache.stats().fetches, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwapOption<Entry>,
    /// Bumped after every change of `current`, so that a [`Local`] copy knows when to reload.
    generation: AtomicU64,
    slow: Mutex<Slow>,
    /// The outcome of the last fetch. Waiters subscribe while holding `slow` and the fetch task
    /// publishes while holding it, so no waiter can miss the outcome it waits for.
    outcome: watch::Sender<Option<Outcome>>,
    source: Mutex<BoxSource>,
    config: Config,
    counters: Counters,
    next_id: AtomicU64,
}

type Outcome = Result<Arc<Entry>, Error>;

#[derive(Default)]
struct Slow {
    fetching: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Error>,
    /// The last token was dropped because a server rejected it.
    rejected: bool,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    hits: AtomicU64,
    waits: AtomicU64,
    rejections: AtomicU64,
    replays: AtomicU64,
    replay_rejections: AtomicU64,
}

/// What a cache has done so far. Read it with [`TokenCache::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls made to the token source.
    pub fetches: u64,
    /// Calls to the token source that failed or timed out, and tokens refused as invalid.
    pub fetch_failures: u64,
    /// Requests (and [`TokenCache::token`] calls) served with the cached token, without waiting.
    /// Each service clone adds its hits in batches of 256, and the rest when it is dropped.
    pub hits: u64,
    /// Requests (and [`TokenCache::token`] calls) that had to wait for a token: none was cached,
    /// the cached one had expired, or theirs was rejected and they waited for a new one to be
    /// replayed with. With steady traffic, refresh ahead of expiry keeps the expired case at zero.
    pub waits: u64,
    /// Responses that rejected a token (HTTP 401 without `insufficient_scope`).
    pub rejections: u64,
    /// Requests sent a second time with a fresh token after a rejection.
    pub replays: u64,
    /// Replays whose fresh token was rejected too (also counted in `rejections`). More than a
    /// few means the server refuses this client's tokens whatever they are: a scope, audience
    /// or clock problem, not an expired token.
    pub replay_rejections: u64,
}

#[derive(Clone, Debug)]
struct Config {
    expiry_skew: Duration,
    refresh_ahead: Duration,
    jitter: f64,
    default_lifetime: Duration,
    fetch_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            expiry_skew: Duration::from_secs(30),
            refresh_ahead: Duration::from_secs(300),
            jitter: 0.25,
            default_lifetime: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Configures a [`TokenCache`]. Made by [`TokenCache::builder`].
///
/// The timeline of one token, with its lifetime `L` counted from when its request was sent:
///
/// ```text
/// sent ──────────────── refresh ahead ──────── usable end ── stated expiry
///  0                      U − A·(1+j)             U = L − S        L
/// ```
///
/// where `S` is the [expiry skew](Self::expiry_skew) (at most `L/4`), `A` the
/// [refresh-ahead](Self::refresh_ahead) window (at most `U/2`) and `j` a random
/// [jitter](Self::jitter) fraction. A token is always used for at least `3/8` of its usable life
/// before a refresh starts, so short-lived tokens do not refresh in a loop.
pub struct TokenCacheBuilder {
    source: BoxSource,
    config: Config,
}

impl TokenCacheBuilder {
    /// How long before its stated expiry a token stops being used, to absorb clock skew and the
    /// time a request spends in flight.
    ///
    /// Default: 30 seconds, and never more than a quarter of the token's lifetime.
    pub fn expiry_skew(mut self, skew: Duration) -> Self {
        self.config.expiry_skew = skew;
        self
    }

    /// How long before the end of a token's usable life one background refresh starts, while
    /// requests keep using the current token.
    ///
    /// The refresh is started by the first request inside this window, not by a timer: an idle
    /// client does not keep fetching tokens nobody uses, and its first request after the token's
    /// usable life waits for a new one.
    ///
    /// Default: 5 minutes, and never more than half of the token's usable life.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.config.refresh_ahead = window;
        self
    }

    /// How much the refresh-ahead window is randomly widened, as a fraction of it, so that a
    /// fleet of clients started together does not refresh in lockstep. Clamped to `0.0..=1.0`.
    ///
    /// Default: `0.25` (the window grows by 0 to 25 %).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The lifetime of a token whose source states no expiry (an OAuth 2.0 response without
    /// `expires_in`). After it, the source is asked again.
    ///
    /// Default: 1 hour.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = lifetime;
        self
    }

    /// How long one call to the source may take before it counts as failed with
    /// [`ErrorKind::Timeout`].
    ///
    /// Default: 30 seconds.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// The delays between failed fetches: the first failure waits about `min`, each further one
    /// doubles it up to `max`, and each delay is randomly shortened by up to half. An OAuth 2.0
    /// token endpoint's `Retry-After` is honoured up to `max`, and a refusal that retrying cannot
    /// fix (such as `invalid_client`) waits at least `max / 2`. During a
    /// delay, requests keep using a still-valid token; if there is none they fail at once with
    /// the last error instead of calling the source again.
    ///
    /// Default: 1 second to 60 seconds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min.min(MAX_LIFETIME);
        self.config.backoff_max = max.max(min).min(MAX_LIFETIME);
        self
    }

    /// Builds the cache. No token is fetched until one is needed.
    pub fn build(self) -> TokenCache {
        let (outcome, _) = watch::channel(None);
        TokenCache {
            shared: Arc::new(Shared {
                current: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                slow: Mutex::new(Slow::default()),
                outcome,
                source: Mutex::new(self.source),
                config: self.config,
                counters: Counters::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache with the default timing (see [`TokenCacheBuilder`]).
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder to configure the cache's timing.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source: source.into_box(),
            config: Config::default(),
        }
    }

    /// A valid token: the cached one, or the result of the fetch in flight, or of a new fetch.
    ///
    /// Use it to authenticate something that is not a tower service (a WebSocket handshake, a
    /// message to a queue) with the same tokens as the layer.
    ///
    /// # Errors
    ///
    /// When no valid token is cached and the fetch fails, or when a recent failure is still
    /// being backed off from; see [`ErrorKind`].
    pub async fn token(&self) -> Result<Token, Error> {
        let cached = self.shared.current.load_full();
        if let Some(entry) = cached.filter(|entry| self.shared.check(entry)) {
            self.shared.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(entry.token.clone());
        }
        Ok(self.shared.acquire(None).await?.token.clone())
    }

    /// Drops the cached token, so that the next request waits for a new one.
    pub fn invalidate(&self) {
        let mut slow = self.shared.lock_slow();
        slow.rejected = false;
        self.shared.current.store(None);
        self.shared.changed();
    }

    /// Fetches a new token now, replacing the cached one, and returns it. Requests made
    /// meanwhile keep using the cached token while it is valid, and keep it if the fetch fails.
    /// A fetch already in flight is joined rather than duplicated, and the failure backoff is
    /// ignored.
    ///
    /// # Errors
    ///
    /// When the fetch fails.
    pub async fn refresh(&self) -> Result<Token, Error> {
        let entry = self.shared.acquire(Some(Reason::Forced)).await?;
        Ok(entry.token.clone())
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            fetches: c.fetches.load(Ordering::Relaxed),
            fetch_failures: c.fetch_failures.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            replays: c.replays.load(Ordering::Relaxed),
            replay_rejections: c.replay_rejections.load(Ordering::Relaxed),
        }
    }

    /// A copy of the current token for one service: see [`Local`].
    pub(crate) fn local(&self) -> Local {
        Local {
            cache: self.clone(),
            generation: u64::MAX,
            entry: None,
            hits: 0,
            stripe: stripe::next(),
        }
    }

    /// Waits for a usable token (the slow path of a request).
    pub(crate) async fn acquire(&self) -> Result<Arc<Entry>, Error> {
        self.shared.acquire(None).await
    }

    /// Invalidates the token with this id if it is still the current one, then waits for a
    /// usable token. If another request already replaced the token, no fetch happens.
    pub(crate) async fn reject_and_acquire(&self, id: u64) -> Result<Arc<Entry>, Error> {
        self.shared.reject(id);
        self.shared.acquire(Some(Reason::Rejected)).await
    }

    /// Invalidates the token with this id if it is still the current one.
    pub(crate) fn reject(&self, id: u64) {
        self.shared.reject(id);
    }

    /// Invalidates the current token if `value` is the header value it was stamped as (with any
    /// scheme).
    pub(crate) fn reject_value(&self, value: &HeaderValue) {
        let id = {
            let current = self.shared.current.load();
            let Some(entry) = current.as_ref() else {
                return;
            };
            let raw = entry.raw(0).as_bytes();
            let stamped = value == entry.bearer(0)
                || value == entry.raw(0)
                || value
                    .as_bytes()
                    .strip_suffix(raw)
                    .is_some_and(|scheme| scheme.ends_with(b" "));
            if !stamped {
                return;
            }
            entry.id
        };
        self.shared.reject(id);
    }

    pub(crate) fn count_rejection(&self) {
        self.shared
            .counters
            .rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_replay_rejection(&self) {
        self.shared
            .counters
            .replay_rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_replay(&self) {
        self.shared.counters.replays.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("TokenCache")
            .field("current", &*current)
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
    /// Whether `entry` may be sent now; starts one background refresh when it is due for one.
    #[inline]
    fn check(self: &Arc<Self>, entry: &Arc<Entry>) -> bool {
        match entry.phase.load(Ordering::Relaxed) {
            FRESH => true,
            DUE => {
                if entry
                    .phase
                    .compare_exchange(DUE, KICKED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    self.refresh_ahead(entry);
                }
                entry.usable()
            }
            KICKED => entry.usable(),
            _ => false,
        }
    }

    /// Announces a change of `current` to [`Local`] copies.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn lock_slow(&self) -> MutexGuard<'_, Slow> {
        // Nothing that can panic runs under this lock; still, a poisoned lock must not turn
        // every later request into a panic.
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reject(&self, id: u64) {
        let current = self.current.load();
        if matches!(&*current, Some(entry) if entry.id == id) {
            let previous = self.current.compare_and_swap(&current, None);
            if matches!(&*previous, Some(entry) if entry.id == id) {
                self.changed();
                self.lock_slow().rejected = true;
                tracing::debug!(token.id = id, "token rejected by the server; dropped");
            }
        }
    }

    async fn acquire(self: &Arc<Self>, reason: Option<Reason>) -> Result<Arc<Entry>, Error> {
        let forced = reason == Some(Reason::Forced);
        let (mut outcome, launch) = {
            let mut slow = self.lock_slow();
            // A fetch may have finished between the caller's lock-free look and this lock.
            let current = self.current.load_full();
            if let Some(entry) = current.as_ref().filter(|entry| !forced && entry.usable()) {
                return Ok(entry.clone());
            }
            let mut launch = None;
            if !slow.fetching {
                if let (Some(retry_at), Some(error), false) =
                    (slow.retry_at, &slow.last_error, forced)
                {
                    if Instant::now() < retry_at {
                        return Err(error.clone());
                    }
                }
                let reason = reason.unwrap_or(match (&current, slow.rejected) {
                    (Some(_), _) => Reason::Expired,
                    (None, true) => Reason::Rejected,
                    (None, false) => Reason::Initial,
                });
                launch = Some(self.prepare_fetch(&mut slow, reason)?);
            }
            self.counters.waits.fetch_add(1, Ordering::Relaxed);
            (self.outcome.subscribe(), launch)
        };
        // Spawned after the lock is released: on a runtime that is shutting down, `spawn` drops
        // the task at once, and its guard takes the lock to publish the cancellation.
        if let Some(launch) = launch {
            launch.spawn();
        }
        match outcome.changed().await {
            Ok(()) => match &*outcome.borrow_and_update() {
                Some(result) => result.clone(),
                None => Err(Error::new(ErrorKind::Cancelled, None)),
            },
            Err(_) => Err(Error::new(ErrorKind::Cancelled, None)),
        }
    }

    /// Starts a background refresh for a token that is due for one, unless a fetch is already
    /// running or the last failure is still being backed off from.
    fn refresh_ahead(self: &Arc<Self>, entry: &Arc<Entry>) {
        let launch = {
            let mut slow = self.lock_slow();
            if slow.fetching {
                return;
            }
            if let Some(retry_at) = slow.retry_at {
                if Instant::now() < retry_at {
                    rearm_at(entry, retry_at);
                    return;
                }
            }
            match self.prepare_fetch(&mut slow, Reason::Expiring) {
                Ok(launch) => {
                    tracing::debug!(
                        token.id = entry.id,
                        "token due for refresh; fetching a new one in the background"
                    );
                    launch
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "cannot refresh the token ahead of expiry");
                    return;
                }
            }
        };
        launch.spawn();
    }

    /// Marks a fetch as running and prepares its task, guard included, so that even a task
    /// that never runs publishes an outcome.
    fn prepare_fetch(self: &Arc<Self>, slow: &mut Slow, reason: Reason) -> Result<Launch, Error> {
        let runtime = Handle::try_current().map_err(|_| Error::new(ErrorKind::NoRuntime, None))?;
        slow.fetching = true;
        Ok(Launch {
            runtime,
            reason,
            guard: FetchGuard {
                shared: Arc::clone(self),
                armed: true,
            },
        })
    }

    /// Publishes the outcome of a fetch. Returns the current entry and the end of the backoff
    /// when a background refresh failed and must be tried again later. `back_off` is false for a
    /// fetch cancelled by its runtime shutting down: that says nothing about the source.
    fn finish(
        &self,
        result: Outcome,
        sent_at: Instant,
        back_off: bool,
    ) -> Option<(Arc<Entry>, Instant)> {
        let mut slow = self.lock_slow();
        slow.fetching = false;
        let mut rearm = None;
        match &result {
            Ok(entry) => {
                tracing::debug!(
                    token.id = entry.id,
                    elapsed = ?sent_at.elapsed(),
                    usable_for = ?entry.usable_for,
                    "token fetched"
                );
                slow.failures = 0;
                slow.retry_at = None;
                slow.last_error = None;
                slow.rejected = false;
                self.current.store(Some(entry.clone()));
                self.changed();
            }
            Err(error) if back_off => {
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                slow.failures = slow.failures.saturating_add(1);
                let delay = self.backoff(slow.failures, error);
                let now = Instant::now();
                let retry_at = now.checked_add(delay).unwrap_or(now + MAX_LIFETIME);
                slow.retry_at = Some(retry_at);
                slow.last_error = Some(error.clone());
                tracing::warn!(
                    error = %Chain(error),
                    failures = slow.failures,
                    retry_in = ?delay,
                    "token fetch failed"
                );
                if let Some(entry) = self.current.load_full() {
                    if entry.phase.load(Ordering::Relaxed) == KICKED {
                        rearm = Some((entry, retry_at));
                    }
                }
            }
            Err(error) => {
                tracing::debug!(error = %Chain(error), "token fetch cancelled");
            }
        }
        self.outcome.send_replace(Some(result));
        rearm
    }

    fn backoff(&self, failures: u32, error: &Error) -> Duration {
        let Config {
            backoff_min: min,
            backoff_max: max,
            ..
        } = self.config;
        let exponent = failures.saturating_sub(1).min(31);
        let full = min.saturating_mul(1 << exponent).min(max).min(MAX_LIFETIME);
        // "Equal jitter": between half and all of the delay.
        let delay = full / 2 + (full / 2).mul_f64(random_unit());
        // A token endpoint knows best: honour its `Retry-After` (up to the maximum), and do not
        // come back soon with credentials it refused for good.
        match error.source_as::<crate::oauth2::Error>() {
            Some(oauth) if !oauth.is_retryable() => delay.max(max / 2),
            Some(oauth) => match oauth.retry_after() {
                Some(asked) => delay.max(asked.min(max)),
                None => delay,
            },
            None => delay,
        }
    }

    /// Checks a token and builds what requests need from it.
    fn prepare(&self, token: Token, sent_at: Instant) -> Result<Arc<Entry>, Error> {
        let secret = token.access_token().secret();
        let (Some(raw), Some(bearer)) = (
            header_values(b"", secret),
            header_values(b"Bearer ", secret),
        ) else {
            return Err(Error::new(ErrorKind::InvalidToken, None));
        };
        if let Some(kind) = token.token_type() {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(
                    token_type = kind,
                    "the token source returned a token that is not a bearer token; it is sent as \
                     configured by the placement anyway"
                );
            }
        }

        let config = &self.config;
        let lifetime = match token.expiry() {
            None => config.default_lifetime,
            Some(Expiry::In(lifetime)) => lifetime,
            Some(Expiry::At(deadline)) => deadline.saturating_duration_since(sent_at),
        }
        .min(MAX_LIFETIME);
        let skew = config.expiry_skew.min(lifetime / 4);
        let usable_for = lifetime - skew;
        let window = config.refresh_ahead.min(usable_for / 2);
        // Jitter widens the window, but a token is still used for 3/8 of its usable life.
        let window =
            (window + window.mul_f64(config.jitter * random_unit())).min(usable_for * 5 / 8);
        let expires_at = sent_at + usable_for;
        let refresh_at = expires_at - window;

        let now = Instant::now();
        let phase = if now >= expires_at {
            EXPIRED
        } else if now >= refresh_at {
            DUE
        } else {
            FRESH
        };
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token,
            raw,
            bearer,
            phase: AtomicU8::new(phase),
            usable_for,
            expires_at,
            timer: OnceLock::new(),
        });
        if phase != EXPIRED {
            arm(&entry, refresh_at, expires_at);
        }
        Ok(entry)
    }
}

/// A fetch ready to be spawned.
struct Launch {
    runtime: Handle,
    reason: Reason,
    guard: FetchGuard,
}

impl Launch {
    fn spawn(self) {
        let Launch {
            runtime,
            reason,
            guard,
        } = self;
        let span = tracing::debug_span!("token_fetch", ?reason);
        runtime.spawn(tracing::Instrument::instrument(fetch(guard, reason), span));
    }
}

async fn fetch(guard: FetchGuard, reason: Reason) {
    let shared = guard.shared.clone();
    let sent_at = Instant::now();
    shared.counters.fetches.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(?reason, "fetching a token");
    let source = shared
        .source
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let request = TokenRequest::new(reason);
    let timeout = shared.config.fetch_timeout;
    let result = match tokio::time::timeout(timeout, source.oneshot(request)).await {
        Ok(Ok(token)) => shared.prepare(token, sent_at),
        Ok(Err(error)) => Err(Error::source_failed(error)),
        Err(_) => Err(Error::timeout(timeout)),
    };
    if let Some((entry, retry_at)) = guard.complete(result, sent_at) {
        // A background refresh failed while the token is still valid: try again once the
        // backoff is over, on the next request after it.
        rearm_at(&entry, retry_at);
    }
}

/// Publishes a cancellation if the fetch task is dropped before it finishes (its runtime shut
/// down, or the source panicked), so that no waiter hangs and later requests can fetch again.
struct FetchGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl FetchGuard {
    fn complete(mut self, result: Outcome, sent_at: Instant) -> Option<(Arc<Entry>, Instant)> {
        let rearm = self.shared.finish(result, sent_at, true);
        self.armed = false;
        rearm
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if self.armed {
            let error = Error::new(ErrorKind::Cancelled, None);
            // A panicking source is a broken source and is backed off from; a runtime shutting
            // down is not the source's fault.
            let back_off = std::thread::panicking();
            self.shared.finish(Err(error), Instant::now(), back_off);
        }
    }
}

/// One service's copy of the current token.
///
/// `BearerAuth::call` has `&mut self`, so each service clone keeps the entry it last used and
/// only compares a generation number with the cache's before using it again: one plain atomic
/// load, where a look at the shared `ArcSwap` costs a few fenced atomic operations. Hits are
/// counted locally and added to the shared counter in batches, so that the counter is not a
/// cache line every request writes.
pub(crate) struct Local {
    cache: TokenCache,
    generation: u64,
    entry: Option<Arc<Entry>>,
    hits: u64,
    stripe: usize,
}

/// Hits counted by a [`Local`] before they are added to the shared counter.
const HIT_BATCH: u64 = 256;

impl Local {
    /// This clone's stripe (see [`stripe`]).
    #[inline]
    pub(crate) fn stripe(&self) -> usize {
        self.stripe
    }

    /// The request path: the current token if it may be sent. Returns `None` when there is no
    /// usable token; starts one background refresh when the token is due for one.
    #[inline]
    pub(crate) fn with_current<R>(&mut self, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shared = &self.cache.shared;
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            // Read after the generation: a change in between only costs another reload.
            self.entry = shared.current.load_full();
            self.generation = generation;
        }
        let entry = self.entry.as_ref()?;
        if !shared.check(entry) {
            return None;
        }
        let result = f(entry);
        self.hits += 1;
        if self.hits == HIT_BATCH {
            self.flush();
        }
        Some(result)
    }

    fn flush(&mut self) {
        let hits = std::mem::take(&mut self.hits);
        if hits > 0 {
            self.cache
                .shared
                .counters
                .hits
                .fetch_add(hits, Ordering::Relaxed);
        }
    }
}

impl Clone for Local {
    fn clone(&self) -> Self {
        self.cache.local()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One fetched token and what requests need from it.
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) token: Token,
    /// The access token alone, as sensitive header values (one per stripe).
    raw: [HeaderValue; STRIPES],
    /// `Bearer <access token>`, as sensitive header values (one per stripe).
    bearer: [HeaderValue; STRIPES],
    phase: AtomicU8,
    usable_for: Duration,
    expires_at: Instant,
    timer: OnceLock<AbortHandle>,
}

impl Entry {
    /// The access token alone, as a sensitive header value: the copy of `stripe`.
    #[inline]
    pub(crate) fn raw(&self, stripe: usize) -> &HeaderValue {
        &self.raw[stripe % STRIPES]
    }

    /// `Bearer <access token>`, as a sensitive header value: the copy of `stripe`.
    #[inline]
    pub(crate) fn bearer(&self, stripe: usize) -> &HeaderValue {
        &self.bearer[stripe % STRIPES]
    }

    /// Whether the token may still be sent. A fresh token is, without reading the clock; in its
    /// refresh window the clock is checked too, so a timer that fires late (a starved runtime,
    /// a paused clock moved forward) never lets an expired token out.
    #[inline]
    fn usable(&self) -> bool {
        match self.phase.load(Ordering::Relaxed) {
            FRESH => true,
            DUE | KICKED => Instant::now() < self.expires_at,
            _ => false,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get() {
            timer.abort();
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase.load(Ordering::Relaxed) {
            FRESH => "fresh",
            DUE | KICKED => "refreshing",
            _ => "expired",
        };
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("phase", &phase)
            .field("usable_for", &self.usable_for)
            .finish()
    }
}

/// The header values for a token, one per stripe: each its own allocation, so that requests of
/// different service clones do not share a reference count.
fn header_values(prefix: &[u8], secret: &str) -> Option<[HeaderValue; STRIPES]> {
    let values: Vec<HeaderValue> = (0..STRIPES)
        .map(|_| header_value(prefix, secret))
        .collect::<Option<_>>()?;
    values.try_into().ok()
}

fn header_value(prefix: &[u8], secret: &str) -> Option<HeaderValue> {
    // RFC 6750 tokens are printable ASCII; anything else (CR, LF, NUL, DEL, non-ASCII) could
    // split or corrupt the request, so such a token is refused rather than sent.
    let printable = |b: &u8| (0x20..0x7f).contains(b);
    if secret.is_empty() || !secret.bytes().all(|b| printable(&b)) {
        return None;
    }
    let mut buf = Vec::with_capacity(prefix.len() + secret.len());
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(secret.as_bytes());
    let mut value = HeaderValue::from_maybe_shared(secret_bytes(buf)).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Starts the timer that moves a token through its phases. It holds only a weak reference, and
/// the entry aborts it when dropped, so a replaced token leaves no task behind.
fn arm(entry: &Arc<Entry>, refresh_at: Instant, expires_at: Instant) {
    let Ok(runtime) = Handle::try_current() else {
        return;
    };
    // Made before spawning: if the runtime shuts down, even before the task first runs, the
    // timer can no longer expire the token, so the guard expires it at once. A request on
    // another runtime then fetches a new token instead of using this one forever.
    let expire = ExpireOnDrop(Arc::downgrade(entry));
    let task = runtime.spawn(async move {
        let expire = expire;
        // A timer first polled after its deadline (a busy runtime, a paused clock moved
        // forward) would wait for another turn of the time driver: skip the sleep instead.
        if Instant::now() < refresh_at {
            sleep_until(refresh_at).await;
        }
        match expire.0.upgrade() {
            Some(entry) if Instant::now() < expires_at => {
                let _ =
                    entry
                        .phase
                        .compare_exchange(FRESH, DUE, Ordering::Relaxed, Ordering::Relaxed);
            }
            // Woken past the expiry (a clock moved forward): expire now.
            Some(_) => return,
            None => return,
        }
        if Instant::now() < expires_at {
            sleep_until(expires_at).await;
        }
    });
    let _ = entry.timer.set(task.abort_handle());
}

struct ExpireOnDrop(Weak<Entry>);

impl Drop for ExpireOnDrop {
    fn drop(&mut self) {
        if let Some(entry) = self.0.upgrade() {
            entry.phase.store(EXPIRED, Ordering::Relaxed);
        }
    }
}

/// Makes a token whose background refresh failed due for a refresh again once the backoff is
/// over (or at once, if the runtime shuts down first).
fn rearm_at(entry: &Arc<Entry>, at: Instant) {
    let Ok(runtime) = Handle::try_current() else {
        return;
    };
    let rearm = RearmOnDrop(Arc::downgrade(entry));
    runtime.spawn(async move {
        let _rearm = rearm;
        sleep_until(at).await;
    });
}

struct RearmOnDrop(Weak<Entry>);

impl Drop for RearmOnDrop {
    fn drop(&mut self) {
        if let Some(entry) = self.0.upgrade() {
            let _ = entry
                .phase
                .compare_exchange(KICKED, DUE, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// A random number in `[0, 1)`, good enough to spread refreshes; not for cryptography.
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
