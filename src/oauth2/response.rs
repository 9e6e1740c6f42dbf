//! The token endpoint's answer (RFC 6749 §5.1 and §5.2), read leniently enough for the servers
//! found in the wild and strictly enough that nothing it sends can make this code panic.

use std::fmt;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::error::{Error, ErrorCode};
use super::redact::Redactions;
use crate::shown::{shown, Shown, MAX_SHOWN};
use crate::{AccessToken, RefreshToken, Token};

/// Largest body read from a token endpoint.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The longest lifetime an `expires_in` can give. The cache adds the lifetime to an `Instant`,
/// which panics on overflow, so absurd values (`1e300`, `u64::MAX`) are saturated here; a
/// century is "never expires" for any process.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(36_525 * 24 * 60 * 60);

/// The longest wait a `Retry-After` can ask for: a server must not be able to stall a client
/// for days with one header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// How much of an error page goes into [`Error::http`]: enough to recognize it, not enough to
/// flood a log line.
const HINT_BYTES: usize = MAX_SHOWN;

/// How much of an unusable `expires_in` goes into the error message.
const VALUE_BYTES: usize = 32;

/// The form content type (RFC 6749 §4.1.2 style bodies that some old servers also use for the
/// token response).
const FORM: &str = "application/x-www-form-urlencoded";

/// A successful token response (RFC 6749 §5.1).
///
/// Its `Debug` output shows neither the access token, nor the refresh token, nor the values of
/// the [extra fields](Self::extra): both tokens redact themselves and [`ExtraFields`] prints
/// only names.
#[derive(Clone, Debug)]
pub struct TokenResponse {
    access_token: AccessToken,
    token_type: Option<String>,
    expires_in: Option<Duration>,
    refresh_token: Option<RefreshToken>,
    scope: Option<String>,
    extra: ExtraFields,
    requested_at: Option<Instant>,
}

impl TokenResponse {
    /// Parses a token endpoint's answer (RFC 6749 §5.1 and §5.2), for applications that talk to
    /// the endpoint themselves. The body should be capped by the caller (this crate reads at
    /// most 1 MiB).
    ///
    /// # Errors
    ///
    /// An [`Error`] for an OAuth 2.0 error (even with HTTP 200), an HTTP error status, a redirect,
    /// or an answer that cannot be understood.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tower_bearer::oauth2::TokenResponse;
    ///
    /// let body = br#"{"access_token":"t0k3n","token_type":"bearer","expires_in":"3599"}"#;
    /// let response = TokenResponse::parse(StatusCode::OK, &HeaderMap::new(), body).unwrap();
    /// assert_eq!(response.expires_in(), Some(std::time::Duration::from_secs(3599)));
    /// ```
    pub fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Result<Self, Error> {
        parse_token_response(status, headers, body, &Redactions::none(), None)
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The `token_type` as the server sent it (often `bearer` or `Bearer`), if it sent one.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// The lifetime the server stated (`expires_in`), if any: negative values read as zero,
    /// fractions are kept to the millisecond, and values beyond a century are cut to a century.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// The refresh token, if the server issued one.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The granted scope (space-separated, RFC 6749 §3.3), if the server stated it.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The fields this crate does not interpret, such as `id_token`.
    pub fn extra(&self) -> &ExtraFields {
        &self.extra
    }

    /// When the token request was sent, for responses this crate's token sources received;
    /// `None` for a response made with [`parse`](Self::parse). The `expires_in` counts from it.
    pub fn requested_at(&self) -> Option<Instant> {
        self.requested_at
    }

    /// When the token expires: [`requested_at`](Self::requested_at) plus
    /// [`expires_in`](Self::expires_in), if both are known.
    pub fn expires_at(&self) -> Option<Instant> {
        self.requested_at?.checked_add(self.expires_in?)
    }

    /// A `Token` for the cache: access token, type, expiry, refresh token, scope, and the
    /// `ExtraFields` as an extension (`Token::with_extension`).
    ///
    /// The expiry counts from when the token request was sent: [`Token::with_expires_at`] with
    /// [`expires_at`](Self::expires_at) for a response this crate's sources received, so that a
    /// token handed out later (such as the first token of a
    /// [`RefreshTokenSource`](super::RefreshTokenSource)) is not thought to live longer than it
    /// does; [`Token::with_expires_in`] for a response made with [`parse`](Self::parse), which the
    /// cache counts from when it asked its source.
    pub fn into_token(self) -> Token {
        let expires_at = self.expires_at();
        let Self {
            access_token,
            token_type,
            expires_in,
            refresh_token,
            scope,
            extra,
            requested_at: _,
        } = self;
        let mut token = Token::new(access_token.secret());
        if let Some(token_type) = token_type {
            token = token.with_token_type(token_type);
        }
        match (expires_at, expires_in) {
            (Some(deadline), _) => token = token.with_expires_at(deadline),
            (None, Some(lifetime)) => token = token.with_expires_in(lifetime),
            (None, None) => {}
        }
        if let Some(refresh_token) = refresh_token {
            token = token.with_refresh_token(refresh_token);
        }
        if let Some(scope) = scope {
            token = token.with_scope(scope);
        }
        // Attached even when empty, so readers can tell "no extra fields" from "not an OAuth
        // 2.0 token".
        token.with_extension(extra)
    }
}

/// Fields of a token response this crate does not interpret (`id_token`, vendor fields...).
/// Debug prints only the names, since values such as `id_token` may be sensitive.
///
/// Values of a form-encoded response are JSON strings.
#[derive(Clone, Default)]
pub struct ExtraFields(Map<String, Value>);

impl ExtraFields {
    /// The value of the field `name`, if the response had it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The names of the fields.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether there are no such fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many such fields there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ExtraFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: an `id_token` or a vendor's session key is as secret as the access token.
        f.debug_tuple("ExtraFields").field(&Names(self)).finish()
    }
}

/// Debug-prints the names of [`ExtraFields`] as a list.
struct Names<'a>(&'a ExtraFields);

impl fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.names()).finish()
    }
}

/// Turns a token endpoint's answer into a token or a typed error. `sent` holds the credentials
/// of the request, which are redacted from every piece of the answer an error keeps; `requested_at`
/// is when the request was sent, which the token's lifetime counts from.
pub(crate) fn parse_token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent: &Redactions,
    requested_at: Option<Instant>,
) -> Result<TokenResponse, Error> {
    let Fields {
        mut values,
        unreadable,
    } = parse_fields(status, headers, body, sent)?;
    let unreadable = |name: &str| unreadable.iter().any(|n| n == name);

    // Only a JSON string (or a form value) is an access token. The cache refuses tokens that
    // cannot be a header value itself, with a better message than this layer could give.
    let access_token = match values.remove("access_token") {
        None | Some(Value::Null) => {
            return Err(Error::invalid_response(Some(status), "no access_token"))
        }
        Some(Value::String(_)) if unreadable("access_token") => {
            return Err(Error::invalid_response(
                Some(status),
                "access_token is not a readable JSON value (such as a string with an unpaired \
                 surrogate escape, a number out of range, or nesting too deep)",
            ))
        }
        Some(Value::String(secret)) if secret.is_empty() => {
            return Err(Error::invalid_response(
                Some(status),
                "access_token is empty",
            ))
        }
        Some(Value::String(secret)) => AccessToken::new(secret),
        Some(other) => {
            return Err(Error::invalid_response(
                Some(status),
                format!("access_token is a JSON {}, not a string", json_type(&other)),
            ))
        }
    };
    let expires_in = seconds_field(&mut values, "expires_in", status, sent)?;

    // Kept as sent whatever the case: RFC 6749 §5.1 makes it case-insensitive and the
    // placement writes `Bearer` anyway. The other fields are optional, so a value of the wrong
    // type, or one serde could not read, is dropped rather than failing a usable token.
    let mut optional = |name: &str| match values.remove(name) {
        Some(Value::String(text)) if !unreadable(name) => Some(text),
        _ => None,
    };
    let token_type = optional("token_type");
    let refresh_token = optional("refresh_token")
        .filter(|secret| !secret.is_empty())
        .map(RefreshToken::new);
    let scope = optional("scope");
    // Values serde could not read are not kept as extra fields either: their raw text is not
    // what the server meant.
    values.retain(|name, _| !unreadable(name));

    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
        refresh_token,
        scope,
        extra: ExtraFields(values),
        requested_at,
    })
}

/// Reads an answer as the fields of a JSON object or form, or the typed error it is: a
/// redirect, an OAuth 2.0 `error` (even with HTTP 200), an HTTP error status, or a body that is
/// neither. `sent` holds the credentials of the request, redacted from what the error keeps.
pub(super) fn parse_fields(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent: &Redactions,
) -> Result<Fields, Error> {
    // A redirect is never followed (the credentials would go elsewhere) and its body, if any,
    // is a page for browsers.
    if status.is_redirection() {
        return Err(Error::redirect(status));
    }

    let parsed = parse_body(headers, body);

    // RFC 6749 §5.2 says 400 (or 401), but servers send OAuth errors with 200 too: an `error`
    // field wins over the status.
    if let Body::Fields(fields) = &parsed {
        if let Some(code) = fields.values.get("error").and_then(error_code) {
            let text = |name: &str| {
                let text = fields.values.get(name).and_then(text)?;
                Some(shown(&sent.clean(&text), MAX_SHOWN))
            };
            return Err(Error::oauth(
                status,
                ErrorCode::from(&*sent.clean(&code)),
                text("error_description"),
                text("error_uri"),
                retry_after(headers),
            ));
        }
    }

    if !status.is_success() {
        // An error page (HTML from a proxy, an empty 401, JSON without `error`): an excerpt
        // is all there is to tell the user. A 2xx body might hold a token, which is why only
        // non-2xx bodies are excerpted, and an error body may echo the request, which is why
        // the credentials it carried are redacted first.
        return Err(Error::http(status, hint(body, sent), retry_after(headers)));
    }

    match parsed {
        Body::Fields(fields) => Ok(fields),
        Body::NotObject => Err(Error::invalid_response(
            Some(status),
            "the body is JSON but not an object",
        )),
        Body::Unreadable if body.trim_ascii().is_empty() => {
            Err(Error::invalid_response(Some(status), "the body is empty"))
        }
        Body::Unreadable => {
            // What came instead, without a word of it: a 2xx body may hold a token.
            let media_type = match headers.get(CONTENT_TYPE) {
                Some(value) => format!(
                    "Content-Type {}",
                    shown(&String::from_utf8_lossy(value.as_bytes()), 64)
                ),
                None => "no Content-Type".to_owned(),
            };
            Err(Error::invalid_response(
                Some(status),
                format!(
                    "the body is neither a JSON object nor form data ({media_type}, {} bytes)",
                    body.len()
                ),
            ))
        }
    }
}

/// A field counting seconds (`expires_in`, RFC 8628's `interval`), as a number or a string
/// (lenient as described at [`TokenResponse::expires_in`]); `None` if absent or `null`.
pub(super) fn seconds_field(
    values: &mut Map<String, Value>,
    name: &str,
    status: StatusCode,
    sent: &Redactions,
) -> Result<Option<Duration>, Error> {
    let Some(value) = values.remove(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match lifetime(&value) {
        Some(lifetime) => Ok(Some(lifetime)),
        None => {
            let text = match &value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Err(Error::invalid_response(
                Some(status),
                format!(
                    "{name} is not a number: {}",
                    shown(&sent.clean(&text), VALUE_BYTES)
                ),
            ))
        }
    }
}

/// `Retry-After` as delta-seconds (HTTP-dates are ignored: clocks differ), capped at 1 hour.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // delta-seconds is 1*DIGIT (RFC 9110 §10.2.3); `u64::from_str` would also take `+7`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only overflow can fail now, and a number that large asks for "a long time".
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// What a body turned out to be.
enum Body {
    /// A JSON object or form data.
    Fields(Fields),
    /// Valid JSON, but not an object.
    NotObject,
    /// Neither JSON nor form data with a meaningful key (empty, HTML, garbage...).
    Unreadable,
}

/// The fields of a JSON object or of form data.
pub(super) struct Fields {
    pub(super) values: Map<String, Value>,
    /// Names whose JSON values serde could not read (a number beyond `f64` such as `1e400`, a
    /// string with an unpaired surrogate escape, nesting too deep). Their raw JSON text is in
    /// `values`, for `expires_in` and for error messages only: such a value is never a token.
    pub(super) unreadable: Vec<String>,
}

impl Fields {
    fn new(values: Map<String, Value>) -> Self {
        Self {
            values,
            unreadable: Vec::new(),
        }
    }
}

/// A JSON object whose values serde_json cannot all hold: the readable ones are parsed, the
/// others kept as their raw text and named in [`Fields::unreadable`], instead of losing the
/// whole response to an `expires_in` of `1e400`.
fn lenient_object(body: &[u8]) -> Option<Fields> {
    let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).ok()?;
    let mut fields = Fields::new(Map::new());
    for (name, value) in raw {
        let value = match serde_json::from_str::<Value>(value.get()) {
            Ok(value) => value,
            Err(_) => {
                fields.unreadable.push(name.clone());
                Value::String(value.get().to_owned())
            }
        };
        fields.values.insert(name, value);
    }
    Some(fields)
}

/// Whether the `Content-Type` says form data.
fn declares_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        // Parameters such as `; charset=utf-8` do not matter; the media type is case-insensitive.
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(FORM))
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Body {
    // .NET servers may start the body with a UTF-8 byte order mark, which JSON parsers refuse.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);

    if declares_form(headers) {
        let form = parse_form(body);
        if is_meaningful(&form) {
            return Body::Fields(Fields::new(form));
        }
        // Misconfigured servers label JSON as form data; the declared type still wins when
        // the body is not a JSON object.
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
            return Body::Fields(Fields::new(fields));
        }
        return Body::Fields(Fields::new(form));
    }

    // Whatever the type says, JSON is tried first: servers label their JSON `text/plain` or
    // even `text/html`.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => return Body::Fields(Fields::new(fields)),
        Ok(_) => return Body::NotObject,
        Err(_) => {}
    }
    if let Some(fields) = lenient_object(body) {
        return Body::Fields(fields);
    }
    // Old servers (GitHub's and Facebook's early endpoints) answer form data as `text/plain`
    // or with no type, and misconfigured ones under any type. Only a body that is nothing but
    // form data with a key field counts, so that an HTML page or a text mentioning
    // `&access_token=…&` never becomes a token.
    if is_form_text(body) {
        let form = parse_form(body);
        if is_meaningful(&form) {
            return Body::Fields(Fields::new(form));
        }
    }
    Body::Unreadable
}

/// Whether `body` is made only of what may stand in a URL's query: `name=value` pairs joined by
/// `&`, with letters, digits, `%`-escapes and the punctuation RFC 3986 allows there unescaped
/// (what lax encoders leave as it is: `/`, `:`, `@`, `,`...). Markup and prose have spaces,
/// `<`, `>`, quotes or line breaks inside.
fn is_form_text(body: &[u8]) -> bool {
    let body = body.trim_ascii();
    !body.is_empty()
        && body.contains(&b'=')
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b))
}

fn parse_form(body: &[u8]) -> Map<String, Value> {
    // Trimmed because `text/plain` answers often end with a newline, which would otherwise end
    // up in the last value. Later duplicates win, as with serde_json's objects.
    form_urlencoded::parse(body.trim_ascii())
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect()
}

fn is_meaningful(form: &Map<String, Value>) -> bool {
    // `device_code`: RFC 8628's device authorization response, read by the same parser.
    form.contains_key("access_token")
        || form.contains_key("error")
        || form.contains_key("device_code")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The `error` code, if it is really there. `null` and `""` are not: some servers add
/// `"error": null` to every successful answer.
fn error_code(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(code) if code.is_empty() => None,
        Value::String(code) => Some(code.clone()),
        // Not what RFC 6749 allows, but still a refusal: its JSON text names it (escaped and
        // cut short by `ErrorCode::from`, because it may be a whole object).
        other => Some(other.to_string()),
    }
}

/// A descriptive field (`error_description`, `error_uri`) as raw text, to be redacted and
/// made safe to show.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) if text.is_empty() => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// `expires_in` as a lifetime; `None` if it is not a number.
/// A number of seconds as servers send it, leniently (a JSON number, or a string of a decimal
/// number; negative is zero; capped at a century): `expires_in`, and the workload sources'
/// `expires_in` and `expires_on`.
pub(crate) fn lifetime(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(number) => {
            if let Some(seconds) = number.as_u64() {
                return Some(Duration::from_secs(seconds).min(MAX_EXPIRES_IN));
            }
            if number.as_i64().is_some() {
                // Not a u64 but an i64: negative, already expired.
                return Some(Duration::ZERO);
            }
            match number.as_f64() {
                Some(seconds) => seconds_to_duration(seconds),
                // Only with serde_json's `arbitrary_precision`: go through the text.
                None => decimal_seconds(&number.to_string()),
            }
        }
        // Many servers (Azure AD v1, some Spring setups) send the number as a string.
        Value::String(text) => decimal_seconds(text),
        _ => None,
    }
}

/// A decimal number such as `3599`, ` 60 `, `-5`, `3599.5` or `1e3`, as a lifetime.
fn decimal_seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    // `f64::from_str` also takes `NaN`, `inf` and `infinity`, which are not lifetimes: only
    // digits, signs, points and exponents may pass. It still rejects `1e`, `--1` or `1.2.3`.
    let numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !numeric || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    seconds_to_duration(text.parse::<f64>().ok()?)
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() {
        return None;
    }
    if seconds <= 0.0 {
        return Some(Duration::ZERO);
    }
    // Also catches the infinity of a decimal too large for f64 (`1e400`).
    if seconds >= MAX_EXPIRES_IN.as_secs_f64() {
        return Some(MAX_EXPIRES_IN);
    }
    // Below a century, milliseconds fit in u64 many times over, so the cast is exact.
    let millis = (seconds * 1000.0).round() as u64;
    Some(Duration::from_millis(millis))
}

/// An excerpt of an error body with the request's credentials redacted, or `None` if it has
/// nothing to show.
fn hint(body: &[u8], sent: &Redactions) -> Option<Shown> {
    // The whole body is redacted before the excerpt is cut (the body is at most 1 MiB, and this
    // is the error path), so that no credential can straddle the cut.
    let text = Zeroizing::new(String::from_utf8_lossy(body).into_owned());
    let text = sent.clean(&text);
    let text = text.trim();
    if text.is_empty() {
        None
    } else {
        Some(shown(text, HINT_BYTES))
    }
}

#[cfg(test)]
mod tests;
