//! Authorization server metadata (RFC 8414, OpenID Connect Discovery): from `oidc-provider`, and
//! from hostile servers that name another issuer, omit the token endpoint, or send too much.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Full, StreamBody};
use tower_bearer::oauth2::{
    ClientAuth, ClientCredentials, Discovery, ErrorKind, TokenEndpoint, WellKnown,
};

use support::oidc_peer::OidcPeer;

/// A server answering each URL from `pages` (status, body), 404 for others; records the URLs
/// asked for.
type Asked = Arc<Mutex<Vec<String>>>;

fn server(
    pages: &[(&str, u16, &str)],
) -> (
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    Asked,
) {
    let pages: Vec<(String, u16, String)> = pages
        .iter()
        .map(|(u, s, b)| (u.to_string(), *s, b.to_string()))
        .collect();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let url = req.uri().to_string();
        seen.lock().unwrap().push(url.clone());
        let page = pages.iter().find(|(u, _, _)| *u == url).cloned();
        async move {
            let (status, body) = page.map_or((404, String::new()), |(_, s, b)| (s, b));
            let mut response = Response::new(Full::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    (svc, asked)
}

const ISSUER: &str = "https://as.example.com/tenant";
const OIDC: &str = "https://as.example.com/tenant/.well-known/openid-configuration";
const RFC8414: &str = "https://as.example.com/.well-known/oauth-authorization-server/tenant";

fn doc(issuer: &str) -> String {
    format!(r#"{{"issuer":"{issuer}","token_endpoint":"https://as.example.com/tenant/token"}}"#)
}

#[tokio::test]
async fn falls_back_to_rfc_8414_for_an_issuer_with_a_path() {
    let (svc, asked) = server(&[(RFC8414, 200, &doc(ISSUER))]);
    let metadata = Discovery::new(ISSUER).transport(svc).fetch().await.unwrap();
    assert_eq!(
        metadata.token_endpoint(),
        "https://as.example.com/tenant/token"
    );
    assert_eq!(*asked.lock().unwrap(), [OIDC, RFC8414]);

    // Only RFC 8414's location when asked so; a direct URL overrides both.
    let (svc, asked) = server(&[(RFC8414, 200, &doc(ISSUER))]);
    Discovery::new(ISSUER)
        .well_known(WellKnown::OAuthAuthorizationServer)
        .transport(svc)
        .fetch()
        .await
        .unwrap();
    assert_eq!(*asked.lock().unwrap(), [RFC8414]);
    let direct = "https://as.example.com/meta";
    let (svc, asked) = server(&[(direct, 200, &doc(ISSUER))]);
    Discovery::new(ISSUER)
        .metadata_url(direct)
        .transport(svc)
        .fetch()
        .await
        .unwrap();
    assert_eq!(*asked.lock().unwrap(), [direct]);
}

#[tokio::test]
async fn another_issuer_is_refused() {
    for issuer in [
        "https://evil.example.com/tenant",
        "https://as.example.com/tenant/",
        "https://as.example.com/TENANT",
        "https://as.example.com/tenant\u{1b}[2J",
    ] {
        let (svc, _) = server(&[(OIDC, 200, &doc(&issuer.replace('\u{1b}', "\\u001b")))]);
        let err = Discovery::new(ISSUER)
            .transport(svc)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IssuerMismatch, "{issuer}");
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }
}

#[tokio::test]
async fn hostile_documents_are_typed_errors() {
    let huge = format!(
        r#"{{"issuer":"{ISSUER}","token_endpoint":"https://as.example.com/t","x":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    for (body, status, kind) in [
        (
            r#"{"issuer":"https://as.example.com/tenant"}"#.to_owned(),
            200,
            ErrorKind::Metadata,
        ),
        ("<html>hello</html>".to_owned(), 200, ErrorKind::Metadata),
        (huge, 200, ErrorKind::BodyTooLarge),
        (String::new(), 500, ErrorKind::Metadata),
        (String::new(), 302, ErrorKind::Redirect),
    ] {
        let (svc, asked) = server(&[(OIDC, status, &body)]);
        let err = Discovery::new(ISSUER)
            .transport(svc)
            .fetch()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(
            err.to_string().starts_with("authorization server metadata"),
            "{err}"
        );
        // A server error is not a missing document: no fallback, and worth retrying.
        if status == 500 {
            assert_eq!(asked.lock().unwrap().len(), 1);
            assert!(err.is_retryable());
        }
    }
    // Nothing anywhere: says where it looked.
    let (svc, _) = server(&[]);
    let err = Discovery::new(ISSUER)
        .transport(svc)
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Metadata);
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert!(err.to_string().contains(RFC8414), "{err}");
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_limit() {
    // No Content-Length: a stream that never ends is read up to 1 MiB, then refused.
    let svc = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let chunks = tokio_stream::iter(std::iter::repeat_with(|| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(&[b' '; 8192])))
        }));
        Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
    });
    let err = Discovery::new(ISSUER)
        .transport(svc)
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
}

#[tokio::test]
async fn discovers_oidc_provider_and_gets_a_token_through_it() {
    let peer = OidcPeer::start(&serde_json::json!([]));
    let metadata = Discovery::new(&peer.issuer).fetch().await.unwrap();
    assert_eq!(metadata.issuer(), peer.issuer);
    assert_eq!(metadata.token_endpoint(), peer.url("/token"));
    assert_eq!(metadata.jwks_uri(), Some(peer.url("/jwks").as_str()));
    for method in [
        "private_key_jwt",
        "client_secret_jwt",
        "client_secret_basic",
    ] {
        assert!(metadata.supports_client_auth(method), "{method}");
    }
    let algs = metadata
        .token_endpoint_auth_signing_alg_values_supported()
        .unwrap();
    assert!(algs.iter().any(|a| a == "ES256") && algs.iter().any(|a| a == "EdDSA"));

    let endpoint = TokenEndpoint::from_metadata(&metadata, "cc-client")
        .client_secret("cc-secret")
        .build()
        .unwrap();
    assert_eq!(endpoint.auth(), ClientAuth::Basic);
    assert_eq!(endpoint.assertion_audience(), peer.issuer);
    let token = ClientCredentials::new(endpoint)
        .request_token()
        .await
        .unwrap();
    assert!(!token.access_token().secret().is_empty());

    // The same server asked for under another spelling of its issuer.
    let err = Discovery::new(format!("{}/", peer.issuer))
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IssuerMismatch);
}

#[tokio::test]
async fn the_metadata_chooses_the_secret_method_when_none_is_set() {
    let issuer = "https://as.example.com";
    let only_post = format!(
        r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token",
            "token_endpoint_auth_methods_supported":["client_secret_post","private_key_jwt"]}}"#
    );
    let (svc, _) = server(&[(
        "https://as.example.com/.well-known/openid-configuration",
        200,
        &only_post,
    )]);
    let metadata = Discovery::new(issuer).transport(svc).fetch().await.unwrap();
    let (svc, _) = server(&[]);
    let endpoint = |auth: Option<ClientAuth>| {
        let mut builder = TokenEndpoint::from_metadata(&metadata, "c")
            .client_secret("s")
            .transport(svc.clone());
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        builder.build().unwrap()
    };
    assert_eq!(endpoint(None).auth(), ClientAuth::Post);
    assert_eq!(endpoint(Some(ClientAuth::Basic)).auth(), ClientAuth::Basic);
    assert_eq!(endpoint(None).assertion_audience(), issuer);
    // Without metadata, the default is unchanged: Basic.
    let plain = TokenEndpoint::builder(format!("{issuer}/token"), "c")
        .client_secret("s")
        .build()
        .unwrap();
    assert_eq!(plain.auth(), ClientAuth::Basic);
    assert_eq!(plain.assertion_audience(), format!("{issuer}/token"));
}
