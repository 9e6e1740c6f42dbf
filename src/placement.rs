//! Where a token goes on a request.

use std::fmt;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::Request;

use crate::stamp::{Stamp, Stripe};
use crate::token::secret_bytes;

/// Where the layer puts the token on each request.
///
/// The default is `Authorization: Bearer <token>` (RFC 6750 §2.1), with the scheme always
/// written `Bearer` whatever case the token endpoint used for its `token_type`. Header values
/// carrying a token are marked [sensitive](HeaderValue::set_sensitive), so HTTP/2 never adds
/// them to its header compression table; an existing header of the same name is replaced.
///
/// ```
/// use http::header::HeaderName;
/// use tower_bearer::Placement;
///
/// let default = Placement::default();
/// let raw = Placement::authorization_raw();
/// let custom = Placement::header(HeaderName::from_static("x-api-token"));
/// let scheme = Placement::authorization_scheme("Token").unwrap();
/// let query = Placement::query();
/// # drop((default, raw, custom, scheme, query));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Placement {
    kind: Kind,
}

#[derive(Clone, Debug, Default)]
enum Kind {
    #[default]
    Bearer,
    Header {
        name: HeaderName,
        scheme: Option<Box<str>>,
    },
    Query,
    #[cfg(feature = "jose")]
    Dpop(crate::dpop::DpopKey),
}

/// The error for a scheme that is not an HTTP token (RFC 9110 §5.6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidScheme(());

impl fmt::Display for InvalidScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an authentication scheme must be a non-empty HTTP token")
    }
}

impl std::error::Error for InvalidScheme {}

impl Placement {
    /// `Authorization: Bearer <token>`. The default.
    pub fn bearer() -> Self {
        Self::default()
    }

    /// `Authorization: <token>`, with no scheme, for APIs that want the raw token.
    pub fn authorization_raw() -> Self {
        Self::header(header::AUTHORIZATION)
    }

    /// `Authorization: <scheme> <token>` with another scheme, such as `Token` or `DPoP`.
    ///
    /// # Errors
    ///
    /// If `scheme` is empty or not an HTTP token.
    pub fn authorization_scheme(scheme: &str) -> Result<Self, InvalidScheme> {
        Self::header_with_scheme(header::AUTHORIZATION, scheme)
    }

    /// The raw token in the header `name`.
    pub fn header(name: HeaderName) -> Self {
        Self {
            kind: Kind::Header { name, scheme: None },
        }
    }

    /// `<scheme> <token>` in the header `name`.
    ///
    /// # Errors
    ///
    /// If `scheme` is empty or not an HTTP token.
    pub fn header_with_scheme(name: HeaderName, scheme: &str) -> Result<Self, InvalidScheme> {
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if scheme.is_empty() || !scheme.bytes().all(is_tchar) {
            return Err(InvalidScheme(()));
        }
        if scheme == "Bearer" && name == header::AUTHORIZATION {
            return Ok(Self::bearer());
        }
        Ok(Self {
            kind: Kind::Header {
                name,
                scheme: Some(scheme.into()),
            },
        })
    }

    /// The `access_token` query parameter (RFC 6750 §2.3), replacing any already there, plus
    /// `Cache-Control: no-store` as the RFC asks. Tokens in URLs end up in server logs: use this
    /// only for servers that accept nothing else.
    pub fn query() -> Self {
        Self { kind: Kind::Query }
    }

    /// `Authorization: DPoP <token>` and a fresh `DPoP` proof of possession of `key` (RFC 9449)
    /// on every request: `htm`, `htu` (see [`htu`](crate::dpop::htu)), `iat`, a random `jti`,
    /// `ath`, and the nonce the request's origin last gave. Nonces are taken from every
    /// response's `DPoP-Nonce`; a 401 whose challenge is `DPoP error="use_dpop_nonce"` is
    /// replayed once with a new proof and the same token, which is not dropped. Give the token
    /// endpoint the same key (`TokenEndpointBuilder::dpop`) so that tokens are bound to it.
    #[cfg(feature = "jose")]
    pub fn dpop(key: crate::dpop::DpopKey) -> Self {
        Self {
            kind: Kind::Dpop(key),
        }
    }

    /// The DPoP key, if requests get proofs.
    #[cfg(feature = "jose")]
    pub(crate) fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        match &self.kind {
            Kind::Dpop(key) => Some(key),
            _ => None,
        }
    }

    /// The origin whose nonces a request's responses carry, when requests get DPoP proofs.
    #[inline]
    #[cfg_attr(not(feature = "jose"), allow(unused_variables))]
    pub(crate) fn nonce_origin<B>(&self, req: &Request<B>) -> Option<Box<str>> {
        match &self.kind {
            #[cfg(feature = "jose")]
            Kind::Dpop(_) => {
                let htu = crate::dpop::htu(req)?;
                Some(crate::dpop::origin_of(&htu).into())
            }
            _ => None,
        }
    }

    /// Puts the token whose header values are `stamp` on `req`, using the copies of `stripe`.
    /// Returns `false`, leaving `req` without a token, in the unlikely case that the token
    /// cannot be placed.
    #[inline]
    pub(crate) fn stamp<B>(&self, req: &mut Request<B>, stamp: &Stamp, stripe: Stripe) -> bool {
        match &self.kind {
            Kind::Bearer => {
                req.headers_mut()
                    .insert(header::AUTHORIZATION, stamp.bearer(stripe).clone());
                true
            }
            Kind::Header { name, scheme: None } => {
                req.headers_mut()
                    .insert(name.clone(), stamp.raw(stripe).clone());
                true
            }
            Kind::Header {
                name,
                scheme: Some(scheme),
            } => {
                let mut value = Vec::with_capacity(scheme.len() + 1 + stamp.raw(stripe).len());
                value.extend_from_slice(scheme.as_bytes());
                value.push(b' ');
                value.extend_from_slice(stamp.raw(stripe).as_bytes());
                // Both parts were checked (an HTTP token, and a valid header value).
                let Ok(mut value) = HeaderValue::from_maybe_shared(secret_bytes(value)) else {
                    return false;
                };
                value.set_sensitive(true);
                req.headers_mut().insert(name.clone(), value);
                true
            }
            Kind::Query => match std::str::from_utf8(stamp.raw(stripe).as_bytes()) {
                Ok(token) => stamp_query(req, token),
                Err(_) => false,
            },
            #[cfg(feature = "jose")]
            Kind::Dpop(key) => stamp_dpop(req, stamp.raw(stripe), key),
        }
    }
}

/// `Authorization: DPoP <token>` and a new proof. Signs with no lock held: the key is shared
/// read-only and the nonce is one atomic load.
#[cfg(feature = "jose")]
fn stamp_dpop<B>(req: &mut Request<B>, raw: &HeaderValue, key: &crate::dpop::DpopKey) -> bool {
    let Ok(token) = std::str::from_utf8(raw.as_bytes()) else {
        return false;
    };
    let Some(htu) = crate::dpop::htu(req) else {
        return false;
    };
    let nonce = key.nonce(crate::dpop::origin_of(&htu));
    let Ok(proof) = key.sign(req.method(), &htu, Some(token), nonce.as_deref()) else {
        return false;
    };
    let Ok(mut proof) = HeaderValue::try_from(proof) else {
        return false;
    };
    // A proof is bound to its token (`ath`): kept out of HPACK tables and header logs alike.
    proof.set_sensitive(true);
    let mut value = Vec::with_capacity(5 + raw.len());
    value.extend_from_slice(b"DPoP ");
    value.extend_from_slice(raw.as_bytes());
    let Ok(mut value) = HeaderValue::from_maybe_shared(secret_bytes(value)) else {
        return false;
    };
    value.set_sensitive(true);
    req.headers_mut().insert(header::AUTHORIZATION, value);
    req.headers_mut().insert(crate::dpop::DPOP, proof);
    true
}

impl Placement {
    /// The header value a stamped request carries, if the token went in a header.
    pub(crate) fn stamped_value<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let name = match &self.kind {
            Kind::Bearer => &header::AUTHORIZATION,
            Kind::Header { name, .. } => name,
            Kind::Query => return None,
            #[cfg(feature = "jose")]
            Kind::Dpop(_) => &header::AUTHORIZATION,
        };
        req.headers().get(name).cloned()
    }
}

fn stamp_query<B>(req: &mut Request<B>, token: &str) -> bool {
    let uri = req.uri();
    // Sized up front, so that the buffer holding the token never moves (leaving a copy behind):
    // the path, `?`, the other parameters and `&`, then the token form-urlencoded (at most
    // three bytes per byte).
    const NAME: &str = "access_token=";
    let capacity = uri.path().len()
        + 1
        + uri.query().map_or(0, |query| query.len() + 1)
        + NAME.len()
        + 3 * token.len();
    let mut path_and_query = String::with_capacity(capacity);
    path_and_query.push_str(uri.path());
    path_and_query.push('?');
    // Other parameters are kept byte for byte: decoding and re-encoding them could change what
    // the server sees (`%20` versus `+`).
    for pair in uri.query().unwrap_or("").split('&') {
        // Compared decoded: `access%5Ftoken` is the same parameter to the server.
        let is_token = form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == "access_token");
        if !pair.is_empty() && !is_token {
            path_and_query.push_str(pair);
            path_and_query.push('&');
        }
    }
    path_and_query.push_str(NAME);
    path_and_query.extend(form_urlencoded::byte_serialize(token.as_bytes()));
    debug_assert_eq!(
        path_and_query.capacity(),
        capacity,
        "the query outgrew its buffer"
    );
    // The URI carries the token: its bytes are zeroed when the last copy is dropped.
    let Ok(path_and_query) =
        PathAndQuery::from_maybe_shared(secret_bytes(path_and_query.into_bytes()))
    else {
        return false;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    let Ok(uri) = Uri::from_parts(parts) else {
        return false;
    };
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    true
}
