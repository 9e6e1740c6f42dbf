//! [`SharedCache`]: a token source that looks in the shared store before calling its own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::seal::{self, Garbage, SealingKey};
use super::store::{Stored, TokenStore};
use super::{Config, SharedStats, State};
use crate::source::RetryHint;
use crate::{BoxError, Expiry, Reason, SourceError, Token, TokenRequest};

/// A token source behind a shared store: made by [`SharedCacheLayer`](super::SharedCacheLayer); see the
/// [module docs](super).
///
/// # Clone
///
/// Cloning clones the inner source, which must be `Clone` to be a
/// [`TokenSource`](crate::TokenSource).
#[derive(Clone)]
pub struct SharedCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) store: Arc<dyn TokenStore>,
    pub(super) sealing: Arc<SealingKey>,
    pub(super) config: Config,
    pub(super) state: Arc<State>,
    pub(super) random: SystemRandom,
}

impl<S> SharedCache<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// What this service's layer has done so far (counted across its clones).
    pub fn stats(&self) -> SharedStats {
        self.shared.state.stats()
    }

    /// The inner source.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner source, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner source.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SharedCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S> Service<TokenRequest> for SharedCache<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Token;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner source is made ready only if the store cannot answer: see `fetch`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let inner = self.inner.clone();
        let flow = Flow {
            key: seal::store_key(
                &self.shared.config.prefix,
                &self.shared.config.identity,
                request.key(),
            ),
            replacing: request
                .current()
                .map(|token| self.shared.sealing.fingerprint(token.access_token())),
            shared: self.shared.clone(),
            inner,
            request,
        };
        Box::pin(flow.run())
    }
}

/// One token request's way through the store.
struct Flow<S> {
    shared: Arc<Shared>,
    inner: S,
    request: TokenRequest,
    key: String,
    /// The fingerprint of the token the cache replaces, to delete it from the store if it was
    /// rejected. (It is never handed back: see `usable`.)
    replacing: Option<[u8; 32]>,
}

/// The store failed (and it was counted and logged): go on without it.
struct Unavailable;

impl<S> Flow<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    async fn run(self) -> Result<Token, BoxError> {
        let shared = self.shared.clone();
        if let (Reason::Rejected, Some(fingerprint)) = (self.request.reason(), &self.replacing) {
            let store = &shared.store;
            match shared
                .op(store.delete_if_fingerprint(&self.key, fingerprint))
                .await
            {
                Ok(true) => {
                    shared.state.deletes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("rejected token deleted from the shared store");
                }
                Ok(false) => {}
                Err(Unavailable) => return self.bypass().await,
            }
        }
        let deadline = Instant::now() + shared.config.max_wait();
        let mut waited = false;
        // Subscribed before the first read, so that a write between that read and the wait
        // still wakes this replica.
        let mut writes = shared.store.writes();
        if let Some(notices) = &mut writes {
            notices.borrow_and_update();
        }
        loop {
            let Ok(stored) = shared.op(shared.store.read(&self.key)).await else {
                return self.bypass().await;
            };
            if let Some(token) = self.usable(&stored, true) {
                shared.state.hit();
                return Ok(token);
            }
            if let Some(hold) = stored.failed {
                return Err(shared.failed(hold));
            }
            if !stored.leased {
                // Armed before asking: a `SET NX` that took effect but whose answer timed out
                // leaves a lease that its release (checking the owner) frees at once, instead
                // of blocking the fleet for the lease's time to live.
                let mut lease = Lease {
                    shared: Some(shared.clone()),
                    key: self.key.clone(),
                    owner: shared.owner_id(),
                };
                let taken =
                    shared
                        .store
                        .try_lease(&self.key, &lease.owner, shared.config.lease_ttl);
                match shared.op(taken).await {
                    Ok(true) => return self.fetch_leased(lease).await,
                    Ok(false) => lease.disarm(),
                    Err(Unavailable) => return self.bypass().await,
                }
            }
            if !std::mem::replace(&mut waited, true) {
                shared.state.lease_wait();
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    max_wait = ?shared.config.max_wait(),
                    "waited too long for another replica's token fetch; fetching without the \
                     shared store"
                );
                return self.bypass().await;
            }
            let delay = shared.poll_delay();
            match &mut writes {
                Some(notices) => {
                    // Woken by the holder's write, or at the poll; a closed channel (the store
                    // stopped following writes) leaves polling alone.
                    if let Ok(Err(_)) = tokio::time::timeout(delay, notices.changed()).await {
                        writes = None;
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    /// The token a stored value holds, if it may be handed out. A value that does not open is
    /// counted and logged if `report` (once per request: not again when read after the lease).
    fn usable(&self, stored: &Stored, report: bool) -> Option<Token> {
        let shared = &self.shared;
        let opened = match shared.sealing.open(stored.value.as_deref()?, &self.key) {
            Ok(opened) => opened,
            Err(_) if !report => return None,
            Err(Garbage(what)) => {
                shared.state.store_error();
                if !shared.state.garbage.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        found = what,
                        "the shared store holds a token this replica cannot use; fetching a new \
                         one (logged once until a stored token opens again)"
                    );
                }
                return None;
            }
        };
        shared.state.garbage.store(false, Ordering::Relaxed);
        if self.request.current().map(Token::access_token) == Some(opened.token.access_token()) {
            return None;
        }
        // The store's own clock, when it says: replicas' clocks may disagree by more than a
        // token's skew, and the value's time to live was set from its remaining lifetime. But
        // never longer than the sealed expiry allows (with room for clocks that disagree): a
        // time to live is not authenticated, and a value restored from a backup or given a
        // longer one by hand must not outlive its token.
        let now = seal::unix_ms_in(Duration::ZERO);
        let sealed = Duration::from_millis(opened.expires_at_ms.saturating_sub(now));
        let remaining = match stored.ttl {
            Some(ttl) => ttl.min(sealed.saturating_add(CLOCK_TOLERANCE)),
            None => sealed,
        };
        (remaining >= shared.config.min_remaining).then(|| opened.token.with_expires_in(remaining))
    }

    /// With the lease: fetches from the source and writes the token for the others.
    /// Releases go through the lease's drop, in a task of their own: no release adds to the
    /// time a token request takes.
    async fn fetch_leased(mut self, mut lease: Lease) -> Result<Token, BoxError> {
        let shared = self.shared.clone();
        // Another replica may have written the token between this one's read and its lease.
        match shared.op(shared.store.read(&self.key)).await {
            Ok(stored) => {
                if let Some(token) = self.usable(&stored, false) {
                    shared.state.hit();
                    return Ok(token);
                }
                if let Some(hold) = stored.failed {
                    return Err(shared.failed(hold));
                }
                // The grant's latest refresh token, if the fleet shares one: redeemed by this
                // replica alone, since it holds the lease, and replaced by the write below.
                if let Some(value) = &stored.refresh {
                    match shared.sealing.open_refresh(value, &self.key) {
                        Ok(refresh_token) => {
                            self.request = self.request.with_refresh_token(refresh_token);
                        }
                        Err(Garbage(what)) => tracing::debug!(
                            found = what,
                            "a stored refresh token does not open; the source's own is used"
                        ),
                    }
                }
            }
            Err(Unavailable) => {
                drop(lease);
                return self.bypass().await;
            }
        }
        shared.state.miss();
        let sent_at = Instant::now();
        let lease_ttl = shared.config.lease_ttl;
        let (inner, request) = (self.inner, self.request);
        let mut fetch =
            std::pin::pin!(async move { inner.oneshot(request).await.map_err(Into::into) });
        let mut renew_at = sent_at + lease_ttl / 3;
        // Renewed while the fetch runs, so that a slow token endpoint does not make the lease
        // expire and a second replica fetch; only a dead replica's lease expires.
        let fetched = loop {
            match tokio::time::timeout_at(renew_at, &mut fetch).await {
                Ok(result) => break result,
                Err(_) => {
                    renew_at += lease_ttl / 3;
                    // In a task of its own, so that the fetch is polled while it runs.
                    let (renewing, key, owner) =
                        (shared.clone(), lease.key.clone(), lease.owner.clone());
                    tokio::spawn(async move {
                        let renew = renewing.store.renew(&key, &owner, lease_ttl);
                        if let Ok(false) = renewing.op(renew).await {
                            tracing::debug!("the lease could not be renewed during a slow fetch");
                        }
                    });
                }
            }
        };
        let token = match fetched {
            Ok(token) => token,
            Err(error) => {
                // Told to the fleet, so that the other replicas do not ask in turn.
                let hold = match error.downcast_ref::<SourceError>().map(SourceError::retry) {
                    Some(RetryHint::After(delay)) => delay.min(MAX_FAILURE_HOLD),
                    _ => shared.config.failure_hold,
                };
                if !hold.is_zero() {
                    let failed = shared.store.fail_if_owner(&lease.key, &lease.owner, hold);
                    if let Ok(true) = shared.op(failed).await {
                        lease.disarm();
                    }
                }
                return Err(error);
            }
        };
        let remaining = match token.expiry() {
            None => shared.config.default_lifetime,
            Some(Expiry::In(lifetime)) => lifetime.saturating_sub(sent_at.elapsed()),
            Some(Expiry::At(deadline)) => deadline.saturating_duration_since(Instant::now()),
        };
        let sealed = (remaining > shared.config.min_remaining)
            .then(|| {
                let expires_at = seal::unix_ms_in(remaining);
                shared
                    .sealing
                    .seal(&token, expires_at, &self.key, &shared.random)
            })
            .flatten();
        let Some(value) = sealed else {
            return Ok(token);
        };
        let refresh_ttl = shared.config.refresh_token_ttl;
        let refresh = token.refresh_token().and_then(|refresh| {
            shared
                .sealing
                .seal_refresh(refresh, &self.key, &shared.random)
        });
        let refresh = refresh.as_deref().map(|value| (value, refresh_ttl));
        let store = &shared.store;
        let put = store.put_if_owner(&lease.key, &lease.owner, &value, remaining, refresh);
        match shared.op(put).await {
            // The write freed the lease.
            Ok(true) => lease.disarm(),
            Ok(false) => {
                lease.disarm();
                tracing::debug!(
                    "the lease expired during the fetch; the token is used here but not shared"
                );
            }
            // Perhaps not written: the lease's drop frees it if this replica still holds it.
            Err(Unavailable) => {}
        }
        Ok(token)
    }

    /// Calls the source as if there were no shared store.
    async fn bypass(self) -> Result<Token, BoxError> {
        self.shared.state.bypasses.fetch_add(1, Ordering::Relaxed);
        self.inner.oneshot(self.request).await.map_err(Into::into)
    }
}

/// A lease held, or perhaps held: released from a task of its own when dropped armed (the flow
/// is done with it, failed, or was dropped by the cache's fetch timeout). The release checks
/// the owner, so releasing a lease another replica holds now does nothing.
struct Lease {
    shared: Option<Arc<Shared>>,
    key: String,
    owner: String,
}

impl Lease {
    /// Nothing to release: the lease was not taken, or a write freed it.
    fn disarm(&mut self) {
        self.shared = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (key, owner) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        runtime.spawn(async move {
            let _ = shared.op(shared.store.release(&key, &owner)).await;
        });
    }
}

/// The longest a failure holds the fleet back from a token: a `Retry-After`, a replica's
/// configured hold, or a hold read from the store.
pub(super) const MAX_FAILURE_HOLD: Duration = Duration::from_secs(300);

/// How far replicas' clocks may disagree before a stored time to live is cut to the sealed
/// expiry.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

/// Another replica failed to get the token moments ago (see
/// [`SharedCacheLayer::failure_hold`](super::SharedCacheLayer::failure_hold)).
#[derive(Debug)]
struct FailedElsewhere(Duration);

impl fmt::Display for FailedElsewhere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another replica's token request failed moments ago; the fleet asks again in {:?}",
            self.0
        )
    }
}

impl std::error::Error for FailedElsewhere {}

impl Shared {
    /// The error of a token request that another replica's recorded failure answers.
    fn failed(&self, hold: Duration) -> BoxError {
        // The store's word, not authenticated: bounded like every hold.
        let hold = hold.min(MAX_FAILURE_HOLD);
        self.state.failures_shared.fetch_add(1, Ordering::Relaxed);
        SourceError::new(FailedElsewhere(hold))
            .with_retry_after(hold)
            .into()
    }

    /// Runs a store operation within the store timeout, counting and logging a failure once per
    /// episode.
    async fn op<T>(
        &self,
        operation: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<T, Unavailable> {
        let timeout = self.config.store_timeout;
        let failure = match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => {
                if self.state.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the shared token store answers again; sharing tokens");
                }
                return Ok(value);
            }
            Ok(Err(error)) => error,
            Err(_) => format!("no answer within {timeout:?}").into(),
        };
        self.state.store_error();
        if !self.state.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %failure,
                "the shared token store failed; tokens are fetched by each replica until it \
                 answers again (logged once per episode)"
            );
        }
        Err(Unavailable)
    }

    /// A lease owner id: random, so that no two replicas (or requests) share one.
    fn owner_id(&self) -> String {
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let mut bytes = [0u8; 16];
        if self.random.fill(&mut bytes).is_err() {
            // Unique within the process at least; the process id separates replicas.
            let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
            bytes[..8].copy_from_slice(&n.to_be_bytes());
            bytes[8..12].copy_from_slice(&std::process::id().to_be_bytes());
        }
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The poll interval plus a random part of up to as much again.
    fn poll_delay(&self) -> Duration {
        let mut bytes = [0u8; 2];
        let _ = self.random.fill(&mut bytes);
        let unit = f64::from(u16::from_be_bytes(bytes)) / f64::from(u16::MAX);
        let interval = self.config.poll_interval;
        interval + interval.mul_f64(unit)
    }
}
