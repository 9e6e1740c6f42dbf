//! The client credentials grant (RFC 6749 §4.4).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::redact::{is_credential, Params};
use super::{Error, TokenEndpoint, TokenResponse};
use crate::{SourceError, Token, TokenKey, TokenRequest};

/// A token source for the client credentials grant (RFC 6749 §4.4): a service authenticating
/// as itself, with no user involved.
///
/// Put it under a [`BearerAuthLayer`](crate::BearerAuthLayer) and the layer fetches, caches and
/// refreshes its tokens:
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoint = TokenEndpoint::builder("https://auth.example.com/oauth2/token", "reporting-job")
///     .client_secret(std::env::var("OAUTH_CLIENT_SECRET")?)
///     .build()?;
/// let source = ClientCredentials::new(endpoint)
///     .scope("invoices:read")
///     .resource("https://api.example.com/");
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    grant_type: Arc<str>,
    params: Arc<Vec<(String, String)>>,
    scopes: Arc<Vec<String>>,
}

impl ClientCredentials {
    /// A source asking `endpoint` for tokens, with no scope, audience or resource.
    pub fn new(endpoint: TokenEndpoint) -> Self {
        Self {
            endpoint,
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

    /// The token endpoint this source asks, and the client it authenticates as there.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    /// What makes this source's tokens, as form-encoded text: the token endpoint's URL, the
    /// client id, the grant type, the configured scopes, the other parameters except
    /// credentials (those whose name starts with `client_`, such as a `client_assertion`, and
    /// those errors redact, such as `assertion` or `password`), and the thumbprint of the
    /// endpoint's DPoP key, if it has one (`dpop_jkt`). Two sources
    /// with the same identity get interchangeable tokens, so this is what a shared cache level
    /// (feature `redis`) should be given to key the tokens of this source.
    ///
    /// ```
    /// use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let endpoint = TokenEndpoint::builder("https://auth.example.com/token", "billing")
    ///     .client_secret("s3cr3t")
    ///     .build()?;
    /// let source = ClientCredentials::new(endpoint).scope("invoices:read");
    /// let identity = source.identity();
    /// assert_eq!(
    ///     identity,
    ///     "token_url=https%3A%2F%2Fauth.example.com%2Ftoken&client_id=billing\
    ///      &grant_type=client_credentials&scope=invoices%3Aread"
    /// );
    /// assert!(!identity.contains("s3cr3t"));
    /// assert_ne!(identity, source.clone().scope("invoices:write").identity());
    /// # Ok(())
    /// # }
    /// ```
    pub fn identity(&self) -> String {
        let mut identity = identity_of(&self.endpoint, &self.grant_type);
        identity.append_pair("scope", &self.scopes.join(" "));
        for (name, value) in self.params.iter() {
            if !is_credential(name) {
                identity.append_pair(name, value);
            }
        }
        identity.finish()
    }

    /// Requests a token now, bypassing any cache.
    ///
    /// # Errors
    ///
    /// When the token endpoint refuses, cannot be reached or answers something unusable.
    pub async fn request_token(&self) -> Result<TokenResponse, Error> {
        self.request_token_for(&TokenKey::default()).await
    }

    /// Requests a token for `key` now, bypassing any cache. What the key names replaces what
    /// this source is configured with, kind by kind: its scopes the configured scopes, its
    /// audiences the `audience` parameters, its resources the `resource` parameters, and each of
    /// its parameters the configured ones of the same name. The default key asks for what the
    /// source is configured with.
    ///
    /// # Errors
    ///
    /// When the token endpoint refuses, cannot be reached or answers something unusable.
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<TokenResponse, Error> {
        let scope = key.scope().unwrap_or_else(|| self.scopes.join(" "));
        let mut params: Vec<(&str, &str)> = vec![("grant_type", &self.grant_type)];
        push_target(&mut params, key, &scope, &self.params);
        self.endpoint.token_request(&params).await
    }
}

/// The start of a source's identity: the token endpoint's URL, the client id, the grant type,
/// and the thumbprint of the DPoP key its tokens are bound to (a token bound to one replica's
/// key is useless to a replica with another, so they must not share it).
pub(super) fn identity_of(
    endpoint: &TokenEndpoint,
    grant_type: &str,
) -> form_urlencoded::Serializer<'static, String> {
    let mut identity = form_urlencoded::Serializer::new(String::new());
    identity
        .append_pair("token_url", &url_text(endpoint))
        .append_pair("client_id", endpoint.client_id())
        .append_pair("grant_type", grant_type);
    if let Some(key) = endpoint.dpop_key() {
        identity.append_pair("dpop_jkt", key.thumbprint());
    }
    identity
}

/// Appends what the token is for: `scope` (if not empty), the configured `params` except those
/// the key replaces (its audiences replace every `audience`, its resources every `resource`,
/// each of its parameters those of the same name), then the key's audiences, resources and
/// parameters. Shared by the grants that take a [`TokenKey`].
pub(super) fn push_target<'a>(
    out: &mut Vec<(&'a str, &'a str)>,
    key: &'a TokenKey,
    scope: &'a str,
    params: &'a [(String, String)],
) {
    if !scope.is_empty() {
        out.push(("scope", scope));
    }
    let replaced = |name: &str| match name {
        "audience" => key.audiences().next().is_some(),
        "resource" => key.resources().next().is_some(),
        _ => key.params().any(|(other, _)| other == name),
    };
    out.extend(
        params
            .iter()
            .filter(|(name, _)| !replaced(name))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    out.extend(key.audiences().map(|audience| ("audience", audience)));
    out.extend(key.resources().map(|resource| ("resource", resource)));
    out.extend(key.params());
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("endpoint", &self.endpoint)
            .field("grant_type", &self.grant_type)
            .field("params", &Params(&self.params))
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The token endpoint's URL as an identity names it: without userinfo, should it carry any.
pub(super) fn url_text(endpoint: &TokenEndpoint) -> String {
    let uri = endpoint.token_url();
    let authority = uri.authority().map_or("", |authority| {
        authority.as_str().rsplit('@').next().unwrap_or_default()
    });
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    format!(
        "{}://{authority}{path}",
        uri.scheme_str().unwrap_or("https")
    )
}

/// A token source: fails with a [`SourceError`] wrapping the [`Error`], whose retry hint
/// carries the endpoint's `Retry-After` and refusals that retrying cannot fix.
impl Service<TokenRequest> for ClientCredentials {
    type Response = Token;
    type Error = SourceError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, SourceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.request_token_for(req.key()).await?.into_token()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::DpopKey;

    /// Replicas whose tokens are bound to different DPoP keys must not share them: a token
    /// bound to another replica's key is refused at every request.
    #[test]
    fn the_identity_names_the_dpop_key_tokens_are_bound_to() {
        let endpoint = |key: Option<DpopKey>| {
            let builder = TokenEndpoint::builder("https://as.example.com/token", "fleet")
                .client_secret("s3cr3t");
            match key {
                Some(key) => builder.dpop(key),
                None => builder,
            }
            .build()
            .unwrap()
        };
        let (a, b) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let bearer = ClientCredentials::new(endpoint(None)).identity();
        let bound_a = ClientCredentials::new(endpoint(Some(a.clone()))).identity();
        let bound_b = ClientCredentials::new(endpoint(Some(b))).identity();
        assert!(!bearer.contains("dpop_jkt"), "{bearer}");
        assert!(
            bound_a.contains(&format!("dpop_jkt={}", a.thumbprint())),
            "{bound_a}"
        );
        assert_ne!(bound_a, bound_b);
        assert_eq!(
            bound_a,
            ClientCredentials::new(endpoint(Some(a))).identity(),
            "the same key, the same identity"
        );
    }
}
