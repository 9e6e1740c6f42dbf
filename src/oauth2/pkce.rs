//! PKCE (RFC 7636): the code verifier of an authorization code grant and its S256 challenge,
//! and the randomness behind them and the `state` of an authorization request.
//!
//! The verifier is a secret: it never appears in `Debug` output or in an [`Error`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::error::Error;
use super::redact::REDACTED;

/// RFC 7636 §4.1: a verifier is 43 to 128 characters long.
const VERIFIER_LEN: std::ops::RangeInclusive<usize> = 43..=128;
/// Random bytes in a fresh verifier or `state` (43 characters once encoded).
pub(super) const RANDOM_BYTES: usize = 32;

/// A PKCE code verifier and its S256 challenge (RFC 7636).
///
/// The challenge goes into the authorization request; the verifier, a secret, goes with the
/// authorization code to the token endpoint. `Debug` does not show the verifier.
#[derive(Clone)]
pub struct Pkce {
    verifier: String,
    challenge: String,
}

impl Drop for Pkce {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.verifier);
    }
}

impl Pkce {
    /// A fresh verifier: 32 random bytes from the operating system, as base64url without
    /// padding (43 characters).
    ///
    /// Fails with a [`Config`](super::error::ErrorKind::Config) error if the system has no randomness
    /// to give.
    pub fn new() -> Result<Self, Error> {
        random_string(RANDOM_BYTES).map(Self::from_valid)
    }

    /// A verifier you provide: 43 to 128 characters of `A-Z a-z 0-9 - . _ ~` (RFC 7636 §4.1).
    /// For tests, and for flows that persist the verifier between the request and the redirect.
    ///
    /// Fails with a [`Config`](super::error::ErrorKind::Config) error (which does not contain the
    /// verifier) if it is too short, too long, or has another character.
    pub fn from_verifier(verifier: impl Into<String>) -> Result<Self, Error> {
        let verifier = verifier.into();
        if !verifier.bytes().all(is_unreserved) {
            return Err(Error::config(
                "a PKCE code verifier may only contain A-Z, a-z, 0-9, '-', '.', '_' and '~' \
                 (RFC 7636 §4.1)",
            ));
        }
        let len = verifier.len();
        if !VERIFIER_LEN.contains(&len) {
            return Err(Error::config(format!(
                "a PKCE code verifier must be 43 to 128 characters long, not {len} \
                 (RFC 7636 §4.1)"
            )));
        }
        Ok(Self::from_valid(verifier))
    }

    fn from_valid(verifier: String) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }

    /// The code verifier, sent to the token endpoint with the authorization code. A secret.
    pub fn verifier(&self) -> &str {
        &self.verifier
    }

    /// The code challenge: `BASE64URL(SHA256(verifier))`, sent in the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// The challenge method: always `S256`.
    pub fn method(&self) -> &'static str {
        "S256"
    }
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &REDACTED)
            .field("challenge", &self.challenge)
            .field("method", &self.method())
            .finish()
    }
}

/// A random URL-safe string of `bytes` random bytes (base64url, no padding), used for `state`.
pub(super) fn random_string(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::config(format!("no system randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// RFC 3986 unreserved characters, the alphabet of PKCE verifiers.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth2::ErrorKind;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(
            pkce.verifier(),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        assert_eq!(pkce.method(), "S256");
    }

    #[test]
    fn fresh_verifiers_are_random_and_well_formed() {
        let a = Pkce::new().unwrap();
        let b = Pkce::new().unwrap();
        for pkce in [&a, &b] {
            assert_eq!(pkce.verifier().len(), 43);
            assert!(pkce.verifier().bytes().all(is_unreserved));
            let recomputed = URL_SAFE_NO_PAD.encode(Sha256::digest(pkce.verifier().as_bytes()));
            assert_eq!(pkce.challenge(), recomputed);
            assert!(Pkce::from_verifier(pkce.verifier()).is_ok());
        }
        assert_ne!(a.verifier(), b.verifier());
        assert_ne!(a.challenge(), b.challenge());
        let state = random_string(32).unwrap();
        assert_eq!(state.len(), 43);
        assert_ne!(state, random_string(32).unwrap());
    }

    #[test]
    fn verifier_length_and_alphabet_are_checked() {
        assert!(Pkce::from_verifier("a".repeat(43)).is_ok());
        assert!(Pkce::from_verifier("-._~".repeat(32)).is_ok());
        for bad in [
            "a".repeat(42),
            "a".repeat(129),
            String::new(),
            format!("{} ", "a".repeat(43)),
            format!("{}+", "a".repeat(43)),
            format!("{}/", "a".repeat(43)),
            format!("{}=", "a".repeat(43)),
            format!("{}é", "a".repeat(43)),
        ] {
            let err = Pkce::from_verifier(bad.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
            if !bad.is_empty() {
                assert!(
                    !format!("{err} {err:?}").contains(&bad),
                    "the error shows the verifier"
                );
            }
        }
    }
}
