//! The store the replicas share: [`TokenStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use crate::BoxError;

/// The future of a [`TokenStore`] operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// What a store holds under a token's key: the stored value, and whether a replica holds the
/// lease to fetch it.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stored {
    /// The value last written with [`TokenStore::put_if_owner`], unless it expired or was
    /// deleted.
    pub value: Option<Vec<u8>>,
    /// Whether the lease is held.
    pub leased: bool,
    /// How much longer replicas should not ask for this token, because the replica that held
    /// the lease just failed to get one (see [`fail_if_owner`](TokenStore::fail_if_owner)).
    pub failed: Option<Duration>,
    /// The sealed refresh token kept beside the value (see
    /// [`put_if_owner`](TokenStore::put_if_owner)), if any.
    pub refresh: Option<Vec<u8>>,
    /// How long the value has left to live, by the store's clock, if the store tells. Replicas
    /// go by it rather than by the expiry written in the value, which the writer computed on its
    /// own clock.
    pub ttl: Option<Duration>,
}

impl Stored {
    /// What a store read: a value (or none) and whether the lease is held.
    pub fn new(value: Option<Vec<u8>>, leased: bool) -> Self {
        Self {
            value,
            leased,
            failed: None,
            refresh: None,
            ttl: None,
        }
    }

    /// The same, saying that replicas should not ask for this token for `hold` more.
    pub fn with_failed(mut self, hold: Duration) -> Self {
        self.failed = Some(hold);
        self
    }

    /// The same, with the sealed refresh token kept beside the value.
    pub fn with_refresh(mut self, refresh: Vec<u8>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// The same, with the value's remaining time to live by the store's clock.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A value stored in clear is a token: show its size only.
        f.debug_struct("Stored")
            .field("value_len", &self.value.as_ref().map(Vec::len))
            .field("leased", &self.leased)
            .field("failed", &self.failed)
            .field("refresh_len", &self.refresh.as_ref().map(Vec::len))
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A store shared by the replicas of a fleet: one value and one lease per key, each with a
/// time to live.
///
/// [`RedisStore`](super::RedisStore) implements it on Redis and Valkey. Another store needs the
/// same atomic operations: a conditional write that checks the lease's owner, and a delete that
/// checks the value's fingerprint, each done by the store itself, not read-then-write by the
/// client. Operations may take as long as they like: [`SharedCache`](super::SharedCache)
/// bounds each one with its [store timeout](super::SharedCacheLayer::store_timeout), and treats an
/// error like a store that is down.
///
/// Keys are text without secrets; values are opaque bytes (a sealed token).
pub trait TokenStore: Send + Sync + 'static {
    /// The value under `key` and whether its lease is held, read together.
    fn read<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Stored>;

    /// Takes the lease of `key` for `owner` for `ttl`, if no one holds it. Returns whether it
    /// was taken.
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// If `owner` still holds the lease of `key`: writes `value` with a time to live of `ttl`,
    /// and `refresh` (a sealed refresh token and its own time to live, longer than the access
    /// token's) beside it if given, and releases the lease, atomically. Returns whether it
    /// wrote. A refresh token left out keeps the one stored, if any.
    fn put_if_owner<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        value: &'a [u8],
        ttl: Duration,
        refresh: Option<(&'a [u8], Duration)>,
    ) -> StoreFuture<'a, bool>;

    /// Extends the lease of `key` to `ttl` from now if `owner` holds it, atomically. Returns
    /// whether it did. A replica whose fetch outlasts a third of the lease's time to live
    /// renews it, so that only a dead replica's lease expires.
    ///
    /// Default: renews nothing (returns `false`): a fetch longer than the lease's time to live
    /// then lets a second replica fetch.
    fn renew<'a>(&'a self, key: &'a str, owner: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let _ = (key, owner, ttl);
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Notice of tokens written by any replica: a counter that the store bumps whenever a write
    /// may have happened (and when it cannot tell, such as after reconnecting), so that a
    /// replica waiting for another's fetch reads the store again at once instead of at its next
    /// [poll](super::SharedCacheLayer::poll_interval). Notices are a shortcut only: waiting replicas
    /// poll anyway, so a lost notice costs at most one poll interval.
    ///
    /// Default: none; waiting replicas only poll.
    fn writes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// If `owner` holds the lease of `key`: records for `hold` that its fetch failed (so that
    /// the other replicas, instead of taking the lease in turn and asking a server that just
    /// refused, fail at once until then; [`Stored::failed`]) and releases the lease,
    /// atomically. Returns whether it did.
    ///
    /// Default: releases the lease only; each waiting replica then takes it and fetches in
    /// turn.
    fn fail_if_owner<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        hold: Duration,
    ) -> StoreFuture<'a, bool> {
        let _ = hold;
        self.release(key, owner)
    }

    /// Releases the lease of `key` if `owner` holds it. Returns whether it did.
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> StoreFuture<'a, bool>;

    /// Deletes the value under `key` if the bytes at
    /// [`FINGERPRINT`](super::FINGERPRINT) of the stored value equal `fingerprint`,
    /// atomically. Returns whether it deleted.
    fn delete_if_fingerprint<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a [u8],
    ) -> StoreFuture<'a, bool>;
}
