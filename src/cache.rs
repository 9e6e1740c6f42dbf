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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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
use crate::shown::shown;
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

/// The largest access token the cache accepts: 64 KiB. Far above any real token (JWTs with many
/// claims reach a few KiB) and above what HTTP servers accept in a header (8 to 64 KiB for all
/// of them together).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why the cache refused a token: the cause of an [`ErrorKind::InvalidToken`] or
/// [`ErrorKind::TokenTooLarge`] error, for people (the kind is for programs).
#[derive(Debug)]
enum Refused {
    TooLarge(usize),
    NotPrintable,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(len) => write!(
                f,
                "the access token is {len} bytes long, over the limit of {MAX_TOKEN_BYTES} bytes"
            ),
            Self::NotPrintable => f.write_str(
                "the access token is empty or holds a byte that is not printable ASCII (a \
                 control character, a line break, or a non-ASCII byte)",
            ),
        }
    }
}

impl std::error::Error for Refused {}

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
/// request, so a timer that runs late never lets an expired token out unless the token has no
/// refresh window: the refresh-ahead window was set to zero, or the token lives no longer than
/// the [floor](TokenCacheBuilder::min_lifetime).
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
    hits: Hits,
    next_id: AtomicU64,
    /// Whether a lifetime under the floor was logged already (once per cache).
    short_lifetime_logged: AtomicBool,
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
    /// When a rejection last dropped the current token (which makes the next request fetch).
    last_rejection_drop: Option<Instant>,
    /// Whether the rejections kept since that drop were logged already.
    throttle_logged: bool,
}

/// What a server's rejection of a token did to the cache. Whichever it is, a replay takes the
/// current token (waiting for the fetch in flight if there is none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Rejection {
    /// The token was the current one and was dropped: the replay waits for a new one.
    Dropped,
    /// The token had been replaced already: a newer one is there (or being fetched) to replay
    /// with, at no extra fetch.
    Replaced,
    /// The token is the current one, but a rejection dropped a token less than the rejection
    /// interval ago: it is kept, and the replay carries it again.
    Kept,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    waits: AtomicU64,
    rejections: AtomicU64,
    kept_rejections: AtomicU64,
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
    /// Exact when read: every request that a service clone finished stamping before
    /// [`TokenCache::stats`] was called is in it. (Only while more than 64 clones of the
    /// cache's services are alive at once, each clone beyond those adds its hits in batches of
    /// 64, so up to 63 per such clone show up late.)
    pub hits: u64,
    /// Requests (and [`TokenCache::token`] calls) that had to wait for a token: none was cached,
    /// the cached one had expired, or theirs was rejected and they waited for a new one to be
    /// replayed with. With steady traffic, refresh ahead of expiry keeps the expired case at zero.
    pub waits: u64,
    /// Responses that rejected a token (HTTP 401 without `insufficient_scope`).
    pub rejections: u64,
    /// Rejections (also counted in `rejections`) that did not drop the token, because a
    /// rejection had dropped a token less than the
    /// [rejection interval](TokenCacheBuilder::rejection_interval) before; a request was
    /// replayed with the same token. A steady count means the API refuses this client's tokens
    /// whatever they are (audience, scope, clock): a new token would not help, so none is
    /// fetched.
    pub kept_rejections: u64,
    /// Requests sent a second time after a rejection: with a fresh token, or with the same one
    /// when the rejection was [kept](Self::kept_rejections).
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
    min_lifetime: Duration,
    rejection_interval: Duration,
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
            min_lifetime: Duration::from_secs(1),
            rejection_interval: Duration::from_secs(10),
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
///
/// Two floors keep a misbehaving server from making the cache call its source on every request:
///
/// - [`min_lifetime`](Self::min_lifetime): whatever lifetime a token states (`expires_in` of 0
///   or negative included), it is used for at least this long and not refreshed before; so
///   lifetimes never cause more than one fetch per `min_lifetime` (1 s by default).
/// - [`rejection_interval`](Self::rejection_interval): rejections (401s) drop a token and cause
///   a fetch at most once per interval (10 s by default); a rejection within it keeps the
///   token and replays the request with it, since a token fetched moments ago that is refused
///   points at the API (or one of its replicas), not at the token.
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

    /// The shortest time a token is used for, whatever lifetime its source states, and before
    /// which it is not refreshed ahead.
    ///
    /// A token endpoint that answers `expires_in: 0` (or a negative or tiny value) would
    /// otherwise make every request fetch a token. Such a token is used for this long instead;
    /// the first time a lifetime under the floor is seen, a warning is logged (once per cache).
    ///
    /// The floor is a trade-off: a token that really lives less than it is still sent after it
    /// has expired, and the API's 401 for it goes through [rejection](Self::rejection_interval)
    /// (a drop, a fetch and a replay, at most once per rejection interval). The default is
    /// below the lifetime of any token a real deployment issues, so only endpoints that state
    /// nonsense lifetimes meet it. Raise it to call such an endpoint less often (10 s bounds it
    /// to 6 token requests a minute); `Duration::ZERO` turns the floor off.
    ///
    /// Default: 1 second.
    pub fn min_lifetime(mut self, floor: Duration) -> Self {
        self.config.min_lifetime = floor.min(MAX_LIFETIME);
        self
    }

    /// How often at most a rejection (a 401 for the current token) may drop the token and make
    /// the cache fetch a new one.
    ///
    /// The first rejection drops the token and the request is replayed with a fresh one. A
    /// rejection of the current token less than this interval after that keeps the token: the
    /// request is replayed with the same token (a replica that refused it by mistake may not be
    /// the one that answers the replay), whatever the replay answers is returned, and the
    /// rejection is counted in [`CacheStats::kept_rejections`]; a warning is logged once per
    /// such episode. So an API that refuses every token (a wrong audience, a missing scope, a
    /// clock problem) costs at most one token request per interval instead of two per API
    /// request, and its 401s keep reaching the caller. Rejections of a token that was already
    /// replaced are not limited: they replay with the newer token at no extra fetch.
    /// `Duration::ZERO` turns the limit off: every rejection of the current token drops it.
    ///
    /// Default: 10 seconds.
    pub fn rejection_interval(mut self, interval: Duration) -> Self {
        self.config.rejection_interval = interval.min(MAX_LIFETIME);
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
                hits: Hits::default(),
                next_id: AtomicU64::new(1),
                short_lifetime_logged: AtomicBool::new(false),
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
            self.shared.hits.add(1);
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
            hits: self.shared.hits.total(),
            waits: c.waits.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            kept_rejections: c.kept_rejections.load(Ordering::Relaxed),
            replays: c.replays.load(Ordering::Relaxed),
            replay_rejections: c.replay_rejections.load(Ordering::Relaxed),
        }
    }

    /// A copy of the current token for one service: see [`Local`].
    pub(crate) fn local(&self) -> Local {
        let stripe = stripe::next();
        Local {
            cache: self.clone(),
            generation: u64::MAX,
            entry: None,
            hit_slot: self.shared.hits.claim(stripe),
            unpublished_hits: 0,
            stripe,
        }
    }

    /// Waits for a usable token (the slow path of a request).
    pub(crate) async fn acquire(&self) -> Result<Arc<Entry>, Error> {
        self.shared.acquire(None).await
    }

    /// Waits for a usable token to replay a rejected request with: the one that replaced the
    /// rejected token, or the result of a fetch.
    pub(crate) async fn acquire_for_replay(&self) -> Result<Arc<Entry>, Error> {
        self.shared.acquire(Some(Reason::Rejected)).await
    }

    /// Invalidates the token with this id if it is still the current one, unless a rejection
    /// dropped a token less than the rejection interval ago (see [`Rejection`]).
    pub(crate) fn reject(&self, id: u64) -> Rejection {
        self.shared.reject(id)
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
        let _ = self.shared.reject(id);
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

    fn reject(&self, id: u64) -> Rejection {
        // Decided under the lock, which every change of `current` takes: when many requests
        // carrying one token are rejected together, the first drops it and every other one must
        // see that it was replaced, not count as a second rejection within the interval.
        let mut slow = self.lock_slow();
        let current = self.current.load();
        if !matches!(&*current, Some(entry) if entry.id == id) {
            return Rejection::Replaced;
        }
        let now = Instant::now();
        let interval = self.config.rejection_interval;
        if let Some(last) = slow.last_rejection_drop {
            if now.saturating_duration_since(last) < interval {
                self.counters
                    .kept_rejections
                    .fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut slow.throttle_logged, true) {
                    tracing::warn!(
                        token.id = id,
                        since_last_drop = ?now.saturating_duration_since(last),
                        rejection_interval = ?interval,
                        "the server rejected the current token soon after a rejection made the \
                         cache fetch it: the token is kept, and rejected requests are replayed \
                         with it, until the interval has passed. A server that refuses fresh \
                         tokens points at the API (audience, scope, clock) or at one of its \
                         replicas, not at the token (logged once per episode; counted in \
                         CacheStats::kept_rejections)"
                    );
                }
                return Rejection::Kept;
            }
        }
        self.current.store(None);
        self.changed();
        slow.rejected = true;
        slow.last_rejection_drop = Some(now);
        slow.throttle_logged = false;
        tracing::debug!(token.id = id, "token rejected by the server; dropped");
        Rejection::Dropped
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
        // The source knows best (a `SourceError`'s hint): honour a server's `Retry-After` (up
        // to the maximum), and do not come back soon with credentials refused for good.
        match error.retry() {
            crate::RetryHint::NotSoon => delay.max(max / 2),
            crate::RetryHint::After(asked) => delay.max(asked.min(max)),
            crate::RetryHint::Backoff => delay,
        }
    }

    /// Checks a token and builds what requests need from it.
    fn build_entry(&self, token: Token, sent_at: Instant) -> Result<Arc<Entry>, Error> {
        let secret = token.access_token().secret();
        if secret.len() > MAX_TOKEN_BYTES {
            // Held once per stripe and header form: a huge token would cost that many times
            // its size, and no server accepts such a header anyway.
            return Err(Error::new(
                ErrorKind::TokenTooLarge,
                Some(Box::new(Refused::TooLarge(secret.len()))),
            ));
        }
        let (Some(raw), Some(bearer)) = (
            header_values(b"", secret),
            header_values(b"Bearer ", secret),
        ) else {
            return Err(Error::new(
                ErrorKind::InvalidToken,
                Some(Box::new(Refused::NotPrintable)),
            ));
        };
        if let Some(kind) = token.token_type() {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(
                    token_type = %shown(kind, 64),
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
        let floor = config.min_lifetime;
        if lifetime < floor && !self.short_lifetime_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                lifetime = ?lifetime,
                min_lifetime = ?floor,
                "the token source stated a lifetime under the floor: the token is used for the \
                 floor's length instead, so that the source is not called on every request \
                 (TokenCacheBuilder::min_lifetime; logged once per cache)"
            );
        }
        let skew = config.expiry_skew.min(lifetime / 4);
        let usable_for = (lifetime - skew).max(floor);
        let window = config.refresh_ahead.min(usable_for / 2);
        // Jitter widens the window, but a token is still used for 3/8 of its usable life.
        let window =
            (window + window.mul_f64(config.jitter * random_unit())).min(usable_for * 5 / 8);
        let expires_at = sent_at + usable_for;
        // Not refreshed before the floor either: lifetimes cause one fetch per floor at most.
        let refresh_at = (expires_at - window).max(sent_at + floor);

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
        Ok(Ok(token)) => shared.build_entry(token, sent_at),
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
            // A panicking source is a broken source and is backed off from; a runtime shutting
            // down is not the source's fault.
            let panicked = std::thread::panicking();
            let kind = if panicked {
                ErrorKind::Panicked
            } else {
                ErrorKind::Cancelled
            };
            self.shared
                .finish(Err(Error::new(kind, None)), Instant::now(), panicked);
        }
    }
}

/// One service's copy of the current token.
///
/// `BearerAuth::call` has `&mut self`, so each service clone keeps the entry it last used and
/// only compares a generation number with the cache's before using it again: one plain atomic
/// load, where a look at the shared `ArcSwap` costs a few fenced atomic operations. Hits are
/// counted in a slot of this clone's own (see [`Hits`]), so that no counter is a cache line
/// that every request writes.
pub(crate) struct Local {
    cache: TokenCache,
    generation: u64,
    entry: Option<Arc<Entry>>,
    /// The slot this clone counts its hits in (see [`Hits`]).
    hit_slot: Option<usize>,
    /// Without a slot: hits not yet added to the shared counter.
    unpublished_hits: u64,
    stripe: usize,
}

/// Hits a clone without a slot counts before adding them to the shared counter.
const HIT_BATCH: u64 = 64;

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
        match self.hit_slot {
            Some(slot) => shared.hits.add_one(slot),
            None => {
                self.unpublished_hits += 1;
                if self.unpublished_hits == HIT_BATCH {
                    shared.hits.add(std::mem::take(&mut self.unpublished_hits));
                }
            }
        }
        Some(result)
    }
}

impl Clone for Local {
    fn clone(&self) -> Self {
        self.cache.local()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let hits = &self.cache.shared.hits;
        match self.hit_slot {
            Some(slot) => hits.release(slot),
            None => hits.add(self.unpublished_hits),
        }
    }
}

/// The hit counters of a cache.
///
/// A counter that every request increments would be one cache line written by every core, and
/// counting in batches would make [`TokenCache::stats`] wrong when read. So each service clone
/// ([`Local`]) claims a slot of its own when it is made, on its own cache line, and counts in it
/// with a plain load and store (it is the slot's only writer); it gives the slot back when it is
/// dropped, and the next clone to claim it counts on from there. `stats()` adds the slots up.
/// Claiming takes no lock and allocates nothing, so a service cloned for every request pays
/// about what one shared increment costs. A clone that finds its stripe's slots all taken (more
/// than 64 clones alive at once) counts locally and adds its hits to `overflow` in batches of
/// [`HIT_BATCH`] and when it is dropped: `stats()` misses at most that many per such clone.
struct Hits {
    /// Hits of [`TokenCache::token`] and of clones without a slot.
    overflow: AtomicU64,
    slots: [HitSlot; STRIPES * SLOTS_PER_STRIPE],
}

/// Slots per stripe: enough for the clones a runtime's workers keep alive at once.
const SLOTS_PER_STRIPE: usize = 8;

/// The hits counted in one slot, by the clones that held it.
#[derive(Default)]
#[repr(align(64))]
struct HitSlot {
    claimed: AtomicBool,
    hits: AtomicU64,
}

impl Default for Hits {
    fn default() -> Self {
        Self {
            overflow: AtomicU64::new(0),
            slots: std::array::from_fn(|_| HitSlot::default()),
        }
    }
}

impl Hits {
    /// A free slot of `stripe`, claimed; `None` if they are all taken.
    fn claim(&self, stripe: usize) -> Option<usize> {
        let first = (stripe % STRIPES) * SLOTS_PER_STRIPE;
        (first..first + SLOTS_PER_STRIPE).find(|&i| {
            let claimed = &self.slots[i].claimed;
            // Acquire: the previous holder's last count happens before this holder's first.
            !claimed.load(Ordering::Relaxed)
                && claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// One hit, in a slot this clone holds.
    #[inline]
    fn add_one(&self, slot: usize) {
        // One writer at a time: a load and a store, no read-modify-write.
        let hits = &self.slots[slot].hits;
        hits.store(hits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Hits counted without a slot.
    fn add(&self, hits: u64) {
        if hits > 0 {
            self.overflow.fetch_add(hits, Ordering::Relaxed);
        }
    }

    fn release(&self, slot: usize) {
        self.slots[slot].claimed.store(false, Ordering::Release);
    }

    /// Every hit counted so far.
    fn total(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.hits.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.overflow.load(Ordering::Relaxed)
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
