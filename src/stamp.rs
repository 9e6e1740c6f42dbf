//! What a request is stamped with, made ready before any request needs it: a token's header
//! values, copied once per stripe.
//!
//! Cloning an `Arc` or a header value is an atomic write to one cache line. When every request
//! writes the same line, it travels between cores on each request. Instead, each service clone
//! takes one of [`STRIPES`] stripes when it is made and uses that stripe's copy of everything
//! requests share (its configuration, the token's header values): a clone serves one task at a
//! time, so clones used by tasks on different threads mostly write different lines.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderValue;

use crate::token::secret_bytes;

/// How many copies: enough to spread the threads of a typical runtime.
pub(crate) const STRIPES: usize = 8;

/// The largest access token the cache accepts: 64 KiB. Far above any real token (JWTs with many
/// claims reach a few KiB) and above what HTTP servers accept in a header (8 to 64 KiB for all
/// of them together).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Which copy a service clone uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stripe(usize);

impl Stripe {
    /// The first stripe: for what is read rather than cloned per request.
    pub(crate) const FIRST: Self = Self(0);

    /// The stripe for a new service clone, round-robin.
    #[inline]
    pub(crate) fn next() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES)
    }

    /// The stripe's position, `0..STRIPES`.
    pub(crate) fn index(self) -> usize {
        self.0
    }
}

/// One value per stripe, each its own allocation where `T` holds one.
pub(crate) struct Striped<T>([T; STRIPES]);

impl<T> Striped<T> {
    pub(crate) fn from_fn(mut f: impl FnMut(Stripe) -> T) -> Self {
        Self(std::array::from_fn(|index| f(Stripe(index))))
    }

    /// The copy of `stripe`.
    #[inline]
    pub(crate) fn get(&self, stripe: Stripe) -> &T {
        // `STRIPES` is a constant: the bound check compiles to nothing after the mask.
        &self.0[stripe.0 % STRIPES]
    }
}

/// A token's header values, each marked sensitive and zeroed when freed, one copy per stripe:
/// the raw token, and `Bearer <token>`.
pub(crate) struct Stamp {
    raw: Striped<HeaderValue>,
    bearer: Striped<HeaderValue>,
}

/// Why a token cannot be stamped on a request.
#[derive(Debug)]
pub(crate) enum Unstampable {
    TooLarge(usize),
    NotPrintable,
}

impl fmt::Display for Unstampable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(len) => write!(
                f,
                "the access token is {len} bytes long, over the limit of {MAX_TOKEN_BYTES} bytes"
            ),
            Self::NotPrintable => f.write_str(
                "the access token is empty or holds a byte that is not printable ASCII (a \
                 control character, a line break, or a non-ASCII byte)",
            ),
        }
    }
}

impl std::error::Error for Unstampable {}

impl Stamp {
    /// Builds the header values of `secret`.
    ///
    /// # Errors
    ///
    /// When `secret` is over [`MAX_TOKEN_BYTES`] (held once per stripe and form, a huge token
    /// would cost that many times its size, and no server accepts such a header anyway), or is
    /// not a sequence of printable ASCII characters (RFC 6750 tokens are; anything else, such as
    /// CR, LF, NUL or non-ASCII, could split or corrupt the request).
    pub(crate) fn new(secret: &str) -> Result<Self, Unstampable> {
        if secret.len() > MAX_TOKEN_BYTES {
            return Err(Unstampable::TooLarge(secret.len()));
        }
        let printable = |b: u8| (0x20..0x7f).contains(&b);
        if secret.is_empty() || !secret.bytes().all(printable) {
            return Err(Unstampable::NotPrintable);
        }
        Ok(Self {
            raw: Striped::from_fn(|_| sensitive_value(b"", secret)),
            bearer: Striped::from_fn(|_| sensitive_value(b"Bearer ", secret)),
        })
    }

    /// The access token alone: the copy of `stripe`.
    #[inline]
    pub(crate) fn raw(&self, stripe: Stripe) -> &HeaderValue {
        self.raw.get(stripe)
    }

    /// `Bearer <access token>`: the copy of `stripe`.
    #[inline]
    pub(crate) fn bearer(&self, stripe: Stripe) -> &HeaderValue {
        self.bearer.get(stripe)
    }

    /// Whether `value` is how this token was stamped, with any scheme or none.
    pub(crate) fn is_stamped_as(&self, value: &HeaderValue) -> bool {
        let raw = self.raw.0[0].as_bytes();
        value.as_bytes() == raw
            || value
                .as_bytes()
                .strip_suffix(raw)
                .is_some_and(|scheme| scheme.ends_with(b" "))
    }
}

/// `prefix` and `secret` as one sensitive header value whose bytes are zeroed when freed.
/// Both parts were checked to be printable ASCII.
fn sensitive_value(prefix: &[u8], secret: &str) -> HeaderValue {
    let mut buf = Vec::with_capacity(prefix.len() + secret.len());
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(secret.as_bytes());
    let mut value = HeaderValue::from_maybe_shared(secret_bytes(buf))
        .expect("printable ASCII is a valid header value");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sensitive_and_carry_the_token() {
        let stamp = Stamp::new("t0k3n").unwrap();
        let stripe = Stripe::next();
        assert_eq!(stamp.bearer(stripe), "Bearer t0k3n");
        assert_eq!(stamp.raw(stripe), "t0k3n");
        assert!(stamp.bearer(stripe).is_sensitive());
        assert!(stamp.raw(stripe).is_sensitive());
    }

    #[test]
    fn each_stripe_has_its_own_copy() {
        let stamp = Stamp::new("t0k3n").unwrap();
        let pointers: std::collections::HashSet<*const u8> = stamp
            .bearer
            .0
            .iter()
            .map(|v| v.as_bytes().as_ptr())
            .collect();
        assert_eq!(pointers.len(), STRIPES);
    }

    #[test]
    fn a_stamped_value_is_recognised_with_any_scheme() {
        let stamp = Stamp::new("t0k3n").unwrap();
        for value in ["Bearer t0k3n", "t0k3n", "DPoP t0k3n"] {
            assert!(
                stamp.is_stamped_as(&HeaderValue::from_static(value)),
                "{value}"
            );
        }
        for value in ["Bearer other", "Bearert0k3n", "t0k3n2"] {
            assert!(
                !stamp.is_stamped_as(&HeaderValue::from_static(value)),
                "{value}"
            );
        }
    }

    #[test]
    fn unprintable_and_oversized_tokens_are_refused() {
        for bad in ["", "a\r\nb", "caf\u{e9}", "a\u{7f}"] {
            assert!(
                matches!(Stamp::new(bad), Err(Unstampable::NotPrintable)),
                "{bad:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(Stamp::new(&huge), Err(Unstampable::TooLarge(_))));
        assert!(Stamp::new(&"a".repeat(MAX_TOKEN_BYTES)).is_ok());
    }
}
