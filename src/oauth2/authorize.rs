//! The front half of the OAuth 2.0 authorization code grant with PKCE: the authorization
//! request (RFC 6749 §4.1.1, RFC 7636 S256, RFC 8707 `resource`), the checks of the redirect
//! back (`state`, `error`, RFC 9207 `iss`), and a loopback listener that receives that redirect
//! for command-line and desktop apps (RFC 8252 §7.3).
//!
//! The code verifier and the authorization code are secrets: they never appear in `Debug`
//! output or in an [`Error`].

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::check_url;
use super::error::{Error, ErrorCode};
use crate::shown::{shown, MAX_SHOWN};

/// What `Debug` prints in place of a secret.
const REDACTED: &str = "<redacted>";
/// RFC 7636 §4.1: a verifier is 43 to 128 characters long.
const VERIFIER_LEN: std::ops::RangeInclusive<usize> = 43..=128;
/// Random bytes in a fresh verifier or `state` (43 characters once encoded).
const RANDOM_BYTES: usize = 32;
/// The largest request head the loopback listener reads.
const MAX_HEAD: usize = 8 * 1024;
/// How long one loopback connection may take to send its request head, and to take the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how much, a refused request is read further before its connection is closed,
/// so that closing with unread data does not reset the connection before the answer arrives.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_LIMIT: usize = 64 * 1024;
/// Connections served at once by the loopback listener; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Pause after a failed `accept` (for example, out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
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

// ---------------------------------------------------------------------------------------------
// PKCE
// ---------------------------------------------------------------------------------------------

/// A PKCE code verifier and its S256 challenge (RFC 7636).
///
/// The challenge goes into the authorization request; the verifier, a secret, goes with the
/// authorization code to the token endpoint. `Debug` does not show the verifier.
#[derive(Clone)]
pub struct Pkce {
    verifier: String,
    challenge: String,
}

impl Drop for Pkce {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.verifier);
    }
}

impl Pkce {
    /// A fresh verifier: 32 random bytes from the operating system, as base64url without
    /// padding (43 characters).
    ///
    /// Fails with a [`Config`](super::error::ErrorKind::Config) error if the system has no randomness
    /// to give.
    pub fn new() -> Result<Self, Error> {
        random_string(RANDOM_BYTES).map(Self::from_valid)
    }

    /// A verifier you provide: 43 to 128 characters of `A-Z a-z 0-9 - . _ ~` (RFC 7636 §4.1).
    /// For tests, and for flows that persist the verifier between the request and the redirect.
    ///
    /// Fails with a [`Config`](super::error::ErrorKind::Config) error (which does not contain the
    /// verifier) if it is too short, too long, or has another character.
    pub fn from_verifier(verifier: impl Into<String>) -> Result<Self, Error> {
        let verifier = verifier.into();
        if !verifier.bytes().all(is_unreserved) {
            return Err(Error::config(
                "a PKCE code verifier may only contain A-Z, a-z, 0-9, '-', '.', '_' and '~' \
                 (RFC 7636 §4.1)",
            ));
        }
        let len = verifier.len();
        if !VERIFIER_LEN.contains(&len) {
            return Err(Error::config(format!(
                "a PKCE code verifier must be 43 to 128 characters long, not {len} \
                 (RFC 7636 §4.1)"
            )));
        }
        Ok(Self::from_valid(verifier))
    }

    fn from_valid(verifier: String) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }

    /// The code verifier, sent to the token endpoint with the authorization code. A secret.
    pub fn verifier(&self) -> &str {
        &self.verifier
    }

    /// The code challenge: `BASE64URL(SHA256(verifier))`, sent in the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// The challenge method: always `S256`.
    pub fn method(&self) -> &'static str {
        "S256"
    }
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &REDACTED)
            .field("challenge", &self.challenge)
            .field("method", &self.method())
            .finish()
    }
}

/// A random URL-safe string of `bytes` random bytes (base64url, no padding), used for `state`.
pub(crate) fn random_string(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::config(format!("no system randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// RFC 3986 unreserved characters, the alphabet of PKCE verifiers.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

// ---------------------------------------------------------------------------------------------
// The authorization request
// ---------------------------------------------------------------------------------------------

/// An authorization request: the URL to open in the user's browser, and what the redirect
/// back must match (its `state`, and the PKCE verifier for the token request).
///
/// `Debug` shows the URL, the `state` and the redirect URI, but not the PKCE verifier.
#[derive(Clone)]
pub struct AuthorizationRequest {
    url: String,
    state: String,
    pkce: Pkce,
    redirect_uri: String,
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

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("url", &self.url)
            .field("state", &self.state)
            .field("redirect_uri", &self.redirect_uri)
            .field("pkce", &self.pkce)
            .finish()
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

// ---------------------------------------------------------------------------------------------
// The authorization response
// ---------------------------------------------------------------------------------------------

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
    /// route; [`LoopbackRedirect`] does this for command-line and desktop apps.
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
                ErrorCode::parse(error),
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

// ---------------------------------------------------------------------------------------------
// The loopback redirect listener
// ---------------------------------------------------------------------------------------------

/// Receives the redirect on a loopback port (RFC 8252 §7.3), for command-line and desktop apps.
///
/// Bind it first, build the authorization request with its
/// [`redirect_uri`](Self::redirect_uri), open the request's URL in the browser, then
/// [`receive`](Self::receive) the redirect.
pub struct LoopbackRedirect {
    listener: TcpListener,
    local_addr: SocketAddr,
    redirect_uri: String,
    path: String,
}

impl LoopbackRedirect {
    /// Listens on `127.0.0.1` on a free port; the redirect URI is
    /// `http://127.0.0.1:<port>/callback`.
    pub async fn bind() -> Result<Self, Error> {
        Self::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "/callback").await
    }

    /// Listens on `addr`, which must be a loopback address (port 0 picks a free port), with the
    /// redirect URI's path `path`, which must start with `/` and may not have a query, a
    /// fragment, or characters that need percent-encoding.
    pub async fn bind_to(addr: SocketAddr, path: &str) -> Result<Self, Error> {
        if !addr.ip().is_loopback() {
            return Err(Error::config(format!(
                "the redirect listener must be on a loopback address (RFC 8252 §8.3), not {}",
                addr.ip()
            )));
        }
        if !path.starts_with('/') || !path.bytes().all(is_path_char) {
            return Err(Error::config(format!(
                "the redirect path {path:?} must start with '/' and have no query, fragment, \
                 space or other character that needs percent-encoding"
            )));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::config(format!("cannot listen on loopback: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::config(format!("cannot listen on loopback: {e}")))?;
        let host = match local_addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Ok(Self {
            listener,
            local_addr,
            redirect_uri: format!("http://{host}:{}{path}", local_addr.port()),
            path: path.to_owned(),
        })
    }

    /// The redirect URI to send in the authorization request.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the browser's redirect, answers it with a small HTML page ("Signed in. You
    /// can close this window.", or the error), and returns the checked response (see
    /// [`AuthorizationResponse::from_query`]).
    ///
    /// Only `GET <path>?<query> HTTP/1.x` on the redirect path can end the wait, and only if
    /// its `state` is the request's:
    /// - a request to another path (such as `/favicon.ico`) is answered 404, one with another
    ///   method 405, and a malformed one, or one whose head exceeds 8 KiB, 400;
    /// - a redirect whose `state` is missing or not the request's is answered 400 with an error
    ///   page, and the wait goes on: anything on this machine, including web pages, can reach a
    ///   loopback port, so such a request must not end the sign-in in progress;
    /// - a redirect with the right `state` ends the wait, with the code or with the error it
    ///   carries (an `error` from the server, an `iss` that is not `expected_issuer`, no
    ///   `code`).
    ///
    /// Connections are served concurrently (so an idle one, such as a browser's speculative
    /// preconnection, blocks nothing), each answered with `Connection: close` and closed, and
    /// dropped if it takes more than 10 seconds. Without the redirect within `timeout`, fails
    /// with a [`Callback`](super::error::ErrorKind::Callback) error. The listener is closed on return.
    pub async fn receive(
        self,
        request: &AuthorizationRequest,
        expected_issuer: Option<&str>,
        timeout: Duration,
    ) -> Result<AuthorizationResponse, Error> {
        let wait = Wait {
            path: &self.path,
            request,
            expected_issuer,
        };
        match tokio::time::timeout(timeout, self.serve(&wait)).await {
            Ok(result) => result,
            Err(_) => Err(Error::callback(format!("no redirect within {timeout:?}"))),
        }
    }

    /// Accepts and serves connections until one ends the wait.
    async fn serve(&self, wait: &Wait<'_>) -> Result<AuthorizationResponse, Error> {
        let mut connections: Vec<Pin<Box<dyn Future<Output = Outcome> + Send + '_>>> = Vec::new();
        let mut backoff: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(move |cx| loop {
            let mut i = 0;
            while i < connections.len() {
                match connections[i].as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(outcome) => {
                        drop(connections.swap_remove(i));
                        if let Some(result) = outcome {
                            return Poll::Ready(result);
                        }
                    }
                }
            }
            if let Some(sleep) = backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                backoff = None;
            }
            if connections.len() >= MAX_CONNECTIONS {
                // Woken again when one of them finishes.
                return Poll::Pending;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                // Polled, so registered for wake-ups, on the next turn of the loop.
                Poll::Ready(Ok((stream, _))) => connections.push(Box::pin(serve_one(stream, wait))),
                Poll::Ready(Err(_)) => {
                    backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        })
        .await
    }
}

impl fmt::Debug for LoopbackRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackRedirect")
            .field("local_addr", &self.local_addr)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// A path character that needs no percent-encoding (RFC 3986 `pchar` and `/`), or `%`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/%".contains(&b)
}

/// What a redirect must match.
struct Wait<'a> {
    path: &'a str,
    request: &'a AuthorizationRequest,
    expected_issuer: Option<&'a str>,
}

/// The result of one connection: `Some` ends the wait.
type Outcome = Option<Result<AuthorizationResponse, Error>>;

/// Reads one request, answers it, closes the connection.
async fn serve_one(mut stream: TcpStream, wait: &Wait<'_>) -> Outcome {
    let (reply, outcome) =
        match tokio::time::timeout(CONNECTION_TIMEOUT, read_head(&mut stream)).await {
            Err(_) | Ok(Err(HeadError::Gone)) => return None,
            Ok(Err(HeadError::Malformed)) => (Reply::bad_request(), None),
            Ok(Ok(head)) => route(&head, wait),
        };
    // The outcome stands even if the browser has gone away meanwhile.
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if outcome.is_none() {
        // The request may not have been read to its end.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < DRAIN_LIMIT {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
    outcome
}

enum HeadError {
    /// Closed or failed before sending anything: nothing to answer.
    Gone,
    /// Closed mid-head, or a head over the limit.
    Malformed,
}

/// Reads up to the empty line that ends the request head, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let room = (MAX_HEAD - head.len()).min(buf.len());
        if room == 0 {
            return Err(HeadError::Malformed);
        }
        let n = match stream.read(&mut buf[..room]).await {
            Ok(n) => n,
            Err(_) if head.is_empty() => return Err(HeadError::Gone),
            Err(_) => return Err(HeadError::Malformed),
        };
        if n == 0 {
            return Err(if head.is_empty() {
                HeadError::Gone
            } else {
                HeadError::Malformed
            });
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
    }
}

/// Where the empty line ending a request head ends (`\r\n\r\n`, or bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Decides the answer to a request head, and whether it ends the wait.
fn route(head: &[u8], wait: &Wait<'_>) -> (Reply, Outcome) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return (Reply::bad_request(), None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Reply::bad_request(), None);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return (Reply::bad_request(), None);
    }
    if method != "GET" {
        return (
            Reply::new(405, "Method Not Allowed", "Method not allowed."),
            None,
        );
    }
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != wait.path {
        return (Reply::new(404, "Not Found", "Not found."), None);
    }
    let state_matches = Params::parse(query)
        .ok()
        .and_then(|params| params.state)
        .is_some_and(|state| constant_time_eq(state.as_bytes(), wait.request.state().as_bytes()));
    if !state_matches {
        return (
            Reply::new(
                400,
                "Bad Request",
                "This redirect does not belong to the sign-in in progress. Return to the \
                 application and sign in again from there.",
            ),
            None,
        );
    }
    match AuthorizationResponse::from_query(query, wait.request, wait.expected_issuer) {
        Ok(response) => (
            Reply::new(200, "OK", "Signed in. You can close this window."),
            Some(Ok(response)),
        ),
        Err(error) => (
            Reply::new(400, "Bad Request", &format!("Sign-in failed: {error}.")),
            Some(Err(error)),
        ),
    }
}

/// A small HTML answer.
struct Reply {
    status: u16,
    reason: &'static str,
    message: String,
}

impl Reply {
    fn new(status: u16, reason: &'static str, message: &str) -> Self {
        Self {
            status,
            reason,
            message: message.to_owned(),
        }
    }

    fn bad_request() -> Self {
        Self::new(400, "Bad Request", "Bad request.")
    }

    fn to_bytes(&self) -> Vec<u8> {
        let message = escape_html(&self.message);
        let body = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign-in</title>\
             </head><body><p>{message}</p></body></html>\n"
        );
        let allow = if self.status == 405 {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nContent-Security-Policy: default-src 'none'\r\n\
             Referrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n{allow}\
             Connection: close\r\n\r\n",
            self.status,
            self.reason,
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth2::ErrorKind;

    const ISSUER: &str = "https://as.example";
    const ENDPOINT: &str = "https://as.example/authorize";

    fn request_to(redirect_uri: &str) -> AuthorizationRequest {
        AuthorizationRequest::new(ENDPOINT, "client", redirect_uri, &[], &[], &[], false).unwrap()
    }

    fn request() -> AuthorizationRequest {
        request_to("http://127.0.0.1:8000/callback")
    }

    fn build(endpoint: &str, allow_insecure: bool) -> Result<AuthorizationRequest, Error> {
        AuthorizationRequest::new(
            endpoint,
            "c",
            "http://127.0.0.1/cb",
            &[],
            &[],
            &[],
            allow_insecure,
        )
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn query_of(url: &str) -> Vec<(String, String)> {
        let (_, query) = url.split_once('?').unwrap();
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    fn values<'a>(params: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        params
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn enc(text: &str) -> String {
        form_urlencoded::byte_serialize(text.as_bytes()).collect()
    }

    // --- PKCE -----------------------------------------------------------------------------

    #[test]
    fn rfc7636_appendix_b_vector() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(
            pkce.verifier(),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        assert_eq!(pkce.method(), "S256");
    }

    #[test]
    fn fresh_verifiers_are_random_and_well_formed() {
        let a = Pkce::new().unwrap();
        let b = Pkce::new().unwrap();
        for pkce in [&a, &b] {
            assert_eq!(pkce.verifier().len(), 43);
            assert!(pkce.verifier().bytes().all(is_unreserved));
            let recomputed = URL_SAFE_NO_PAD.encode(Sha256::digest(pkce.verifier().as_bytes()));
            assert_eq!(pkce.challenge(), recomputed);
            assert!(Pkce::from_verifier(pkce.verifier()).is_ok());
        }
        assert_ne!(a.verifier(), b.verifier());
        assert_ne!(a.challenge(), b.challenge());
        let state = random_string(32).unwrap();
        assert_eq!(state.len(), 43);
        assert_ne!(state, random_string(32).unwrap());
    }

    #[test]
    fn verifier_length_and_alphabet_are_checked() {
        assert!(Pkce::from_verifier("a".repeat(43)).is_ok());
        assert!(Pkce::from_verifier("-._~".repeat(32)).is_ok());
        for bad in [
            "a".repeat(42),
            "a".repeat(129),
            String::new(),
            format!("{} ", "a".repeat(43)),
            format!("{}+", "a".repeat(43)),
            format!("{}/", "a".repeat(43)),
            format!("{}=", "a".repeat(43)),
            format!("{}é", "a".repeat(43)),
        ] {
            let err = Pkce::from_verifier(bad.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
            if !bad.is_empty() {
                assert!(
                    !format!("{err} {err:?}").contains(&bad),
                    "the error shows the verifier"
                );
            }
        }
    }

    // --- The authorization request ----------------------------------------------------------

    #[test]
    fn url_carries_every_parameter() {
        let request = AuthorizationRequest::new(
            ENDPOINT,
            "my client",
            "http://127.0.0.1:8000/callback",
            &strings(&["openid", "read:all", "a&b=c"]),
            &strings(&["https://api.example/", "https://other.example/x?y=z"]),
            &[
                ("prompt".into(), "consent".into()),
                ("login_hint".into(), "ü@x+y".into()),
            ],
            false,
        )
        .unwrap();
        let url = request.url();
        assert!(url.starts_with("https://as.example/authorize?response_type=code&client_id="));
        assert!(
            url.contains("&scope=openid%20read%3Aall%20a%26b%3Dc&"),
            "{url}"
        );
        assert!(!url.contains('+') && !url.contains(' '), "{url}");

        let params = query_of(url);
        assert_eq!(values(&params, "response_type"), ["code"]);
        assert_eq!(values(&params, "client_id"), ["my client"]);
        assert_eq!(
            values(&params, "redirect_uri"),
            ["http://127.0.0.1:8000/callback"]
        );
        assert_eq!(values(&params, "scope"), ["openid read:all a&b=c"]);
        assert_eq!(values(&params, "state"), [request.state()]);
        assert_eq!(
            values(&params, "code_challenge"),
            [request.pkce().challenge()]
        );
        assert_eq!(values(&params, "code_challenge_method"), ["S256"]);
        assert_eq!(
            values(&params, "resource"),
            ["https://api.example/", "https://other.example/x?y=z"]
        );
        assert_eq!(values(&params, "prompt"), ["consent"]);
        assert_eq!(values(&params, "login_hint"), ["ü@x+y"]);
        assert_eq!(params.len(), 11);
        assert!(!url.contains(request.pkce().verifier()));
        assert_eq!(request.redirect_uri(), "http://127.0.0.1:8000/callback");
        assert_eq!(request.state().len(), 43);
    }

    #[test]
    fn empty_scopes_are_left_out_and_requests_differ() {
        let a = request();
        let b = request();
        assert!(values(&query_of(a.url()), "scope").is_empty());
        assert_ne!(a.state(), b.state());
        assert_ne!(a.pkce().verifier(), b.pkce().verifier());
        let empty =
            AuthorizationRequest::new(ENDPOINT, "c", "x:/cb", &strings(&[""]), &[], &[], false)
                .unwrap();
        assert!(values(&query_of(empty.url()), "scope").is_empty());
    }

    #[test]
    fn endpoint_with_a_query_gets_more_parameters() {
        let request = build("https://as.example/authorize?tenant=a%20b", false).unwrap();
        assert!(request
            .url()
            .starts_with("https://as.example/authorize?tenant=a%20b&response_type=code&"));
        assert_eq!(values(&query_of(request.url()), "tenant"), ["a b"]);
        for endpoint in [
            "https://as.example/authorize?",
            "https://as.example/authorize?x=1&",
        ] {
            let request = build(endpoint, false).unwrap();
            assert!(request
                .url()
                .starts_with(&format!("{endpoint}response_type=code&")));
        }
    }

    #[test]
    fn endpoint_must_be_https_unless_loopback_or_allowed() {
        for ok in [
            "https://as.example/authorize",
            "HTTPS://as.example",
            "https://as.example:8443/a/b",
            "http://127.0.0.1:8080/authorize",
            "http://127.1.2.3/authorize",
            "http://[::1]:8080/authorize",
            "http://localhost/authorize",
            "http://LOCALHOST:1234",
        ] {
            assert!(build(ok, false).is_ok(), "{ok}");
        }
        for remote in [
            "http://as.example/authorize",
            "http://10.0.0.1/a",
            "http://[::2]/a",
            "http://localhost.evil.example/a",
        ] {
            let err = build(remote, false).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{remote}");
            assert!(err.to_string().contains("https"), "{err}");
            assert!(build(remote, true).is_ok(), "{remote}");
        }
        for garbage in [
            "",
            "not a url",
            "as.example/authorize",
            "/authorize",
            "as.example:443",
            "ftp://as.example/authorize",
            "https://as.example/authorize#frag",
            "https://",
            "https://exa mple.com/",
            "http://[::1/",
        ] {
            for allow_insecure in [false, true] {
                let err = build(garbage, allow_insecure).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Config, "{garbage}");
            }
        }
    }

    #[test]
    fn reserved_or_empty_extra_parameters_and_empty_ids_are_refused() {
        for name in RESERVED_PARAMS.iter().copied().chain([""]) {
            let extra = [(name.to_string(), "x".to_string())];
            let err = AuthorizationRequest::new(ENDPOINT, "c", "x:/cb", &[], &[], &extra, false)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{name}");
        }
        let err =
            AuthorizationRequest::new(ENDPOINT, "", "x:/cb", &[], &[], &[], false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = AuthorizationRequest::new(ENDPOINT, "c", "", &[], &[], &[], false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    // --- The authorization response --------------------------------------------------------

    #[test]
    fn redirect_with_code_state_and_issuer() {
        let request = request();
        let state = request.state();
        let query = format!("code=the%2Bcode&state={state}&iss={}", enc(ISSUER));
        let response = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap();
        assert_eq!(response.code(), "the+code");
        assert_eq!(response.issuer(), Some(ISSUER));
        // A leading `?` is accepted, and unknown parameters are ignored.
        let query = format!("?session_state=x&code=c&state={state}");
        let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
        assert_eq!(response.code(), "c");
        assert_eq!(response.issuer(), None);
        // Without an expected issuer, any `iss` is kept as it is.
        let query = format!("code=c&state={state}&iss=whoever");
        let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
        assert_eq!(response.issuer(), Some("whoever"));
    }

    #[test]
    fn issuer_must_match_when_present() {
        let request = request();
        let state = request.state();
        for iss in [
            "https://evil.example",
            "https://as.example/",
            "HTTPS://as.example",
            "",
        ] {
            let query = format!("code=c&state={state}&iss={}", enc(iss));
            let err =
                AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Callback);
            assert!(err.to_string().contains("issuer does not match"), "{err}");
            assert!(!err.to_string().contains("code=c"));
        }
        // Also on error responses (RFC 9207 §2.4): the error may not come from our server.
        let query = format!("error=access_denied&state={state}&iss=https%3A%2F%2Fevil.example");
        let err = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback);
        // A server that does not implement RFC 9207 sends no `iss`.
        let query = format!("code=c&state={state}");
        let response = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap();
        assert_eq!(response.code(), "c");
        assert_eq!(response.issuer(), None);
    }

    #[test]
    fn state_must_match_and_be_present() {
        let request = request();
        let other = request_to("http://127.0.0.1:8000/callback");
        let err = AuthorizationResponse::from_query(
            &format!("code=c&state={}", other.state()),
            &request,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback);
        assert!(
            err.to_string()
                .contains("state does not match: possible CSRF"),
            "{err}"
        );
        for query in ["code=c", "code=c&state=", "code=c&State=x"] {
            let err = AuthorizationResponse::from_query(query, &request, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
            assert!(err.to_string().contains("state"), "{err}");
        }
        // A mismatching state wins over an error: it was not our request.
        let query = format!("error=access_denied&state={}", other.state());
        let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback);
    }

    #[test]
    fn error_redirect_is_an_authorization_error() {
        let request = request();
        let query = format!(
            "error=access_denied&error_description=The+user+said+no&error_uri={}&state={}",
            enc("https://as.example/help"),
            request.state()
        );
        let err = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authorization);
        assert_eq!(err.code(), Some(&ErrorCode::AccessDenied));
        assert_eq!(err.description(), Some("The user said no"));
        assert_eq!(err.uri(), Some("https://as.example/help"));
        // Without state too: the error is reported.
        let err =
            AuthorizationResponse::from_query("error=server_error", &request, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authorization);
        assert_eq!(err.code(), Some(&ErrorCode::ServerError));
        assert_eq!(err.description(), None);
        let err = AuthorizationResponse::from_query("error=weird_one&code=c", &request, None)
            .unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::Other("weird_one".into())));
    }

    #[test]
    fn code_must_be_present_once() {
        let request = request();
        let state = request.state();
        for query in [
            format!("state={state}"),
            format!("state={state}&code="),
            format!("state={state}&code"),
        ] {
            let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
            assert!(err.to_string().contains("no code in the redirect"), "{err}");
        }
        for query in [
            format!("state={state}&code=a&code=b"),
            format!("state={state}&state={state}&code=a"),
            format!("state={state}&code=a&iss=x&iss=x"),
        ] {
            let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
            assert!(err.to_string().contains("more than once"), "{err}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let request = request();
        let verifier = request.pkce().verifier().to_owned();
        let query = format!("code=SECRET-CODE-123&state={}&iss=x", request.state());
        let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
        let printed = format!(
            "{:?} {:?} {:?} {:#?}",
            request.pkce(),
            request,
            response,
            response
        );
        assert!(!printed.contains(&verifier), "{printed}");
        assert!(!printed.contains("SECRET-CODE-123"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert!(printed.contains(request.pkce().challenge()));
        assert!(printed.contains(request.state()));
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
        assert!(!format!("{pkce:?}").contains("dBjftJeZ4CVP"));
    }

    // --- The loopback redirect listener ------------------------------------------------------

    /// Sends `raw` as a browser would and reads the whole answer (the listener closes).
    async fn send(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the listener answers in time")
            .unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\r\n")
            .into_bytes()
    }

    fn status_of(answer: &str) -> &str {
        answer.lines().next().unwrap_or_default()
    }

    #[tokio::test]
    async fn loopback_receives_the_redirect_and_ignores_the_rest() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let addr = redirect.local_addr();
        assert!(addr.ip().is_loopback());
        assert_eq!(
            redirect.redirect_uri(),
            format!("http://127.0.0.1:{}/callback", addr.port())
        );
        let request = request_to(redirect.redirect_uri());
        let state = request.state().to_owned();
        let other_state = request_to(redirect.redirect_uri()).state().to_owned();

        let browser = tokio::spawn(async move {
            let favicon = send(addr, &get("/favicon.ico")).await;
            let wrong = send(
                addr,
                &get(&format!("/callback?code=evil&state={other_state}")),
            )
            .await;
            let stateless = send(addr, &get("/callback?code=evil")).await;
            let right = send(
                addr,
                &get(&format!(
                    "/callback?code=the-code&state={state}&iss={}",
                    enc(ISSUER)
                )),
            )
            .await;
            (favicon, wrong, stateless, right)
        });
        let response = redirect
            .receive(&request, Some(ISSUER), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(response.code(), "the-code");
        assert_eq!(response.issuer(), Some(ISSUER));

        let (favicon, wrong, stateless, right) = browser.await.unwrap();
        assert_eq!(status_of(&favicon), "HTTP/1.1 404 Not Found");
        assert_eq!(status_of(&wrong), "HTTP/1.1 400 Bad Request");
        assert!(wrong.contains("does not belong to the sign-in in progress"));
        assert_eq!(status_of(&stateless), "HTTP/1.1 400 Bad Request");
        assert_eq!(status_of(&right), "HTTP/1.1 200 OK");
        assert!(right.contains("\r\nConnection: close\r\n"), "{right}");
        assert!(
            right.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
            "{right}"
        );
        assert!(
            right.contains("Signed in. You can close this window."),
            "{right}"
        );
        let (head, body) = right.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(body.starts_with("<!DOCTYPE html>"));
    }

    #[tokio::test]
    async fn loopback_refuses_bad_requests_and_keeps_waiting() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let addr = redirect.local_addr();
        let request = request_to(redirect.redirect_uri());
        let state = request.state().to_owned();

        let browser = tokio::spawn(async move {
            // An idle connection (a speculative preconnect) must not block the others.
            let idle = TcpStream::connect(addr).await.unwrap();
            let mut huge = format!("GET /callback?code=c&state={state}&pad=").into_bytes();
            huge.extend_from_slice(&[b'a'; 9 * 1024]);
            huge.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            let mut huge_header = get("/favicon.ico");
            huge_header.truncate(huge_header.len() - 2);
            huge_header
                .extend_from_slice(format!("X-Big: {}\r\n\r\n", "b".repeat(8 * 1024)).as_bytes());
            let answers = vec![
                send(addr, &huge).await,
                send(addr, &huge_header).await,
                send(addr, b"garbage\r\n\r\n").await,
                send(addr, b"GET /callback HTTP/2.0\r\n\r\n").await,
                send(addr, b"GET  /callback HTTP/1.1\r\n\r\n").await,
                send(addr, b"GET http://127.0.0.1/callback HTTP/1.1\r\n\r\n").await,
                send(addr, b"\xff\xfe /callback HTTP/1.1\r\n\r\n").await,
                send(
                    addr,
                    format!("POST /callback?code=c&state={state} HTTP/1.1\r\n\r\n").as_bytes(),
                )
                .await,
                send(addr, &get("/callback/?code=c")).await,
                send(addr, &get("/callback")).await,
            ];
            // Closed before sending anything, and closed mid-head: nothing ends the wait.
            drop(TcpStream::connect(addr).await.unwrap());
            let mut half = TcpStream::connect(addr).await.unwrap();
            half.write_all(b"GET /callback?code=c&st").await.unwrap();
            drop(half);
            let right = send(
                addr,
                format!("GET /callback?code=c0de&state={state} HTTP/1.0\n\n").as_bytes(),
            )
            .await;
            drop(idle);
            (answers, right)
        });
        let response = redirect
            .receive(&request, None, Duration::from_secs(8))
            .await
            .unwrap();
        assert_eq!(response.code(), "c0de");

        let (answers, right) = browser.await.unwrap();
        let statuses: Vec<_> = answers.iter().map(|a| status_of(a)).collect();
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 405 Method Not Allowed",
                "HTTP/1.1 404 Not Found",
                "HTTP/1.1 400 Bad Request",
            ]
        );
        assert!(answers[7].contains("\r\nAllow: GET\r\n"));
        assert_eq!(status_of(&right), "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn loopback_reports_the_server_error_escaped() {
        let redirect =
            LoopbackRedirect::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)), "/oauth/done")
                .await
                .unwrap();
        let addr = redirect.local_addr();
        assert_eq!(
            redirect.redirect_uri(),
            format!("http://127.0.0.1:{}/oauth/done", addr.port())
        );
        let request = request_to(redirect.redirect_uri());
        let target = format!(
            "/oauth/done?error=access_denied&error_description={}&state={}",
            enc("<script>alert('x')</script> & no"),
            request.state()
        );
        let browser = tokio::spawn(async move { send(addr, &get(&target)).await });
        let err = redirect
            .receive(&request, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authorization);
        assert_eq!(err.code(), Some(&ErrorCode::AccessDenied));

        let answer = browser.await.unwrap();
        assert_eq!(status_of(&answer), "HTTP/1.1 400 Bad Request");
        assert!(answer.contains("access_denied"), "{answer}");
        assert!(!answer.contains("<script>"), "{answer}");
        assert!(
            answer.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; no"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn loopback_with_the_right_state_but_no_code_ends_the_wait() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let addr = redirect.local_addr();
        let request = request_to(redirect.redirect_uri());
        let target = format!(
            "/callback?state={}&iss=https%3A%2F%2Fevil.example",
            request.state()
        );
        let browser = tokio::spawn(async move { send(addr, &get(&target)).await });
        let err = redirect
            .receive(&request, Some(ISSUER), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback);
        assert!(err.to_string().contains("issuer does not match"), "{err}");
        assert_eq!(
            status_of(&browser.await.unwrap()),
            "HTTP/1.1 400 Bad Request"
        );
    }

    #[tokio::test]
    async fn loopback_times_out_without_a_browser() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let addr = redirect.local_addr();
        let request = request_to(redirect.redirect_uri());
        // An idle connection does not keep the wait alive past its timeout either.
        let _idle = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let err = redirect
            .receive(&request, None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.kind(), ErrorKind::Callback);
        assert!(
            err.to_string().contains("no redirect within 200ms"),
            "{err}"
        );
        // The listener is closed once the wait is over.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn loopback_binding_rules() {
        let err = LoopbackRedirect::bind_to(SocketAddr::from(([0, 0, 0, 0], 0)), "/cb")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("loopback"), "{err}");
        let err = LoopbackRedirect::bind_to(SocketAddr::from(([192, 168, 1, 1], 0)), "/cb")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        for path in ["", "cb", "/cb?x=1", "/cb#x", "/c b", "/cé", "/cb\r\n"] {
            let err = LoopbackRedirect::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)), path)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{path:?}");
        }
        let redirect = LoopbackRedirect::bind().await.unwrap();
        // The port is taken.
        let err = LoopbackRedirect::bind_to(redirect.local_addr(), "/callback")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("cannot listen on loopback"),
            "{err}"
        );
        let printed = format!("{redirect:?}");
        assert!(printed.contains(redirect.redirect_uri()), "{printed}");
        // IPv6 loopback, where the system has it.
        if let Ok(v6) = LoopbackRedirect::bind_to("[::1]:0".parse().unwrap(), "/cb").await {
            assert_eq!(
                v6.redirect_uri(),
                format!("http://[::1]:{}/cb", v6.local_addr().port())
            );
        }
    }

    // --- No panics -----------------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn no_panic_on_any_query_or_request_head() {
        let request = request();
        let wait = Wait {
            path: "/callback",
            request: &request,
            expected_issuer: Some(ISSUER),
        };
        let valid = format!(
            "code=c%C3%A9de&state={}&iss={}&error_description=%E2%82%AC%ZZ+x",
            request.state(),
            enc(ISSUER)
        );
        let mut cases: Vec<Vec<u8>> = (0..=valid.len())
            .map(|n| valid.as_bytes()[..n].to_vec())
            .collect();
        let alphabet = b"=&%+?#;codestaeiru_ \r\n\xc3\xa90123456789ABCDEFxyzGET/HTTP1.\x00\xff";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        while cases.len() < 2_000 {
            let len = (rng.next() % 96) as usize;
            let case = (0..len)
                .map(|_| {
                    let r = rng.next();
                    if r & 3 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            cases.push(case);
        }
        assert_eq!(cases.len(), 2_000);
        let mut accepted = 0;
        for case in &cases {
            let query = String::from_utf8_lossy(case);
            if AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).is_ok() {
                accepted += 1;
            }
            let _ = AuthorizationResponse::from_query(&query, &request, None);
            let _ = head_end(case);
            let _ = route(case, &wait);
            let mut head = b"GET /callback?".to_vec();
            head.extend_from_slice(case);
            head.extend_from_slice(b" HTTP/1.1\r\n\r\n");
            let (reply, _) = route(&head, &wait);
            let _ = reply.to_bytes();
            let _ = Pkce::from_verifier(query.into_owned());
        }
        // Only the prefixes that include the whole state (and a code) pass.
        assert!(accepted > 0);
        assert!(accepted < valid.len());
    }
}
