//! A service that authenticates to its authorization server with a private key instead of a
//! shared secret (`private_key_jwt`, RFC 7523 §2.2, OpenID Connect Core §9), found by discovery
//! from the issuer's URL.
//!
//! Without configuration it runs on 127.0.0.1 alone: it generates an ES256 key, starts a small
//! authorization server that knows only the public key and checks every assertion (signature,
//! `iss`, `sub`, `aud`, `exp`, a `jti` never seen before), gets two tokens, and exits 0 when
//! both were granted.
//!
//! With `ISSUER` set it talks to a real server instead:
//!
//! | variable | |
//! |---|---|
//! | `ISSUER` | the issuer identifier (discovery fetches its metadata) |
//! | `CLIENT_ID` | the client id |
//! | `PRIVATE_KEY_FILE` | a PEM file: PKCS#8 `PRIVATE KEY` (or PKCS#1 `RSA PRIVATE KEY`) |
//! | `KEY_ALG` | optional: `ES256` (default), `EdDSA`, `RS256` or `PS256` |
//! | `KEY_ID` | optional: the `kid` the key was registered with |
//!
//! ```text
//! ISSUER=https://auth.example.com CLIENT_ID=reporting-job PRIVATE_KEY_FILE=key.pem \
//!   cargo run --example private_key_jwt
//! ```

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use tower_bearer::jose::{Algorithm, SigningKey};
use tower_bearer::oauth2::{ClientCredentials, Discovery, TokenEndpoint};

#[tokio::main]
async fn main() -> ExitCode {
    let result = match std::env::var("ISSUER") {
        Ok(issuer) => real(&issuer).await,
        Err(_) => local().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("private_key_jwt: {error}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn real(issuer: &str) -> Result<(), BoxError> {
    let client_id = std::env::var("CLIENT_ID").map_err(|_| "CLIENT_ID is not set")?;
    let pem = std::fs::read_to_string(
        std::env::var("PRIVATE_KEY_FILE").map_err(|_| "PRIVATE_KEY_FILE is not set")?,
    )?;
    let alg = std::env::var("KEY_ALG").unwrap_or_else(|_| "ES256".into());
    let alg = Algorithm::from_name(&alg).ok_or("KEY_ALG must be ES256, EdDSA, RS256 or PS256")?;
    let mut key = SigningKey::from_pem(alg, &pem)?;
    if let Ok(kid) = std::env::var("KEY_ID") {
        key = key.with_kid(kid);
    }
    let metadata = Discovery::new(issuer).fetch().await?;
    if !metadata.supports_client_auth("private_key_jwt") {
        eprintln!("note: the server does not list private_key_jwt; trying anyway");
    }
    let endpoint = TokenEndpoint::from_metadata(&metadata, client_id)
        .private_key(key)
        .build()?;
    let token = ClientCredentials::new(endpoint).request_token().await?;
    println!(
        "granted: a {} token, expires in {:?}",
        token.token_type().unwrap_or("bearer"),
        token.expires_in()
    );
    Ok(())
}

/// What the local authorization server keeps: the client's public key, and the `jti`s it saw.
struct Server {
    issuer: String,
    public_key: Vec<u8>,
    seen: Mutex<HashSet<String>>,
}

async fn local() -> Result<(), BoxError> {
    let key = SigningKey::generate_es256()?.with_kid("example-key");
    println!("public key to register: {}", key.public_jwk());
    let jwk: serde_json::Value = serde_json::from_str(key.canonical_jwk())?;
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap_or_default());
    let public_key = [vec![4], coordinate("x")?, coordinate("y")?].concat();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let server = Arc::new(Server {
        issuer: issuer.clone(),
        public_key,
        seen: Mutex::new(HashSet::new()),
    });
    let metadata = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    })
    .to_string();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { metadata }),
        )
        .route(
            "/token",
            post(move |body: String| async move { token(&server, &body) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let metadata = Discovery::new(&issuer).fetch().await?;
    let endpoint = TokenEndpoint::from_metadata(&metadata, "example-client")
        .private_key(key)
        .build()?;
    let source = ClientCredentials::new(endpoint);
    for n in 1..=2 {
        let token = source.request_token().await?;
        println!("token {n} granted, expires in {:?}", token.expires_in());
    }
    Ok(())
}

/// The local token endpoint: grants a token to a valid, unused assertion.
fn token(server: &Server, body: &str) -> (StatusCode, String) {
    match check(server, body) {
        Ok(()) => (
            StatusCode::OK,
            r#"{"access_token":"local-token","token_type":"Bearer","expires_in":300}"#.into(),
        ),
        Err(why) => {
            eprintln!("refused: {why}");
            (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_client", "error_description": why})
                    .to_string(),
            )
        }
    }
}

fn check(server: &Server, body: &str) -> Result<(), String> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(format!("no {name}"))
    };
    if field("client_assertion_type")? != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return Err("wrong client_assertion_type".into());
    }
    let assertion = field("client_assertion")?;
    let (signed, signature) = assertion.rsplit_once('.').ok_or("not a JWS")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &server.public_key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| "bad signature")?;
    let claims = signed.split('.').nth(1).ok_or("not a JWS")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    if claims["iss"] != "example-client" || claims["sub"] != "example-client" {
        return Err("iss and sub must be the client id".into());
    }
    if claims["aud"] != server.issuer.as_str() {
        return Err("aud must be the issuer".into());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err("expired".into());
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
    if !server.seen.lock().unwrap().insert(jti) {
        return Err("jti used before".into());
    }
    Ok(())
}
