use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::{BearerAuth, Config};
use crate::replay::{CloneBody, NoReplay};
use crate::{Placement, TokenCache, TokenSource};

/// A [`Layer`] that authenticates every request with a bearer token from a [`TokenSource`].
///
/// Clones of the layer, and every service it makes, share one [`TokenCache`]. See the
/// [crate documentation](crate) for the request path.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenRequest};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let source = source_fn(|_: TokenRequest| async {
///     Ok::<_, std::io::Error>(Token::new("t0k3n").expires_in(Duration::from_secs(3600)))
/// });
/// let api = service_fn(|req: Request<Full<Bytes>>| async move {
///     let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
///     Ok::<_, std::convert::Infallible>(Response::new(auth))
/// });
/// let client = ServiceBuilder::new()
///     .layer(BearerAuthLayer::new(source))
///     .service(api);
///
/// let response = client.oneshot(Request::new(Full::default())).await?;
/// assert_eq!(response.body(), "Bearer t0k3n");
/// # Ok(())
/// # }
/// ```
pub struct BearerAuthLayer<P = CloneBody> {
    config: Arc<Config>,
    policy: P,
}

impl BearerAuthLayer {
    /// A layer with a new [`TokenCache`] (default timing) over `source`.
    pub fn new(source: impl TokenSource) -> Self {
        Self::from_cache(TokenCache::new(source))
    }

    /// A layer using `cache`, which may be shared with other layers.
    pub fn from_cache(cache: TokenCache) -> Self {
        Self {
            config: Arc::new(Config {
                cache,
                placement: Placement::default(),
            }),
            policy: CloneBody,
        }
    }
}

impl<P> BearerAuthLayer<P> {
    /// Where the token goes on each request.
    ///
    /// Default: [`Placement::bearer`], `Authorization: Bearer <token>`.
    pub fn placement(self, placement: Placement) -> Self {
        Self {
            config: Arc::new(Config {
                cache: self.config.cache.clone(),
                placement,
            }),
            policy: self.policy,
        }
    }

    /// Never replays a request whose token was rejected; the rejection is returned as it came
    /// and the next request gets a new token. Saves copying replayable requests.
    ///
    /// Default: replay with [`CloneBody`].
    pub fn without_replay(self) -> BearerAuthLayer<NoReplay> {
        self.replay_policy(NoReplay)
    }

    /// Decides with `policy` which requests can be replayed and how.
    ///
    /// Default: [`CloneBody`].
    pub fn replay_policy<Q>(self, policy: Q) -> BearerAuthLayer<Q> {
        BearerAuthLayer {
            config: self.config,
            policy,
        }
    }

    /// The token cache shared by this layer and its services.
    pub fn cache(&self) -> &TokenCache {
        &self.config.cache
    }
}

impl<P: Clone> Clone for BearerAuthLayer<P> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for BearerAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("cache", &self.config.cache)
            .field("placement", &self.config.placement)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for BearerAuthLayer<P> {
    type Service = BearerAuth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth::with_config(inner, self.config.clone(), self.policy.clone())
    }
}
