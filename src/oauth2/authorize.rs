//! The front half of the OAuth 2.0 authorization code grant: the authorization request
//! (RFC 6749 §4.1.1, RFC 7636 S256, RFC 8707 `resource`) and the checks of the redirect back
//! (`state`, `error`, RFC 9207 `iss`). [`LoopbackRedirect`](super::LoopbackRedirect) receives
//! that redirect for command-line and desktop apps.
//!
//! The code verifier and the authorization code are secrets: they never appear in `Debug`
//! output or in an [`Error`].

use std::fmt;

use super::endpoint::check_url;
use super::error::{Error, ErrorCode};
use super::pkce::{random_string, Pkce, RANDOM_BYTES};
use super::redact::REDACTED;
use crate::shown::{shown, MAX_SHOWN};

/// Parameters of the authorization request that are set from their own arguments.
const RESERVED_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// An authorization request: the URL to open in the user's browser, and what the redirect
/// back must match (its `state`, and the PKCE verifier for the token request).
///
/// `Debug` shows the URL, the `state` and the redirect URI, but not the PKCE verifier.
#[derive(Clone, Debug)]
pub struct AuthorizationRequest {
    url: String,
    state: String,
    redirect_uri: String,
    pkce: Pkce,
}

impl AuthorizationRequest {
    /// Builds the request with a fresh `state` and PKCE verifier.
    ///
    /// The URL is `authorization_endpoint` followed by `response_type=code`, `client_id`,
    /// `redirect_uri`, `scope` (the scopes joined with spaces; left out when there are none),
    /// `state`, `code_challenge`, `code_challenge_method=S256`, one `resource` for each
    /// resource (RFC 8707) and the extra parameters, all form-urlencoded (spaces as `%20`),
    /// after `?`, or after `&` if the endpoint already has a query.
    ///
    /// The endpoint must be an absolute `https` URL without a fragment; `http` is accepted only
    /// for a loopback host (`127.0.0.0/8`, `[::1]`, `localhost`) or with `allow_insecure`.
    /// Extra parameters may not repeat a parameter set from the other arguments.
    pub(crate) fn new(
        authorization_endpoint: &str,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        resources: &[String],
        extra: &[(String, String)],
        allow_insecure: bool,
    ) -> Result<Self, Error> {
        check_endpoint(authorization_endpoint, allow_insecure)?;
        if client_id.is_empty() {
            return Err(Error::config("the client_id is empty"));
        }
        if redirect_uri.is_empty() {
            return Err(Error::config("the redirect URI is empty"));
        }
        for (name, _) in extra {
            if name.is_empty() {
                return Err(Error::config(
                    "an extra authorization request parameter has an empty name",
                ));
            }
            if RESERVED_PARAMS.contains(&name.as_str()) {
                return Err(Error::config(format!(
                    "the extra authorization request parameter `{name}` is set by the request \
                     itself and may not be repeated"
                )));
            }
        }

        let state = random_string(RANDOM_BYTES)?;
        let pkce = Pkce::new()?;

        let mut url = String::with_capacity(authorization_endpoint.len() + 256);
        url.push_str(authorization_endpoint);
        let mut query = Query::new(&mut url);
        query.pair("response_type", "code");
        query.pair("client_id", client_id);
        query.pair("redirect_uri", redirect_uri);
        let scope = scopes
            .iter()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        if !scope.is_empty() {
            query.pair("scope", &scope);
        }
        query.pair("state", &state);
        query.pair("code_challenge", pkce.challenge());
        query.pair("code_challenge_method", pkce.method());
        for resource in resources {
            query.pair("resource", resource);
        }
        for (name, value) in extra {
            query.pair(name, value);
        }

        Ok(Self {
            url,
            state,
            pkce,
            redirect_uri: redirect_uri.to_owned(),
        })
    }

    /// The URL to open in the user's browser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `state` the redirect back must carry.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The redirect URI sent in the request; the token request must send the same.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The PKCE verifier and challenge; the token request needs the verifier.
    pub fn pkce(&self) -> &Pkce {
        &self.pkce
    }
}

/// Appends form-urlencoded pairs to a URL, starting with `?` or `&` as its query requires.
struct Query<'a> {
    url: &'a mut String,
    separator: Option<char>,
}

impl<'a> Query<'a> {
    fn new(url: &'a mut String) -> Self {
        let separator = if !url.contains('?') {
            Some('?')
        } else if url.ends_with('?') || url.ends_with('&') {
            None
        } else {
            Some('&')
        };
        Self { url, separator }
    }

    fn pair(&mut self, name: &str, value: &str) {
        if let Some(separator) = self.separator {
            self.url.push(separator);
        }
        self.separator = Some('&');
        encode_into(self.url, name);
        self.url.push('=');
        encode_into(self.url, value);
    }
}

/// Form-urlencodes `text`, with spaces as `%20` rather than `+` (both decode the same way, and
/// `%20` is also read right by servers that decode queries as plain percent-encoding).
fn encode_into(out: &mut String, text: &str) {
    for piece in form_urlencoded::byte_serialize(text.as_bytes()) {
        if piece == "+" {
            // `byte_serialize` writes a literal `+` as `%2B`, so `+` is always a space.
            out.push_str("%20");
        } else {
            out.push_str(piece);
        }
    }
}

/// Checks the authorization endpoint as token URLs are checked ([`check_url`]), and that it has
/// no fragment (RFC 6749 §3.1).
fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), Error> {
    check_url("authorization endpoint", endpoint, allow_insecure)?;
    if endpoint.contains('#') {
        return Err(Error::config(format!(
            "the authorization endpoint {endpoint:?} has a fragment (RFC 6749 §3.1)"
        )));
    }
    Ok(())
}

/// What the authorization server sent back on the redirect: the authorization code and, if the
/// server implements RFC 9207, its issuer identifier.
///
/// `Debug` does not show the code.
#[derive(Clone)]
pub struct AuthorizationResponse {
    code: String,
    iss: Option<String>,
}

impl Drop for AuthorizationResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.code);
    }
}

impl AuthorizationResponse {
    /// The authorization code, to exchange at the token endpoint. A secret.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `iss` the server sent (RFC 9207), if it sent one.
    pub fn issuer(&self) -> Option<&str> {
        self.iss.as_deref()
    }

    /// Checks a redirect's query string, with or without its leading `?`, against the request
    /// it answers. For apps that receive the redirect themselves, for example on a web server
    /// route; [`LoopbackRedirect`](super::LoopbackRedirect) does this for command-line and desktop apps.
    ///
    /// In this order:
    /// - a parameter given more than once is a [`Callback`](super::error::ErrorKind::Callback) error
    ///   (RFC 6749 §3.1);
    /// - a `state` that is not the request's is a `Callback` error (a possible CSRF);
    /// - with `expected_issuer`, an `iss` that is not exactly it is a `Callback` error, also on
    ///   error responses (RFC 9207 §2.4); a missing `iss` is accepted, for servers that do not
    ///   implement RFC 9207;
    /// - an `error` is an [`Authorization`](super::error::ErrorKind::Authorization) error with its
    ///   code, `error_description` and `error_uri`, even without `state`;
    /// - a missing `state`, or a missing or empty `code`, is a `Callback` error.
    pub fn from_query(
        query: &str,
        request: &AuthorizationRequest,
        expected_issuer: Option<&str>,
    ) -> Result<Self, Error> {
        let params = Params::parse(query)?;
        if let Some(state) = &params.state {
            if !constant_time_eq(state.as_bytes(), request.state().as_bytes()) {
                return Err(Error::callback("state does not match: possible CSRF"));
            }
        }
        if let (Some(expected), Some(iss)) = (expected_issuer, &params.iss) {
            if iss != expected {
                return Err(Error::callback(format!(
                    "issuer does not match: expected {expected:?}, got \"{}\"",
                    shown(iss, MAX_SHOWN)
                )));
            }
        }
        if let Some(error) = &params.error {
            // Anyone who can reach the redirect URI chooses these: made safe to show.
            let text = |text: Option<String>| text.map(|text| shown(&text, MAX_SHOWN));
            return Err(Error::authorization(
                ErrorCode::from(error.as_str()),
                text(params.error_description),
                text(params.error_uri),
            ));
        }
        if params.state.is_none() {
            return Err(Error::callback("no state in the redirect: possible CSRF"));
        }
        match params.code {
            Some(code) if !code.is_empty() => Ok(Self {
                code,
                iss: params.iss,
            }),
            _ => Err(Error::callback("no code in the redirect")),
        }
    }
}

impl fmt::Debug for AuthorizationResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationResponse")
            .field("code", &REDACTED)
            .field("iss", &self.iss)
            .finish()
    }
}

/// The redirect's parameters that matter; each may appear at most once.
#[derive(Default)]
struct Params {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    error_uri: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Result<Self, Error> {
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut params = Self::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*name {
                "code" => &mut params.code,
                "state" => &mut params.state,
                "iss" => &mut params.iss,
                "error" => &mut params.error,
                "error_description" => &mut params.error_description,
                "error_uri" => &mut params.error_uri,
                _ => continue,
            };
            if slot.is_some() {
                return Err(Error::callback(format!(
                    "`{name}` appears more than once in the redirect"
                )));
            }
            *slot = Some(value.into_owned());
        }
        Ok(params)
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a redirect's query carries the `state` of `request`, once: only such a redirect may
/// end a [`LoopbackRedirect`](super::LoopbackRedirect)'s wait.
pub(super) fn carries_state(query: &str, request: &AuthorizationRequest) -> bool {
    Params::parse(query)
        .ok()
        .and_then(|params| params.state)
        .is_some_and(|state| constant_time_eq(state.as_bytes(), request.state().as_bytes()))
}

#[cfg(test)]
mod tests;
