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
    pub(super) expiry_skew: Duration,
    pub(super) refresh_ahead: Duration,
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
            expiry_skew: Duration::from_secs(30),
            refresh_ahead: Duration::from_secs(300),
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
