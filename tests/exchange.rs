//! Token exchange (RFC 8693) against a real authorization server: `oidc-provider`, with the
//! extension grant its test configuration registers (tests/peers/oidc-server.mjs), and an API
//! that checks every token at the provider's introspection endpoint; with the feature `redis`,
//! replicas sharing tokens through a real `redis-server`.

#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{
    self, ClientCredentials, ErrorCode, ErrorKind, SubjectDigest, TokenEndpoint, TokenExchange,
};
use tower_bearer::{BearerAuthLayer, TokenCache};

use support::oidc_peer::{cc_client, http, Http, OidcPeer};
use support::{get, token_error};

/// The audience the API accepts.
const BILLING: &str = "urn:tower-bearer:billing";

fn peer() -> OidcPeer {
    let exchanger = serde_json::json!({
        "client_id": "exchanger",
        "client_secret": "exchanger-secret",
        "grant_types": [TokenExchange::GRANT_TYPE],
        "response_types": [],
        "redirect_uris": [],
    });
    OidcPeer::start(&serde_json::json!([
        exchanger,
        cc_client(
            "billing-api",
            serde_json::json!({ "client_secret": "api-secret" })
        ),
        cc_client(
            "actor",
            serde_json::json!({ "client_secret": "actor-secret" })
        ),
    ]))
}

fn endpoint(peer: &OidcPeer, client: &str, secret: &str) -> TokenEndpoint {
    TokenEndpoint::builder(peer.url("/token"), client)
        .client_secret(secret)
        .build()
        .unwrap()
}

/// What introspection says of `token`, asked as the API's own client.
async fn introspect(http: &Http, introspection: &str, token: &str) -> serde_json::Value {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let request = Request::post(introspection)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        // "billing-api:api-secret"
        .header(AUTHORIZATION, "Basic YmlsbGluZy1hcGk6YXBpLXNlY3JldA==")
        .body(Full::new(Bytes::from(form)))
        .unwrap();
    let response = http.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The billing API: accepts a bearer token that introspection says is active and for
/// [`BILLING`], and answers with the introspection; counts the requests it gets.
fn billing_api(
    peer: &OidcPeer,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let introspection = peer.url("/token/introspection");
    let http = http();
    service_fn(move |req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (http, introspection) = (http.clone(), introspection.clone());
        async move {
            let token = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let claims = introspect(&http, &introspection, &token).await;
            let for_us = claims["aud"]
                .as_array()
                .is_some_and(|aud| aud.iter().any(|a| a == BILLING));
            let mut response = Response::new(Full::new(Bytes::from(claims.to_string())));
            if claims["active"] != true || !for_us {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    "Bearer error=\"invalid_token\"".parse().unwrap(),
                );
            }
            Ok::<_, BoxError>(response)
        }
    })
}

async fn json(response: Response<Full<Bytes>>) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn another_layers_token_is_exchanged_for_one_the_api_accepts() {
    let peer = peer();
    let calls = Arc::new(AtomicUsize::new(0));

    // The service's own token, from client credentials, in a layer of its own: the API does not
    // take it (it is for nobody in particular).
    let own = BearerAuthLayer::new(ClientCredentials::new(endpoint(
        &peer,
        "cc-client",
        "cc-secret",
    )));
    let response = ServiceBuilder::new()
        .layer(own.clone())
        .service(billing_api(&peer, calls.clone()))
        .oneshot(get("http://billing.test/invoices"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Exchanged, with that layer's cache as the subject source, for the billing API.
    let exchange = TokenExchange::new(
        endpoint(&peer, "exchanger", "exchanger-secret"),
        own.cache().clone(),
    )
    .requested_token_type(TokenExchange::ACCESS_TOKEN)
    .audience(BILLING)
    .resource("https://ledger.example.com/")
    .scope("billing:read");
    let billing = BearerAuthLayer::new(exchange);
    let client = ServiceBuilder::new()
        .layer(billing.clone())
        .service(billing_api(&peer, calls.clone()));
    let own_fetches = own.cache().stats().fetches;
    for _ in 0..3 {
        let response = client
            .clone()
            .oneshot(get("http://billing.test/invoices"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let claims = json(response).await;
        // Made for the exchanging client, on behalf of the subject, for what was asked.
        assert_eq!(claims["client_id"], "exchanger");
        assert_eq!(claims["sub"], "cc-client");
        assert_eq!(
            claims["aud"],
            serde_json::json!([BILLING, "https://ledger.example.com/"])
        );
        assert_eq!(claims["scope"], "billing:read");
    }
    // One exchange, with the subject token the other layer had: no new subject was fetched.
    assert_eq!(billing.cache().stats().fetches, 1);
    assert_eq!(own.cache().stats().fetches, own_fetches);
    let subject = own.cache().token().await.unwrap();
    let exchanged = billing.cache().token().await.unwrap();
    assert_eq!(
        exchanged.extensions().get::<SubjectDigest>(),
        Some(&SubjectDigest::of(subject.access_token().secret()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2 + 3);
}

#[tokio::test]
async fn an_actor_is_named_in_the_issued_token() {
    let peer = peer();
    let subject = TokenCache::new(ClientCredentials::new(endpoint(
        &peer,
        "cc-client",
        "cc-secret",
    )));
    let actor = TokenCache::new(ClientCredentials::new(endpoint(
        &peer,
        "actor",
        "actor-secret",
    )));
    let exchange = TokenExchange::new(endpoint(&peer, "exchanger", "exchanger-secret"), subject)
        .actor(actor, TokenExchange::ACCESS_TOKEN)
        .audience(BILLING);
    let token = exchange.request_token().await.unwrap();
    assert_eq!(
        token
            .extra()
            .get("issued_token_type")
            .and_then(|t| t.as_str()),
        Some(TokenExchange::ACCESS_TOKEN)
    );
    let claims = introspect(
        &http(),
        &peer.url("/token/introspection"),
        token.access_token().secret(),
    )
    .await;
    assert_eq!(claims["sub"], "cc-client");
    assert_eq!(claims["act"], serde_json::json!({ "sub": "actor" }));
    assert_eq!(claims["aud"], serde_json::json!([BILLING]));
}

#[tokio::test]
async fn a_subject_the_server_did_not_issue_is_invalid_grant() {
    let peer = peer();
    let exchange = TokenExchange::from_subject_token(
        endpoint(&peer, "exchanger", "exchanger-secret"),
        "a-token-this-server-never-issued",
    )
    .audience(BILLING);
    let error = exchange.request_token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(error.code(), Some(&ErrorCode::InvalidGrant));
    assert!(error.needs_reauthorization());
    assert!(!error.is_retryable());
    assert!(!format!("{error} {error:?}").contains("never-issued"));

    // Through the layer: the request fails with that error and never reaches the API.
    let calls = Arc::new(AtomicUsize::new(0));
    let error = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(exchange))
        .service(billing_api(&peer, calls.clone()))
        .oneshot(get("http://billing.test/invoices"))
        .await
        .unwrap_err();
    let error = token_error(error);
    assert_eq!(error.kind(), tower_bearer::ErrorKind::Source);
    let cause = error.source_as::<oauth2::Error>().unwrap();
    assert_eq!(cause.code(), Some(&ErrorCode::InvalidGrant));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_subject_source_that_fails_is_named_and_no_exchange_is_sent() {
    let peer = peer();
    // The subject's client credentials are wrong: the subject source fails, not the exchange.
    let subject = ClientCredentials::new(endpoint(&peer, "cc-client", "not-the-secret"));
    let exchange = TokenExchange::new(endpoint(&peer, "exchanger", "exchanger-secret"), subject);
    let error = exchange.request_token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SubjectToken);
    let cause = std::error::Error::source(&error)
        .and_then(|cause| cause.downcast_ref::<oauth2::Error>())
        .unwrap();
    assert_eq!(cause.code(), Some(&ErrorCode::InvalidClient));
    assert!(error
        .to_string()
        .contains("the subject token source failed"));
    assert!(
        !error.is_retryable(),
        "invalid_client will not go away soon"
    );
}

/// A replica exchanging `subject` behind a shared level on `redis`, keyed with the exchange's
/// identity.
#[cfg(feature = "redis")]
async fn replica(
    peer: &OidcPeer,
    redis: &support::redis_server::RedisServer,
    subject: &str,
) -> TokenCache {
    use tower::Layer;
    use tower_bearer::shared::{RedisStore, SealingKey, SharedCacheLayer};

    let exchange =
        TokenExchange::from_subject_token(endpoint(peer, "exchanger", "exchanger-secret"), subject)
            .audience(BILLING);
    let identity = exchange.identity().await.unwrap();
    assert!(!identity.contains(subject));
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let shared = SharedCacheLayer::new(store, SealingKey::new([0x17; 32]), identity);
    TokenCache::new(shared.layer(exchange))
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn replicas_share_an_exchanged_token_only_when_their_subjects_are_the_same() {
    let peer = peer();
    let redis = support::redis_server::RedisServer::start();
    let subject_of = |client: &'static str, secret: &'static str| {
        let source = ClientCredentials::new(endpoint(&peer, client, secret));
        async move {
            let response = source.request_token().await.unwrap();
            response.access_token().secret().to_owned()
        }
    };
    let ours = subject_of("cc-client", "cc-secret").await;
    let theirs = subject_of("actor", "actor-secret").await;

    let first = replica(&peer, &redis, &ours).await.token().await.unwrap();
    // The same subject: the token in the store is used, not exchanged again.
    let same = replica(&peer, &redis, &ours).await.token().await.unwrap();
    assert_eq!(same.access_token(), first.access_token());
    // Another subject: a token of its own, made on its behalf.
    let other = replica(&peer, &redis, &theirs).await.token().await.unwrap();
    assert_ne!(other.access_token(), first.access_token());
    let introspection = peer.url("/token/introspection");
    let claims = introspect(&http(), &introspection, other.access_token().secret()).await;
    assert_eq!(claims["sub"], "actor");
    let claims = introspect(&http(), &introspection, first.access_token().secret()).await;
    assert_eq!(claims["sub"], "cc-client");
}

/// The Kubernetes case: a pod's projected service-account token, read from its file, is the
/// subject; the token service trusts the cluster's issuer (its public keys, given to the
/// provider as `TRUSTED_SUBJECT_JWKS`) and issues an access token for the API on behalf of the
/// service account. A JWT from an issuer it does not trust is `invalid_grant`.
#[tokio::test]
async fn a_projected_token_file_is_exchanged_for_an_access_token() {
    use std::time::{SystemTime, UNIX_EPOCH};
    use tower_bearer::jose::SigningKey;
    use tower_bearer::workload::TokenFile;

    let cluster = SigningKey::generate_es256().unwrap().with_kid("cluster");
    let stranger = SigningKey::generate_es256().unwrap().with_kid("cluster");
    let dir = std::env::temp_dir().join(format!("tower-bearer-exchange-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("cluster-jwks.json");
    let jwk: serde_json::Value = serde_json::from_str(&cluster.public_jwk()).unwrap();
    std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let exchanger = serde_json::json!({
        "client_id": "exchanger",
        "client_secret": "exchanger-secret",
        "grant_types": [TokenExchange::GRANT_TYPE],
        "response_types": [],
        "redirect_uris": [],
    });
    let api = cc_client(
        "billing-api",
        serde_json::json!({ "client_secret": "api-secret" }),
    );
    let peer = OidcPeer::start_with(
        &serde_json::json!([exchanger, api]),
        &[("TRUSTED_SUBJECT_JWKS", jwks.as_path())],
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let projected = |key: &SigningKey| {
        let claims = serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": "system:serviceaccount:shop:orders",
            "aud": [peer.issuer.clone()],
            "iat": now,
            "exp": now + 3600,
            "kubernetes.io": { "namespace": "shop", "serviceaccount": { "name": "orders" } },
        });
        key.sign_jws(r#""typ":"JWT""#, &claims.to_string()).unwrap()
    };
    let file = dir.join("token");
    std::fs::write(&file, projected(&cluster)).unwrap();

    let exchange = TokenExchange::new(
        endpoint(&peer, "exchanger", "exchanger-secret"),
        TokenFile::new(&file),
    )
    .subject_token_type(TokenExchange::JWT)
    .audience(BILLING);
    let calls = Arc::new(AtomicUsize::new(0));
    let response = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(exchange.clone()))
        .service(billing_api(&peer, calls.clone()))
        .oneshot(get("http://billing.test/invoices"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let claims = json(response).await;
    assert_eq!(claims["sub"], "system:serviceaccount:shop:orders");
    assert_eq!(claims["client_id"], "exchanger");

    // The same claims signed by a key the token service does not trust.
    std::fs::write(&file, projected(&stranger)).unwrap();
    let err = exchange.request_token().await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidGrant), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
