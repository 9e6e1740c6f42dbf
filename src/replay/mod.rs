//! Deciding whether a request can be sent a second time, and keeping what that takes.
//!
//! When a server rejects a token, the layer fetches a new one and sends the request again, once.
//! That needs a second copy of the request. The layer's [`ReplayPolicy`] decides how it is had:
//!
//! - [`Replay`] (the default) keeps the body type the caller sent, so the inner service is the
//!   client as it is: bodies held in memory ([`Full`], [`Bytes`], `String`…) are cloned, and
//!   streaming bodies whose type can hold any body (tonic's with the crate feature `tonic`,
//!   axum's with `axum`, the boxed bodies of `http-body-util`) keep what they send, up to a cap
//!   (64 KiB by default), without buffering it first. The body type says how, through
//!   [`ReplayableBody`]; implement it for a body type of your own.
//! - [`ReplayWrapped`] replays any `Unpin` [`http_body::Body`], hyper's `Incoming` included (a
//!   gateway forwarding what it received): each body is wrapped in a [`ReplayBody`] that keeps
//!   what it sends, up to the cap, and the inner service receives `ReplayBody<B>`. An inner
//!   service generic over its body type, such as hyper-util's `Client`, takes it as it is.
//! - [`NoReplay`] never replays and keeps nothing; the inner service sees the caller's body.
//!
//! | body | [`Replay`] | [`ReplayWrapped`] |
//! |---|---|---|
//! | [`Full`], [`Empty`], [`Bytes`], `String`, `Vec<u8>`, `&'static str`, `&'static [u8]`, `()` | cloned, whatever its size | kept as sent, up to the cap, in a `ReplayBody` |
//! | tonic's `Body`, axum's `Body`, [`BoxBody`], [`UnsyncBoxBody`] | kept as sent, up to the cap, in its own type | kept as sent, up to the cap, in a `ReplayBody` |
//! | hyper's `Incoming`, [`StreamBody`], other bodies | does not compile: use [`ReplayWrapped`] | kept as sent, up to the cap, in a `ReplayBody` |
//!
//! A body type of another crate that neither policy fits (the orphan rule keeps you from
//! implementing [`ReplayableBody`] for it) takes a newtype, or a [`ReplayPolicy`] of your own.
//!
//! A request whose body is known (from its size hint) to exceed the cap, outgrows it while being
//! sent, or fails mid-stream, is not replayed: the rejection comes back as it came (the token is
//! still dropped, so the next request gets a new one). The memory kept for a request is
//! released when its response is returned.
//!
//! [`Full`]: http_body_util::Full
//! [`Bytes`]: bytes::Bytes
//! [`Empty`]: http_body_util::Empty
//! [`StreamBody`]: http_body_util::StreamBody
//! [`BoxBody`]: http_body_util::combinators::BoxBody
//! [`UnsyncBoxBody`]: http_body_util::combinators::UnsyncBoxBody

mod bodies;
mod body;
mod head;

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use bytes::Buf;
use http::Request;
use http_body::{Body, SizeHint};

pub use body::ReplayBody;
use body::Shared;
use head::Head;

/// Decides whether a request can be replayed after its token was rejected, and keeps what a
/// replay needs.
///
/// The layer calls [`keep`](Self::keep) on every request it stamps, [`pass`](Self::pass) on the
/// requests it lets through without a token, and [`replay`](Self::replay) only when the server
/// rejected the token. A policy may change the body type the inner service sees.
pub trait ReplayPolicy<B> {
    /// The body type the inner service receives.
    type Body;
    /// What is kept for a replay.
    type Kept;

    /// Splits a request into the one to send now and, if it can be replayed, what a replay
    /// needs.
    fn keep(&self, req: Request<B>) -> (Request<Self::Body>, Option<Self::Kept>);

    /// Converts a request that is not to be replayed at all (see
    /// [`BearerAuthLayer::only_origins`](crate::BearerAuthLayer::only_origins)).
    fn pass(&self, req: Request<B>) -> Request<Self::Body>;

    /// Builds the request to send again. `None` means it cannot be replayed after all (for
    /// example, a streaming body outgrew what could be kept); the rejection is then returned to
    /// the caller as it came.
    fn replay(&self, kept: Self::Kept) -> Option<Request<Self::Body>>;
}

/// A request body type that the default [`Replay`] policy knows how to send twice, in its own
/// type.
///
/// Implemented for the body types of `http-body-util`, `bytes` and the standard library, and,
/// behind the crate features of the same names, for the bodies of tonic and axum. For a body
/// type of your own, pick one of two shapes: a body that is cheap to clone keeps a clone
/// ([`KeptBody::cloned`]); a body type that can hold any body keeps what it sends through a
/// [`ReplayBody`] ([`ReplayBody::recording`]) and wraps it back. A body type that can do neither
/// (hyper's `Incoming`) is replayed by [`ReplayWrapped`] instead.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::combinators::UnsyncBoxBody;
/// use http_body_util::{BodyExt, Full};
/// use tower_bearer::replay::{KeptBody, ReplayBody, ReplayableBody};
///
/// /// A body that is cheap to clone: a replay sends a clone.
/// #[derive(Clone)]
/// struct Json(Full<Bytes>);
///
/// impl ReplayableBody for Json {
///     fn split(self, _cap: usize) -> (Json, Option<KeptBody<Json>>) {
///         let copy = KeptBody::cloned(self.clone());
///         (self, Some(copy))
///     }
///
///     fn resend(kept: KeptBody<Json>) -> Option<Json> {
///         kept.into_clone()
///     }
/// }
///
/// /// A body that holds any body: what it sends is kept, up to `cap` bytes.
/// struct Upload(UnsyncBoxBody<Bytes, std::io::Error>);
/// # impl http_body::Body for Upload {
/// #     type Data = Bytes;
/// #     type Error = std::io::Error;
/// #     fn poll_frame(
/// #         self: std::pin::Pin<&mut Self>,
/// #         cx: &mut std::task::Context<'_>,
/// #     ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
/// #         std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx)
/// #     }
/// # }
///
/// impl ReplayableBody for Upload {
///     fn split(self, cap: usize) -> (Upload, Option<KeptBody<Upload>>) {
///         let (body, kept) = ReplayBody::recording(self, cap);
///         (Upload(UnsyncBoxBody::new(body)), kept)
///     }
///
///     fn resend(kept: KeptBody<Upload>) -> Option<Upload> {
///         Some(Upload(UnsyncBoxBody::new(kept.into_replay()?)))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // What the layer does with a request whose token is rejected: the first attempt is sent,
/// // then the kept copy is resent.
/// let (first, kept) = Json(Full::new(Bytes::from("{}"))).split(64 * 1024);
/// let replay = Json::resend(kept.expect("a clone is kept")).expect("it can be resent");
/// assert_eq!(replay.0.collect().await.unwrap().to_bytes(), "{}");
/// # drop(first);
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "the default replay policy cannot send a `{Self}` request body twice in its own type",
    label = "this body type",
    note = "replay it wrapped with `BearerAuthLayer::replay_wrapped()` (the inner service then \
            receives `ReplayBody<{Self}>`), implement `tower_bearer::replay::ReplayableBody` for \
            it, enable the crate feature for it (`tonic`, `axum`), or turn replays off with \
            `BearerAuthLayer::without_replay()`"
)]
pub trait ReplayableBody: Sized {
    /// The body to send now and, if the request can be replayed, what a replay needs, keeping
    /// at most `cap` bytes of a streaming body.
    fn split(self, cap: usize) -> (Self, Option<KeptBody<Self>>);

    /// The body to send again. `None` if it cannot be had any more (a stream outgrew the cap,
    /// or failed).
    fn resend(kept: KeptBody<Self>) -> Option<Self>;
}

/// What a [`ReplayableBody`] keeps for a replay: a clone, or a handle on what its
/// [`ReplayBody`] keeps as it is sent. Dropping it releases the kept bytes.
pub struct KeptBody<B> {
    kept: Option<Kept<B>>,
}

enum Kept<B> {
    Cloned(B),
    Streamed {
        shared: Arc<Shared<B>>,
        hint: SizeHint,
    },
}

impl<B> KeptBody<B> {
    /// Keeps `copy`, a clone of the body being sent, for the replay.
    pub fn cloned(copy: B) -> Self {
        Self {
            kept: Some(Kept::Cloned(copy)),
        }
    }

    /// The clone kept with [`cloned`](Self::cloned); `None` if this keeps a stream.
    pub fn into_clone(mut self) -> Option<B> {
        match self.kept.take()? {
            Kept::Cloned(body) => Some(body),
            streamed @ Kept::Streamed { .. } => {
                self.kept = Some(streamed);
                None
            }
        }
    }

    /// The body for a replay: what the first attempt sent (resent from memory), then what it
    /// did not read yet. A kept clone comes back as a [`ReplayBody`] passing it through. `None`
    /// if a stream outgrew the cap or failed.
    pub fn into_replay(mut self) -> Option<ReplayBody<B>> {
        match self.kept.take()? {
            Kept::Cloned(body) => Some(ReplayBody::new(body)),
            Kept::Streamed { shared, hint } => {
                if !shared.replayable() {
                    shared.release();
                    return None;
                }
                Some(ReplayBody::replay(shared, hint))
            }
        }
    }

    pub(crate) fn streamed(shared: Arc<Shared<B>>, hint: SizeHint) -> Self {
        Self {
            kept: Some(Kept::Streamed { shared, hint }),
        }
    }
}

impl<B> Drop for KeptBody<B> {
    fn drop(&mut self) {
        if let Some(Kept::Streamed { shared, .. }) = &self.kept {
            shared.release();
        }
    }
}

impl<B> fmt::Debug for KeptBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kept {
            Some(Kept::Cloned(_)) => "cloned",
            Some(Kept::Streamed { .. }) => "streamed",
            None => "taken",
        };
        f.debug_struct("KeptBody").field("kind", &kind).finish()
    }
}

/// Replays every request whose body can be replayed in its own type. The default
/// [`ReplayPolicy`].
///
/// The body type decides how, through [`ReplayableBody`]: a clone for bodies held in memory;
/// for streaming bodies that can hold any body, what was sent, up to a cap (64 KiB by default),
/// without buffering the body before sending it. A streaming body without a known size that the
/// server rejects *before* reading past the cap is still replayed: the kept part is resent and
/// the rest streams from the caller as usual. The replay starts sending its body once the first
/// attempt's body has been dropped by the connection that carried it (hyper drops it when the
/// exchange ends, or when the server closes the connection), so that the unread rest of the
/// original is never read by two attempts.
///
/// The method, URI, version, headers and extensions are copied as they were before the token was
/// stamped; the replay gets the new token.
///
/// ```
/// use tower_bearer::replay::Replay;
/// use tower_bearer::{BearerAuthLayer, StaticToken};
///
/// let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"))
///     .replay_policy(Replay::new().cap(256 * 1024));
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Replay {
    cap: usize,
}

impl Replay {
    /// A policy keeping up to 64 KiB of each streaming body.
    pub fn new() -> Self {
        Self { cap: DEFAULT_CAP }
    }

    /// How many bytes of a streaming body are kept for a replay. Bodies held in memory are
    /// cloned whatever their size (the clone shares their bytes).
    ///
    /// Default: 64 KiB.
    pub fn cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }
}

impl Default for Replay {
    fn default() -> Self {
        Self::new()
    }
}

const DEFAULT_CAP: usize = 64 * 1024;

/// Replays requests with any `Unpin` body, wrapping each in a [`ReplayBody`] that keeps what it
/// sends, up to a cap (64 KiB by default); the inner service receives `ReplayBody<B>`.
///
/// For body types that [`Replay`] cannot send twice in their own type: hyper's `Incoming` in a
/// gateway that forwards what it receives, a [`StreamBody`](http_body_util::StreamBody), any
/// body of another crate. An inner service generic over its body type, such as hyper-util's
/// `Client`, takes `ReplayBody<B>` as it is: its body type is inferred. Otherwise it behaves as
/// [`Replay`] does for streams.
///
/// Every body is kept as it streams, bodies held in memory too: a `Full` body larger than the
/// cap is not replayed (raise the [cap](Self::cap), or use [`Replay`], which clones it), and the
/// replay starts once the first attempt's body has been dropped by its connection.
///
/// ```
/// use tower_bearer::replay::ReplayWrapped;
/// use tower_bearer::{BearerAuthLayer, StaticToken};
///
/// let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"))
///     .replay_policy(ReplayWrapped::new().cap(256 * 1024));
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ReplayWrapped {
    cap: usize,
}

impl ReplayWrapped {
    /// A policy keeping up to 64 KiB of each body.
    pub fn new() -> Self {
        Self { cap: DEFAULT_CAP }
    }

    /// How many bytes of each body are kept for a replay.
    ///
    /// Default: 64 KiB.
    pub fn cap(mut self, bytes: usize) -> Self {
        self.cap = bytes;
        self
    }
}

impl Default for ReplayWrapped {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Replay`] and [`ReplayWrapped`] keep for a replay: a copy of the request's head, and what its body keeps.
/// Dropping it releases the kept bytes.
pub struct KeptRequest<B> {
    head: Head,
    body: KeptBody<B>,
}

impl<B> fmt::Debug for KeptRequest<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the method is shown: the headers may carry credentials of their own.
        f.debug_struct("KeptRequest")
            .field("method", self.head.method())
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl<B: ReplayableBody> ReplayPolicy<B> for Replay {
    type Body = B;
    type Kept = KeptRequest<B>;

    #[inline]
    fn keep(&self, req: Request<B>) -> (Request<B>, Option<KeptRequest<B>>) {
        keep_with(req, |body| body.split(self.cap))
    }

    #[inline]
    fn pass(&self, req: Request<B>) -> Request<B> {
        req
    }

    fn replay(&self, kept: KeptRequest<B>) -> Option<Request<B>> {
        let KeptRequest { head, body } = kept;
        // The head first: if it cannot be rebuilt, `body` is dropped unused and releases what
        // it kept at once.
        let parts = head.into_parts()?;
        Some(Request::from_parts(parts, B::resend(body)?))
    }
}

impl<B> ReplayPolicy<B> for ReplayWrapped
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Body = ReplayBody<B>;
    type Kept = KeptRequest<B>;

    fn keep(&self, req: Request<B>) -> (Request<ReplayBody<B>>, Option<KeptRequest<B>>) {
        keep_with(req, |body| ReplayBody::recording(body, self.cap))
    }

    fn pass(&self, req: Request<B>) -> Request<ReplayBody<B>> {
        req.map(ReplayBody::new)
    }

    fn replay(&self, kept: KeptRequest<B>) -> Option<Request<ReplayBody<B>>> {
        let KeptRequest { head, body } = kept;
        let parts = head.into_parts()?;
        Some(Request::from_parts(parts, body.into_replay()?))
    }
}

/// Splits `req`, keeps its body with `keep`, and copies its head if the body was kept.
#[inline]
fn keep_with<B, T>(
    req: Request<B>,
    keep: impl FnOnce(B) -> (T, Option<KeptBody<B>>),
) -> (Request<T>, Option<KeptRequest<B>>) {
    let (parts, body) = req.into_parts();
    let (body, kept) = keep(body);
    let kept = kept.and_then(|body| {
        let head = Head::copy(&parts)?;
        Some(KeptRequest { head, body })
    });
    (Request::from_parts(parts, body), kept)
}

/// Never replays: a rejected token is dropped (the next request gets a new one) and the
/// rejection is returned to the caller. Nothing is copied, so this is the cheapest policy, and
/// the inner service receives the caller's body type, whatever it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<B> ReplayPolicy<B> for NoReplay {
    type Body = B;
    type Kept = Infallible;

    #[inline]
    fn keep(&self, req: Request<B>) -> (Request<B>, Option<Infallible>) {
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

impl<B: Body> ReplayBody<B> {
    /// Wraps a streaming body so that it keeps what it sends, up to `cap` bytes, for a replay:
    /// the body to send, and what a replay needs. When the body's size hint says it is larger
    /// than `cap`, nothing is kept: the body passes through and `None` is returned.
    pub fn recording(body: B, cap: usize) -> (Self, Option<KeptBody<B>>) {
        let hint = body.size_hint();
        if hint.lower() > cap as u64 {
            return (Self::new(body), None);
        }
        let (body, shared) = Self::first(body, cap);
        (body, Some(KeptBody::streamed(shared, hint)))
    }
}
