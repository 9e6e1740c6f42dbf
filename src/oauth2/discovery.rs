//! Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0): an issuer URL is
//! enough to find the token endpoint, the client authentication methods the server takes, its
//! DPoP algorithms and its mutual-TLS endpoint aliases.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use serde_json::{Map, Value};
use tower::ServiceExt;
use tower_service::Service;

use super::endpoint::check_url;
use super::error::Error;
use super::transport::{default_transport, erase, Transport};
use crate::shown::{shown, MAX_SHOWN};
use crate::BoxError;

/// The longest URL this crate takes from a metadata document; longer ones are ignored (an
/// optional endpoint) or refused (the token endpoint).
const MAX_URL: usize = 2048;

/// Where the metadata document of an issuer is looked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WellKnown {
    /// OpenID Connect's location first (`{issuer}/.well-known/openid-configuration`), then, if
    /// the server answers a client error such as 404 there, RFC 8414's
    /// (`https://{host}/.well-known/oauth-authorization-server{path}`). The default: OpenID
    /// Providers serve the first, plain OAuth 2.0 servers the second, and both locations agree
    /// for an issuer without a path.
    #[default]
    Auto,
    /// Only `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4).
    OpenIdConfiguration,
    /// Only RFC 8414 §3's location, where the well-known segment goes between the host and the
    /// issuer's path.
    OAuthAuthorizationServer,
}

/// Fetches an authorization server's metadata (RFC 8414, OpenID Connect Discovery 1.0) from its
/// issuer URL, and checks that the document is the issuer's own.
///
/// The `issuer` in the document must equal the one asked for, byte for byte (RFC 8414 §3.3,
/// OpenID Connect Discovery §4.3): otherwise the fetch fails with
/// [`ErrorKind::IssuerMismatch`](super::ErrorKind::IssuerMismatch), since endpoints taken from
/// another issuer's document would send credentials where they do not belong. Redirects are
/// not followed; bodies are read up to 1 MiB.
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientCredentials, Discovery, TokenEndpoint};
///
/// # async fn run() -> Result<(), tower_bearer::oauth2::Error> {
/// let metadata = Discovery::new("https://auth.example.com").fetch().await?;
/// let endpoint = TokenEndpoint::from_metadata(&metadata, "my-service")
///     .client_secret("s3cr3t")
///     .build()?;
/// let source = ClientCredentials::new(endpoint);
/// # drop(source);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Discovery {
    issuer: String,
    metadata_url: Option<String>,
    well_known: WellKnown,
    timeout: Duration,
    allow_insecure_http: bool,
    transport: Option<Transport>,
}

impl Discovery {
    /// Discovery of the server whose issuer identifier is `issuer` (an `https` URL without query
    /// or fragment; `http` is accepted for loopback hosts).
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            metadata_url: None,
            well_known: WellKnown::Auto,
            timeout: Duration::from_secs(20),
            allow_insecure_http: false,
            transport: None,
        }
    }

    /// Fetches the metadata from this URL instead of the well-known locations, for servers that
    /// publish it elsewhere. The issuer in it is still checked against the one asked for.
    ///
    /// Default: none; the well-known locations given by [`well_known`](Self::well_known).
    pub fn metadata_url(mut self, url: impl Into<String>) -> Self {
        self.metadata_url = Some(url.into());
        self
    }

    /// Which well-known locations are tried.
    ///
    /// Default: [`WellKnown::Auto`].
    pub fn well_known(mut self, well_known: WellKnown) -> Self {
        self.well_known = well_known;
        self
    }

    /// How long each fetch of a metadata document may take.
    ///
    /// Default: 20 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Allows plain `http` for an issuer and endpoints that are not loopback: only for test
    /// environments.
    ///
    /// Default: refused; `https` is required except for `127.0.0.0/8`, `::1` and `localhost`.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// The HTTP client used to fetch the metadata: any tower service taking
    /// `http::Request<Full<Bytes>>`, as for
    /// [`TokenEndpointBuilder::transport`](super::TokenEndpointBuilder::transport).
    ///
    /// Default: hyper-util's client with rustls (the `default-client` feature).
    pub fn transport<S, B>(mut self, transport: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.transport = Some(erase(transport));
        self
    }

    /// The URLs the metadata is looked for at, in order.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](super::ErrorKind::Config) if the issuer is not an `https` URL (or
    /// `http` to loopback), or has a query or fragment.
    pub fn locations(&self) -> Result<Vec<String>, Error> {
        let insecure = self.allow_insecure_http;
        // Checked with a metadata URL too: the issuer becomes the `aud` of client assertions,
        // and the document must name it exactly.
        let issuer = check_url("issuer", &self.issuer, insecure)?;
        if let Some(url) = &self.metadata_url {
            check_url("metadata URL", url, insecure)?;
            return Ok(vec![url.clone()]);
        }
        if self.issuer.contains(['?', '#']) {
            return Err(Error::config(format!(
                "issuer {:?} must have no query or fragment (RFC 8414 §2)",
                self.issuer
            )));
        }
        let appended = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        // RFC 8414 §3: the well-known segment goes between the host and the path, and a
        // terminating `/` after the host is removed.
        let authority = issuer.authority().map_or("", |a| a.as_str());
        let path = issuer.path().trim_end_matches('/');
        let scheme = issuer.scheme_str().unwrap_or("https");
        let inserted =
            format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
        Ok(match self.well_known {
            WellKnown::Auto => vec![appended, inserted],
            WellKnown::OpenIdConfiguration => vec![appended],
            WellKnown::OAuthAuthorizationServer => vec![inserted],
        })
    }

    /// Fetches the metadata and checks it.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::Config`](super::ErrorKind::Config): an issuer or metadata URL that is not
    ///   `https` (or `http` to loopback), or no transport without the `default-client` feature;
    /// - [`ErrorKind::Transport`](super::ErrorKind::Transport),
    ///   [`Timeout`](super::ErrorKind::Timeout), [`Redirect`](super::ErrorKind::Redirect),
    ///   [`BodyTooLarge`](super::ErrorKind::BodyTooLarge): the fetch failed;
    /// - [`ErrorKind::Metadata`](super::ErrorKind::Metadata): no document at any location (its
    ///   [`status`](Error::status) is the last one answered), or one that is not a JSON object,
    ///   lacks `issuer` or `token_endpoint`, or names an endpoint that is not an `https` URL;
    /// - [`ErrorKind::IssuerMismatch`](super::ErrorKind::IssuerMismatch): the document belongs
    ///   to another issuer.
    pub async fn fetch(&self) -> Result<ServerMetadata, Error> {
        let locations = self.locations()?;
        let transport = match &self.transport {
            Some(transport) => transport.clone(),
            #[cfg(feature = "default-client")]
            None => default_transport(None)?,
            #[cfg(not(feature = "default-client"))]
            None => default_transport()?,
        };
        let last = locations.len() - 1;
        for (i, url) in locations.iter().enumerate() {
            let uri: Uri = url
                .parse()
                .map_err(|e| Error::config(format!("metadata URL {url:?} is not valid: {e}")))?;
            let mut request = Request::new(Full::default());
            *request.method_mut() = Method::GET;
            *request.uri_mut() = uri;
            request
                .headers_mut()
                .insert(ACCEPT, HeaderValue::from_static("application/json"));
            let send = transport.clone().oneshot(request);
            let answer = match tokio::time::timeout(self.timeout, send).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => return Err(Error::transport(error).at_metadata()),
                Err(_) => return Err(Error::timeout(self.timeout).at_metadata()),
            };
            let status = answer.status;
            if status.is_redirection() {
                return Err(Error::redirect(status).at_metadata());
            }
            let body = answer.body.map_err(Error::at_metadata)?;
            if status == StatusCode::OK {
                return parse(&body, &self.issuer, self.allow_insecure_http);
            }
            let next = status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS;
            if !(next && i < last) {
                return Err(Error::metadata(
                    Some(status),
                    format!("no metadata at {}", locations[..=i].join(" nor ")),
                ));
            }
        }
        unreachable!("the last location returns")
    }
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("issuer", &self.issuer)
            .field("metadata_url", &self.metadata_url)
            .field("well_known", &self.well_known)
            .field("timeout", &self.timeout)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

/// An authorization server's metadata, as fetched by [`Discovery`] and checked: its issuer is
/// the one asked for and its token endpoint an `https` URL (or `http` to loopback). Optional
/// fields that are missing, or not of the type RFC 8414 gives them, read as absent.
///
/// `Debug` shows what this crate reads from the document, and only how many fields the
/// document has: it comes from a server, and may be as large as 1 MiB.
#[derive(Clone)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    endpoints: BTreeMap<&'static str, String>,
    lists: BTreeMap<&'static str, Vec<String>>,
    mtls_endpoint_aliases: BTreeMap<String, String>,
    certificate_bound_tokens: bool,
    fields: Map<String, Value>,
}

impl fmt::Debug for ServerMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetadata")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field("endpoints", &self.endpoints)
            .field("lists", &self.lists)
            .field("mtls_endpoint_aliases", &self.mtls_endpoint_aliases)
            .field("certificate_bound_tokens", &self.certificate_bound_tokens)
            .field("fields", &self.fields.len())
            .finish()
    }
}

/// The optional endpoints this crate keeps.
const ENDPOINTS: &[&str] = &[
    "authorization_endpoint",
    "jwks_uri",
    "revocation_endpoint",
    "introspection_endpoint",
    "device_authorization_endpoint",
    "pushed_authorization_request_endpoint",
    "userinfo_endpoint",
];

/// The lists of supported values this crate keeps.
const LISTS: &[&str] = &[
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "dpop_signing_alg_values_supported",
    "grant_types_supported",
    "scopes_supported",
    "code_challenge_methods_supported",
];

impl ServerMetadata {
    /// The issuer identifier: the one [`Discovery`] asked for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint's URL.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// An optional endpoint's URL by its metadata name: `authorization_endpoint`, `jwks_uri`,
    /// `revocation_endpoint`, `introspection_endpoint`, `device_authorization_endpoint`,
    /// `pushed_authorization_request_endpoint` or `userinfo_endpoint`.
    pub fn endpoint(&self, name: &str) -> Option<&str> {
        self.endpoints.get(name).map(String::as_str)
    }

    /// The authorization endpoint's URL.
    pub fn authorization_endpoint(&self) -> Option<&str> {
        self.endpoint("authorization_endpoint")
    }

    /// The device authorization endpoint's URL (RFC 8628 §4), for
    /// [`DeviceAuthorization`](super::DeviceAuthorization).
    pub fn device_authorization_endpoint(&self) -> Option<&str> {
        self.endpoint("device_authorization_endpoint")
    }

    /// The URL of the server's JSON Web Key Set.
    pub fn jwks_uri(&self) -> Option<&str> {
        self.endpoint("jwks_uri")
    }

    /// `token_endpoint_auth_methods_supported`, as the server listed it.
    pub fn token_endpoint_auth_methods_supported(&self) -> Option<&[String]> {
        self.list("token_endpoint_auth_methods_supported")
    }

    /// `token_endpoint_auth_signing_alg_values_supported`: the JWS algorithms the server takes
    /// for `private_key_jwt` and `client_secret_jwt` assertions.
    pub fn token_endpoint_auth_signing_alg_values_supported(&self) -> Option<&[String]> {
        self.list("token_endpoint_auth_signing_alg_values_supported")
    }

    /// `dpop_signing_alg_values_supported` (RFC 9449 §5.1): the JWS algorithms the server takes
    /// for DPoP proofs.
    pub fn dpop_signing_alg_values_supported(&self) -> Option<&[String]> {
        self.list("dpop_signing_alg_values_supported")
    }

    /// `grant_types_supported`.
    pub fn grant_types_supported(&self) -> Option<&[String]> {
        self.list("grant_types_supported")
    }

    /// `scopes_supported`.
    pub fn scopes_supported(&self) -> Option<&[String]> {
        self.list("scopes_supported")
    }

    /// `code_challenge_methods_supported` (RFC 7636).
    pub fn code_challenge_methods_supported(&self) -> Option<&[String]> {
        self.list("code_challenge_methods_supported")
    }

    fn list(&self, name: &str) -> Option<&[String]> {
        self.lists.get(name).map(Vec::as_slice)
    }

    /// Whether the token endpoint takes the client authentication `method` (such as
    /// `private_key_jwt`). Without a `token_endpoint_auth_methods_supported` list, only
    /// `client_secret_basic`, RFC 8414 §2's default.
    pub fn supports_client_auth(&self, method: &str) -> bool {
        match self.token_endpoint_auth_methods_supported() {
            Some(methods) => methods.iter().any(|m| m == method),
            None => method == "client_secret_basic",
        }
    }

    /// The mutual-TLS alias of an endpoint (RFC 8705 §5), by its metadata name such as
    /// `token_endpoint`: where a client authenticating with a certificate, or asking for
    /// certificate-bound tokens, sends its requests instead.
    pub fn mtls_endpoint_alias(&self, name: &str) -> Option<&str> {
        self.mtls_endpoint_aliases.get(name).map(String::as_str)
    }

    /// `tls_client_certificate_bound_access_tokens` (RFC 8705 §3.3); false when absent.
    pub fn tls_client_certificate_bound_access_tokens(&self) -> bool {
        self.certificate_bound_tokens
    }

    /// Any field of the document, as it came (unchecked: text in it is the server's).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }
}

/// An URL from the document, if it is a string of sensible length.
fn url_of(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .filter(|url| url.len() <= MAX_URL)
}

/// Reads and checks a metadata document.
pub(crate) fn parse(body: &[u8], issuer: &str, insecure: bool) -> Result<ServerMetadata, Error> {
    let ok = Some(StatusCode::OK);
    let fields: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            return Err(Error::metadata(
                ok,
                format!("the document ({} bytes) is not a JSON object", body.len()),
            ))
        }
    };
    let got = match fields.get("issuer") {
        Some(Value::String(got)) => got,
        _ => return Err(Error::metadata(ok, "the document has no `issuer` string")),
    };
    if got != issuer {
        return Err(Error::issuer_mismatch(issuer, got));
    }
    let token_endpoint = url_of(fields.get("token_endpoint"))
        .ok_or_else(|| Error::metadata(ok, "the document has no `token_endpoint` URL"))?;
    check_url("token_endpoint", token_endpoint, insecure).map_err(|e| {
        Error::metadata(
            ok,
            shown(e.description().unwrap_or_default(), 2 * MAX_SHOWN).into_string(),
        )
    })?;
    let secure = |url: &&str| check_url("", url, insecure).is_ok();
    let mut endpoints = BTreeMap::new();
    for &name in ENDPOINTS {
        if let Some(url) = url_of(fields.get(name)).filter(secure) {
            endpoints.insert(name, url.to_owned());
        }
    }
    let mut lists = BTreeMap::new();
    for &name in LISTS {
        if let Some(Value::Array(items)) = fields.get(name) {
            let items = items.iter().filter_map(Value::as_str).map(str::to_owned);
            lists.insert(name, items.collect());
        }
    }
    let mut mtls_endpoint_aliases = BTreeMap::new();
    if let Some(Value::Object(aliases)) = fields.get("mtls_endpoint_aliases") {
        for (name, url) in aliases {
            // RFC 8705 §5: the aliases are for TLS, and so `https` (or loopback for tests).
            if let Some(url) = url_of(Some(url)).filter(secure) {
                mtls_endpoint_aliases.insert(name.clone(), url.to_owned());
            }
        }
    }
    let certificate_bound_tokens = fields
        .get("tls_client_certificate_bound_access_tokens")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ServerMetadata {
        issuer: issuer.to_owned(),
        token_endpoint: token_endpoint.to_owned(),
        endpoints,
        lists,
        mtls_endpoint_aliases,
        certificate_bound_tokens,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth2::ErrorKind;

    fn locations(issuer: &str, well_known: WellKnown) -> Vec<String> {
        Discovery::new(issuer)
            .well_known(well_known)
            .locations()
            .unwrap()
    }

    #[test]
    fn well_known_locations_follow_both_specifications() {
        assert_eq!(
            locations("https://as.example.com", WellKnown::Auto),
            [
                "https://as.example.com/.well-known/openid-configuration",
                "https://as.example.com/.well-known/oauth-authorization-server",
            ]
        );
        // An issuer with a path: appended for OpenID Connect, inserted for RFC 8414.
        assert_eq!(
            locations("https://as.example.com/tenant/v2.0/", WellKnown::Auto),
            [
                "https://as.example.com/tenant/v2.0/.well-known/openid-configuration",
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/v2.0",
            ]
        );
        assert_eq!(
            locations(
                "http://127.0.0.1:8080/",
                WellKnown::OAuthAuthorizationServer
            ),
            ["http://127.0.0.1:8080/.well-known/oauth-authorization-server"]
        );
        let direct = Discovery::new("https://as.example.com")
            .metadata_url("https://as.example.com/meta.json")
            .locations()
            .unwrap();
        assert_eq!(direct, ["https://as.example.com/meta.json"]);
        // A metadata URL does not excuse a plain-http issuer.
        assert!(Discovery::new("http://as.example.com")
            .metadata_url("https://as.example.com/meta.json")
            .locations()
            .is_err());
        for bad in [
            "http://as.example.com",
            "https://as.example.com/?tenant=1",
            "https://as.example.com/#x",
        ] {
            let err = Discovery::new(bad).locations().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        let doc = br#"{"issuer":"https://as.example.com/","token_endpoint":"https://as.example.com/token"}"#;
        assert!(parse(doc, "https://as.example.com/", false).is_ok());
        let err = parse(doc, "https://as.example.com", false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IssuerMismatch);
        assert!(err.to_string().contains("names another issuer"), "{err}");
    }

    #[test]
    fn optional_fields_of_the_wrong_type_read_as_absent() {
        let doc = br#"{"issuer":"https://as","token_endpoint":"https://as/t",
            "jwks_uri":7,"revocation_endpoint":"http://evil.example/r",
            "token_endpoint_auth_methods_supported":["private_key_jwt",3],
            "scopes_supported":"openid",
            "mtls_endpoint_aliases":{"token_endpoint":"https://mtls.as/t","userinfo_endpoint":false},
            "tls_client_certificate_bound_access_tokens":"yes"}"#;
        let m = parse(doc, "https://as", false).unwrap();
        assert_eq!(m.jwks_uri(), None);
        assert_eq!(
            m.endpoint("revocation_endpoint"),
            None,
            "plain http is dropped"
        );
        assert_eq!(
            m.token_endpoint_auth_methods_supported().unwrap(),
            ["private_key_jwt"]
        );
        assert!(m.supports_client_auth("private_key_jwt"));
        assert!(!m.supports_client_auth("client_secret_basic"));
        assert_eq!(m.scopes_supported(), None);
        assert_eq!(
            m.mtls_endpoint_alias("token_endpoint"),
            Some("https://mtls.as/t")
        );
        assert_eq!(m.mtls_endpoint_alias("userinfo_endpoint"), None);
        assert!(!m.tls_client_certificate_bound_access_tokens());
    }

    #[test]
    fn debug_does_not_print_the_servers_other_fields() {
        let doc = format!(
            r#"{{"issuer":"https://as","token_endpoint":"https://as/t","x_vendor":"{}\u001b[2J"}}"#,
            "A".repeat(100_000)
        );
        let m = parse(doc.as_bytes(), "https://as", false).unwrap();
        let shown = format!("{m:?}");
        assert!(shown.len() < 1000, "{} bytes", shown.len());
        assert!(
            !shown.contains("AAAA") && !shown.contains("x_vendor"),
            "{shown}"
        );
        assert!(shown.contains("https://as/t"), "{shown}");
    }

    #[test]
    fn broken_documents_are_typed_errors() {
        for (doc, what) in [
            (&b"[]"[..], "not a JSON object"),
            (b"<html>", "not a JSON object"),
            (br#"{"token_endpoint":"https://as/t"}"#, "no `issuer`"),
            (br#"{"issuer":"https://as"}"#, "no `token_endpoint`"),
            (
                br#"{"issuer":"https://as","token_endpoint":5}"#,
                "no `token_endpoint`",
            ),
            (
                br#"{"issuer":"https://as","token_endpoint":"http://as.example/t"}"#,
                "must use https",
            ),
        ] {
            let err = parse(doc, "https://as", false).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Metadata, "{what}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }
}
