//! The error a request gets when no valid token can be had.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::BoxError;

/// Why no valid token could be had for a request.
///
/// The layer's services return [`BoxError`]; errors coming from the inner service pass through
/// unchanged, and token failures are this type, so callers can
/// `err.downcast_ref::<tower_bearer::Error>()`. The error is cheap to clone: one failed fetch is
/// reported to every request that waited for it.
///
/// `Display` says what failed; the cause (for example the OAuth 2.0 error of the token
/// endpoint) is [`source()`](StdError::source). No error ever contains a token or a secret.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    source: Option<BoxError>,
    /// When fetching again can help, as the source said with a
    /// [`SourceError`](crate::SourceError).
    retry: RetryHint,
}

/// The category of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The token source returned an error; it is the [`source()`](StdError::source).
    Source,
    /// The token source did not answer within the fetch timeout.
    Timeout,
    /// The source returned an access token that cannot be sent in an HTTP header: it is empty,
    /// or contains CR, LF, other control characters or non-ASCII bytes. It was never sent.
    InvalidToken,
    /// The source returned an access token larger than
    /// [`MAX_TOKEN_BYTES`](crate::cache::MAX_TOKEN_BYTES) (64 KiB), which no server accepts in a
    /// header. It was refused, so that a cache's memory stays bounded.
    TokenTooLarge,
    /// The fetch task was dropped before it finished, which happens when its runtime shuts down.
    Cancelled,
    /// The token source panicked. The cache backs off from it like from any failed fetch.
    Panicked,
    /// A fetch was needed outside of a Tokio runtime: the cache runs fetches in spawned tasks.
    NoRuntime,
    /// The layer restricts which origins get the token
    /// ([`only_origins`](crate::BearerAuthLayer::only_origins)), and the request's URI has no
    /// origin (a path-only URI, such as tonic's generated clients send over a `Channel`), so
    /// nothing tells whether the request may carry the token. It was not sent. Give such
    /// requests an absolute URI (tonic: build the client `with_origin`), or do not restrict
    /// origins for a client bound to one server.
    UnknownOrigin,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, source: Option<BoxError>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                source,
                retry: RetryHint::Backoff,
            }),
        }
    }

    /// The source's error, with what the source said about trying again.
    pub(crate) fn source_failed(source: BoxError, retry: RetryHint) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind: ErrorKind::Source,
                source: Some(source),
                retry,
            }),
        }
    }

    /// When fetching again can help, as the source said.
    pub(crate) fn retry(&self) -> RetryHint {
        self.inner.retry
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(ErrorKind::Timeout, Some(Box::new(Elapsed(after))))
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether this error comes from the token source and its cause is an `E`; returns the cause.
    ///
    /// ```
    /// # use tower_bearer::Error;
    /// fn is_io(err: &Error) -> bool {
    ///     err.source_as::<std::io::Error>().is_some()
    /// }
    /// ```
    pub fn source_as<E: StdError + 'static>(&self) -> Option<&E> {
        self.inner.source.as_deref()?.downcast_ref::<E>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner.kind {
            ErrorKind::Source => "token source failed",
            ErrorKind::Timeout => "token source timed out",
            ErrorKind::InvalidToken => {
                "token source returned an access token that is not a valid HTTP header value"
            }
            ErrorKind::TokenTooLarge => "token source returned an access token that is too large",
            ErrorKind::Cancelled => "token fetch was cancelled before it finished",
            ErrorKind::Panicked => "token source panicked",
            ErrorKind::NoRuntime => "token fetch needs a Tokio runtime",
            ErrorKind::UnknownOrigin => {
                "the request's URI has no origin, so `only_origins` cannot tell whether it may \
                 carry the token; it was not sent"
            }
        })
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

/// When trying a failed token source again can help: the hint a [`SourceError`](crate::SourceError) carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryHint {
    /// Nothing is known: the cache backs off as configured
    /// ([`TokenCacheBuilder::backoff`](crate::cache::TokenCacheBuilder::backoff)). The default.
    #[default]
    Backoff,
    /// The source's server said when to come back (an HTTP `Retry-After`): the cache waits at
    /// least this long, up to its maximum backoff.
    After(Duration),
    /// Trying again soon cannot help (the credentials were refused, for example OAuth's
    /// `invalid_client`): the cache waits at least half of its maximum backoff.
    NotSoon,
}

#[derive(Debug)]
struct Elapsed(Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl StdError for Elapsed {}

/// Displays an error followed by its sources, `outer: inner: innermost`, for log lines.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
