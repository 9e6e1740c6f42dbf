//! Where tokens come from.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::util::BoxCloneService;
use tower::ServiceExt;
use tower_service::Service;

pub use crate::error::RetryHint;
use crate::{BoxError, Token, TokenRequest};

/// Anything that answers a [`TokenRequest`] with a [`Token`].
///
/// Every `tower::Service<TokenRequest, Response = Token>` that is `Clone + Send + 'static`, with
/// an error convertible into [`BoxError`] and a `Send` future, is a token source. That is on
/// purpose: tower's own middleware composes onto a source, so a fetch can get a timeout, a
/// retry policy, a rate limit or a concurrency limit without this crate knowing about them.
///
/// Write a source as an async closure with [`source_fn`], as a fixed token with
/// [`StaticToken`], or use the OAuth 2.0 grants of this crate.
///
/// A source that knows whether trying again soon can help (an HTTP `Retry-After`, credentials
/// refused for good) says so by failing with a [`SourceError`]; the cache's backoff reads it.
/// Any other error is backed off from as configured.
///
/// The trait is sealed: implement `tower::Service` instead.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenRequest};
///
/// let source = ServiceBuilder::new()
///     .timeout(Duration::from_secs(5))
///     .service(source_fn(|_req: TokenRequest| async {
///         Ok::<_, std::io::Error>(Token::new("abc").with_expires_in(Duration::from_secs(60)))
///     }));
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// ```
pub trait TokenSource: sealed::Sealed {}

impl<S> TokenSource for S
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

pub(crate) type BoxSource = BoxCloneService<TokenRequest, Token, BoxError>;

pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {
        fn into_box(self) -> BoxSource;
    }

    impl<S> Sealed for S
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        fn into_box(self) -> BoxSource {
            BoxCloneService::new(self.map_err(Into::into))
        }
    }
}

/// A source that always answers with the same token.
///
/// Useful for API keys and personal access tokens that do not expire, and in tests. The
/// token still goes through the cache: without an expiry it is re-read from this source once per
/// [default lifetime](crate::cache::TokenCacheBuilder::default_lifetime), which costs nothing.
///
/// ```
/// use tower_bearer::StaticToken;
///
/// let source = StaticToken::new("personal-access-token");
/// assert_eq!(format!("{source:?}"), "StaticToken { token: AccessToken(<redacted>) }");
/// ```
#[derive(Clone)]
pub struct StaticToken {
    token: Token,
}

impl StaticToken {
    /// A source answering with this access token.
    pub fn new(access_token: impl Into<String>) -> Self {
        Self::from_token(Token::new(access_token))
    }

    /// A source answering with a clone of `token`.
    pub fn from_token(token: Token) -> Self {
        Self { token }
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", self.token.access_token())
            .finish()
    }
}

impl Service<TokenRequest> for StaticToken {
    type Response = Token;
    type Error = Infallible;
    type Future = Ready<Result<Token, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: TokenRequest) -> Self::Future {
        ready(Ok(self.token.clone()))
    }
}

/// Turns an async closure into a [`TokenSource`].
///
/// The closure is called once per fetch; the cache makes sure only one fetch runs at a time.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::{source_fn, Reason, Token, TokenRequest};
///
/// let source = source_fn(|req: TokenRequest| async move {
///     // `req.reason()` says why: first use, refresh ahead of expiry, a rejected token...
///     let _why: Reason = req.reason();
///     Ok::<_, std::io::Error>(Token::new("t0k3n").with_expires_in(Duration::from_secs(300)))
/// });
/// # drop(source);
/// ```
pub fn source_fn<F, Fut, E>(f: F) -> SourceFn<F>
where
    F: Fn(TokenRequest) -> Fut,
    Fut: Future<Output = Result<Token, E>>,
    E: Into<BoxError>,
{
    SourceFn { f }
}

/// A [`TokenSource`] made from an async closure by [`source_fn`].
#[derive(Clone, Copy)]
pub struct SourceFn<F> {
    f: F,
}

impl<F> fmt::Debug for SourceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

impl<F, Fut, E> Service<TokenRequest> for SourceFn<F>
where
    F: Fn(TokenRequest) -> Fut,
    Fut: Future<Output = Result<Token, E>>,
{
    type Response = Token;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TokenRequest) -> Fut {
        (self.f)(req)
    }
}

/// A token source's failure, with what the source knows about trying again.
///
/// A source fails with any error convertible into [`BoxError`]. When that error is a
/// `SourceError` (itself, not the cause of another error; tower middleware such as a timeout
/// passes it on boxed, which keeps it), the cache reads its [`RetryHint`] to decide how long to
/// back off, and reports the error it wraps: that error, not the wrapper, is the
/// [`source()`](StdError::source) of the crate's [`Error`](crate::Error), which
/// [`Error::source_as`](crate::Error::source_as) finds.
///
/// `Display` and `source()` are those of the wrapped error.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::source::RetryHint;
/// use tower_bearer::{source_fn, SourceError, Token, TokenRequest};
///
/// let source = source_fn(|_: TokenRequest| async {
///     // The token service said `503` with `Retry-After: 30`.
///     let error = std::io::Error::other("token service unavailable");
///     Err::<Token, _>(SourceError::new(error).with_retry_after(Duration::from_secs(30)))
/// });
/// # drop(source);
/// let error = SourceError::new("invalid credentials").not_soon();
/// assert_eq!(error.retry(), RetryHint::NotSoon);
/// assert_eq!(error.to_string(), "invalid credentials");
/// ```
#[derive(Debug)]
pub struct SourceError {
    error: BoxError,
    retry: RetryHint,
}

impl SourceError {
    /// Wraps a source's error, with the hint [`RetryHint::Backoff`].
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            error: error.into(),
            retry: RetryHint::Backoff,
        }
    }

    /// Sets the hint to [`RetryHint::After`]: the server asked to come back after `delay`.
    ///
    /// Default: [`RetryHint::Backoff`].
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry = RetryHint::After(delay);
        self
    }

    /// Sets the hint to [`RetryHint::NotSoon`]: trying again soon cannot help.
    ///
    /// Default: [`RetryHint::Backoff`].
    pub fn not_soon(mut self) -> Self {
        self.retry = RetryHint::NotSoon;
        self
    }

    /// The hint: when trying again can help.
    pub fn retry(&self) -> RetryHint {
        self.retry
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }

    /// The wrapped error, unwrapped.
    pub fn into_inner(self) -> BoxError {
        self.error
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl StdError for SourceError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::{ErrorKind, TokenCache};

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    /// A cache (backoff 1 s to 60 s) over a source that always fails with `error()`, and the
    /// count of the source's calls.
    fn failing(error: fn() -> BoxError) -> (TokenCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = {
            let calls = calls.clone();
            source_fn(move |_: TokenRequest| {
                calls.fetch_add(1, Ordering::SeqCst);
                let error = error();
                async move { Err::<Token, _>(error) }
            })
        };
        (TokenCache::builder(source).backoff(MIN, MAX).build(), calls)
    }

    /// Asks `cache` for a token `after` `start` (on the paused clock), and says how many times
    /// its source has been called by then.
    async fn calls_after(
        (cache, calls): &(TokenCache, Arc<AtomicUsize>),
        start: Instant,
        after: Duration,
    ) -> usize {
        tokio::time::advance((start + after).saturating_duration_since(Instant::now())).await;
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Source);
        calls.load(Ordering::SeqCst)
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "refused")
    }

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_hint_the_cache_backs_off_as_configured() {
        let failing = failing(|| refused().into());
        let start = Instant::now();
        assert_eq!(calls_after(&failing, start, ms(0)).await, 1);
        // The first delay is `min` shortened by up to half.
        assert_eq!(calls_after(&failing, start, ms(1_001)).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_waits_as_long_as_retry_after_says() {
        let failing = failing(|| {
            SourceError::new(refused())
                .with_retry_after(ms(20_000))
                .into()
        });
        let start = Instant::now();
        let (cache, _) = &failing;
        let error = cache.token().await.unwrap_err();
        // The wrapper is gone: the source's own error is the cause.
        assert_eq!(
            error.source_as::<io::Error>().unwrap().to_string(),
            "refused"
        );
        assert!(error.source_as::<SourceError>().is_none());
        assert_eq!(failing.1.load(Ordering::SeqCst), 1);
        assert_eq!(calls_after(&failing, start, ms(1_001)).await, 1);
        assert_eq!(calls_after(&failing, start, ms(19_999)).await, 1);
        assert_eq!(calls_after(&failing, start, ms(20_000)).await, 2);
        // And again for the next failure: the hint outweighs the doubling (2 s).
        assert_eq!(calls_after(&failing, start, ms(39_999)).await, 2);
        assert_eq!(calls_after(&failing, start, ms(40_000)).await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_maximum_backoff_waits_the_maximum() {
        let failing = failing(|| {
            SourceError::new(refused())
                .with_retry_after(ms(3_600_000))
                .into()
        });
        let start = Instant::now();
        assert_eq!(calls_after(&failing, start, ms(0)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX - ms(1)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn not_soon_waits_half_of_the_maximum_backoff() {
        let failing = failing(|| SourceError::new("invalid_client").not_soon().into());
        let start = Instant::now();
        assert_eq!(calls_after(&failing, start, ms(0)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX / 2 - ms(1)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX / 2).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hint_survives_tower_middleware() {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = {
            let calls = calls.clone();
            source_fn(move |_: TokenRequest| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<Token, _>(SourceError::new(refused()).not_soon()) }
            })
        };
        // The timeout boxes the source's error: still a `SourceError` to the cache.
        let source = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service(source);
        let failing = (TokenCache::builder(source).backoff(MIN, MAX).build(), calls);
        let start = Instant::now();
        assert_eq!(calls_after(&failing, start, ms(0)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX / 2 - ms(1)).await, 1);
        assert_eq!(calls_after(&failing, start, MAX / 2).await, 2);
    }

    #[test]
    fn a_source_error_shows_the_error_it_wraps() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("token service failed")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let error = SourceError::new(Outer(refused()));
        assert_eq!(error.retry(), RetryHint::Backoff);
        assert_eq!(error.to_string(), "token service failed");
        assert_eq!(error.source().unwrap().to_string(), "refused");
        assert!(error.get_ref().is::<Outer>());
        let error = error.with_retry_after(ms(5));
        assert_eq!(error.retry(), RetryHint::After(ms(5)));
        assert_eq!(error.not_soon().retry(), RetryHint::NotSoon);
        assert_eq!(RetryHint::default(), RetryHint::Backoff);
    }
}
