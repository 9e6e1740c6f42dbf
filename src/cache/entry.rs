//! One fetched token: its header values, and the phases a timer moves it through.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::fetch::Used;
use crate::stamp::Stamp;
use crate::Token;

pub(super) const FRESH: u8 = 0;
pub(super) const DUE: u8 = 1;
pub(super) const KICKED: u8 = 2;
pub(super) const EXPIRED: u8 = 3;

/// One fetched token and what requests need from it.
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) token: Token,
    /// The header values it is stamped with.
    pub(crate) stamp: Stamp,
    pub(super) phase: AtomicU8,
    pub(super) usable_for: Duration,
    pub(super) expires_at: Instant,
    pub(super) timer: OnceLock<AbortHandle>,
}

impl Entry {
    /// Whether the token may still be sent. A fresh token is, without reading the clock; in its
    /// refresh window the clock is checked too, so a timer that fires late (a starved runtime,
    /// a paused clock moved forward) never lets an expired token out.
    #[inline]
    pub(super) fn usable(&self) -> bool {
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

/// Starts the timer that moves a token through its phases. It holds only a weak reference, and
/// the entry aborts it when dropped, so a replaced token leaves no task behind.
pub(super) fn arm(entry: &Arc<Entry>, refresh_at: Instant, expires_at: Instant, used: Used) {
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
                if entry
                    .phase
                    .compare_exchange(FRESH, DUE, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    used.refresh_if_used(&entry);
                }
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
pub(super) fn rearm_at(entry: &Arc<Entry>, at: Instant) {
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
