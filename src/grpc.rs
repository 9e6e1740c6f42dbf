//! gRPC: UNAUTHENTICATED as a token rejection.
//!
//! A gRPC server says "this token is not valid" with the status code 16, UNAUTHENTICATED, in
//! `grpc-status`. Where it says so decides what can be done:
//!
//! - **In the response headers** (a *trailers-only* response, which is how servers reject a
//!   call before handling it, for example in an interceptor): [`BearerAuth`](crate::BearerAuth)
//!   treats it like an HTTP 401. It looks for it in HTTP/2 responses only, since gRPC runs over
//!   HTTP/2 (a mock answering gRPC in tests must set the response's version). The token is
//!   dropped and the call is replayed once with a fresh token. tonic's request bodies are
//!   streams: with the crate feature `tonic`, the default [`Replay`](crate::replay::Replay)
//!   policy keeps up to 64 KiB of each call's body as it is sent, in tonic's own body type, so
//!   a `Channel` is the inner service as it is.
//! - **In the trailers, after response data**: the call has already delivered part of its answer
//!   and cannot be replayed; it ends with the UNAUTHENTICATED status as usual. Put a
//!   [`RejectOnTrailersLayer`] under the bearer layer, and the token the call carried is
//!   dropped, so that the next call gets a fresh one.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_bearer::grpc::RejectOnTrailersLayer;
//! use tower_bearer::{BearerAuthLayer, StaticToken};
//!
//! let bearer = BearerAuthLayer::new(StaticToken::new("t0k3n"));
//! let stack = ServiceBuilder::new()
//!     .layer(bearer.clone())
//!     .layer(RejectOnTrailersLayer::new(&bearer));
//! # drop(stack);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{grpc_unauthenticated, BearerAuthLayer, Config};
use crate::cache::Rejection;

/// Drops the token of a gRPC call whose trailers say UNAUTHENTICATED: put it under the
/// [`BearerAuthLayer`] whose tokens it watches.
///
/// Its services wrap the response body in a [`TrailersBody`], so a stack with this layer has
/// another response type than one without it. To switch it by configuration, use
/// [`enabled`](Self::enabled) rather than `ServiceBuilder::option_layer` (whose two arms would
/// have different response types): switched off, it passes every response through unwatched.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_bearer::grpc::RejectOnTrailersLayer;
/// use tower_bearer::{BearerAuthLayer, StaticToken};
///
/// let bearer = BearerAuthLayer::new(StaticToken::new("t0k3n"));
/// let stack = |watch_trailers: bool| {
///     ServiceBuilder::new()
///         .layer(bearer.clone())
///         .layer(RejectOnTrailersLayer::new(&bearer).enabled(watch_trailers))
/// };
/// // Switched on or off, the stack has one type: both fit in one array.
/// let [on, off] = [stack(true), stack(false)];
/// # drop((on, off));
/// ```
#[derive(Clone, Debug)]
pub struct RejectOnTrailersLayer {
    config: Arc<Config>,
    enabled: bool,
}

impl RejectOnTrailersLayer {
    /// A layer dropping the tokens of `bearer`'s cache that trailers reject, as placed by
    /// `bearer`. It copies `bearer`'s configuration: build it from the layer as finally
    /// configured (after [`placement`](BearerAuthLayer::placement)).
    pub fn new<P>(bearer: &BearerAuthLayer<P>) -> Self {
        Self {
            config: Arc::new(bearer.config().clone()),
            enabled: true,
        }
    }

    /// Whether trailers are watched. Switched off, responses pass through unwatched (in a
    /// [`TrailersBody`] that only forwards), so the stack's type does not change.
    ///
    /// Default: `true`.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

impl<S> Layer<S> for RejectOnTrailersLayer {
    type Service = RejectOnTrailers<S>;

    fn layer(&self, inner: S) -> RejectOnTrailers<S> {
        RejectOnTrailers {
            inner,
            config: self.enabled.then(|| self.config.clone()),
        }
    }
}

/// The service of [`RejectOnTrailersLayer`].
#[derive(Clone)]
pub struct RejectOnTrailers<S> {
    inner: S,
    /// `None` when switched off.
    config: Option<Arc<Config>>,
}

impl<S> RejectOnTrailers<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for RejectOnTrailers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectOnTrailers")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for RejectOnTrailers<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TrailersBody<ResBody>>;
    type Error = S::Error;
    type Future = TrailersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let is_grpc = |req: &Request<B>| {
            req.headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        };
        // Switched off, not even the content type is looked at.
        let watch = match &self.config {
            Some(config) if is_grpc(&req) => {
                config.placement.stamped_value(&req).map(|value| Watch {
                    config: config.clone(),
                    value,
                })
            }
            _ => None,
        };
        TrailersFuture {
            future: self.inner.call(req),
            watch,
        }
    }
}

/// The token a call carried, to drop if its trailers reject it.
struct Watch {
    config: Arc<Config>,
    value: HeaderValue,
}

impl Watch {
    fn check(self, trailers: &http::HeaderMap) {
        if grpc_unauthenticated(trailers) {
            tracing::debug!("gRPC trailers say UNAUTHENTICATED; dropping the token of the call");
            // With several destinations the call's token may be any key's: look for it.
            let rejected = match &self.config.destinations {
                Some(destinations) => destinations.cache().reject_value(&self.value),
                None => self.config.cache.reject_value(&self.value),
            };
            if !rejected {
                // Already replaced: still a rejection the server made.
                self.config.cache.count_rejection(Rejection::Replaced);
            }
        }
    }
}

pin_project! {
    /// The response future of [`RejectOnTrailers`].
    pub struct TrailersFuture<F> {
        #[pin]
        future: F,
        watch: Option<Watch>,
    }
}

impl<F> fmt::Debug for TrailersFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrailersFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for TrailersFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TrailersBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let watch = this.watch.take();
        Poll::Ready(Ok(response.map(|body| TrailersBody { body, watch })))
    }
}

pin_project! {
    /// A response body that watches its trailers for UNAUTHENTICATED; otherwise the inner body.
    pub struct TrailersBody<B> {
        #[pin]
        body: B,
        watch: Option<Watch>,
    }
}

impl<B> fmt::Debug for TrailersBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrailersBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TrailersBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(watch) = this.watch.take() {
                    watch.check(trailers);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
