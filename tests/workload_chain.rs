//! The default chain (issue #17): the first workload identity the environment offers, in the
//! documented order, each path against a real server (oidc-provider) or, for Entra ID, a
//! loopback fake of its token endpoint; and when nothing applies, an error listing what was
//! tried and why, with no secret in it.

#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_bearer::jose::SigningKey;
use tower_bearer::workload::GCE_METADATA_HOST;
use tower_bearer::workload::{Chosen, DefaultChain, ErrorKind};
use tower_bearer::TokenCache;

use support::metadata::{self, Gcp, Imds};
use support::oidc_peer::{cc_client, OidcPeer};

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

/// A loopback address nothing listens on.
async fn closed_port() -> SocketAddr {
    let (listener, addr) = support::loopback().await;
    drop(listener);
    addr
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn scratch_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-bearer-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn with_nothing_configured_the_error_lists_every_source_and_why() {
    // Half of the client credentials: the secret is missing, and its value must not show.
    // The metadata probes go to a loopback port nothing listens on (off the clouds, the
    // link-local address usually times out instead).
    let closed = closed_port().await;
    let imds_host = format!("http://{closed}");
    let chain = DefaultChain::from_lookup(env(&[
        ("OAUTH_TOKEN_URL", "https://auth.example.com/token"),
        ("OAUTH_CLIENT_ID", "reporting"),
        ("AZURE_CLIENT_ID", "00000000-aaaa"),
        ("IDENTITY_HEADER", "app-service-secret-value"),
        ("GCE_METADATA_IP", &closed.to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds_host),
    ]));
    let err = chain.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert_eq!(
        err.to_string(),
        format!(
            "the default chain: no workload identity found; tried \
             client credentials from the environment (OAUTH_CLIENT_SECRET is not set); \
             Entra workload identity (federated token file) (AZURE_FEDERATED_TOKEN_FILE is not \
             set); federated token file (OAUTH_FEDERATED_TOKEN_FILE is not set); \
             Azure App Service managed identity (IDENTITY_ENDPOINT is not set); \
             GCP metadata server (GCE_METADATA_HOST is not set, and no metadata server at \
             {closed}: cannot be reached); \
             Azure IMDS managed identity (no IMDS at http://{closed}: cannot be reached)"
        )
    );
    assert!(!format!("{err:?}").contains("app-service-secret-value"));
    // Through a cache: the same error, as the fetch's cause, retried later (the environment
    // of a long-running process does not change, but a misconfiguration gets fixed).
    let cache = TokenCache::new(chain);
    let err = cache.token().await.unwrap_err();
    let cause = err
        .source_as::<tower_bearer::workload::Error>()
        .expect("the chain's error is the cause");
    assert_eq!(cause.kind(), ErrorKind::NotConfigured);
}

#[tokio::test]
async fn a_source_that_applies_but_is_misconfigured_ends_the_chain_without_its_secret() {
    let chain = DefaultChain::from_lookup(env(&[
        ("OAUTH_TOKEN_URL", "http://auth.example.com/token"),
        ("OAUTH_CLIENT_ID", "reporting"),
        ("OAUTH_CLIENT_SECRET", "s3cr3t-value"),
        // A later source that would apply: a misconfiguration does not fall through to it.
        (
            "OAUTH_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/tokens/oauth",
        ),
    ]));
    let err = chain.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = support::chain(&err);
    assert!(
        text.starts_with(
            "client credentials from the environment: it applies but cannot be set up: \
             OAUTH_TOKEN_URL: "
        ),
        "{text}"
    );
    assert!(text.contains("OAUTH_TOKEN_URL"), "{text}");
    assert!(!text.contains("s3cr3t-value") && !format!("{chain:?}").contains("s3cr3t-value"));
}

#[tokio::test]
async fn client_credentials_from_the_environment_come_first() {
    let peer = OidcPeer::start(&serde_json::json!([cc_client(
        "env-client",
        serde_json::json!({ "client_secret": "env-secret-0123456789" }),
    )]));
    let token_url = peer.url("/token");
    let chain = DefaultChain::from_lookup(env(&[
        ("OAUTH_TOKEN_URL", &token_url),
        ("OAUTH_CLIENT_ID", "env-client"),
        ("OAUTH_CLIENT_SECRET", "env-secret-0123456789"),
        // Also a federated file: the secret's source comes first.
        ("OAUTH_FEDERATED_TOKEN_FILE", "/nonexistent"),
    ]));
    let cache = TokenCache::new(chain.clone());
    let token = cache.token().await.unwrap();
    assert!(!token.access_token().secret().is_empty());
    assert_eq!(chain.resolve().await.unwrap(), Chosen::ClientCredentials);
    assert!(
        format!("{chain:?}").contains("ClientCredentials"),
        "{chain:?}"
    );
}

#[tokio::test]
async fn a_federated_token_file_authenticates_at_the_real_server() {
    let key = SigningKey::generate_ed25519().unwrap().with_kid("platform");
    let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk()).unwrap();
    let peer = OidcPeer::start(&serde_json::json!([cc_client(
        "federated",
        serde_json::json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": { "keys": [jwk] },
        }),
    )]));
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "federated", "sub": "federated", "aud": peer.issuer,
        "jti": "chain-1", "iat": now, "exp": now + 600,
    });
    let file = scratch_file(
        "federated",
        &key.sign_jws(r#""typ":"JWT""#, &claims.to_string()).unwrap(),
    );
    let token_url = peer.url("/token");
    let chain = DefaultChain::from_lookup(env(&[
        ("OAUTH_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
        ("OAUTH_TOKEN_URL", &token_url),
        ("OAUTH_CLIENT_ID", "federated"),
    ]));
    assert_eq!(chain.resolve().await.unwrap(), Chosen::FederatedTokenFile);
    TokenCache::new(chain).token().await.unwrap();
}

/// Entra ID's v2.0 token endpoint as "Microsoft identity platform and the OAuth 2.0 client
/// credentials flow" (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
/// "Third case: Access token request with a federated credential") describes it: `POST
/// /{tenant}/oauth2/v2.0/token` with `client_id`, `scope` (`{resource}/.default`),
/// `client_assertion_type` `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
/// `client_assertion` and `grant_type=client_credentials`; it answers `token_type`,
/// `expires_in` and `access_token`, or `invalid_client` (AADSTS700016-like) for anything else.
async fn fake_entra(
    tenant: &'static str,
    assertion: String,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (listener, addr) = support::loopback().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let assertion = assertion.clone();
            let record = record.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let assertion = assertion.clone();
                let record = record.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let form: HashMap<String, String> =
                        form_urlencoded::parse(&body).into_owned().collect();
                    record.lock().unwrap().push(path.clone());
                    let ok = path == format!("/{tenant}/oauth2/v2.0/token")
                        && form.get("grant_type").map(String::as_str) == Some("client_credentials")
                        && form.get("client_id").map(String::as_str) == Some("app-id")
                        && form.get("scope").map(String::as_str) == Some("api://orders/.default")
                        && form.get("client_assertion_type").map(String::as_str)
                            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                        && form.get("client_assertion") == Some(&assertion)
                        && !form.contains_key("client_secret");
                    let (status, body) = if ok {
                        (
                            200,
                            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"entra-access-token"}"#,
                        )
                    } else {
                        (
                            400,
                            r#"{"error":"invalid_client","error_description":"AADSTS7000215: the request does not match"}"#,
                        )
                    };
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn entra_workload_identity_sends_the_file_as_client_assertion() {
    let now = unix_now();
    let projected = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(
            serde_json::json!({
                "iss": "https://oidc.prod-aks.azure.com/x/", "aud": ["api://AzureADTokenExchange"],
                "sub": "system:serviceaccount:apps:orders", "iat": now, "exp": now + 3600,
            })
            .to_string()
        )
    );
    let file = scratch_file("azure-identity-token", &format!("{projected}\n"));
    let (addr, seen) = fake_entra("tenant-1", projected).await;
    let authority = format!("http://{addr}/");
    let vars = [
        ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
        ("AZURE_CLIENT_ID", "app-id"),
        ("AZURE_TENANT_ID", "tenant-1"),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
    ];
    // A resource gives Entra's `{resource}/.default` scope.
    let chain = DefaultChain::from_lookup(env(&vars)).resource("api://orders/");
    assert_eq!(
        chain.resolve().await.unwrap(),
        Chosen::EntraWorkloadIdentity
    );
    let token = TokenCache::new(chain).token().await.unwrap();
    assert_eq!(token.access_token().secret(), "entra-access-token");
    assert_eq!(*seen.lock().unwrap(), ["/tenant-1/oauth2/v2.0/token"]);

    // Without a scope or a resource, Entra cannot be asked: a configuration error.
    let err = DefaultChain::from_lookup(env(&vars))
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("needs a scope"), "{err}");
}

/// The metadata stage: App Service by its variables; then the GCP metadata server (named by
/// `GCE_METADATA_HOST`, or found by its probe) and Azure IMDS (found by its probe), each against
/// the fakes of tests/support/metadata.rs, which follow the providers' documents.
#[tokio::test]
async fn azure_app_service_is_chosen_by_its_variables() {
    let fake = metadata::app_service("app-service-secret-value");
    let endpoint = format!("{}/msi/token", fake.serve().await);
    let chain = DefaultChain::from_lookup(env(&[
        ("IDENTITY_ENDPOINT", &endpoint),
        ("IDENTITY_HEADER", "app-service-secret-value"),
    ]))
    .scope("https://vault.azure.net/.default");
    assert_eq!(chain.resolve().await.unwrap(), Chosen::AzureAppService);
    let token = TokenCache::new(chain).token().await.unwrap();
    assert!(token.access_token().secret().contains("fake-appservice"));
    let asked = fake.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].query("resource").as_deref(),
        Some("https://vault.azure.net"),
        "the scope's resource"
    );
}

#[tokio::test]
async fn the_gcp_metadata_server_is_named_by_its_variable_or_found_by_its_probe() {
    let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
    let base = gcp.fake.serve().await;
    let host = base.trim_start_matches("http://").to_owned();
    let closed = closed_port().await;
    let imds_host = format!("http://{closed}");

    // Named, GCP is chosen without waiting for the IMDS probe, here at an address that never
    // answers: the probe's 10 s timeout would show.
    let (silent, silent_addr) = support::loopback().await;
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let named = DefaultChain::from_lookup(env(&[
        (GCE_METADATA_HOST, &host),
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            &format!("http://{silent_addr}"),
        ),
    ]))
    .scope("https://www.googleapis.com/auth/cloud-platform")
    .probe_timeout(10 * SECOND);
    let started = tokio::time::Instant::now();
    assert_eq!(named.resolve().await.unwrap(), Chosen::GcpMetadata);
    assert!(started.elapsed() < 5 * SECOND, "{:?}", started.elapsed());
    TokenCache::new(named).token().await.unwrap();

    let probed = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", &host),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds_host),
    ]))
    .scope("https://www.googleapis.com/auth/cloud-platform");
    assert_eq!(probed.resolve().await.unwrap(), Chosen::GcpMetadata);
    TokenCache::new(probed).token().await.unwrap();
    let paths: Vec<String> = gcp
        .fake
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(paths.len(), 3, "two tokens and one probe: {paths:?}");
    assert!(paths.contains(&"/".to_owned()), "{paths:?}");

    // An IMDS does not pass for a GCP metadata server, nor the reverse.
    let imds = Imds::new([]);
    let imds_base = imds.fake.serve().await;
    let crossed = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", imds_base.trim_start_matches("http://")),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base),
    ]))
    .resource("https://management.azure.com/");
    let err = crossed.resolve().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("is not GCP's"), "{text}");
    assert!(text.contains("is not IMDS"), "{text}");
}

#[tokio::test]
async fn azure_imds_is_found_by_its_probe_and_a_silent_address_times_out() {
    let imds = Imds::new([]);
    let base = imds.fake.serve().await;
    let closed = closed_port().await;
    let chain = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", &closed.to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base),
    ]))
    .resource("https://management.azure.com/");
    assert_eq!(chain.resolve().await.unwrap(), Chosen::AzureImds);
    TokenCache::new(chain).token().await.unwrap();

    // A managed identity needs a resource.
    let err = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", &closed.to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base),
    ]))
    .resolve()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("needs a resource"), "{err}");

    // An address that accepts connections and never answers: the probe gives up in time.
    let (silent, silent_addr) = support::loopback().await;
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let started = tokio::time::Instant::now();
    let err = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", &silent_addr.to_string()),
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            &format!("http://{silent_addr}"),
        ),
    ]))
    .probe_timeout(SECOND)
    .resolve()
    .await
    .unwrap_err();
    // Both probes time out: one after the other would take two seconds.
    let took = started.elapsed();
    assert!(
        took >= SECOND && took < 1800 * std::time::Duration::from_millis(1),
        "the probes run at once, each bounded: {took:?}"
    );
    let text = err.to_string();
    assert_eq!(text.matches("no answer within 1s").count(), 2, "{text}");
}

/// The chain's HTTP client is the one it is given: for its probes and for the source it
/// chooses.
#[tokio::test]
async fn the_chain_uses_the_http_client_it_is_given() {
    let gcp = Gcp::new(3600 * SECOND, 300 * SECOND);
    let host = gcp
        .fake
        .serve()
        .await
        .trim_start_matches("http://")
        .to_owned();
    let closed = closed_port().await;
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let sent = sent.clone();
        let http = support::oidc_peer::http();
        tower::ServiceExt::map_request(http, move |req: Request<Full<Bytes>>| {
            sent.lock().unwrap().push(req.uri().to_string());
            req
        })
    };
    let chain = DefaultChain::from_lookup(env(&[
        ("GCE_METADATA_IP", &host),
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            &format!("http://{closed}"),
        ),
    ]))
    .scope("https://www.googleapis.com/auth/cloud-platform")
    .transport(client);
    assert_eq!(chain.resolve().await.unwrap(), Chosen::GcpMetadata);
    TokenCache::new(chain).token().await.unwrap();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "two probes and one token request: {sent:?}");
    assert!(sent.iter().any(|uri| uri.contains("/token")), "{sent:?}");
}
