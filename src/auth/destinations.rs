//! Serving several destinations from one layer: which [`TokenKey`] each request gets.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::uri::Scheme;
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
    origins: Arc<Origins>,
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
    /// The key of the origin table's entry at this position.
    Origin(usize, &'a TokenKey),
    Key(&'a TokenKey),
    Owned(TokenKey),
    None,
}

impl Destinations {
    /// Destinations whose tokens `cache` holds, with no mapping yet.
    pub fn new(cache: KeyedCache) -> Self {
        Self {
            cache,
            origins: Arc::default(),
            select: None,
            otherwise: None,
        }
    }

    /// Requests to `origin` get the token of `key`. Checked in the order added, before
    /// [`select`](Self::select).
    pub fn origin(mut self, origin: Origin, key: TokenKey) -> Self {
        Arc::make_mut(&mut self.origins).push(origin, key);
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
        if let Some((at, key)) = self.origins.find(uri) {
            return Choice::Origin(at, key);
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

/// The origin table, indexed by a hash of scheme, host (case-insensitive) and port, so that
/// finding a request's key costs one hash of its host whatever the number of origins: a scan
/// of 100 origins with [`Origin::matches`] took 1.8 µs a request, four times the rest of the
/// cached path.
#[derive(Clone, Default)]
struct Origins {
    entries: Vec<OriginEntry>,
    /// The hash of an origin's parts → the position of the first origin with that hash; the
    /// others follow through [`OriginEntry::next`].
    index: HashMap<u64, usize, BuildHasherDefault<KeyHasher>>,
    /// The same origins by the text of their authority as a request's URI writes it
    /// (`host:port`, and `host` alone for the scheme's default port), so that most requests
    /// find theirs without parsing the host and port out of the URI.
    texts: Texts,
}

/// The origins' authority texts in an open-addressing table with linear probing: a lookup
/// hashes the request's authority once and reads one slot, rarely two, where a `HashMap` of the
/// same texts cost the keyed path at 100 origins about 0.05 × `AddAuthorization` more (see
/// BENCHMARKS.md, #14). Slots outnumber texts at least two to one, so a probe always ends at an
/// empty slot; the texts are the table's, chosen by whoever configured it, so a request cannot
/// make the runs of full slots longer.
#[derive(Clone, Default)]
struct Texts {
    /// A power of two of slots, or none while there are no texts.
    slots: Box<[TextSlot]>,
    texts: Vec<RawEntry>,
}

#[derive(Clone, Copy, Default)]
struct TextSlot {
    hash: u64,
    /// The text's position in `texts` plus one; 0 for an empty slot.
    text: u32,
}

/// An authority's text that an entry of the table is found by.
#[derive(Clone)]
struct RawEntry {
    scheme: Scheme,
    authority: Box<str>,
    /// The position of the entry in `entries`.
    entry: usize,
}

impl Texts {
    fn push(&mut self, scheme: &Scheme, authority: String, entry: usize) {
        self.texts.push(RawEntry {
            scheme: scheme.clone(),
            authority: authority.into(),
            entry,
        });
        if self.texts.len() * 2 > self.slots.len() {
            let size = (self.texts.len() * 2).next_power_of_two().max(8);
            self.slots = vec![TextSlot::default(); size].into_boxed_slice();
            for at in 0..self.texts.len() {
                self.place(at);
            }
        } else {
            self.place(self.texts.len() - 1);
        }
    }

    fn place(&mut self, at: usize) {
        let raw = &self.texts[at];
        let hash = text_hash(&raw.scheme, raw.authority.as_bytes());
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].text != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = TextSlot {
            hash,
            text: u32::try_from(at + 1).expect("fewer than 2^32 origins"),
        };
    }

    /// The entry whose text is `authority`, with the request's scheme.
    #[inline]
    fn find(&self, scheme: &Scheme, authority: &str) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let bytes = authority.as_bytes();
        let hash = text_hash(scheme, bytes);
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.text == 0 {
                return None;
            }
            if slot.hash == hash {
                let raw = &self.texts[slot.text as usize - 1];
                let text = raw.authority.as_bytes();
                // Requests write hosts as the table does, in lower case, nearly always.
                if (text == bytes || text.eq_ignore_ascii_case(bytes)) && raw.scheme == *scheme {
                    return Some(raw.entry);
                }
            }
            i = (i + 1) & mask;
        }
    }
}

/// An origin of the table, with what a request's URI is compared with.
#[derive(Clone)]
struct OriginEntry {
    scheme: Scheme,
    /// In lower case, as [`Origin`] keeps it.
    host: Box<str>,
    port: u16,
    key: TokenKey,
    /// The next origin (added later) with the same hash.
    next: Option<usize>,
    origin: Origin,
}

impl Origins {
    fn push(&mut self, origin: Origin, key: TokenKey) {
        // An origin displays as `scheme://host:port`, its host in lower case.
        let uri: Uri = origin.to_string().parse().expect("an origin is a URI");
        let (scheme, host, port) = parts(&uri).expect("an origin has scheme, host and port");
        let position = self.entries.len();
        let hash = origin_hash(scheme, host, port);
        match self.index.get(&hash) {
            None => {
                self.index.insert(hash, position);
            }
            Some(&first) => {
                let mut last = first;
                while let Some(next) = self.entries[last].next {
                    last = next;
                }
                self.entries[last].next = Some(position);
            }
        }
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        // An origin already in the table keeps its texts: the first one added wins.
        let known = self.entries.iter().any(|entry| {
            entry.port == port && entry.scheme == *scheme && entry.host.as_ref() == host
        });
        let mut texts = Vec::new();
        if !known {
            texts.push(format!("{host}:{port}"));
            if port == default_port {
                texts.push(host.to_owned());
            }
        }
        for text in texts {
            self.texts.push(scheme, text, position);
        }
        self.entries.push(OriginEntry {
            scheme: scheme.clone(),
            host: host.into(),
            port,
            key,
            next: None,
            origin,
        });
    }

    /// The key of the first origin added that `uri` belongs to (as [`Origin::matches`]).
    #[inline]
    fn find(&self, uri: &Uri) -> Option<(usize, &TokenKey)> {
        if self.entries.is_empty() {
            return None;
        }
        // By the authority's text first. Any text the table does not hold (userinfo, a port
        // written `:0443`, another origin) goes on to the parsed comparison below, which
        // decides as `Origin::matches` does; a hit here is an origin of the table.
        let scheme = uri.scheme()?;
        if let Some(at) = self.texts.find(scheme, uri.authority()?.as_str()) {
            return Some((at, &self.entries[at].key));
        }
        let (scheme, host, port) = parts(uri)?;
        let mut at = self.index.get(&origin_hash(scheme, host, port)).copied();
        while let Some(i) = at {
            let entry = &self.entries[i];
            if entry.port == port
                && entry.scheme == *scheme
                && entry.host.eq_ignore_ascii_case(host)
            {
                return Some((i, &entry.key));
            }
            at = entry.next;
        }
        None
    }
}

impl fmt::Debug for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| (&entry.origin, &entry.key)))
            .finish()
    }
}

/// The scheme, host and port (the scheme's default if none) of an absolute URI.
#[inline]
fn parts(uri: &Uri) -> Option<(&Scheme, &str, u16)> {
    let (scheme, host) = (uri.scheme()?, uri.host()?);
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    Some((scheme, host, uri.port_u16().unwrap_or(default_port)))
}

/// A hash of an origin's parts that ignores the host's ASCII case: FxHash's step over the host
/// eight bytes at a time, each byte with bit 0x20 set (which lower-cases the letters, so hosts
/// equal but for case hash alike; the few other bytes it merges are told apart by the
/// comparison after the lookup). A byte at a time, the keyed path at 100 origins took 1.39 ×
/// tower-http's `AddAuthorization` instead of 1.36.
#[inline]
fn origin_hash(scheme: &Scheme, host: &str, port: u16) -> u64 {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let step =
        |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    let seed = (u64::from(port) << 1) | u64::from(*scheme == Scheme::HTTPS);
    let bytes = host.as_bytes();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut hash = step(seed, bytes.len() as u64);
    if bytes.len() < 8 {
        let short = bytes
            .iter()
            .rev()
            .fold(0, |word, &byte| (word << 8) | u64::from(byte));
        return step(hash, short | CASE);
    }
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        hash = step(
            hash,
            u64::from_le_bytes(chunk.try_into().expect("8 bytes")) | CASE,
        );
    }
    if !chunks.remainder().is_empty() {
        // The last eight bytes, overlapping the last chunk: the same for the same host.
        hash = step(hash, word(bytes.len() - 8) | CASE);
    }
    hash
}

/// A hash of an authority's text (and whether its scheme is `https`) that ignores ASCII case,
/// as [`origin_hash`] does, but folds the text's words with a rotation each and multiplies once
/// at the end: the lookup of every keyed request pays it, and a multiply per word put a chain of
/// dependent multiplications on that path. Texts that fold alike only share a run of slots; the
/// comparison after the lookup tells them apart.
#[inline]
fn text_hash(scheme: &Scheme, bytes: &[u8]) -> u64 {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut folded = ((bytes.len() as u64) << 1) | u64::from(*scheme == Scheme::HTTPS);
    if bytes.len() < 8 {
        let short = bytes
            .iter()
            .rev()
            .fold(0, |word, &byte| (word << 8) | u64::from(byte));
        folded = folded.rotate_left(23) ^ (short | CASE);
    } else {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let chunk = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            folded = folded.rotate_left(23) ^ (chunk | CASE);
        }
        if !chunks.remainder().is_empty() {
            // The last eight bytes, overlapping the last chunk: the same for the same text.
            folded = folded.rotate_left(23) ^ (word(bytes.len() - 8) | CASE);
        }
    }
    let hash = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The slot is chosen by the low bits: give them the high bits' mixing too.
    hash ^ (hash >> 29)
}

/// The caches of the keys one service clone has served, each with the clone's own view of its
/// token ([`Local`]), so that the cached path of a keyed request takes no lock and allocates
/// nothing once the clone has served its key.
pub(crate) struct KeyedLocals {
    epoch: u64,
    /// Where each key's view is in `locals`: one lookup a request, and the views of the keys a
    /// clone serves lie together.
    slots: HashMap<TokenKey, usize, BuildHasherDefault<KeyHasher>>,
    /// For each entry of the origin table, where its key's view is in `locals` (`NONE` until
    /// this clone served it): a request found by the table needs no second lookup.
    by_origin: Vec<usize>,
    locals: Vec<(Local, Arc<Config>)>,
}

const NONE: usize = usize::MAX;

impl KeyedLocals {
    pub(crate) fn new() -> Self {
        Self {
            epoch: 0,
            slots: HashMap::default(),
            by_origin: Vec::new(),
            locals: Vec::new(),
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
        origin: Option<usize>,
    ) -> &mut (Local, Arc<Config>) {
        let epoch = cache.epoch();
        if epoch != self.epoch {
            self.forget_dropped(cache);
            self.epoch = epoch;
        }
        if let Some(&at) = origin.and_then(|origin| self.by_origin.get(origin)) {
            if at != NONE {
                return &mut self.locals[at];
            }
        }
        let at = match self.slots.get(key) {
            Some(&at) => at,
            None => self.add(layer, cache, key),
        };
        if let Some(origin) = origin {
            if self.by_origin.len() <= origin {
                self.by_origin.resize(origin + 1, NONE);
            }
            self.by_origin[origin] = at;
        }
        &mut self.locals[at]
    }

    /// Makes this clone's view of `key`; returns where it is.
    #[cold]
    fn add(&mut self, layer: &Config, cache: &KeyedCache, key: &TokenKey) -> usize {
        if self.locals.len() >= cache.max_keys() {
            self.slots.clear();
            self.by_origin.clear();
            self.locals.clear();
        }
        let key_cache = cache.cache(key);
        let local = key_cache.local();
        let config = Arc::new(Config {
            cache: key_cache,
            ..layer.clone()
        });
        self.slots.insert(key.clone(), self.locals.len());
        self.locals.push((local, config));
        self.locals.len() - 1
    }

    /// Keys were dropped from the shared map: forgets those this clone holds a stale cache for,
    /// so that one key never has two caches.
    #[cold]
    fn forget_dropped(&mut self, cache: &KeyedCache) {
        // Positions change below: the table's shortcuts are made again as requests come.
        self.by_origin.clear();
        let mut old: Vec<Option<(Local, Arc<Config>)>> = std::mem::take(&mut self.locals)
            .into_iter()
            .map(Some)
            .collect();
        for (key, at) in std::mem::take(&mut self.slots) {
            if let Some(view) = old[at].take() {
                if cache.holds(&key, view.0.cache()) {
                    self.slots.insert(key, self.locals.len());
                    self.locals.push(view);
                }
            }
        }
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
