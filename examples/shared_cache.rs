//! A fleet fetches once: replicas share their tokens through Redis (or Valkey) with the shared
//! cache level of the feature `redis`. The function [`bearer_layer`] is what a platform team
//! puts in its service template; the rest runs it.
//!
//! Configuration comes from the environment:
//!
//! | variable | |
//! |---|---|
//! | `REDIS_URL` | the shared store, `redis://host:port/db`; without it the example says so and exits with 0 |
//! | `SEALING_KEY` | 32 random bytes, as 64 hex digits or in base64 (`openssl rand -hex 32`): the key tokens are encrypted with in the store, the same on every replica. Optional without `TOKEN_URL` (a random one is used). |
//! | `TOKEN_URL`, `CLIENT_ID`, `CLIENT_SECRET`, `API_URL` | optional: a real client-credentials client, which calls `API_URL` once. Without `TOKEN_URL`, a token endpoint and an API run on 127.0.0.1 and three replicas (in this process) share one token. |
//! | `SCOPE` | optional: scopes to request, space-separated |
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no &
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example shared_cache --features redis
//! ```
//!
//! Without `TOKEN_URL` it checks what it claims (one token request for three replicas, every
//! request accepted) and exits with 1 if that does not hold, or if Redis does not answer. With
//! `TOKEN_URL`, run it twice: the second process finds the first one's token in the store
//! (`hits: 1`) and makes no token request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SecureRandom as _;
use tokio::net::TcpListener;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
use tower_bearer::shared::{RedisStore, SealingKey, SharedCacheLayer};
use tower_bearer::{BearerAuthLayer, TokenCache};

/// The whole example's limit: nothing here may hang a CI job.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(redis_url) = std::env::var("REDIS_URL") else {
        println!(
            "REDIS_URL is not set, so there is no store to share tokens through; nothing to do.\n\
             Start one (`redis-server --port 6379 --save ''`) and run\n  \
             REDIS_URL=redis://127.0.0.1:6379/ cargo run --example shared_cache --features redis"
        );
        return ExitCode::SUCCESS;
    };
    let run = async {
        match std::env::var("TOKEN_URL") {
            Ok(token_url) => configured(&redis_url, &token_url).await,
            Err(_) => three_replicas(&redis_url).await,
        }
    };
    match tokio::time::timeout(LIMIT, run).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: did not finish within {LIMIT:?}");
            ExitCode::FAILURE
        }
    }
}

/// The bearer layer of one replica: client credentials, behind the shared level, behind the
/// in-process cache. Call it once at startup and clone the layer (or the client it wraps).
async fn bearer_layer(
    redis_url: &str,
    sealing_key: SealingKey,
    source: ClientCredentials,
) -> Result<(BearerAuthLayer, SharedCacheLayer), BoxError> {
    // Waits at most a second for the server; one that is down is not an error: this replica
    // then fetches its own tokens until the store answers, and shares them from then on.
    let store = RedisStore::connect(redis_url).await?;
    // The identity says what makes the token (endpoint, client id, grant, scopes) and never
    // holds the secret; replicas with equal identities and keys share tokens.
    let shared = SharedCacheLayer::new(store, sealing_key, source.identity())
        // Each store operation may take this long before the replica goes on without the
        // store (the default).
        .store_timeout(Duration::from_millis(50))
        // A replica that dies holding the lease delays the others' fetch by at most this much
        // (the default).
        .lease_ttl(Duration::from_secs(5));
    let cache = TokenCache::builder(shared.layer(source)).build();
    // `shared` is kept for its statistics (`SharedCacheLayer::stats`); with the feature `metrics`,
    // `.metrics_label("billing")` on it labels the store metrics instead.
    Ok((BearerAuthLayer::from_cache(cache), shared))
}

/// The sealing key from `SEALING_KEY` (64 hex digits, or base64), or `None` if unset.
fn sealing_key() -> Result<Option<[u8; 32]>, BoxError> {
    let Ok(text) = std::env::var("SEALING_KEY") else {
        return Ok(None);
    };
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "SEALING_KEY is neither 64 hex digits nor base64")?
    };
    // The error says the length it wants, never the key.
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "SEALING_KEY must hold 32 bytes")?;
    Ok(Some(key))
}

fn required(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

/// A real client: the token endpoint and API of the environment, one request.
async fn configured(redis_url: &str, token_url: &str) -> Result<(), BoxError> {
    let key = sealing_key()?.ok_or(
        "SEALING_KEY is not set: every replica needs the same key (`openssl rand -hex 32`)",
    )?;
    let endpoint = TokenEndpoint::builder(token_url, required("CLIENT_ID")?)
        .client_secret(required("CLIENT_SECRET")?)
        .build()?;
    let mut source = ClientCredentials::new(endpoint);
    for scope in std::env::var("SCOPE")
        .unwrap_or_default()
        .split_whitespace()
    {
        source = source.scope(scope);
    }
    let (bearer, shared) = bearer_layer(redis_url, SealingKey::new(key), source).await?;

    // rustls with ring and the bundled Mozilla roots, as the crate's own token client.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    let client = ServiceBuilder::new()
        .layer(bearer)
        .service(Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https));
    let request = Request::get(required("API_URL")?).body(Full::default())?;
    let response = client.oneshot(request).await?;
    println!("API answered {}", response.status());
    println!("shared level: {:?}", shared.stats());
    Ok(())
}

/// Three replicas (each with its own store connection and cache, as separate processes would
/// have) start together against one token endpoint on 127.0.0.1.
async fn three_replicas(redis_url: &str) -> Result<(), BoxError> {
    let key = match sealing_key()? {
        Some(key) => key,
        None => {
            // Only this process's replicas need it; a fleet needs one key everywhere.
            let mut key = [0; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| "no randomness for a sealing key")?;
            key
        }
    };
    let token_requests = Arc::new(AtomicUsize::new(0));
    let addr = serve(token_requests.clone()).await?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let mut replicas = Vec::new();
    for _ in 0..3 {
        let endpoint = TokenEndpoint::builder(format!("http://{addr}/token"), "shared-example")
            .client_secret("example-secret")
            .build()?;
        let source = ClientCredentials::new(endpoint).scope("items:read");
        let (bearer, shared) = bearer_layer(redis_url, SealingKey::new(key), source).await?;
        let client = ServiceBuilder::new().layer(bearer).service(http.clone());
        replicas.push((client, shared));
    }
    println!("3 replicas start together, sharing tokens through {redis_url}");
    let requests: Vec<_> = replicas
        .iter()
        .map(|(client, _)| {
            let request = Request::get(format!("http://{addr}/items")).body(Full::default());
            tokio::spawn(client.clone().oneshot(request.expect("a valid request")))
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await??.status());
    }
    for (n, (status, (_, shared))) in statuses.iter().zip(&replicas).enumerate() {
        println!(
            "   replica {n}: API answered {status}; {:?}",
            shared.stats()
        );
    }
    let errors: u64 = replicas.iter().map(|(_, s)| s.stats().store_errors).sum();
    if errors > 0 {
        return Err(format!("the store at {redis_url} failed {errors} times: is it up?").into());
    }
    let fetched = token_requests.load(Ordering::SeqCst);
    println!("   token requests: {fetched}");
    if fetched != 1 || statuses.iter().any(|s| *s != StatusCode::OK) {
        return Err("expected one token request and three accepted requests".into());
    }
    println!("   ok: one token request for three replicas");
    Ok(())
}

/// A token endpoint (`POST /token`, answering after 200 ms so that the replicas' fetches
/// overlap) and an API accepting its token, on 127.0.0.1.
async fn serve(token_requests: Arc<AtomicUsize>) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let token_requests = token_requests.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let token_requests = token_requests.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/token" {
                        let n = token_requests.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let body = format!(
                            r#"{{"access_token":"fleet-token-{n}","token_type":"Bearer","expires_in":300}}"#
                        );
                        (StatusCode::OK, body)
                    } else {
                        let auth = req.headers().get("authorization");
                        match auth.and_then(|value| value.to_str().ok()) {
                            Some(auth) if auth.starts_with("Bearer fleet-token-") => {
                                (StatusCode::OK, "items".to_owned())
                            }
                            _ => (StatusCode::UNAUTHORIZED, String::new()),
                        }
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    if req.uri().path() == "/token" {
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}
