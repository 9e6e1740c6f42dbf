//! The builder of a [`TokenEndpoint`]: where it is, who the client is, and how it proves it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::{check_url, ClientAuth, ClientSecret, Inner, TokenEndpoint};
use crate::dpop::DpopKey;
use crate::jose::SigningKey;
use crate::oauth2::assertion::{AssertionAudience, AssertionSource, Assertions};
use crate::oauth2::discovery::ServerMetadata;
use crate::oauth2::error::Error;
use crate::oauth2::transport::{default_transport, erase, Transport};
use crate::BoxError;

/// Builds a [`TokenEndpoint`]. Made by [`TokenEndpoint::builder`] or
/// [`TokenEndpoint::from_metadata`].
pub struct TokenEndpointBuilder {
    token_url: String,
    client_id: String,
    secret: Option<ClientSecret>,
    key: Option<Arc<SigningKey>>,
    assertion_source: Option<Arc<dyn AssertionSource>>,
    auth: Option<ClientAuth>,
    issuer: Option<String>,
    methods_supported: Option<Vec<String>>,
    mtls_token_url: Option<String>,
    #[cfg(feature = "default-client")]
    tls_config: Option<rustls::ClientConfig>,
    audience: AssertionAudience,
    assertion_lifetime: Duration,
    timeout: Duration,
    allow_insecure_http: bool,
    transport: Option<Transport>,
    dpop: Option<DpopKey>,
}

impl TokenEndpointBuilder {
    pub(super) fn new(token_url: String, client_id: String) -> Self {
        Self {
            token_url,
            client_id,
            secret: None,
            key: None,
            assertion_source: None,
            auth: None,
            issuer: None,
            methods_supported: None,
            mtls_token_url: None,
            #[cfg(feature = "default-client")]
            tls_config: None,
            audience: AssertionAudience::Issuer,
            assertion_lifetime: Duration::from_secs(60),
            timeout: Duration::from_secs(20),
            allow_insecure_http: false,
            dpop: None,
            transport: None,
        }
    }

    pub(super) fn metadata(mut self, metadata: &ServerMetadata) -> Self {
        self.issuer = Some(metadata.issuer().to_owned());
        self.methods_supported = metadata
            .token_endpoint_auth_methods_supported()
            .map(<[String]>::to_vec);
        self.mtls_token_url = metadata
            .mtls_endpoint_alias("token_endpoint")
            .map(str::to_owned);
        self
    }

    /// The client secret, for `client_secret_basic`, `client_secret_post` and
    /// `client_secret_jwt`.
    ///
    /// Default: none.
    pub fn client_secret(mut self, secret: impl Into<ClientSecret>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The private key that signs the client's assertions (`private_key_jwt`): ES256, EdDSA,
    /// RS256 or PS256, from PKCS#8, PEM or a JWK (see [`SigningKey`]). Its `kid`, if it has
    /// one, goes in the assertions' header, so that the server picks the right one of the
    /// client's registered keys. Makes [`ClientAuth::PrivateKeyJwt`] the default method.
    ///
    /// Default: none.
    pub fn private_key(mut self, key: impl Into<Arc<SigningKey>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// A source of client assertions made elsewhere ([`AssertionSource`]), asked for one per
    /// token request. Makes [`ClientAuth::Assertion`] the default method.
    ///
    /// Default: none.
    pub fn client_assertion(mut self, source: impl AssertionSource) -> Self {
        self.assertion_source = Some(Arc::new(source));
        self
    }

    /// How the client authenticates. Without a secret, the secret methods send only
    /// `client_id` in the form.
    ///
    /// Default: follows from the credential given: [`ClientAuth::PrivateKeyJwt`] with a
    /// private key, [`ClientAuth::Assertion`] with an assertion source, otherwise
    /// [`ClientAuth::Basic`] (or [`ClientAuth::Post`] when the server's metadata lists only
    /// that of the two).
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The authorization server's issuer identifier, the default `aud` of client assertions.
    ///
    /// Default: the metadata's with [`TokenEndpoint::from_metadata`], otherwise none.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The `aud` of the client assertions this crate signs.
    ///
    /// Default: [`AssertionAudience::Issuer`]: the issuer when known, else the token
    /// endpoint's URL. `oidc-provider` takes either, FAPI 2.0 servers and the current revision
    /// of RFC 7523 only the issuer; a few older servers only the token endpoint.
    pub fn assertion_audience(mut self, audience: AssertionAudience) -> Self {
        self.audience = audience;
        self
    }

    /// How long a client assertion this crate signs is valid (`exp` − `iat`, in whole seconds,
    /// at least one). Each request gets a new one, so it only needs to outlive the request.
    ///
    /// Default: 60 seconds.
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.assertion_lifetime = lifetime;
        self
    }

    /// How long one token request may take, connection included, before it fails with
    /// [`ErrorKind::Timeout`](crate::oauth2::ErrorKind::Timeout).
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

    /// A transport already erased, for sources the crate builds itself (the default chain).
    pub(crate) fn erased_transport(mut self, transport: Option<Transport>) -> Self {
        if transport.is_some() {
            self.transport = transport;
        }
        self
    }

    /// The TLS configuration of the default HTTP client (hyper-util with rustls), for a client
    /// certificate (`ClientConfig::builder()...with_client_auth_cert(chain, key)`) or private
    /// roots. With a client certificate the client can use [`ClientAuth::TlsClientAuth`] or
    /// [`ClientAuth::SelfSignedTlsClientAuth`], and the server can bind its tokens to the
    /// certificate (RFC 8705 §3); requests then go to the server's mutual-TLS alias of the token
    /// endpoint (`mtls_endpoint_aliases`) when its metadata has one. HTTP/1.1 and HTTP/2 are
    /// offered by ALPN whatever the configuration says. Ignored when a
    /// [`transport`](Self::transport) is given.
    ///
    /// Default: rustls with the ring provider, the system's roots (the Mozilla roots where the
    /// system has none), and no client certificate.
    #[cfg(feature = "default-client")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Whether the requests go over mutual TLS: a certificate method, or a TLS configuration
    /// with a client certificate.
    fn mutual_tls(&self, auth: ClientAuth) -> bool {
        #[cfg(feature = "default-client")]
        let certificate = self
            .tls_config
            .as_ref()
            .is_some_and(|c| c.client_auth_cert_resolver.has_certs());
        #[cfg(not(feature = "default-client"))]
        let certificate = false;
        certificate
            || matches!(
                auth,
                ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth
            )
    }

    /// The method: the one set, or the one the credentials given imply.
    fn resolved_auth(&self) -> ClientAuth {
        if let Some(auth) = self.auth {
            return auth;
        }
        if self.key.is_some() {
            return ClientAuth::PrivateKeyJwt;
        }
        if self.assertion_source.is_some() {
            return ClientAuth::Assertion;
        }
        let lists = |m: &str| {
            self.methods_supported
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|x| x == m))
        };
        if self.secret.is_some() && !lists("client_secret_basic") && lists("client_secret_post") {
            ClientAuth::Post
        } else {
            ClientAuth::Basic
        }
    }

    /// Binds the tokens to a DPoP key (RFC 9449): each token request carries a proof of
    /// possession of `key`, and a `use_dpop_nonce` error is answered once with the server's
    /// nonce (and a fresh client assertion). Tokens then come back with `token_type` `DPoP`;
    /// send them with [`Placement::dpop`](crate::Placement::dpop) and a clone of the same key.
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
    /// [`ErrorKind::Config`](crate::oauth2::ErrorKind::Config) if the token URL is not an
    /// absolute `https` URL (or `http` to loopback), if the method lacks its credential
    /// (`private_key_jwt` without a private key, `client_secret_jwt` without a secret, an
    /// assertion without a source), or if no transport was given and the `default-client`
    /// feature is off.
    pub fn build(self) -> Result<TokenEndpoint, Error> {
        let auth = self.resolved_auth();
        // RFC 8705 §5: with a client certificate, the server's mTLS alias, if it has one.
        let url = match &self.mtls_token_url {
            Some(alias) if self.mutual_tls(auth) => alias,
            _ => &self.token_url,
        };
        let token_url = check_url("token URL", url, self.allow_insecure_http)?;
        let missing = |what: &str| {
            Error::config(format!(
                "client authentication {auth:?} needs {what}, which was not given"
            ))
        };
        let assertions = match auth {
            ClientAuth::PrivateKeyJwt => Some(Assertions::Key(
                self.key.clone().ok_or_else(|| missing("a private key"))?,
            )),
            ClientAuth::ClientSecretJwt => {
                self.secret
                    .as_ref()
                    .ok_or_else(|| missing("a client secret"))?;
                Some(Assertions::Secret)
            }
            ClientAuth::Assertion => Some(Assertions::External(
                self.assertion_source
                    .clone()
                    .ok_or_else(|| missing("an assertion source"))?,
            )),
            _ => None,
        };
        let audience: Arc<str> = match (&self.audience, &self.issuer) {
            (AssertionAudience::Issuer, Some(issuer)) => issuer.as_str().into(),
            (AssertionAudience::Custom(audience), _) => audience.as_str().into(),
            _ => url.as_str().into(),
        };
        let transport = match self.transport {
            Some(transport) => transport,
            #[cfg(feature = "default-client")]
            None => default_transport(self.tls_config)?,
            #[cfg(not(feature = "default-client"))]
            None => default_transport()?,
        };
        let htu = crate::dpop::htu_of(&token_url, &http::HeaderMap::new())
            .ok_or_else(|| Error::config("the token URL has no host"))?;
        Ok(TokenEndpoint {
            inner: Arc::new(Inner {
                token_url,
                client_id: self.client_id.into(),
                secret: self.secret,
                auth,
                assertions,
                audience,
                assertion_lifetime: self.assertion_lifetime,
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
            .field("private_key", &self.key)
            .field("auth", &self.auth)
            .field("issuer", &self.issuer)
            .field("assertion_audience", &self.audience)
            .field("assertion_lifetime", &self.assertion_lifetime)
            .field("timeout", &self.timeout)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}
