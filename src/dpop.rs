//! DPoP (RFC 9449): proofs of possession of a key, sent with token requests and with every API
//! request, so that a stolen token is useless without the key.
//!
//! A [`DpopKey`] holds the proof key (a [`SigningKey`]; ES256 by default) and the latest nonce
//! each origin gave (`DPoP-Nonce`). The token endpoint ([`TokenEndpointBuilder::dpop`]) and the
//! layer ([`Placement::dpop`](crate::Placement::dpop)) take clones of the same key: the token is
//! bound to it, and the API requests prove possession of it.
//!
//! Proofs are signed on the request path, with no lock held: the key is shared read-only, the
//! header (with the public JWK) is encoded once, and the nonces are read with one atomic load.
//!
//! [`TokenEndpointBuilder::dpop`]: crate::oauth2::TokenEndpointBuilder::dpop
//!
//! ```
//! use http::Method;
//! use tower_bearer::dpop::DpopKey;
//!
//! let key = DpopKey::generate().unwrap();
//! let proof = key.proof(&Method::GET, "https://api.example.com/v1/items", Some("t0k3n")).unwrap();
//! assert_eq!(proof.split('.').count(), 3);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HOST};
use http::uri::{Authority, Uri};
use http::{Method, Request};
use ring::rand::SecureRandom as _;

use crate::jose::{KeyError, SigningKey};

/// The `DPoP` request header, carrying the proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// The `DPoP-Nonce` response header, carrying the nonce the server wants in the next proof.
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The most origins whose nonce is kept; past it, the map starts over (a client talks to far
/// fewer origins than this, so only a hostile or unusual client ever reaches it).
const MAX_ORIGINS: usize = 1024;

/// The longest nonce kept: longer ones are ignored.
const MAX_NONCE: usize = 512;

/// The latest nonce of one origin.
type NonceSlot = ArcSwap<Arc<str>>;

/// A DPoP proof key and the nonces origins asked for. Cheap to clone; clones share the nonces.
///
/// `Debug` shows the algorithm and the key's thumbprint (`jkt`), never the private key.
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

struct Inner {
    key: SigningKey,
    // `{"typ":"dpop+jwt","alg":…,"jwk":…}`, base64url-encoded once.
    header: String,
    /// A slot per origin: a new nonce of a known origin is one store in its slot; only a new
    /// origin copies the map.
    nonces: ArcSwap<HashMap<Box<str>, Arc<NonceSlot>>>,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.inner.key.alg())
            .field("jkt", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new random ES256 key, for this process only.
    ///
    /// # Errors
    ///
    /// If the system's random generator fails.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self::new(SigningKey::generate_es256()?))
    }

    /// Proves possession of `key` (ES256, EdDSA, RS256 or PS256), loaded or generated. Its `kid`
    /// is not used: a proof carries the public key itself.
    pub fn new(key: SigningKey) -> Self {
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"{}","jwk":{}}}"#,
            key.alg().name(),
            key.canonical_jwk()
        );
        Self {
            inner: Arc::new(Inner {
                header: URL_SAFE_NO_PAD.encode(header),
                key,
                nonces: ArcSwap::from_pointee(HashMap::new()),
            }),
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.inner.key
    }

    /// The key's RFC 7638 thumbprint: the `jkt` a bound token's `cnf` claim carries.
    pub fn thumbprint(&self) -> &str {
        self.inner.key.thumbprint()
    }

    /// A proof for a request with `method` to `htu` (scheme, authority and path: see [`htu`]),
    /// with `ath` when `access_token` is given, and the nonce the origin of `htu` last gave.
    ///
    /// # Errors
    ///
    /// If signing fails (no randomness).
    pub fn proof(
        &self,
        method: &Method,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<String, KeyError> {
        let nonce = self.nonce(origin_of(htu));
        self.sign(method, htu, access_token, nonce.as_deref())
    }

    pub(crate) fn sign(
        &self,
        method: &Method,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, KeyError> {
        let mut jti = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| KeyError::new("no randomness for the jti"))?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = String::with_capacity(160 + htu.len() + nonce.map_or(0, str::len));
        claims.push_str(r#"{"jti":""#);
        URL_SAFE_NO_PAD.encode_string(jti, &mut claims);
        claims.push_str(r#"","htm":"#);
        push_json_string(&mut claims, method.as_str());
        claims.push_str(r#","htu":"#);
        push_json_string(&mut claims, htu);
        claims.push_str(r#","iat":"#);
        claims.push_str(&iat.to_string());
        if let Some(token) = access_token {
            claims.push_str(r#","ath":""#);
            let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            URL_SAFE_NO_PAD.encode_string(digest.as_ref(), &mut claims);
            claims.push('"');
        }
        if let Some(nonce) = nonce {
            claims.push_str(r#","nonce":"#);
            push_json_string(&mut claims, nonce);
        }
        claims.push('}');
        self.inner
            .key
            .sign_encoded(&self.inner.header, claims.as_bytes())
    }

    /// The nonce `origin` (`scheme://authority`) last gave, if any.
    pub fn nonce(&self, origin: &str) -> Option<Arc<str>> {
        let nonces = self.inner.nonces.load();
        let slot = nonces.get(origin)?;
        let nonce = slot.load();
        Some(Arc::clone(&**nonce))
    }

    /// Keeps the `DPoP-Nonce` of a response from `origin`, if it has one. Returns whether it had.
    pub fn observe(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Some(nonce) = headers.get(DPOP_NONCE) else {
            return false;
        };
        // A nonce is a printable ASCII string (RFC 9449 §8.1); anything else is ignored.
        let Ok(nonce) = nonce.to_str() else {
            return false;
        };
        // NQCHAR (RFC 9449 §8.1: `%x21 / %x23-5B / %x5D-7E`) and a bound on its length, so that
        // a server cannot make every later proof carry kilobytes.
        let nqchar = |byte: u8| matches!(byte, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
        if nonce.is_empty() || nonce.len() > MAX_NONCE || !nonce.bytes().all(nqchar) {
            tracing::debug!(
                len = nonce.len(),
                "a DPoP-Nonce that is not a nonce was ignored"
            );
            return false;
        }
        self.store_nonce(origin, nonce);
        true
    }

    /// Sets the nonce `origin` wants in its next proofs.
    pub fn store_nonce(&self, origin: &str, nonce: &str) {
        let nonce: Arc<str> = nonce.into();
        if let Some(slot) = self.inner.nonces.load().get(origin) {
            if **slot.load() != nonce {
                slot.store(Arc::new(nonce));
            }
            return;
        }
        let slot = Arc::new(NonceSlot::from_pointee(nonce));
        self.inner.nonces.rcu(|map| {
            let mut map = HashMap::clone(map);
            if !map.contains_key(origin) && map.len() >= MAX_ORIGINS {
                // Full: one origin (whichever the map yields) forgets its nonce and gets it
                // again with its next `use_dpop_nonce`; the others keep theirs.
                if let Some(evicted) = map.keys().next().cloned() {
                    map.remove(&evicted);
                }
            }
            map.entry(origin.into()).or_insert_with(|| slot.clone());
            map
        });
    }
}

/// The origin part (`scheme://authority`) of an `htu`.
pub(crate) fn origin_of(htu: &str) -> &str {
    let after_scheme = htu.find("://").map_or(0, |at| at + 3);
    match htu[after_scheme..].find('/') {
        Some(at) => &htu[..after_scheme + at],
        None => htu,
    }
}

/// The `htu` of a request (RFC 9449 §4.2): its URI without query and fragment, scheme and host
/// in lower case, the port left out when it is the scheme's default, and `/` for an empty path.
/// A request in origin form (`/path`, as sent on a connection) takes its authority from the
/// `Host` header and the scheme `https`. `None` when there is no authority to take.
pub fn htu<B>(req: &Request<B>) -> Option<String> {
    htu_of(req.uri(), req.headers())
}

pub(crate) fn htu_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let host_header;
    let (scheme, authority) = match uri.authority() {
        Some(authority) => (uri.scheme_str().unwrap_or("https"), authority),
        None => {
            host_header = headers
                .get(HOST)?
                .to_str()
                .ok()?
                .parse::<Authority>()
                .ok()?;
            (uri.scheme_str().unwrap_or("https"), &host_header)
        }
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let default_port = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let path = uri.path();
    let mut htu = String::with_capacity(scheme.len() + 3 + host.len() + 6 + path.len().max(1));
    htu.push_str(&scheme);
    htu.push_str("://");
    htu.push_str(&host.to_ascii_lowercase());
    if let Some(port) = authority
        .port_u16()
        .filter(|port| Some(*port) != default_port)
    {
        htu.push(':');
        htu.push_str(&port.to_string());
    }
    htu.push_str(if path.is_empty() { "/" } else { path });
    Some(htu)
}

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
