//! Deciding whether a request can be sent a second time, and keeping what that takes.
//!
//! When a server rejects a token, the layer fetches a new one and sends the request again, once.
//! That needs a second copy of the request, which is only possible for some bodies. A
//! [`ReplayPolicy`] decides, per request, whether a copy is kept and what body the inner service
//! sees; [`CloneBody`] (the default) clones bodies that can be cloned, and [`NoReplay`] turns
//! replays off.

use std::any::Any;
use std::convert::Infallible;

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};

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
    type Kept = Request<B>;

    #[inline]
    fn prepare(&self, req: Request<B>) -> (Request<B>, Option<Request<B>>) {
        let Some(body) = clone_body(req.body()) else {
            return (req, None);
        };
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        (req, Some(copy))
    }

    #[inline]
    fn replay(&self, kept: Request<B>) -> Option<Request<B>> {
        Some(kept)
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

    fn replay(&self, kept: Infallible) -> Option<Request<B>> {
        match kept {}
    }
}
