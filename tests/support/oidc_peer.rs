//! A running `oidc-provider` (tests/peers/oidc-server.mjs) with clients a test registers, such as
//! `private_key_jwt` clients holding the public keys the test generated.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// A running `oidc-provider`; killed on drop (and it exits by itself when its stdin closes).
pub(crate) struct OidcPeer {
    child: Child,
    _stdin: ChildStdin,
    clients_file: Option<PathBuf>,
    pub(crate) issuer: String,
}

impl OidcPeer {
    /// Starts the server with `clients` (a JSON array of client metadata) registered besides its
    /// built-in ones.
    pub(crate) fn start(clients: &serde_json::Value) -> Self {
        Self::start_with(clients, &[])
    }

    /// [`start`](Self::start) with more environment variables: `TLS_CERT`, `TLS_KEY` and
    /// `TLS_CA` (PEM file paths) make it serve https and ask for client certificates.
    pub(crate) fn start_with(
        clients: &serde_json::Value,
        env: &[(&str, &std::path::Path)],
    ) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oidc-provider")
                .exists(),
            "oidc-provider is not installed: run scripts/test.sh (it runs `npm ci` in tests/peers)"
        );
        static FILES: AtomicUsize = AtomicUsize::new(0);
        let clients_file = std::env::temp_dir().join(format!(
            "tower-bearer-clients-{}-{}.json",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&clients_file, clients.to_string()).unwrap();
        let mut child = Command::new("node")
            .arg("oidc-server.mjs")
            .current_dir(dir)
            .env("EXTRA_CLIENTS", &clients_file)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // OIDC_PEER_LOG=1 shows the server's log, to find out why it refused something.
            .stderr(if std::env::var_os("OIDC_PEER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("cannot start node: Node.js 20+ must be installed");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("oidc-provider did not start: {line:?}"));
        Self {
            child,
            _stdin: stdin,
            clients_file: Some(clients_file),
            issuer: format!(
                "{}://127.0.0.1:{port}",
                if env.iter().any(|(k, _)| *k == "TLS_CERT") {
                    "https"
                } else {
                    "http"
                }
            ),
        }
    }

    /// The URL of `path` on the server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

impl Drop for OidcPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = self.clients_file.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Client metadata for a client-credentials client of `oidc-provider`.
pub(crate) fn cc_client(id: &str, fields: serde_json::Value) -> serde_json::Value {
    let mut client = serde_json::json!({
        "client_id": id,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
    });
    client
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    client
}

/// A plain-HTTP client for the peer (and the loopback redirect).
pub(crate) type Http = HyperClient<HttpConnector, Full<Bytes>>;

pub(crate) fn http() -> Http {
    HyperClient::builder(TokioExecutor::new()).build_http()
}

/// A browser with a cookie jar that follows the authorization server's redirects until it
/// reaches the loopback redirect URI, which it requests too (that is what delivers the code).
pub(crate) async fn sign_in(http: &Http, url: &str, redirect_uri: &str) {
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    let mut url: Uri = url.parse().unwrap();
    for _ in 0..10 {
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = Request::get(url.clone()).body(Full::default()).unwrap();
        if !cookie.is_empty() {
            req.headers_mut().insert(COOKIE, cookie.parse().unwrap());
        }
        let response = http.request(req).await.unwrap();
        for value in response.headers().get_all(SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                jar.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        if url.to_string().starts_with(redirect_uri) {
            assert_eq!(response.status(), StatusCode::OK, "the loopback page");
            return;
        }
        assert!(
            response.status().is_redirection(),
            "{} at {url}",
            response.status()
        );
        let location = response.headers()[LOCATION].to_str().unwrap();
        url = if location.starts_with('/') {
            format!(
                "{}://{}{location}",
                url.scheme_str().unwrap(),
                url.authority().unwrap()
            )
            .parse()
            .unwrap()
        } else {
            location.parse().unwrap()
        };
    }
    panic!("too many redirects");
}
