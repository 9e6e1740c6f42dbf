//! Client authentication with JWT assertions (RFC 7523 §2.2, OpenID Connect Core §9) against a
//! real server, `oidc-provider`: `private_key_jwt` with ES256, EdDSA, RS256 and PS256 keys the
//! test generates, `client_secret_jwt`, and assertions made elsewhere.

#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use tower_bearer::jose::{Algorithm, SigningKey};
use tower_bearer::oauth2::{
    AssertionAudience, AssertionRequest, ClientAuth, ClientCredentials, Discovery, ErrorCode,
    ErrorKind, TokenEndpoint,
};
use tower_bearer::{BearerAuthLayer, TokenCache};

use support::oidc_peer::{cc_client, OidcPeer};

const HS_SECRET: &str = "a-client-secret-long-enough-for-hs256-0123456789";

/// An RSA key from Node's crypto (ring does not generate RSA keys), as PKCS#8 PEM.
fn rsa_pem() -> String {
    let out = std::process::Command::new("node")
        .args([
            "-e",
            "const {generateKeyPairSync}=require('node:crypto');\
             const {privateKey}=generateKeyPairSync('rsa',{modulusLength:2048});\
             process.stdout.write(privateKey.export({type:'pkcs8',format:'pem'}))",
        ])
        .output()
        .expect("node");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn jwks(keys: &[&SigningKey]) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::from_str(&k.public_jwk()).unwrap())
        .collect();
    serde_json::json!({ "keys": keys })
}

fn pk_client(id: &str, keys: &[&SigningKey]) -> serde_json::Value {
    cc_client(
        id,
        serde_json::json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": jwks(keys),
        }),
    )
}

struct Keys {
    es256: Arc<SigningKey>,
    eddsa: Arc<SigningKey>,
    rs256: Arc<SigningKey>,
    ps256: Arc<SigningKey>,
}

fn keys() -> Keys {
    let pem = rsa_pem();
    Keys {
        es256: Arc::new(SigningKey::generate_es256().unwrap().with_kid("es")),
        eddsa: Arc::new(SigningKey::generate_ed25519().unwrap().with_kid("ed")),
        rs256: Arc::new(
            SigningKey::from_pem(Algorithm::Rs256, &pem)
                .unwrap()
                .with_kid("rs"),
        ),
        ps256: Arc::new(
            SigningKey::from_pem(Algorithm::Ps256, &pem)
                .unwrap()
                .with_kid("ps"),
        ),
    }
}

fn start(keys: &Keys) -> OidcPeer {
    OidcPeer::start(&serde_json::json!([
        pk_client("pk-es256", &[&keys.es256]),
        pk_client("pk-eddsa", &[&keys.eddsa]),
        // The same RSA key, registered once per algorithm (its JWK names the `alg`).
        pk_client("pk-rsa", &[&keys.rs256]),
        pk_client("pk-ps256", &[&keys.ps256]),
        pk_client("pk-multi", &[&keys.es256, &keys.eddsa]),
        cc_client(
            "hs-client",
            serde_json::json!({
                "token_endpoint_auth_method": "client_secret_jwt",
                "client_secret": HS_SECRET,
            }),
        ),
    ]))
}

fn claims(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn private_key_jwt_with_every_algorithm_and_both_audiences() {
    let keys = keys();
    let peer = start(&keys);
    let metadata = Discovery::new(&peer.issuer).fetch().await.unwrap();
    for (id, key) in [
        ("pk-es256", &keys.es256),
        ("pk-eddsa", &keys.eddsa),
        ("pk-rsa", &keys.rs256),
        ("pk-ps256", &keys.ps256),
        ("pk-multi", &keys.eddsa),
    ] {
        for audience in [AssertionAudience::Issuer, AssertionAudience::TokenEndpoint] {
            let endpoint = TokenEndpoint::from_metadata(&metadata, id)
                .private_key(key.clone())
                .assertion_audience(audience.clone())
                .build()
                .unwrap();
            assert_eq!(endpoint.auth(), ClientAuth::PrivateKeyJwt);
            let source = ClientCredentials::new(endpoint);
            // Twice: the server refuses a `jti` it saw, so this also proves each request has
            // its own assertion.
            for _ in 0..2 {
                let token = source.request_token().await;
                let token =
                    token.unwrap_or_else(|e| panic!("{id} {:?} {audience:?}: {e}", key.alg()));
                assert!(!token.access_token().secret().is_empty());
            }
        }
    }
    // Without metadata, the audience is the token endpoint's URL, which the server takes too.
    let endpoint = TokenEndpoint::builder(peer.url("/token"), "pk-es256")
        .private_key(keys.es256.clone())
        .build()
        .unwrap();
    assert_eq!(endpoint.assertion_audience(), peer.url("/token"));
    ClientCredentials::new(endpoint)
        .request_token()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_the_client_did_not_register_is_a_typed_invalid_client() {
    let keys = keys();
    let peer = start(&keys);
    let wrong = SigningKey::generate_es256().unwrap().with_kid("es");
    for (id, key, audience) in [
        ("pk-es256", Arc::new(wrong), AssertionAudience::Issuer),
        ("pk-eddsa", keys.es256.clone(), AssertionAudience::Issuer),
        (
            "pk-es256",
            keys.es256.clone(),
            AssertionAudience::Custom("https://elsewhere.example".into()),
        ),
    ] {
        let endpoint = TokenEndpoint::builder(peer.url("/token"), id)
            .issuer(&peer.issuer)
            .private_key(key)
            .assertion_audience(audience)
            .build()
            .unwrap();
        let err = ClientCredentials::new(endpoint)
            .request_token()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::InvalidClient), "{id}: {err}");
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn client_secret_jwt_signs_with_the_secret_and_never_sends_it() {
    let keys = keys();
    let peer = start(&keys);
    let sent = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let http = {
        let sent = sent.clone();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        tower::ServiceExt::map_request(
            client,
            move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
                sent.lock().unwrap().push(format!("{:?}", req));
                req
            },
        )
    };
    let endpoint = TokenEndpoint::builder(peer.url("/token"), "hs-client")
        .issuer(&peer.issuer)
        .client_secret(HS_SECRET)
        .auth(ClientAuth::ClientSecretJwt)
        .transport(http)
        .build()
        .unwrap();
    ClientCredentials::new(endpoint)
        .request_token()
        .await
        .unwrap();
    assert!(!sent.lock().unwrap()[0].contains(HS_SECRET));

    let endpoint = TokenEndpoint::builder(peer.url("/token"), "hs-client")
        .client_secret("not-the-secret-but-just-as-long-0123456789abcdef")
        .auth(ClientAuth::ClientSecretJwt)
        .build()
        .unwrap();
    let err = ClientCredentials::new(endpoint)
        .request_token()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidClient), "{err}");

    // The method without its credential is refused when built.
    let err = TokenEndpoint::builder(peer.url("/token"), "hs-client")
        .auth(ClientAuth::ClientSecretJwt)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = TokenEndpoint::builder(peer.url("/token"), "pk-es256")
        .auth(ClientAuth::PrivateKeyJwt)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn an_external_assertion_is_asked_for_on_every_request() {
    let keys = keys();
    let peer = start(&keys);
    let calls = Arc::new(AtomicUsize::new(0));
    // Stands for a workload identity: something else signs, with claims of its choosing.
    let source = {
        let (calls, key) = (calls.clone(), keys.eddsa.clone());
        move |request: AssertionRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            let key = key.clone();
            async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let claims = serde_json::json!({
                    "iss": request.client_id(), "sub": request.client_id(),
                    "aud": request.audience(), "jti": format!("ext-{now}-{}", rand_id()),
                    "iat": now, "exp": now + 300,
                });
                Ok(key.sign_jws("", &claims.to_string())?)
            }
        }
    };
    let endpoint = TokenEndpoint::builder(peer.url("/token"), "pk-eddsa")
        .issuer(&peer.issuer)
        .client_assertion(source)
        .build()
        .unwrap();
    assert_eq!(endpoint.auth(), ClientAuth::Assertion);
    let layer = BearerAuthLayer::from_cache(TokenCache::new(ClientCredentials::new(endpoint)));
    layer.cache().token().await.unwrap();
    layer.cache().refresh().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.cache().stats().fetches, 2);

    // A failing source, and one that returns something that is not a JWT.
    let failing = TokenEndpoint::builder(peer.url("/token"), "pk-eddsa")
        .client_assertion(|_: AssertionRequest| async { Err("no token file".into()) })
        .build()
        .unwrap();
    let err = ClientCredentials::new(failing)
        .request_token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClientAssertion);
    assert!(support::chain(&err).contains("no token file"), "{err}");
    let garbage = TokenEndpoint::builder(peer.url("/token"), "pk-eddsa")
        .client_assertion(|_: AssertionRequest| async { Ok("not a jwt\r\nX-Evil: 1".to_owned()) })
        .build()
        .unwrap();
    let err = ClientCredentials::new(garbage)
        .request_token()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClientAssertion);
    assert!(!err.to_string().contains("Evil"));
}

fn rand_id() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

#[tokio::test]
async fn assertions_carry_the_claims_rfc_7523_asks_for() {
    let keys = keys();
    let peer = start(&keys);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let http = {
        let seen = seen.clone();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        tower::ServiceExt::map_request(
            client,
            move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
                // The body is a Full: read it without consuming the request.
                let body = req.body().clone();
                let bytes = futures_body(body);
                seen.lock().unwrap().push(bytes);
                req
            },
        )
    };
    let endpoint = TokenEndpoint::builder(peer.url("/token"), "pk-es256")
        .issuer(&peer.issuer)
        .private_key(keys.es256.clone())
        .transport(http)
        .build()
        .unwrap();
    let source = ClientCredentials::new(endpoint);
    source.request_token().await.unwrap();
    source.request_token().await.unwrap();
    let seen = seen.lock().unwrap();
    let assertions: Vec<String> = seen
        .iter()
        .map(|form| {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
                .into_owned()
                .collect();
            let get = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(
                get("client_assertion_type").as_deref(),
                Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            );
            assert_eq!(get("client_id").as_deref(), Some("pk-es256"));
            assert_eq!(get("client_secret"), None);
            get("client_assertion").unwrap()
        })
        .collect();
    let (a, b) = (claims(&assertions[0]), claims(&assertions[1]));
    assert_eq!(a["iss"], "pk-es256");
    assert_eq!(a["sub"], "pk-es256");
    assert_eq!(a["aud"], peer.issuer.as_str());
    assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 60);
    assert_ne!(a["jti"], b["jti"]);
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(assertions[0].split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "es");
}

/// The bytes of a `Full` body, which is ready at once.
fn futures_body(body: http_body_util::Full<bytes::Bytes>) -> String {
    use http_body::Body as _;
    let mut body = std::pin::pin!(body);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match body.as_mut().poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(frame))) => {
            String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
        }
        _ => String::new(),
    }
}

#[tokio::test]
async fn an_assertion_echoed_by_the_server_is_redacted_from_the_error() {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let echo = {
        let seen = seen.clone();
        tower::service_fn(
            move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
                let form = futures_body(req.into_body());
                *seen.lock().unwrap() = form.clone();
                async move {
                    let body = serde_json::json!({
                        "error": "invalid_client",
                        "error_description": format!("refused {form}"),
                    });
                    let mut response = http::Response::new(
                        http_body_util::Full::<bytes::Bytes>::from(body.to_string()),
                    );
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                    Ok::<_, std::convert::Infallible>(response)
                }
            },
        )
    };
    let endpoint = TokenEndpoint::builder("https://as.example.com/token", "pk")
        .private_key(SigningKey::generate_es256().unwrap())
        .transport(echo)
        .build()
        .unwrap();
    let err = ClientCredentials::new(endpoint)
        .request_token()
        .await
        .unwrap_err();
    let form = seen.lock().unwrap().clone();
    let assertion = form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == "client_assertion")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidClient));
    // The signature is what makes an assertion a credential: it must not show.
    let signature = assertion.rsplit('.').next().unwrap();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(signature), "{text}");
    }
    assert!(err.to_string().contains("<redacted>") || err.to_string().contains("withheld"));
}
