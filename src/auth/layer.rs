use std::fmt;

use tower_layer::Layer;

use super::{BearerAuth, Config, Configs};
use crate::grpc::RejectOnTrailersLayer;
use crate::replay::{CloneBody, NoReplay, StreamingReplay};
use crate::{Origin, Placement, TokenCache, TokenSource};

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
    configs: Configs,
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
            configs: Configs::new(Config::new(cache)),
            policy: CloneBody,
        }
    }
}

impl<P> BearerAuthLayer<P> {
    /// Where the token goes on each request.
    ///
    /// Default: [`Placement::bearer`], `Authorization: Bearer <token>`.
    pub fn placement(self, placement: Placement) -> Self {
        let config = Config {
            placement,
            ..Config::clone(self.configs.config())
        };
        Self {
            configs: Configs::new(config),
            policy: self.policy,
        }
    }

    /// Stamps the token only on requests to these origins (scheme, host and port); requests to
    /// any other origin, and requests with a relative URI, pass through untouched: no token, no
    /// replay. Use it whenever the URLs a client calls are not all trusted, for example behind
    /// tower-http's `FollowRedirect`, so that a redirect never carries the token elsewhere.
    ///
    /// Default: every request gets the token.
    ///
    /// Clients that send path-only URIs and add the origin further down (tonic's generated
    /// clients over a `Channel`, unless built `with_origin`) are bound to one server anyway: do
    /// not restrict origins there, or every call goes out without its token.
    ///
    /// ```
    /// use tower_bearer::{BearerAuthLayer, StaticToken};
    ///
    /// let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"))
    ///     .only_origins(["https://api.example.com".parse().unwrap()]);
    /// # drop(layer);
    /// ```
    pub fn only_origins<I: IntoIterator<Item = Origin>>(self, origins: I) -> Self {
        let config = Config {
            origins: Some(origins.into_iter().collect()),
            ..Config::clone(self.configs.config())
        };
        Self {
            configs: Configs::new(config),
            policy: self.policy,
        }
    }

    /// Replays requests with streaming bodies too, keeping up to 64 KiB of each; see
    /// [`StreamingReplay`] (use [`replay_policy`](Self::replay_policy) for another cap). The
    /// inner service then receives [`ReplayBody`](crate::replay::ReplayBody)s.
    ///
    /// Default: replay with [`CloneBody`].
    pub fn replay_streaming(self) -> BearerAuthLayer<StreamingReplay> {
        self.replay_policy(StreamingReplay::new())
    }

    /// A layer to put *under* this one in a gRPC client: when a call's trailers say
    /// `grpc-status: 16` (UNAUTHENTICATED after the response started), it drops the token the
    /// call carried, so that the next call gets a fresh one. Such a call cannot be replayed (its
    /// response was already streaming); a trailers-only UNAUTHENTICATED is replayed by this layer
    /// itself. See [`grpc`](crate::grpc).
    pub fn reject_on_trailers(&self) -> RejectOnTrailersLayer {
        RejectOnTrailersLayer::new(self.configs.get(0).clone())
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
            configs: self.configs,
            policy,
        }
    }

    /// The token cache shared by this layer and its services.
    pub fn cache(&self) -> &TokenCache {
        &self.configs.config().cache
    }
}

impl<P: Clone> Clone for BearerAuthLayer<P> {
    fn clone(&self) -> Self {
        Self {
            configs: self.configs.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for BearerAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("cache", &self.configs.config().cache)
            .field("placement", &self.configs.config().placement)
            .field("origins", &self.configs.config().origins)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for BearerAuthLayer<P> {
    type Service = BearerAuth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth::with_configs(inner, self.configs.clone(), self.policy.clone())
    }
}
