//! JSON Web Signatures (RFC 7515) made with the crypto the TLS stack already brings (ring): the
//! keys that sign client assertions (RFC 7523) and DPoP proofs (RFC 9449).
//!
//! A [`SigningKey`] is an ES256, EdDSA (Ed25519), RS256 or PS256 private key, loaded from PKCS#8
//! (DER or PEM), a PKCS#1 RSA PEM, or a private JWK, or generated (ES256 and Ed25519 only: ring
//! does not generate RSA keys). It knows its public JWK, its RFC 7638 thumbprint and its `kid`,
//! and signs compact JWS.
//!
//! ```
//! use tower_bearer::jose::{Algorithm, SigningKey};
//!
//! let key = SigningKey::generate_es256().unwrap().with_kid("k1");
//! assert_eq!(key.alg(), Algorithm::Es256);
//! let jws = key.sign_jws(r#""typ":"JWT""#, r#"{"sub":"me"}"#).unwrap();
//! assert_eq!(jws.split('.').count(), 3);
//! ```

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use zeroize::Zeroizing;

/// A JWS signature algorithm (RFC 7518 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256, signatures in the fixed 64-byte form JWS uses.
    Es256,
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
}

impl Algorithm {
    /// The name in a JWS header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
        }
    }

    /// The algorithm a JWS `alg` names, if this crate signs with it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::Es256),
            "EdDSA" | "Ed25519" => Some(Self::EdDsa),
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key could not be loaded or used. It never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    what: String,
}

impl KeyError {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self { what: what.into() }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signing key: {}", self.what)
    }
}

impl std::error::Error for KeyError {}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key that signs JWS: its algorithm, public JWK, thumbprint and `kid`.
///
/// Signing takes `&self` and no lock, so one key (behind an `Arc`) serves any number of tasks
/// at once. `Debug` shows the algorithm and the `kid`, never the key.
pub struct SigningKey {
    pair: Pair,
    alg: Algorithm,
    kid: Option<String>,
    // The RFC 7638 members, in their canonical order: the thumbprint's input and the `jwk` of a
    // DPoP proof.
    canonical_jwk: String,
    thumbprint: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rejected(e: ring::error::KeyRejected) -> KeyError {
    KeyError::new(format!("rejected by ring: {e}"))
}

impl SigningKey {
    fn from_pair(pair: Pair, alg: Algorithm) -> Self {
        let canonical_jwk = match &pair {
            Pair::Ec(pair) => {
                // An uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = pair.public_key().as_ref();
                format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    b64(&point[1..33]),
                    b64(&point[33..65])
                )
            }
            Pair::Ed(pair) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64(pair.public_key().as_ref())
            ),
            Pair::Rsa(pair) => {
                let public: PublicKeyComponents<Vec<u8>> = pair.public().into();
                format!(
                    r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                    b64(&public.e),
                    b64(&public.n)
                )
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical_jwk.as_bytes());
        Self {
            pair,
            alg,
            kid: None,
            thumbprint: b64(digest.as_ref()),
            canonical_jwk,
        }
    }

    /// A new random ES256 (P-256) key.
    ///
    /// # Errors
    ///
    /// If the system's random generator fails.
    pub fn generate_es256() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::new("no randomness"))?;
        Self::from_pkcs8_der(Algorithm::Es256, pkcs8.as_ref())
    }

    /// A new random Ed25519 key (`alg` EdDSA).
    ///
    /// # Errors
    ///
    /// If the system's random generator fails.
    pub fn generate_ed25519() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::new("no randomness"))?;
        Self::from_pkcs8_der(Algorithm::EdDsa, pkcs8.as_ref())
    }

    /// A key from its PKCS#8 DER encoding, for the algorithm given (RSA keys serve RS256 and
    /// PS256 alike).
    ///
    /// # Errors
    ///
    /// If the DER is not a PKCS#8 key of the algorithm's type, or ring rejects it (RSA keys
    /// shorter than 2048 bits, for instance).
    pub fn from_pkcs8_der(alg: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let pair = match alg {
            Algorithm::Es256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(rejected)?,
            ),
            Algorithm::EdDsa => {
                Pair::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?)
            }
            Algorithm::Rs256 | Algorithm::Ps256 => {
                Pair::Rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?)
            }
        };
        Ok(Self::from_pair(pair, alg))
    }

    /// A key from PEM text: a `PRIVATE KEY` block (PKCS#8) of the algorithm's type, or for RS256
    /// and PS256 an `RSA PRIVATE KEY` block (PKCS#1). SEC1 `EC PRIVATE KEY` blocks are not read:
    /// convert them with `openssl pkcs8 -topk8 -nocrypt`.
    ///
    /// # Errors
    ///
    /// If no such block is found, its base64 is broken, or the key is rejected.
    pub fn from_pem(alg: Algorithm, pem: &str) -> Result<Self, KeyError> {
        if let Some(der) = pem_block(pem, "PRIVATE KEY")? {
            return Self::from_pkcs8_der(alg, &der);
        }
        if matches!(alg, Algorithm::Rs256 | Algorithm::Ps256) {
            if let Some(der) = pem_block(pem, "RSA PRIVATE KEY")? {
                let pair = RsaKeyPair::from_der(&der).map_err(rejected)?;
                return Ok(Self::from_pair(Pair::Rsa(pair), alg));
            }
        }
        Err(KeyError::new(
            "no PEM block `PRIVATE KEY` (PKCS#8) or, for RSA, `RSA PRIVATE KEY`",
        ))
    }

    /// A key from a private JWK (RFC 7517): `EC` on P-256 (`d`, `x`, `y`), `OKP` Ed25519 (`d`,
    /// `x`) or `RSA` (`n`, `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`). The algorithm is the JWK's `alg`
    /// when present, else ES256, EdDSA or RS256 by key type; its `kid`, when present, is kept.
    ///
    /// # Errors
    ///
    /// If the text is not a JSON object, a member is missing or not base64url, the key type or
    /// curve is not one of the above, `alg` does not fit the key, or ring rejects the key.
    pub fn from_jwk(jwk: &str) -> Result<Self, KeyError> {
        let value: serde_json::Value =
            serde_json::from_str(jwk).map_err(|_| KeyError::new("the JWK is not JSON"))?;
        // Private key material: zeroed when dropped, like the crate's client secrets.
        let member = |name: &str| -> Result<Zeroizing<Vec<u8>>, KeyError> {
            let text = value
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| KeyError::new(format!("the JWK has no `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map(Zeroizing::new)
                .map_err(|_| KeyError::new(format!("the JWK's `{name}` is not base64url")))
        };
        let text = |name: &str| value.get(name).and_then(|v| v.as_str());
        let named = match text("alg") {
            Some(name) => Some(
                Algorithm::from_name(name)
                    .ok_or_else(|| KeyError::new(format!("unsupported alg {name:?}")))?,
            ),
            None => None,
        };
        let (pair, alg) = match (text("kty"), text("crv")) {
            (Some("EC"), Some("P-256")) => {
                let mut public = vec![4u8];
                public.extend_from_slice(&member("x")?);
                public.extend_from_slice(&member("y")?);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &member("d")?,
                    &public,
                    &SystemRandom::new(),
                )
                .map_err(rejected)?;
                (Pair::Ec(pair), Algorithm::Es256)
            }
            (Some("OKP"), Some("Ed25519")) => {
                let pair = Ed25519KeyPair::from_seed_and_public_key(&member("d")?, &member("x")?)
                    .map_err(rejected)?;
                (Pair::Ed(pair), Algorithm::EdDsa)
            }
            (Some("RSA"), _) => {
                let components = KeyPairComponents {
                    public_key: PublicKeyComponents {
                        n: member("n")?,
                        e: member("e")?,
                    },
                    d: member("d")?,
                    p: member("p")?,
                    q: member("q")?,
                    dP: member("dp")?,
                    dQ: member("dq")?,
                    qInv: member("qi")?,
                };
                let pair = RsaKeyPair::from_components(&components).map_err(rejected)?;
                let alg = match named {
                    Some(Algorithm::Ps256) => Algorithm::Ps256,
                    _ => Algorithm::Rs256,
                };
                (Pair::Rsa(pair), alg)
            }
            _ => return Err(KeyError::new("the JWK is not EC P-256, OKP Ed25519 or RSA")),
        };
        if named.is_some_and(|named| named != alg) {
            return Err(KeyError::new("the JWK's alg does not fit its key type"));
        }
        let key = Self::from_pair(pair, alg);
        Ok(match text("kid") {
            Some(kid) => key.with_kid(kid),
            None => key,
        })
    }

    /// Sets the `kid` put in JWS headers and in [`public_jwk`](Self::public_jwk).
    ///
    /// Default: none; headers carry no `kid`, and [`kid`](Self::kid) answers the thumbprint.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Uses the key's RFC 7638 thumbprint as its `kid`, in headers too.
    pub fn with_thumbprint_kid(self) -> Self {
        let kid = self.thumbprint.clone();
        self.with_kid(kid)
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The `kid` set with [`with_kid`](Self::with_kid), else the key's thumbprint.
    pub fn kid(&self) -> &str {
        self.kid.as_deref().unwrap_or(&self.thumbprint)
    }

    /// The `kid` set with [`with_kid`](Self::with_kid), if any: the one JWS headers carry.
    pub fn explicit_kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): DPoP's `jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK (JSON text) with `kty`, its key members, `alg`, `use` `sig` and
    /// the `kid` when set: what a client registers in its `jwks`.
    pub fn public_jwk(&self) -> String {
        let mut jwk = self.canonical_jwk.clone();
        jwk.pop();
        jwk.push_str(&format!(r#","alg":"{}","use":"sig""#, self.alg.name()));
        if let Some(kid) = &self.kid {
            jwk.push_str(&format!(r#","kid":{}"#, json_string(kid)));
        }
        jwk.push('}');
        jwk
    }

    /// The public key as the minimal JWK of RFC 7638 (the members the thumbprint hashes), as a
    /// DPoP proof's `jwk` header carries it.
    pub fn canonical_jwk(&self) -> &str {
        &self.canonical_jwk
    }

    /// A compact JWS over `claims_json` (a JSON object's text, used as it is). The header is
    /// `{"alg":…` then `header_extra_json` (object members without braces, such as
    /// `"typ":"JWT"`, or empty), then `"kid"` when one was set.
    ///
    /// # Errors
    ///
    /// If ring fails to sign (no randomness for ECDSA or PSS).
    pub fn sign_jws(&self, header_extra_json: &str, claims_json: &str) -> Result<String, KeyError> {
        let mut header = format!(r#"{{"alg":"{}""#, self.alg.name());
        if !header_extra_json.is_empty() {
            header.push(',');
            header.push_str(header_extra_json);
        }
        if let Some(kid) = &self.kid {
            header.push_str(&format!(r#","kid":{}"#, json_string(kid)));
        }
        header.push('}');
        self.sign_encoded(&b64(header.as_bytes()), claims_json.as_bytes())
    }

    /// A compact JWS from a header already base64url-encoded (computed once per key on hot
    /// paths) and the claims' JSON bytes.
    pub(crate) fn sign_encoded(
        &self,
        encoded_header: &str,
        claims: &[u8],
    ) -> Result<String, KeyError> {
        let claims_len = claims.len().div_ceil(3) * 4;
        let mut out = String::with_capacity(encoded_header.len() + claims_len + 2 + 512 * 4 / 3);
        out.push_str(encoded_header);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = self.sign_bytes(out.as_bytes())?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut out);
        Ok(out)
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::new("signing failed");
        match &self.pair {
            Pair::Ec(pair) => Ok(pair
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Pair::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rsa(pair) => {
                let padding: &'static dyn ring::signature::RsaEncoding = match self.alg {
                    Algorithm::Ps256 => &RSA_PSS_SHA256,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &SystemRandom::new(), message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
        }
    }
}

/// A JSON string literal for `text`, quotes and escapes included.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// The DER inside the first PEM block labelled `label`, if there is one.
/// The DER of a PEM block, zeroed when dropped (it holds a private key), as is the base64 text
/// it is decoded from.
fn pem_block(pem: &str, label: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = pem.find(&begin) else {
        return Ok(None);
    };
    let body = &pem[start + begin.len()..];
    let stop = body
        .find(&end)
        .ok_or_else(|| KeyError::new(format!("PEM block `{label}` has no end")))?;
    let text: Zeroizing<String> = Zeroizing::new(body[..stop].split_whitespace().collect());
    STANDARD
        .decode(text.as_bytes())
        .map(|der| Some(Zeroizing::new(der)))
        .map_err(|_| KeyError::new(format!("PEM block `{label}` is not base64")))
}

#[cfg(test)]
mod tests;
