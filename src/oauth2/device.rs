//! The device authorization grant (RFC 8628), for command-line tools and devices without a
//! browser: the user approves on another device while the tool polls the token endpoint.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use super::endpoint::check_url;
use super::redact::Redactions;
use super::response::{parse_fields, seconds_field, Fields};
use super::{
    ClientAuth, Error, ErrorCode, RefreshTokenSource, ServerMetadata, TokenEndpoint, TokenResponse,
};
use crate::shown::must_escape;
use crate::token::{sealed, Secret, SecretKind};

/// The `grant_type` of the token requests (RFC 8628 §3.4).
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The interval between polls when the server names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest interval between polls, whatever the server says: an `interval` of 0 must not
/// make the client poll in a tight loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What each `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);

/// The longest wait after failed polls, which back off exponentially (unless the interval is
/// longer still).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The longest user code and URL taken from the server: they are shown to a person.
const MAX_USER_CODE: usize = 256;
const MAX_URL: usize = 2048;

/// The device authorization grant (RFC 8628): a command-line tool (or a TV, or any device
/// without a convenient browser) asks for a user code, the user enters it at a verification
/// URL on their phone or laptop and approves, and the tool polls the token endpoint meanwhile.
///
/// 1. [`start`](Self::start) asks the device authorization endpoint for a [`DevicePrompt`]:
///    the user code and the URL to show the user.
/// 2. [`wait`](Self::wait) polls the token endpoint every `interval` (5 seconds unless the
///    server says otherwise) until the user approves or denies, or the code expires.
/// 3. [`into_refresh_source`](Self::into_refresh_source) keeps the tokens fresh behind a
///    [`BearerAuthLayer`](crate::BearerAuthLayer).
///
/// [`authorize`](Self::authorize) does the first two in one call. The client authenticates at
/// the device authorization endpoint exactly as at its token endpoint (RFC 8628 §3.1): most
/// command-line tools are public clients ([`ClientAuth::None`](super::ClientAuth::None)).
///
/// ```no_run
/// use tower_bearer::oauth2::{ClientAuth, DeviceAuthorization, TokenEndpoint};
/// use tower_bearer::BearerAuthLayer;
///
/// # async fn login() -> Result<(), tower_bearer::oauth2::Error> {
/// let endpoint = TokenEndpoint::builder("https://auth.example.com/token", "cli-app")
///     .auth(ClientAuth::None)
///     .build()?;
/// let grant = DeviceAuthorization::new(endpoint, "https://auth.example.com/device/code")
///     .scope("openid")
///     .scope("offline_access");
/// // "Open https://auth.example.com/device and enter the code WDJB-MJHT"; or show the user
/// // `prompt.verification_uri_complete()` as a link or QR code.
/// let tokens = grant.authorize(|prompt| eprintln!("{prompt}")).await?;
/// let layer = BearerAuthLayer::new(grant.into_refresh_source(tokens)?);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DeviceAuthorization {
    token_endpoint: TokenEndpoint,
    device_authorization_endpoint: Arc<str>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    allow_insecure_http: bool,
}

impl DeviceAuthorization {
    /// The grant for the client of `token_endpoint`, asking for user codes at
    /// `device_authorization_endpoint` (an `https` URL, or `http` to loopback, as for the token
    /// endpoint: checked by [`start`](Self::start)).
    pub fn new(
        token_endpoint: TokenEndpoint,
        device_authorization_endpoint: impl Into<String>,
    ) -> Self {
        Self {
            token_endpoint,
            device_authorization_endpoint: device_authorization_endpoint.into().into(),
            scopes: Vec::new(),
            params: Vec::new(),
            allow_insecure_http: false,
        }
    }

    /// The grant at the device authorization endpoint that `metadata` names (its mutual-TLS
    /// alias when the client authenticates with a certificate), for the client of
    /// `token_endpoint` (see [`TokenEndpoint::from_metadata`]).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Metadata`](super::ErrorKind::Metadata) if the metadata names no
    /// `device_authorization_endpoint` (or not an `https` one): the server does not offer
    /// the grant.
    pub fn from_metadata(
        metadata: &ServerMetadata,
        token_endpoint: TokenEndpoint,
    ) -> Result<Self, Error> {
        const NAME: &str = "device_authorization_endpoint";
        let certificate = matches!(
            token_endpoint.auth(),
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth
        );
        let alias = metadata.mtls_endpoint_alias(NAME).filter(|_| certificate);
        let url = alias
            .or(metadata.device_authorization_endpoint())
            .ok_or_else(|| {
                Error::metadata(
                    None,
                    format!("the server's metadata names no {NAME}: it does not offer RFC 8628"),
                )
            })?;
        Ok(Self::new(token_endpoint, url))
    }

    /// Adds a scope to request (`offline_access` usually asks for a refresh token); scopes are
    /// sent space-separated.
    ///
    /// Default: none, leaving the scope to the server.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds several scopes.
    ///
    /// Default: none.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Adds a `resource` indicator (RFC 8707) to the device authorization request. May be
    /// given several times.
    ///
    /// Default: none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Adds another parameter to the device authorization request (`audience`, ...).
    ///
    /// Default: none.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Allows a plain `http` device authorization endpoint on a host that is not loopback.
    ///
    /// Default: refused; `https` is required except for `127.0.0.0/8`, `::1` and `localhost`.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// Asks the device authorization endpoint for a user code (RFC 8628 §3.1), authenticating
    /// as the client does at its token endpoint.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](super::ErrorKind::Config) for an endpoint URL that is not `https`
    /// (or `http` to loopback); the endpoint's refusal (`invalid_client`, `invalid_scope`, ...),
    /// a transport failure or timeout, or an answer without a `device_code`, `user_code`,
    /// `verification_uri` or `expires_in`, worded as arising at the device authorization
    /// endpoint.
    pub async fn start(&self) -> Result<DevicePrompt, Error> {
        let url = check_url(
            "device authorization endpoint",
            &self.device_authorization_endpoint,
            self.allow_insecure_http,
        )?;
        let scope = self.scopes.join(" ");
        let mut params = Vec::with_capacity(1 + self.params.len());
        if !scope.is_empty() {
            params.push(("scope", scope.as_str()));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // With HTTP Basic and nothing else to send, the body would be empty, which servers
        // (oidc-provider) refuse as not being a form; `client_id` may go along (RFC 8628 §3.1).
        let basic = matches!(
            self.token_endpoint.auth(),
            ClientAuth::Basic | ClientAuth::BasicRaw
        );
        if basic {
            params.push(("client_id", self.token_endpoint.client_id()));
        }
        let (request, sent) = self.token_endpoint.prepare(&url, &params).await?;
        // The device code's lifetime counts from before the request, like a token's.
        let issued_at = Instant::now();
        let answered = async {
            let answer = self.token_endpoint.send(request).await?;
            let body = answer.body?;
            let fields = parse_fields(answer.status, &answer.headers, &body, &sent)?;
            DevicePrompt::parse(
                fields,
                answer.status,
                &sent,
                issued_at,
                self.allow_insecure_http,
            )
        };
        answered.await.map_err(Error::at_device_endpoint)
    }

    /// Polls the token endpoint until the user of `prompt` approves (the tokens), denies
    /// (`access_denied`) or lets the device code expire (RFC 8628 §3.4, §3.5).
    ///
    /// The first poll is one interval after the prompt was issued, and each next one an
    /// interval after the previous answer: `authorization_pending` keeps polling; `slow_down`
    /// adds 5 seconds to the interval for all later polls. A poll that cannot reach the server,
    /// times out or gets a retryable error (5xx, 429, `temporarily_unavailable`) does not end
    /// the wait: the next poll backs off, twice the interval after the first failure in a
    /// row, four times after the second, and so on up to one minute (or the interval, if
    /// longer), or later if the server asked so with `Retry-After`. No poll is sent once the
    /// device code has expired.
    ///
    /// # Errors
    ///
    /// - The token endpoint's refusal as it came: [`ErrorCode::AccessDenied`] when the user
    ///   denied, [`ErrorCode::ExpiredToken`] when the server says the code expired, and any
    ///   other refusal (`invalid_grant`, `invalid_client`, ...).
    /// - [`ErrorKind::Authorization`](super::ErrorKind::Authorization) with
    ///   [`ErrorCode::ExpiredToken`] when the code's `expires_in` passes first: returned at
    ///   that moment, with no poll after it. If the polls were failing then (a transport
    ///   error, a timeout, a 5xx), the last failure is its `source()`.
    pub async fn wait(&self, prompt: &DevicePrompt) -> Result<TokenResponse, Error> {
        let deadline = prompt.expires_at();
        let mut interval = prompt.interval;
        let mut failures = 0u32;
        // The last poll's failure, while polls fail: the expiry's cause, if it comes.
        let mut failing = None;
        let mut next = prompt.issued_at.checked_add(interval);
        loop {
            // Not before now either: a prompt shown long ago is polled at once, if still valid.
            let at = next.map(|at| at.max(Instant::now()));
            let Some(at) = at.filter(|at| deadline.is_none_or(|deadline| *at < deadline)) else {
                if let Some(deadline) = deadline {
                    tokio::time::sleep_until(deadline).await;
                }
                return Err(Error::device_code_expired(prompt.expires_in, failing));
            };
            tokio::time::sleep_until(at).await;
            let params = [
                ("grant_type", GRANT_TYPE),
                ("device_code", prompt.device_code.secret()),
            ];
            let error = match self.token_endpoint.token_request(&params).await {
                Ok(tokens) => return Ok(tokens),
                Err(error) => error,
            };
            let wait = match error.code() {
                Some(ErrorCode::AuthorizationPending) => {
                    failures = 0;
                    failing = None;
                    interval
                }
                Some(ErrorCode::SlowDown) => {
                    failures = 0;
                    failing = None;
                    interval = interval.saturating_add(SLOW_DOWN);
                    tracing::debug!(?interval, "the token endpoint asked to poll more slowly");
                    interval
                }
                _ if error.is_retryable() => {
                    failures = failures.saturating_add(1);
                    let backoff = interval
                        .saturating_mul(1 << failures.min(16))
                        .min(MAX_BACKOFF.max(interval))
                        .max(error.retry_after().unwrap_or_default());
                    tracing::debug!(
                        error = %crate::error::Chain(&error),
                        ?backoff,
                        "polling the token endpoint failed; backing off"
                    );
                    failing = Some(error);
                    backoff
                }
                _ => return Err(error),
            };
            next = Instant::now().checked_add(wait);
        }
    }

    /// [`start`](Self::start), then `prompt_user` with the prompt (show the user its
    /// [`user_code`](DevicePrompt::user_code) and
    /// [`verification_uri`](DevicePrompt::verification_uri)), then [`wait`](Self::wait).
    ///
    /// # Errors
    ///
    /// Those of [`start`](Self::start) and [`wait`](Self::wait).
    pub async fn authorize(
        &self,
        prompt_user: impl FnOnce(&DevicePrompt),
    ) -> Result<TokenResponse, Error> {
        let prompt = self.start().await?;
        prompt_user(&prompt);
        self.wait(&prompt).await
    }

    /// A [`RefreshTokenSource`] for this grant's token endpoint, continuing from `tokens`.
    ///
    /// # Errors
    ///
    /// If `tokens` has no refresh token (ask for `offline_access`, or whatever scope the server
    /// wants for one).
    pub fn into_refresh_source(self, tokens: TokenResponse) -> Result<RefreshTokenSource, Error> {
        RefreshTokenSource::from_response(self.token_endpoint, tokens)
    }
}

/// The kind of the device code: a credential, as good as a token once the user approved.
enum DeviceCode {}

impl sealed::Sealed for DeviceCode {}

impl SecretKind for DeviceCode {
    const NAME: &'static str = "DeviceCode";
}

/// What the user is asked to do (RFC 8628 §3.2): open [`verification_uri`](Self::verification_uri)
/// and enter [`user_code`](Self::user_code), before [`expires_at`](Self::expires_at).
///
/// It also holds the device code, which [`DeviceAuthorization::wait`] redeems: a credential,
/// never shown by `Debug` (the user code is: the user needs it). `Display` is one line to show
/// the user.
#[derive(Clone)]
pub struct DevicePrompt {
    device_code: Secret<DeviceCode>,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Duration,
    interval: Duration,
    issued_at: Instant,
}

impl DevicePrompt {
    /// The code the user enters at the verification URI.
    pub fn user_code(&self) -> &str {
        &self.user_code
    }

    /// Where the user enters the code (`verification_uri`, or Google's `verification_url`).
    pub fn verification_uri(&self) -> &str {
        &self.verification_uri
    }

    /// The verification URI with the user code in it, if the server gave one: for a link or a
    /// QR code, so that the user need not type the code.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.verification_uri_complete.as_deref()
    }

    /// How long the device code is valid, as the server said (`expires_in`).
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// When the device code expires: `expires_in` after the request for it was sent; `None`
    /// if that is too far ahead to represent.
    pub fn expires_at(&self) -> Option<Instant> {
        self.issued_at.checked_add(self.expires_in)
    }

    /// The interval between polls: the server's `interval`, 5 seconds if it named none, and at
    /// least 1 second.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn parse(
        fields: Fields,
        status: StatusCode,
        sent: &Redactions,
        issued_at: Instant,
        insecure: bool,
    ) -> Result<Self, Error> {
        let Fields {
            mut values,
            unreadable,
        } = fields;
        let invalid = |what: String| Error::invalid_response(Some(status), what);
        let mut text = |names: &[&str]| {
            let value = names.iter().find_map(|name| {
                let value = values.remove(*name)?;
                Some((*name, value))
            });
            match value {
                Some((name, Value::String(_))) if unreadable.iter().any(|n| n == name) => {
                    Err(format!("{name} is not a readable JSON string"))
                }
                Some((_, Value::String(text))) if !text.is_empty() => Ok(Some(text)),
                Some((name, Value::Null)) | Some((name, Value::String(_))) => {
                    Err(format!("{name} is empty"))
                }
                Some((name, _)) => Err(format!("{name} is not a string")),
                None => Ok(None),
            }
        };
        let device_code = text(&["device_code"])
            .map_err(invalid)?
            .ok_or_else(|| invalid("no device_code".into()))?;
        let user_code = text(&["user_code"])
            .map_err(invalid)?
            .ok_or_else(|| invalid("no user_code".into()))?;
        // Shown to a person, often on a terminal: no escape sequences, no characters that
        // reorder or hide the text around them, no flood.
        if user_code.len() > MAX_USER_CODE || user_code.chars().any(must_escape) {
            return Err(invalid(format!(
                "user_code is not a short printable text ({} bytes)",
                user_code.len()
            )));
        }
        let verification_uri = text(&["verification_uri", "verification_url"])
            .map_err(invalid)?
            .ok_or_else(|| invalid("no verification_uri".into()))?;
        if !is_web_url(&verification_uri, insecure) {
            return Err(invalid(
                "verification_uri is not an https URL (http only to loopback, or with \
                 allow_insecure_http) without user information, of at most 2048 printable bytes"
                    .into(),
            ));
        }
        // Optional: one that is unusable is dropped, the user can still type the code.
        let verification_uri_complete = text(&["verification_uri_complete"])
            .ok()
            .flatten()
            .filter(|url| is_web_url(url, insecure));
        let expires_in = seconds_field(&mut values, "expires_in", status, sent)?
            .ok_or_else(|| invalid("no expires_in".into()))?;
        let interval = seconds_field(&mut values, "interval", status, sent)?
            .unwrap_or(DEFAULT_INTERVAL)
            .max(MIN_INTERVAL);
        Ok(Self {
            device_code: Secret::new(device_code),
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in,
            interval,
            issued_at,
        })
    }
}

/// Whether `url` may be shown to the user as where to go: a URL the endpoints would accept
/// ([`check_url`]: `https`, or `http` to loopback or with `insecure`), of sensible length, with
/// nothing that reorders or hides text, and without user information, which would put a name
/// the user trusts before the host the link goes to (RFC 8628 §5.4).
fn is_web_url(url: &str, insecure: bool) -> bool {
    url.len() <= MAX_URL
        && !url.chars().any(must_escape)
        && check_url("verification_uri", url, insecure).is_ok_and(|uri| {
            uri.authority()
                .is_some_and(|authority| !authority.as_str().contains('@'))
        })
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("token_endpoint", &self.token_endpoint)
            .field(
                "device_authorization_endpoint",
                &self.device_authorization_endpoint,
            )
            .field("scopes", &self.scopes)
            .field("params", &super::redact::Params(&self.params))
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

impl fmt::Debug for DevicePrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePrompt")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .field("device_code", &self.device_code)
            .finish()
    }
}

/// `Open <verification_uri> and enter the code <user_code>`.
impl fmt::Display for DevicePrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Open {} and enter the code {}",
            self.verification_uri, self.user_code
        )
    }
}

#[cfg(test)]
mod tests;
