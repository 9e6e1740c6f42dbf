//! Client assertions (RFC 7523 §2.2, OpenID Connect Core §9): a JWT that authenticates the
//! client at the token endpoint, signed with the client's private key (`private_key_jwt`), with
//! its secret (`client_secret_jwt`), or obtained from elsewhere (a workload identity's token).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::error::Error;
use crate::jose::SigningKey;
use crate::BoxError;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest assertion an [`AssertionSource`] may return.
const MAX_ASSERTION: usize = 16 * 1024;

/// The `aud` of the client assertions this crate signs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AssertionAudience {
    /// The authorization server's issuer identifier, as the current revision of RFC 7523
    /// (draft-ietf-oauth-rfc7523bis) requires, and FAPI 2.0 servers insist on; when no issuer
    /// is known (neither [`TokenEndpoint::from_metadata`](super::TokenEndpoint::from_metadata)
    /// nor [`TokenEndpointBuilder::issuer`](super::TokenEndpointBuilder::issuer)), the token
    /// endpoint's URL. The default.
    #[default]
    Issuer,
    /// The token endpoint's URL, as RFC 7523 §3 and OpenID Connect Core §9 allow, for servers
    /// that take nothing else.
    TokenEndpoint,
    /// This value, as it is.
    Custom(String),
}

/// What an [`AssertionSource`] is asked for: an assertion for this client, at this audience.
#[derive(Clone, Debug)]
pub struct AssertionRequest {
    client_id: Arc<str>,
    audience: Arc<str>,
}

impl AssertionRequest {
    /// A request for an assertion naming `client_id`, for `audience`: what the token endpoint
    /// asks its [`AssertionSource`] for; made by hand to test a source.
    pub fn new(client_id: impl Into<Arc<str>>, audience: impl Into<Arc<str>>) -> Self {
        Self {
            client_id: client_id.into(),
            audience: audience.into(),
        }
    }

    /// The client id the assertion must name (`iss` and `sub` when this crate signs).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The audience configured for assertions ([`AssertionAudience`]).
    pub fn audience(&self) -> &str {
        &self.audience
    }
}

/// The future of an [`AssertionSource`].
pub type AssertionFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// A `client_assertion` made elsewhere (RFC 7523 §2.2): a federated workload identity's token
/// (a Kubernetes service-account token, a cloud's identity token, a SPIFFE JWT-SVID), or a JWT
/// signed by a key kept in a KMS or HSM. Asked for one assertion per token request, retries
/// included: the source decides whether to reuse one (such a token is usually valid for
/// minutes and read from a file the platform rotates).
///
/// Any `Fn(AssertionRequest) -> impl Future<Output = Result<String, BoxError>>` closure is one:
///
/// ```
/// use tower_bearer::oauth2::{AssertionRequest, TokenEndpoint};
///
/// # fn main() -> Result<(), tower_bearer::oauth2::Error> {
/// let endpoint = TokenEndpoint::builder("https://login.example.com/token", "my-workload")
///     .client_assertion(|_: AssertionRequest| async {
///         Ok(tokio::fs::read_to_string("/var/run/secrets/tokens/oauth").await?.trim().to_owned())
///     })
///     .build()?;
/// # drop(endpoint);
/// # Ok(())
/// # }
/// ```
pub trait AssertionSource: Send + Sync + 'static {
    /// One assertion, a compact JWT (or JWE).
    fn assertion(&self, request: AssertionRequest) -> AssertionFuture;
}

impl<F, Fut> AssertionSource for F
where
    F: Fn(AssertionRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
{
    fn assertion(&self, request: AssertionRequest) -> AssertionFuture {
        Box::pin(self(request))
    }
}

/// How a client's assertions are made.
#[derive(Clone)]
pub(crate) enum Assertions {
    /// `private_key_jwt`.
    Key(Arc<SigningKey>),
    /// `client_secret_jwt`: HS256 with the client secret.
    Secret,
    /// Made elsewhere.
    External(Arc<dyn AssertionSource>),
}

impl fmt::Debug for Assertions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(key) => f.debug_tuple("Key").field(key).finish(),
            Self::Secret => f.write_str("Secret"),
            Self::External(_) => f.write_str("External"),
        }
    }
}

/// The claims of an assertion this crate signs, fresh each time: `iss` = `sub` = the client id,
/// `aud`, a random `jti`, `iat` now and `exp` after `lifetime`.
pub(crate) fn claims(client_id: &str, audience: &str, lifetime: Duration) -> Result<String, Error> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti)
        .map_err(|e| Error::client_assertion(format!("no system randomness: {e}"), None))?;
    // JWT times are wall-clock time: the server compares them with its own clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": now,
        "exp": now.saturating_add(lifetime.as_secs().max(1)),
    });
    Ok(claims.to_string())
}

/// A compact JWS with HS256 (RFC 7518 §3.2) over `claims`, keyed by the client secret.
pub(crate) fn sign_hs256(secret: &str, claims: &str) -> Zeroizing<String> {
    const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    let mut jws = Zeroizing::new(String::with_capacity(
        (HEADER.len() + claims.len() + 32) * 4 / 3 + 8,
    ));
    URL_SAFE_NO_PAD.encode_string(HEADER, &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut jws);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, jws.as_bytes());
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut jws);
    jws
}

/// Makes one assertion.
pub(crate) async fn make(
    assertions: &Assertions,
    secret: Option<&str>,
    client_id: &Arc<str>,
    audience: &Arc<str>,
    lifetime: Duration,
) -> Result<Zeroizing<String>, Error> {
    match assertions {
        Assertions::Key(key) => {
            let claims = claims(client_id, audience, lifetime)?;
            key.sign_jws(r#""typ":"JWT""#, &claims)
                .map(Zeroizing::new)
                .map_err(|e| Error::client_assertion("the key failed to sign", Some(e.into())))
        }
        Assertions::Secret => {
            let secret = secret.ok_or_else(|| {
                Error::client_assertion("client_secret_jwt needs a client secret", None)
            })?;
            Ok(sign_hs256(secret, &claims(client_id, audience, lifetime)?))
        }
        Assertions::External(source) => {
            let request = AssertionRequest::new(client_id.clone(), audience.clone());
            let assertion = source
                .assertion(request)
                .await
                .map_err(|e| Error::client_assertion("the assertion source failed", Some(e)))?;
            let assertion = Zeroizing::new(assertion);
            let plausible = !assertion.is_empty()
                && assertion.len() <= MAX_ASSERTION
                && assertion
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !plausible {
                return Err(Error::client_assertion(
                    format!(
                        "the assertion source returned {} bytes that are not a compact JWT",
                        assertion.len()
                    ),
                    None,
                ));
            }
            Ok(assertion)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn claims_name_the_client_and_are_fresh() {
        let a: serde_json::Value =
            serde_json::from_str(&claims("c1", "https://as", Duration::from_secs(60)).unwrap())
                .unwrap();
        let b: serde_json::Value =
            serde_json::from_str(&claims("c1", "https://as", Duration::from_secs(60)).unwrap())
                .unwrap();
        assert_eq!(a["iss"], "c1");
        assert_eq!(a["sub"], "c1");
        assert_eq!(a["aud"], "https://as");
        assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 60);
        assert_ne!(a["jti"], b["jti"]);
    }

    #[test]
    fn hs256_matches_a_known_signature() {
        let jws = sign_hs256("secret", r#"{"sub":"x"}"#);
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(decode(parts[0])["alg"], "HS256");
        assert_eq!(decode(parts[1])["sub"], "x");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let tag = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        ring::hmac::verify(&key, signed.as_bytes(), &tag).unwrap();
        assert!(ring::hmac::verify(&key, b"other", &tag).is_err());
    }
}
