//! A command-line login: the user signs in once in the browser (the authorization code grant
//! with PKCE, RFC 6749 §4.1 and RFC 7636, redirected to a loopback port as RFC 8252 describes),
//! the refresh token is kept in a file, and later runs sign in silently with it. Each run calls
//! an API once, with a fresh access token, and explains any failure in one line.
//!
//! Configuration comes from the environment:
//!
//! | variable | |
//! |---|---|
//! | `AUTHORIZATION_URL` | the authorization endpoint, where the user signs in (needed to sign in) |
//! | `TOKEN_URL` | the token endpoint (`https`; plain `http` only for loopback) |
//! | `CLIENT_ID` | the client id of a public client whose redirect URI is `http://127.0.0.1/callback` on any port |
//! | `CLIENT_SECRET` | optional: for a confidential client (HTTP Basic authentication) |
//! | `SCOPE` | optional: scopes, space-separated; default `openid offline_access` |
//! | `ISSUER` | optional: the issuer the redirect's `iss` must match (RFC 9207) |
//! | `TOKEN_FILE` | optional: where the refresh token is kept; default `./refresh-token.txt` |
//! | `API_URL` | the API to `GET` with the access token |
//!
//! ```text
//! AUTHORIZATION_URL=https://auth.example.com/oauth2/authorize \
//! TOKEN_URL=https://auth.example.com/oauth2/token CLIENT_ID=my-cli \
//! ISSUER=https://auth.example.com API_URL=https://auth.example.com/userinfo \
//! cargo run --example authorization_code
//! ```
//!
//! Without a saved refresh token, it prints a URL to open in the browser and waits up to five
//! minutes for the sign-in. It prints the API's status and the first 500 bytes of its body, and
//! exits with 0; anything else is one line on stderr and exit code 1. Delete `TOKEN_FILE` to
//! sign in again.

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
use tower_bearer::oauth2::{
    self, AuthorizationCode, ClientAuth, ErrorCode, FileStore, LoopbackRedirect,
    RefreshTokenSource, RefreshTokenStore,
};
use tower_bearer::{challenge, BearerAuthLayer, BoxError};

/// Printed when no variable is set at all: the example is being tried out.
const USAGE: &str = "usage: AUTHORIZATION_URL=https://auth.example.com/oauth2/authorize \
    TOKEN_URL=https://auth.example.com/oauth2/token CLIENT_ID=my-cli \
    API_URL=https://auth.example.com/userinfo cargo run --example authorization_code (optional: \
    CLIENT_SECRET, SCOPE=\"openid offline_access\", ISSUER, TOKEN_FILE=./refresh-token.txt)";

/// Every variable the example reads; if none is set, it prints [`USAGE`].
const VARIABLES: &[&str] = &[
    "AUTHORIZATION_URL",
    "TOKEN_URL",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "SCOPE",
    "ISSUER",
    "TOKEN_FILE",
    "API_URL",
];

/// `offline_access` asks for a refresh token (OpenID Connect Core §11), which is what lets later
/// runs skip the browser.
const DEFAULT_SCOPE: &str = "openid offline_access";

const DEFAULT_TOKEN_FILE: &str = "./refresh-token.txt";

/// How long the user has to sign in in the browser.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How much of the API's body is shown.
const BODY_EXCERPT: usize = 500;

/// The longest the API call may take, token refresh included. The token request has its own,
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

/// Where a token endpoint error happened, which changes what `invalid_grant` means.
#[derive(Clone, Copy)]
enum Stage<'a> {
    /// Exchanging the code from the browser: the code was refused.
    SignIn,
    /// Refreshing with the refresh token from `token_file`: the saved grant is gone.
    Refresh { token_file: &'a str },
}

// One user, one request: a single-threaded runtime is plenty.
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
    // Everything is read and checked before the browser is involved or any connection is made,
    // so a configuration mistake is reported at once.
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
    let client_id = required("CLIENT_ID", "the client id registered for this app")?;
    let api_url = api_url()?;
    let scope = optional("SCOPE")?.unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
    let issuer = optional("ISSUER")?.map(|issuer| issuer.trim().to_owned());
    let token_file = optional("TOKEN_FILE")?.unwrap_or_else(|| DEFAULT_TOKEN_FILE.to_owned());

    // A command-line app cannot keep a secret (anyone can read it from the binary), so it is
    // normally a public client, protected by PKCE instead; a secret is still supported.
    let builder = oauth2::TokenEndpoint::builder(token_url.trim(), client_id.trim());
    let builder = match optional("CLIENT_SECRET")? {
        Some(secret) => builder.client_secret(secret).auth(ClientAuth::Basic),
        None => builder.auth(ClientAuth::None),
    };
    let endpoint = builder
        .build()
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))?;

    let store = FileStore::new(&token_file);
    let saved = store.load().map_err(|e| {
        fail(format!(
            "cannot read TOKEN_FILE {token_file:?}: {}",
            e.source().map_or_else(|| e.to_string(), chain)
        ))
    })?;
    let source = match saved {
        Some(refresh_token) => {
            eprintln!("using the refresh token saved in {token_file}");
            // The source refreshes for the first access token, and saves every rotated refresh
            // token, so the file always holds the one the server will accept next.
            RefreshTokenSource::new(endpoint, refresh_token).store(store)
        }
        None => {
            let authorization_url = required(
                "AUTHORIZATION_URL",
                "the authorization endpoint, e.g. https://auth.example.com/oauth2/authorize",
            )?;
            sign_in(
                endpoint,
                &authorization_url,
                &scope,
                issuer.as_deref(),
                store,
                &token_file,
            )
            .await?
        }
    };

    call_api(source, &api_url, &token_file).await
}

/// Signs the user in through the browser, saves the refresh token, and returns a source that
/// starts with the access token of the code exchange.
async fn sign_in(
    endpoint: oauth2::TokenEndpoint,
    authorization_url: &str,
    scope: &str,
    issuer: Option<&str>,
    store: FileStore,
    token_file: &str,
) -> Result<RefreshTokenSource, Failure> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let mut grant = AuthorizationCode::new(endpoint.clone(), authorization_url.trim());
    for scope in &scopes {
        grant = grant.scope(*scope);
    }
    if scopes.contains(&"offline_access") {
        // OpenID Connect Core §11: a request for offline_access must also ask for consent,
        // or the server may ignore it and issue no refresh token.
        grant = grant.param("prompt", "consent");
    }

    // Bound before the URL is shown: the redirect URI carries the port.
    let redirect = LoopbackRedirect::bind()
        .await
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))?;
    let request = grant
        .authorization_request(redirect.redirect_uri())
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))?;
    println!(
        "Open this URL in your browser to sign in:\n  {}",
        request.url()
    );
    let response = redirect
        .receive(&request, issuer, SIGN_IN_TIMEOUT)
        .await
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))?;
    let tokens = grant
        .exchange(&request, &response)
        .await
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))?;

    let Some(refresh_token) = tokens.refresh_token() else {
        return Err(fail(
            "signed in, but the server issued no refresh token: add offline_access to SCOPE, \
             or allow the refresh_token grant for CLIENT_ID at the authorization server",
        ));
    };
    // Saved right away, not on the first refresh: this run may never need one, and the next
    // run must not ask the user to sign in again. Not fatal: the tokens work for this run.
    match store.save(refresh_token) {
        Ok(()) => eprintln!("signed in; refresh token saved to {token_file}"),
        Err(e) => eprintln!(
            "warning: signed in, but cannot save the refresh token to TOKEN_FILE {token_file:?}: {}",
            one_line(&chain(&*e))
        ),
    }
    RefreshTokenSource::from_response(endpoint, tokens)
        .map(|source| source.store(store))
        .map_err(|e| fail(explain_oauth(&e, Stage::SignIn)))
}

/// Calls `GET api_url` once through the bearer layer and prints the answer.
async fn call_api(
    source: RefreshTokenSource,
    api_url: &Uri,
    token_file: &str,
) -> Result<(), Failure> {
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
        .map_err(|e| fail(explain(&*e, api_url, token_file)))?;

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
                    "the API rejected a fresh token{detail}: check SCOPE, and that the API \
                     accepts tokens of this authorization server"
                )))
            } else {
                Err(fail(format!(
                    "the API rejected the token{detail}: check SCOPE, and that the API accepts \
                     tokens of this authorization server"
                )))
            }
        }
        StatusCode::FORBIDDEN => Err(fail(format!(
            "the API refused the request (403 Forbidden): the signed-in user or the token lacks \
             the permissions for {api_url}; check SCOPE"
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

/// An optional variable. Empty counts as unset, so that `SCOPE= cargo run ...` means the default.
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

/// `API_URL`, which must be absolute; plain `http` would send the token in clear text, so it is
/// accepted for loopback only, as the crate does for token endpoints.
fn api_url() -> Result<Uri, Failure> {
    let url = required(
        "API_URL",
        "the API to call, e.g. https://auth.example.com/userinfo",
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
/// [`tower_bearer::Error`], usually wrapping an [`oauth2::Error`] of the refresh) or a failure
/// to reach the API (hyper's error, passed through unchanged).
fn explain(error: &(dyn StdError + 'static), api_url: &Uri, token_file: &str) -> String {
    let Some(token_error) = error.downcast_ref::<tower_bearer::Error>() else {
        return format!("cannot reach the API at {api_url}: {}", chain(error));
    };
    if let Some(oauth) = token_error.source_as::<oauth2::Error>() {
        return explain_oauth(oauth, Stage::Refresh { token_file });
    }
    match token_error.kind() {
        tower_bearer::ErrorKind::Timeout => format!(
            "the token endpoint did not answer in time ({}): check TOKEN_URL and the network",
            chain(token_error)
        ),
        _ => chain(token_error),
    }
}

/// One line for an error of the sign-in or of a refresh, from its kind, OAuth 2.0 code, HTTP
/// status and description.
fn explain_oauth(error: &oauth2::Error, stage: Stage<'_>) -> String {
    let said = error
        .description()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    match error.kind() {
        oauth2::ErrorKind::OAuth | oauth2::ErrorKind::Http => match (error.code(), stage) {
            (Some(ErrorCode::InvalidGrant), Stage::Refresh { token_file }) => format!(
                "the saved refresh token is no longer valid: delete TOKEN_FILE ({token_file}) \
                 and sign in again"
            ),
            (Some(ErrorCode::InvalidGrant), Stage::SignIn) => format!(
                "the token endpoint refused the authorization code (invalid_grant{said}): sign \
                 in again"
            ),
            (Some(ErrorCode::InvalidClient), _) => format!(
                "the token endpoint refused the client (invalid_client{said}): check CLIENT_ID, \
                 and CLIENT_SECRET if the client is confidential"
            ),
            (Some(ErrorCode::InvalidScope), _) => format!(
                "the token endpoint refused the requested scope (invalid_scope{said}): check \
                 SCOPE"
            ),
            (Some(code @ (ErrorCode::UnauthorizedClient | ErrorCode::UnsupportedGrantType)), _) => {
                format!(
                    "this client may not use this grant ({code}{said}): allow the \
                     authorization_code and refresh_token grants for CLIENT_ID at the \
                     authorization server"
                )
            }
            (Some(code), _) if error.is_retryable() => {
                format!("the token endpoint is unavailable ({code}{said}): try again later")
            }
            (Some(code), _) => format!("the token endpoint refused the request ({code}{said})"),
            (None, _) => match error.status() {
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
        // The authorization server redirected back with an error instead of a code.
        oauth2::ErrorKind::Authorization => match error.code() {
            Some(ErrorCode::AccessDenied) => {
                format!("the sign-in was refused (access_denied{said})")
            }
            Some(ErrorCode::InvalidScope) => format!(
                "the authorization server refused the requested scope (invalid_scope{said}): \
                 check SCOPE"
            ),
            Some(code) => format!(
                "the authorization server refused the sign-in ({code}{said}): check CLIENT_ID, \
                 and that it allows the redirect URI http://127.0.0.1:<any port>/callback"
            ),
            None => format!("the authorization server refused the sign-in{said}"),
        },
        // No redirect in time, or one that does not match the request (including its `iss`).
        oauth2::ErrorKind::Callback => format!("the sign-in did not complete{said}"),
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
