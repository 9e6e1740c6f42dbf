//! DPoP (RFC 9449) end to end: tokens bound to a key by a real authorization server
//! (`oidc-provider`, which demands nonces), and API requests with proofs checked by a small
//! resource server written here, which demands nonces too.

#[allow(dead_code)]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_bearer::dpop::DpopKey;
use tower_bearer::jose::SigningKey;
use tower_bearer::oauth2::{
    AuthorizationCode, ClientAuth, ClientCredentials, LoopbackRedirect, TokenEndpoint,
};
use tower_bearer::{source_fn, BearerAuthLayer, Placement, Token, TokenRequest};

use support::get;
use support::oidc_peer::{http, sign_in, OidcPeer};

const API_RESOURCE: &str = "urn:tower-bearer:api";

/// A token endpoint for `client` whose requests are counted, with DPoP proofs of `key`.
fn endpoint(
    peer: &OidcPeer,
    client: &str,
    secret: Option<&str>,
    key: &DpopKey,
) -> (TokenEndpoint, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let transport = {
        let sent = sent.clone();
        let client = http();
        service_fn(move |req: Request<Full<Bytes>>| {
            sent.fetch_add(1, Ordering::SeqCst);
            assert!(
                req.headers().contains_key("dpop"),
                "a token request without a proof"
            );
            client.clone().oneshot(req)
        })
    };
    let mut builder = TokenEndpoint::builder(peer.url("/token"), client)
        .transport(transport)
        .dpop(key.clone());
    builder = match secret {
        Some(secret) => builder.client_secret(secret),
        None => builder.auth(ClientAuth::None),
    };
    (builder.build().unwrap(), sent)
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn client_credentials_tokens_are_bound_after_the_token_endpoint_nonce_dance() {
    let peer = OidcPeer::start(&serde_json::json!([]));
    let key = DpopKey::generate().unwrap();
    let (endpoint, sent) = endpoint(&peer, "cc-client", Some("cc-secret"), &key);
    let source = ClientCredentials::new(endpoint).resource(API_RESOURCE);

    let token = source.request_token().await.unwrap();
    // The first request had no nonce: refused with one, then sent once more with it.
    assert_eq!(sent.load(Ordering::SeqCst), 2);
    assert_eq!(
        token.token_type().map(str::to_ascii_lowercase).as_deref(),
        Some("dpop")
    );
    let claims = claims(token.access_token().secret());
    assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "bound to our key");
    assert!(key.nonce(&peer.issuer).is_some());

    // The nonce is known now: one request.
    source.request_token().await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 3);

    // A proof with a nonce the server never issued is answered by a fresh one, once.
    key.store_nonce(&peer.issuer, "not-a-nonce-of-yours");
    source.request_token().await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 5);
}

/// What the resource server saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    nonce_challenges: usize,
    accepted: usize,
    jtis: HashSet<String>,
    issued: Vec<String>,
}

/// A resource server on a free loopback port that checks DPoP proofs as RFC 9449 §7.1 says:
/// `Authorization: DPoP`, the proof's signature with its own `jwk`, that `jwk` being the one the
/// token is bound to (`cnf.jkt`), `htm`, `htu`, `ath`, `jti` never reused, and a nonce it
/// issued (the latest). It demands a nonce first, and issues a new one every third accepted
/// request, on a 200.
async fn resource_server() -> (String, Arc<Mutex<Seen>>) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = {
        let seen = seen.clone();
        let origin = origin.clone();
        axum::Router::new().fallback(move |method: Method, uri: http::Uri, headers: HeaderMap| {
            let seen = seen.clone();
            let origin = origin.clone();
            async move { check(&seen, &origin, &method, &uri, &headers) }
        })
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (origin, seen)
}

fn check(
    seen: &Mutex<Seen>,
    origin: &str,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Response<axum::body::Body> {
    let mut seen = seen.lock().unwrap();
    seen.requests += 1;
    let refuse = |status: StatusCode, why: &str| {
        Response::builder()
            .status(status)
            .header(
                "www-authenticate",
                format!(r#"DPoP error="invalid_dpop_proof", error_description="{why}""#),
            )
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
    else {
        return refuse(StatusCode::UNAUTHORIZED, "no DPoP token");
    };
    let proofs: Vec<_> = headers.get_all("dpop").iter().collect();
    let [proof] = proofs[..] else {
        return refuse(StatusCode::UNAUTHORIZED, "not one proof");
    };
    let proof = proof.to_str().unwrap();
    let (input, signature) = proof.rsplit_once('.').unwrap();
    let (header, payload) = input.split_once('.').unwrap();
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let (header, payload) = (decode(header), decode(payload));
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    let jwk = &header["jwk"];
    let member = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let public = [vec![4], member("x"), member("y")].concat();
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .is_err()
    {
        return refuse(StatusCode::UNAUTHORIZED, "bad signature");
    }
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    let jkt = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ));
    assert_eq!(
        claims(token)["cnf"]["jkt"],
        jkt,
        "the token is bound to the proof's key"
    );
    assert_eq!(payload["htm"], method.as_str());
    assert_eq!(payload["htu"], format!("{origin}{}", uri.path()));
    let ath = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ));
    assert_eq!(payload["ath"], ath);
    let jti = payload["jti"].as_str().unwrap().to_owned();
    assert!(seen.jtis.insert(jti), "a jti was reused");
    let latest = seen.issued.last().cloned();
    if latest.is_none() || payload["nonce"].as_str() != latest.as_deref() {
        seen.nonce_challenges += 1;
        let nonce = format!("rs-nonce-{}", seen.issued.len());
        seen.issued.push(nonce.clone());
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#)
            .header("dpop-nonce", nonce)
            .body(axum::body::Body::empty())
            .unwrap();
    }
    seen.accepted += 1;
    let mut response = Response::builder().status(StatusCode::OK);
    if seen.accepted % 3 == 0 {
        let nonce = format!("rs-nonce-{}", seen.issued.len());
        seen.issued.push(nonce.clone());
        response = response.header("dpop-nonce", nonce);
    }
    response.body(axum::body::Body::from("ok")).unwrap()
}

#[tokio::test]
async fn api_requests_carry_proofs_a_resource_server_accepts() {
    let peer = OidcPeer::start(&serde_json::json!([]));
    let (api, seen) = resource_server().await;
    let key = DpopKey::generate().unwrap();
    let (endpoint, _) = endpoint(&peer, "cc-client", Some("cc-secret"), &key);
    let layer = BearerAuthLayer::new(ClientCredentials::new(endpoint).resource(API_RESOURCE))
        .placement(Placement::dpop(key.clone()));
    let client = ServiceBuilder::new().layer(layer.clone()).service(http());

    for i in 0..10 {
        let path = format!("{api}/items/{i}?page={i}");
        let req = Request::builder()
            .method(if i % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            })
            .uri(path)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    let seen = seen.lock().unwrap();
    // One nonce challenge (the first request), replayed with the same token; the nonces given
    // on 200s were used at once.
    assert_eq!(seen.nonce_challenges, 1);
    assert_eq!(seen.accepted, 10);
    assert_eq!(seen.requests, 11);
    assert_eq!(seen.issued.len(), 4);
    let stats = layer.cache().stats();
    assert_eq!(
        stats.fetches, 1,
        "the nonce challenge did not drop the token"
    );
    assert_eq!(
        key.nonce(&api).as_deref(),
        seen.issued.last().map(String::as_str)
    );
}

#[tokio::test]
async fn userinfo_accepts_a_dpop_bound_token_after_its_nonce_dance() {
    let peer = OidcPeer::start(&serde_json::json!([]));
    let key = DpopKey::new(SigningKey::generate_es256().unwrap());
    let (client, _) = endpoint(&peer, "public-native", None, &key);
    let grant = AuthorizationCode::new(client, peer.url("/auth"))
        .scope("openid")
        .param("prompt", "consent")
        .param("dpop_jkt", key.thumbprint());
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let request = grant
        .authorization_request(redirect.redirect_uri())
        .unwrap();
    let browser = {
        let (url, redirect_uri) = (request.url().to_owned(), redirect.redirect_uri().to_owned());
        tokio::spawn(async move { sign_in(&http(), &url, &redirect_uri).await })
    };
    let response = redirect
        .receive(&request, Some(&peer.issuer), Duration::from_secs(20))
        .await
        .unwrap();
    browser.await.unwrap();
    let tokens = grant.exchange(&request, &response).await.unwrap();
    assert_eq!(
        tokens.token_type().map(str::to_ascii_lowercase).as_deref(),
        Some("dpop")
    );
    let token = tokens.access_token().secret().to_owned();

    let fetches = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetches = fetches.clone();
        source_fn(move |_: TokenRequest| {
            fetches.fetch_add(1, Ordering::SeqCst);
            let token = token.clone();
            async move { Ok::<_, std::io::Error>(Token::new(token)) }
        })
    };
    let layer = BearerAuthLayer::new(source).placement(Placement::dpop(key.clone()));
    let svc = ServiceBuilder::new().layer(layer).service(http());
    // The nonce the token endpoint gave is still good at /me (same server): no dance.
    let me = svc.clone().oneshot(get(&peer.url("/me"))).await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    // A stale nonce: 401 `use_dpop_nonce` with a fresh one, replayed once with the same token.
    key.store_nonce(&peer.issuer, "stale");
    let me = svc.clone().oneshot(get(&peer.url("/me"))).await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let body = me.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("test-user"));
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_ne!(key.nonce(&peer.issuer).as_deref(), Some("stale"));

    // The same token as a bearer token is refused: it is bound.
    let bearer = http()
        .oneshot({
            let mut req = get(&peer.url("/me"));
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", tokens.access_token().secret())
                    .parse()
                    .unwrap(),
            );
            req
        })
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);
}

/// An API that answers each request with the next of `answers` (status, `WWW-Authenticate`,
/// `DPoP-Nonce`), then 200; and a layer with DPoP over a source that counts its fetches.
/// Returns the first request's status, the fetches after it and a second request (which fetches
/// only if the first dropped the token), and the nonces of the first request's proofs.
async fn scripted(
    answers: Vec<(StatusCode, &'static str, Option<&'static str>)>,
) -> (usize, usize, Vec<Option<String>>) {
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let nonces = Arc::new(Mutex::new(Vec::new()));
    let api = {
        let nonces = nonces.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let proof = req.headers()["dpop"].to_str().unwrap().to_owned();
            nonces
                .lock()
                .unwrap()
                .push(claims(&proof)["nonce"].as_str().map(str::to_owned));
            let mut response = Response::new(Full::<Bytes>::default());
            if let Some((status, challenge, nonce)) = answers.lock().unwrap().next() {
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert("www-authenticate", challenge.parse().unwrap());
                if let Some(nonce) = nonce {
                    response
                        .headers_mut()
                        .insert("dpop-nonce", nonce.parse().unwrap());
                }
            }
            async move { Ok::<_, std::convert::Infallible>(response) }
        })
    };
    let fetches = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetches = fetches.clone();
        source_fn(move |_: TokenRequest| {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(Token::new(format!("t{n}"))) }
        })
    };
    let key = DpopKey::generate().unwrap();
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source).placement(Placement::dpop(key)))
        .service(api);
    let response = svc
        .clone()
        .oneshot(get("https://api.example.com/x"))
        .await
        .unwrap();
    let seen = nonces.lock().unwrap().clone();
    // A second request, answered 200: it fetches only if the first one dropped the token.
    let next = svc.oneshot(get("https://api.example.com/y")).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    (
        response.status().as_u16() as usize,
        fetches.load(Ordering::SeqCst),
        seen,
    )
}

#[tokio::test]
async fn only_a_nonce_challenge_with_a_nonce_keeps_the_token() {
    let nonce = r#"DPoP error="use_dpop_nonce""#;
    // The nonce challenge: replayed with the nonce and the same token.
    let (status, fetches, nonces) =
        scripted(vec![(StatusCode::UNAUTHORIZED, nonce, Some("n1"))]).await;
    assert_eq!((status, fetches), (200, 1));
    assert_eq!(nonces, [None, Some("n1".to_owned())]);
    // Without a nonce to use, the same challenge is a rejection like any other: a new token.
    let (status, fetches, _) = scripted(vec![(StatusCode::UNAUTHORIZED, nonce, None)]).await;
    assert_eq!((status, fetches), (200, 2));
    // Another DPoP error: a new token, and the nonce that came with it is used.
    let invalid = r#"DPoP error="invalid_token""#;
    let (status, fetches, nonces) =
        scripted(vec![(StatusCode::UNAUTHORIZED, invalid, Some("n2"))]).await;
    assert_eq!((status, fetches), (200, 2));
    assert_eq!(nonces, [None, Some("n2".to_owned())]);
    // `insufficient_scope` is returned as it is.
    let scope = r#"DPoP error="insufficient_scope""#;
    let (status, fetches, _) = scripted(vec![(StatusCode::UNAUTHORIZED, scope, None)]).await;
    assert_eq!((status, fetches), (401, 1));
    // A second nonce challenge after the replay is returned, the token still kept.
    let (status, fetches, nonces) = scripted(vec![
        (StatusCode::UNAUTHORIZED, nonce, Some("n1")),
        (StatusCode::UNAUTHORIZED, nonce, Some("n2")),
    ])
    .await;
    assert_eq!((status, fetches), (401, 1));
    assert_eq!(nonces.len(), 2);
}
