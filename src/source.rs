//! Where tokens come from.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::task::{Context, Poll};

use tower::util::BoxCloneService;
use tower::ServiceExt;
use tower_service::Service;

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
///         Ok::<_, std::io::Error>(Token::new("abc").expires_in(Duration::from_secs(60)))
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
///     Ok::<_, std::io::Error>(Token::new("t0k3n").expires_in(Duration::from_secs(300)))
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
