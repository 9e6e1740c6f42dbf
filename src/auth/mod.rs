//! The middleware: [`BearerAuthLayer`], [`BearerAuth`] and its [`ResponseFuture`].

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::BearerAuthLayer;
pub use service::BearerAuth;

use std::fmt;

use crate::{Placement, TokenCache};

/// What every clone of a layer and its services shares.
pub(crate) struct Config {
    pub(crate) cache: TokenCache,
    pub(crate) placement: Placement,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("cache", &self.cache)
            .field("placement", &self.placement)
            .finish()
    }
}
