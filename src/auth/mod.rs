//! The middleware: [`BearerAuthLayer`], the [`BearerAuth`] service it makes, and the service's
//! [`ResponseFuture`].

mod classify;
mod destinations;
mod future;
mod layer;
mod service;

pub use destinations::{Destinations, RequestHead};
pub use future::ResponseFuture;
pub use layer::BearerAuthLayer;
pub use service::BearerAuth;

pub(crate) use classify::grpc_unauthenticated;

use std::sync::Arc;

use crate::stamp::{Stripe, Striped};
use crate::{Origin, Placement, TokenCache};

/// The configuration, once per stripe: a response future keeps an `Arc` of it, and requests of
/// different service clones should not share that reference count (see [`stamp`](crate::stamp)).
#[derive(Clone)]
pub(crate) struct Configs(Arc<Striped<Arc<Config>>>);

impl Configs {
    pub(crate) fn new(config: Config) -> Self {
        Self(Arc::new(Striped::from_fn(|stripe| {
            Arc::new(Config {
                stripe,
                ..config.clone()
            })
        })))
    }

    /// The copy of `stripe`.
    #[inline]
    pub(crate) fn get(&self, stripe: Stripe) -> &Arc<Config> {
        self.0.get(stripe)
    }

    /// The configuration, to read or to derive another from.
    pub(crate) fn config(&self) -> &Config {
        self.0.get(Stripe::FIRST)
    }
}

/// What every clone of a layer and its services shares.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) cache: TokenCache,
    pub(crate) placement: Placement,
    /// When set, only requests to these origins get a token.
    pub(crate) origins: Option<Arc<[Origin]>>,
    /// When set, each request gets the token of its key.
    pub(crate) destinations: Option<Destinations>,
    /// Whose copy this is: the header values stamped with it are this stripe's.
    pub(crate) stripe: Stripe,
    /// With DPoP, in the copy made for one request: the origin whose `DPoP-Nonce` its
    /// responses carry.
    pub(crate) nonce_origin: Option<Box<str>>,
}

/// Whether a request may carry the token.
pub(crate) enum Destination {
    /// Stamp it.
    Trusted,
    /// Send it as it is: another origin.
    Elsewhere,
    /// Fail it: origins are restricted and its URI has none, so nobody can tell.
    Unknown,
}

impl Config {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            placement: Placement::default(),
            origins: None,
            destinations: None,
            stripe: Stripe::FIRST,
            nonce_origin: None,
        }
    }

    /// A copy for one DPoP request to `origin`.
    pub(crate) fn with_nonce_origin(&self, origin: Box<str>) -> Self {
        Self {
            nonce_origin: Some(origin),
            ..self.clone()
        }
    }

    /// Whether a request to `uri` may carry the token.
    #[inline]
    pub(crate) fn destination(&self, uri: &http::Uri) -> Destination {
        match &self.origins {
            None => Destination::Trusted,
            Some(_) if uri.host().is_none() => Destination::Unknown,
            Some(origins) if origins.iter().any(|origin| origin.matches(uri)) => {
                Destination::Trusted
            }
            Some(_) => Destination::Elsewhere,
        }
    }
}
