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
            fn split(self, _cap: usize) -> (Self, Option<KeptBody<Self>>) {
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
            fn split(self, cap: usize) -> (Self, Option<KeptBody<Self>>) {
                if http_body::Body::size_hint(&self).lower() > cap as u64 {
                    // Known to outgrow the cap: sent as it is, never replayed.
                    return (self, None);
                }
                let (body, kept) = ReplayBody::recording(self, cap);
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    fn boxed(bytes: &'static [u8]) -> BoxBody<Bytes, Infallible> {
        BoxBody::new(Full::new(Bytes::from_static(bytes)))
    }

    #[tokio::test]
    async fn a_boxed_body_is_kept_as_it_is_sent_and_resent_in_its_own_type() {
        let (first, kept) = boxed(b"payload").split(64);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "payload");
        let replay = BoxBody::resend(kept.expect("kept")).expect("replayable");
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "payload");
    }

    #[tokio::test]
    async fn a_boxed_body_known_to_outgrow_the_cap_is_sent_whole_and_not_kept() {
        let (first, kept) = boxed(b"payload").split(3);
        assert!(kept.is_none());
        assert_eq!(first.collect().await.unwrap().to_bytes(), "payload");
    }

    #[test]
    fn a_body_held_in_memory_is_cloned_whatever_the_cap() {
        let (_, kept) = Full::new(Bytes::from_static(b"payload")).split(0);
        let copy = Full::resend(kept.expect("cloned")).expect("resent");
        assert_eq!(
            format!("{copy:?}"),
            format!("{:?}", Full::new(Bytes::from_static(b"payload")))
        );
    }
}
