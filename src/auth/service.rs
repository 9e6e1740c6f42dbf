use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::destinations::{Choice, KeyedLocals};
use super::future::ResponseFuture;
use super::{BearerAuthLayer, Configs, Destination};
use crate::cache::Local;
use crate::error::ErrorKind;
use crate::replay::{Replay, ReplayPolicy};
use crate::{BoxError, Error, TokenCache, TokenSource};

/// Middleware that stamps a bearer token on each request and replays a request once when its
/// token is rejected. Made by [`BearerAuthLayer`].
///
/// # Clone
///
/// The inner service must be `Clone`: a request that waits for a token takes the ready inner
/// service with it and leaves a clone behind, and a replay is sent through a clone that is
/// polled ready again. Clones should share their connection pool, as hyper-util's `Client` and
/// tonic's `Channel` do.
///
/// That clone is not made for every request. Each `BearerAuth` keeps one spare clone of its
/// inner service, made by its first replayable request (and again after
/// [`get_mut`](Self::get_mut)); a replay clones the spare. So a service used for many requests
/// pays one clone, and each request a reference count; a `BearerAuth` cloned for every request
/// (`svc.clone().oneshot(req)`, or inside tower-http's `FollowRedirect`) pays a clone and a small
/// allocation per request. A replay goes through a clone of the inner service as it was when the
/// spare was made: the same thing for services whose clones share their state (hyper-util's
/// `Client`, tonic's `Channel`, `Buffer`, `ConcurrencyLimit`), but not for a service whose
/// clones copy state it changes through `&mut self`. Wrap a service that is not `Clone` in
/// [`tower::buffer::Buffer`](https://docs.rs/tower/0.5/tower/buffer/struct.Buffer.html).
///
/// # Errors
///
/// Errors of the inner service pass through unchanged. A request that cannot be sent with a
/// valid token fails with an [`Error`](crate::Error) instead, and is not sent: the token source
/// failed, timed out or is being backed off from (see [`ErrorKind`](crate::ErrorKind)); it
/// returned a token that cannot be stamped; or origins are restricted and the request's URI has
/// none ([`ErrorKind::UnknownOrigin`](crate::ErrorKind::UnknownOrigin)).
///
/// # Backpressure
///
/// `poll_ready` is the inner service's. A request that must wait for a token keeps the capacity
/// its `poll_ready` reserved until the token arrives, so the token source must not need that
/// same capacity: give the source its own HTTP client (or its own `ConcurrencyLimit`), never the
/// client this layer wraps.
pub struct BearerAuth<S, P = Replay> {
    inner: S,
    configs: Configs,
    policy: P,
    /// This clone's view of the current token.
    local: Local,
    /// With several destinations: this clone's views of the tokens of the keys it served.
    keyed: Option<KeyedLocals>,
    /// A clone of `inner` that replays are cloned from, shared with the response futures that
    /// may replay. Made on the first replayable request, so that a request that is never
    /// rejected costs a reference count instead of a clone of the inner service.
    spare: Option<Spare<S>>,
}

/// The spare clone of the inner service that replays are cloned from.
pub(crate) type Spare<S> = Arc<Mutex<S>>;

impl<S> BearerAuth<S> {
    /// Wraps `inner` with a new [`TokenCache`] (default timing) over `source`.
    pub fn new(inner: S, source: impl TokenSource) -> Self {
        BearerAuthLayer::new(source).into_service(inner)
    }

    /// Wraps `inner`, taking tokens from `cache`.
    pub fn from_cache(inner: S, cache: TokenCache) -> Self {
        BearerAuthLayer::from_cache(cache).into_service(inner)
    }

    /// A layer with a new [`TokenCache`] over `source`; the same as [`BearerAuthLayer::new`].
    pub fn layer(source: impl TokenSource) -> BearerAuthLayer {
        BearerAuthLayer::new(source)
    }
}

impl BearerAuthLayer {
    fn into_service<S>(self, inner: S) -> BearerAuth<S> {
        tower_layer::Layer::layer(&self, inner)
    }
}

impl<S, P> BearerAuth<S, P> {
    pub(crate) fn with_configs(inner: S, configs: Configs, policy: P) -> Self {
        let local = configs.config().cache.local();
        Self {
            inner,
            configs,
            policy,
            local,
            keyed: None,
            spare: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Replays from this service go through clones of the inner
    /// service as it is after this change.
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = None;
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token cache this service shares with its clones and its layer.
    pub fn cache(&self) -> &TokenCache {
        &self.configs.config().cache
    }
}

impl<S: Clone, P: Clone> Clone for BearerAuth<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            configs: self.configs.clone(),
            policy: self.policy.clone(),
            local: self.local.clone(),
            keyed: None,
            spare: None,
        }
    }
}

/// The spare clone that replays of requests sent now are cloned from, made if there is none.
#[inline]
fn spare<S: Clone>(slot: &mut Option<Spare<S>>, inner: &S) -> Spare<S> {
    slot.get_or_insert_with(|| Arc::new(Mutex::new(inner.clone())))
        .clone()
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for BearerAuth<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .field("cache", &self.configs.config().cache)
            .field("placement", &self.configs.config().placement)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, B, ResBody> Service<Request<B>> for BearerAuth<S, P>
where
    S: Service<Request<P::Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayPolicy<B> + Clone,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stripe = self.local.stripe();
        let config = self.configs.get(stripe);
        match config.destination(req.uri()) {
            Destination::Trusted => {}
            Destination::Elsewhere => {
                let req = self.policy.pass(req);
                let future = self.inner.call(req);
                return ResponseFuture::passed(future, config.clone(), self.policy.clone());
            }
            Destination::Unknown => {
                let error = Error::new(ErrorKind::UnknownOrigin, None);
                return ResponseFuture::failed(error, config.clone(), self.policy.clone());
            }
        }
        let (local, config) = match &config.destinations {
            None => (&mut self.local, config),
            Some(destinations) => {
                let choice = destinations.choose(&req);
                let (key, origin) = match &choice {
                    Choice::Origin(at, key) => (*key, Some(*at)),
                    Choice::Key(key) => (*key, None),
                    Choice::Owned(key) => (key, None),
                    Choice::None => {
                        let req = self.policy.pass(req);
                        let future = self.inner.call(req);
                        return ResponseFuture::passed(future, config.clone(), self.policy.clone());
                    }
                };
                let keyed = self.keyed.get_or_insert_with(KeyedLocals::new);
                let (local, config) = keyed.local(config, destinations.cache(), key, origin);
                (local, &*config)
            }
        };
        // With DPoP, the response future learns the request's origin through a configuration
        // of its own, so that the bearer path's future stays as small as it was.
        let dpop_config = config
            .placement
            .nonce_origin(&req)
            .map(|origin| Arc::new(config.with_nonce_origin(origin)));
        let config = dpop_config.as_ref().unwrap_or(config);
        let (mut req, kept) = self.policy.keep(req);
        let stamped = local.with_current(|entry| {
            config
                .placement
                .stamp(&mut req, &entry.stamp, stripe)
                .then_some(entry.id)
        });
        match stamped {
            Some(Some(id)) => {
                let replay = kept.map(|kept| (kept, spare(&mut self.spare, &self.inner)));
                let future = self.inner.call(req);
                ResponseFuture::sent(future, id, replay, config.clone(), self.policy.clone())
            }
            Some(None) => {
                let error = Error::new(ErrorKind::InvalidToken, None);
                ResponseFuture::failed(error, config.clone(), self.policy.clone())
            }
            None => {
                // This service was polled ready; a clone of it may not be. Take the ready one
                // into the future, which calls it once the token arrives.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let kept = kept.map(|kept| (kept, spare(&mut self.spare, &self.inner)));
                ResponseFuture::waiting(inner, req, kept, config.clone(), self.policy.clone())
            }
        }
    }
}
