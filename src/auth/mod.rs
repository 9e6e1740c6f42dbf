//! The middleware: [`BearerAuthLayer`], [`BearerAuth`] and its [`ResponseFuture`].

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::BearerAuthLayer;
pub use service::BearerAuth;

use std::fmt;

use std::sync::Arc;

use crate::stripe::STRIPES;
use crate::{Origin, Placement, TokenCache};

/// The configuration, once per stripe: a response future keeps an `Arc` of it, and requests of
/// different service clones should not share that reference count (see [`stripe`](crate::stripe)).
#[derive(Clone)]
pub(crate) struct Configs(Arc<[Arc<Config>; STRIPES]>);

impl Configs {
    pub(crate) fn new(config: Config) -> Self {
        Self(Arc::new(std::array::from_fn(|_| Arc::new(config.clone()))))
    }

    /// The copy of `stripe`.
    #[inline]
    pub(crate) fn get(&self, stripe: usize) -> &Arc<Config> {
        // A constant (8): compiled to a mask, where a slice's length would need a division.
        &self.0[stripe % STRIPES]
    }

    /// The configuration, to read or to derive another from.
    pub(crate) fn config(&self) -> &Config {
        &self.0[0]
    }
}

/// What every clone of a layer and its services shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) cache: TokenCache,
    pub(crate) placement: Placement,
    /// When set, only requests to these origins get a token.
    pub(crate) origins: Option<Arc<[Origin]>>,
}

impl Config {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            placement: Placement::default(),
            origins: None,
        }
    }

    /// Whether a request to `uri` may carry the token.
    #[inline]
    pub(crate) fn stamps(&self, uri: &http::Uri) -> bool {
        match &self.origins {
            None => true,
            Some(origins) => origins.iter().any(|origin| origin.matches(uri)),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("cache", &self.cache)
            .field("placement", &self.placement)
            .field("origins", &self.origins)
            .finish()
    }
}
