//! Calls an API once as a service, with a token from the OAuth 2.0 client credentials grant
//! (RFC 6749 §4.4), and explains any failure in one line.
//!
//! Configuration comes from the environment:
//!
//! | variable | |
//! |---|---|
//! | `TOKEN_URL` | the token endpoint (`https`; plain `http` only for loopback) |
//! | `CLIENT_ID` | the client id |
//! | `CLIENT_SECRET` or `CLIENT_SECRET_FILE` | the secret, or a file holding it (surrounding whitespace is trimmed) |
//! | `SCOPE` | optional: scopes to request, space-separated |
//! | `RESOURCE` | optional: resource indicators (RFC 8707), space-separated |
//! | `AUDIENCE` | optional: the `audience` parameter some servers (Auth0, Okta) want |
//! | `CLIENT_AUTH` | optional: `basic` (default), `basic-raw` or `post` |
//! | `API_URL` | the API to `GET` with the token |
//!
//! ```text
//! TOKEN_URL=https://auth.example.com/oauth2/token CLIENT_ID=reporting-job \
//! CLIENT_SECRET_FILE=/run/secrets/client_secret SCOPE="invoices:read" \
//! API_URL=https://api.example.com/v1/invoices cargo run --example client_credentials
//! ```
//!
//! It prints the API's status and the first 500 bytes of its body, and exits with 0. Anything
//! else (a missing variable, a refused client, an unreachable endpoint, a 401 or 403 from the
//! API) is one line on stderr and exit code 1.

use std::env::VarError;
use std::error::Error as StdError;
use std::fmt::Display;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{self, ClientAuth, ClientCredentials, ErrorCode};
use tower_bearer::{challenge, BearerAuthLayer, BoxError};

/// Printed when no variable is set at all: the example is being tried out.
const USAGE: &str = "usage: TOKEN_URL=https://auth.example.com/oauth2/token CLIENT_ID=my-service \
    CLIENT_SECRET=... API_URL=https://api.example.com/v1/status cargo run --example \
    client_credentials (optional: CLIENT_SECRET_FILE instead of CLIENT_SECRET, SCOPE, RESOURCE, \
    AUDIENCE, CLIENT_AUTH=basic|basic-raw|post)";

/// Every variable the example reads; if none is set, it prints [`USAGE`].
const VARIABLES: &[&str] = &[
    "TOKEN_URL",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "CLIENT_SECRET_FILE",
    "SCOPE",
    "RESOURCE",
    "AUDIENCE",
    "CLIENT_AUTH",
    "API_URL",
];

/// How much of the API's body is shown.
const BODY_EXCERPT: usize = 500;

/// The longest the API call may take, token fetch included. The token request has its own,
/// shorter limit (20 s by default); this one covers a hanging API.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the example stops.
enum Failure {
    /// Nothing is configured: print the usage line.
    Usage,
    /// One line saying what went wrong and, where it can, what to check.
    Error(String),
}

fn fail(message: impl Display) -> Failure {
    Failure::Error(message.to_string())
}

// One request on one connection: a single-threaded runtime is plenty.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage) => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
        Err(Failure::Error(message)) => {
            eprintln!("error: {}", one_line(&message));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Failure> {
    // Everything is read and checked before any connection is made, so a configuration mistake
    // is reported at once and never as a network error.
    if VARIABLES
        .iter()
        .all(|name| std::env::var_os(name).is_none())
    {
        return Err(Failure::Usage);
    }
    let token_url = required(
        "TOKEN_URL",
        "the token endpoint, e.g. https://auth.example.com/oauth2/token",
    )?;
    let client_id = required("CLIENT_ID", "the client id registered for this service")?;
    let secret = client_secret()?;
    let auth = match optional("CLIENT_AUTH")?.as_deref().map(str::trim) {
        None | Some("basic") => ClientAuth::Basic,
        Some("basic-raw") => ClientAuth::BasicRaw,
        Some("post") => ClientAuth::Post,
        Some(other) => {
            return Err(fail(format!(
                "set CLIENT_AUTH to basic, basic-raw or post, not {other:?}"
            )))
        }
    };
    let api_url = api_url()?;

    let endpoint = oauth2::TokenEndpoint::builder(token_url.trim(), client_id.trim())
        .client_secret(secret)
        .auth(auth)
        .build()
        .map_err(|e| fail(explain_oauth(&e)))?;
    let mut source = ClientCredentials::new(endpoint);
    if let Some(scope) = optional("SCOPE")? {
        source = source.scopes(scope.split_whitespace());
    }
    // URIs cannot contain spaces, so a space-separated list is unambiguous.
    for resource in optional("RESOURCE")?
        .iter()
        .flat_map(|r| r.split_whitespace())
    {
        source = source.resource(resource);
    }
    if let Some(audience) = optional("AUDIENCE")? {
        source = source.audience(audience.trim());
    }

    // The token source has its own HTTP client for the token endpoint; the layer goes over the
    // client that calls the API, and fetches a token before the first request.
    let layer = BearerAuthLayer::new(source);
    let api = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api_client().map_err(fail)?);
    // `Full` bodies can be cloned, so a request whose token gets a 401 is replayed once with a
    // fresh token.
    let request = Request::get(api_url.clone())
        .body(Full::<Bytes>::default())
        .map_err(|e| fail(format!("cannot build the API request: {e}")))?;
    let call = async {
        let response = api.oneshot(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let (excerpt, truncated) = read_excerpt(response.into_body()).await?;
        Ok::<_, BoxError>((status, headers, excerpt, truncated))
    };
    let (status, headers, excerpt, truncated) = tokio::time::timeout(API_TIMEOUT, call)
        .await
        .map_err(|_| {
            fail(format!(
                "no answer from the API at {api_url} within {}s",
                API_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| fail(explain(&*e, &api_url)))?;

    let replayed = layer.cache().stats().replays > 0;
    match status {
        s if s.is_success() => {
            println!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""));
            // The body's own final newline would leave a blank line before the exit.
            let excerpt = String::from_utf8_lossy(&excerpt);
            println!("{}", excerpt.trim_end_matches(['\r', '\n']));
            if truncated {
                println!("[body truncated to its first {BODY_EXCERPT} bytes]");
            }
            Ok(())
        }
        StatusCode::UNAUTHORIZED => {
            // The layer replays a rejected request once with a new token; a 401 here means the
            // new token was rejected too, so the token is wrong for this API, not stale.
            let (code, description) = bearer_error(&headers);
            let detail = match (&code, &description) {
                (Some(code), Some(description)) => format!(" ({code}: {description})"),
                (Some(code), None) => format!(" ({code})"),
                (None, _) => String::new(),
            };
            if code.as_deref() == Some("insufficient_scope") {
                Err(fail(format!(
                    "the API wants a scope the token does not have{detail}: check SCOPE"
                )))
            } else if replayed {
                Err(fail(format!(
                    "the API rejected a fresh token{detail}: check SCOPE/RESOURCE/AUDIENCE"
                )))
            } else {
                Err(fail(format!(
                    "the API rejected the token{detail}: check SCOPE/RESOURCE/AUDIENCE"
                )))
            }
        }
        StatusCode::FORBIDDEN => Err(fail(format!(
            "the API refused the request (403 Forbidden): the token lacks the permissions for \
             {api_url}; check SCOPE/RESOURCE/AUDIENCE and the client's grants at the \
             authorization server"
        ))),
        s => Err(fail(format!(
            "the API answered {} {}: {}",
            s.as_u16(),
            s.canonical_reason().unwrap_or(""),
            String::from_utf8_lossy(&excerpt[..excerpt.len().min(200)])
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// An optional variable. Empty counts as unset, so that `SCOPE= cargo run ...` means no scope.
fn optional(name: &str) -> Result<Option<String>, Failure> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(_)) => Err(fail(format!("{name} is not valid UTF-8"))),
    }
}

/// A required variable; `what` completes "set NAME to ...".
fn required(name: &str, what: &str) -> Result<String, Failure> {
    optional(name)?.ok_or_else(|| fail(format!("set {name} to {what}")))
}

/// The client secret, from `CLIENT_SECRET` or from the file `CLIENT_SECRET_FILE` names (as
/// mounted Kubernetes or Docker secrets are; their trailing newline is trimmed).
fn client_secret() -> Result<String, Failure> {
    match (optional("CLIENT_SECRET")?, optional("CLIENT_SECRET_FILE")?) {
        (Some(_), Some(_)) => Err(fail(
            "set either CLIENT_SECRET or CLIENT_SECRET_FILE, not both",
        )),
        (Some(secret), None) => Ok(secret),
        (None, Some(path)) => {
            let secret = std::fs::read_to_string(&path)
                .map_err(|e| fail(format!("cannot read CLIENT_SECRET_FILE {path:?}: {e}")))?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(fail(format!("CLIENT_SECRET_FILE {path:?} is empty")));
            }
            Ok(secret.to_owned())
        }
        (None, None) => Err(fail(
            "set CLIENT_SECRET to the client secret, or CLIENT_SECRET_FILE to a file holding it",
        )),
    }
}

/// `API_URL`, which must be absolute; plain `http` would send the token in clear text, so it is
/// accepted for loopback only, as the crate does for token endpoints.
fn api_url() -> Result<Uri, Failure> {
    let url = required(
        "API_URL",
        "the API to call, e.g. https://api.example.com/v1/status",
    )?;
    let url = url.trim();
    let uri: Uri = url
        .parse()
        .map_err(|e| fail(format!("API_URL {url:?} is not a valid URL: {e}")))?;
    let Some(host) = uri.host() else {
        return Err(fail(format!("API_URL {url:?} is not an absolute URL")));
    };
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(fail(format!(
            "API_URL {url:?} must use https: the token would cross the network in clear text"
        ))),
        _ => Err(fail(format!("API_URL {url:?} must be an http(s) URL"))),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// The API client
// ---------------------------------------------------------------------------------------------

/// hyper-util's pooled client, with rustls as the crate's own token client has it (ring, the
/// system's roots, the bundled Mozilla roots where the system has none).
#[cfg(feature = "default-client")]
fn api_client(
) -> Result<HyperClient<impl Connect + Clone + Send + Sync + 'static, Full<Bytes>>, String> {
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(builder) => builder,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("cannot set up TLS for the API client: {e}"))?,
    };
    // `https_or_http`: plain http is already limited to loopback by `api_url`.
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(HyperClient::builder(TokioExecutor::new()).build(connector))
}

/// Without the `default-client` feature there is no TLS stack among the crate's dependencies:
/// plain http only (and the token client then needs `TokenEndpointBuilder::transport`, which this
/// example reports as a configuration error).
#[cfg(not(feature = "default-client"))]
fn api_client(
) -> Result<HyperClient<impl Connect + Clone + Send + Sync + 'static, Full<Bytes>>, String> {
    Ok(HyperClient::builder(TokioExecutor::new()).build_http())
}

/// Reads up to [`BODY_EXCERPT`] bytes of `body`, and whether there was more. The rest is not
/// read: the example shows an excerpt, and a large body must not be buffered for it.
async fn read_excerpt<B>(mut body: B) -> Result<(Vec<u8>, bool), BoxError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut excerpt = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue; // trailers
        };
        excerpt.extend_from_slice(&data);
        if excerpt.len() > BODY_EXCERPT {
            excerpt.truncate(BODY_EXCERPT);
            return Ok((excerpt, true));
        }
    }
    Ok((excerpt, false))
}

/// The `error` and `error_description` of the API's `Bearer` challenge (RFC 6750 §3), if any.
fn bearer_error(headers: &http::HeaderMap) -> (Option<String>, Option<String>) {
    challenge::from_headers(headers)
        .into_iter()
        .find(|c| c.is_scheme("Bearer"))
        .map(|c| {
            (
                c.param("error").map(str::to_owned),
                c.param("error_description").map(str::to_owned),
            )
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Explaining failures
// ---------------------------------------------------------------------------------------------

/// One line for an error of the authenticated API client: a token failure (the layer's
/// [`tower_bearer::Error`], usually wrapping an [`oauth2::Error`]) or a failure to reach the
/// API (hyper's error, passed through unchanged).
fn explain(error: &(dyn StdError + 'static), api_url: &Uri) -> String {
    let Some(token_error) = error.downcast_ref::<tower_bearer::Error>() else {
        return format!("cannot reach the API at {api_url}: {}", chain(error));
    };
    if let Some(oauth) = token_error.source_as::<oauth2::Error>() {
        return explain_oauth(oauth);
    }
    match token_error.kind() {
        tower_bearer::ErrorKind::Timeout => format!(
            "the token endpoint did not answer in time ({}): check TOKEN_URL and the network",
            chain(token_error)
        ),
        _ => chain(token_error),
    }
}

/// One line for an error of the client credentials grant, from its kind, OAuth 2.0 code, HTTP
/// status and description.
fn explain_oauth(error: &oauth2::Error) -> String {
    let said = error
        .description()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    match error.kind() {
        oauth2::ErrorKind::OAuth | oauth2::ErrorKind::Http => match error.code() {
            Some(ErrorCode::InvalidClient) => "the token endpoint refused the client credentials \
                (invalid_client): check CLIENT_ID/CLIENT_SECRET and CLIENT_AUTH"
                .to_owned(),
            Some(ErrorCode::InvalidScope) => format!(
                "the token endpoint refused the requested scope (invalid_scope{said}): check SCOPE"
            ),
            Some(ErrorCode::InvalidTarget) => format!(
                "the token endpoint refused the requested resource (invalid_target{said}): check \
                 RESOURCE and AUDIENCE"
            ),
            Some(code @ (ErrorCode::UnauthorizedClient | ErrorCode::UnsupportedGrantType)) => {
                format!(
                    "this client may not use the client credentials grant ({code}{said}): allow \
                     it for CLIENT_ID at the authorization server"
                )
            }
            Some(code) if error.is_retryable() => {
                format!("the token endpoint is unavailable ({code}{said}): try again later")
            }
            Some(code) => format!("the token endpoint refused the request ({code}{said})"),
            None => match error.status() {
                Some(status @ (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)) => {
                    format!(
                        "the token endpoint answered HTTP {}: check TOKEN_URL",
                        status.as_u16()
                    )
                }
                Some(status) if error.is_retryable() => format!(
                    "the token endpoint is unavailable (HTTP {}{said}): try again later",
                    status.as_u16()
                ),
                Some(status) => {
                    format!("the token endpoint answered HTTP {}{said}", status.as_u16())
                }
                None => error.to_string(),
            },
        },
        oauth2::ErrorKind::Transport => format!(
            "cannot reach the token endpoint: {}",
            error.source().map_or_else(|| error.to_string(), chain)
        ),
        oauth2::ErrorKind::Timeout => format!(
            "the token endpoint did not answer in time ({}): check TOKEN_URL and the network",
            error.description().unwrap_or("timed out")
        ),
        oauth2::ErrorKind::Redirect => format!(
            "the token endpoint answered a redirect (HTTP {}), which is not followed: TOKEN_URL \
             is probably not the token endpoint",
            error.status().map_or(0, |s| s.as_u16())
        ),
        oauth2::ErrorKind::InvalidResponse | oauth2::ErrorKind::BodyTooLarge => {
            format!("the token endpoint's answer is not a token response{said}: check TOKEN_URL")
        }
        // `description` is the whole explanation, e.g. "token URL "http://..." must use https".
        oauth2::ErrorKind::Config => error
            .description()
            .map_or_else(|| error.to_string(), str::to_owned),
        _ => chain(error),
    }
}

/// An error followed by its causes, `outer: inner: innermost`.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Collapses line breaks and runs of whitespace: server-provided descriptions may contain them,
/// and the explanation must stay on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
