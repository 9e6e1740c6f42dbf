//! Deciding whether a request can be sent a second time, and keeping what that takes.
//!
//! When a server rejects a token, the layer fetches a new one and sends the request again, once.
//! That needs a second copy of the request, which is only possible for some bodies. A
//! [`ReplayPolicy`] decides, per request, whether a copy is kept and what body the inner service
//! sees:
//!
//! - [`CloneBody`] (the default) clones bodies that can be cloned; the inner service sees the
//!   request's own body type.
//! - [`StreamingReplay`] also replays streaming bodies (hyper's `Incoming`, tonic's body, any
//!   `http_body::Body`) without buffering them first: the inner service sees a [`ReplayBody`]
//!   that keeps what it sends, up to a cap.
//! - [`NoReplay`] turns replays off.

mod body;
mod head;

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, SizeHint};
use http_body_util::{Empty, Full};

pub use body::ReplayBody;
use body::Shared;
use head::Head;

/// Decides whether a request can be replayed after its token was rejected, and keeps what a
/// replay needs.
///
/// The layer calls [`prepare`](Self::prepare) on every request before stamping its token, and
/// [`replay`](Self::replay) only when the server rejected the token. A policy may change the
/// body type the inner service sees (a streaming body can be wrapped so that it keeps what it
/// sends).
pub trait ReplayPolicy<B> {
    /// The body type the inner service receives.
    type Body;
    /// What is kept for a replay.
    type Kept;

    /// Splits a request into the one to send now and, if it can be replayed, what a replay
    /// needs.
    fn prepare(&self, req: Request<B>) -> (Request<Self::Body>, Option<Self::Kept>);

    /// Converts a request that is not to be replayed at all (see
    /// [`BearerAuthLayer::only_origins`](crate::BearerAuthLayer::only_origins)).
    fn pass(&self, req: Request<B>) -> Request<Self::Body>;

    /// Builds the request to send again. `None` means it cannot be replayed after all (for
    /// example, a streaming body outgrew what could be kept); the rejection is then returned to
    /// the caller as it came.
    fn replay(&self, kept: Self::Kept) -> Option<Request<Self::Body>>;
}

/// Replays requests whose body can be cloned. The default [`ReplayPolicy`].
///
/// These body types are cloned: [`http_body_util::Full<Bytes>`], [`http_body_util::Empty<Bytes>`],
/// `String`, [`Bytes`], `Vec<u8>` and `()`. A request with any other body is sent once, and a
/// rejection of its token comes back as it is (the token is still dropped, so the next request
/// gets a new one).
///
/// The method, URI, version, headers and extensions are copied as they were before the token was
/// stamped; the replay gets the new token.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBody;

impl<B: 'static> ReplayPolicy<B> for CloneBody {
    type Body = B;
    type Kept = KeptRequest<B>;

    #[inline]
    fn prepare(&self, req: Request<B>) -> (Request<B>, Option<KeptRequest<B>>) {
        let Some(body) = clone_body(req.body()) else {
            return (req, None);
        };
        let kept = Head::copy(&req).map(|head| KeptRequest {
            head: Some(head),
            body: Some(KeptBody::Cloned(body)),
        });
        (req, kept)
    }

    #[inline]
    fn pass(&self, req: Request<B>) -> Request<B> {
        req
    }

    fn replay(&self, mut kept: KeptRequest<B>) -> Option<Request<B>> {
        let head = kept.take_head()?;
        match kept.body.take()? {
            KeptBody::Cloned(body) => Some(Request::from_parts(head, body)),
            // `CloneBody` keeps cloned bodies only.
            KeptBody::Streamed { .. } => None,
        }
    }
}

/// Replays requests with any body: cloneable bodies are cloned as [`CloneBody`] does, and
/// streaming bodies are wrapped in a [`ReplayBody`] that keeps what it sends, up to a cap.
///
/// A request whose body is known (from its size hint) to exceed the cap, or outgrows it while
/// being sent, or fails mid-stream, is not replayed: the rejection comes back as it came. The
/// memory kept for a request is released when its response is returned.
///
/// A body without a known size that the server rejects *before* reading past the cap is still
/// replayed: the kept part is resent and the rest streams from the caller as usual.
///
/// The replay starts sending its body once the first attempt's body has been dropped by the
/// connection that carried it (hyper drops it when the exchange ends, or when the server closes
/// the connection), so that the unread rest of the original is never read by two attempts.
///
/// The inner service receives `ReplayBody<B>`; for a client that wants its own body type (such
/// as tonic's `Channel`), map it back with `ServiceBuilder::map_request`, as `examples/grpc.rs`
/// does: `.map_request(|r: Request<ReplayBody<tonic::body::Body>>| r.map(tonic::body::Body::new))`.
///
/// ```
/// use tower_bearer::replay::StreamingReplay;
/// use tower_bearer::{BearerAuthLayer, StaticToken};
///
/// let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"))
///     .replay_policy(StreamingReplay::new().cap(256 * 1024));
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct StreamingReplay {
    cap: usize,
}

impl StreamingReplay {
    /// A policy keeping up to 64 KiB of each streaming body.
    pub fn new() -> Self {
        Self { cap: 64 * 1024 }
    }

    /// How many bytes of a streaming body are kept for a replay.
    ///
    /// Default: 64 KiB.
    pub fn cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }
}

impl Default for StreamingReplay {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`CloneBody`] and [`StreamingReplay`] keep for a replay: a copy of the request's head,
/// and its cloned body or a handle on what its [`ReplayBody`] kept. Dropping it releases the
/// kept bytes.
pub struct KeptRequest<B> {
    head: Option<Head>,
    body: Option<KeptBody<B>>,
}

impl<B> KeptRequest<B> {
    fn take_head(&mut self) -> Option<http::request::Parts> {
        self.head.take()?.into_parts()
    }
}

enum KeptBody<B> {
    Cloned(B),
    Streamed {
        shared: Arc<Shared<B>>,
        hint: SizeHint,
    },
}

impl<B> Drop for KeptRequest<B> {
    fn drop(&mut self) {
        if let Some(KeptBody::Streamed { shared, .. }) = &self.body {
            shared.release();
        }
    }
}

impl<B> fmt::Debug for KeptRequest<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the method is shown: the headers may carry credentials of their own.
        let mut out = f.debug_struct("KeptRequest");
        if let Some(head) = &self.head {
            out.field("method", head.method());
        }
        out.finish_non_exhaustive()
    }
}

impl<B> ReplayPolicy<B> for StreamingReplay
where
    B: Body + Unpin + 'static,
    B::Data: Buf,
{
    type Body = ReplayBody<B>;
    type Kept = KeptRequest<B>;

    fn prepare(&self, req: Request<B>) -> (Request<ReplayBody<B>>, Option<KeptRequest<B>>) {
        let cloned = clone_body(req.body());
        let hint = req.body().size_hint();
        // A body known to outgrow the cap is never replayed: nothing is copied for it.
        let head = match &cloned {
            None if hint.lower() > self.cap as u64 => None,
            _ => Head::copy(&req),
        };
        let (parts, body) = req.into_parts();
        let Some(head) = head else {
            return (Request::from_parts(parts, ReplayBody::plain(body)), None);
        };
        let (body, kept) = match cloned {
            Some(copy) => (ReplayBody::plain(body), KeptBody::Cloned(copy)),
            None => {
                let (body, shared) = ReplayBody::first(body, self.cap);
                (body, KeptBody::Streamed { shared, hint })
            }
        };
        let kept = KeptRequest {
            head: Some(head),
            body: Some(kept),
        };
        (Request::from_parts(parts, body), Some(kept))
    }

    fn pass(&self, req: Request<B>) -> Request<ReplayBody<B>> {
        req.map(ReplayBody::plain)
    }

    fn replay(&self, mut kept: KeptRequest<B>) -> Option<Request<ReplayBody<B>>> {
        let head = kept.take_head()?;
        let body = match kept.body.take()? {
            KeptBody::Cloned(body) => ReplayBody::plain(body),
            KeptBody::Streamed { shared, hint } => {
                if !shared.replayable() {
                    return None;
                }
                ReplayBody::replay(shared, hint)
            }
        };
        Some(Request::from_parts(head, body))
    }
}

/// Clones a body if its type is one of the known cloneable ones. The check is a comparison of
/// type ids, resolved at compile time after inlining; nothing is allocated for other types.
#[inline]
fn clone_body<B: 'static>(body: &B) -> Option<B> {
    let body = body as &dyn Any;
    let mut out: Option<B> = None;
    let slot = &mut out as &mut dyn Any;
    if let Some(body) = body.downcast_ref::<Full<Bytes>>() {
        put(slot, body.clone());
    } else if let Some(body) = body.downcast_ref::<Empty<Bytes>>() {
        put(slot, *body);
    } else if let Some(body) = body.downcast_ref::<String>() {
        put(slot, body.clone());
    } else if let Some(body) = body.downcast_ref::<Bytes>() {
        put(slot, body.clone());
    } else if let Some(body) = body.downcast_ref::<Vec<u8>>() {
        put(slot, body.clone());
    } else if body.is::<()>() {
        put(slot, ());
    }
    out
}

#[inline]
fn put<T: 'static>(slot: &mut dyn Any, value: T) {
    if let Some(slot) = slot.downcast_mut::<Option<T>>() {
        *slot = Some(value);
    }
}

/// Never replays: a rejected token is dropped (the next request gets a new one) and the
/// rejection is returned to the caller. Nothing is copied, so this is the cheapest policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<B> ReplayPolicy<B> for NoReplay {
    type Body = B;
    type Kept = Infallible;

    #[inline]
    fn prepare(&self, req: Request<B>) -> (Request<B>, Option<Infallible>) {
        (req, None)
    }

    #[inline]
    fn pass(&self, req: Request<B>) -> Request<B> {
        req
    }

    fn replay(&self, kept: Infallible) -> Option<Request<B>> {
        match kept {}
    }
}
