//! Tokens and token requests.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

use crate::key::TokenKey;

/// A secret string: an access token, a refresh token, a client secret.
///
/// The secret is reachable only through [`secret`](Self::secret): `Debug` prints the kind's
/// name and a placeholder (`AccessToken(<redacted>)`) and there is no `Display`, so a secret
/// cannot end up in a log line by accident. Its memory is overwritten with zeros when it is
/// dropped. `K` says what the secret is ([`AccessToken`], [`RefreshToken`], or the OAuth 2.0
/// grants' `oauth2::ClientSecret`), so that one cannot be passed where another is expected.
///
/// ```
/// use tower_bearer::AccessToken;
///
/// let token = AccessToken::new("s3cr3t");
/// assert_eq!(token.secret(), "s3cr3t");
/// assert_eq!(format!("{token:?}"), "AccessToken(<redacted>)");
/// ```
pub struct Secret<K: SecretKind> {
    value: String,
    kind: PhantomData<fn() -> K>,
}

/// What a [`Secret`] is: the name its `Debug` output shows. Implemented by this crate's kinds
/// only.
pub trait SecretKind: sealed::Sealed {
    /// The name `Debug` prints, such as `AccessToken`.
    const NAME: &'static str;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// The kind of an [`AccessToken`].
#[derive(Debug)]
pub enum Access {}

impl sealed::Sealed for Access {}

impl SecretKind for Access {
    const NAME: &'static str = "AccessToken";
}

/// The kind of a [`RefreshToken`].
#[derive(Debug)]
pub enum Refresh {}

impl sealed::Sealed for Refresh {}

impl SecretKind for Refresh {
    const NAME: &'static str = "RefreshToken";
}

/// An OAuth 2.0 access token: a [`Secret`], so its `Debug` output is `AccessToken(<redacted>)`.
pub type AccessToken = Secret<Access>;

/// An OAuth 2.0 refresh token (RFC 6749 §1.5): a [`Secret`], so its `Debug` output is
/// `RefreshToken(<redacted>)`.
pub type RefreshToken = Secret<Refresh>;

impl<K: SecretKind> Secret<K> {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            value: secret.into(),
            kind: PhantomData,
        }
    }

    /// The secret itself. Handle with care: never log it.
    pub fn secret(&self) -> &str {
        &self.value
    }
}

impl<K: SecretKind> Drop for Secret<K> {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl<K: SecretKind> fmt::Debug for Secret<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(<redacted>)", K::NAME)
    }
}

// By hand: derived, they would require the kinds, which are never values, to be `Clone` and
// `PartialEq`.
impl<K: SecretKind> Clone for Secret<K> {
    fn clone(&self) -> Self {
        Self::new(self.value.clone())
    }
}

impl<K: SecretKind> PartialEq for Secret<K> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<K: SecretKind> Eq for Secret<K> {}

impl<K: SecretKind, T: Into<String>> From<T> for Secret<K> {
    fn from(secret: T) -> Self {
        Self::new(secret)
    }
}

/// When a token stops being valid, as its issuer stated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// Valid for this long, counted from when the token request was sent (the OAuth 2.0
    /// `expires_in`). Counting from the request rather than the answer means network delay
    /// can only make the cache refresh early, never late.
    In(Duration),
    /// Valid until this instant.
    At(Instant),
}

/// A token handed out by a [`TokenSource`](crate::TokenSource).
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::Token;
///
/// let token = Token::new("s3cr3t").with_expires_in(Duration::from_secs(3600));
/// assert_eq!(token.access_token().secret(), "s3cr3t");
/// assert!(!format!("{token:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
pub struct Token {
    access_token: AccessToken,
    token_type: Option<Box<str>>,
    expiry: Option<Expiry>,
    refresh_token: Option<RefreshToken>,
    scope: Option<Box<str>>,
    renewal_window: Option<Duration>,
    extensions: http::Extensions,
}

impl Token {
    /// A token with no stated expiry; the cache gives it its
    /// [default lifetime](crate::cache::TokenCacheBuilder::default_lifetime).
    pub fn new(access_token: impl Into<String>) -> Self {
        Self {
            access_token: AccessToken::new(access_token),
            token_type: None,
            expiry: None,
            refresh_token: None,
            scope: None,
            renewal_window: None,
            extensions: http::Extensions::new(),
        }
    }

    /// Sets the lifetime, counted from when the token request was sent.
    pub fn with_expires_in(mut self, lifetime: Duration) -> Self {
        self.expiry = Some(Expiry::In(lifetime));
        self
    }

    /// Sets the instant after which the token is no longer valid.
    pub fn with_expires_at(mut self, deadline: Instant) -> Self {
        self.expiry = Some(Expiry::At(deadline));
        self
    }

    /// Sets the `token_type` the issuer reported. It is informational: the default placement
    /// writes the scheme `Bearer` whatever the case of this value.
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = Some(token_type.into().into_boxed_str());
        self
    }

    /// Attaches a refresh token.
    pub fn with_refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// Sets the scope granted with the token (space-separated, RFC 6749 §3.3).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into().into_boxed_str());
        self
    }

    /// Says that the issuer hands out a new token only in the last `window` of this one's
    /// life: asked earlier, it answers with this same token. A token cache then does not
    /// refresh this token before its stated expiry minus `window`, but still before its usable
    /// end, early enough for the slowest recent fetch, so that requests never wait for it.
    ///
    /// The GCP metadata server is such an issuer: it keeps serving a cached access token until
    /// its last minutes (`workload::GcpMetadata` states this window on its tokens).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_bearer::Token;
    ///
    /// let token = Token::new("t0k3n")
    ///     .with_expires_in(Duration::from_secs(3600))
    ///     .with_renewal_window(Duration::from_secs(240));
    /// assert_eq!(token.renewal_window(), Some(Duration::from_secs(240)));
    /// ```
    ///
    /// Default: none; the cache plans the refresh from the lifetime alone.
    pub fn with_renewal_window(mut self, window: Duration) -> Self {
        self.renewal_window = Some(window);
        self
    }

    /// The window at the end of this token's life in which its issuer hands out a new one, if
    /// the source stated it ([`with_renewal_window`](Self::with_renewal_window)).
    pub fn renewal_window(&self) -> Option<Duration> {
        self.renewal_window
    }

    /// Attaches a value of any type, such as fields of the token response that this crate does
    /// not interpret (the OAuth 2.0 sources attach `oauth2::ExtraFields` this way).
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// Values attached with [`with_extension`](Self::with_extension).
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The `token_type` the issuer reported, if any.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// The expiry the issuer stated, if any.
    pub fn expiry(&self) -> Option<Expiry> {
        self.expiry
    }

    /// The refresh token, if one came with the access token.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The granted scope, if the issuer stated it.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expiry", &self.expiry)
            .field("refresh_token", &self.refresh_token)
            .field("scope", &self.scope)
            .field("renewal_window", &self.renewal_window)
            .finish()
    }
}

/// Why the cache asks its source for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No token has been fetched yet (or the last one was dropped with
    /// [`TokenCache::invalidate`](crate::TokenCache::invalidate)).
    Initial,
    /// The current token is still valid but close to its expiry: a refresh ahead of time.
    Expiring,
    /// The current token has expired.
    Expired,
    /// A server rejected the current token (HTTP 401).
    Rejected,
    /// The application asked for a new token with [`TokenCache::refresh`](crate::TokenCache::refresh).
    Forced,
}

/// The request a [`TokenSource`](crate::TokenSource) answers with a [`Token`].
///
/// Requests compare equal when their reasons, keys and [current](Self::current) tokens' access
/// tokens are equal.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenRequest {
    reason: Reason,
    key: TokenKey,
    /// Shared, so that cloning a request (as tower's retry middleware does) stays cheap.
    current: Option<Arc<Token>>,
    refresh_token: Option<RefreshToken>,
}

impl PartialEq for TokenRequest {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason
            && self.key == other.key
            && self.current.as_ref().map(|token| token.access_token())
                == other.current.as_ref().map(|token| token.access_token())
            && self.refresh_token == other.refresh_token
    }
}

impl Eq for TokenRequest {}

impl TokenRequest {
    /// A request for the given reason, for the [default key](TokenKey::default). The cache
    /// builds these; sources and tests may too.
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            key: TokenKey::default(),
            current: None,
            refresh_token: None,
        }
    }

    /// The same request, asking the source to redeem `refresh_token` rather than the one it
    /// holds: the latest of a grant that several processes share, which a shared store
    /// (`shared::SharedCache`, with the `redis` feature) hands to the one process it lets
    /// refresh. `oauth2::RefreshTokenSource` redeems it, and keeps the refresh token it gets
    /// back; sources without refresh tokens ignore it.
    pub fn with_refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// The refresh token to redeem, if the caller holds a later one than the source (see
    /// [`with_refresh_token`](Self::with_refresh_token)).
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The same request, saying which token the new one replaces.
    pub fn with_current(mut self, token: impl Into<Arc<Token>>) -> Self {
        self.current = Some(token.into());
        self
    }

    /// The token the new one replaces, if there is one: the cache's current token when it
    /// refreshes ahead of expiry ([`Reason::Expiring`]), after expiry ([`Reason::Expired`]) or
    /// on [`TokenCache::refresh`](crate::TokenCache::refresh) ([`Reason::Forced`]), and the
    /// token a server refused ([`Reason::Rejected`]) or that
    /// [`TokenCache::invalidate`](crate::TokenCache::invalidate) dropped (the next fetch's
    /// reason is then [`Reason::Initial`]). A source that shares tokens with other
    /// processes (such as `shared::SharedCache`, with the `redis` feature) uses it to never
    /// hand this token back.
    pub fn current(&self) -> Option<&Token> {
        self.current.as_deref()
    }

    /// The same request, for the token of `key`.
    pub fn with_key(mut self, key: TokenKey) -> Self {
        self.key = key;
        self
    }

    /// Why a token is needed.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// What the token is for: the audiences, scopes, resources and parameters to ask for. A
    /// source serving several destinations must fetch a token for exactly this key; the
    /// [default key](TokenKey::default) asks for what the source is configured with.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }
}

/// Bytes holding a secret: the memory is overwritten with zeros when the last clone is dropped.
pub(crate) fn secret_bytes(secret: Vec<u8>) -> Bytes {
    Bytes::from_owner(Zeroizing::new(secret))
}
