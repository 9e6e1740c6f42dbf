//! A command-line login with the device authorization grant (RFC 8628), for tools on machines
//! without a browser: the tool shows a code and a URL, the user approves on another device, and
//! the tool polls until the tokens come.
//!
//! Without configuration it runs on 127.0.0.1 alone: a small authorization server with a
//! device endpoint (and `interval` 1 s, to keep the run short), a simulated person who approves
//! the code two seconds after it is shown (by posting it to the server, where a real person
//! would open the verification URI), and an API that accepts the resulting token; it exits 0
//! when the API answered.
//!
//! Against a real server (its device endpoint, token endpoint and a public client id):
//!
//! ```text
//! DEVICE_URL=https://auth.example.com/device/auth TOKEN_URL=https://auth.example.com/token \
//!   CLIENT_ID=cli-app cargo run --example device
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{ClientAuth, DeviceAuthorization, TokenEndpoint};
use tower_bearer::{BearerAuthLayer, StaticToken};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let result = match (std::env::var("DEVICE_URL"), std::env::var("TOKEN_URL")) {
        (Ok(device), Ok(token)) => real(&device, &token).await,
        (Err(_), Err(_)) => local().await,
        _ => Err("set both DEVICE_URL and TOKEN_URL to use a real server, or neither".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("device: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn real(device_url: &str, token_url: &str) -> Result<(), BoxError> {
    let client_id = std::env::var("CLIENT_ID").map_err(|_| "CLIENT_ID is not set")?;
    let endpoint = TokenEndpoint::builder(token_url, client_id)
        .auth(ClientAuth::None)
        .build()?;
    let grant = DeviceAuthorization::new(endpoint, device_url).scope("openid");
    let tokens = grant.authorize(|prompt| println!("{prompt}")).await?;
    println!("signed in; the token expires in {:?}", tokens.expires_in());
    Ok(())
}

/// The authorization server's state: device codes by user code, approved or not.
#[derive(Clone, Default)]
struct Server {
    /// user code → (device code, approved)
    codes: Arc<Mutex<HashMap<String, (String, bool)>>>,
    base: Arc<Mutex<String>>,
    polls: Arc<Mutex<u32>>,
}

async fn local() -> Result<(), BoxError> {
    let server = Server::default();
    let app = Router::new()
        .route("/device/auth", post(device_auth))
        .route("/device/approve", post(approve))
        .route("/token", post(token))
        .route("/api/whoami", get(whoami))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    *server.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let endpoint = TokenEndpoint::builder(format!("{base}/token"), "cli-app")
        .auth(ClientAuth::None)
        .build()?;
    let grant = DeviceAuthorization::new(endpoint, format!("{base}/device/auth")).scope("orders");
    let person = {
        let base = base.clone();
        move |url: String, code: String| {
            tokio::spawn(async move {
                // Reading the screen, finding a phone, typing the code.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let request = http::Request::post(format!("{base}/device/approve"))
                    .body(Full::from(code.clone()))
                    .expect("a request");
                let answer = http.request(request).await.expect("the server answers");
                println!("person: opened {url}, typed {code}: {}", answer.status());
            });
        }
    };
    let tokens = grant
        .authorize(|prompt| {
            println!("tool: {prompt}");
            person(
                prompt.verification_uri().to_owned(),
                prompt.user_code().to_owned(),
            );
        })
        .await?;
    let polls = *server.polls.lock().unwrap();
    println!("tool: signed in after {polls} polls");

    let mut api = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(StaticToken::from_token(
            tokens.into_token(),
        )))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let response = api
        .ready()
        .await?
        .call(http::Request::get(format!("{base}/api/whoami")).body(Full::default())?)
        .await?;
    println!("tool: GET /api/whoami: {}", response.status());
    assert!(response.status().is_success(), "the API refused the token");
    assert!(polls >= 2, "the tool polled while the person was approving");
    Ok(())
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn device_auth(State(server): State<Server>, body: Bytes) -> (StatusCode, String) {
    let form = form(&body);
    if form.get("client_id").map(String::as_str) != Some("cli-app") {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client"}"#.into(),
        );
    }
    let user_code = "WDJB-MJHT".to_owned();
    let device_code = "device-code-kept-secret".to_owned();
    server
        .codes
        .lock()
        .unwrap()
        .insert(user_code.clone(), (device_code.clone(), false));
    let base = server.base.lock().unwrap().clone();
    let body = serde_json::json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{base}/device"),
        "expires_in": 600,
        "interval": 1,
    });
    (StatusCode::OK, body.to_string())
}

async fn approve(State(server): State<Server>, body: Bytes) -> StatusCode {
    let code = String::from_utf8_lossy(&body).into_owned();
    match server.codes.lock().unwrap().get_mut(&code) {
        Some((_, approved)) => {
            *approved = true;
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn token(State(server): State<Server>, body: Bytes) -> (StatusCode, String) {
    let form = form(&body);
    *server.polls.lock().unwrap() += 1;
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:device_code")
    {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"unsupported_grant_type"}"#.into(),
        );
    }
    let device_code = form.get("device_code").cloned().unwrap_or_default();
    let approved = server
        .codes
        .lock()
        .unwrap()
        .values()
        .find(|(code, _)| *code == device_code)
        .map(|(_, approved)| *approved);
    match approved {
        Some(true) => (
            StatusCode::OK,
            r#"{"access_token":"orders-token","token_type":"Bearer","expires_in":3600}"#.into(),
        ),
        Some(false) => (
            StatusCode::BAD_REQUEST,
            r#"{"error":"authorization_pending"}"#.into(),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant"}"#.into(),
        ),
    }
}

async fn whoami(headers: HeaderMap) -> (StatusCode, &'static str) {
    match headers.get(http::header::AUTHORIZATION) {
        Some(value) if value == "Bearer orders-token" => (StatusCode::OK, "the CLI user"),
        _ => (StatusCode::UNAUTHORIZED, "no"),
    }
}
