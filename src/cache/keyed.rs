//! One token per [`TokenKey`]: a bounded map of single-key caches.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceExt;

use super::builder::{Config, TokenCacheBuilder};
use super::{CacheStats, TokenCache};
use crate::source::BoxSource;
use crate::{Error, Token, TokenKey, TokenRequest};

/// Shards of the map: a lookup locks one of them, so lookups of different keys rarely meet.
/// Requests do not take these locks on the cached path: each service clone keeps the caches of
/// the keys it served (see `BearerAuth`).
const SHARDS: usize = 16;

/// A token cache holding one token per [`TokenKey`]. Made by
/// [`TokenCacheBuilder::build_keyed`].
///
/// Each key has a [`TokenCache`] of its own, with the timing of the builder: its own single
/// flight, refresh ahead, backoff and rejection, so a slow token endpoint for one key delays no
/// other key. The source receives the key in each [`TokenRequest`]. The number of keys is
/// bounded ([`max_keys`](TokenCacheBuilder::max_keys)); a key dropped to make room is fetched
/// again when next needed. Clones share the same keys.
///
/// ```
/// use std::convert::Infallible;
/// use tower_bearer::{source_fn, Token, TokenCache, TokenKey, TokenRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_bearer::Error> {
/// let source = source_fn(|req: TokenRequest| async move {
///     let audience = req.key().audiences().next().unwrap_or("none").to_owned();
///     Ok::<_, Infallible>(Token::new(format!("token-for-{audience}")))
/// });
/// let cache = TokenCache::builder(source).max_keys(100).build_keyed();
/// let billing = TokenKey::audience_of("billing");
/// let search = TokenKey::audience_of("search");
/// assert_eq!(cache.token(&billing).await?.access_token().secret(), "token-for-billing");
/// assert_eq!(cache.token(&search).await?.access_token().secret(), "token-for-search");
/// assert_eq!(cache.stats(&billing).unwrap().fetches, 1);
/// assert_eq!(cache.total_stats().fetches, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KeyedCache {
    shared: Arc<Keyed>,
}

struct Keyed {
    shards: [Mutex<HashMap<TokenKey, Slot>>; SHARDS],
    len: AtomicUsize,
    /// Held while a key is added.
    adding: Mutex<()>,
    /// Bumped whenever a key is dropped, so that service clones holding the caches of keys
    /// check that theirs is still the one in the map before using it.
    epoch: AtomicU64,
    /// In a mutex only to be `Sync`: it is cloned for each new key.
    source: Mutex<BoxSource>,
    config: Config,
    max_keys: usize,
    idle_timeout: Duration,
    /// Statistics of the keys dropped so far, so that totals do not shrink.
    dropped: Mutex<CacheStats>,
}

struct Slot {
    cache: TokenCache,
    /// The key's activity (fetches, hits and waits) when last looked at by a sweep, and since
    /// when it has not changed.
    activity: u64,
    idle_since: Instant,
}

impl KeyedCache {
    pub(super) fn new(builder: TokenCacheBuilder) -> Self {
        Self {
            shared: Arc::new(Keyed {
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                len: AtomicUsize::new(0),
                adding: Mutex::new(()),
                epoch: AtomicU64::new(0),
                source: Mutex::new(builder.source),
                config: builder.config,
                max_keys: builder.max_keys,
                idle_timeout: builder.idle_timeout,
                dropped: Mutex::new(CacheStats::default()),
            }),
        }
    }

    /// The cache of `key`, made if there is none (which may drop other keys to stay within
    /// [`max_keys`](TokenCacheBuilder::max_keys)).
    pub fn cache(&self, key: &TokenKey) -> TokenCache {
        let shared = &*self.shared;
        {
            let shard = shared.shard(key);
            if let Some(slot) = shard.get(key) {
                return slot.cache.clone();
            }
        }
        // New keys are added one at a time, so that the bound holds however many requests
        // bring new keys at once.
        let _adding = lock(&shared.adding);
        if shared.len.load(Ordering::Relaxed) >= shared.max_keys {
            shared.sweep();
        }
        let mut shard = shared.shard(key);
        // Another request may have made it meanwhile: keys never get two caches.
        if let Some(slot) = shard.get(key) {
            return slot.cache.clone();
        }
        let source = lock(&shared.source).clone();
        let for_key = key.clone();
        let source = BoxSource::new(
            source.map_request(move |req: TokenRequest| req.with_key(for_key.clone())),
        );
        let cache = TokenCacheBuilder::build_with(source, shared.config.clone());
        shard.insert(
            key.clone(),
            Slot {
                cache: cache.clone(),
                activity: 0,
                idle_since: Instant::now(),
            },
        );
        shared.len.fetch_add(1, Ordering::Relaxed);
        cache
    }

    /// A valid token for `key`: the cached one, or the result of a fetch.
    ///
    /// # Errors
    ///
    /// As [`TokenCache::token`].
    pub async fn token(&self, key: &TokenKey) -> Result<Token, Error> {
        self.cache(key).token().await
    }

    /// What the cache of `key` has done so far; `None` if `key` is not held (never used, or
    /// dropped).
    pub fn stats(&self, key: &TokenKey) -> Option<CacheStats> {
        self.shared
            .shard(key)
            .get(key)
            .map(|slot| slot.cache.stats())
    }

    /// What all keys have done so far, those dropped included.
    pub fn total_stats(&self) -> CacheStats {
        let mut total = *lock(&self.shared.dropped);
        for shard in &self.shared.shards {
            for slot in lock(shard).values() {
                add(&mut total, &slot.cache.stats());
            }
        }
        total
    }

    /// How many keys it holds at most.
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the token of `key`, so that its next request waits for a new one.
    pub fn invalidate(&self, key: &TokenKey) {
        if let Some(slot) = self.shared.shard(key).get(key) {
            slot.cache.invalidate();
        }
    }

    /// Rejects the current token of whichever key was stamped as `value` (the search a gRPC
    /// trailer's UNAUTHENTICATED costs, which is rare: one look at each key's current token).
    pub(crate) fn reject_value(&self, value: &http::HeaderValue) -> bool {
        let caches: Vec<TokenCache> = self
            .shared
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .values()
                    .map(|slot| slot.cache.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        caches.iter().any(|cache| cache.reject_value(value))
    }

    /// The number that changes whenever a key is dropped.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Whether `cache` is still the cache of `key`.
    pub(crate) fn holds(&self, key: &TokenKey, cache: &TokenCache) -> bool {
        self.shared
            .shard(key)
            .get(key)
            .is_some_and(|slot| Arc::ptr_eq(&slot.cache.shared, &cache.shared))
    }
}

impl Keyed {
    fn shard(&self, key: &TokenKey) -> MutexGuard<'_, HashMap<TokenKey, Slot>> {
        lock(&self.shards[key.hash_value() as usize % SHARDS])
    }

    /// Drops keys to make room for one more: those idle for the idle timeout, then, if that is
    /// not enough, the longest idle ones, an eighth of the bound at a time so that a stream of
    /// new keys sweeps rarely.
    fn sweep(&self) {
        let now = Instant::now();
        let mut candidates: Vec<(bool, Instant, u64, usize, TokenKey)> = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            for (key, slot) in lock(shard).iter_mut() {
                let stats = slot.cache.stats();
                let activity = stats.fetches + stats.hits + stats.waits;
                // How much it was used since the last sweep: among keys last seen active at the
                // same sweep (all of them, at the first), the least used goes first.
                let recent = activity.saturating_sub(slot.activity);
                if activity != slot.activity {
                    slot.activity = activity;
                    slot.idle_since = now;
                }
                // A key with a fetch in flight goes last: dropping it would leave its waiters on
                // a cache nobody else finds (the key fetched twice) and its counts unfinished.
                let busy = slot.cache.is_fetching();
                candidates.push((busy, slot.idle_since, recent, index, key.clone()));
            }
        }
        candidates.sort_by_key(|(busy, idle_since, recent, _, _)| (*busy, *idle_since, *recent));
        // At least one slot is freed for the key about to be added, even with a bound of one.
        let target = self.max_keys - (self.max_keys / 8).max(1);
        let excess = candidates.len().saturating_sub(target);
        let mut dropped = 0;
        for (position, (_, idle_since, _, index, key)) in candidates.into_iter().enumerate() {
            let idle = now.saturating_duration_since(idle_since) >= self.idle_timeout;
            if !idle && position >= excess {
                break;
            }
            if let Some(slot) = lock(&self.shards[index]).remove(&key) {
                add(&mut lock(&self.dropped), &slot.cache.stats());
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.len.fetch_sub(dropped, Ordering::Relaxed);
            self.epoch.fetch_add(1, Ordering::Release);
            tracing::debug!(
                dropped,
                held = self.len.load(Ordering::Relaxed),
                "token keys dropped"
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn add(total: &mut CacheStats, stats: &CacheStats) {
    total.fetches += stats.fetches;
    total.fetch_failures += stats.fetch_failures;
    total.hits += stats.hits;
    total.waits += stats.waits;
    total.rejections += stats.rejections;
    total.kept_rejections += stats.kept_rejections;
    total.replays += stats.replays;
    total.replay_rejections += stats.replay_rejections;
}

impl fmt::Debug for KeyedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCache")
            .field("keys", &self.len())
            .field("max_keys", &self.shared.max_keys)
            .field("config", &self.shared.config)
            .field("stats", &self.total_stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::source_fn;

    /// A keyed cache over a source that names each token after its key's audience and counts
    /// its calls.
    fn cache(max_keys: usize) -> (KeyedCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let source = source_fn(move |req: TokenRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let audience = req.key().audiences().next().unwrap_or("-").to_owned();
            async move { Ok::<_, Infallible>(Token::new(format!("{audience}#{n}"))) }
        });
        let cache = TokenCache::builder(source).max_keys(max_keys).build_keyed();
        (cache, calls)
    }

    #[tokio::test]
    async fn each_key_has_its_own_token_and_equal_keys_share_one() {
        let (cache, calls) = cache(16);
        let a = TokenKey::audience_of("a");
        let b = TokenKey::audience_of("b");
        let a_again = TokenKey::audience_of("a");
        let (ta, tb, ta2) = tokio::join!(cache.token(&a), cache.token(&b), cache.token(&a_again));
        let secret = |t: Result<Token, Error>| t.unwrap().access_token().secret().to_owned();
        let (ta, tb, ta2) = (secret(ta), secret(tb), secret(ta2));
        assert!(ta.starts_with("a#") && tb.starts_with("b#"), "{ta} {tb}");
        assert_eq!(ta, ta2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats(&a).unwrap().fetches, 1);
        assert_eq!(cache.total_stats().fetches, 2);
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn the_number_of_keys_stays_within_the_bound() {
        let (cache, calls) = cache(8);
        let epoch = cache.epoch();
        for i in 0..100 {
            cache
                .token(&TokenKey::audience_of(format!("k{i}")))
                .await
                .unwrap();
            assert!(cache.len() <= 8, "{} keys after {i}", cache.len());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 100);
        assert_ne!(cache.epoch(), epoch, "dropping keys changes the epoch");
        // Dropped keys still count in the totals, and come back with a new fetch.
        assert_eq!(cache.total_stats().fetches, 100);
        cache.token(&TokenKey::audience_of("k0")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 101);
    }

    #[tokio::test]
    async fn a_key_in_use_outlives_idle_ones() {
        // Under several names, so that the busy key is not always where the map's order would
        // keep it by chance.
        for name in 0..16 {
            let (cache, calls) = cache(4);
            let busy = TokenKey::audience_of(format!("busy{name}"));
            for i in 0..40 {
                cache.token(&busy).await.unwrap();
                cache
                    .token(&TokenKey::audience_of(format!("k{i}")))
                    .await
                    .unwrap();
            }
            // Counted at the source: a dropped key's stats go with it, a refetch does not.
            assert_eq!(calls.load(Ordering::SeqCst), 41, "busy{name} was dropped");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_idle_for_the_timeout_all_make_room_at_once() {
        let (_, calls) = cache(1);
        let counter = calls.clone();
        let source = source_fn(move |req: TokenRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let audience = req.key().audiences().next().unwrap_or("-").to_owned();
            async move { Ok::<_, Infallible>(Token::new(format!("{audience}#{n}"))) }
        });
        let cache = TokenCache::builder(source)
            .max_keys(4)
            .idle_timeout(Duration::from_secs(10))
            .build_keyed();
        let key = |name: &str| TokenKey::audience_of(name);
        for name in ["a", "b", "c", "d", "e"] {
            cache.token(&key(name)).await.unwrap();
        }
        // The fifth key made one sweep, which dropped one key for it.
        assert_eq!(cache.len(), 4);
        tokio::time::advance(Duration::from_secs(20)).await;
        let a = cache.token(&key("a")).await.unwrap();
        cache.token(&key("f")).await.unwrap();
        // Every key unused for 20 s went at once; "a" (just used) and "e" (added after the
        // first sweep, used since) stayed, beside the new "f".
        assert_eq!(cache.len(), 3, "{cache:?}");
        assert!(cache.stats(&key("e")).is_some());
        assert_eq!(
            cache.token(&key("a")).await.unwrap().access_token(),
            a.access_token()
        );
    }
}
