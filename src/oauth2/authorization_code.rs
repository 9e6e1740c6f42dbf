//! The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636), for apps acting for a user.

use std::sync::Arc;

use super::authorize::{AuthorizationRequest, AuthorizationResponse};
use super::{Error, RefreshTokenSource, TokenEndpoint, TokenResponse};

/// The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636 `S256`).
///
/// 1. [`authorization_request`](Self::authorization_request) builds the URL to open in the
///    user's browser, with a fresh `state` and code challenge.
/// 2. The authorization server redirects back with a code: catch it with
///    [`LoopbackRedirect`](super::LoopbackRedirect) (native apps, RFC 8252) or in your own web
///    route with [`AuthorizationResponse::from_query`].
/// 3. [`exchange`](Self::exchange) trades the code and its verifier for tokens.
/// 4. [`RefreshTokenSource::from_response`] keeps them fresh behind a
///    [`BearerAuthLayer`](crate::BearerAuthLayer).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_bearer::oauth2::{
///     AuthorizationCode, ClientAuth, LoopbackRedirect, RefreshTokenSource, TokenEndpoint,
/// };
///
/// # async fn login() -> Result<(), tower_bearer::oauth2::Error> {
/// let endpoint = TokenEndpoint::builder("https://auth.example.com/token", "cli-app")
///     .auth(ClientAuth::None)
///     .build()?;
/// let grant = AuthorizationCode::new(endpoint.clone(), "https://auth.example.com/authorize")
///     .scope("openid")
///     .scope("offline_access");
/// let redirect = LoopbackRedirect::bind().await?;
/// let request = grant.authorization_request(redirect.redirect_uri())?;
/// println!("Open this URL to sign in: {}", request.url());
/// let response = redirect
///     .receive(&request, Some("https://auth.example.com"), Duration::from_secs(300))
///     .await?;
/// let tokens = grant.exchange(&request, &response).await?;
/// let source = RefreshTokenSource::from_response(endpoint, tokens)?;
/// # drop(source);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthorizationCode {
    token_endpoint: TokenEndpoint,
    authorization_endpoint: Arc<str>,
    scopes: Vec<String>,
    resources: Vec<String>,
    params: Vec<(String, String)>,
    allow_insecure_http: bool,
}

impl AuthorizationCode {
    /// The grant for the client of `token_endpoint`, whose users sign in at
    /// `authorization_endpoint`.
    pub fn new(token_endpoint: TokenEndpoint, authorization_endpoint: impl Into<String>) -> Self {
        Self {
            token_endpoint,
            authorization_endpoint: authorization_endpoint.into().into(),
            scopes: Vec::new(),
            resources: Vec::new(),
            params: Vec::new(),
            allow_insecure_http: false,
        }
    }

    /// Adds a scope to request (`offline_access` usually asks for a refresh token).
    ///
    /// Default: none.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a `resource` indicator (RFC 8707) to the authorization request.
    ///
    /// Default: none.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds another parameter to the authorization request (`prompt`, `login_hint`, ...).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Allows a plain `http` authorization endpoint on a host that is not loopback.
    ///
    /// Default: refused.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// Builds an authorization request redirecting to `redirect_uri`, with a fresh `state` and
    /// PKCE verifier.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](super::ErrorKind::Config) if the authorization endpoint is not a
    /// valid `https` URL (or `http` to loopback), or if the system has no randomness.
    pub fn authorization_request(&self, redirect_uri: &str) -> Result<AuthorizationRequest, Error> {
        AuthorizationRequest::new(
            &self.authorization_endpoint,
            self.token_endpoint.client_id(),
            redirect_uri,
            &self.scopes,
            &self.resources,
            &self.params,
            self.allow_insecure_http,
        )
    }

    /// Exchanges the code of `response` (checked against `request` already) and the verifier of
    /// `request` for tokens.
    ///
    /// # Errors
    ///
    /// When the token endpoint refuses (`invalid_grant` for a used or expired code), cannot be
    /// reached or answers something unusable.
    pub async fn exchange(
        &self,
        request: &AuthorizationRequest,
        response: &AuthorizationResponse,
    ) -> Result<TokenResponse, Error> {
        let params = [
            ("grant_type", "authorization_code"),
            ("code", response.code()),
            ("redirect_uri", request.redirect_uri()),
            ("code_verifier", request.pkce().verifier()),
        ];
        self.token_endpoint.token_request(&params).await
    }

    /// A [`RefreshTokenSource`] for this grant's token endpoint, continuing from `tokens`.
    ///
    /// # Errors
    ///
    /// If `tokens` has no refresh token.
    pub fn into_refresh_source(self, tokens: TokenResponse) -> Result<RefreshTokenSource, Error> {
        RefreshTokenSource::from_response(self.token_endpoint, tokens)
    }
}
