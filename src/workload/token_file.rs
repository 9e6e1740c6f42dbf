//! A token the platform writes to a file and rotates: Kubernetes projected service-account
//! tokens, and the files Azure and AWS workload identity point at.

use std::fmt;
use std::future::{ready, Ready};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;
use zeroize::Zeroizing;

use super::error::{Error, ErrorKind};
use super::jwt::{self, Times, MAX_JWT};
use crate::oauth2::{AssertionFuture, AssertionRequest, AssertionSource};
use crate::{SourceError, Token, TokenRequest};

const ORIGIN: &str = "the token file";

/// Kubernetes rotates a projected token once 80 % of its lifetime has passed: before that,
/// reading the file again brings the same token.
const ROTATED_AFTER_PERCENT: u32 = 80;

/// How often a token past its `kubernetes.io.warnafter` is read again while the kubelet has not
/// rotated it.
const STALE_REREAD: Duration = Duration::from_secs(60);

/// A token read from a file that the platform keeps current: a Kubernetes projected
/// service-account token (`/var/run/secrets/tokens/...`), the file named by
/// `AZURE_FEDERATED_TOKEN_FILE` or `AWS_WEB_IDENTITY_TOKEN_FILE`.
///
/// - The file holds a JWT; its lifetime is read from its `exp` claim, without verifying it
///   (the platform wrote it; the server it is sent to verifies it). A Kubernetes token with
///   extended expiration (valid for a year, with a `kubernetes.io.warnafter` claim) is used
///   until its `warnafter` only, as the kubelet rotates it before then.
/// - The file is read again for every token request, following symlinks, so the kubelet's
///   rotation (a new token written at 80 % of the old one's lifetime, swapped in through a
///   symlink) is picked up by the cache's next refresh, which comes before the old token
///   expires. Tokens state when the new one can be there
///   ([`Token::with_renewal_window`]), so the cache does not re-read the file before that.
/// - A missing, empty or unreadable file, or one that holds no JWT, is an [`Error`] naming the
///   path. Behind a cache, the last valid token keeps being used until it expires; as a client
///   assertion, the last valid JWT is reused while it is valid, with a warning.
///
/// As a [`TokenSource`](crate::TokenSource), it sends the file's token to the API (a Kubernetes
/// API server, Vault); as an [`AssertionSource`], it authenticates a client at a token endpoint
/// (federated credentials: Entra workload identity, GCP and AWS workload identity federation);
/// as the subject source of a token exchange it is traded for an access token.
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
/// use tower_bearer::workload::TokenFile;
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Entra workload identity: the pod's federated token authenticates the app registration.
/// let endpoint = TokenEndpoint::builder(
///     "https://login.microsoftonline.com/my-tenant/oauth2/v2.0/token",
///     "00000000-0000-0000-0000-000000000000",
/// )
/// .client_assertion(TokenFile::from_env("AZURE_FEDERATED_TOKEN_FILE")?)
/// .build()?;
/// let source = ClientCredentials::new(endpoint).scope("https://graph.microsoft.com/.default");
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenFile {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The last valid token read, for assertions while the file is being replaced.
    last: Mutex<Option<(Zeroizing<String>, Times)>>,
}

impl TokenFile {
    /// A source reading `path`. Nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                path: path.into(),
                last: Mutex::new(None),
            }),
        }
    }

    /// A source reading the file named by the environment variable `name`, such as
    /// `AZURE_FEDERATED_TOKEN_FILE` or `AWS_WEB_IDENTITY_TOKEN_FILE`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotConfigured`] if the variable is not set or is empty.
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_lookup(name, |name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `lookup` instead of the
    /// process environment.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotConfigured`] if `lookup` has no non-empty value for `name`.
    pub fn from_lookup(name: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        match lookup(name) {
            Some(path) if !path.trim().is_empty() => Ok(Self::new(path.trim())),
            _ => Err(Error::new(
                ErrorKind::NotConfigured,
                ORIGIN,
                format!("the environment variable {name} is not set"),
            )),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Reads the file now and returns its token.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::File`] if the file is missing, empty, unreadable or too large;
    /// [`ErrorKind::InvalidToken`] if it holds no JWT with an `exp`, or one that has expired.
    pub fn read(&self) -> Result<Token, Error> {
        let (jwt, times) = self.read_jwt()?;
        Ok(token(&jwt, times))
    }

    fn read_jwt(&self) -> Result<(Zeroizing<String>, Times), Error> {
        let path = &self.shared.path;
        let fail = |kind, message: String| Error::new(kind, ORIGIN, message).at_path(path);
        // A small file on a local volume (tmpfs, for projected tokens): read in place rather
        // than on a blocking thread, which would cost more than the read.
        let file = std::fs::File::open(path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_owned()
            } else {
                format!("cannot be opened: {e}")
            };
            fail(ErrorKind::File, why).with_source(e)
        })?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_JWT as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(ErrorKind::File, format!("cannot be read: {e}")).with_source(e))?;
        if bytes.len() > MAX_JWT {
            return Err(fail(
                ErrorKind::File,
                format!("is larger than the {MAX_JWT} bytes a token file may have"),
            ));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| fail(ErrorKind::InvalidToken, "is not text (UTF-8)".into()))?;
        let jwt = text.trim();
        if jwt.is_empty() {
            return Err(fail(ErrorKind::File, "is empty".into()));
        }
        let times = jwt::times(jwt).map_err(|why| {
            fail(
                ErrorKind::InvalidToken,
                format!("does not hold a usable JWT: {}", why.0),
            )
        })?;
        if times.remaining().is_zero() {
            return Err(fail(
                ErrorKind::InvalidToken,
                "holds a token that has expired (is the platform still rotating it?)".into(),
            ));
        }
        let jwt = Zeroizing::new(jwt.to_owned());
        *self.lock_last() = Some((jwt.clone(), times));
        Ok((jwt, times))
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, Option<(Zeroizing<String>, Times)>> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The file's JWT, or while the file cannot be read, the last valid one it held.
    fn assertion_now(&self) -> Result<String, Error> {
        match self.read_jwt() {
            Ok((jwt, _)) => Ok(jwt.to_string()),
            Err(error) => {
                let last = self.lock_last();
                match &*last {
                    Some((jwt, times)) if !times.remaining().is_zero() => {
                        tracing::warn!(
                            error = %error,
                            expires_in = ?times.remaining(),
                            "the token file cannot be used; its last valid token is used until \
                             it expires"
                        );
                        Ok(jwt.to_string())
                    }
                    _ => Err(error),
                }
            }
        }
    }
}

/// The token the cache keeps: the JWT, with its lifetime by this machine's clock, and the
/// renewal window of Kubernetes' rotation when the JWT states when it was issued.
fn token(jwt: &str, times: Times) -> Token {
    let remaining = match times.until_warn_after() {
        // A token with extended expiration is used until its `warnafter` only: the kubelet
        // rotates it before then, and the API server flags later use as stale.
        Some(until) if !until.is_zero() => until,
        // Past it, the file is read again every minute until the kubelet rotates it.
        Some(_) => times.remaining().min(STALE_REREAD),
        None => times.remaining(),
    };
    let token = Token::new(jwt).with_expires_in(remaining);
    match times.lifetime() {
        Some(lifetime) if !lifetime.is_zero() => {
            // Divided first: the file's `exp` is the file's word, up to `u64::MAX` seconds.
            let window = (lifetime / 100).saturating_mul(100 - ROTATED_AFTER_PERCENT);
            token.with_renewal_window(window.max(Duration::from_secs(1)))
        }
        _ => token,
    }
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// A token source: every call reads the file. Fails with a [`SourceError`] wrapping the
/// [`Error`].
impl Service<TokenRequest> for TokenFile {
    type Response = Token;
    type Error = SourceError;
    type Future = Ready<Result<Token, SourceError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: TokenRequest) -> Self::Future {
        ready(self.read().map_err(SourceError::from))
    }
}

/// A client assertion (federated credentials): the file's JWT, or while the file cannot be
/// read, the last valid JWT it held until that one expires.
impl AssertionSource for TokenFile {
    fn assertion(&self, _request: AssertionRequest) -> AssertionFuture {
        let result = self.assertion_now().map_err(Into::into);
        Box::pin(ready(result))
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    use super::*;

    #[test]
    fn a_lifetime_of_any_size_gives_a_renewal_window() {
        let claims = format!(r#"{{"iat":0,"exp":{}}}"#, u64::MAX);
        let jwt = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let times = jwt::times(&jwt).unwrap();
        let token = token(&jwt, times);
        let fifth = Duration::from_secs(u64::MAX / 100 * 20);
        assert!(
            token.renewal_window().is_some_and(|w| w >= fifth),
            "{:?}",
            token.renewal_window()
        );
    }
}
