//! The one error type of the OAuth 2.0 token sources.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::shown::{shown, Shown, MAX_SHOWN};
use crate::source::RetryHint;
use crate::{BoxError, SourceError};

/// An error of an OAuth 2.0 token source: the token endpoint refused, could not be reached, or
/// answered something unusable; or an authorization redirect went wrong.
///
/// It exposes what RFC 6749 §5.2 defines ([`code`](Self::code),
/// [`description`](Self::description), [`uri`](Self::uri)), the HTTP [`status`](Self::status),
/// and whether trying again can help ([`is_retryable`](Self::is_retryable)). Cheap to clone.
///
/// It never contains a secret: request bodies and credentials are never part of it. Where the
/// server's answer echoes a credential the request carried (a client secret, the Basic
/// credentials, a refresh token, a code or verifier) in the form it was sent, or
/// form-urlencoded, percent-encoded or JSON-escaped, the echo is replaced by `<redacted>`; where
/// a credential still shows through another encoding (percent-encoding in lower case, HTML
/// entities, other JSON escapes, a line break or NULs inside it), the whole piece of text is
/// withheld. Text taken from the server (the code, description and URI, and the excerpt of an
/// error page) is shown safely: control characters and invisible formatting characters are
/// escaped (`\n`, `\u{1b}`), a backslash is doubled, and each piece is cut after 256 bytes with
/// a note of its full length, so a server cannot forge log lines or flood them.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    status: Option<StatusCode>,
    code: Option<ErrorCode>,
    description: Option<Shown>,
    uri: Option<Shown>,
    retry_after: Option<Duration>,
    source: Option<BoxError>,
    /// Where the error arose: only changes the wording of `Display`.
    at: At,
    /// For a [`ErrorKind::SubjectToken`]: whether its source said that trying again can help.
    retryable: bool,
}

/// The endpoint an [`Error`] arose at, for the wording of `Display`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    TokenEndpoint,
    /// The server's metadata document.
    Metadata,
    /// RFC 8628's device authorization endpoint.
    DeviceEndpoint,
}

/// The category of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The token endpoint answered with an OAuth 2.0 error (RFC 6749 §5.2), even with HTTP 200.
    OAuth,
    /// The token endpoint answered an HTTP error status without an OAuth 2.0 error body.
    Http,
    /// The token endpoint answered a redirect; it is not followed, so credentials never go to
    /// another address.
    Redirect,
    /// The token endpoint could not be reached, or the connection failed mid-answer.
    Transport,
    /// The token endpoint did not answer within the request timeout.
    Timeout,
    /// The answer could not be understood (not JSON or form data, no `access_token`, an
    /// `expires_in` that is not a number, ...).
    InvalidResponse,
    /// The answer's body was larger than the limit (1 MiB) and was not read further.
    BodyTooLarge,
    /// The source is misconfigured (an invalid URL, a plain `http` URL to a remote host, ...).
    Config,
    /// The authorization server redirected back with an error (for example `access_denied`),
    /// or the device code of the device authorization grant expired before the user approved
    /// (code [`ExpiredToken`](ErrorCode::ExpiredToken)).
    Authorization,
    /// The redirect back from the authorization server was wrong (a `state` or `iss` that does
    /// not match, no `code`), or did not come in time.
    Callback,
    /// The refresh token store failed to save or load.
    Store,
    /// The authorization server's metadata (RFC 8414, OpenID Connect Discovery) could not be
    /// fetched or is unusable: no document at the well-known locations, not a JSON object, no
    /// `token_endpoint`, an endpoint that is not an `https` URL.
    Metadata,
    /// The authorization server's metadata names another `issuer` than the one asked for (RFC
    /// 8414 §3.3): it must not be used, since it may come from an attacker impersonating it.
    IssuerMismatch,
    /// A client assertion (RFC 7523) could not be made: the key failed to sign, or the
    /// assertion source given to the token endpoint failed.
    ClientAssertion,
    /// A token exchange (RFC 8693) could not get its subject token or its actor token: the
    /// token's source failed (its error is the [`source`](StdError::source) of this one) or
    /// gave an empty token. No request was sent to the token endpoint.
    SubjectToken,
}

/// An OAuth 2.0 error code (RFC 6749 §5.2 and §4.1.2.1, RFC 8707).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `invalid_request`
    InvalidRequest,
    /// `invalid_client`: client authentication failed.
    InvalidClient,
    /// `invalid_grant`: the grant (code, refresh token, ...) is invalid, expired or revoked.
    InvalidGrant,
    /// `unauthorized_client`
    UnauthorizedClient,
    /// `unsupported_grant_type`
    UnsupportedGrantType,
    /// `invalid_scope`
    InvalidScope,
    /// `invalid_target`: an unknown or refused `resource` (RFC 8707).
    InvalidTarget,
    /// `access_denied`: the user or the server denied the authorization request.
    AccessDenied,
    /// `temporarily_unavailable`
    TemporarilyUnavailable,
    /// `server_error`
    ServerError,
    /// `authorization_pending` (RFC 8628 §3.5): the user has not finished yet; keep polling.
    AuthorizationPending,
    /// `slow_down` (RFC 8628 §3.5): keep polling, 5 seconds more apart.
    SlowDown,
    /// `expired_token` (RFC 8628 §3.5): the device code expired; start again.
    ExpiredToken,
    /// Any other code, as the server sent it (escaped and bounded like every text from a server:
    /// see [`Error`]).
    Other(String),
}

/// The code for `code` as it appears on the wire. An unknown code is kept as
/// [`Other`](ErrorCode::Other), made safe to show (control characters escaped, at most 256 bytes).
///
/// ```
/// use tower_bearer::oauth2::ErrorCode;
///
/// assert_eq!(ErrorCode::from("invalid_grant"), ErrorCode::InvalidGrant);
/// assert_eq!(ErrorCode::from("slow_down"), ErrorCode::SlowDown);
/// assert_eq!(ErrorCode::from("slow_down\n"), ErrorCode::Other("slow_down\\n".into()));
/// ```
impl From<&str> for ErrorCode {
    fn from(code: &str) -> Self {
        match code {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            "invalid_target" => Self::InvalidTarget,
            "access_denied" => Self::AccessDenied,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            "server_error" => Self::ServerError,
            "authorization_pending" => Self::AuthorizationPending,
            "slow_down" => Self::SlowDown,
            "expired_token" => Self::ExpiredToken,
            other => Self::Other(shown(other, MAX_SHOWN).into_string()),
        }
    }
}

/// The code for `code` as it appears on the wire, as with `From<&str>`.
impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        Self::from(code.as_str())
    }
}

impl ErrorCode {
    /// The code as it appears on the wire; for [`Other`](Self::Other), as made safe to show.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::AccessDenied => "access_denied",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    fn build(kind: ErrorKind, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            kind,
            status: None,
            code: None,
            description: None,
            uri: None,
            retry_after: None,
            source: None,
            at: At::TokenEndpoint,
            retryable: false,
        };
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// An OAuth 2.0 error answered by the token endpoint.
    pub(crate) fn oauth(
        status: StatusCode,
        code: ErrorCode,
        description: Option<Shown>,
        uri: Option<Shown>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::build(ErrorKind::OAuth, |e| {
            e.status = Some(status);
            e.code = Some(code);
            e.description = description;
            e.uri = uri;
            e.retry_after = retry_after;
        })
    }

    /// An HTTP error status without an OAuth 2.0 error body. `hint` is a short excerpt of the
    /// body, if it had one.
    pub(crate) fn http(
        status: StatusCode,
        hint: Option<Shown>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::build(ErrorKind::Http, |e| {
            e.status = Some(status);
            e.description = hint;
            e.retry_after = retry_after;
        })
    }

    pub(crate) fn redirect(status: StatusCode) -> Self {
        Self::build(ErrorKind::Redirect, |e| e.status = Some(status))
    }

    pub(crate) fn transport(source: BoxError) -> Self {
        Self::build(ErrorKind::Transport, |e| e.source = Some(source))
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::build(ErrorKind::Timeout, |e| {
            e.description = Some(Shown::ours(format!("no answer within {after:?}")));
        })
    }

    /// An answer that cannot be used. `what` is this crate's own explanation: server text in it
    /// must have gone through [`shown`] first.
    pub(crate) fn invalid_response(status: Option<StatusCode>, what: impl Into<String>) -> Self {
        Self::build(ErrorKind::InvalidResponse, |e| {
            e.status = status;
            e.description = Some(Shown::ours(what.into()));
        })
    }

    pub(crate) fn body_too_large(status: StatusCode, limit: usize) -> Self {
        Self::build(ErrorKind::BodyTooLarge, |e| {
            e.status = Some(status);
            e.description = Some(Shown::ours(format!("the body exceeds {limit} bytes")));
        })
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        Self::build(ErrorKind::Config, |e| {
            e.description = Some(Shown::ours(what.into()))
        })
    }

    pub(crate) fn authorization(
        code: ErrorCode,
        description: Option<Shown>,
        uri: Option<Shown>,
    ) -> Self {
        Self::build(ErrorKind::Authorization, |e| {
            e.code = Some(code);
            e.description = description;
            e.uri = uri;
        })
    }

    /// A redirect that went wrong. `what` is this crate's own explanation: text from the
    /// redirect in it must have gone through [`shown`] first.
    pub(crate) fn callback(what: impl Into<String>) -> Self {
        Self::build(ErrorKind::Callback, |e| {
            e.description = Some(Shown::ours(what.into()))
        })
    }

    pub(crate) fn store(source: BoxError) -> Self {
        Self::build(ErrorKind::Store, |e| e.source = Some(source))
    }

    /// The metadata document could not be used. `what` is this crate's own explanation: server
    /// text in it must have gone through [`shown`] first.
    pub(crate) fn metadata(status: Option<StatusCode>, what: impl Into<String>) -> Self {
        Self::build(ErrorKind::Metadata, |e| {
            e.status = status;
            e.description = Some(Shown::ours(what.into()));
            e.at = At::Metadata;
        })
    }

    pub(crate) fn issuer_mismatch(expected: &str, got: &str) -> Self {
        Self::build(ErrorKind::IssuerMismatch, |e| {
            e.description = Some(Shown::ours(format!(
                "asked for {:?}, the metadata names {:?}",
                shown(expected, MAX_SHOWN).as_str(),
                shown(got, MAX_SHOWN).as_str()
            )));
            e.at = At::Metadata;
        })
    }

    pub(crate) fn client_assertion(what: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::build(ErrorKind::ClientAssertion, |e| {
            e.description = Some(Shown::ours(what.into()));
            e.source = source;
        })
    }

    /// A subject or actor token of a token exchange that its source did not give. `what` says
    /// which and how; `retry` is what the source said about trying again.
    pub(crate) fn exchange_input(
        what: impl Into<String>,
        source: Option<BoxError>,
        retry: RetryHint,
    ) -> Self {
        Self::build(ErrorKind::SubjectToken, |e| {
            e.description = Some(Shown::ours(what.into()));
            e.source = source;
            e.retryable = retry != RetryHint::NotSoon;
            if let RetryHint::After(delay) = retry {
                e.retry_after = Some(delay);
            }
        })
    }

    /// The device code expired `after` it was issued, before the user approved (RFC 8628
    /// §3.5): as the server's `expired_token`, so that one check finds both. If the polls were
    /// failing when it expired (an endpoint that cannot be reached), the last failure is the
    /// source: the user may never have had a chance.
    pub(crate) fn device_code_expired(after: Duration, failing: Option<Error>) -> Self {
        Self::build(ErrorKind::Authorization, |e| {
            e.code = Some(ErrorCode::ExpiredToken);
            e.description = Some(Shown::ours(match failing {
                None => format!(
                    "the device code expired {after:?} after it was issued, before the user \
                     approved; start again"
                ),
                Some(_) => format!(
                    "the device code expired {after:?} after it was issued while polling the \
                     token endpoint failed (the last failure is this error's source); start \
                     again"
                ),
            }));
            e.source = failing.map(|error| Box::new(error) as BoxError);
        })
    }

    /// The same error, worded as arising while fetching the server's metadata (a transport
    /// failure, a timeout, a redirect).
    pub(crate) fn at_metadata(self) -> Self {
        self.at(At::Metadata)
    }

    /// The same error, worded as arising at the device authorization endpoint (RFC 8628).
    pub(crate) fn at_device_endpoint(self) -> Self {
        self.at(At::DeviceEndpoint)
    }

    fn at(mut self, at: At) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.at = at;
        }
        self
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The HTTP status of the token endpoint's answer, if there was one.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The OAuth 2.0 `error` code, if the server sent one.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.inner.code.as_ref()
    }

    /// The `error_description`, or another short explanation of what went wrong.
    pub fn description(&self) -> Option<&str> {
        self.inner.description.as_ref().map(Shown::as_str)
    }

    /// The `error_uri` the server sent, if any.
    pub fn uri(&self) -> Option<&str> {
        self.inner.uri.as_ref().map(Shown::as_str)
    }

    /// How long the server asked to wait before trying again (`Retry-After` in seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether trying again later can help: server errors (5xx), 429 Too Many Requests,
    /// `temporarily_unavailable`, timeouts and connection failures, and RFC 8628's
    /// `authorization_pending` and `slow_down`. Refusals of the client or
    /// its grant (`invalid_client`, `invalid_grant`, `invalid_scope`, `unauthorized_client`,
    /// `unsupported_grant_type`, ...) are not. A token exchange's failing subject or actor
    /// source ([`ErrorKind::SubjectToken`]) is, unless it said that trying again soon cannot
    /// help.
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            ErrorKind::Transport | ErrorKind::Timeout => true,
            ErrorKind::SubjectToken => self.inner.retryable,
            ErrorKind::Metadata => self
                .inner
                .status
                .is_some_and(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS),
            ErrorKind::OAuth | ErrorKind::Http => {
                let status_says = self
                    .inner
                    .status
                    .is_some_and(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS);
                match &self.inner.code {
                    Some(
                        ErrorCode::TemporarilyUnavailable
                        | ErrorCode::ServerError
                        | ErrorCode::AuthorizationPending
                        | ErrorCode::SlowDown,
                    ) => true,
                    Some(ErrorCode::Other(_)) | None => status_says,
                    Some(_) => false,
                }
            }
            _ => false,
        }
    }

    /// Whether the grant is gone (`invalid_grant`: the refresh token or code was revoked,
    /// expired or already used) and the user must authorize again.
    pub fn needs_reauthorization(&self) -> bool {
        self.inner.code == Some(ErrorCode::InvalidGrant)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind);
        if let Some(status) = i.status {
            d.field("status", &status);
        }
        if let Some(code) = &i.code {
            d.field("code", code);
        }
        if let Some(description) = &i.description {
            d.field("description", description);
        }
        if let Some(uri) = &i.uri {
            d.field("uri", uri);
        }
        if let Some(retry_after) = &i.retry_after {
            d.field("retry_after", retry_after);
        }
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        if i.at == At::Metadata {
            f.write_str(match i.kind {
                ErrorKind::IssuerMismatch => "authorization server metadata names another issuer",
                ErrorKind::Redirect => {
                    "authorization server metadata answered a redirect, which is not followed"
                }
                ErrorKind::Transport => "authorization server metadata could not be fetched",
                ErrorKind::Timeout => "authorization server metadata timed out",
                ErrorKind::BodyTooLarge => "authorization server metadata is too large",
                _ => "authorization server metadata is unusable",
            })?;
            if let Some(status) = i.status {
                write!(f, " (HTTP {})", status.as_u16())?;
            }
            if let Some(description) = &i.description {
                write!(f, ": {description}")?;
            }
            return Ok(());
        }
        let endpoint = match i.at {
            At::DeviceEndpoint => "device authorization endpoint",
            _ => "token endpoint",
        };
        let answered = match i.kind {
            ErrorKind::OAuth => "refused the request",
            ErrorKind::Http => "answered an HTTP error",
            ErrorKind::Redirect => "answered a redirect, which is not followed",
            ErrorKind::Transport => "could not be reached",
            ErrorKind::Timeout => "timed out",
            ErrorKind::InvalidResponse => "answered something unusable",
            ErrorKind::BodyTooLarge => "answered a body that is too large",
            ErrorKind::Config => return self.write_rest(f, "invalid OAuth 2.0 configuration"),
            ErrorKind::Authorization if i.code == Some(ErrorCode::ExpiredToken) => {
                return self.write_rest(f, "authorization was not given in time")
            }
            ErrorKind::Authorization => return self.write_rest(f, "authorization was refused"),
            ErrorKind::Callback => return self.write_rest(f, "authorization redirect failed"),
            ErrorKind::Store => return self.write_rest(f, "refresh token store failed"),
            ErrorKind::Metadata | ErrorKind::IssuerMismatch => {
                return self.write_rest(f, "authorization server metadata is unusable")
            }
            ErrorKind::ClientAssertion => {
                return self.write_rest(f, "client assertion could not be made")
            }
            ErrorKind::SubjectToken => {
                return self.write_rest(f, "token exchange could not get its input token")
            }
        };
        self.write_rest(f, &format!("{endpoint} {answered}"))
    }
}

impl Error {
    /// `Display` after `what` went wrong: the status and code, the description, and what to do.
    fn write_rest(&self, f: &mut fmt::Formatter<'_>, what: &str) -> fmt::Result {
        let i = &self.inner;
        f.write_str(what)?;
        match (i.status, &i.code) {
            (Some(status), Some(code)) => write!(f, " (HTTP {}, {code})", status.as_u16())?,
            (Some(status), None) => write!(f, " (HTTP {})", status.as_u16())?,
            (None, Some(code)) => write!(f, " ({code})")?,
            (None, None) => {}
        }
        if let Some(description) = &i.description {
            write!(f, ": {description}")?;
        }
        if self.needs_reauthorization() {
            f.write_str("; the user must authorize again")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.source {
            Some(source) => Some(&**source),
            None => None,
        }
    }
}

/// For the token sources' `Service` impls: the cache backs off as the error says. An error that
/// [`is_retryable`](Error::is_retryable) carries its [`retry_after`](Error::retry_after), if
/// any ([`RetryHint::After`]); one that is not is
/// [`RetryHint::NotSoon`].
impl From<Error> for SourceError {
    fn from(error: Error) -> Self {
        let retryable = error.is_retryable();
        let retry_after = error.retry_after();
        let wrapped = SourceError::new(error);
        match (retryable, retry_after) {
            (false, _) => wrapped.not_soon(),
            (true, Some(delay)) => wrapped.with_retry_after(delay),
            (true, None) => wrapped,
        }
    }
}
