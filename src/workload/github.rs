//! GitHub Actions' OIDC tokens: a JWT naming the repository, workflow and job, for an audience.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use http::{Request, Uri};
use http_body_util::Full;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::endpoint::{self, check_url, var, Client, Plain};
use super::error::{Error, ErrorKind};
use super::jwt;
use crate::oauth2::transport::Transport;
use crate::oauth2::{AssertionFuture, AssertionRequest, AssertionSource};
use crate::{BoxError, Token, TokenKey};

const ORIGIN: &str = "the GitHub Actions OIDC token service";

/// The URL a job asks for its OIDC token at (set when the job has `id-token: write`).
pub const ACTIONS_ID_TOKEN_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer token that request needs.
pub const ACTIONS_ID_TOKEN_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// An assertion kept for reuse must stay valid this long after it is handed out.
const REUSE_MARGIN: Duration = Duration::from_secs(60);

/// A token source for GitHub Actions' OIDC tokens, following GitHub's "About security
/// hardening with OpenID Connect" and the `@actions/core` `getIDToken` protocol:
/// `GET {ACTIONS_ID_TOKEN_REQUEST_URL}&audience={audience}` with
/// `Authorization: Bearer {ACTIONS_ID_TOKEN_REQUEST_TOKEN}`, answered by `{"value": "<jwt>"}`.
/// The token lives until its JWT's `exp`.
///
/// The JWT proves which repository, workflow and job runs: trade it for a cloud's access token
/// (as a subject token of the token exchange grant, or as a federated client assertion: this
/// type is an [`AssertionSource`] for
/// [`TokenEndpointBuilder::client_assertion`](crate::oauth2::TokenEndpointBuilder::client_assertion),
/// reusing a JWT while it has more than a minute left).
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
/// use tower_bearer::workload::GitHubActionsOidc;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Entra ID workload identity federation: the GitHub token is the client assertion.
/// let github = GitHubActionsOidc::from_env().audience("api://AzureADTokenExchange").build()?;
/// let endpoint = TokenEndpoint::builder(
///     "https://login.microsoftonline.com/my-tenant/oauth2/v2.0/token",
///     "00000000-0000-0000-0000-000000000001",
/// )
/// .client_assertion(github)
/// .build()?;
/// let source = ClientCredentials::new(endpoint).scope("https://graph.microsoft.com/.default");
/// # drop(source);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GitHubActionsOidc {
    inner: Arc<Inner>,
}

struct Inner {
    url: Uri,
    request_token: Zeroizing<String>,
    audience: Option<String>,
    timeout: Duration,
    transport: Transport,
    /// The last JWT handed out as an assertion, and when it expires.
    last: Mutex<Option<(Token, Instant)>>,
}

/// Builds a [`GitHubActionsOidc`]; made by [`GitHubActionsOidc::from_env`],
/// [`GitHubActionsOidc::from_lookup`] or [`GitHubActionsOidc::builder`].
pub struct GitHubActionsOidcBuilder {
    url: Option<String>,
    request_token: Option<Zeroizing<String>>,
    audience: Option<String>,
    timeout: Duration,
    client: Client,
}

impl GitHubActionsOidc {
    /// A builder reading `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`
    /// from the process environment.
    pub fn from_env() -> GitHubActionsOidcBuilder {
        Self::from_lookup(endpoint::process_env)
    }

    /// A builder reading the same variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> GitHubActionsOidcBuilder {
        let mut builder = Self::builder();
        builder.url = var(&lookup, ACTIONS_ID_TOKEN_REQUEST_URL);
        builder.request_token = var(&lookup, ACTIONS_ID_TOKEN_REQUEST_TOKEN).map(Zeroizing::new);
        builder
    }

    /// A builder that reads no environment: give it
    /// [`request_url`](GitHubActionsOidcBuilder::request_url) and
    /// [`request_token`](GitHubActionsOidcBuilder::request_token).
    pub fn builder() -> GitHubActionsOidcBuilder {
        GitHubActionsOidcBuilder {
            url: None,
            request_token: None,
            audience: None,
            timeout: endpoint::DEFAULT_TIMEOUT,
            client: Client::default(),
        }
    }

    /// Asks for a JWT for `key`'s first audience (or the configured one) now, bypassing any
    /// cache.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached, refuses, or answers something that is not a JWT.
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<Token, Error> {
        let inner = &self.inner;
        let mut url = inner.url.to_string();
        if let Some(audience) = key.audiences().next().or(inner.audience.as_deref()) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("audience=");
            url.push_str(&endpoint::encode(audience));
        }
        let mut request = Request::new(Full::default());
        *request.uri_mut() = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                ORIGIN,
                format!("cannot make the URL: {e}"),
            )
        })?;
        let bearer = Zeroizing::new(format!("Bearer {}", inner.request_token.as_str()));
        let mut value = HeaderValue::from_str(&bearer).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                ORIGIN,
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        let reply = endpoint::send(ORIGIN, &inner.transport, inner.timeout, request).await?;
        if !reply.status.is_success() {
            return Err(reply.error(ORIGIN, &[inner.request_token.as_str()]));
        }
        let fields = reply.json(ORIGIN)?;
        let value = endpoint::token_field(ORIGIN, &fields, "value")?;
        let times = jwt::times(&value).map_err(|jwt::NotAJwt(why)| {
            Error::new(
                ErrorKind::InvalidToken,
                ORIGIN,
                format!("its `value` is not a usable JWT: {why}"),
            )
        })?;
        let remaining = times.remaining();
        if remaining.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidToken,
                ORIGIN,
                "its JWT has already expired by this machine's clock (is the clock right?)",
            ));
        }
        Ok(Token::new(value).with_expires_in(remaining))
    }
}

/// A federated client assertion: the job's JWT for the configured audience, reused while it
/// has more than a minute left.
impl AssertionSource for GitHubActionsOidc {
    fn assertion(&self, _request: AssertionRequest) -> AssertionFuture {
        let this = self.clone();
        Box::pin(async move {
            let reuse = {
                let last = this
                    .inner
                    .last
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                last.as_ref()
                    .filter(|(_, expires)| {
                        expires.saturating_duration_since(Instant::now()) > REUSE_MARGIN
                    })
                    .map(|(token, _)| token.access_token().secret().to_owned())
            };
            if let Some(jwt) = reuse {
                return Ok(jwt);
            }
            let token = this
                .request_token_for(&TokenKey::default())
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            let expires = match token.expiry() {
                Some(crate::Expiry::In(remaining)) => Instant::now().checked_add(remaining),
                Some(crate::Expiry::At(at)) => Some(at),
                _ => None,
            }
            // A JWT stating an absurd expiry is reused as long as any.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600));
            let jwt = token.access_token().secret().to_owned();
            *this
                .inner
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((token, expires));
            Ok(jwt)
        })
    }
}

impl GitHubActionsOidcBuilder {
    /// The URL to ask, in place of `ACTIONS_ID_TOKEN_REQUEST_URL`; `https`, or `http` to
    /// loopback.
    ///
    /// Default: `ACTIONS_ID_TOKEN_REQUEST_URL` (with [`from_env`](GitHubActionsOidc::from_env)).
    pub fn request_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The bearer token of the request, in place of `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    ///
    /// Default: `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (with
    /// [`from_env`](GitHubActionsOidc::from_env)).
    pub fn request_token(mut self, token: impl Into<String>) -> Self {
        self.request_token = Some(Zeroizing::new(token.into()));
        self
    }

    /// The audience (`aud`) of the JWTs, such as `api://AzureADTokenExchange` for Entra ID or
    /// `sts.amazonaws.com` for AWS. A token key's first audience replaces it.
    ///
    /// Default: none, and GitHub's default audience (the URL of the repository owner).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    http_client_setters!();

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotConfigured`] without a request URL or token (not in a GitHub Actions
    /// job, or a job without `permissions: id-token: write`); [`ErrorKind::Config`] for a URL
    /// that is not `https` (or `http` to loopback), or with no transport and no
    /// `default-client` feature.
    pub fn build(self) -> Result<GitHubActionsOidc, Error> {
        let missing = |name: &str| {
            Error::new(
                ErrorKind::NotConfigured,
                ORIGIN,
                format!(
                    "{name} is not set: not a GitHub Actions job, or the job lacks \
                     `permissions: id-token: write`"
                ),
            )
        };
        let url = self
            .url
            .ok_or_else(|| missing(ACTIONS_ID_TOKEN_REQUEST_URL))?;
        let request_token = self
            .request_token
            .ok_or_else(|| missing(ACTIONS_ID_TOKEN_REQUEST_TOKEN))?;
        let url = check_url(ORIGIN, ACTIONS_ID_TOKEN_REQUEST_URL, &url, Plain::Loopback)?;
        Ok(GitHubActionsOidc {
            inner: Arc::new(Inner {
                url,
                request_token,
                audience: self.audience,
                timeout: self.timeout,
                transport: self.client.build(ORIGIN)?,
                last: Mutex::new(None),
            }),
        })
    }
}

impl fmt::Debug for GitHubActionsOidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("GitHubActionsOidc")
            .field("request_url", &inner.url)
            .field("request_token", &"<redacted>")
            .field("audience", &inner.audience)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for GitHubActionsOidcBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubActionsOidcBuilder")
            .field("request_url", &self.url)
            .field(
                "request_token",
                &self.request_token.as_ref().map(|_| "<redacted>"),
            )
            .field("audience", &self.audience)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

token_source_service!(GitHubActionsOidc);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_say_what_is_missing_and_never_show_the_token() {
        let err = GitHubActionsOidc::from_lookup(|_| None)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotConfigured);
        assert!(
            err.to_string().contains(ACTIONS_ID_TOKEN_REQUEST_URL),
            "{err}"
        );
        let env = |name: &str| match name {
            ACTIONS_ID_TOKEN_REQUEST_URL => Some("http://example.com/token?api-version=2.0".into()),
            ACTIONS_ID_TOKEN_REQUEST_TOKEN => Some("r3qu3st-t0k3n".into()),
            _ => None,
        };
        let builder = GitHubActionsOidc::from_lookup(env);
        assert!(!format!("{builder:?}").contains("r3qu3st"));
        let err = builder.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "plain http to a remote host");
        let source = GitHubActionsOidc::from_lookup(env)
            .request_url("https://token.actions.githubusercontent.com/x?api-version=2.0")
            .build()
            .unwrap();
        assert!(!format!("{source:?}").contains("r3qu3st"));
    }
}
