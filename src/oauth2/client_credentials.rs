//! The client credentials grant (RFC 6749 §4.4).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{Client, Error, TokenResponse};
use crate::{Token, TokenRequest};

/// A token source for the client credentials grant (RFC 6749 §4.4): a service authenticating
/// as itself, with no user involved.
///
/// Put it under a [`BearerAuthLayer`](crate::BearerAuthLayer) and the layer fetches, caches and
/// refreshes its tokens:
///
/// ```no_run
/// use tower_bearer::oauth2::{Client, ClientCredentials};
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::builder("https://auth.example.com/oauth2/token", "reporting-job")
///     .client_secret(std::env::var("OAUTH_CLIENT_SECRET")?)
///     .build()?;
/// let source = ClientCredentials::new(client)
///     .scope("invoices:read")
///     .resource("https://api.example.com/");
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    client: Client,
    grant_type: Arc<str>,
    params: Arc<Vec<(String, String)>>,
    scopes: Arc<Vec<String>>,
}

impl ClientCredentials {
    /// A source for `client`, with no scope, audience or resource.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            grant_type: Arc::from("client_credentials"),
            params: Arc::default(),
            scopes: Arc::default(),
        }
    }

    /// Adds a scope to request (RFC 6749 §3.3); scopes are sent space-separated.
    ///
    /// Default: none, leaving the scope to the server.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.scopes).push(scope.into());
        self
    }

    /// Adds several scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        Arc::make_mut(&mut self.scopes).extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Sets the `audience` parameter that some servers (Auth0, Okta) use to pick the API the
    /// token is for.
    ///
    /// Default: none.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds a `resource` indicator (RFC 8707): the URI of an API the token is for. May be given
    /// several times.
    ///
    /// Default: none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Sends another `grant_type`, for extension grants (RFC 6749 §4.5) that take the same
    /// parameters, such as a vendor's machine-to-machine grant.
    ///
    /// Default: `client_credentials`.
    pub fn grant_type(mut self, grant_type: impl Into<String>) -> Self {
        self.grant_type = Arc::from(grant_type.into());
        self
    }

    /// Adds any other form parameter to the token request.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.params).push((name.into(), value.into()));
        self
    }

    /// The client this source authenticates as.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Requests a token now, bypassing any cache.
    ///
    /// # Errors
    ///
    /// When the token endpoint refuses, cannot be reached or answers something unusable.
    pub async fn request_token(&self) -> Result<TokenResponse, Error> {
        let scope = self.scopes.join(" ");
        let mut params: Vec<(&str, &str)> = vec![("grant_type", &self.grant_type)];
        if !scope.is_empty() {
            params.push(("scope", &scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.client.token_request(&params).await
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client", &self.client)
            .field("grant_type", &self.grant_type)
            .field("scopes", &self.scopes)
            .field("params", &self.params)
            .finish()
    }
}

impl Service<TokenRequest> for ClientCredentials {
    type Response = Token;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Token, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.request_token().await?.into_token()) })
    }
}
