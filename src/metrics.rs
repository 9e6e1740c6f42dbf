//! Metrics of what token caches do, recorded through the [`metrics`](https://docs.rs/metrics)
//! crate's facade (feature `metrics`), so that any recorder exports them: Prometheus
//! (`metrics-exporter-prometheus`), OpenTelemetry, StatsD, or one of your own.
//!
//! Every [`TokenCache`](crate::TokenCache) (and every key of a
//! [`KeyedCache`](crate::cache::KeyedCache)) records these, with the recorder installed when
//! the event happens:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tower_bearer_token_fetches_total` | counter | `reason` | Calls to the token source. `reason`: `initial` (no token yet), `expiring` (refresh ahead of expiry), `expired`, `rejected` (a server refused the token), `forced` ([`TokenCache::refresh`](crate::TokenCache::refresh)). |
//! | `tower_bearer_token_fetch_failures_total` | counter | `kind` | Fetches that failed and are backed off from. `kind`: the [`ErrorKind`] in snake case: `source`, `timeout`, `invalid_token`, `token_too_large`, `panicked`. |
//! | `tower_bearer_token_fetch_duration_seconds` | histogram | `outcome` | How long each fetch took, from the call to the source to its answer or timeout. `outcome`: `success` or `failure`. |
//! | `tower_bearer_token_waits_total` | counter | | Requests (and [`TokenCache::token`](crate::TokenCache::token) calls) that had to wait for a fetch: no token yet, an expired one, or a rejected one to replace. With refresh ahead and steady traffic, only the first request and rejections wait. |
//! | `tower_bearer_token_wait_duration_seconds` | histogram | | How long each of those waits lasted, until a token or an error came. |
//! | `tower_bearer_backoff_refusals_total` | counter | | Requests failed at once with the last fetch error, without calling the source, because no valid token was cached and that failure is still being [backed off](crate::cache::TokenCacheBuilder::backoff) from. |
//! | `tower_bearer_rejections_total` | counter | `outcome` | Responses that rejected a token (HTTP 401 without `insufficient_scope`, or gRPC `UNAUTHENTICATED`). `outcome`: `dropped` (the token was the current one and was dropped, so a new one is fetched), `replaced` (another request had replaced it already: no fetch), `kept` (dropped less than the [rejection interval](crate::cache::TokenCacheBuilder::rejection_interval) after a previous drop, so kept). |
//! | `tower_bearer_replays_total` | counter | | Requests sent a second time after a rejection. |
//! | `tower_bearer_replay_rejections_total` | counter | | Replays rejected too (also counted in the rejections). A steady rate means the server refuses this client's tokens whatever they are (audience, scope, clock). |
//! | `tower_bearer_store_hits_total` | counter | | With the `redis` feature: tokens found in the shared store. |
//! | `tower_bearer_store_misses_total` | counter | | With the `redis` feature: lookups that found no token in the shared store. |
//! | `tower_bearer_store_lease_waits_total` | counter | | With the `redis` feature: waits for another replica holding the fetch lease. |
//! | `tower_bearer_store_errors_total` | counter | | With the `redis` feature: store operations that failed or timed out (the cache went on without the store). |
//!
//! A cache built with [`metrics_label`](crate::cache::TokenCacheBuilder::metrics_label) adds
//! the label `cache` with that name to each of its metrics, to tell apart the caches of one
//! process (one per API, or per set of credentials). The store metrics (`tower_bearer_store_*`)
//! are recorded by a shared level (feature `redis`), which takes that label from
//! `shared::SharedCacheLayer::metrics_label`.
//!
//! # What is not recorded
//!
//! The cached path records nothing: a request stamped with a cached token (fresh, or inside its
//! refresh-ahead window) costs with this feature what it costs without it. Operators want the
//! expensive events, and those are all here; the number of requests served from the cache is
//! [`CacheStats::hits`](crate::cache::CacheStats::hits), read when needed.
//!
//! No label carries a token, a secret, a [`TokenKey`](crate::TokenKey) (keys are unbounded) or
//! any text from a server: every label value is one of the few listed above, or the name given
//! to `metrics_label`.
//!
//! # Names
//!
//! The `metrics` crate leaves naming to each library and passes names through to exporters as
//! given. These follow Prometheus' conventions: one prefix, `tower_bearer_`, snake case, base
//! units (`_seconds`), and counters ending in `_total`, written in the name itself.
//! `metrics-exporter-prometheus` exports a name as it is given (its recent versions' optional
//! counter suffix is not added to a name that ends with it), and the OpenTelemetry
//! specification's Prometheus mapping leaves a counter named `…_total` as it is. The names are
//! also the constants of this module, for an exporter's per-metric settings. Histograms are
//! exported as summaries by `metrics-exporter-prometheus` unless it is given buckets
//! (`set_buckets_for_metric`).
//!
//! Call [`describe`] once after installing the recorder to give each metric its unit and help
//! text.
//!
//! ```
//! use tower_bearer::{StaticToken, TokenCache};
//!
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! tower_bearer::metrics::describe();
//! let billing = TokenCache::builder(StaticToken::new("t0k3n"))
//!     .metrics_label("billing")
//!     .build();
//! # drop(billing);
//! ```

// Without the feature this module is private and every function below is an empty one that the
// compiler removes; the names are still what the docs list.
#![cfg_attr(
    not(feature = "metrics"),
    allow(dead_code, unreachable_pub, unused_variables)
)]

use crate::{ErrorKind, Reason};

/// Calls to the token source, by `reason`.
pub const TOKEN_FETCHES: &str = "tower_bearer_token_fetches_total";
/// Fetches that failed, by `kind`.
pub const TOKEN_FETCH_FAILURES: &str = "tower_bearer_token_fetch_failures_total";
/// How long fetches took, in seconds, by `outcome`.
pub const TOKEN_FETCH_DURATION: &str = "tower_bearer_token_fetch_duration_seconds";
/// Requests that had to wait for a fetch.
pub const TOKEN_WAITS: &str = "tower_bearer_token_waits_total";
/// How long those requests waited, in seconds.
pub const TOKEN_WAIT_DURATION: &str = "tower_bearer_token_wait_duration_seconds";
/// Requests refused during a failure backoff.
pub const BACKOFF_REFUSALS: &str = "tower_bearer_backoff_refusals_total";
/// Responses that rejected a token, by `outcome`.
pub const REJECTIONS: &str = "tower_bearer_rejections_total";
/// Requests replayed after a rejection.
pub const REPLAYS: &str = "tower_bearer_replays_total";
/// Replays rejected too.
pub const REPLAY_REJECTIONS: &str = "tower_bearer_replay_rejections_total";
/// Tokens found in the shared store (feature `redis`).
pub const STORE_HITS: &str = "tower_bearer_store_hits_total";
/// Shared-store lookups that found no token (feature `redis`).
pub const STORE_MISSES: &str = "tower_bearer_store_misses_total";
/// Waits for another replica's fetch lease (feature `redis`).
pub const STORE_LEASE_WAITS: &str = "tower_bearer_store_lease_waits_total";
/// Failed or timed-out shared-store operations (feature `redis`).
pub const STORE_ERRORS: &str = "tower_bearer_store_errors_total";

/// Gives each metric its unit and help text, for exporters that show them (Prometheus'
/// `# HELP`). Call it once after installing the global recorder; metrics are recorded whether
/// it is called or not.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    let counters = [
        (TOKEN_FETCHES, "Calls to the token source, by reason."),
        (
            TOKEN_FETCH_FAILURES,
            "Token fetches that failed, by error kind.",
        ),
        (TOKEN_WAITS, "Requests that had to wait for a token fetch."),
        (
            BACKOFF_REFUSALS,
            "Requests failed at once while a fetch failure is backed off from.",
        ),
        (
            REJECTIONS,
            "Responses that rejected a token, by what it did to the cached token.",
        ),
        (REPLAYS, "Requests replayed after a rejection."),
        (REPLAY_REJECTIONS, "Replays rejected too."),
        (STORE_HITS, "Tokens found in the shared store."),
        (STORE_MISSES, "Shared-store lookups that found no token."),
        (
            STORE_LEASE_WAITS,
            "Waits for another replica holding the fetch lease.",
        ),
        (STORE_ERRORS, "Shared-store operations that failed."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_histogram!(
        TOKEN_FETCH_DURATION,
        Unit::Seconds,
        "How long token fetches took, by outcome."
    );
    describe_histogram!(
        TOKEN_WAIT_DURATION,
        Unit::Seconds,
        "How long requests waited for a token fetch."
    );
}

/// The label every metric of one cache carries, if its builder named it.
#[derive(Clone, Default)]
pub(crate) struct CacheLabel {
    #[cfg(feature = "metrics")]
    name: Option<::metrics::SharedString>,
}

impl CacheLabel {
    #[cfg(feature = "metrics")]
    pub(crate) fn named(name: String) -> Self {
        Self {
            name: Some(name.into()),
        }
    }

    /// The labels of one event: this cache's, then the event's own.
    #[cfg(feature = "metrics")]
    fn with(&self, own: Option<(&'static str, &'static str)>) -> Vec<::metrics::Label> {
        let mut labels = Vec::with_capacity(2);
        if let Some(name) = &self.name {
            labels.push(::metrics::Label::new("cache", name.clone()));
        }
        if let Some((key, value)) = own {
            labels.push(::metrics::Label::from_static_parts(key, value));
        }
        labels
    }
}

impl std::fmt::Debug for CacheLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "metrics")]
        if let Some(name) = &self.name {
            return f.debug_tuple("CacheLabel").field(&&**name).finish();
        }
        f.write_str("CacheLabel(None)")
    }
}

#[cfg(feature = "metrics")]
fn count(name: &'static str, cache: &CacheLabel, own: Option<(&'static str, &'static str)>) {
    ::metrics::counter!(name, cache.with(own)).increment(1);
}

/// A point in time to measure a duration from; nothing without the feature, so that no clock is
/// read for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    started: tokio::time::Instant,
}

impl Stopwatch {
    #[inline]
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: tokio::time::Instant::now(),
        }
    }
}

/// A call to the token source started.
#[inline]
pub(crate) fn fetch(cache: &CacheLabel, reason: Reason) {
    #[cfg(feature = "metrics")]
    count(TOKEN_FETCHES, cache, Some(("reason", reason_label(reason))));
}

/// A call to the token source ended, after `elapsed`.
#[inline]
pub(crate) fn fetch_done(cache: &CacheLabel, elapsed: std::time::Duration, success: bool) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if success { "success" } else { "failure" };
        ::metrics::histogram!(TOKEN_FETCH_DURATION, cache.with(Some(("outcome", outcome))))
            .record(elapsed.as_secs_f64());
    }
}

/// A fetch failed and is backed off from.
#[inline]
pub(crate) fn fetch_failure(cache: &CacheLabel, kind: ErrorKind) {
    #[cfg(feature = "metrics")]
    count(
        TOKEN_FETCH_FAILURES,
        cache,
        Some(("kind", kind_label(kind))),
    );
}

/// A request starts waiting for a fetch.
#[inline]
pub(crate) fn wait(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(TOKEN_WAITS, cache, None);
}

/// A wait that started at `since` ended.
#[inline]
pub(crate) fn waited(cache: &CacheLabel, since: Stopwatch) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(TOKEN_WAIT_DURATION, cache.with(None))
        .record(since.started.elapsed().as_secs_f64());
}

/// A request was failed with the last error, during a backoff.
#[inline]
pub(crate) fn backoff_refusal(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(BACKOFF_REFUSALS, cache, None);
}

/// A response rejected a token; `outcome` is what that did to the cached token: `dropped`,
/// `replaced` or `kept`.
#[inline]
pub(crate) fn rejection(cache: &CacheLabel, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    count(REJECTIONS, cache, Some(("outcome", outcome)));
}

/// A rejected request was sent again.
#[inline]
pub(crate) fn replay(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(REPLAYS, cache, None);
}

/// A replay was rejected too.
#[inline]
pub(crate) fn replay_rejection(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(REPLAY_REJECTIONS, cache, None);
}

/// A token was found in the shared store.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[inline]
pub(crate) fn store_hit(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(STORE_HITS, cache, None);
}

/// The shared store held no token for the lookup.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[inline]
pub(crate) fn store_miss(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(STORE_MISSES, cache, None);
}

/// This replica waits for another one holding the fetch lease.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[inline]
pub(crate) fn store_lease_wait(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(STORE_LEASE_WAITS, cache, None);
}

/// A shared-store operation failed or timed out.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[inline]
pub(crate) fn store_error(cache: &CacheLabel) {
    #[cfg(feature = "metrics")]
    count(STORE_ERRORS, cache, None);
}

fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Initial => "initial",
        Reason::Expiring => "expiring",
        Reason::Expired => "expired",
        Reason::Rejected => "rejected",
        Reason::Forced => "forced",
    }
}

fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Source => "source",
        ErrorKind::Timeout => "timeout",
        ErrorKind::InvalidToken => "invalid_token",
        ErrorKind::TokenTooLarge => "token_too_large",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Panicked => "panicked",
        ErrorKind::NoRuntime => "no_runtime",
        ErrorKind::UnknownOrigin => "unknown_origin",
    }
}
