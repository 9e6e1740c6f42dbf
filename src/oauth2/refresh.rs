//! The refresh token grant (RFC 6749 §6), with rotation and persistence.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::{Error, TokenEndpoint, TokenResponse};
use crate::error::Chain;
use crate::{BoxError, RefreshToken, SourceError, Token, TokenKey, TokenRequest};

/// Where a [`RefreshTokenSource`] keeps its refresh token when the server rotates it.
///
/// [`save`](Self::save) is called, under the source's lock, each time the server issues a new
/// refresh token, so that a restarted application resumes with the newest one (an old one is
/// usually refused, and with rotation its reuse may even revoke the whole grant).
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Persists `token`, replacing the previous one. Runs on the fetch task: keep it short.
    ///
    /// # Errors
    ///
    /// A failure is logged and the fetched access token is still used; the new refresh token is
    /// kept in memory.
    fn save(&self, token: &RefreshToken) -> Result<(), BoxError>;
}

/// Keeps the latest refresh token in memory, for tests and for applications that persist it
/// their own way.
#[derive(Clone, Default)]
pub struct MemoryStore {
    token: Arc<Mutex<Option<RefreshToken>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last token saved.
    pub fn get(&self) -> Option<RefreshToken> {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("token", &self.get())
            .finish()
    }
}

impl RefreshTokenStore for MemoryStore {
    fn save(&self, token: &RefreshToken) -> Result<(), BoxError> {
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(())
    }
}

/// Keeps the refresh token in a file, written atomically (a temporary file in the same
/// directory, flushed to disk, then renamed over the old one) and, on Unix, readable and
/// writable by its owner only (mode `0600`).
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`. Nothing is read or written yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the stored token; `None` if the file does not exist or is empty.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Store`](super::ErrorKind::Store) if the file exists but cannot be read.
    pub fn load(&self) -> Result<Option<RefreshToken>, Error> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let text = text.trim();
                Ok((!text.is_empty()).then(|| RefreshToken::new(text)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::store(Box::new(e))),
        }
    }
}

impl RefreshTokenStore for FileStore {
    fn save(&self, token: &RefreshToken) -> Result<(), BoxError> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = self
            .path
            .file_name()
            .ok_or("the store path has no file name")?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);

        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        // A leftover from a crash may have other permissions; `mode` applies to new files only.
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(token.secret().as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}

/// A token source that keeps an access token fresh with a refresh token (RFC 6749 §6).
///
/// - When the server rotates the refresh token, the new one replaces the old and is handed to
///   the [store](Self::store); a response without a refresh token keeps the old one.
/// - Refreshes are serialized: two never run with the same refresh token, and a refresh that
///   was started finishes (and its rotated token is kept) even if the caller gives up on it.
/// - `invalid_grant` (the refresh token was revoked, expired or already used) ends the source:
///   every later call fails at once with the same error, whose
///   [`needs_reauthorization`](Error::needs_reauthorization) is true, without calling the
///   server again.
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientAuth, FileStore, RefreshTokenSource, TokenEndpoint};
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoint = TokenEndpoint::builder("https://auth.example.com/token", "cli-app")
///     .auth(ClientAuth::None)
///     .build()?;
/// let store = FileStore::new("refresh-token.txt");
/// let refresh_token = store.load()?.ok_or("not logged in")?;
/// let source = RefreshTokenSource::new(endpoint, refresh_token).store(store);
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshTokenSource {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: TokenEndpoint,
    scopes: Vec<String>,
    store: Option<Arc<dyn RefreshTokenStore>>,
    state: Arc<tokio::sync::Mutex<State>>,
}

struct State {
    refresh_token: RefreshToken,
    /// The response that brought the refresh token: served once instead of refreshing at
    /// once, if it is asked for before the instant kept with it.
    initial: Option<(TokenResponse, Option<Instant>)>,
    /// Set by `invalid_grant`: the grant is gone for good.
    dead: Option<Error>,
}

impl RefreshTokenSource {
    /// A source refreshing with `refresh_token` at `endpoint`. Its first call refreshes.
    pub fn new(endpoint: TokenEndpoint, refresh_token: RefreshToken) -> Self {
        Self::with_state(
            endpoint,
            State {
                refresh_token,
                initial: None,
                dead: None,
            },
        )
    }

    /// A source continuing from a token response (typically of an authorization code
    /// exchange): its access token is served first, then its refresh token is used.
    ///
    /// The first token keeps the expiry it had when the response came (its lifetime counts from
    /// when that token request was sent, not from when the token is first asked for). If it is
    /// first asked for after half of its lifetime has passed, it is not served at all and the
    /// refresh token is used at once: a token that old would be dead, or due for a refresh,
    /// soon after it was first used.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidResponse`](super::ErrorKind::InvalidResponse) if the response has no
    /// refresh token.
    pub fn from_response(endpoint: TokenEndpoint, response: TokenResponse) -> Result<Self, Error> {
        let refresh_token = response.refresh_token().cloned().ok_or_else(|| {
            Error::invalid_response(None, "the token response has no refresh_token")
        })?;
        Ok(Self::with_state(
            endpoint,
            State {
                refresh_token,
                initial: {
                    let fresh_until = response
                        .requested_at()
                        .zip(response.expires_in())
                        .and_then(|(at, lifetime)| at.checked_add(lifetime / 2));
                    Some((response, fresh_until))
                },
                dead: None,
            },
        ))
    }

    fn with_state(endpoint: TokenEndpoint, state: State) -> Self {
        Self {
            shared: Arc::new(Shared {
                endpoint,
                scopes: Vec::new(),
                store: None,
                state: Arc::new(tokio::sync::Mutex::new(state)),
            }),
        }
    }

    /// Saves each new refresh token to `store`.
    ///
    /// Default: none; rotated tokens are kept in memory only.
    pub fn store(self, store: impl RefreshTokenStore) -> Self {
        self.map_shared(|shared| shared.store = Some(Arc::new(store)))
    }

    /// Asks for a narrower scope on refresh (RFC 6749 §6); sent space-separated.
    ///
    /// Default: none, keeping the scope originally granted.
    pub fn scope(self, scope: impl Into<String>) -> Self {
        let scope = scope.into();
        self.map_shared(|shared| shared.scopes.push(scope))
    }

    fn map_shared(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared,
            Err(shared) => Shared {
                endpoint: shared.endpoint.clone(),
                scopes: shared.scopes.clone(),
                store: shared.store.clone(),
                state: shared.state.clone(),
            },
        };
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The current refresh token.
    pub async fn refresh_token(&self) -> RefreshToken {
        self.shared.state.lock().await.refresh_token.clone()
    }

    /// Requests a token now, bypassing any cache: the first call of a source made
    /// [`from_response`](Self::from_response) answers that response if its token is still
    /// fresh (see there); every other call refreshes. A rotated refresh token replaces the
    /// current one and goes to the [store](Self::store) before this returns.
    ///
    /// # Errors
    ///
    /// When the token endpoint refuses (`invalid_grant` ends the source for good), cannot be
    /// reached or answers something unusable.
    pub async fn request_token(&self) -> Result<TokenResponse, Error> {
        self.request_token_for(&TokenKey::default()).await
    }

    /// Requests a token for `key` now, bypassing any cache: a refresh asking for the key's
    /// scopes (down-scoping, RFC 6749 §6; the configured scopes when the key names none), its
    /// resources (RFC 8707 `resource`, which a refresh must repeat) and its parameters. Only the
    /// default key may be answered with the first response of a source made
    /// [`from_response`](Self::from_response): that token was granted for what the
    /// authorization asked, not for another key. Refreshes for all keys run one at a time and
    /// share the refresh token, rotations included.
    ///
    /// # Errors
    ///
    /// As [`request_token`](Self::request_token).
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<TokenResponse, Error> {
        self.redeem(key, None).await
    }

    /// Refreshes for `key` with `presented`, if given (a later refresh token of the same grant,
    /// from a store shared by several processes), or with this source's own.
    async fn redeem(
        &self,
        key: &TokenKey,
        presented: Option<RefreshToken>,
    ) -> Result<TokenResponse, Error> {
        let shared = self.shared.clone();
        let mut state = shared.state.clone().lock_owned().await;
        if let Some(error) = &state.dead {
            return Err(error.clone());
        }
        let initial = if key.is_default() {
            state.initial.take()
        } else {
            None
        };
        if let Some((response, fresh_until)) = initial {
            if fresh_until.is_none_or(|until| Instant::now() < until) {
                return Ok(response);
            }
            tracing::debug!(
                "the first access token is past half of its lifetime; refreshing instead"
            );
        }
        // Spawned, holding the lock: if the caller is dropped mid-request, the server may have
        // rotated the token already, and the answer must still be read and kept.
        let key = key.clone();
        let task = tokio::spawn(async move {
            let redeemed = presented.unwrap_or_else(|| state.refresh_token.clone());
            let result = shared.request(&redeemed, &key).await;
            match result {
                Ok(response) => {
                    // The grant's latest refresh token: the rotated one, or the one redeemed
                    // (which may be a later one than this source held).
                    let latest = response.refresh_token().unwrap_or(&redeemed);
                    if latest != &state.refresh_token {
                        state.refresh_token = latest.clone();
                        shared.save(latest);
                    }
                    Ok(response)
                }
                Err(error) => {
                    if error.needs_reauthorization() {
                        tracing::warn!(error = %Chain(&error), "refresh token refused; the user must authorize again");
                        state.dead = Some(error.clone());
                    }
                    Err(error)
                }
            }
        });
        match task.await {
            Ok(result) => result,
            // A panic in the refresh (a store's `save`, say) is a bug, not an unreachable
            // server: it goes on unwinding, so that the cache reports `ErrorKind::Panicked`.
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(Error::transport(Box::new(join))),
        }
    }
}

impl Shared {
    async fn request(
        &self,
        refresh_token: &RefreshToken,
        key: &TokenKey,
    ) -> Result<TokenResponse, Error> {
        let scope = key.scope().unwrap_or_else(|| self.scopes.join(" "));
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.secret()),
        ];
        if !scope.is_empty() {
            params.push(("scope", &scope));
        }
        params.extend(key.audiences().map(|audience| ("audience", audience)));
        params.extend(key.resources().map(|resource| ("resource", resource)));
        params.extend(key.params());
        self.endpoint.token_request(&params).await
    }

    fn save(&self, token: &RefreshToken) {
        if let Some(store) = &self.store {
            if let Err(error) = store.save(token) {
                tracing::error!(
                    error = %Chain(&*error),
                    "cannot save the rotated refresh token; it is kept in memory only"
                );
            }
        }
    }
}

impl fmt::Debug for RefreshTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenSource")
            .field("endpoint", &self.shared.endpoint)
            .field("scopes", &self.shared.scopes)
            .field("store", &self.shared.store.as_ref().map(|_| "<store>"))
            .finish_non_exhaustive()
    }
}

/// A token source: fails with a [`SourceError`] wrapping the [`Error`], whose retry hint
/// carries the endpoint's `Retry-After` and refusals that retrying cannot fix (such as
/// `invalid_grant`).
impl Service<TokenRequest> for RefreshTokenSource {
    type Response = Token;
    type Error = SourceError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, SourceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let presented = req.refresh_token().cloned();
            Ok(this.redeem(req.key(), presented).await?.into_token())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_writes_atomically_and_privately() {
        let dir = std::env::temp_dir().join(format!("tower-bearer-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileStore::new(dir.join("refresh.txt"));
        assert!(store.load().unwrap().is_none());
        store.save(&RefreshToken::new("first")).unwrap();
        store.save(&RefreshToken::new("second")).unwrap();
        assert_eq!(store.load().unwrap().unwrap().secret(), "second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "refresh.txt")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_store_keeps_the_last_token_and_hides_it() {
        let store = MemoryStore::new();
        store.save(&RefreshToken::new("rt-1")).unwrap();
        store.save(&RefreshToken::new("rt-2")).unwrap();
        assert_eq!(store.get().unwrap().secret(), "rt-2");
        assert!(!format!("{store:?}").contains("rt-2"));
    }
}
