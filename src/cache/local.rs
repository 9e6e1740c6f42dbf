//! Each service clone's own view of the cache: the token it last used, and its hit counter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::entry::Entry;
use super::TokenCache;
use crate::stamp::{Stripe, STRIPES};

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
    stripe: Stripe,
}

/// Hits a clone without a slot counts before adding them to the shared counter.
const HIT_BATCH: u64 = 64;

impl Local {
    #[inline]
    pub(super) fn new(cache: TokenCache, stripe: Stripe) -> Self {
        let hit_slot = cache.shared.hits.claim(stripe);
        Self {
            cache,
            generation: u64::MAX,
            entry: None,
            hit_slot,
            unpublished_hits: 0,
            stripe,
        }
    }

    /// The cache this is a view of.
    #[inline]
    pub(crate) fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// This clone's stripe (see [`stamp`](crate::stamp)).
    #[inline]
    pub(crate) fn stripe(&self) -> Stripe {
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
    #[inline]
    fn clone(&self) -> Self {
        self.cache.local()
    }
}

impl Drop for Local {
    #[inline]
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
pub(super) struct Hits {
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
    #[inline]
    pub(super) fn claim(&self, stripe: Stripe) -> Option<usize> {
        let first = stripe.index() * SLOTS_PER_STRIPE;
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
    pub(super) fn add_one(&self, slot: usize) {
        // One writer at a time: a load and a store, no read-modify-write.
        let hits = &self.slots[slot].hits;
        hits.store(hits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Hits counted without a slot.
    pub(super) fn add(&self, hits: u64) {
        if hits > 0 {
            self.overflow.fetch_add(hits, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(super) fn release(&self, slot: usize) {
        self.slots[slot].claimed.store(false, Ordering::Release);
    }

    /// Every hit counted so far.
    pub(super) fn total(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.hits.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.overflow.load(Ordering::Relaxed)
    }
}
