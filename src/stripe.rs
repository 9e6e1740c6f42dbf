//! Spreading values that every request touches over several cache lines.
//!
//! Cloning an `Arc` or a header value is an atomic write to one cache line. When every request
//! writes the same line, it travels between cores on each request. Instead, each service clone
//! takes one of [`STRIPES`] copies when it is made: a clone serves one task at a time, so clones
//! used by tasks on different threads mostly write different lines.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many copies: enough to spread the threads of a typical runtime.
pub(crate) const STRIPES: usize = 8;

/// The stripe for a new service clone, round-robin.
pub(crate) fn next() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
}
