//! What a token is for: [`TokenKey`].

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What a token is for: the audiences, scopes and resources it is asked for, and any other
/// parameter its source takes as part of the request.
///
/// A layer that serves several destinations maps each request to a key
/// ([`BearerAuthLayer::destinations`](crate::BearerAuthLayer::destinations)); the cache keeps
/// one token per key, and the source receives the key with each
/// [`TokenRequest`](crate::TokenRequest). Two requests with equal keys share a token; two with
/// different keys never do.
///
/// Keys compare by content, whatever order their parts were given in: scopes, audiences and
/// resources are sets, parameters a map. A key is cheap to clone (a reference count) and hashes
/// in constant time (its hash is computed once, when it is built). The default key,
/// [`TokenKey::default()`], asks for the token the source is configured for.
///
/// ```
/// use tower_bearer::TokenKey;
///
/// let billing = TokenKey::builder()
///     .audience("https://billing.example.com")
///     .scope("invoices:read")
///     .scope("invoices:write")
///     .build();
/// let same = TokenKey::builder()
///     .scope("invoices:write")
///     .audience("https://billing.example.com")
///     .scope("invoices:read")
///     .build();
/// assert_eq!(billing, same);
/// assert_ne!(billing, TokenKey::default());
/// assert_eq!(billing.scopes().collect::<Vec<_>>(), ["invoices:read", "invoices:write"]);
/// ```
#[derive(Clone)]
pub struct TokenKey(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    /// Computed once, when the key is built, so that hashing a key on the request path writes
    /// one `u64`. Equal parts give equal hashes, so comparing it first is only a shortcut.
    hash: u64,
    audiences: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    resources: Box<[Box<str>]>,
    params: Box<[(Box<str>, Box<str>)]>,
}

/// Builds a [`TokenKey`]. Made by [`TokenKey::builder`].
#[derive(Debug, Default)]
pub struct TokenKeyBuilder {
    audiences: Vec<Box<str>>,
    scopes: Vec<Box<str>>,
    resources: Vec<Box<str>>,
    params: Vec<(Box<str>, Box<str>)>,
}

impl TokenKey {
    /// A builder for a key.
    pub fn builder() -> TokenKeyBuilder {
        TokenKeyBuilder::default()
    }

    /// A key for these scopes and nothing else.
    pub fn scopes_of<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        scopes
            .into_iter()
            .fold(Self::builder(), |builder, scope| builder.scope(scope))
            .build()
    }

    /// A key for this audience and nothing else.
    pub fn audience_of(audience: impl Into<String>) -> Self {
        Self::builder().audience(audience).build()
    }

    /// A key for this resource (RFC 8707) and nothing else.
    pub fn resource_of(resource: impl Into<String>) -> Self {
        Self::builder().resource(resource).build()
    }

    /// The audiences, sorted.
    pub fn audiences(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.audiences.iter().map(|s| &**s)
    }

    /// The scopes, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// The scopes as the space-separated `scope` parameter of RFC 6749 §3.3; `None` if there
    /// are none.
    pub fn scope(&self) -> Option<String> {
        (!self.0.scopes.is_empty()).then(|| self.0.scopes.join(" "))
    }

    /// The resources (RFC 8707), sorted.
    pub fn resources(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.resources.iter().map(|s| &**s)
    }

    /// The other parameters, sorted by name.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0
            .params
            .iter()
            .map(|(name, value)| (&**name, &**value))
    }

    /// The hash computed when the key was built.
    #[inline]
    pub(crate) fn hash_value(&self) -> u64 {
        self.0.hash
    }

    /// Whether this is the default key: nothing asked for beyond what the source is configured
    /// with.
    pub fn is_default(&self) -> bool {
        let inner = &*self.0;
        inner.audiences.is_empty()
            && inner.scopes.is_empty()
            && inner.resources.is_empty()
            && inner.params.is_empty()
    }
}

impl Default for TokenKey {
    fn default() -> Self {
        TokenKeyBuilder::default().build()
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for TokenKey {}

impl Hash for TokenKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("TokenKey");
        if !self.0.audiences.is_empty() {
            out.field("audiences", &self.0.audiences);
        }
        if !self.0.scopes.is_empty() {
            out.field("scopes", &self.0.scopes);
        }
        if !self.0.resources.is_empty() {
            out.field("resources", &self.0.resources);
        }
        // Parameter values may be anything a source takes, secrets included: names only.
        if !self.0.params.is_empty() {
            let names: Vec<&str> = self.0.params.iter().map(|(name, _)| &**name).collect();
            out.field("params", &names);
        }
        out.finish()
    }
}

impl TokenKeyBuilder {
    /// Adds an audience (Auth0's and Okta's `audience` parameter).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into().into());
        self
    }

    /// Adds a scope (RFC 6749 §3.3). A string with spaces is several scopes.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        let scope = scope.into();
        self.scopes
            .extend(scope.split(' ').filter(|s| !s.is_empty()).map(Into::into));
        self
    }

    /// Adds a resource indicator (RFC 8707).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into().into());
        self
    }

    /// Adds a parameter of the token request; a second value for the same name replaces the
    /// first.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name: Box<str> = name.into().into();
        self.params.retain(|(existing, _)| *existing != name);
        self.params.push((name, value.into().into()));
        self
    }

    /// Builds the key.
    pub fn build(self) -> TokenKey {
        let set = |mut values: Vec<Box<str>>| {
            values.sort();
            values.dedup();
            values.into_boxed_slice()
        };
        let mut params = self.params;
        params.sort();
        let (audiences, scopes, resources) =
            (set(self.audiences), set(self.scopes), set(self.resources));
        let mut hasher = DefaultHasher::new();
        (&audiences, &scopes, &resources, &params).hash(&mut hasher);
        TokenKey(Arc::new(Inner {
            hash: hasher.finish(),
            audiences,
            scopes,
            resources,
            params: params.into_boxed_slice(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn keys_are_equal_whatever_the_order_and_repetition_of_their_parts() {
        let a = TokenKey::builder()
            .scope("b a")
            .scope("a")
            .audience("x")
            .resource("r2")
            .resource("r1")
            .param("p", "1")
            .build();
        let b = TokenKey::builder()
            .resource("r1")
            .param("p", "0")
            .param("p", "1")
            .resource("r2")
            .audience("x")
            .scope("a b")
            .build();
        assert_eq!(a, b);
        let set: HashSet<TokenKey> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_eq!(a.scope().as_deref(), Some("a b"));
        assert_eq!(a.params().collect::<Vec<_>>(), [("p", "1")]);
    }

    #[test]
    fn each_kind_of_part_counts() {
        let keys = [
            TokenKey::default(),
            TokenKey::audience_of("x"),
            TokenKey::scopes_of(["x"]),
            TokenKey::resource_of("x"),
            TokenKey::builder().param("x", "x").build(),
            TokenKey::builder().param("x", "y").build(),
        ];
        let set: HashSet<&TokenKey> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
        assert!(keys[0].is_default());
        assert!(keys[1..].iter().all(|key| !key.is_default()));
    }

    #[test]
    fn debug_shows_parameter_names_not_values() {
        let key = TokenKey::builder()
            .audience("api")
            .param("client_assertion", "SECRET-value")
            .build();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("api") && shown.contains("client_assertion"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
