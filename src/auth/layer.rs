use std::fmt;

use tower_layer::Layer;

use super::{BearerAuth, Config, Configs, Destinations};
use crate::replay::{NoReplay, Replay, ReplayWrapped};
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
///     Ok::<_, std::io::Error>(Token::new("t0k3n").with_expires_in(Duration::from_secs(3600)))
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
pub struct BearerAuthLayer<P = Replay> {
    configs: Configs,
    policy: P,
}

impl BearerAuthLayer {
    /// A layer with a new [`TokenCache`] (default timing) over `source`.
    pub fn new(source: impl TokenSource) -> Self {
        Self::from_cache(TokenCache::new(source))
    }

    /// A layer serving several destinations: each request gets the token of the
    /// [`TokenKey`](crate::TokenKey) that `destinations` maps it to, from its keyed cache; a
    /// request mapped to no key is sent without a token. [`cache`](Self::cache) is then the
    /// cache of the default key.
    pub fn destinations(destinations: Destinations) -> Self {
        let cache = destinations.cache().cache(&crate::TokenKey::default());
        let config = Config {
            destinations: Some(destinations),
            ..Config::new(cache)
        };
        Self {
            configs: Configs::new(config),
            policy: Replay::new(),
        }
    }

    /// A layer using `cache`, which may be shared with other layers.
    pub fn from_cache(cache: TokenCache) -> Self {
        Self {
            configs: Configs::new(Config::new(cache)),
            policy: Replay::new(),
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
    /// any other origin pass through untouched: no token, no replay. Use it whenever the URLs a
    /// client calls are not all trusted, for example behind tower-http's `FollowRedirect`, so
    /// that a redirect never carries the token elsewhere.
    ///
    /// A request whose URI has no origin (path-only, as tonic's generated clients send over a
    /// `Channel` unless built `with_origin`) fails with [`ErrorKind::UnknownOrigin`]: nothing
    /// says where it goes, and sending it without its token would fail later and less clearly.
    /// A client bound to one server, such as a `Channel`, does not need this restriction.
    ///
    /// Default: every request gets the token.
    ///
    /// [`ErrorKind::UnknownOrigin`]: crate::ErrorKind::UnknownOrigin
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

    /// Replays requests with any body, hyper's `Incoming` included, wrapping each body in a
    /// [`ReplayBody`](crate::replay::ReplayBody) that keeps up to 64 KiB of it as it is sent; see
    /// [`ReplayWrapped`]. The inner service then receives `ReplayBody<B>`: a gateway forwarding
    /// `Incoming` bodies through hyper-util's `Client` takes it as it is.
    ///
    /// Default: [`Replay`], which keeps the caller's body type (see [`replay`](crate::replay)).
    pub fn replay_wrapped(self) -> BearerAuthLayer<ReplayWrapped> {
        self.replay_policy(ReplayWrapped::new())
    }

    /// Never replays a request whose token was rejected; the rejection is returned as it came
    /// and the next request gets a new token. Saves copying replayable requests.
    ///
    /// Default: [`Replay`], which replays every request whose body can be replayed.
    pub fn without_replay(self) -> BearerAuthLayer<NoReplay> {
        self.replay_policy(NoReplay)
    }

    /// Decides with `policy` which requests can be replayed and how; for example
    /// `Replay::new().cap(256 * 1024)` keeps up to 256 KiB of a streaming body instead of 64.
    ///
    /// Default: [`Replay`], which replays every request whose body can be replayed (see
    /// [`replay`](crate::replay)).
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

    /// The configuration its services share.
    pub(crate) fn config(&self) -> &Config {
        self.configs.config()
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
