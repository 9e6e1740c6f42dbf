//! A pod that calls an API with no client secret: its projected service-account token, which
//! the kubelet writes and rotates, authenticates it at the authorization server as a federated
//! client assertion (how Entra ID workload identity, and any server trusting the cluster's
//! issuer, work), through the crate's default chain.
//!
//! Without configuration it runs on 127.0.0.1 alone: it writes a projected volume the way the
//! kubelet does (a timestamped directory behind a `..data` symlink), starts an Entra-style token
//! endpoint that accepts only the volume's current token as `client_assertion`, and an API that
//! accepts only that endpoint's access tokens; then it calls the API, rotates the volume as the
//! kubelet does (a new directory, the symlink swapped), asks the cache for a new token at once
//! (in a pod, its refresh ahead of expiry does that, after the kubelet's rotation at 80 % of
//! the token's lifetime), calls again with it, and exits 0.
//!
//! In a pod with Entra workload identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID` set by its webhook), set `API_URL` and `SCOPE` to call a real API:
//!
//! ```text
//! API_URL=https://graph.microsoft.com/v1.0/applications SCOPE=https://graph.microsoft.com/.default \
//!   cargo run --example kubernetes
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::workload::DefaultChain;
use tower_bearer::{BearerAuthLayer, TokenCache};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let result = match std::env::var("API_URL") {
        Ok(api) => in_a_pod(&api).await,
        Err(_) => local().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubernetes: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn in_a_pod(api: &str) -> Result<(), BoxError> {
    let scope = std::env::var("SCOPE").map_err(|_| "SCOPE is not set")?;
    let chain = DefaultChain::new().scope(scope);
    println!("using {}", chain.resolve().await?);
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(chain))
        .service(Client::builder(TokioExecutor::new()).build(https_connector()?));
    let response = client
        .ready()
        .await?
        .call(http::Request::get(api).body(Full::<Bytes>::default())?)
        .await?;
    println!("{api}: {}", response.status());
    Ok(())
}

/// rustls with the Mozilla roots, as the crate's own default client.
fn https_connector() -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    BoxError,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_only()
        .enable_http1()
        .build())
}

/// What the simulated cluster and cloud share: the projected token the token endpoint trusts
/// now, and the access tokens it issued.
#[derive(Clone, Default)]
struct Trust {
    projected: Arc<Mutex<String>>,
    issued: Arc<Mutex<Vec<String>>>,
}

async fn local() -> Result<(), BoxError> {
    let trust = Trust::default();
    let mut volume = Volume::create(&std::env::temp_dir().join(format!(
        "tower-bearer-example-projected-{}",
        std::process::id()
    )))?;
    volume.write(&projected_token(1), &trust)?;

    // The token endpoint: Entra's v2.0 client credentials with a federated assertion.
    let endpoint = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .with_state(trust.clone());
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let authority = format!("http://{}/", idp.local_addr()?);
    tokio::spawn(async move { axum::serve(idp, endpoint).await });
    // The API: accepts the endpoint's access tokens only.
    let api = Router::new()
        .route("/orders", get(orders))
        .with_state(trust.clone());
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}/orders", api_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(api_listener, api).await });

    // What the workload identity webhook puts in the pod's environment.
    let file = volume.token_path();
    let env = move |name: &str| match name {
        "AZURE_FEDERATED_TOKEN_FILE" => Some(file.display().to_string()),
        "AZURE_CLIENT_ID" => Some("orders-reader".to_owned()),
        "AZURE_TENANT_ID" => Some("contoso".to_owned()),
        "AZURE_AUTHORITY_HOST" => Some(authority.clone()),
        _ => None,
    };
    let chain = DefaultChain::from_lookup(env).scope("api://orders/.default");
    println!("the default chain chose: {}", chain.resolve().await?);
    let cache = TokenCache::new(chain);
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let mut call = async |what: &str| -> Result<String, BoxError> {
        let response = client
            .ready()
            .await?
            .call(http::Request::get(api_url.as_str()).body(Full::default())?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("{what}: {status} {}", String::from_utf8_lossy(&body));
        if !status.is_success() {
            return Err(format!("the API answered {status}").into());
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    call("first call").await?;

    // The kubelet rotates the token; the token endpoint now trusts the new one only. The
    // cache's next token request (here forced; in a pod, the refresh ahead of expiry) reads
    // the rotated file.
    volume.write(&projected_token(2), &trust)?;
    cache.refresh().await?;
    call("after rotation").await?;

    let issued = trust.issued.lock().unwrap().len();
    assert_eq!(issued, 2, "one access token per projected token");
    println!("{issued} access tokens issued, no client secret anywhere");
    Ok(())
}

/// A projected service-account token: a JWT as the cluster's issuer signs it (not verified
/// here; the simulated token endpoint compares it with the volume's current token).
fn projected_token(generation: u32) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://oidc.example-cluster.local",
        "sub": "system:serviceaccount:shop:orders-reader",
        "aud": ["api://AzureADTokenExchange"],
        "iat": now,
        "exp": now + 3600,
        "jti": generation,
    });
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"cluster"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A projected volume written as the kubelet's atomic writer does.
struct Volume {
    dir: PathBuf,
    generation: u32,
}

impl Volume {
    fn create(dir: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::symlink("..data/token", dir.join("token"))?;
        Ok(Self {
            dir: dir.to_owned(),
            generation: 0,
        })
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn write(&mut self, token: &str, trust: &Trust) -> std::io::Result<()> {
        self.generation += 1;
        let data = format!("..generation_{}", self.generation);
        std::fs::create_dir(self.dir.join(&data))?;
        std::fs::write(self.dir.join(&data).join("token"), token)?;
        std::os::unix::fs::symlink(&data, self.dir.join("..data_tmp"))?;
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data"))?;
        let _ = std::fs::remove_dir_all(
            self.dir
                .join(format!("..generation_{}", self.generation - 1)),
        );
        *trust.projected.lock().unwrap() = token.to_owned();
        println!("kubelet: wrote projected token #{}", self.generation);
        Ok(())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn token_endpoint(State(trust): State<Trust>, body: Bytes) -> (StatusCode, String) {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let trusted = *trust.projected.lock().unwrap() == field("client_assertion").unwrap_or("");
    if !trusted
        || field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        || field("grant_type") != Some("client_credentials")
    {
        let error = serde_json::json!({ "error": "invalid_client" });
        return (StatusCode::UNAUTHORIZED, error.to_string());
    }
    let mut issued = trust.issued.lock().unwrap();
    let token = format!("access-{}", issued.len() + 1);
    issued.push(token.clone());
    let body =
        serde_json::json!({ "token_type": "Bearer", "expires_in": 3599, "access_token": token });
    (StatusCode::OK, body.to_string())
}

async fn orders(State(trust): State<Trust>, headers: HeaderMap) -> (StatusCode, String) {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if trust.issued.lock().unwrap().contains(&token) {
        (StatusCode::OK, format!("orders for the holder of {token}"))
    } else {
        (StatusCode::UNAUTHORIZED, "unknown token".to_owned())
    }
}
