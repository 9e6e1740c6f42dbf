//! Fetching tokens: one fetch at a time in a spawned task, its outcome published to every
//! waiter, failures backed off from, and what requests need built from each new token.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tower::ServiceExt;

use super::builder::{Config, MAX_LIFETIME};
use super::entry::{arm, rearm_at, Entry, DUE, EXPIRED, FRESH, KICKED};
use super::timing::{plan, Plan};
use super::{Outcome, Shared, Slow};
use crate::error::{Chain, ErrorKind};
use crate::metrics;
use crate::shown::shown;
use crate::source::{RetryHint, SourceError};
use crate::stamp::{Stamp, Unstampable};
use crate::{Error, Expiry, Reason, Token, TokenRequest};

impl Shared {
    pub(super) async fn acquire(
        self: &Arc<Self>,
        reason: Option<Reason>,
    ) -> Result<Arc<Entry>, Error> {
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
                        metrics::backoff_refusal(&self.config.metrics);
                        return Err(error.clone());
                    }
                }
                let reason = reason.unwrap_or(match (&current, slow.rejected) {
                    (Some(_), _) => Reason::Expired,
                    (None, true) => Reason::Rejected,
                    (None, false) => Reason::Initial,
                });
                let replacing = match &current {
                    Some(entry) => Some(Arc::new(entry.token.clone())),
                    None => slow.dropped.clone(),
                };
                launch = Some(self.claim_fetch(&mut slow, reason, replacing)?);
            }
            self.counters.waits.fetch_add(1, Ordering::Relaxed);
            metrics::wait(&self.config.metrics);
            (self.outcome.subscribe(), launch)
        };
        // Spawned after the lock is released: on a runtime that is shutting down, `spawn` drops
        // the task at once, and its guard takes the lock to publish the cancellation.
        if let Some(launch) = launch {
            launch.spawn();
        }
        let waiting = metrics::Stopwatch::start();
        let result = match outcome.changed().await {
            Ok(()) => match &*outcome.borrow_and_update() {
                Some(result) => result.clone(),
                None => Err(Error::new(ErrorKind::Cancelled, None)),
            },
            Err(_) => Err(Error::new(ErrorKind::Cancelled, None)),
        };
        metrics::waited(&self.config.metrics, waiting);
        result
    }

    /// Starts a background refresh for a token that is due for one, unless a fetch is already
    /// running or the last failure is still being backed off from.
    pub(super) fn refresh_ahead(self: &Arc<Self>, entry: &Arc<Entry>) {
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
            let replacing = Some(Arc::new(entry.token.clone()));
            match self.claim_fetch(&mut slow, Reason::Expiring, replacing) {
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
    /// `replacing` is the token the new one replaces, for the source to know
    /// ([`TokenRequest::current`]).
    fn claim_fetch(
        self: &Arc<Self>,
        slow: &mut Slow,
        reason: Reason,
        replacing: Option<Arc<Token>>,
    ) -> Result<Launch, Error> {
        let runtime = Handle::try_current().map_err(|_| Error::new(ErrorKind::NoRuntime, None))?;
        slow.fetching = true;
        Ok(Launch {
            runtime,
            reason,
            replacing,
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
                slow.dropped = None;
                self.current.store(Some(entry.clone()));
                self.changed();
            }
            Err(error) if back_off => {
                self.counters.fetch_failures.fetch_add(1, Ordering::Relaxed);
                metrics::fetch_failure(&self.config.metrics, error.kind());
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
            RetryHint::NotSoon => delay.max(max / 2),
            RetryHint::After(asked) => delay.max(asked.min(max)),
            RetryHint::Backoff => delay,
        }
    }

    /// Checks a token and builds what requests need from it.
    fn build_entry(self: &Arc<Self>, token: Token, sent_at: Instant) -> Result<Arc<Entry>, Error> {
        let stamp = Stamp::new(token.access_token().secret()).map_err(|refused| {
            let kind = match refused {
                Unstampable::TooLarge(_) => ErrorKind::TokenTooLarge,
                Unstampable::NotPrintable => ErrorKind::InvalidToken,
            };
            Error::new(kind, Some(Box::new(refused)))
        })?;
        if let Some(kind) = token.token_type() {
            // DPoP-bound tokens are sent by `Placement::dpop`; `N_A` is what a token exchange
            // (RFC 8693 §2.2.1) says of a token that is not an access token, which the
            // application chose to ask for.
            let known = ["bearer", "dpop", "n_a"];
            if !known.iter().any(|known| kind.eq_ignore_ascii_case(known)) {
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
        let now = Instant::now();
        let latency_high = {
            let mut slow = self.lock_slow();
            slow.latencies
                .record(now.saturating_duration_since(sent_at));
            slow.latencies.high()
        };
        let Plan {
            usable_for,
            expires_at,
            refresh_at,
        } = plan(
            config,
            lifetime,
            token.renewal_window(),
            sent_at,
            now,
            latency_high,
            random_unit(),
        );

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
            stamp,
            phase: AtomicU8::new(phase),
            usable_for,
            expires_at,
            timer: OnceLock::new(),
        });
        if phase != EXPIRED {
            let used = Used {
                cache: Arc::downgrade(self),
                hits_before: self.hits.total(),
            };
            arm(&entry, refresh_at, expires_at, used);
        }
        Ok(entry)
    }
}

/// Whether a token was used since it arrived, for its timer: a token that requests use is
/// refreshed when its refresh point comes, not when the next request after that comes, which
/// with sparse traffic (fewer requests than the refresh window is long) would be after the token
/// expired, making that request wait. A token nobody used since it arrived is left to expire, so
/// that an idle cache stops fetching. The hits are counted anyway (`stats()`): the cached path
/// pays nothing for this.
pub(super) struct Used {
    cache: std::sync::Weak<Shared>,
    hits_before: u64,
}

impl Used {
    /// Starts the refresh of `entry`, just marked due, if it was used since it arrived and no
    /// request started one already.
    pub(super) fn refresh_if_used(self, entry: &Arc<Entry>) {
        let Some(shared) = self.cache.upgrade() else {
            return;
        };
        let current = shared
            .current
            .load()
            .as_ref()
            .is_some_and(|current| current.id == entry.id);
        if current
            && shared.hits.total() > self.hits_before
            && entry
                .phase
                .compare_exchange(DUE, KICKED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            shared.refresh_ahead(entry);
        }
    }
}

/// A fetch ready to be spawned.
struct Launch {
    runtime: Handle,
    reason: Reason,
    replacing: Option<Arc<Token>>,
    guard: FetchGuard,
}

impl Launch {
    fn spawn(self) {
        let Launch {
            runtime,
            reason,
            replacing,
            guard,
        } = self;
        let span = tracing::debug_span!("token_fetch", ?reason);
        let fetch = fetch(guard, reason, replacing);
        runtime.spawn(tracing::Instrument::instrument(fetch, span));
    }
}

async fn fetch(guard: FetchGuard, reason: Reason, replacing: Option<Arc<Token>>) {
    let shared = guard.shared.clone();
    let sent_at = Instant::now();
    shared.counters.fetches.fetch_add(1, Ordering::Relaxed);
    metrics::fetch(&shared.config.metrics, reason);
    tracing::debug!(?reason, "fetching a token");
    let source = shared
        .source
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let request = match replacing {
        Some(token) => TokenRequest::new(reason).with_current(token),
        None => TokenRequest::new(reason),
    };
    let timeout = shared.config.fetch_timeout;
    let result = match tokio::time::timeout(timeout, source.oneshot(request)).await {
        Ok(Ok(token)) => shared.build_entry(token, sent_at),
        // A `SourceError` is unwrapped: its hint is kept for the backoff, and the error it wraps
        // becomes the `source()`, so that `Error::source_as` finds it.
        Ok(Err(error)) => Err(match error.downcast::<SourceError>() {
            Ok(wrapped) => {
                let retry = wrapped.retry();
                Error::source_failed(wrapped.into_inner(), retry)
            }
            Err(error) => Error::source_failed(error, RetryHint::Backoff),
        }),
        Err(_) => Err(Error::timeout(timeout)),
    };
    metrics::fetch_done(&shared.config.metrics, sent_at.elapsed(), result.is_ok());
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

/// A random number in `[0, 1)`, good enough to spread refreshes; not for cryptography.
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
