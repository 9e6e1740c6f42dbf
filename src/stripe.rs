//! Spreading values that every request touches over several cache lines.
//!
//! Cloning an `Arc` or a header value, or bumping a counter, is an atomic write to one cache
//! line. When all threads of a runtime write the same line, it travels between cores on every
//! request. Each thread picks one of [`STRIPES`] copies instead.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many copies: enough to spread the threads of a typical runtime.
pub(crate) const STRIPES: usize = 8;

/// This thread's stripe.
#[inline]
pub(crate) fn index() -> usize {
    thread_local! {
        static INDEX: usize = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
        };
    }
    INDEX.try_with(|index| *index).unwrap_or(0)
}
