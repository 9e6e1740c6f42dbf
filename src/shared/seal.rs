//! What the store holds: the store key a token is kept under, and the token itself, sealed
//! (AES-256-GCM) and prefixed with its fingerprint.
//!
//! A stored value is laid out as:
//!
//! | bytes | what |
//! |---|---|
//! | 0 | the format: 1 for AES-256-GCM, 2 for a token in clear |
//! | 1..33 | the fingerprint of the access token (compared by the store to delete a rejected token) |
//! | 33..45 | the nonce (sealed format only) |
//! | rest | the token (encrypted, with its 16-byte tag, in the sealed format) |
//!
//! The token, before sealing: a version byte (1), its expiry as milliseconds since the UNIX
//! epoch (u64, big-endian), the access token, then the token type, the refresh token and the
//! scope, each a presence byte and, if present, a u32 length and the bytes.

use std::fmt;
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::digest::{self, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{AccessToken, RefreshToken, Token, TokenKey};

/// Where the fingerprint sits in a stored value; stores compare these bytes to delete a
/// rejected token (see [`TokenStore::delete_if_fingerprint`](super::TokenStore::delete_if_fingerprint)).
pub const FINGERPRINT: std::ops::Range<usize> = 1..33;

const SEALED: u8 = 1;
const CLEAR: u8 = 2;
const BODY_VERSION: u8 = 1;
/// Far more than any token: a longer value is garbage, not a token.
const MAX_VALUE: usize = 256 * 1024;

/// The key tokens are encrypted with in the shared store, or the explicit choice to store them
/// in clear.
///
/// Every replica of a fleet needs the same key: a token sealed with another key does not open,
/// and counts as garbage (it is fetched again and overwritten). Keep it with the application's
/// other secrets, not in the store. Two keys are derived from it (HMAC-SHA-256 with distinct
/// labels): one encrypts, the other fingerprints access tokens so that the store can compare
/// tokens without ever seeing one.
///
/// `Debug` never shows the key.
///
/// ```
/// use tower_bearer::shared::SealingKey;
///
/// let key = SealingKey::new([7; 32]);
/// assert!(!format!("{key:?}").contains('7'));
/// assert!(SealingKey::from_slice(&[1, 2, 3]).is_err());
/// ```
pub struct SealingKey {
    seal: Option<LessSafeKey>,
    fingerprint: hmac::Key,
    /// Keys that tokens sealed before a rotation open with.
    previous: Vec<SealingKey>,
}

/// A sealing key of the wrong length (32 bytes are needed).
#[derive(Debug)]
pub struct InvalidKeyLength(usize);

impl fmt::Display for InvalidKeyLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sealing key has 32 bytes, not {}", self.0)
    }
}

impl std::error::Error for InvalidKeyLength {}

impl SealingKey {
    /// A key from 32 random bytes (such as `openssl rand -hex 32`, decoded).
    pub fn new(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        let master = hmac::Key::new(hmac::HMAC_SHA256, &*key);
        let seal = hmac::sign(&master, b"tower-bearer/shared/seal/v1");
        let fingerprint = hmac::sign(&master, b"tower-bearer/shared/fingerprint/v1");
        let unbound = UnboundKey::new(&AES_256_GCM, seal.as_ref())
            .expect("an HMAC-SHA-256 tag is an AES-256 key");
        Self {
            seal: Some(LessSafeKey::new(unbound)),
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fingerprint.as_ref()),
            previous: Vec::new(),
        }
    }

    /// A key from a slice.
    ///
    /// # Errors
    ///
    /// When the slice does not hold exactly 32 bytes.
    pub fn from_slice(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        let key: [u8; 32] = key.try_into().map_err(|_| InvalidKeyLength(key.len()))?;
        Ok(Self::new(key))
    }

    /// Stores tokens **in clear**: anyone who can read the store (a replica's credentials, a
    /// backup, `MONITOR`) can then use them. Only for a store no one else can read, in
    /// development. Fingerprints are then HMAC-SHA-256 digests under a fixed, public key.
    pub fn insecure_plaintext() -> Self {
        Self {
            seal: None,
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, b"tower-bearer/shared/in-clear/v1"),
            previous: Vec::new(),
        }
    }

    /// Also opens tokens sealed with `previous`, to rotate keys without a fleet refetching
    /// every token: deploy the new key with the old one as `previous`, and drop the old one
    /// once every replica runs the new key and a token lifetime has passed. New tokens are
    /// always sealed with the new key. (A token sealed with the old key and rejected by a
    /// server is not deleted from the store, as its fingerprint differs; it is still never
    /// handed back to the replica that replaces it, and the new token overwrites it.)
    pub fn with_previous(mut self, previous: SealingKey) -> Self {
        self.previous.push(previous);
        self
    }

    /// The fingerprint of an access token: what the store compares, never the token.
    pub(super) fn fingerprint(&self, token: &AccessToken) -> [u8; 32] {
        let tag = hmac::sign(&self.fingerprint, token.secret().as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The value stored for `token`, which expires at `expires_at_ms` (UNIX milliseconds),
    /// under `store_key`.
    pub(super) fn seal(
        &self,
        token: &Token,
        expires_at_ms: u64,
        store_key: &str,
        random: &SystemRandom,
    ) -> Option<Vec<u8>> {
        let fingerprint = self.fingerprint(token.access_token());
        // Room for everything at once: a buffer that grew would leave token bytes behind in the
        // memory it freed, which nothing overwrites.
        let text_len = token.access_token().secret().len()
            + token.token_type().map_or(0, str::len)
            + token.refresh_token().map_or(0, |t| t.secret().len())
            + token.scope().map_or(0, str::len);
        let mut body = Zeroizing::new(Vec::with_capacity(64 + text_len));
        body.push(BODY_VERSION);
        body.extend_from_slice(&expires_at_ms.to_be_bytes());
        put(&mut body, token.access_token().secret());
        put_optional(&mut body, token.token_type());
        // The refresh token is kept apart, under a key of its own (`seal_refresh`): it outlives
        // the access token, and only the replica allowed to refresh needs it.
        put_optional(&mut body, None);
        put_optional(&mut body, token.scope());

        let Some(key) = &self.seal else {
            let mut value = Vec::with_capacity(1 + 32 + body.len());
            value.push(CLEAR);
            value.extend_from_slice(&fingerprint);
            value.extend_from_slice(&body);
            return Some(value);
        };
        let mut nonce = [0; NONCE_LEN];
        random.fill(&mut nonce).ok()?;
        let mut value = Vec::with_capacity(1 + 32 + NONCE_LEN + body.len() + 16);
        value.push(SEALED);
        value.extend_from_slice(&fingerprint);
        value.extend_from_slice(&nonce);
        let at = value.len();
        value.extend_from_slice(&body);
        let mut sealed = value.split_off(at);
        let aad = associated(store_key, &fingerprint);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut sealed,
        )
        .ok()?;
        value.extend_from_slice(&sealed);
        Some(value)
    }

    /// The value stored beside the token of `store_key` for its refresh token.
    pub(super) fn seal_refresh(
        &self,
        refresh_token: &RefreshToken,
        store_key: &str,
        random: &SystemRandom,
    ) -> Option<Vec<u8>> {
        let holder = Token::new(refresh_token.secret());
        self.seal(&holder, 0, &refresh_store_key(store_key), random)
    }

    /// The refresh token stored beside the token of `store_key`.
    pub(super) fn open_refresh(
        &self,
        value: &[u8],
        store_key: &str,
    ) -> Result<RefreshToken, Garbage> {
        let opened = self.open(value, &refresh_store_key(store_key))?;
        Ok(RefreshToken::new(opened.token.access_token().secret()))
    }

    /// The token a stored value holds and its expiry (UNIX milliseconds). The fingerprint
    /// must be the token's under this key.
    pub(super) fn open(&self, value: &[u8], store_key: &str) -> Result<Opened, Garbage> {
        let opened = self.open_with_this_key(value, store_key);
        if opened.is_err() {
            for previous in &self.previous {
                if let Ok(opened) = previous.open(value, store_key) {
                    return Ok(opened);
                }
            }
        }
        opened
    }

    fn open_with_this_key(&self, value: &[u8], store_key: &str) -> Result<Opened, Garbage> {
        if value.len() > MAX_VALUE || value.len() < FINGERPRINT.end {
            return Err(Garbage("a value of the wrong size"));
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(&value[FINGERPRINT]);
        let rest = &value[FINGERPRINT.end..];
        let body = match (value[0], &self.seal) {
            (SEALED, Some(key)) => {
                if rest.len() < NONCE_LEN {
                    return Err(Garbage("a sealed value without its nonce"));
                }
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(nonce)
                    .map_err(|_| Garbage("a sealed value without its nonce"))?;
                let mut buffer = Zeroizing::new(sealed.to_vec());
                let aad = associated(store_key, &fingerprint);
                let plain = key
                    .open_in_place(nonce, Aad::from(&aad), &mut buffer)
                    .map_err(|_| {
                        Garbage("a value that does not open with this key (another sealing key?)")
                    })?;
                Zeroizing::new(plain.to_vec())
            }
            (CLEAR, None) => Zeroizing::new(rest.to_vec()),
            (SEALED, None) => return Err(Garbage("a sealed value, but no sealing key")),
            (CLEAR, Some(_)) => return Err(Garbage("a token in clear, but a sealing key")),
            _ => return Err(Garbage("a value of an unknown format")),
        };
        let (token, expires_at_ms) = parse(&body).ok_or(Garbage("an unreadable token"))?;
        if self.fingerprint(token.access_token()) != fingerprint {
            return Err(Garbage("a token that does not match its fingerprint"));
        }
        Ok(Opened {
            token,
            expires_at_ms,
        })
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.seal.is_some() {
            "AES-256-GCM"
        } else {
            "in clear"
        };
        f.debug_struct("SealingKey")
            .field("mode", &mode)
            .field("previous", &self.previous)
            .finish()
    }
}

/// A token read from the store.
pub(super) struct Opened {
    pub(super) token: Token,
    pub(super) expires_at_ms: u64,
}

/// What was wrong with a stored value (no part of the value itself).
#[derive(Debug, Clone, Copy)]
pub(super) struct Garbage(pub(super) &'static str);

/// What a refresh token is sealed under: not its access token's store key, so that neither
/// value opens as the other.
fn refresh_store_key(store_key: &str) -> String {
    format!("{store_key}:refresh")
}

/// Binds a sealed value to its key and fingerprint: copied under another key, or given another
/// fingerprint, it does not open.
fn associated(store_key: &str, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(store_key.len() + 32);
    aad.extend_from_slice(store_key.as_bytes());
    aad.extend_from_slice(fingerprint);
    aad
}

fn put(out: &mut Vec<u8>, text: &str) {
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..len as usize]);
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put(out, text);
        }
        None => out.push(0),
    }
}

fn parse(body: &[u8]) -> Option<(Token, u64)> {
    let mut reader = Reader(body);
    if reader.take(1)? != [BODY_VERSION] {
        return None;
    }
    let expires_at_ms = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
    let mut token = Token::new(reader.text()?);
    if let Some(kind) = reader.optional()? {
        token = token.with_token_type(kind);
    }
    if let Some(refresh) = reader.optional()? {
        token = token.with_refresh_token(RefreshToken::new(refresh));
    }
    if let Some(scope) = reader.optional()? {
        token = token.with_scope(scope);
    }
    reader.0.is_empty().then_some((token, expires_at_ms))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn optional(&mut self) -> Option<Option<String>> {
        match self.take(1)? {
            [0] => Some(None),
            [1] => self.text().map(Some),
            _ => None,
        }
    }
}

/// The store key of the token for `key` from the source described by `identity`: the prefix
/// and a SHA-256 digest in braces (a Redis Cluster hash tag, so the lease, kept next to it,
/// is in the same slot).
pub(super) fn store_key(prefix: &str, identity: &str, key: &TokenKey) -> String {
    let mut context = digest::Context::new(&SHA256);
    let mut part = |tag: u8, text: &str| {
        context.update(&[tag]);
        context.update(&(text.len() as u64).to_be_bytes());
        context.update(text.as_bytes());
    };
    part(b'i', identity);
    key.audiences().for_each(|a| part(b'a', a));
    key.scopes().for_each(|s| part(b's', s));
    key.resources().for_each(|r| part(b'r', r));
    for (name, value) in key.params() {
        part(b'n', name);
        part(b'v', value);
    }
    let digest = context.finish();
    let mut out = String::with_capacity(prefix.len() + 2 + 64);
    out.push_str(prefix);
    out.push('{');
    for byte in digest.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out.push('}');
    out
}

/// Milliseconds since the UNIX epoch, `after` from now.
pub(super) fn unix_ms_in(after: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_add(after).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new("acc-3ss")
            .with_token_type("Bearer")
            .with_refresh_token(RefreshToken::new("r3fr3sh"))
            .with_scope("a b")
    }

    #[test]
    fn a_sealed_token_opens_under_its_key_only() {
        let random = SystemRandom::new();
        let key = SealingKey::new([3; 32]);
        let value = key.seal(&token(), 1234, "k1", &random).unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("acc-3ss") && !text.contains("r3fr3sh"));
        let opened = key.open(&value, "k1").ok().unwrap();
        assert_eq!(opened.token.access_token().secret(), "acc-3ss");
        assert!(
            opened.token.refresh_token().is_none(),
            "the refresh token is sealed apart"
        );
        let refresh = key
            .seal_refresh(&RefreshToken::new("r3fr3sh"), "k1", &random)
            .unwrap();
        assert!(!String::from_utf8_lossy(&refresh).contains("r3fr3sh"));
        assert_eq!(
            key.open_refresh(&refresh, "k1").ok().unwrap().secret(),
            "r3fr3sh"
        );
        assert!(key.open_refresh(&refresh, "k2").is_err());
        assert!(
            key.open(&refresh, "k1").is_err(),
            "a refresh value is not a token value"
        );
        assert_eq!(opened.token.scope(), Some("a b"));
        assert_eq!(opened.token.token_type(), Some("Bearer"));
        assert_eq!(opened.expires_at_ms, 1234);
        assert_eq!(value[FINGERPRINT], key.fingerprint(token().access_token()));
        assert!(key.open(&value, "k2").is_err(), "copied under another key");
        assert!(SealingKey::new([4; 32]).open(&value, "k1").is_err());
        assert!(SealingKey::insecure_plaintext().open(&value, "k1").is_err());
        let mut tampered = value.clone();
        tampered[5] ^= 1;
        assert!(key.open(&tampered, "k1").is_err());
        assert!(key.open(&value[..40], "k1").is_err());
    }

    #[test]
    fn a_rotated_key_opens_tokens_sealed_before_the_rotation() {
        let random = SystemRandom::new();
        let old = SealingKey::new([1; 32]);
        let value = old.seal(&token(), 9, "k", &random).unwrap();
        assert!(SealingKey::new([2; 32]).open(&value, "k").is_err());
        let rotated = SealingKey::new([2; 32]).with_previous(SealingKey::new([1; 32]));
        let opened = rotated.open(&value, "k").ok().unwrap();
        assert_eq!(opened.token.access_token().secret(), "acc-3ss");
        let resealed = rotated.seal(&token(), 9, "k", &random).unwrap();
        assert!(
            old.open(&resealed, "k").is_err(),
            "new tokens are sealed with the new key"
        );
    }

    #[test]
    fn in_clear_only_when_asked() {
        let key = SealingKey::insecure_plaintext();
        let value = key.seal(&token(), 1, "k", &SystemRandom::new()).unwrap();
        assert!(String::from_utf8_lossy(&value).contains("acc-3ss"));
        assert!(key.open(&value, "k").is_ok());
        assert!(SealingKey::new([0; 32]).open(&value, "k").is_err());
    }

    #[test]
    fn store_keys_follow_identity_and_token_key_in_any_order() {
        let a = TokenKey::builder().scope("x").scope("y").build();
        let b = TokenKey::builder().scope("y").scope("x").build();
        let k = store_key("p:", "id", &a);
        assert_eq!(k, store_key("p:", "id", &b));
        assert!(k.starts_with("p:{") && k.ends_with('}') && k.len() == 3 + 64 + 1);
        assert_ne!(k, store_key("p:", "id2", &a));
        assert_ne!(k, store_key("p:", "id", &TokenKey::default()));
        // Parts cannot run into each other.
        let xy = TokenKey::builder().scope("xy").build();
        assert_ne!(
            store_key("p:", "i", &xy),
            store_key("p:", "ix", &TokenKey::scopes_of(["y"]))
        );
    }
}
