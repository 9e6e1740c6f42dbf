//! Mutual TLS (RFC 8705) against `oidc-provider` behind Node's https server: `tls_client_auth`
//! with a certificate from a CA the server trusts, `self_signed_tls_client_auth` with a
//! registered self-signed certificate, the token endpoint's mTLS alias taken from the metadata,
//! and access tokens bound to the certificate. Every certificate is made here, with rcgen.

#[allow(dead_code)]
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tower::ServiceExt;
use tower_bearer::oauth2::{
    ClientAuth, ClientCredentials, Discovery, ErrorCode, ServerMetadata, TokenEndpoint,
};

use support::oidc_peer::{cc_client, OidcPeer};

struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    /// Issued by the CA, with the SAN DNS name `client.test`.
    client: (CertificateDer<'static>, KeyPair),
    /// Self-signed, registered by `mtls-self`.
    own: (CertificateDer<'static>, KeyPair),
    /// Self-signed, registered by nobody.
    stranger: (CertificateDer<'static>, KeyPair),
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parameters for a certificate named `name` (its common name and SAN). rcgen's default
/// subject is the same for every certificate, which OpenSSL then takes for self-signed.
fn params(name: &str) -> CertificateParams {
    let sans = if name.contains(' ') {
        vec![]
    } else {
        vec![name.to_owned()]
    };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

fn pki() -> Pki {
    let mut ca_params = params("tower-bearer test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = params("127.0.0.1").signed_by(&server_key, &ca).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = params("client.test").signed_by(&client_key, &ca).unwrap();
    let self_signed = || {
        let key = KeyPair::generate().unwrap();
        let cert = params("self.test").self_signed(&key).unwrap();
        (cert.der().clone(), key)
    };
    // One directory per test: tests run in parallel.
    static DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tower-bearer-mtls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    Pki {
        dir,
        ca: ca.der().clone(),
        client: (client.der().clone(), client_key),
        own: self_signed(),
        stranger: self_signed(),
    }
}

/// rustls with the test CA as the only root, and `identity` as the client certificate.
fn tls(pki: &Pki, identity: Option<&(CertificateDer<'static>, KeyPair)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

fn https(
    config: rustls::ClientConfig,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The RFC 8705 §3.1 thumbprint of a certificate, as a bound token's `cnf` holds it.
fn thumbprint(cert: &CertificateDer<'_>) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()))
}

fn start(pki: &Pki) -> OidcPeer {
    let (own, key) = &pki.own;
    // The EC public key of the self-signed certificate, with the certificate, as a JWK.
    let point = key.public_key_raw();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "x5c": [STANDARD.encode(own.as_ref())],
    });
    let clients = serde_json::json!([
        cc_client(
            "mtls-ca",
            serde_json::json!({
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "client.test",
                "tls_client_certificate_bound_access_tokens": true,
            })
        ),
        cc_client(
            "mtls-self",
            serde_json::json!({
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": { "keys": [jwk] },
                "tls_client_certificate_bound_access_tokens": true,
            })
        ),
    ]);
    OidcPeer::start_with(
        &clients,
        &[
            ("TLS_CERT", &pki.dir.join("server.pem")),
            ("TLS_KEY", &pki.dir.join("server.key")),
            ("TLS_CA", &pki.dir.join("ca.pem")),
        ],
    )
}

async fn metadata(pki: &Pki, peer: &OidcPeer) -> ServerMetadata {
    Discovery::new(&peer.issuer)
        .transport(https(tls(pki, None)))
        .fetch()
        .await
        .unwrap()
}

/// What the server's introspection says of `token`, asked by the client that holds it.
async fn introspect(
    peer: &OidcPeer,
    config: rustls::ClientConfig,
    client_id: &str,
    token: &str,
) -> serde_json::Value {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("client_id", client_id)
        .finish();
    let request = http::Request::post(peer.url("/token/introspection"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::from(form))
        .unwrap();
    let response = https(config).oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn both_certificate_methods_get_tokens_bound_to_the_certificate() {
    let pki = pki();
    let peer = start(&pki);
    let metadata = metadata(&pki, &peer).await;
    assert!(metadata.tls_client_certificate_bound_access_tokens());
    assert_eq!(
        metadata.mtls_endpoint_alias("token_endpoint"),
        Some(peer.url("/mtls/token").as_str())
    );
    for (id, auth, identity) in [
        ("mtls-ca", ClientAuth::TlsClientAuth, &pki.client),
        ("mtls-self", ClientAuth::SelfSignedTlsClientAuth, &pki.own),
    ] {
        assert!(metadata.supports_client_auth(auth.method_name().unwrap()));
        let endpoint = TokenEndpoint::from_metadata(&metadata, id)
            .auth(auth)
            .tls_config(tls(&pki, Some(identity)))
            .build()
            .unwrap();
        // The alias (which the server only serves to a client with a certificate).
        assert_eq!(endpoint.token_url().path(), "/mtls/token");
        let token = ClientCredentials::new(endpoint)
            .request_token()
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let info = introspect(
            &peer,
            tls(&pki, Some(identity)),
            id,
            token.access_token().secret(),
        )
        .await;
        assert_eq!(info["active"], true, "{id}: {info}");
        assert_eq!(
            info["cnf"]["x5t#S256"],
            thumbprint(&identity.0),
            "{id}: {info}"
        );
    }
}

#[tokio::test]
async fn a_certificate_the_client_did_not_register_is_refused() {
    let pki = pki();
    let peer = start(&pki);
    let metadata = metadata(&pki, &peer).await;
    for (id, auth, identity) in [
        (
            "mtls-self",
            ClientAuth::SelfSignedTlsClientAuth,
            &pki.stranger,
        ),
        // Self-signed, so not from the CA the server trusts.
        ("mtls-ca", ClientAuth::TlsClientAuth, &pki.own),
    ] {
        let endpoint = TokenEndpoint::from_metadata(&metadata, id)
            .auth(auth)
            .tls_config(tls(&pki, Some(identity)))
            .build()
            .unwrap();
        let err = ClientCredentials::new(endpoint)
            .request_token()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::InvalidClient), "{id}: {err}");
    }
}
