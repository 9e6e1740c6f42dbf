//! [`ReplayableBody`] for the body types of the ecosystem: cloned when they are held in memory,
//! and kept as they stream, in their own type, when that type can hold any body.

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Empty, Full};

use super::{KeptBody, ReplayBody, ReplayableBody};

/// Bodies held in memory: a replay sends a clone, which shares the bytes.
macro_rules! cloned {
    ($($(#[$meta:meta])* [$($generics:tt)*] $ty:ty;)*) => {$(
        $(#[$meta])*
        impl<$($generics)*> ReplayableBody for $ty {
            #[inline]
            fn keep(self, _cap: usize) -> (Self, Option<KeptBody<Self>>) {
                let copy = KeptBody::cloned(self.clone());
                (self, Some(copy))
            }

            #[inline]
            fn resend(kept: KeptBody<Self>) -> Option<Self> {
                kept.into_clone()
            }
        }
    )*};
}

cloned! {
    [D: Clone] Full<D>;
    [D] Empty<D>;
    [] Bytes;
    [] String;
    [] Vec<u8>;
    [] &'static str;
    [] &'static [u8];
    /// A request without a body (`Request<()>`), as tests and some clients build them.
    [] ();
}

/// Streaming bodies whose type can hold any body: the kept stream is wrapped back into the
/// body's own type, so the inner service receives the type its caller sent.
macro_rules! rewrapped {
    ($($(#[$meta:meta])* [$($generics:tt)*] $ty:ty => $wrap:expr;)*) => {$(
        $(#[$meta])*
        impl<$($generics)*> ReplayableBody for $ty {
            #[inline]
            fn keep(self, cap: usize) -> (Self, Option<KeptBody<Self>>) {
                let (body, kept) = ReplayBody::keep(self, cap);
                ($wrap(body), kept)
            }

            fn resend(kept: KeptBody<Self>) -> Option<Self> {
                kept.into_replay().map($wrap)
            }
        }
    )*};
}

rewrapped! {
    [E: Send + Sync + 'static] BoxBody<Bytes, E> => BoxBody::new;
    [E: Send + 'static] UnsyncBoxBody<Bytes, E> => UnsyncBoxBody::new;
    /// tonic's request body: a tonic client stack keeps its body type, so a `Channel` serves
    /// as the inner service as it is.
    #[cfg(feature = "tonic")]
    [] tonic::body::Body => tonic::body::Body::new;
    /// axum's body: a gateway built on axum forwards it with its own type.
    #[cfg(feature = "axum")]
    [] axum_core::body::Body => axum_core::body::Body::new;
}
