//! The token state shared by every clone of a layer: single-flight fetches, refresh ahead of
//! expiry, compare-and-swap invalidation of rejected tokens and failure backoff.
//!
//! # How a request finds its token
//!
//! The current token lives behind an [`ArcSwapOption`], together with the header values that
//! carry it, already built. A request loads it without a lock and without reading the clock: a
//! small timer task per token flips its phase from *fresh* to *due* at the refresh-ahead point and
//! to *expired* at the end of its usable life. When it flips a token to *due*, the timer starts
//! one background fetch itself if the token was used since it arrived (an idle cache stops
//! fetching); otherwise the first request that sees *due* starts it. Requests go on with the
//! current token meanwhile; only an expired or missing token sends requests to the slow path,
//! where they wait for the one fetch in flight.
//!
//! Fetches run in spawned tasks, so dropping the request that started one cancels nothing.

mod builder;
mod entry;
mod fetch;
mod keyed;
mod local;
mod timing;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::stamp::MAX_TOKEN_BYTES;
pub use builder::{RefreshAhead, TokenCacheBuilder};
pub(crate) use entry::Entry;
pub use keyed::KeyedCache;
pub(crate) use local::Local;

use crate::metrics;
use crate::source::BoxSource;
use crate::stamp::Stripe;
use crate::{Error, Reason, Token, TokenSource};
use builder::Config;
use entry::{DUE, FRESH, KICKED};
use local::Hits;
use timing::Latencies;

/// A token cache: the shared state behind [`BearerAuthLayer`](crate::BearerAuthLayer).
///
/// Every layer made with [`BearerAuthLayer::new`](crate::BearerAuthLayer::new) creates one. Build
/// one yourself to change its timing, to share it between several layers (two clients with the
/// same credentials then fetch one token), or to read tokens outside of a tower stack. Clones
/// share the same state.
///
/// A cache needs a Tokio runtime when it fetches: fetches run in spawned tasks.
///
/// # When tokens are refreshed
///
/// A token's *usable life* runs from its arrival (when its source answered) to its *usable
/// end*: its stated expiry, counted from when its request was sent, minus the
/// [expiry skew](TokenCacheBuilder::expiry_skew). By default the refresh ahead is
/// [adaptive](RefreshAhead::Adaptive): the cache keeps the latencies of its last 8 successful
/// fetches and starts a token's background refresh 3 times the slowest of them (at least a
/// twentieth of the usable life) before the usable end, a little earlier by a random jitter.
/// So a token endpoint answering within its usual latency never makes a request wait, and
/// tokens are used for about 90 % of their usable life. The [timeline](TokenCacheBuilder) gives
/// the details; [`TokenCacheBuilder::refresh_ahead`] sets a fixed window instead.
///
/// # Testing with a paused clock
///
/// A fresh token is served without reading the clock; a small timer task per token notices when
/// it enters its refresh window and when it expires. After `tokio::time::advance`, let that task
/// run before the next request (`tokio::task::yield_now().await`, or use `tokio::time::sleep`,
/// which runs due timers in order). Inside the refresh window the clock is read on every
/// request, so a timer that runs late never lets an expired token out unless the token has no
/// refresh window: a fixed refresh-ahead window was set to zero, or the token lives no longer
/// than the [floor](TokenCacheBuilder::min_lifetime).
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
    /// The token last dropped, because a server rejected it or by
    /// [`invalidate`](TokenCache::invalidate), for the next fetch's
    /// [`TokenRequest::current`](crate::TokenRequest::current): a shared level must not hand
    /// it back.
    dropped: Option<Arc<Token>>,
    /// When a rejection last dropped the current token (which makes the next request fetch).
    last_rejection_drop: Option<Instant>,
    /// Whether the rejections kept since that drop were logged already.
    throttle_logged: bool,
    /// How long the last successful fetches took, for the adaptive refresh ahead.
    latencies: Latencies,
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

impl TokenCache {
    /// A cache with the default timing (see [`TokenCacheBuilder`]).
    pub fn new(source: impl TokenSource) -> Self {
        Self::builder(source).build()
    }

    /// A builder to configure the cache's timing.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        TokenCacheBuilder::new(source.into_box())
    }

    /// A valid token: the cached one, or the result of the fetch in flight, or of a new fetch.
    ///
    /// Use it to authenticate something that is not a tower service (a WebSocket handshake, a
    /// message to a queue) with the same tokens as the layer.
    ///
    /// # Errors
    ///
    /// When no valid token is cached and the fetch fails, or when a recent failure is still
    /// being backed off from; see [`ErrorKind`](crate::ErrorKind).
    pub async fn token(&self) -> Result<Token, Error> {
        Ok(self.entry().await?.token.clone())
    }

    /// The entry of a valid token, as [`token`](Self::token) finds it.
    async fn entry(&self) -> Result<Arc<Entry>, Error> {
        let cached = self.shared.current.load_full();
        if let Some(entry) = cached.filter(|entry| self.shared.check(entry)) {
            self.shared.hits.add(1);
            return Ok(entry);
        }
        self.shared.acquire(None).await
    }

    /// Drops the cached token, so that the next request waits for a new one.
    pub fn invalidate(&self) {
        let mut slow = self.shared.lock_slow();
        slow.rejected = false;
        // Named to the next fetch (its `TokenRequest::current`), so that a shared cache level
        // does not answer it with the very token dropped here.
        if let Some(entry) = self.shared.current.swap(None) {
            slow.dropped = Some(Arc::new(entry.token.clone()));
        }
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
    #[inline]
    pub(crate) fn local(&self) -> Local {
        Local::new(self.clone(), Stripe::next())
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
    /// Returns whether it was.
    pub(crate) fn reject_value(&self, value: &HeaderValue) -> bool {
        let id = {
            let current = self.shared.current.load();
            let Some(entry) = current.as_ref() else {
                return false;
            };
            if !entry.stamp.is_stamped_as(value) {
                return false;
            }
            entry.id
        };
        let rejection = self.shared.reject(id);
        self.count_rejection(rejection);
        true
    }

    /// Whether a fetch is in flight.
    pub(crate) fn is_fetching(&self) -> bool {
        self.shared.lock_slow().fetching
    }

    /// Counts a response's rejection of a token, with what [`reject`](Self::reject) did.
    pub(crate) fn count_rejection(&self, rejection: Rejection) {
        self.shared
            .counters
            .rejections
            .fetch_add(1, Ordering::Relaxed);
        let outcome = match rejection {
            Rejection::Dropped => "dropped",
            Rejection::Replaced => "replaced",
            Rejection::Kept => "kept",
        };
        metrics::rejection(&self.shared.config.metrics, outcome);
    }

    pub(crate) fn count_replay_rejection(&self) {
        self.shared
            .counters
            .replay_rejections
            .fetch_add(1, Ordering::Relaxed);
        metrics::replay_rejection(&self.shared.config.metrics);
    }

    pub(crate) fn count_replay(&self) {
        self.shared.counters.replays.fetch_add(1, Ordering::Relaxed);
        metrics::replay(&self.shared.config.metrics);
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

/// A cache is a token source too, for sources that build on another one's tokens (such as the
/// subject token of an OAuth 2.0 token exchange, `oauth2::TokenExchange`): each request is
/// answered as [`token`](TokenCache::token) answers, from the cache while its token is valid,
/// with its expiry set to when this cache stops using it ([`Expiry::At`](crate::Expiry::At)),
/// since a lifetime stated as `expires_in` counts from a fetch the asker did not see. The
/// request's reason and key are not read: the cache refreshes by its own rules, for the key it
/// was built for.
impl tower_service::Service<crate::TokenRequest> for TokenCache {
    type Response = Token;
    type Error = Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Token, Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: crate::TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let entry = this.entry().await?;
            Ok(entry.token.clone().with_expires_at(entry.expires_at))
        })
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
        let rejected = match &*current {
            Some(entry) if entry.id == id => entry,
            _ => return Rejection::Replaced,
        };
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
        slow.dropped = Some(Arc::new(rejected.token.clone()));
        self.current.store(None);
        self.changed();
        slow.rejected = true;
        slow.last_rejection_drop = Some(now);
        slow.throttle_logged = false;
        tracing::debug!(token.id = id, "token rejected by the server; dropped");
        Rejection::Dropped
    }
}
