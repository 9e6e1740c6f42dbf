use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::classify::rejects_token;
use super::service::Spare;
use super::Config;
use crate::cache::{Entry, Rejection};
use crate::error::ErrorKind;
use crate::replay::ReplayPolicy;
use crate::{BoxError, Error};

type Acquire = Pin<Box<dyn Future<Output = Result<Arc<Entry>, Error>> + Send>>;

pin_project! {
    /// The response future of [`BearerAuth`](super::BearerAuth).
    pub struct ResponseFuture<S, P, B>
    where
        S: Service<Request<P::Body>>,
        P: ReplayPolicy<B>,
    {
        #[pin]
        state: State<S, P, B>,
        config: Arc<Config>,
        policy: P,
    }
}

pin_project! {
    // The states a request waits in (for a token, or for the inner service before a replay)
    // keep what they hold in a box: those paths are rare, and a small future is cheaper to move
    // on the path every request takes.
    #[project = StateProj]
    enum State<S, P, B>
    where
        S: Service<Request<P::Body>>,
        P: ReplayPolicy<B>,
    {
        // No usable token when the request came: waiting for the fetch in flight.
        Waiting {
            acquire: Acquire,
            parked: Option<Box<Parked<S, P, B>>>,
        },
        // Sent with the token `id`; `replay` holds what a replay needs, if one is possible.
        Sent {
            #[pin]
            future: S::Future,
            id: u64,
            replay: Option<(P::Kept, Spare<S>)>,
        },
        // The token was rejected: waiting for a fresh one to replay with.
        Reacquiring {
            acquire: Acquire,
            parked: Option<Box<(S, Option<Request<P::Body>>)>>,
        },
        // Waiting for the clone of the inner service to be ready for the replay.
        ReplayReady {
            parked: Box<(S, Option<Request<P::Body>>)>,
            id: u64,
        },
        // The replay is in flight; whatever it answers is returned.
        Replaying {
            #[pin]
            future: S::Future,
            id: u64,
        },
        // Sent without a token (another origin): returned as it comes.
        Passed {
            #[pin]
            future: S::Future,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

/// A request waiting for a token, with the ready inner service that will send it.
struct Parked<S, P: ReplayPolicy<B>, B> {
    inner: S,
    req: Request<P::Body>,
    replay: Option<(P::Kept, Spare<S>)>,
}

impl<S, P, B> ResponseFuture<S, P, B>
where
    S: Service<Request<P::Body>>,
    P: ReplayPolicy<B>,
{
    pub(super) fn sent(
        future: S::Future,
        id: u64,
        replay: Option<(P::Kept, Spare<S>)>,
        config: Arc<Config>,
        policy: P,
    ) -> Self {
        Self {
            state: State::Sent { future, id, replay },
            config,
            policy,
        }
    }

    pub(super) fn waiting(
        inner: S,
        req: Request<P::Body>,
        replay: Option<(P::Kept, Spare<S>)>,
        config: Arc<Config>,
        policy: P,
    ) -> Self {
        let cache = config.cache.clone();
        Self {
            state: State::Waiting {
                acquire: Box::pin(async move { cache.acquire().await }),
                parked: Some(Box::new(Parked { inner, req, replay })),
            },
            config,
            policy,
        }
    }

    pub(super) fn passed(future: S::Future, config: Arc<Config>, policy: P) -> Self {
        Self {
            state: State::Passed { future },
            config,
            policy,
        }
    }

    pub(super) fn failed(error: Error, config: Arc<Config>, policy: P) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            config,
            policy,
        }
    }
}

impl<S, P, B, ResBody> Future for ResponseFuture<S, P, B>
where
    S: Service<Request<P::Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayPolicy<B>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { acquire, parked } => {
                    let entry = ready!(acquire.as_mut().poll(cx))?;
                    let Some(parked) = parked.take() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    let Parked {
                        mut inner,
                        mut req,
                        replay,
                    } = *parked;
                    if !this
                        .config
                        .placement
                        .stamp(&mut req, &entry.stamp, this.config.stripe)
                    {
                        return Poll::Ready(Err(Error::new(ErrorKind::InvalidToken, None).into()));
                    }
                    // `inner` is the service that `poll_ready` reported ready.
                    let future = inner.call(req);
                    this.state.set(State::Sent {
                        future,
                        id: entry.id,
                        replay,
                    });
                }
                StateProj::Sent { future, id, replay } => {
                    let result = ready!(future.poll(cx));
                    // Taken now, so that the kept copy and the hold on the spare inner service are
                    // released with the response even if the caller keeps this future around.
                    let replay = replay.take();
                    let response = result.map_err(Into::into)?;
                    let asks_nonce = match &this.config.nonce_origin {
                        Some(origin) => observe_nonce(this.config, origin, &response),
                        None => false,
                    };
                    if !rejects_token(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    let cache = &this.config.cache;
                    let id = *id;
                    // A nonce challenge is answered with a new proof and the same token.
                    let rejection = if asks_nonce {
                        Rejection::Kept
                    } else {
                        let rejection = cache.reject(id);
                        cache.count_rejection(rejection);
                        rejection
                    };
                    let replay = replay.and_then(|(kept, spare)| {
                        let req = this.policy.replay(kept)?;
                        let inner = spare.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        Some((req, inner))
                    });
                    let Some((req, inner)) = replay else {
                        tracing::debug!(token.id = id, "token rejected; request not replayable");
                        return Poll::Ready(Ok(response));
                    };
                    if rejection == Rejection::Kept {
                        tracing::debug!(
                            token.id = id,
                            "token rejected but kept; replaying with it"
                        );
                    } else {
                        tracing::debug!(
                            token.id = id,
                            "token rejected; replaying with a new token"
                        );
                    }
                    let cache = cache.clone();
                    this.state.set(State::Reacquiring {
                        acquire: Box::pin(async move { cache.acquire_for_replay().await }),
                        parked: Some(Box::new((inner, Some(req)))),
                    });
                }
                StateProj::Reacquiring { acquire, parked } => {
                    let entry = ready!(acquire.as_mut().poll(cx))?;
                    let Some(mut parked) = parked.take() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    let Some(req) = parked.1.as_mut() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    if !this
                        .config
                        .placement
                        .stamp(req, &entry.stamp, this.config.stripe)
                    {
                        return Poll::Ready(Err(Error::new(ErrorKind::InvalidToken, None).into()));
                    }
                    this.state.set(State::ReplayReady {
                        parked,
                        id: entry.id,
                    });
                }
                StateProj::ReplayReady { parked, id } => {
                    let (inner, req) = &mut **parked;
                    ready!(inner.poll_ready(cx)).map_err(Into::into)?;
                    let Some(req) = req.take() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    this.config.cache.count_replay();
                    let id = *id;
                    let future = inner.call(req);
                    this.state.set(State::Replaying { future, id });
                }
                StateProj::Replaying { future, id } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let asks_nonce = match &this.config.nonce_origin {
                        Some(origin) => observe_nonce(this.config, origin, &response),
                        None => false,
                    };
                    if rejects_token(&response) && !asks_nonce {
                        // Not replayed again. The token is dropped like any rejected one, unless
                        // a rejection dropped one moments ago (usually the one this replay
                        // replaced): then the server refuses fresh tokens, and it is kept.
                        tracing::debug!(
                            token.id = *id,
                            "the replay was rejected too; returning the rejection"
                        );
                        let rejection = this.config.cache.reject(*id);
                        this.config.cache.count_rejection(rejection);
                        this.config.cache.count_replay_rejection();
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Passed { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(error.into()));
                }
            }
        }
    }
}

/// Keeps the `DPoP-Nonce` of a response to a DPoP request; returns whether the response asks
/// for a proof with that nonce (so that the token was not rejected).
fn observe_nonce<B>(config: &Config, origin: &str, response: &Response<B>) -> bool {
    #[cfg(feature = "jose")]
    if let Some(key) = config.placement.dpop_key() {
        let fresh = key.observe(origin, response.headers());
        return fresh && super::classify::asks_dpop_nonce(response);
    }
    let _ = (config, origin, response);
    false
}

impl<S, P, B> fmt::Debug for ResponseFuture<S, P, B>
where
    S: Service<Request<P::Body>>,
    P: ReplayPolicy<B>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting for a token",
            State::Sent { .. } => "sent",
            State::Reacquiring { .. } => "waiting for a token to replay with",
            State::ReplayReady { .. } => "waiting for the inner service to replay",
            State::Replaying { .. } => "replayed",
            State::Passed { .. } => "sent without a token",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
