//! Fakes of the cloud metadata services and of GitHub's OIDC token service, each following the
//! public document named above it. Each fake is a plain function from a request head to a
//! response, usable two ways: served by hyper on 127.0.0.1 (port 0), for end-to-end tests and
//! the examples; or handed to a source as its `transport(...)`, so that paused-clock tests run
//! with no socket (a real socket on a paused clock lets timers fire while bytes are in flight).
//!
//! Shared by `tests/workload_cloud.rs` (as `support::metadata`) and by `examples/gcp.rs`,
//! `examples/azure.rs` and `examples/github_actions.rs` (through `#[path]`). Time is
//! `tokio::time::Instant`, so the fakes follow a paused clock; JWT `exp`/`iat` use the system
//! clock, as real issuers do.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// The fake's two faces
// ---------------------------------------------------------------------------------------------

/// A request a fake received.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// When it arrived (Tokio's clock).
    pub(crate) at: Instant,
    /// Its path and query.
    pub(crate) target: String,
    pub(crate) headers: HeaderMap,
}

impl Seen {
    /// The decoded value of the query parameter `name`.
    pub(crate) fn query(&self, name: &str) -> Option<String> {
        query(&self.target, name)
    }
}

type Handler = dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync;

/// A fake's answer, ready at once.
pub(crate) type Answer = Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// A fake service: its handler, and the requests it received.
#[derive(Clone)]
pub(crate) struct Fake {
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn new(handler: impl Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync + 'static) -> Self {
        Self {
            handler: Arc::new(handler),
            seen: Arc::default(),
        }
    }

    fn respond(&self, parts: &Parts) -> Response<Full<Bytes>> {
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            target: parts
                .uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            headers: parts.headers.clone(),
        });
        (self.handler)(parts)
    }

    /// The requests received so far.
    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The fake as an HTTP client for a source's `transport(...)`.
    pub(crate) fn transport(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = Answer,
    > + Clone
           + Send
           + Sync
           + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let (parts, _) = req.into_parts();
            ready(Ok(this.respond(&parts)))
        })
    }

    /// Serves the fake on 127.0.0.1, on a port the system picks; returns `http://127.0.0.1:PORT`.
    pub(crate) async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (parts, _) = req.into_parts();
                            ready(Ok::<_, Infallible>(this.respond(&parts)))
                        });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }
}

// ---------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// The decoded value of the query parameter `name` in `target` (a path and query).
pub(crate) fn query(target: &str, name: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned-looking JWT (the signature is not one: the sources never verify it) with these
/// claims; `exp` and `iat` are added from `lifetime` on the system clock.
pub(crate) fn jwt(claims: serde_json::Value, lifetime: Duration) -> String {
    let mut claims = claims;
    let now = unix_now();
    claims["iat"] = now.into();
    claims["exp"] = (now + lifetime.as_secs()).into();
    format!(
        "{}.{}.ZmFrZS1zaWduYXR1cmU",
        base64url(br#"{"alg":"RS256","typ":"JWT","kid":"fake"}"#),
        base64url(claims.to_string().as_bytes())
    )
}

/// The claims of a JWT made by [`jwt`] (or any compact JWT).
pub(crate) fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let mut bytes = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    serde_json::from_slice(&bytes).unwrap()
}

// ---------------------------------------------------------------------------------------------
// GCP metadata server
// ---------------------------------------------------------------------------------------------
//
// Follows Google Cloud's "About VM metadata" (https://cloud.google.com/compute/docs/metadata/overview:
// every request carries `Metadata-Flavor: Google`, else 403; every answer carries it),
// "Authenticate workloads to Google Cloud APIs using service accounts"
// (https://cloud.google.com/compute/docs/access/authenticate-workloads: `.../service-accounts/
// {account}/token[?scopes=...]` answers `{"access_token","expires_in","token_type"}`, and "the
// metadata server caches access tokens until 5 minutes before they expire"), and "Verifying the
// identity of instances" (https://cloud.google.com/compute/docs/instances/verifying-instance-identity:
// `.../identity?audience=...&format=full` answers a JWT as text).

/// The GCP fake's settings and what it did.
#[derive(Clone)]
pub(crate) struct Gcp {
    pub(crate) fake: Fake,
    state: Arc<Mutex<GcpState>>,
}

struct GcpState {
    lifetime: Duration,
    window: Duration,
    issued: usize,
    /// Per account and scopes: the cached access token and when it expires.
    cached: HashMap<String, (String, Instant)>,
}

impl Gcp {
    /// Access tokens living `lifetime`, handed out again until the last `window` of their life
    /// (Google documents 5 minutes), for the accounts `default` and `sa@p.iam.gserviceaccount.com`.
    pub(crate) fn new(lifetime: Duration, window: Duration) -> Self {
        let state = Arc::new(Mutex::new(GcpState {
            lifetime,
            window,
            issued: 0,
            cached: HashMap::new(),
        }));
        let shared = state.clone();
        let fake = Fake::new(move |parts| gcp(&shared, parts));
        Self { fake, state }
    }

    /// How many distinct access tokens it issued.
    pub(crate) fn issued(&self) -> usize {
        self.state.lock().unwrap().issued
    }
}

fn gcp(state: &Mutex<GcpState>, parts: &Parts) -> Response<Full<Bytes>> {
    const FLAVOR: (&str, &str) = ("metadata-flavor", "Google");
    let text = [FLAVOR, ("content-type", "text/html; charset=UTF-8")];
    if header(parts, "metadata-flavor") != Some("Google") {
        return response(
            403,
            &text,
            "Your client does not have permission to get URL from this server. Missing \
             Metadata-Flavor:Google header.",
        );
    }
    let path = parts.uri.path();
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let Some(rest) = path.strip_prefix("/computeMetadata/v1/instance/service-accounts/") else {
        return response(404, &text, "Not Found");
    };
    let Some((account, what)) = rest.split_once('/') else {
        return response(404, &text, "Not Found");
    };
    if account != "default" && account != "sa@p.iam.gserviceaccount.com" {
        return response(404, &text, "Not Found");
    }
    match what {
        "token" => {
            let scopes = query(target, "scopes").unwrap_or_default();
            let mut state = state.lock().unwrap();
            let now = Instant::now();
            let key = format!("{account} {scopes}");
            let (lifetime, window) = (state.lifetime, state.window);
            let fresh = state
                .cached
                .get(&key)
                .filter(|(_, expires)| now + window < *expires)
                .cloned();
            let (token, expires) = match fresh {
                Some(cached) => cached,
                None => {
                    state.issued += 1;
                    let issued = (format!("ya29.fake-gcp-{}", state.issued), now + lifetime);
                    state.cached.insert(key, issued.clone());
                    issued
                }
            };
            let body = serde_json::json!({
                "access_token": token,
                "expires_in": (expires - now).as_secs(),
                "token_type": "Bearer",
            });
            response(
                200,
                &[FLAVOR, ("content-type", "application/json")],
                body.to_string(),
            )
        }
        "identity" => {
            let Some(audience) = query(target, "audience").filter(|a| !a.is_empty()) else {
                return response(400, &text, "non-empty audience parameter required");
            };
            let mut claims = serde_json::json!({
                "iss": "https://accounts.google.com",
                "aud": audience,
                "sub": "104807832617282036547",
                "azp": "104807832617282036547",
            });
            if query(target, "format").as_deref() == Some("full") {
                claims["google"] = serde_json::json!({"compute_engine": {"project_id": "fake"}});
            }
            response(200, &text, jwt(claims, Duration::from_secs(3600)))
        }
        _ => response(404, &text, "Not Found"),
    }
}

// ---------------------------------------------------------------------------------------------
// Azure instance metadata service (IMDS)
// ---------------------------------------------------------------------------------------------
//
// Follows Microsoft Entra's "How to use managed identities for Azure resources on an Azure VM
// to acquire an access token"
// (https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token):
// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with
// `Metadata: true` (else 400), optional `client_id` / `object_id` / `msi_res_id`; the answer's
// numbers are strings; its "Error handling" table: 404 while IMDS updates, 410 while it goes
// through updates ("available within 70 seconds"), 429 throttled, 5xx transient.

/// One scripted answer before the tokens: a status and an optional `Retry-After`.
pub(crate) type Scripted = (u16, Option<u64>);

/// The IMDS fake.
#[derive(Clone)]
pub(crate) struct Imds {
    pub(crate) fake: Fake,
    script: Arc<Mutex<VecDeque<Scripted>>>,
}

impl Imds {
    /// Answers the `script`ed errors first, one per request, then tokens living 24 hours.
    pub(crate) fn new(script: impl IntoIterator<Item = Scripted>) -> Self {
        let script = Arc::new(Mutex::new(script.into_iter().collect::<VecDeque<_>>()));
        let shared = script.clone();
        let issued = Arc::new(Mutex::new(0usize));
        let fake = Fake::new(move |parts| imds(&shared, &issued, parts));
        Self { fake, script }
    }
}

fn json(status: u16, extra: &[(&str, &str)], body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut headers = vec![("content-type", "application/json; charset=utf-8")];
    headers.extend_from_slice(extra);
    response(status, &headers, body.to_string())
}

fn imds(
    script: &Mutex<VecDeque<Scripted>>,
    issued: &Mutex<usize>,
    parts: &Parts,
) -> Response<Full<Bytes>> {
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    if parts.uri.path() != "/metadata/identity/oauth2/token" {
        return json(404, &[], serde_json::json!({"error": "not_found"}));
    }
    if header(parts, "metadata") != Some("true") {
        return json(
            400,
            &[],
            serde_json::json!({
                "error": "invalid_request",
                "error_description": "Required metadata header not specified",
            }),
        );
    }
    if query(target, "api-version").as_deref() != Some("2018-02-01") {
        return json(
            400,
            &[],
            serde_json::json!({"error": "invalid_request", "error_description": "Invalid api-version"}),
        );
    }
    let Some(resource) = query(target, "resource").filter(|r| !r.is_empty()) else {
        return json(
            400,
            &[],
            serde_json::json!({"error": "invalid_request", "error_description": "Required audience parameter not specified"}),
        );
    };
    if let Some((status, retry_after)) = script.lock().unwrap().pop_front() {
        let after = retry_after.map(|s| s.to_string());
        let extra: Vec<(&str, &str)> = after.iter().map(|s| ("retry-after", s.as_str())).collect();
        let description = match status {
            404 => "IMDS endpoint is updating",
            410 => "IMDS is going through updates",
            429 => "IMDS Throttle limit reached",
            _ => "Transient error from the managed identity subsystem",
        };
        return json(
            status,
            &extra,
            serde_json::json!({"error": "unavailable", "error_description": description}),
        );
    }
    let mut issued = issued.lock().unwrap();
    *issued += 1;
    let client_id = query(target, "client_id").unwrap_or_else(|| "system-assigned".to_owned());
    let now = unix_now();
    json(
        200,
        &[],
        serde_json::json!({
            "access_token": format!("eyJ0eXAi.fake-imds-{}.{}", *issued, client_id),
            "client_id": client_id,
            "expires_in": "86399",
            "expires_on": (now + 86_399).to_string(),
            "ext_expires_in": "86399",
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// App Service / Functions identity endpoint
// ---------------------------------------------------------------------------------------------
//
// Follows "How to use managed identities for App Service and Azure Functions", section
// "REST endpoint reference"
// (https://learn.microsoft.com/en-us/azure/app-service/overview-managed-identity#rest-endpoint-reference):
// `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=...` with `X-IDENTITY-HEADER:
// {IDENTITY_HEADER}`, optional `client_id` / `principal_id` / `mi_res_id`; the answer has
// `access_token`, `expires_on` (seconds since 1970, as a string), `resource`, `token_type`,
// `client_id`.

/// The App Service fake, at path `/msi/token`, expecting `header` as the identity header.
pub(crate) fn app_service(header_value: &'static str) -> Fake {
    let issued = Arc::new(Mutex::new(0usize));
    Fake::new(move |parts| {
        let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
        if parts.uri.path() != "/msi/token" {
            return json(
                404,
                &[],
                serde_json::json!({"statusCode": 404, "message": "Not found"}),
            );
        }
        if header(parts, "x-identity-header") != Some(header_value) {
            return json(
                401,
                &[],
                serde_json::json!({"statusCode": 401, "message": "Unauthorized: the X-IDENTITY-HEADER is missing or wrong"}),
            );
        }
        if query(target, "api-version").as_deref() != Some("2019-08-01") {
            return json(
                400,
                &[],
                serde_json::json!({"statusCode": 400, "message": "Invalid api-version"}),
            );
        }
        let Some(resource) = query(target, "resource").filter(|r| !r.is_empty()) else {
            return json(
                400,
                &[],
                serde_json::json!({"statusCode": 400, "message": "resource is required"}),
            );
        };
        let mut issued = issued.lock().unwrap();
        *issued += 1;
        json(
            200,
            &[],
            serde_json::json!({
                "access_token": format!("eyJ0eXAi.fake-appservice-{}", *issued),
                "expires_on": (unix_now() + 86_399).to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": query(target, "client_id").unwrap_or_else(|| "system".to_owned()),
            }),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// GitHub Actions OIDC token service
// ---------------------------------------------------------------------------------------------
//
// Follows GitHub's "About security hardening with OpenID Connect"
// (https://docs.github.com/en/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect)
// and `@actions/core`'s `getIDToken` (actions/toolkit, packages/core/src/oidc-utils.ts):
// `GET {ACTIONS_ID_TOKEN_REQUEST_URL}&audience=...` with `Authorization: Bearer
// {ACTIONS_ID_TOKEN_REQUEST_TOKEN}`, answered by `{"count":..., "value": "<jwt>"}`; the JWT has
// `iss` `https://token.actions.githubusercontent.com`, `sub` `repo:OWNER/REPO:ref:...`, `aud`.
// Stricter than GitHub, it requires an audience (GitHub would default it), so that a source
// forgetting it is caught.

/// The GitHub fake, at `/idtoken?api-version=2.0`, expecting `request_token`; its JWTs live
/// `lifetime`.
pub(crate) fn github(request_token: &'static str, lifetime: Duration) -> Fake {
    Fake::new(move |parts| {
        let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
        let expected = format!("Bearer {request_token}");
        if header(parts, "authorization") != Some(expected.as_str()) {
            return json(401, &[], serde_json::json!({"message": "Bad credentials"}));
        }
        if parts.uri.path() != "/idtoken" || query(target, "api-version").as_deref() != Some("2.0")
        {
            return json(404, &[], serde_json::json!({"message": "Not Found"}));
        }
        let Some(audience) = query(target, "audience").filter(|a| !a.is_empty()) else {
            return json(
                400,
                &[],
                serde_json::json!({"message": "audience is required"}),
            );
        };
        let claims = serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
            "aud": audience,
            "repository": "octo-org/octo-repo",
            "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        });
        json(
            200,
            &[],
            serde_json::json!({"count": 1, "value": jwt(claims, lifetime)}),
        )
    })
}
