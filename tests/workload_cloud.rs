//! The cloud metadata sources and GitHub Actions' OIDC tokens, each against a fake that follows
//! the platform's public document (`tests/support/metadata.rs` names them): end to end through
//! a `BearerAuthLayer` over loopback, the headers and queries each protocol requires, error
//! paths, Azure's retries and the GCP metadata server's renewal window on the paused clock
//! (the fakes then are the sources' transport: no socket), and the GitHub token as a federated
//! client assertion.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::future::ready;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
use tower_bearer::workload::{
    AzureManagedIdentity, ErrorKind, GcpMetadata, GitHubActionsOidc,
    ACTIONS_ID_TOKEN_REQUEST_TOKEN, ACTIONS_ID_TOKEN_REQUEST_URL,
    AZURE_POD_IDENTITY_AUTHORITY_HOST, GCE_METADATA_HOST, IDENTITY_ENDPOINT, IDENTITY_HEADER,
};
use tower_bearer::{BearerAuthLayer, Expiry, TokenCache, TokenKey, TokenSource};

use support::metadata::{self, claims, Gcp, Imds};
use support::within;

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// An API answering 200 with the `Authorization` header it got (or 401 without one), keeping
/// every header it saw.
fn api(
    seen: Arc<Mutex<Vec<Option<String>>>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        seen.lock().unwrap().push(auth.clone());
        let mut response = Response::new(auth.clone().unwrap_or_default());
        if auth.is_none() {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    })
}

/// One request through a layer over `source`; returns the `Authorization` the API got.
async fn through<S: TokenSource>(source: S) -> String {
    let mut service = BearerAuthLayer::new(source).layer(api(Arc::default()));
    let response = within(
        10 * SECOND,
        "a request",
        service
            .ready()
            .await
            .unwrap()
            .call(support::get("http://api.test/")),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

fn env(pairs: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
    let pairs = pairs.to_vec();
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// GCP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gcp_access_tokens_through_the_layer_with_the_flavor_header_and_scopes() {
    let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
    let base = gcp.fake.serve().await;
    let host = base.trim_start_matches("http://").to_owned();
    let source = GcpMetadata::from_lookup(env(&[(GCE_METADATA_HOST, host)]))
        .scopes(["https://www.googleapis.com/auth/cloud-platform", "email"])
        .build()
        .unwrap();
    assert_eq!(through(source.clone()).await, "Bearer ya29.fake-gcp-1");
    let seen = gcp.fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["metadata-flavor"], "Google");
    assert!(
        seen[0]
            .target
            .starts_with("/computeMetadata/v1/instance/service-accounts/default/token?scopes="),
        "{}",
        seen[0].target
    );
    assert_eq!(
        seen[0].query("scopes").as_deref(),
        Some("https://www.googleapis.com/auth/cloud-platform,email")
    );
    // The token states its lifetime and the server's renewal window.
    let token = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap();
    assert_eq!(token.token_type(), Some("Bearer"));
    assert_eq!(token.renewal_window(), Some(240 * SECOND));
    assert!(matches!(token.expiry(), Some(Expiry::In(d)) if d > 3500 * SECOND));
    // A key's scopes replace the configured ones; another account is named in the path.
    let other = GcpMetadata::builder()
        .base_url(&base)
        .account("sa@p.iam.gserviceaccount.com")
        .build()
        .unwrap();
    let key = TokenKey::scopes_of(["https://www.googleapis.com/auth/devstorage.read_only"]);
    other.request_token_for(&key).await.unwrap();
    let last = gcp.fake.requests().pop().unwrap();
    assert!(
        last.target.contains("/sa@p.iam.gserviceaccount.com/token?"),
        "{}",
        last.target
    );
    assert_eq!(
        last.query("scopes").as_deref(),
        Some("https://www.googleapis.com/auth/devstorage.read_only")
    );
}

#[tokio::test]
async fn gcp_id_tokens_per_audience_live_until_their_exp() {
    let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
    let base = gcp.fake.serve().await;
    let source = GcpMetadata::builder()
        .base_url(&base)
        .id_token("https://hello-abc123-uc.a.run.app")
        .build()
        .unwrap();
    let header = through(source.clone()).await;
    let jwt = header.strip_prefix("Bearer ").unwrap();
    assert_eq!(claims(jwt)["aud"], "https://hello-abc123-uc.a.run.app");
    let seen = gcp.fake.requests();
    assert_eq!(seen[0].query("format").as_deref(), Some("full"));
    assert!(seen[0].target.contains("/default/identity?audience="));
    // A key's audience replaces the configured one; the lifetime is the JWT's.
    let token = source
        .request_token_for(&TokenKey::audience_of("https://other.example.com"))
        .await
        .unwrap();
    assert_eq!(
        claims(token.access_token().secret())["aud"],
        "https://other.example.com"
    );
    let Some(Expiry::In(left)) = token.expiry() else {
        panic!("{:?}", token.expiry())
    };
    assert!(left > 3590 * SECOND && left <= 3600 * SECOND, "{left:?}");
    assert_eq!(token.renewal_window(), None);
}

#[tokio::test]
async fn gcp_errors_name_the_server_and_what_went_wrong() {
    let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
    // The fake follows the document: no `Metadata-Flavor: Google`, a 403.
    let bare =
        Request::get("http://metadata/computeMetadata/v1/instance/service-accounts/default/token")
            .body(Full::default())
            .unwrap();
    let answer = gcp.fake.transport().oneshot(bare).await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert_eq!(answer.headers()["metadata-flavor"], "Google");

    // An unknown account: the server's 404 and its text.
    let source = GcpMetadata::builder()
        .account("nobody@p.iam.gserviceaccount.com")
        .transport(gcp.fake.transport())
        .build()
        .unwrap();
    let err = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Http);
    assert_eq!(
        err.to_string(),
        "the GCP metadata server answered HTTP 404 Not Found: Not Found"
    );
    assert!(!err.is_retryable());

    // Something that is not the metadata server (no flavor in its answer).
    let impostor = service_fn(|_: Request<Full<Bytes>>| {
        ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(br#"{"access_token":"ya29.stolen","expires_in":3600}"#),
        ))))
    });
    let source = GcpMetadata::builder().transport(impostor).build().unwrap();
    let err = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert!(err.to_string().contains("Metadata-Flavor: Google"), "{err}");

    // An overloaded server (or a proxy before it) answering 503 without the header: judged by
    // its status, so the cache retries it.
    let busy = service_fn(|_: Request<Full<Bytes>>| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"busy")));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        ready(Ok::<_, Infallible>(response))
    });
    let source = GcpMetadata::builder().transport(busy).build().unwrap();
    let err = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Http);
    assert!(err.is_retryable(), "{err}");

    // Nothing listening: a transport error naming the server.
    let (listener, addr) = support::loopback().await;
    drop(listener);
    let source = GcpMetadata::builder()
        .base_url(format!("http://{addr}"))
        .build()
        .unwrap();
    let err = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(
        err.to_string()
            .starts_with("the GCP metadata server: cannot be reached"),
        "{err}"
    );
}

/// A fixed refresh-ahead window of 600 s would refresh a one-hour token 630 s before its stated
/// expiry, when the server still hands out the same token. The renewal window holds the
/// refresh until the server has a new one; requests every 10 s never go out without a token.
#[tokio::test(start_paused = true)]
async fn gcp_tokens_are_not_refreshed_before_the_server_renews_them() {
    for (window, refreshed_at, steps, renewed) in [
        // The source's default window (4 minutes): the refresh waits until 3360 s, and gets a
        // new token.
        (None, 3360, 370, true),
        // A window as long as the token: nothing held back, the refresh at 2970 s gets the
        // same token back from the server (and so would the next, at 3270 s).
        (Some(3600 * SECOND), 2970, 326, false),
    ] {
        let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
        let mut builder = GcpMetadata::builder().transport(gcp.fake.transport());
        if let Some(window) = window {
            builder = builder.renewal_window(window);
        }
        let cache = TokenCache::builder(builder.build().unwrap())
            .refresh_ahead(600 * SECOND)
            .jitter(0.0)
            .build();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut service = tower_bearer::BearerAuth::from_cache(api(seen.clone()), cache);
        let start = Instant::now();
        for step in 0..=steps {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(support::get("http://api.test/"))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "step {step}");
            // A refresh due now runs in a task of its own: let it run.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            let calls = gcp.fake.requests().len();
            let elapsed = start.elapsed();
            let expected = 1 + usize::from(elapsed >= refreshed_at * SECOND);
            assert_eq!(calls, expected, "{window:?}: {calls} calls at {elapsed:?}");
            tokio::time::sleep(10 * SECOND).await;
        }
        let requests = gcp.fake.requests();
        assert_eq!(requests[1].at - start, refreshed_at * SECOND);
        assert_eq!(gcp.issued(), if renewed { 2 } else { 1 }, "{window:?}");
        assert!(seen.lock().unwrap().iter().all(Option::is_some));
        if renewed {
            let last = seen.lock().unwrap().last().cloned().flatten().unwrap();
            assert_eq!(last, "Bearer ya29.fake-gcp-2");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Azure
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn azure_imds_through_the_layer_with_its_header_and_query() {
    let imds = Imds::new([]);
    let base = imds.fake.serve().await;
    let source =
        AzureManagedIdentity::from_lookup(env(&[(AZURE_POD_IDENTITY_AUTHORITY_HOST, base)]))
            .resource("https://vault.azure.net")
            .client_id("7f3c5e9a-cid")
            .build()
            .unwrap();
    assert!(!source.is_app_service());
    assert_eq!(
        through(source.clone()).await,
        "Bearer eyJ0eXAi.fake-imds-1.7f3c5e9a-cid"
    );
    let seen = imds.fake.requests();
    assert_eq!(seen[0].headers["metadata"], "true");
    assert!(seen[0]
        .target
        .starts_with("/metadata/identity/oauth2/token?"));
    assert_eq!(seen[0].query("api-version").as_deref(), Some("2018-02-01"));
    assert_eq!(
        seen[0].query("resource").as_deref(),
        Some("https://vault.azure.net")
    );
    assert_eq!(seen[0].query("client_id").as_deref(), Some("7f3c5e9a-cid"));
    // `expires_in` arrives as a string of seconds.
    let token = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap();
    assert_eq!(token.expiry(), Some(Expiry::In(86_399 * SECOND)));
    assert_eq!(token.token_type(), Some("Bearer"));
    // A key's resource, or a `.default` scope, replaces the configured resource; object and
    // resource ids have their IMDS names.
    let by_object = AzureManagedIdentity::builder()
        .imds_base_url(imds.fake.serve().await)
        .resource("https://vault.azure.net")
        .object_id("obj-1")
        .build()
        .unwrap();
    by_object
        .request_token_for(&TokenKey::resource_of("https://storage.azure.com/"))
        .await
        .unwrap();
    let last = imds.fake.requests().pop().unwrap();
    assert_eq!(last.query("object_id").as_deref(), Some("obj-1"));
    assert_eq!(
        last.query("resource").as_deref(),
        Some("https://storage.azure.com/")
    );
    let by_resource = AzureManagedIdentity::builder()
        .imds_base_url(imds.fake.serve().await)
        .resource("r")
        .resource_id("/subscriptions/s/id")
        .build()
        .unwrap();
    by_resource
        .request_token_for(&TokenKey::scopes_of([
            "https://management.azure.com/.default",
        ]))
        .await
        .unwrap();
    let last = imds.fake.requests().pop().unwrap();
    assert_eq!(
        last.query("msi_res_id").as_deref(),
        Some("/subscriptions/s/id")
    );
    assert_eq!(
        last.query("resource").as_deref(),
        Some("https://management.azure.com")
    );
}

#[tokio::test]
async fn azure_imds_requires_its_header_and_refusals_are_not_retried() {
    // The fake follows the document: without `Metadata: true`, a 400.
    let bare = Request::get(
        "http://imds/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r",
    )
    .body(Full::default())
    .unwrap();
    let answer = Imds::new([]).fake.transport().oneshot(bare).await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Required metadata header"));

    let imds = Imds::new([(400, None)]);
    let source = AzureManagedIdentity::builder()
        .resource("https://vault.azure.net")
        .transport(imds.fake.transport())
        .build()
        .unwrap();
    let err = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Azure instance metadata service answered HTTP 400 Bad Request: unavailable: \
         Transient error from the managed identity subsystem"
    );
    assert!(!err.is_retryable());
    assert_eq!(imds.fake.requests().len(), 1, "a 400 is not retried");
}

/// Runs `source` against IMDS answering `script` first, on the paused clock; returns the
/// outcome and the instants of the requests, relative to the first.
async fn retried(
    script: Vec<metadata::Scripted>,
) -> (
    Result<tower_bearer::Token, tower_bearer::workload::Error>,
    Vec<Duration>,
) {
    let imds = Imds::new(script);
    let source = AzureManagedIdentity::builder()
        .resource("https://vault.azure.net")
        .transport(imds.fake.transport())
        .build()
        .unwrap();
    let start = Instant::now();
    let result = source.request_token_for(&TokenKey::default()).await;
    let at = imds.fake.requests().iter().map(|s| s.at - start).collect();
    (result, at)
}

#[tokio::test(start_paused = true)]
async fn azure_retries_404_429_and_5xx_exponentially_from_800_ms() {
    let (result, at) = retried(vec![
        (404, None),
        (429, None),
        (500, None),
        (503, None),
        (502, None),
    ])
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(at, [0, 800, 2400, 5600, 12_000, 24_800].map(|ms| ms * MS));

    // Bounded: after five retries the sixth answer is the error.
    let (result, at) = retried(vec![(500, None); 7]).await;
    let err = result.unwrap_err();
    assert_eq!(at.len(), 6);
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("the Azure instance metadata service answered HTTP 500"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn azure_retries_410_every_10_s_for_70_s() {
    let (result, at) = retried(vec![(410, None); 3]).await;
    assert!(result.is_ok());
    assert_eq!(at, [0, 10, 20, 30].map(|s| s * SECOND));
    let (result, at) = retried(vec![(410, None); 9]).await;
    assert_eq!(result.unwrap_err().status(), Some(StatusCode::GONE));
    assert_eq!(at, [0, 10, 20, 30, 40, 50, 60, 70].map(|s| s * SECOND));
}

#[tokio::test(start_paused = true)]
async fn azure_honours_retry_after_and_leaves_a_long_one_to_the_cache() {
    let (result, at) = retried(vec![(429, Some(5)), (503, Some(1))]).await;
    assert!(result.is_ok());
    // 5 s instead of 0.8 s; then the schedule's 1.6 s, longer than the 1 s asked.
    assert_eq!(at, [Duration::ZERO, 5000 * MS, 6600 * MS]);
    let (result, at) = retried(vec![(429, Some(120))]).await;
    let err = result.unwrap_err();
    assert_eq!(at, [Duration::ZERO]);
    assert_eq!(err.retry_after(), Some(120 * SECOND));
    // As a token source's failure, the cache is told to wait that long.
    let source_error = tower_bearer::SourceError::from(err);
    assert_eq!(
        source_error.retry(),
        tower_bearer::source::RetryHint::After(120 * SECOND)
    );
}

#[tokio::test]
async fn azure_app_service_through_the_layer_with_its_secret_header() {
    let fake = metadata::app_service("h3ad3r-SECRET");
    let base = fake.serve().await;
    let lookup = env(&[
        (IDENTITY_ENDPOINT, format!("{base}/msi/token")),
        (IDENTITY_HEADER, "h3ad3r-SECRET".to_owned()),
    ]);
    let source = AzureManagedIdentity::from_lookup(lookup)
        .resource("https://vault.azure.net")
        .object_id("obj-2")
        .build()
        .unwrap();
    assert!(source.is_app_service());
    assert_eq!(
        through(source.clone()).await,
        "Bearer eyJ0eXAi.fake-appservice-1"
    );
    let seen = fake.requests();
    assert_eq!(seen[0].headers["x-identity-header"], "h3ad3r-SECRET");
    assert_eq!(seen[0].query("api-version").as_deref(), Some("2019-08-01"));
    assert_eq!(
        seen[0].query("resource").as_deref(),
        Some("https://vault.azure.net")
    );
    assert_eq!(seen[0].query("principal_id").as_deref(), Some("obj-2"));
    // `expires_on` (seconds since 1970, a string) gives the lifetime.
    let token = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap();
    let Some(Expiry::In(left)) = token.expiry() else {
        panic!("{:?}", token.expiry())
    };
    assert!(
        left > 86_390 * SECOND && left <= 86_399 * SECOND,
        "{left:?}"
    );

    // A wrong header: the endpoint's 401 and its message, never the header.
    let wrong = AzureManagedIdentity::builder()
        .app_service(format!("{base}/msi/token"), "wrong-SECRET")
        .resource("https://vault.azure.net")
        .build()
        .unwrap();
    let err = wrong
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(
        err.to_string()
            .contains("X-IDENTITY-HEADER is missing or wrong"),
        "{err}"
    );
    assert!(!format!("{err} {err:?} {wrong:?}").contains("SECRET"));
}

// ---------------------------------------------------------------------------------------------
// GitHub Actions
// ---------------------------------------------------------------------------------------------

const REQUEST_TOKEN: &str = "r3qu3st-SECRET";

fn github_env(base: &str) -> impl Fn(&str) -> Option<String> {
    env(&[
        (
            ACTIONS_ID_TOKEN_REQUEST_URL,
            format!("{base}/idtoken?api-version=2.0"),
        ),
        (ACTIONS_ID_TOKEN_REQUEST_TOKEN, REQUEST_TOKEN.to_owned()),
    ])
}

#[tokio::test]
async fn github_oidc_tokens_through_the_layer() {
    let fake = metadata::github(REQUEST_TOKEN, 300 * SECOND);
    let base = fake.serve().await;
    let source = GitHubActionsOidc::from_lookup(github_env(&base))
        .audience("https://api.example.com")
        .build()
        .unwrap();
    let header = through(source.clone()).await;
    let jwt = header.strip_prefix("Bearer ").unwrap();
    assert_eq!(claims(jwt)["aud"], "https://api.example.com");
    assert_eq!(
        claims(jwt)["iss"],
        "https://token.actions.githubusercontent.com"
    );
    let seen = fake.requests();
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {REQUEST_TOKEN}")
    );
    assert_eq!(seen[0].query("api-version").as_deref(), Some("2.0"));
    assert_eq!(
        seen[0].query("audience").as_deref(),
        Some("https://api.example.com")
    );
    let token = source
        .request_token_for(&TokenKey::default())
        .await
        .unwrap();
    let Some(Expiry::In(left)) = token.expiry() else {
        panic!("{:?}", token.expiry())
    };
    assert!(left > 290 * SECOND);
}

#[tokio::test]
async fn github_errors_say_what_went_wrong_without_the_request_token() {
    let fake = metadata::github(REQUEST_TOKEN, 300 * SECOND);
    let base = fake.serve().await;
    let no_audience = GitHubActionsOidc::from_lookup(github_env(&base))
        .build()
        .unwrap();
    let err = no_audience
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the GitHub Actions OIDC token service answered HTTP 400 Bad Request: audience is required"
    );
    let wrong = GitHubActionsOidc::builder()
        .request_url(format!("{base}/idtoken?api-version=2.0"))
        .request_token("wrong-SECRET")
        .audience("a")
        .build()
        .unwrap();
    let err = wrong
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().ends_with("Bad credentials"), "{err}");
    assert!(!format!("{err} {err:?} {wrong:?} {no_audience:?}").contains("SECRET"));
    // Outside a job: not configured, naming the variable.
    let err = GitHubActionsOidc::from_lookup(|_| None)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
}

/// Entra ID workload identity federation: the GitHub JWT is the client assertion of a client
/// credentials request, reused while it has more than a minute left.
#[tokio::test]
async fn github_token_as_a_federated_client_assertion() {
    let github = metadata::github(REQUEST_TOKEN, 600 * SECOND);
    let base = github.serve().await;
    let forms = Arc::new(Mutex::new(Vec::<String>::new()));
    let kept = forms.clone();
    let token_endpoint = service_fn(move |req: Request<Full<Bytes>>| {
        let kept = kept.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8(body.to_vec()).unwrap();
            let assertion = metadata::query(&format!("?{form}"), "client_assertion").unwrap();
            let ok = claims(&assertion)["aud"] == "api://AzureADTokenExchange"
                && metadata::query(&format!("?{form}"), "client_assertion_type").as_deref()
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
            kept.lock().unwrap().push(form);
            let body = if ok {
                r#"{"access_token":"entra-at","token_type":"Bearer","expires_in":3599}"#
            } else {
                r#"{"error":"invalid_client"}"#
            };
            let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            if !ok {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let source = GitHubActionsOidc::from_lookup(github_env(&base))
        .audience("api://AzureADTokenExchange")
        .build()
        .unwrap();
    let endpoint = TokenEndpoint::builder(
        "https://login.microsoftonline.com/tenant/oauth2/v2.0/token",
        "00000000-0000-0000-0000-000000000001",
    )
    .client_assertion(source)
    .transport(token_endpoint)
    .build()
    .unwrap();
    let credentials =
        ClientCredentials::new(endpoint).scope("https://graph.microsoft.com/.default");
    for _ in 0..2 {
        let response = credentials.request_token().await.unwrap();
        assert_eq!(response.access_token().secret(), "entra-at");
    }
    let forms = forms.lock().unwrap();
    assert_eq!(forms.len(), 2);
    assert!(forms[0].contains("client_id=00000000-0000-0000-0000-000000000001"));
    assert_eq!(
        github.requests().len(),
        1,
        "the JWT was reused for the second request"
    );
}

/// App Service retries `429` and `5xx` on the same schedule, but a `404` is a refusal there.
#[tokio::test(start_paused = true)]
async fn azure_app_service_retries_throttling_and_server_errors_only() {
    for (first, retried) in [(503, true), (429, true), (404, false)] {
        let fake = metadata::app_service("h3ad3r");
        let answers = Arc::new(Mutex::new(0usize));
        let inner = fake.transport();
        let counted = answers.clone();
        // The endpoint answers `first` once, then as the document says.
        let transport = service_fn(move |req: Request<Full<Bytes>>| {
            let mut n = counted.lock().unwrap();
            *n += 1;
            let scripted = (*n == 1).then(|| {
                let mut response = Response::new(Full::new(Bytes::from_static(
                    br#"{"statusCode":503,"message":"try later"}"#,
                )));
                *response.status_mut() = StatusCode::from_u16(first).unwrap();
                response
            });
            let inner = inner.clone();
            async move {
                match scripted {
                    Some(response) => Ok::<_, Infallible>(response),
                    None => inner.oneshot(req).await,
                }
            }
        });
        let source = AzureManagedIdentity::builder()
            .app_service("http://127.0.0.1:9/msi/token", "h3ad3r")
            .resource("https://vault.azure.net")
            .transport(transport)
            .build()
            .unwrap();
        let start = Instant::now();
        let result = source.request_token_for(&TokenKey::default()).await;
        assert_eq!(result.is_ok(), retried, "{first}: {result:?}");
        let at: Vec<Duration> = fake.requests().iter().map(|s| s.at - start).collect();
        if retried {
            assert_eq!(at, [800 * MS], "{first}");
            assert_eq!(*answers.lock().unwrap(), 2);
        } else {
            assert_eq!(*answers.lock().unwrap(), 1, "a 404 is not retried");
            let err = result.unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("the Azure App Service identity endpoint answered HTTP 404"),
                "{err}"
            );
        }
    }
}

/// A server stating an absurd expiry (an `expires_on` of twenty digits, a JWT `exp` of 1e30)
/// gives a token the cache keeps for its longest lifetime; nothing overflows or panics. An
/// already expired JWT is refused.
#[tokio::test]
async fn absurd_and_past_expiries_from_servers_are_handled() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let jwt_with = |exp: &str| {
        format!(
            "e30.{}.c2ln",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"x","exp":{exp}}}"#))
        )
    };
    let answering = |body: String, headers: &'static [(&'static str, &'static str)]| {
        service_fn(move |_: Request<Full<Bytes>>| {
            let mut response = Response::new(Full::new(Bytes::from(body.clone())));
            for (name, value) in headers {
                response.headers_mut().insert(*name, value.parse().unwrap());
            }
            ready(Ok::<_, Infallible>(response))
        })
    };

    let app = AzureManagedIdentity::builder()
        .app_service("http://127.0.0.1:1/msi/token", "h3ad3r-value")
        .resource("https://vault.azure.net")
        .transport(answering(
            r#"{"access_token":"t","expires_on":"99999999999999999999","token_type":"Bearer"}"#
                .to_owned(),
            &[],
        ))
        .build()
        .unwrap();
    let token = app.request_token_for(&TokenKey::default()).await.unwrap();
    assert!(matches!(token.expiry(), Some(Expiry::In(_))), "{token:?}");
    // Through a cache: kept, not a panic in the fetch task.
    TokenCache::new(app).token().await.unwrap();

    let flavor: &'static [(&str, &str)] = &[("metadata-flavor", "Google")];
    let gcp = GcpMetadata::builder()
        .id_token("https://run.example.com")
        .transport(answering(jwt_with("1e30"), flavor))
        .build()
        .unwrap();
    TokenCache::new(gcp).token().await.unwrap();
    let expired = GcpMetadata::builder()
        .id_token("https://run.example.com")
        .transport(answering(jwt_with("1000"), flavor))
        .build()
        .unwrap();
    let err = expired
        .request_token_for(&TokenKey::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already expired"), "{err}");

    let github = GitHubActionsOidc::builder()
        .request_url("http://127.0.0.1:1/idtoken?api-version=2.0")
        .request_token("r3qu3st-token")
        .audience("api://AzureADTokenExchange")
        .transport(answering(
            format!(r#"{{"value":"{}"}}"#, jwt_with("1e30")),
            &[],
        ))
        .build()
        .unwrap();
    TokenCache::new(github.clone()).token().await.unwrap();
    use tower_bearer::oauth2::{AssertionRequest, AssertionSource};
    github
        .assertion(AssertionRequest::new("app", "https://as"))
        .await
        .unwrap();
}
