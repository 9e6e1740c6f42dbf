//! The error a request gets when no valid token can be had.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{BoxError, RetryHint, SourceError};

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
    /// When fetching again can help, as the source said with a [`SourceError`].
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

    /// The source's error. A [`SourceError`] is unwrapped: its hint is kept for the backoff, and
    /// the error it wraps becomes the `source()`, so that `source_as` finds it.
    pub(crate) fn source_failed(source: BoxError) -> Self {
        let (source, retry) = match source.downcast::<SourceError>() {
            Ok(wrapped) => {
                let retry = wrapped.retry();
                (wrapped.into_inner(), retry)
            }
            Err(source) => (source, RetryHint::Backoff),
        };
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
