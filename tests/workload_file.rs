//! Token files (issue #17): a Kubernetes projected service-account token, rotated by the
//! kubelet through a symlink swap, is picked up before the old token expires; a file that
//! disappears is an error naming its path while the last valid token is used until it expires;
//! and the file's JWT authenticates a client at the real authorization server (oidc-provider)
//! as a federated client assertion.

#[allow(dead_code)]
mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::jose::SigningKey;
use tower_bearer::oauth2::{AssertionRequest, AssertionSource, ClientCredentials, TokenEndpoint};
use tower_bearer::workload::{ErrorKind, TokenFile};
use tower_bearer::{BearerAuthLayer, TokenCache};

use support::oidc_peer::{cc_client, OidcPeer};

const SECOND: Duration = Duration::from_secs(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT as a platform writes it (the signature is not checked by the reader).
fn jwt(sub: &str, lifetime: Duration) -> String {
    static JTI: AtomicUsize = AtomicUsize::new(0);
    let now = unix_now();
    let claims = serde_json::json!({
        "jti": JTI.fetch_add(1, Ordering::Relaxed),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": sub,
        "aud": ["api://tests"],
        "iat": now,
        "exp": now + lifetime.as_secs(),
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A projected volume as the kubelet writes it (its `AtomicWriter`): the files in a
/// timestamped directory, `..data` a symlink to it, and `token` a symlink to `..data/token`. A
/// rotation writes a new directory and renames a new `..data` link over the old one.
struct Projected {
    dir: PathBuf,
    generation: usize,
}

impl Projected {
    fn new(token: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-bearer-projected-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Self { dir, generation: 0 };
        volume.rotate(token);
        std::os::unix::fs::symlink("..data/token", volume.path()).unwrap();
        volume
    }

    fn path(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn rotate(&mut self, token: &str) {
        self.generation += 1;
        let old = format!("..2026_11_30_00_00_{:02}", self.generation - 1);
        let new = format!("..2026_11_30_00_00_{:02}", self.generation);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        std::fs::write(self.dir.join(&new).join("token"), token).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }

    /// The volume is gone (the pod's volume unmounted, a misconfigured path).
    fn remove(&self) {
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

impl Drop for Projected {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An API that answers with the bearer token it was sent, and counts the requests that came
/// without one.
#[derive(Clone, Default)]
struct EchoApi {
    without_token: Arc<AtomicUsize>,
}

impl EchoApi {
    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        let without = self.without_token.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let token = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
                .map(str::to_owned);
            if token.is_none() {
                without.fetch_add(1, Ordering::SeqCst);
            }
            async move { Ok::<_, Infallible>(Response::new(token.unwrap_or_default())) }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_is_picked_up_before_the_old_one_expires() {
    let first = jwt("system:serviceaccount:apps:reporter", 600 * SECOND);
    let mut volume = Projected::new(&first);
    let cache = TokenCache::new(TokenFile::new(volume.path()));
    let api = EchoApi::default();
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(api.service());
    let mut send = async || -> String {
        let response = client
            .ready()
            .await
            .unwrap()
            .call(support::get("http://api.test/"))
            .await
            .unwrap();
        response.into_body()
    };
    assert_eq!(send().await, first);

    // The kubelet rotates at 80 % of the lifetime; the cache re-reads the file before the old
    // token's end and not before the rotation: one read for each token.
    tokio::time::advance(480 * SECOND).await;
    let second = jwt("system:serviceaccount:apps:reporter", 600 * SECOND);
    assert_ne!(first, second);
    volume.rotate(&second);
    // Until the refresh point (about 541 s: the usable end, 570 s, less 1/20 of the usable
    // life, less jitter) the old token serves.
    for _ in 0..5 {
        tokio::time::advance(10 * SECOND).await;
        assert_eq!(send().await, first);
    }
    // 550 s: refreshed in the background, before the usable end, and no request waited.
    // (In steps, so that the background refresh task runs when its timer fires.)
    for _ in 0..20 {
        tokio::time::advance(SECOND).await;
    }
    assert_eq!(
        send().await,
        second,
        "the rotated token is in use before the old one's usable end"
    );
    let stats = cache.stats();
    assert_eq!(stats.fetches, 2, "one read per token: {stats:?}");
    assert_eq!(stats.waits, 1, "only the first request waited: {stats:?}");
    assert_eq!(api.without_token.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_file_that_disappears_is_an_error_naming_it_and_the_last_token_serves_until_it_expires() {
    let token = jwt("system:serviceaccount:apps:reporter", 120 * SECOND);
    let volume = Projected::new(&token);
    let path = volume.path();
    let cache = TokenCache::new(TokenFile::new(&path));
    let api = EchoApi::default();
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_cache(cache.clone()))
        .service(api.service());
    let response = client
        .ready()
        .await
        .unwrap()
        .call(support::get("http://api.test/"))
        .await
        .unwrap();
    assert_eq!(response.into_body(), token);

    volume.remove();
    // Refreshes fail from here on; the token read before still serves until its usable end
    // (120 s stated, 6 s of skew).
    for served in 0..11 {
        tokio::time::advance(10 * SECOND).await;
        let response = client
            .ready()
            .await
            .unwrap()
            .call(support::get("http://api.test/"))
            .await
            .unwrap();
        assert_eq!(response.into_body(), token, "request {served}");
    }
    tokio::time::advance(10 * SECOND).await;
    let err = client
        .ready()
        .await
        .unwrap()
        .call(support::get("http://api.test/"))
        .await
        .unwrap_err();
    let err = support::token_error(err);
    let text = support::chain(&err);
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(!text.contains(&token), "{text}");
    let cause = err
        .source_as::<tower_bearer::workload::Error>()
        .expect("the workload error is the cause");
    assert_eq!(cause.kind(), ErrorKind::File);
    assert_eq!(cause.path(), Some(path.as_path()));
    assert_eq!(
        api.without_token.load(Ordering::SeqCst),
        0,
        "no request went out bare"
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-bearer-tokenfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn unusable_files_are_clear_errors_that_name_the_path_and_quote_nothing() {
    let opaque = "s3cr3t-not-a-jwt";
    let expired = {
        let now = unix_now();
        let claims = serde_json::json!({ "exp": now - 60, "iat": now - 660, "sub": "s3cr3t" });
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let cases: [(&str, Option<&str>, ErrorKind, &str); 5] = [
        ("missing", None, ErrorKind::File, "does not exist"),
        ("empty", Some("\n"), ErrorKind::File, "is empty"),
        (
            "opaque",
            Some(opaque),
            ErrorKind::InvalidToken,
            "does not hold a usable JWT",
        ),
        (
            "expired",
            Some(&expired),
            ErrorKind::InvalidToken,
            "has expired",
        ),
        (
            "noexp",
            Some("e30.eyJzdWIiOiJzM2NyM3QifQ.c2ln"),
            ErrorKind::InvalidToken,
            "no `exp`",
        ),
    ];
    for (name, content, kind, why) in cases {
        let path = scratch(name);
        let _ = std::fs::remove_file(&path);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let err = TokenFile::new(&path).read().unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), kind, "{name}: {text}");
        assert!(text.contains(why), "{name}: {text}");
        assert!(text.contains(&path.display().to_string()), "{name}: {text}");
        // Neither the file's text nor its decoded claims (every one holds `s3cr3t`).
        for shown in [text.clone(), format!("{err:?}")] {
            assert!(!shown.contains("s3cr3t"), "{name}: {shown}");
            let content = content.map(str::trim).filter(|c| !c.is_empty());
            assert!(
                content.is_none_or(|content| !shown.contains(content)),
                "{name}: {shown}"
            );
        }
        assert!(
            err.is_retryable(),
            "the platform may still write it: {name}"
        );
    }

    let err = TokenFile::from_lookup("AZURE_FEDERATED_TOKEN_FILE", |_| None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert!(
        err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{err}"
    );
    let file = TokenFile::from_lookup("AWS_WEB_IDENTITY_TOKEN_FILE", |name| {
        (name == "AWS_WEB_IDENTITY_TOKEN_FILE").then(|| "/var/run/secrets/eks/token\n".into())
    })
    .unwrap();
    assert_eq!(file.path(), Path::new("/var/run/secrets/eks/token"));
    assert_eq!(
        format!("{file:?}"),
        r#"TokenFile { path: "/var/run/secrets/eks/token", .. }"#
    );
}

#[tokio::test]
async fn as_an_assertion_the_last_valid_jwt_covers_a_file_being_replaced() {
    let token = jwt("system:serviceaccount:apps:reporter", 600 * SECOND);
    let volume = Projected::new(&token);
    let file = TokenFile::new(volume.path());
    let ask =
        |file: &TokenFile| file.assertion(AssertionRequest::new("workload", "https://as.test"));
    assert_eq!(ask(&file).await.unwrap(), token);
    volume.remove();
    assert_eq!(ask(&file).await.unwrap(), token, "the last valid JWT");
    // A source that never read a valid token has nothing to fall back on.
    let err = ask(&TokenFile::new(volume.path())).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Entra-style federation against the real authorization server: the platform (here, the test)
/// writes a JWT signed by a key the server trusts for the client; the client authenticates with
/// it as `client_assertion`, re-read from the file for each token request. oidc-provider refuses
/// a replayed assertion (`jti`), so a second token needs the rotated file: reading the file
/// again for every request is what makes that work.
#[tokio::test]
async fn the_files_jwt_authenticates_a_client_at_the_real_server() {
    let key = SigningKey::generate_es256()
        .unwrap()
        .with_kid("cluster-key");
    let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk()).unwrap();
    let client_id = "federated-workload";
    let peer = OidcPeer::start(&serde_json::json!([cc_client(
        client_id,
        serde_json::json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": { "keys": [jwk] },
        }),
    )]));
    let platform_token = |jti: &str| {
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": peer.issuer,
            "jti": jti, "iat": now, "exp": now + 600,
        });
        key.sign_jws(r#""typ":"JWT""#, &claims.to_string()).unwrap()
    };
    let mut volume = Projected::new(&platform_token("first"));
    let endpoint = TokenEndpoint::builder(peer.url("/token"), client_id)
        .client_assertion(TokenFile::new(volume.path()))
        .build()
        .unwrap();
    let cache = TokenCache::new(ClientCredentials::new(endpoint));
    let first = cache.token().await.unwrap();
    volume.rotate(&platform_token("second"));
    let second = cache.refresh().await.unwrap();
    assert_ne!(
        first.access_token().secret(),
        second.access_token().secret()
    );
    assert_eq!(cache.stats().fetches, 2);
}

/// With a refresh window wider than Kubernetes' (5 of 10 minutes), the file is still not
/// re-read before the kubelet rotates it at 80 %: re-reading earlier would bring the same token
/// back and read the file again and again until the rotation.
#[tokio::test(start_paused = true)]
async fn a_wide_refresh_window_waits_for_the_kubelets_rotation() {
    let first = jwt("system:serviceaccount:apps:reporter", 600 * SECOND);
    let mut volume = Projected::new(&first);
    let reads = Arc::new(AtomicUsize::new(0));
    let file = TokenFile::new(volume.path());
    let counted = {
        let reads = reads.clone();
        tower::ServiceBuilder::new()
            .map_request(move |req| {
                reads.fetch_add(1, Ordering::SeqCst);
                req
            })
            .service(file)
    };
    let cache = TokenCache::builder(counted)
        .refresh_ahead(300 * SECOND)
        .build();
    assert_eq!(cache.token().await.unwrap().access_token().secret(), first);
    // Up to the rotation, every request is served from the cache, with no read.
    for _ in 0..47 {
        tokio::time::advance(10 * SECOND).await;
        cache.token().await.unwrap();
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "no read before the rotation"
    );
    let second = jwt("system:serviceaccount:apps:reporter", 600 * SECOND);
    volume.rotate(&second);
    tokio::time::advance(10 * SECOND).await;
    cache.token().await.unwrap();
    tokio::task::yield_now().await;
    for _ in 0..5 {
        tokio::time::advance(SECOND).await;
    }
    assert_eq!(cache.token().await.unwrap().access_token().secret(), second);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

/// Kubernetes' default service-account token has extended expiration: valid for a year, with
/// `kubernetes.io.warnafter` an hour after issue. The kubelet rotates it before `warnafter`,
/// and the API server flags a token used after it as stale: the cache re-reads the file before
/// `warnafter`, not a year later.
#[tokio::test(start_paused = true)]
async fn an_extended_token_is_used_until_its_warnafter_only() {
    let extended = |n: u32| {
        let now = unix_now();
        let claims = serde_json::json!({
            "sub": "system:serviceaccount:kube-system:default",
            "iat": now,
            "exp": now + 365 * 24 * 3600,
            "kubernetes.io": { "namespace": "kube-system", "warnafter": now + 3600 },
            "jti": n,
        });
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let first = extended(1);
    let mut volume = Projected::new(&first);
    let cache = TokenCache::new(TokenFile::new(volume.path()));
    assert_eq!(cache.token().await.unwrap().access_token().secret(), first);
    // The kubelet rotates at 80 % of the hour.
    tokio::time::advance(2880 * SECOND).await;
    assert_eq!(cache.token().await.unwrap().access_token().secret(), first);
    let second = extended(2);
    volume.rotate(&second);
    for _ in 0..60 {
        tokio::time::advance(10 * SECOND).await;
        cache.token().await.unwrap();
    }
    // 3480 s: before `warnafter`, the rotated token is in use.
    assert_eq!(cache.token().await.unwrap().access_token().secret(), second);
    assert_eq!(cache.stats().fetches, 2, "{:?}", cache.stats());
}
