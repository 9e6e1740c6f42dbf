//! A token endpoint and the client registered there: how to reach it and authenticate to it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use tokio::time::Instant;
use tower::ServiceExt;
use zeroize::Zeroizing;

use super::assertion::{self, Assertions};
use super::discovery::ServerMetadata;
use super::error::Error;
use super::redact::{Redactions, SECRET_PARAMS};
use super::response::{parse_token_response, TokenResponse};
use super::transport::{Answer, Transport};
use crate::dpop::DpopKey;
use crate::token::secret_bytes;
use crate::token::{Secret, SecretKind};

mod builder;

pub use builder::TokenEndpointBuilder;

/// A client secret: a [`Secret`], so `Debug` prints `ClientSecret(<redacted>)` and its memory
/// is overwritten with zeros when it is dropped.
///
/// Read it from where your deployment keeps it; never hard-code it:
///
/// ```no_run
/// use tower_bearer::oauth2::ClientSecret;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // From the environment:
/// let secret = ClientSecret::new(std::env::var("OAUTH_CLIENT_SECRET")?);
/// // From a file, such as a mounted Kubernetes secret (trailing newline removed):
/// let secret = ClientSecret::new(std::fs::read_to_string("/run/secrets/client_secret")?.trim_end());
/// # drop(secret);
/// # Ok(())
/// # }
/// ```
pub type ClientSecret = Secret<Confidential>;

/// The kind of a [`ClientSecret`]: the credential of a confidential client (RFC 6749 §2.1).
#[derive(Debug)]
pub enum Confidential {}

impl crate::token::sealed::Sealed for Confidential {}

impl SecretKind for Confidential {
    const NAME: &'static str = "ClientSecret";
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2, OpenID
/// Connect Core §9).
///
/// The credential each method needs is given to the builder apart:
/// [`client_secret`](TokenEndpointBuilder::client_secret),
/// [`private_key`](TokenEndpointBuilder::private_key) or
/// [`client_assertion`](TokenEndpointBuilder::client_assertion). Without
/// [`auth`](TokenEndpointBuilder::auth), the method follows from the credential given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret each
    /// form-urlencoded first, as RFC 6749 §2.3.1 requires. The default with a secret.
    #[default]
    Basic,
    /// HTTP Basic with the client id and secret as they are, for servers that do not decode
    /// them. Identical to [`Basic`](Self::Basic) unless they contain reserved characters.
    BasicRaw,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
    /// No client authentication (a public client): only `client_id` in the form body.
    None,
    /// `private_key_jwt`: a JWT signed with the client's private key
    /// ([`private_key`](TokenEndpointBuilder::private_key)), made fresh for every request.
    PrivateKeyJwt,
    /// `client_secret_jwt`: a JWT signed with HS256 keyed by the client secret, made fresh for
    /// every request; the secret itself is never sent.
    ClientSecretJwt,
    /// A `client_assertion` from an [`AssertionSource`](super::AssertionSource)
    /// ([`client_assertion`](TokenEndpointBuilder::client_assertion)), asked for one per
    /// request: federated workload identities, keys kept in a KMS.
    Assertion,
    /// `tls_client_auth` (RFC 8705 §2.1): the client certificate presented by the HTTP client
    /// (see [`tls_config`](TokenEndpointBuilder::tls_config)), issued by a CA the server
    /// trusts, authenticates the client; only `client_id` goes in the form.
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): as [`TlsClientAuth`](Self::TlsClientAuth),
    /// with a self-signed certificate registered in the client's `jwks` (`x5c`).
    SelfSignedTlsClientAuth,
}

impl ClientAuth {
    /// The method's name in `token_endpoint_auth_method` and the server metadata's
    /// `token_endpoint_auth_methods_supported`; `None` for an assertion from elsewhere, which
    /// the server registers as whatever signed it.
    pub fn method_name(self) -> Option<&'static str> {
        Some(match self {
            Self::Basic | Self::BasicRaw => "client_secret_basic",
            Self::Post => "client_secret_post",
            Self::None => "none",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::ClientSecretJwt => "client_secret_jwt",
            Self::Assertion => return None,
            Self::TlsClientAuth => "tls_client_auth",
            Self::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        })
    }
}

/// A token endpoint, as one registered OAuth 2.0 client reaches it: the endpoint's URL, the
/// client's id and how it authenticates, and the HTTP client used. Shared by the grants
/// ([`ClientCredentials`](super::ClientCredentials), [`RefreshTokenSource`](super::RefreshTokenSource),
/// [`AuthorizationCode`](super::AuthorizationCode)); cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::oauth2::{ClientAuth, TokenEndpoint};
///
/// # fn main() -> Result<(), tower_bearer::oauth2::Error> {
/// let endpoint = TokenEndpoint::builder("https://auth.example.com/oauth2/token", "my-service")
///     .client_secret("s3cr3t")
///     .auth(ClientAuth::Post)
///     .timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(endpoint.client_id(), "my-service");
/// assert!(!format!("{endpoint:?}").contains("s3cr3t"));
///
/// // Plain http is refused for anything but loopback:
/// assert!(TokenEndpoint::builder("http://auth.example.com/token", "x").build().is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    token_url: Uri,
    client_id: Arc<str>,
    secret: Option<ClientSecret>,
    auth: ClientAuth,
    assertions: Option<Assertions>,
    audience: Arc<str>,
    assertion_lifetime: Duration,
    timeout: Duration,
    transport: Transport,
    dpop: Option<DpopKey>,
    // The token URL as a DPoP proof's `htu`.
    htu: String,
}

impl TokenEndpoint {
    /// Starts building the token endpoint at `token_url`, for the client with the id
    /// `client_id`.
    pub fn builder(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> TokenEndpointBuilder {
        TokenEndpointBuilder::new(token_url.into(), client_id.into())
    }

    /// Starts building the token endpoint that `metadata` names, for the client with the id
    /// `client_id`: the issuer becomes the `aud` of client assertions, and without an explicit
    /// [`auth`](TokenEndpointBuilder::auth) a secret is sent as `client_secret_post` when the
    /// server lists that method and not `client_secret_basic`.
    pub fn from_metadata(
        metadata: &ServerMetadata,
        client_id: impl Into<String>,
    ) -> TokenEndpointBuilder {
        TokenEndpointBuilder::new(metadata.token_endpoint().to_owned(), client_id.into())
            .metadata(metadata)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> &Uri {
        &self.inner.token_url
    }

    /// The key the endpoint's tokens are bound to with DPoP, if any.
    pub(crate) fn dpop_key(&self) -> Option<&DpopKey> {
        self.inner.dpop.as_ref()
    }

    /// How the client authenticates.
    pub fn auth(&self) -> ClientAuth {
        self.inner.auth
    }

    /// The `aud` of the client assertions this endpoint makes.
    pub fn assertion_audience(&self) -> &str {
        &self.inner.audience
    }

    /// Posts `params` to the token endpoint, authenticated as this client, and parses the answer.
    ///
    /// The credentials the request carries (the client secret, the Basic credentials, the
    /// client assertion, and the values of [`SECRET_PARAMS`]) are redacted from whatever the
    /// error keeps of the answer.
    pub(crate) async fn token_request(
        &self,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse, Error> {
        let inner = &self.inner;
        // A server that wants a DPoP nonce answers 400 `use_dpop_nonce` with the nonce: the
        // request is prepared once more (a fresh client assertion too) with a fresh proof
        // carrying it (RFC 9449 §8).
        let mut nonce_retry = inner.dpop.is_some();
        loop {
            let (mut request, sent) = self.prepare(&inner.token_url, params).await?;
            if let Some(key) = &inner.dpop {
                let proof = key
                    .proof(&Method::POST, &inner.htu, None)
                    .map_err(|e| Error::config(e.to_string()))?;
                let mut proof = HeaderValue::try_from(proof)
                    .map_err(|_| Error::config("the DPoP proof is not a header value"))?;
                proof.set_sensitive(true);
                request.headers_mut().insert(crate::dpop::DPOP, proof);
            }
            // The lifetime of the token counts from here: before the request, so that network
            // delay can only make a token look shorter-lived than it is.
            let requested_at = Instant::now();
            let answer = self.send(request).await?;
            let new_nonce = match &inner.dpop {
                Some(key) => key.observe(crate::dpop::origin_of(&inner.htu), &answer.headers),
                None => false,
            };
            let body = answer.body?;
            let parsed = parse_token_response(
                answer.status,
                &answer.headers,
                &body,
                &sent,
                Some(requested_at),
            );
            match parsed {
                Err(e) if nonce_retry && new_nonce && asks_nonce(&e) => nonce_retry = false,
                parsed => return parsed,
            }
        }
    }

    /// Sends a request prepared by [`prepare`](Self::prepare) with this endpoint's HTTP client,
    /// within its timeout, and reads the answer.
    pub(crate) async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, Error> {
        let inner = &self.inner;
        let send = inner.transport.clone().oneshot(request);
        match tokio::time::timeout(inner.timeout, send).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(Error::transport(error)),
            Err(_) => Err(Error::timeout(inner.timeout)),
        }
    }

    /// A form POST of `params` to `url` (the token endpoint, or another endpoint of the same
    /// server where the client authenticates the same way, such as RFC 8628's device
    /// authorization endpoint), ready to send, and the credentials it carries. A client
    /// assertion is made here, so every request, and every retry that prepares its request
    /// again, has a fresh one (servers refuse a `jti` they saw before).
    pub(crate) async fn prepare(
        &self,
        url: &Uri,
        params: &[(&str, &str)],
    ) -> Result<(Request<Full<Bytes>>, Redactions), Error> {
        let inner = &self.inner;
        let assertion = match &inner.assertions {
            Some(assertions) => Some(
                assertion::make(
                    assertions,
                    inner.secret.as_ref().map(|s| s.secret()),
                    &inner.client_id,
                    &inner.audience,
                    inner.assertion_lifetime,
                )
                .await?,
            ),
            None => None,
        };
        Ok(self.build_request(url, params, assertion.as_deref().map(String::as_str)))
    }

    /// The token request: a form POST, with the client authenticated as configured; and the
    /// credentials it carries, to redact from the answer.
    fn build_request(
        &self,
        url: &Uri,
        params: &[(&str, &str)],
        assertion: Option<&str>,
    ) -> (Request<Full<Bytes>>, Redactions) {
        let inner = &self.inner;
        let mut sent = Redactions::none();
        // The form carries the client secret or a refresh token: sized up front so that it
        // never moves (leaving a copy behind), and zeroed once sent. Form-urlencoding at most
        // triples a byte; each pair adds `=` and `&`.
        let size = |name: &str, value: &str| 3 * (name.len() + value.len()) + 2;
        let secret_len = inner.secret.as_ref().map_or(0, |s| s.secret().len());
        let mut capacity = params.iter().map(|(k, v)| size(k, v)).sum::<usize>()
            + size("client_id", &inner.client_id)
            + size("client_secret", "")
            + 3 * secret_len;
        if let Some(assertion) = assertion {
            capacity += size("client_assertion", assertion)
                + size("client_assertion_type", assertion::JWT_BEARER);
        }
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(capacity));
        form.extend_pairs(params);
        for (name, value) in params {
            if SECRET_PARAMS.contains(name) {
                sent.secret(value);
            }
        }
        let mut headers = HeaderMap::new();
        match (inner.auth, &inner.secret, assertion) {
            (_, _, Some(assertion)) => {
                // RFC 7523 §3: `client_id` is optional with an assertion, and some servers
                // (Entra ID) want it; it names the same client as `iss` and `sub`.
                form.append_pair("client_id", &inner.client_id);
                form.append_pair("client_assertion_type", assertion::JWT_BEARER);
                form.append_pair("client_assertion", assertion);
                sent.secret(assertion);
            }
            (ClientAuth::Basic | ClientAuth::BasicRaw, Some(secret), None) => {
                let encode = inner.auth == ClientAuth::Basic;
                let value = basic_auth(&inner.client_id, secret.secret(), encode);
                sent.secret(secret.secret());
                if let Some(credentials) = value.as_bytes().strip_prefix(b"Basic ") {
                    sent.exact(std::str::from_utf8(credentials).unwrap_or_default());
                }
                headers.insert(AUTHORIZATION, value);
            }
            (ClientAuth::Post, Some(secret), None) => {
                form.append_pair("client_id", &inner.client_id);
                form.append_pair("client_secret", secret.secret());
                sent.secret(secret.secret());
            }
            _ => {
                form.append_pair("client_id", &inner.client_id);
            }
        }
        let form = form.finish();
        debug_assert_eq!(form.capacity(), capacity, "the form outgrew its buffer");
        let body = secret_bytes(form.into_bytes());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        *request.headers_mut() = headers;

        (request, sent)
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TokenEndpoint")
            .field("token_url", &inner.token_url)
            .field("client_id", &inner.client_id)
            .field("client_secret", &inner.secret)
            .field("auth", &inner.auth)
            .field("assertions", &inner.assertions)
            .field("assertion_audience", &inner.audience)
            .field("timeout", &inner.timeout)
            .field("dpop", &inner.dpop)
            .finish_non_exhaustive()
    }
}

/// The `Authorization: Basic` value, with id and secret form-urlencoded first unless `raw`
/// (RFC 6749 §2.3.1).
fn basic_auth(id: &str, secret: &str, encode: bool) -> HeaderValue {
    // Each buffer holding the secret is sized up front (a buffer that grows leaves a copy behind
    // in the memory it moves out of) and zeroed when dropped. Form-urlencoding at most triples
    // a byte.
    let mut credentials = Zeroizing::new(String::with_capacity(3 * (id.len() + secret.len()) + 1));
    if encode {
        credentials.extend(form_urlencoded::byte_serialize(id.as_bytes()));
        credentials.push(':');
        credentials.extend(form_urlencoded::byte_serialize(secret.as_bytes()));
    } else {
        credentials.push_str(id);
        credentials.push(':');
        credentials.push_str(secret);
    }
    const SCHEME: &[u8] = b"Basic ";
    let mut encoded = vec![0; SCHEME.len() + credentials.len().div_ceil(3) * 4];
    encoded[..SCHEME.len()].copy_from_slice(SCHEME);
    let written = STANDARD
        .encode_slice(credentials.as_bytes(), &mut encoded[SCHEME.len()..])
        .expect("sized for the padded base64");
    debug_assert_eq!(SCHEME.len() + written, encoded.len());
    let mut value = HeaderValue::from_maybe_shared(secret_bytes(encoded))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Parses an endpoint URL, and refuses plain `http` unless the host is loopback or `insecure`
/// is allowed.
pub(crate) fn check_url(what: &str, url: &str, insecure: bool) -> Result<Uri, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::config(format!("{what} {url:?} is not a valid URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::config(format!("{what} {url:?} is not an absolute URL")))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if insecure || is_loopback(host) => Ok(uri),
        Some("http") => Err(Error::config(format!(
            "{what} {url:?} must use https: credentials and tokens would cross the network in \
             clear text (plain http is allowed for loopback, or with allow_insecure_http)"
        ))),
        _ => Err(Error::config(format!(
            "{what} {url:?} must be an http(s) URL"
        ))),
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a token endpoint's error asks for a DPoP proof with its nonce.
fn asks_nonce(error: &Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.as_str() == "use_dpop_nonce")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(value: &HeaderValue) -> String {
        let b64 = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn basic_auth_form_urlencodes_id_and_secret() {
        // RFC 6749 §2.3.1: the id and secret are encoded with application/x-www-form-urlencoded
        // before being used as the Basic user-id and password.
        let value = basic_auth("cc-weird", "a b:c+d/e%f&g=h", true);
        assert_eq!(decode(&value), "cc-weird:a+b%3Ac%2Bd%2Fe%25f%26g%3Dh");
        assert!(value.is_sensitive());
        let value = basic_auth("id:1", "é", true);
        assert_eq!(decode(&value), "id%3A1:%C3%A9");
    }

    #[test]
    fn basic_auth_raw_leaves_them_alone() {
        let value = basic_auth("cc-weird", "a b:c+d/e%f&g=h", false);
        assert_eq!(decode(&value), "cc-weird:a b:c+d/e%f&g=h");
        let plain = basic_auth("client", "secret", false);
        assert_eq!(plain, basic_auth("client", "secret", true));
        assert_eq!(plain, "Basic Y2xpZW50OnNlY3JldA==");
    }

    #[test]
    fn token_urls_must_be_https_unless_loopback() {
        assert!(check_url("u", "https://auth.example.com/token", false).is_ok());
        for ok in [
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "http://[::1]:9000/token",
            "http://localhost/token",
            "http://LOCALHOST:1/token",
        ] {
            assert!(check_url("u", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://auth.example.com/token",
            "http://10.0.0.1/token",
            "http://localhost.example.com/token",
            "ftp://auth.example.com/token",
            "/token",
            "not a url",
            "",
        ] {
            let err = check_url("token URL", bad, false).unwrap_err();
            assert_eq!(err.kind(), super::super::ErrorKind::Config, "{bad}");
        }
        assert!(check_url("u", "http://auth.example.com/token", true).is_ok());
    }
}
