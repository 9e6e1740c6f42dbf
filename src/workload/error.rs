//! The one error type of the workload identity sources.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::shown::{shown, MAX_SHOWN};
use crate::{BoxError, SourceError};

/// An error of a workload identity source: its configuration is missing, its token file cannot
/// be read, or its metadata service refused, could not be reached or answered something
/// unusable.
///
/// It never contains a token: token files and answers are described (their path, their size,
/// what is wrong), never quoted. Text taken from a server is escaped and bounded as everywhere
/// in this crate. Cheap to clone.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    /// The source that failed, as a person calls it ("the token file", "the GCP metadata
    /// server").
    origin: &'static str,
    message: String,
    path: Option<PathBuf>,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    /// Shared, so that an error changed after it was cloned keeps its cause.
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

/// The category of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The source is not configured here: the environment variables it reads are not set, or
    /// no metadata service answers. A [chain](super) moves on to the next source.
    NotConfigured,
    /// The configuration is invalid (a malformed URL, a plain `http` URL to a remote host, an
    /// environment variable with an unusable value).
    Config,
    /// The token file is missing, empty or unreadable.
    File,
    /// A token that must be a JWT is not one, or states no usable `exp`.
    InvalidToken,
    /// The service answered an HTTP error status.
    Http,
    /// The service could not be reached, or the connection failed mid-answer.
    Transport,
    /// The service did not answer in time.
    Timeout,
    /// The answer could not be understood.
    InvalidResponse,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, origin: &'static str, message: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                origin,
                message: message.into(),
                path: None,
                status: None,
                retry_after: None,
                source: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(inner),
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    kind: old.kind,
                    origin: old.origin,
                    message: old.message.clone(),
                    path: old.path.clone(),
                    status: old.status,
                    retry_after: old.retry_after,
                    source: old.source.clone(),
                };
                f(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    /// Names the file the error is about.
    pub(crate) fn at_path(self, path: &Path) -> Self {
        let path = path.to_path_buf();
        self.with(|inner| inner.path = Some(path))
    }

    /// Records the HTTP status the service answered.
    pub(crate) fn with_status(self, status: StatusCode) -> Self {
        self.with(|inner| inner.status = Some(status))
    }

    /// Records when the service said to come back.
    pub(crate) fn with_retry_after(self, delay: Duration) -> Self {
        self.with(|inner| inner.retry_after = Some(delay))
    }

    /// Records the underlying error.
    pub(crate) fn with_source(self, source: impl Into<BoxError>) -> Self {
        let source: Arc<dyn StdError + Send + Sync> = Arc::from(source.into());
        self.with(|inner| inner.source = Some(source))
    }

    /// The server's text, escaped and bounded, for messages.
    pub(crate) fn server_text(text: &str) -> String {
        shown(text, MAX_SHOWN).into_string()
    }

    /// The category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The token file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The HTTP status the service answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// How long the service asked to wait before trying again (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether trying again later can help: a transport failure, a timeout, a `429` or a
    /// server error can pass; a missing configuration, a refusal (`400`, `401`, `403`) or an
    /// unusable answer will not by itself. A token file that is missing or invalid can be
    /// fixed by the platform rewriting it, so it counts as retryable.
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::File => true,
            ErrorKind::InvalidToken => self.inner.path.is_some(),
            ErrorKind::Http => self
                .inner
                .status
                .is_some_and(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS),
            ErrorKind::NotConfigured | ErrorKind::Config | ErrorKind::InvalidResponse => false,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("origin", &self.inner.origin)
            .field("message", &self.inner.message);
        if let Some(path) = &self.inner.path {
            d.field("path", path);
        }
        if let Some(status) = self.inner.status {
            d.field("status", &status);
        }
        if let Some(delay) = self.inner.retry_after {
            d.field("retry_after", &delay);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.inner.origin)?;
        if let Some(path) = &self.inner.path {
            write!(f, " {}", path.display())?;
        }
        if let Some(status) = self.inner.status {
            write!(f, " answered HTTP {status}")?;
            if !self.inner.message.is_empty() {
                f.write_str(":")?;
            }
        } else {
            f.write_str(":")?;
        }
        if !self.inner.message.is_empty() {
            write!(f, " {}", self.inner.message)?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error as a token source's failure: its retry hint carries the service's `Retry-After`,
/// and says "not soon" for what retrying cannot fix.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_origin_the_path_and_the_status() {
        let e = Error::new(ErrorKind::File, "the token file", "it is empty")
            .at_path(Path::new("/var/run/secrets/tokens/t"));
        assert_eq!(
            e.to_string(),
            "the token file /var/run/secrets/tokens/t: it is empty"
        );
        assert!(e.is_retryable());
        let e = Error::new(ErrorKind::Http, "the GCP metadata server", "Forbidden")
            .with_status(StatusCode::FORBIDDEN);
        assert_eq!(
            e.to_string(),
            "the GCP metadata server answered HTTP 403 Forbidden: Forbidden"
        );
        assert!(!e.is_retryable());
        let e = e.with_status(StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.is_retryable());
    }
}
