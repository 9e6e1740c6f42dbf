//! A token endpoint and the client registered there: how to reach it and authenticate to it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;
use zeroize::Zeroizing;

use super::error::Error;
use super::redact::{Redactions, SECRET_PARAMS};
use super::response::{parse_token_response, TokenResponse, MAX_BODY};
use crate::dpop::DpopKey;
use crate::token::secret_bytes;
use crate::token::{Secret, SecretKind};
use crate::BoxError;

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

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret each
    /// form-urlencoded first, as RFC 6749 §2.3.1 requires. The default.
    #[default]
    Basic,
    /// HTTP Basic with the client id and secret as they are, for servers that do not decode
    /// them. Identical to [`Basic`](Self::Basic) unless they contain reserved characters.
    BasicRaw,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
    /// No client authentication (a public client): only `client_id` in the form body.
    None,
}

/// The HTTP client a token source uses to reach its token endpoint, type-erased.
type Transport = BoxCloneSyncService<Request<Full<Bytes>>, Answer, BoxError>;

/// A token endpoint's answer, read in full (up to [`MAX_BODY`]).
pub(crate) struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, Error>,
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
    client_id: String,
    secret: Option<ClientSecret>,
    auth: ClientAuth,
    timeout: Duration,
    transport: Transport,
    dpop: Option<DpopKey>,
    // The token URL as a DPoP proof's `htu`.
    htu: String,
}

/// Builds a [`TokenEndpoint`]. Made by [`TokenEndpoint::builder`].
pub struct TokenEndpointBuilder {
    token_url: String,
    client_id: String,
    secret: Option<ClientSecret>,
    auth: ClientAuth,
    timeout: Duration,
    allow_insecure_http: bool,
    transport: Option<Transport>,
    dpop: Option<DpopKey>,
}

impl TokenEndpoint {
    /// Starts building the token endpoint at `token_url`, for the client with the id
    /// `client_id`.
    pub fn builder(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> TokenEndpointBuilder {
        TokenEndpointBuilder {
            token_url: token_url.into(),
            client_id: client_id.into(),
            secret: None,
            auth: ClientAuth::Basic,
            timeout: Duration::from_secs(20),
            allow_insecure_http: false,
            transport: None,
            dpop: None,
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> &Uri {
        &self.inner.token_url
    }

    /// Posts `params` to the token endpoint, authenticated as this client, and parses the answer.
    ///
    /// The credentials the request carries (the client secret, the Basic credentials, and the
    /// values of [`SECRET_PARAMS`]) are redacted from whatever the error keeps of the answer.
    pub(crate) async fn token_request(
        &self,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse, Error> {
        let inner = &self.inner;
        // A server that wants a DPoP nonce answers 400 `use_dpop_nonce` with the nonce: the
        // request is sent once more, with a fresh proof carrying it (RFC 9449 §8).
        let mut nonce_retry = inner.dpop.is_some();
        loop {
            let (mut request, sent) = self.build_request(params);
            if let Some(key) = &inner.dpop {
                let proof = key
                    .proof(&Method::POST, &inner.htu, None)
                    .map_err(|e| Error::config(e.to_string()))?;
                let proof = HeaderValue::try_from(proof)
                    .map_err(|_| Error::config("the DPoP proof is not a header value"))?;
                request.headers_mut().insert(crate::dpop::DPOP, proof);
            }
            // The lifetime of the token counts from here: before the request, so that network
            // delay can only make a token look shorter-lived than it is.
            let requested_at = Instant::now();
            let send = inner.transport.clone().oneshot(request);
            let answer = match tokio::time::timeout(inner.timeout, send).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => return Err(Error::transport(error)),
                Err(_) => return Err(Error::timeout(inner.timeout)),
            };
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
}

/// Whether a token endpoint's error asks for a DPoP proof with its nonce.
fn asks_nonce(error: &Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.as_str() == "use_dpop_nonce")
}

impl TokenEndpoint {
    /// The token request: a form POST, with the client authenticated as configured; and the
    /// credentials it carries, to redact from the answer.
    fn build_request(&self, params: &[(&str, &str)]) -> (Request<Full<Bytes>>, Redactions) {
        let inner = &self.inner;
        let mut sent = Redactions::none();
        // The form carries the client secret or a refresh token: sized up front so that it
        // never moves (leaving a copy behind), and zeroed once sent. Form-urlencoding at most
        // triples a byte; each pair adds `=` and `&`.
        let size = |name: &str, value: &str| 3 * (name.len() + value.len()) + 2;
        let secret_len = inner.secret.as_ref().map_or(0, |s| s.secret().len());
        let capacity = params.iter().map(|(k, v)| size(k, v)).sum::<usize>()
            + size("client_id", &inner.client_id)
            + size("client_secret", "")
            + 3 * secret_len;
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(capacity));
        form.extend_pairs(params);
        for (name, value) in params {
            if SECRET_PARAMS.contains(name) {
                sent.secret(value);
            }
        }
        let mut headers = HeaderMap::new();
        match (inner.auth, &inner.secret) {
            (ClientAuth::Basic | ClientAuth::BasicRaw, Some(secret)) => {
                let encode = inner.auth == ClientAuth::Basic;
                let value = basic_auth(&inner.client_id, secret.secret(), encode);
                sent.secret(secret.secret());
                if let Some(credentials) = value.as_bytes().strip_prefix(b"Basic ") {
                    sent.exact(std::str::from_utf8(credentials).unwrap_or_default());
                }
                headers.insert(AUTHORIZATION, value);
            }
            (ClientAuth::Post, Some(secret)) => {
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
        *request.uri_mut() = inner.token_url.clone();
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
            .field("timeout", &inner.timeout)
            .field("dpop", &inner.dpop)
            .finish_non_exhaustive()
    }
}

impl TokenEndpointBuilder {
    /// The client secret, for confidential clients.
    ///
    /// Default: none (a public client, which should use [`ClientAuth::None`]).
    pub fn client_secret(mut self, secret: impl Into<ClientSecret>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// How the client authenticates. Without a secret, only `client_id` is sent in the form.
    ///
    /// Default: [`ClientAuth::Basic`].
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// How long one token request may take, connection included, before it fails with
    /// [`ErrorKind::Timeout`](super::ErrorKind::Timeout).
    ///
    /// Default: 20 seconds, under the token cache's 30-second fetch timeout so that the cache
    /// reports this more specific error.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Allows a plain `http` token URL to a host that is not loopback. Credentials and tokens
    /// then cross the network in clear text: only for test environments.
    ///
    /// Default: refused; `https` is required except for `127.0.0.0/8`, `::1` and `localhost`.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// The HTTP client used to reach the token endpoint: any tower service taking
    /// `http::Request<Full<Bytes>>` and answering an `http::Response` with any body. Redirects
    /// must not be followed by it (a token endpoint has no reason to redirect, and following
    /// would send the credentials elsewhere).
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

    /// Binds the tokens to a DPoP key (RFC 9449): each token request carries a proof of
    /// possession of `key`, and a `use_dpop_nonce` error is answered once with the server's
    /// nonce. Tokens then come back with `token_type` `DPoP`; send them with
    /// [`Placement::dpop`](crate::Placement::dpop) and a clone of the same key.
    ///
    /// Default: none (bearer tokens).
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// Checks the configuration and builds the token endpoint.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](super::ErrorKind::Config) if the token URL is not an absolute
    /// `https` URL (or `http` to loopback), or if no transport was given and the
    /// `default-client` feature is off.
    pub fn build(self) -> Result<TokenEndpoint, Error> {
        let token_url = check_url("token URL", &self.token_url, self.allow_insecure_http)?;
        let htu = crate::dpop::htu_of(&token_url, &HeaderMap::new())
            .ok_or_else(|| Error::config("the token URL has no host"))?;
        let transport = match self.transport {
            Some(transport) => transport,
            None => default_transport()?,
        };
        Ok(TokenEndpoint {
            inner: Arc::new(Inner {
                token_url,
                client_id: self.client_id,
                secret: self.secret,
                auth: self.auth,
                timeout: self.timeout,
                transport,
                dpop: self.dpop,
                htu,
            }),
        })
    }
}

impl fmt::Debug for TokenEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpointBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.secret)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

fn erase<S, B>(transport: S) -> Transport
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        transport
            .map_err(Into::into)
            .and_then(|response: Response<B>| read_answer(response)),
    )
}

async fn read_answer<B>(response: Response<B>) -> Result<Answer, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // Refused before reading: a hostile server must not make us allocate.
        Err(Error::body_too_large(status, MAX_BODY))
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                Err(Error::body_too_large(status, MAX_BODY))
            }
            // The connection failed mid-body: a transport error, which is worth retrying.
            Err(error) => return Err(error),
        }
    };
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
    })
}

#[cfg(feature = "default-client")]
fn default_transport() -> Result<Transport, Error> {
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::rt::TokioExecutor;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // The system's roots include private CAs that companies add; the bundled Mozilla roots keep
    // working where the system has none (minimal containers).
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?,
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(erase(client))
}

#[cfg(not(feature = "default-client"))]
fn default_transport() -> Result<Transport, Error> {
    Err(Error::config(
        "no HTTP client for the token endpoint: enable the `default-client` feature or call \
         `TokenEndpointBuilder::transport`",
    ))
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
