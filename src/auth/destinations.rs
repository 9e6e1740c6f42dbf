//! Serving several destinations from one layer: which [`TokenKey`] each request gets.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Request, Uri};

use super::Config;
use crate::cache::{KeyedCache, Local};
use crate::{Origin, TokenKey};

/// How a layer serving several destinations chooses the token of each request: a table of
/// origins, a function of the request's head, or a [`TokenKey`] the caller put in the request's
/// extensions (which wins over the others). Give it to
/// [`BearerAuthLayer::destinations`](crate::BearerAuthLayer::destinations).
///
/// A request that maps to no key is sent without a token (the safe default: a token is never
/// sent where nobody said it belongs), unless [`otherwise`](Self::otherwise) names a key for
/// such requests.
///
/// ```
/// use tower_bearer::auth::Destinations;
/// use tower_bearer::{TokenCache, TokenKey, StaticToken};
///
/// let cache = TokenCache::builder(StaticToken::new("t0k3n")).build_keyed();
/// let destinations = Destinations::new(cache)
///     .origin("https://billing.example.com".parse().unwrap(), TokenKey::audience_of("billing"))
///     .origin("https://search.example.com".parse().unwrap(), TokenKey::audience_of("search"))
///     .select(|head| {
///         head.uri()
///             .path()
///             .starts_with("/reports/")
///             .then(|| TokenKey::scopes_of(["reports:read"]))
///     });
/// # drop(destinations);
/// ```
#[derive(Clone)]
pub struct Destinations {
    cache: KeyedCache,
    origins: Arc<[(Origin, TokenKey)]>,
    select: Option<Arc<Select>>,
    otherwise: Option<TokenKey>,
}

type Select = dyn Fn(&RequestHead<'_>) -> Option<TokenKey> + Send + Sync;

/// The head of a request, as [`Destinations::select`] sees it.
#[derive(Debug)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl RequestHead<'_> {
    /// The request's method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &Uri {
        self.uri
    }

    /// The request's headers (before the token is stamped).
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The request's extensions.
    pub fn extensions(&self) -> &Extensions {
        self.extensions
    }
}

/// What a request maps to.
pub(crate) enum Choice<'a> {
    Key(&'a TokenKey),
    Owned(TokenKey),
    None,
}

impl Destinations {
    /// Destinations whose tokens `cache` holds, with no mapping yet.
    pub fn new(cache: KeyedCache) -> Self {
        Self {
            cache,
            origins: Arc::new([]),
            select: None,
            otherwise: None,
        }
    }

    /// Requests to `origin` get the token of `key`. Checked in the order added, before
    /// [`select`](Self::select).
    pub fn origin(mut self, origin: Origin, key: TokenKey) -> Self {
        let mut origins = self.origins.to_vec();
        origins.push((origin, key));
        self.origins = origins.into();
        self
    }

    /// Requests that no origin of the table matches get the key `select` returns for their
    /// head; `None` leaves them to [`otherwise`](Self::otherwise). Return a clone of a key made
    /// beforehand (a reference count) rather than building one per request.
    pub fn select<F>(mut self, select: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<TokenKey> + Send + Sync + 'static,
    {
        self.select = Some(Arc::new(select));
        self
    }

    /// The key of requests that map to no other key.
    ///
    /// Default: none; such requests are sent without a token.
    pub fn otherwise(mut self, key: TokenKey) -> Self {
        self.otherwise = Some(key);
        self
    }

    /// The cache holding the tokens.
    pub fn cache(&self) -> &KeyedCache {
        &self.cache
    }

    /// The key of a request: one in its extensions, else the origin table, else `select`, else
    /// `otherwise`.
    #[inline]
    pub(crate) fn choose<B>(&self, req: &Request<B>) -> Choice<'_> {
        if let Some(key) = req.extensions().get::<TokenKey>() {
            return Choice::Owned(key.clone());
        }
        let uri = req.uri();
        if let Some((_, key)) = self.origins.iter().find(|(origin, _)| origin.matches(uri)) {
            return Choice::Key(key);
        }
        if let Some(select) = &self.select {
            let head = RequestHead {
                method: req.method(),
                uri,
                headers: req.headers(),
                extensions: req.extensions(),
            };
            if let Some(key) = select(&head) {
                return Choice::Owned(key);
            }
        }
        match &self.otherwise {
            Some(key) => Choice::Key(key),
            None => Choice::None,
        }
    }
}

impl fmt::Debug for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destinations")
            .field("cache", &self.cache)
            .field("origins", &self.origins)
            .field("select", &self.select.as_ref().map(|_| "<fn>"))
            .field("otherwise", &self.otherwise)
            .finish()
    }
}

/// The caches of the keys one service clone has served, each with the clone's own view of its
/// token ([`Local`]), so that the cached path of a keyed request takes no lock and allocates
/// nothing once the clone has served its key.
pub(crate) struct KeyedLocals {
    epoch: u64,
    locals: HashMap<TokenKey, (Local, Arc<Config>), BuildHasherDefault<KeyHasher>>,
}

impl KeyedLocals {
    pub(crate) fn new() -> Self {
        Self {
            epoch: 0,
            locals: HashMap::default(),
        }
    }

    /// This clone's view of the cache of `key`, and the configuration of `layer` with that
    /// cache (this clone's own copy, so that its requests do not share its reference count with
    /// other clones'), made if needed.
    #[inline]
    pub(crate) fn local(
        &mut self,
        layer: &Config,
        cache: &KeyedCache,
        key: &TokenKey,
    ) -> &mut (Local, Arc<Config>) {
        let epoch = cache.epoch();
        if epoch != self.epoch {
            // Keys were dropped from the shared map: forget those this clone holds a stale
            // cache for, so that one key never has two caches.
            self.locals
                .retain(|key, (local, _)| cache.holds(key, local.cache()));
            self.epoch = epoch;
        }
        if !self.locals.contains_key(key) {
            if self.locals.len() >= cache.max_keys() {
                self.locals.clear();
            }
            let key_cache = cache.cache(key);
            let local = key_cache.local();
            let config = Arc::new(Config {
                cache: key_cache,
                ..layer.clone()
            });
            self.locals.insert(key.clone(), (local, config));
        }
        self.locals.get_mut(key).expect("inserted above")
    }
}

impl fmt::Debug for KeyedLocals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLocals")
            .field("keys", &self.locals.len())
            .finish()
    }
}

/// Keys carry their hash, computed when they were built: the map uses it as it is.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `TokenKey`s are hashed here, and they write one `u64`.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}
