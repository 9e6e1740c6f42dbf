//! DPoP (RFC 9449), self-contained: a token endpoint and an API on 127.0.0.1, both demanding
//! server nonces, and a client whose tokens are bound to its key.
//!
//! 1. The client asks for a token with a proof; the token endpoint wants a nonce (400
//!    `use_dpop_nonce` with `DPoP-Nonce`), and the request is sent once more with it. The token
//!    comes back with `token_type` `DPoP`, bound to the key's thumbprint.
//! 2. Every API request carries `Authorization: DPoP <token>` and its own proof. The API wants a
//!    nonce too: its first answer is a 401 `use_dpop_nonce`, which the layer answers by
//!    replaying the request with a new proof and the same token.
//! 3. A stolen token alone is useless: sent as a bearer token, the API refuses it.
//!
//! ```text
//! cargo run --example dpop
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::dpop::DpopKey;
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
use tower_bearer::{BearerAuthLayer, BoxError, Placement};

/// What both servers remember: the nonce they want, the `jti`s seen, the tokens issued (token
/// to the thumbprint it is bound to).
#[derive(Default)]
struct Server {
    nonce: String,
    jtis: HashSet<String>,
    tokens: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Server>>;

/// Checks a DPoP proof for `method` and `htu`; returns the thumbprint of its key, or why not.
fn check_proof(
    server: &mut Server,
    headers: &HeaderMap,
    method: &Method,
    htu: &str,
    token: Option<&str>,
) -> Result<String, &'static str> {
    let proof = headers
        .get("dpop")
        .ok_or("no proof")?
        .to_str()
        .map_err(|_| "bad proof")?;
    let (input, signature) = proof.rsplit_once('.').ok_or("bad proof")?;
    let (header, claims) = input.split_once('.').ok_or("bad proof")?;
    let json = |part: &str| -> Result<serde_json::Value, &'static str> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| "bad base64")?;
        serde_json::from_slice(&bytes).map_err(|_| "bad json")
    };
    let (header, claims) = (json(header)?, json(claims)?);
    if header["typ"] != "dpop+jwt" || header["alg"] != "ES256" {
        return Err("not an ES256 DPoP proof");
    }
    let jwk = &header["jwk"];
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap_or_default());
    let (x, y) = (
        coordinate("x").map_err(|_| "bad jwk")?,
        coordinate("y").map_err(|_| "bad jwk")?,
    );
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, [vec![4], x, y].concat())
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).map_err(|_| "bad sig")?,
        )
        .map_err(|_| "bad signature")?;
    if claims["htm"] != method.as_str() || claims["htu"] != htu {
        return Err("wrong htm or htu");
    }
    if let Some(token) = token {
        let ath = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        if claims["ath"] != URL_SAFE_NO_PAD.encode(ath.as_ref()) {
            return Err("wrong ath");
        }
    }
    if !server
        .jtis
        .insert(claims["jti"].as_str().unwrap_or_default().to_owned())
    {
        return Err("jti replayed");
    }
    if claims["nonce"] != server.nonce.as_str() {
        return Err("use_dpop_nonce");
    }
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default()
    );
    let jkt = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(jkt.as_ref()))
}

fn respond(status: StatusCode, headers: &[(&str, String)], body: String) -> Response {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response.body(Body::from(body)).unwrap()
}

/// The token endpoint: client credentials, DPoP with a nonce required.
async fn token_endpoint(
    server: Shared,
    origin: String,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let mut server = server.lock().unwrap();
    match check_proof(
        &mut server,
        &headers,
        &method,
        &format!("{origin}/token"),
        None,
    ) {
        Ok(jkt) => {
            let token = format!("at-{}", server.tokens.len());
            server.tokens.push((token.clone(), jkt));
            let body =
                format!(r#"{{"access_token":"{token}","token_type":"DPoP","expires_in":3600}}"#);
            respond(
                StatusCode::OK,
                &[("content-type", "application/json".into())],
                body,
            )
        }
        Err("use_dpop_nonce") => respond(
            StatusCode::BAD_REQUEST,
            &[
                ("dpop-nonce", server.nonce.clone()),
                ("content-type", "application/json".into()),
            ],
            r#"{"error":"use_dpop_nonce"}"#.into(),
        ),
        Err(why) => respond(
            StatusCode::BAD_REQUEST,
            &[],
            format!(r#"{{"error":"invalid_dpop_proof","error_description":"{why}"}}"#),
        ),
    }
}

/// The API: a DPoP-bound token and a proof of its key, with the API's own nonce.
async fn api(
    server: Shared,
    issued: Shared,
    origin: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut server = server.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = auth.strip_prefix("DPoP ") else {
        let challenge = r#"DPoP algs="ES256", error="invalid_token""#.to_owned();
        return respond(
            StatusCode::UNAUTHORIZED,
            &[("www-authenticate", challenge)],
            String::new(),
        );
    };
    let htu = format!("{origin}{}", uri.path());
    match check_proof(&mut server, &headers, &method, &htu, Some(token)) {
        Ok(jkt) if is_bound(&issued, token, &jkt) => {
            respond(StatusCode::OK, &[], format!("hello, holder of {token}"))
        }
        Ok(_) => respond(
            StatusCode::UNAUTHORIZED,
            &[],
            "not bound to this key".into(),
        ),
        Err("use_dpop_nonce") => respond(
            StatusCode::UNAUTHORIZED,
            &[
                ("www-authenticate", r#"DPoP error="use_dpop_nonce""#.into()),
                ("dpop-nonce", server.nonce.clone()),
            ],
            String::new(),
        ),
        Err(why) => respond(StatusCode::UNAUTHORIZED, &[], why.into()),
    }
}

/// Whether the token endpoint issued `token` bound to the key whose thumbprint is `jkt`.
fn is_bound(issued: &Shared, token: &str, jkt: &str) -> bool {
    let issued = issued.lock().unwrap();
    issued
        .tokens
        .iter()
        .any(|(t, bound)| t == token && bound == jkt)
}

/// Serves `app` on a free loopback port; returns its origin.
async fn serve(build: impl FnOnce(String) -> axum::Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let app = build(origin.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(origin)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth_server: Shared = Arc::new(Mutex::new(Server {
        nonce: "as-nonce-1".into(),
        ..Default::default()
    }));
    let api_server: Shared = Arc::new(Mutex::new(Server {
        nonce: "api-nonce-1".into(),
        ..Default::default()
    }));
    let issuer = serve(|origin| {
        let server = auth_server.clone();
        axum::Router::new().route(
            "/token",
            axum::routing::post(move |method, headers| {
                token_endpoint(server, origin, method, headers)
            }),
        )
    })
    .await?;
    let api_origin = serve(|origin| {
        let (server, issued) = (api_server.clone(), auth_server.clone());
        axum::Router::new()
            .fallback(move |method, uri, headers| api(server, issued, origin, method, uri, headers))
    })
    .await?;

    // One key for the process; the token endpoint and the layer share it (and its nonces).
    let key = DpopKey::generate()?;
    let endpoint = TokenEndpoint::builder(format!("{issuer}/token"), "dpop-demo")
        .client_secret("demo-secret")
        .dpop(key.clone())
        .build()?;
    let layer = BearerAuthLayer::new(ClientCredentials::new(endpoint))
        .placement(Placement::dpop(key.clone()));
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(http.clone());

    for i in 1..=3 {
        let req =
            Request::get(format!("{api_origin}/orders/{i}?expand=items")).body(Full::default())?;
        let response = client.clone().oneshot(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET /orders/{i}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(status, StatusCode::OK);
    }
    println!("key thumbprint (jkt): {}", key.thumbprint());
    println!("tokens fetched: {}", layer.cache().stats().fetches);
    assert_eq!(
        layer.cache().stats().fetches,
        1,
        "the nonce challenge kept the token"
    );
    // 2 token requests (nonce dance) and 4 API proofs (one 401, three 200).
    assert_eq!(auth_server.lock().unwrap().jtis.len(), 2);
    assert_eq!(api_server.lock().unwrap().jtis.len(), 4);

    // The token alone, as a bearer token, is refused.
    let token = auth_server.lock().unwrap().tokens[0].0.clone();
    let stolen = Request::get(format!("{api_origin}/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())?;
    let status = http.request(stolen).await?.status();
    println!("the same token as a bearer token: {status}");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}
