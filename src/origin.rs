//! Origins (RFC 6454): which servers may receive the token.

use std::fmt;
use std::str::FromStr;

use http::uri::{Scheme, Uri};

/// An origin: scheme, host and port (RFC 6454). With
/// [`BearerAuthLayer::only_origins`](crate::BearerAuthLayer::only_origins), only requests to
/// these origins get a token; others pass through untouched, so that a redirect followed to
/// another server, or a URL built from untrusted input, never carries the token there.
///
/// ```
/// use tower_bearer::Origin;
///
/// let api: Origin = "https://api.example.com".parse().unwrap();
/// assert!(api.matches(&"https://API.example.com:443/v1/items?page=2".parse().unwrap()));
/// assert!(!api.matches(&"http://api.example.com/v1/items".parse().unwrap()));
/// assert!(!api.matches(&"https://api.example.com.evil.test/".parse().unwrap()));
/// assert!(!api.matches(&"/relative/path".parse().unwrap()));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    host: Box<str>,
    port: u16,
}

/// The error for an origin that is not an absolute `http` or `https` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOrigin(());

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an origin must be an absolute http or https URL, such as https://api.example.com",
        )
    }
}

impl std::error::Error for InvalidOrigin {}

impl Origin {
    /// The origin of an absolute `http` or `https` URI; `None` for anything else.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let scheme = uri.scheme()?.clone();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase().into_boxed_str();
        let port = uri.port_u16().unwrap_or(default_port);
        Some(Self { scheme, host, port })
    }

    /// Whether `uri` belongs to this origin. Relative URIs never do.
    #[inline]
    pub fn matches(&self, uri: &Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme(), uri.host()) else {
            return false;
        };
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        *scheme == self.scheme
            && host.eq_ignore_ascii_case(&self.host)
            && uri.port_u16().unwrap_or(default_port) == self.port
    }
}

impl FromStr for Origin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, InvalidOrigin> {
        let uri: Uri = s.parse().map_err(|_| InvalidOrigin(()))?;
        Self::from_uri(&uri).ok_or(InvalidOrigin(()))
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({self})")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}
