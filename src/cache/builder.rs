//! Configuring a [`TokenCache`]: its timing and its floors.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::local::Hits;
use super::{Counters, Shared, Slow, TokenCache};
use crate::metrics::CacheLabel;
use crate::source::BoxSource;

/// Lifetimes are capped so that adding them to an `Instant` can never overflow (Tokio caps its
/// own timers the same way).
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(86_400 * 365 * 30);

#[derive(Clone, Debug)]
pub(super) struct Config {
    /// `None`: the default, which depends on the lifetime (see
    /// [`TokenCacheBuilder::expiry_skew`]).
    pub(super) expiry_skew: Option<Duration>,
    pub(super) refresh_ahead: RefreshAhead,
    pub(super) jitter: f64,
    pub(super) default_lifetime: Duration,
    pub(super) fetch_timeout: Duration,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) min_lifetime: Duration,
    pub(super) rejection_interval: Duration,
    /// The `cache` label of this cache's metrics.
    pub(super) metrics: CacheLabel,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            expiry_skew: None,
            refresh_ahead: RefreshAhead::Adaptive,
            jitter: 0.25,
            default_lifetime: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            min_lifetime: Duration::from_secs(1),
            rejection_interval: Duration::from_secs(10),
            metrics: CacheLabel::default(),
        }
    }
}

/// When a token's background refresh starts: set with [`TokenCacheBuilder::refresh_ahead_mode`]
/// (or [`TokenCacheBuilder::refresh_ahead`], which picks a fixed window).
///
/// Whichever is chosen, the refresh is started by the first request after the refresh point,
/// not by a timer: an idle client does not keep fetching tokens nobody uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshAhead {
    /// The default: refresh as late as is safe, from what the cache has seen of its source.
    ///
    /// Each cache (each key of a [`KeyedCache`](super::KeyedCache)) keeps the latencies of its
    /// last 8 successful fetches, from sending the request to the answer. A token's refresh
    /// starts before its usable end by 3 times the slowest of them, or by a twentieth of its
    /// usable life if that is more (room to retry a failed refresh), widened by the
    /// [jitter](TokenCacheBuilder::jitter). The token's timer starts that refresh at that point
    /// if the token was used since it arrived, so sparse traffic does not wait either; a token
    /// nobody used is refreshed by the next request. The first token is planned
    /// from its own fetch, which includes connecting to the endpoint and so tends to be the
    /// slowest. A token is still used for a fifth of its usable life before its refresh starts,
    /// so that a token that lives barely longer than a fetch does not refresh in a loop.
    ///
    /// A token endpoint answering within its usual latency (up to about three times the
    /// slowest of the last eight fetches) then never makes a request wait, and tokens are used
    /// for about 90 % of their usable life (at least 85 % for lifetimes from 5 s to 1 h and
    /// latencies up to 200 ms, or up to 2 s for lifetimes of a minute and more). The price: a
    /// refresh that fails has the margin only to be retried in (a twentieth of the usable life,
    /// 3 minutes for an hour's token), where a fixed 5-minute window leaves more; choose
    /// [`Fixed`](Self::Fixed) when riding out long token endpoint outages matters more than the
    /// number of token requests.
    Adaptive,
    /// The refresh starts this long before the usable end, at most half of the usable life
    /// counted from when the token was requested, widened by the jitter up to 5/8 of it (so a
    /// token is used for at least 3/8 of it); the expiry skew is at most a quarter of the
    /// lifetime. This is the timeline of tower-bearer 0.x, whose default was
    /// `Fixed(Duration::from_secs(300))`.
    Fixed(Duration),
}

/// Configures a [`TokenCache`]. Made by [`TokenCache::builder`].
///
/// The timeline of one token, with its lifetime `L` counted from when its request was sent (an
/// OAuth 2.0 `expires_in` counts from then):
///
/// ```text
/// sent ──── arrived ──────────── refresh starts ──── usable end ── stated expiry
///  0          F                   E − M               E = L − S        L
///             └────────────── usable life ───────────┘
/// ```
///
/// - `F` is how long the fetch took: the token arrives then.
/// - `S` is the [expiry skew](Self::expiry_skew): the token is not sent after its *usable end*
///   `E` (which is never less than the [`min_lifetime`](Self::min_lifetime) floor).
/// - The token's *usable life* is the time from its arrival to its usable end, `E − F`: the
///   time it can actually be sent in. (Should the fetch take longer than `E`, it is zero and
///   the token is not used.)
/// - `M` is the refresh-ahead margin: by default [adaptive](RefreshAhead::Adaptive) (a safe
///   multiple of the slowest recent fetch, at least a twentieth of the usable life), or
///   [fixed](RefreshAhead::Fixed); widened by a random [jitter](Self::jitter) so that a fleet
///   of clients does not refresh in lockstep.
///
/// A refresh that takes its usual time ends before `E`, so its token replaces the current one
/// without any request waiting: the current token was used from `F` to `E − M + F'` (`F'` the
/// refresh's own latency), that is for `1 − (M − F') / (E − F)` of its usable life.
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
    pub(super) source: BoxSource,
    pub(super) config: Config,
    pub(super) max_keys: usize,
    pub(super) idle_timeout: Duration,
}

impl TokenCacheBuilder {
    pub(super) fn new(source: BoxSource) -> Self {
        Self {
            source,
            config: Config::default(),
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }

    /// For a [keyed cache](Self::build_keyed): how many keys it holds at most. When a new key
    /// would exceed it, keys idle for the [idle timeout](Self::idle_timeout) are dropped, then,
    /// if that is not enough, the longest idle ones; a dropped key's token is fetched again when
    /// next needed. Clamped to at least 1.
    ///
    /// Default: 1024.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// For a [keyed cache](Self::build_keyed): how long a key may go unused before it is
    /// dropped to make room for a new one. Use is seen by the sweeps that run when the cache
    /// is full: a key unused between two sweeps at least this far apart is dropped at the
    /// second, with every other such key, even beyond the room needed.
    ///
    /// Default: 10 minutes.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How long before its stated expiry a token stops being used (its usable end), to absorb
    /// the time a request carrying it spends in flight and the rounding of lifetimes to whole
    /// seconds: a server stating `expires_in: 5` may count it from the start of the second it
    /// issued the token in, so the token can die up to a second early. A value set here is used
    /// as given, up to a quarter of the token's lifetime.
    ///
    /// Default: a twentieth of the token's lifetime, at least 1 second and at most 30 seconds,
    /// and never more than half of the lifetime (1 s of a 5 s token, 3 s of a minute's, 30 s
    /// from 10 minutes on). With a [fixed](RefreshAhead::Fixed) refresh-ahead window, the
    /// default of 0.x: 30 seconds, and never more than a quarter of the lifetime.
    pub fn expiry_skew(mut self, skew: Duration) -> Self {
        self.config.expiry_skew = Some(skew);
        self
    }

    /// A fixed refresh-ahead window: one background refresh starts this long before the end of
    /// a token's usable life, while requests keep using the current token. Same as
    /// `refresh_ahead_mode(RefreshAhead::Fixed(window))`; see [`RefreshAhead::Fixed`].
    ///
    /// The refresh is started by the first request inside this window, not by a timer: an idle
    /// client does not keep fetching tokens nobody uses, and its first request after the token's
    /// usable life waits for a new one.
    ///
    /// Default: not fixed, but [adaptive](RefreshAhead::Adaptive): the refresh starts 3 times
    /// the slowest recent fetch (at least a twentieth of the usable life) before the usable end.
    /// Until 0.x the default was a fixed window of 5 minutes, never more than half of the
    /// token's usable life: `refresh_ahead(Duration::from_secs(300))` restores it.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.config.refresh_ahead = RefreshAhead::Fixed(window);
        self
    }

    /// When a token's background refresh starts: as late as is safe given the latencies seen
    /// ([`RefreshAhead::Adaptive`]), or a fixed window before its usable end
    /// ([`RefreshAhead::Fixed`]).
    ///
    /// Default: [`RefreshAhead::Adaptive`].
    pub fn refresh_ahead_mode(mut self, mode: RefreshAhead) -> Self {
        self.config.refresh_ahead = mode;
        self
    }

    /// How much the refresh-ahead margin is randomly widened, as a fraction of it, so that a
    /// fleet of clients started together does not refresh in lockstep. It only ever moves a
    /// refresh earlier. Clamped to `0.0..=1.0`.
    ///
    /// Default: `0.25` (the margin grows by 0 to 25 %).
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
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
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
    /// rejection is counted in [`CacheStats::kept_rejections`](super::CacheStats::kept_rejections); a warning is logged once per
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

    /// The value of the label `cache` on every [metric](crate::metrics) this cache records (each
    /// key's, for a [keyed cache](Self::build_keyed)), to tell apart the caches of one process:
    /// one per API, or per set of credentials. Give each cache a fixed name from your
    /// configuration, never something that varies per request: each name is a time series of
    /// its own.
    ///
    /// Default: none (the metrics carry no `cache` label).
    #[cfg(feature = "metrics")]
    pub fn metrics_label(mut self, name: impl Into<String>) -> Self {
        self.config.metrics = CacheLabel::named(name.into());
        self
    }

    /// Builds the cache. No token is fetched until one is needed.
    pub fn build(self) -> TokenCache {
        Self::build_with(self.source, self.config)
    }

    /// Builds a cache holding one token per [`TokenKey`](crate::TokenKey), each with its own
    /// single flight, refresh ahead, backoff and rejection, and the timing configured here. The
    /// source receives each key in its [`TokenRequest`](crate::TokenRequest)s.
    pub fn build_keyed(self) -> super::KeyedCache {
        super::KeyedCache::new(self)
    }

    pub(super) fn build_with(source: BoxSource, config: Config) -> TokenCache {
        let (outcome, _) = watch::channel(None);
        TokenCache {
            shared: Arc::new(Shared {
                current: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                slow: Mutex::new(Slow::default()),
                outcome,
                source: Mutex::new(source),
                config,
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
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}
