//! The token exchange grant (RFC 8693): a subject token from any token source traded for a token
//! the token endpoint issues.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::client_credentials::push_target;
use super::{Error, TokenEndpoint, TokenResponse};
use crate::shown::{shown, MAX_SHOWN};
use crate::source::{BoxSource, RetryHint};
use crate::{Expiry, Reason, SourceError, Token, TokenKey, TokenRequest, TokenSource};

/// A token source for the token exchange grant (RFC 8693): it trades a *subject token*, which
/// says on whose behalf the client acts, for a token the token endpoint issues, optionally for
/// an audience, a resource or a scope, and optionally naming an *actor* that acts for the
/// subject.
///
/// The subject token comes from any [`TokenSource`]: a token file (a Kubernetes
/// service-account token, a CI job's OIDC token), another layer's [`TokenCache`](crate::TokenCache)
/// (which is a token source), an `oauth2` grant, [`source_fn`](crate::source_fn), or a fixed
/// [`StaticToken`](crate::StaticToken) ([`from_subject_token`](Self::from_subject_token)). It
/// is asked for on every exchange, so it must keep its own token fresh; a cache or a file
/// source answers at once.
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint, TokenExchange};
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // This service's own token, from another layer that the service also uses.
/// let own = TokenEndpoint::builder("https://login.example.com/token", "orders")
///     .client_secret(std::env::var("OAUTH_CLIENT_SECRET")?)
///     .build()?;
/// let own = BearerAuthLayer::new(ClientCredentials::new(own));
///
/// // Traded at the security token service for a token that the billing API accepts.
/// let sts = TokenEndpoint::builder("https://sts.example.com/token", "orders")
///     .client_secret(std::env::var("STS_CLIENT_SECRET")?)
///     .build()?;
/// let exchange = TokenExchange::new(sts, own.cache().clone())
///     .subject_token_type(TokenExchange::ACCESS_TOKEN)
///     .audience("https://billing.example.com/");
/// let billing = BearerAuthLayer::new(exchange);
/// # drop(billing);
/// # Ok(())
/// # }
/// ```
///
/// # The answer
///
/// `issued_token_type` is required (RFC 8693 §2.2.1): an answer without it is
/// [`ErrorKind::InvalidResponse`](super::ErrorKind::InvalidResponse), and so is one whose issued
/// type differs from the [`requested_token_type`](Self::requested_token_type), if one was set.
/// A `token_type` of `N_A` (the issued token is not an access token) is accepted.
///
/// # When the subject token changes
///
/// Every exchange asks the subject source, so the first exchange after the subject token
/// changed (a token file rotated, another layer refreshed) uses the new one. An exchanged token
/// is not kept past the expiry of the subject token it was made from (nor the actor token's), as
/// the source states it: its expiry is cut to theirs, so the cache exchanges again by then. A
/// token made from a subject that changed meanwhile is otherwise used until that point, its
/// own expiry, or a 401. Each exchanged token carries the [`SubjectDigest`] of its subject token
/// as an extension ([`Token::extensions`]), to compare with the subject's current one.
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: TokenEndpoint,
    subject: Arc<Party>,
    actor: Option<Arc<Party>>,
    requested_token_type: Option<Arc<str>>,
    params: Arc<Vec<(String, String)>>,
    scopes: Arc<Vec<String>>,
    within_subject_expiry: bool,
}

/// A subject or an actor: where its token comes from and the token's type.
struct Party {
    /// A mutex only so that the exchange is `Sync` (a boxed source is not): it is held just
    /// long enough to clone the source.
    source: Mutex<BoxSource>,
    token_type: String,
    role: Role,
}

/// Which token of an exchange, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Subject,
    Actor,
}

/// A token asked from a party: the token, and when it stops being valid as its source stated.
struct PartyToken {
    token: Token,
    valid_until: Option<Instant>,
}

/// The digest of the subject token a token was exchanged for: the base64url (no padding) of its
/// SHA-256. Attached to each token a [`TokenExchange`] issues, and part of its
/// [identity](TokenExchange::identity); never the token itself.
///
/// ```
/// use tower_bearer::oauth2::SubjectDigest;
///
/// let digest = SubjectDigest::of("subject-token");
/// assert_eq!(digest.as_str().len(), 43);
/// assert!(!digest.as_str().contains("subject-token"));
/// assert_eq!(digest, SubjectDigest::of("subject-token"));
/// assert_ne!(digest, SubjectDigest::of("another-subject-token"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubjectDigest(Arc<str>);

impl SubjectDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Arc::from(
            URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
        ))
    }

    /// The digest as text (43 characters of base64url).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TokenExchange {
    /// The `grant_type` of a token exchange request.
    pub const GRANT_TYPE: &'static str = "urn:ietf:params:oauth:grant-type:token-exchange";
    /// Token type identifier (RFC 8693 §3): an OAuth 2.0 access token.
    pub const ACCESS_TOKEN: &'static str = "urn:ietf:params:oauth:token-type:access_token";
    /// Token type identifier (RFC 8693 §3): an OAuth 2.0 refresh token.
    pub const REFRESH_TOKEN: &'static str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// Token type identifier (RFC 8693 §3): an OpenID Connect ID token.
    pub const ID_TOKEN: &'static str = "urn:ietf:params:oauth:token-type:id_token";
    /// Token type identifier (RFC 8693 §3): a base64url-encoded SAML 1.1 assertion.
    pub const SAML1: &'static str = "urn:ietf:params:oauth:token-type:saml1";
    /// Token type identifier (RFC 8693 §3): a base64url-encoded SAML 2.0 assertion.
    pub const SAML2: &'static str = "urn:ietf:params:oauth:token-type:saml2";
    /// Token type identifier (RFC 7519 §9, RFC 8693 §3): a JWT, such as a Kubernetes
    /// service-account token or a CI job's OIDC token.
    pub const JWT: &'static str = "urn:ietf:params:oauth:token-type:jwt";
    /// The `token_type` of an issued token that is not an access token (RFC 8693 §2.2.1).
    pub const NOT_APPLICABLE: &'static str = "N_A";

    /// A source exchanging at `endpoint` the subject token that `subject` gives (asked for on
    /// each exchange, with the exchange's [reason](TokenRequest::reason)), sent as an
    /// [access token](Self::ACCESS_TOKEN) unless [`subject_token_type`](Self::subject_token_type)
    /// says otherwise; no actor, audience, resource, scope or requested token type.
    pub fn new(endpoint: TokenEndpoint, subject: impl TokenSource) -> Self {
        Self {
            endpoint,
            subject: Party::new(subject, Self::ACCESS_TOKEN.to_owned(), Role::Subject),
            actor: None,
            requested_token_type: None,
            params: Arc::default(),
            scopes: Arc::default(),
            within_subject_expiry: true,
        }
    }

    /// A source exchanging the fixed subject token `subject_token`, as
    /// [`new`](Self::new) with a [`StaticToken`](crate::StaticToken).
    pub fn from_subject_token(endpoint: TokenEndpoint, subject_token: impl Into<String>) -> Self {
        Self::new(endpoint, crate::StaticToken::new(subject_token))
    }

    /// Sets the `subject_token_type`: one of the identifiers of RFC 8693 §3 (the constants of
    /// this type, such as [`JWT`](Self::JWT) for a token file), or one the server defines.
    ///
    /// Default: [`ACCESS_TOKEN`](Self::ACCESS_TOKEN), since a token source gives access
    /// tokens; set [`JWT`](Self::JWT) for Kubernetes, cloud and CI identity tokens.
    pub fn subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject = Party::new_shared(&self.subject, token_type.into());
        self
    }

    /// Names an actor (RFC 8693 §1.1, delegation): `actor_token` from `source`, of type
    /// `token_type` (`actor_token_type`). Its token is asked for on every exchange, as the
    /// subject's.
    ///
    /// Default: none (impersonation, or whatever the server makes of a request without actor).
    pub fn actor(mut self, source: impl TokenSource, token_type: impl Into<String>) -> Self {
        self.actor = Some(Party::new(source, token_type.into(), Role::Actor));
        self
    }

    /// Sets the `requested_token_type`; the answer's `issued_token_type` must then be the same.
    ///
    /// Default: none, leaving the type to the server (usually an access token).
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.requested_token_type = Some(Arc::from(token_type.into()));
        self
    }

    /// Adds an `audience`: the logical name of a service the token is for (RFC 8693 §2.1). May
    /// be given several times.
    ///
    /// Default: none.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.param("audience", audience)
    }

    /// Adds a `resource`: the URI of a service the token is for (RFC 8693 §2.1, RFC 8707). May
    /// be given several times.
    ///
    /// Default: none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Adds a scope to request; scopes are sent space-separated.
    ///
    /// Default: none, leaving the scope to the server.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.scopes).push(scope.into());
        self
    }

    /// Adds several scopes.
    ///
    /// Default: none.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        Arc::make_mut(&mut self.scopes).extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Adds any other form parameter to the token request.
    ///
    /// Default: none.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.params).push((name.into(), value.into()));
        self
    }

    /// Whether an exchanged token's expiry is cut to that of the subject (and actor) token it
    /// was made from, when their sources state one, so that a token made from a subject token
    /// that expired or rotated away is not kept. Turn it off for a server whose tokens are meant
    /// to outlive short subject tokens (a 5-minute CI token traded for a 1-hour one), at the
    /// price of using a token made from an old subject until its own expiry.
    ///
    /// Default: `true`.
    pub fn within_subject_expiry(mut self, within: bool) -> Self {
        self.within_subject_expiry = within;
        self
    }

    /// The token endpoint this source asks, and the client it authenticates as there.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    /// What makes this source's tokens, as form-encoded text, with the subject token
    /// `subject_token` (and actor token `actor_token`, when an actor is set): the token
    /// endpoint's URL, the client id, the grant type, the token types, the [`SubjectDigest`]s of
    /// the subject and actor tokens (never the tokens), the requested token type, the scopes and
    /// the other parameters (except credentials). For the key of a shared cache level
    /// (feature `redis`): sources exchanging different subject tokens never share a token.
    ///
    /// ```
    /// use tower_bearer::oauth2::{SubjectDigest, TokenEndpoint, TokenExchange};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let endpoint = TokenEndpoint::builder("https://sts.example.com/token", "orders")
    ///     .client_secret("s3cr3t")
    ///     .build()?;
    /// let exchange = TokenExchange::new(endpoint, tower_bearer::StaticToken::new("subject"))
    ///     .audience("billing");
    /// let identity = exchange.identity_for("subject", None);
    /// assert!(identity.contains(SubjectDigest::of("subject").as_str()));
    /// assert!(!identity.contains("=subject&") && !identity.contains("s3cr3t"));
    /// assert_ne!(identity, exchange.identity_for("another-subject", None));
    /// # Ok(())
    /// # }
    /// ```
    pub fn identity_for(&self, subject_token: &str, actor_token: Option<&str>) -> String {
        let mut identity = super::client_credentials::identity_of(&self.endpoint, Self::GRANT_TYPE);
        identity
            .append_pair("subject_token_type", &self.subject.token_type)
            .append_pair("subject_sha256", SubjectDigest::of(subject_token).as_str());
        if let Some(actor) = &self.actor {
            identity.append_pair("actor_token_type", &actor.token_type);
            identity.append_pair(
                "actor_sha256",
                SubjectDigest::of(actor_token.unwrap_or_default()).as_str(),
            );
        }
        if let Some(requested) = &self.requested_token_type {
            identity.append_pair("requested_token_type", requested);
        }
        identity.append_pair("scope", &self.scopes.join(" "));
        for (name, value) in self.params.iter() {
            if !super::redact::is_credential(name) {
                identity.append_pair(name, value);
            }
        }
        identity.finish()
    }

    /// [`identity_for`](Self::identity_for) the subject (and actor) token their sources give
    /// now, for a shared cache level built at startup. Its key stays fixed while the subject
    /// token rotates: replicas that started with different subject tokens never share a token;
    /// replicas that started with the same one (a token file they all read, a fixed token) keep
    /// sharing after it rotates, and a token stored under that key may then have been made from
    /// a later subject token of that same origin.
    ///
    /// # Errors
    ///
    /// When the subject or actor source fails ([`ErrorKind::SubjectToken`](super::ErrorKind::SubjectToken)).
    pub async fn identity(&self) -> Result<String, Error> {
        let subject = self.subject.token(Reason::Initial).await?;
        let actor = match &self.actor {
            Some(actor) => Some(actor.token(Reason::Initial).await?),
            None => None,
        };
        Ok(self.identity_for(
            subject.token.access_token().secret(),
            actor
                .as_ref()
                .map(|actor| actor.token.access_token().secret()),
        ))
    }

    /// Exchanges a subject token now, bypassing any cache.
    ///
    /// # Errors
    ///
    /// When the subject or actor source fails, or the token endpoint refuses, cannot be
    /// reached or answers something unusable.
    pub async fn request_token(&self) -> Result<TokenResponse, Error> {
        self.request_token_for(&TokenKey::default()).await
    }

    /// Exchanges a subject token for `key` now, bypassing any cache. What the key names
    /// replaces what this source is configured with, kind by kind: its scopes the configured
    /// scopes, its audiences the `audience` parameters, its resources the `resource` parameters,
    /// and each of its parameters the configured ones of the same name.
    ///
    /// # Errors
    ///
    /// When the subject or actor source fails, or the token endpoint refuses, cannot be
    /// reached or answers something unusable.
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<TokenResponse, Error> {
        Ok(self.exchange(key, Reason::Initial).await?.response)
    }

    /// Asks the subject (and actor) source, then the token endpoint, and checks the answer.
    async fn exchange(&self, key: &TokenKey, reason: Reason) -> Result<Exchanged, Error> {
        let subject = self.subject.token(reason).await?;
        let actor = match &self.actor {
            Some(actor) => Some((actor, actor.token(reason).await?)),
            None => None,
        };
        let scope = key.scope().unwrap_or_else(|| self.scopes.join(" "));
        let mut params: Vec<(&str, &str)> = vec![
            ("grant_type", Self::GRANT_TYPE),
            ("subject_token", subject.token.access_token().secret()),
            ("subject_token_type", &self.subject.token_type),
        ];
        if let Some((actor, token)) = &actor {
            params.push(("actor_token", token.token.access_token().secret()));
            params.push(("actor_token_type", &actor.token_type));
        }
        if let Some(requested) = &self.requested_token_type {
            params.push(("requested_token_type", requested));
        }
        push_target(&mut params, key, &scope, &self.params);
        let response = self.endpoint.token_request(&params).await?;
        self.check_issued_type(&response)?;
        let valid_until = [Some(&subject), actor.as_ref().map(|(_, token)| token)]
            .into_iter()
            .flatten()
            .filter_map(|party| party.valid_until)
            .min();
        Ok(Exchanged {
            response,
            digest: SubjectDigest::of(subject.token.access_token().secret()),
            valid_until: valid_until.filter(|_| self.within_subject_expiry),
        })
    }

    /// RFC 8693 §2.2.1: `issued_token_type` is required, and is what was asked for if
    /// something was.
    fn check_issued_type(&self, response: &TokenResponse) -> Result<(), Error> {
        let status = Some(http::StatusCode::OK);
        let issued = match response.extra().get("issued_token_type") {
            Some(Value::String(issued)) if !issued.is_empty() => issued,
            None | Some(Value::Null) => {
                return Err(Error::invalid_response(
                    status,
                    "no issued_token_type (RFC 8693 §2.2.1 requires it in a token exchange \
                     response)",
                ))
            }
            Some(_) => {
                return Err(Error::invalid_response(
                    status,
                    "issued_token_type is not a non-empty string",
                ))
            }
        };
        match &self.requested_token_type {
            Some(requested) if **requested != **issued => Err(Error::invalid_response(
                status,
                format!(
                    "requested_token_type {:?}, but the server issued {:?}",
                    shown(requested, MAX_SHOWN).as_str(),
                    shown(issued, MAX_SHOWN).as_str()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// An exchange's answer, and what the token made of it must know of the subject.
struct Exchanged {
    response: TokenResponse,
    digest: SubjectDigest,
    valid_until: Option<Instant>,
}

impl Exchanged {
    fn into_token(self) -> Token {
        let token = self.response.into_token().with_extension(self.digest);
        let Some(limit) = self.valid_until else {
            return token;
        };
        let expires_at = match token.expiry() {
            Some(Expiry::At(at)) => Some(at),
            Some(Expiry::In(lifetime)) => Instant::now().checked_add(lifetime),
            _ => None,
        };
        match expires_at {
            Some(at) if at <= limit => token,
            _ => token.with_expires_at(limit),
        }
    }
}

impl Party {
    fn new(source: impl TokenSource, token_type: String, role: Role) -> Arc<Self> {
        Arc::new(Self {
            source: Mutex::new(source.into_box()),
            token_type,
            role,
        })
    }

    /// The same source, with another token type.
    fn new_shared(this: &Self, token_type: String) -> Arc<Self> {
        Arc::new(Self {
            source: Mutex::new(this.boxed()),
            token_type,
            role: this.role,
        })
    }

    fn boxed(&self) -> BoxSource {
        self.source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The party's token, from its source, asked for `reason` (the exchange's own).
    async fn token(&self, reason: Reason) -> Result<PartyToken, Error> {
        // Counted from before the request, as the cache counts an `expires_in`.
        let asked_at = Instant::now();
        let token = self
            .boxed()
            .oneshot(TokenRequest::new(reason))
            .await
            .map_err(|error| self.failed(error))?;
        if token.access_token().secret().is_empty() {
            return Err(Error::exchange_input(
                format!("the {} source gave an empty token", self.role),
                None,
                RetryHint::Backoff,
            ));
        }
        let valid_until = match token.expiry() {
            Some(Expiry::At(at)) => Some(at),
            Some(Expiry::In(lifetime)) => asked_at.checked_add(lifetime),
            _ => None,
        };
        Ok(PartyToken { token, valid_until })
    }

    /// The source's failure, keeping what it said about trying again.
    fn failed(&self, error: crate::BoxError) -> Error {
        let (retry, error) = match error.downcast::<SourceError>() {
            Ok(wrapped) => (wrapped.retry(), wrapped.into_inner()),
            Err(error) => match error.downcast::<crate::Error>() {
                Ok(cached) => (cached.retry(), cached as crate::BoxError),
                Err(error) => (RetryHint::Backoff, error),
            },
        };
        Error::exchange_input(
            format!("the {} source failed", self.role),
            Some(error),
            retry,
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subject => "subject token",
            Self::Actor => "actor token",
        })
    }
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The sources' tokens are never held here; the types are not secret.
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("subject_token_type", &self.subject.token_type)
            .field(
                "actor_token_type",
                &self.actor.as_ref().map(|actor| &actor.token_type),
            )
            .field("requested_token_type", &self.requested_token_type)
            .field("params", &super::redact::Params(&self.params))
            .field("scopes", &self.scopes)
            .field("within_subject_expiry", &self.within_subject_expiry)
            .finish_non_exhaustive()
    }
}

/// A token source: fails with a [`SourceError`] wrapping the [`Error`], whose retry hint
/// carries the endpoint's `Retry-After`, refusals that retrying cannot fix, and what a failing
/// subject or actor source said about trying again. Each token carries the [`SubjectDigest`]
/// of the subject token it was exchanged for.
impl Service<TokenRequest> for TokenExchange {
    type Response = Token;
    type Error = SourceError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, SourceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.exchange(req.key(), req.reason()).await?.into_token()) })
    }
}

#[cfg(test)]
mod tests;
