//! Command-line sign-ins driven end to end by a real browser, as a person signs in: headless
//! Chromium (Debian's `chromium`, driven by `tests/peers/browser.mjs` through a pinned
//! `puppeteer-core`) types into the real authorization server's own login and consent pages
//! (`oidc-provider` with `DEV_INTERACTIONS=1`), and the page the loopback listener shows after the
//! redirect is read as the person would read it. `scripts/test.sh` installs chromium and
//! puppeteer-core. A screenshot of each test's last page is kept in
//! `<target dir>/browser/<test>.png` (the path is printed; `--nocapture` shows it).

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{
    AuthorizationCode, ClientAuth, DeviceAuthorization, ErrorCode, ErrorKind, LoopbackRedirect,
    RefreshTokenSource, TokenEndpoint,
};
use tower_bearer::{BearerAuthLayer, StaticToken, TokenSource};

use support::oidc_peer::{http, OidcPeer};
use support::{get, within};

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
/// The browser script's own limit on a run; the test waits a little longer for its report.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

/// Chromium is heavy on a small machine: the browser tests take turns.
async fn one_browser_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    TURN.get_or_init(Default::default).lock().await
}

/// The authorization server with its own login, consent and device verification pages.
fn peer() -> OidcPeer {
    OidcPeer::start_with(&json!([]), &[("DEV_INTERACTIONS", Path::new("1"))])
}

fn chromium() -> PathBuf {
    let path =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: run scripts/test.sh, which installs Debian's chromium with apt (or set \
         CHROMIUM to a Chromium binary)",
        path.display()
    );
    path
}

/// Where the screenshot of `test`'s last page is kept: `<target dir>/browser/<test>.png`.
fn screenshot_path(test: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(tmp)
        .join("browser")
        .join(format!("{test}.png"))
}

/// Runs `tests/peers/browser.mjs` with `args` (see that file) and returns its report of the
/// last page: `url`, `status`, `title`, visible `text`, `steps`, `screenshot`. Fails the test if
/// the browser could not do its part.
async fn browse(test: &str, mut args: Value) -> Value {
    assert!(
        Path::new(PEERS)
            .join("node_modules/puppeteer-core")
            .exists(),
        "puppeteer-core is not installed: run scripts/test.sh (it runs `npm ci` in tests/peers)"
    );
    let screenshot = screenshot_path(test);
    let _ = std::fs::remove_file(&screenshot);
    args["screenshot"] = json!(screenshot);
    args["chromium"] = json!(chromium());
    args["timeoutMs"] = json!(BROWSER_TIMEOUT.as_millis() as u64);
    let started = Instant::now();
    let mut child = tokio::process::Command::new("node")
        .arg("browser.mjs")
        .arg(args.to_string())
        .current_dir(PEERS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start node: Node.js 20+ must be installed");
    // The script ends, closing the browser, when its stdin closes: held until it has finished.
    let stdin = child.stdin.take();
    let output = within(
        BROWSER_TIMEOUT + Duration::from_secs(15),
        "the browser",
        child.wait_with_output(),
    )
    .await
    .unwrap();
    drop(stdin);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "browser.mjs gave no report ({}); stdout: {}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    println!(
        "{test}: browser {:.1} s, screenshot of the last page: {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
    assert!(
        output.status.success(),
        "the browser could not finish: {report:#}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    report
}

/// What the browser did, page after page.
fn actions(report: &Value) -> Vec<&str> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["action"].as_str().unwrap())
        .collect()
}

fn text(report: &Value) -> &str {
    report["text"].as_str().unwrap()
}

/// A request to `/me` (userinfo) through a `BearerAuthLayer` with `source`: the status and body.
async fn me(peer: &OidcPeer, source: impl TokenSource) -> (StatusCode, String) {
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source))
        .service(http());
    let response = svc.oneshot(get(&peer.url("/me"))).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn login_grant(peer: &OidcPeer) -> (TokenEndpoint, AuthorizationCode) {
    let client = TokenEndpoint::builder(peer.url("/token"), "public-native")
        .auth(ClientAuth::None)
        .build()
        .unwrap();
    let grant = AuthorizationCode::new(client.clone(), peer.url("/auth"))
        .scope("openid")
        .scope("offline_access")
        .param("prompt", "consent");
    (client, grant)
}

#[tokio::test]
async fn a_person_signs_in_in_the_browser_and_the_loopback_page_says_so() {
    let _turn = one_browser_at_a_time().await;
    let peer = peer();
    let (client, grant) = login_grant(&peer);
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let redirect_uri = redirect.redirect_uri().to_owned();
    let request = grant.authorization_request(&redirect_uri).unwrap();

    // As a command-line tool opens the browser at the authorization URL. Both in one task, so
    // that a browser that fails fails the test at once.
    let (response, page) = tokio::join!(
        redirect.receive(&request, Some(&peer.issuer), Duration::from_secs(60)),
        browse(
            "sign_in",
            json!({ "url": request.url(), "until": redirect_uri }),
        ),
    );
    let response = response.unwrap();

    assert_eq!(actions(&page), ["login", "consent: Continue"], "{page:#}");
    assert!(
        page["url"].as_str().unwrap().starts_with(&redirect_uri),
        "{page:#}"
    );
    assert_eq!(page["status"], 200, "{page:#}");
    assert_eq!(page["title"], "Signed in");
    assert_eq!(
        text(&page),
        "Signed in\n\nYou are signed in. You can close this window and return to the application."
    );

    let tokens = grant.exchange(&request, &response).await.unwrap();
    assert!(tokens.refresh_token().is_some());
    let source = RefreshTokenSource::from_response(client, tokens).unwrap();
    let (status, body) = me(&peer, source).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"sub\":\"test-user\""), "{body}");
}

#[tokio::test]
async fn a_person_who_cancels_consent_sees_why_and_the_login_fails() {
    let _turn = one_browser_at_a_time().await;
    let peer = peer();
    let (_, grant) = login_grant(&peer);
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let redirect_uri = redirect.redirect_uri().to_owned();
    let request = grant.authorization_request(&redirect_uri).unwrap();

    let (response, page) = tokio::join!(
        redirect.receive(&request, Some(&peer.issuer), Duration::from_secs(60)),
        browse(
            "consent_cancelled",
            json!({ "url": request.url(), "until": redirect_uri, "consent": "deny" }),
        ),
    );
    let err = response.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Authorization, "{err}");
    assert_eq!(err.code(), Some(&ErrorCode::AccessDenied), "{err}");
    assert_eq!(actions(&page), ["login", "consent: Cancel"], "{page:#}");
    assert!(
        page["url"].as_str().unwrap().starts_with(&redirect_uri),
        "{page:#}"
    );
    assert_eq!(page["status"], 400, "{page:#}");
    assert_eq!(page["title"], "Sign-in failed");
    assert_eq!(
        text(&page),
        "Sign-in failed\n\nThe application could not sign you in: authorization was refused \
         (access_denied): End-User aborted interaction. Close this window and return to the \
         application to try again."
    );
}

// ---------------------------------------------------------------------------------------------
// The device authorization grant (RFC 8628) through the crate's `DeviceAuthorization`: the tool
// shows the user code and verification URI and polls while the person, in a browser, types the
// code on the verification page, signs in and consents.

#[tokio::test]
async fn a_person_approves_a_device_on_the_verification_page() {
    let _turn = one_browser_at_a_time().await;
    let peer = peer();
    let endpoint = TokenEndpoint::builder(peer.url("/token"), "browser-device")
        .auth(ClientAuth::None)
        .build()
        .unwrap();
    let grant = DeviceAuthorization::new(endpoint, peer.url("/device/auth")).scope("openid");
    let prompt = grant.start().await.unwrap();
    assert!(
        prompt.verification_uri().starts_with(&peer.url("/device")),
        "{prompt:?}"
    );

    // The person opens the verification URI the tool printed and types the code it showed.
    let (tokens, page) = tokio::join!(
        within(
            Duration::from_secs(30),
            "the tool's polling after the approval",
            grant.wait(&prompt)
        ),
        browse(
            "device",
            json!({ "url": prompt.verification_uri(), "userCode": prompt.user_code() }),
        )
    );
    assert_eq!(
        actions(&page),
        [
            "device: user code",
            "device: Continue",
            "login",
            "consent: Continue"
        ],
        "{page:#}"
    );
    assert_eq!(page["status"], 200, "{page:#}");
    assert_eq!(page["title"], "Sign-in Success");
    assert!(
        text(&page).contains("Your sign-in was successful"),
        "{page:#}"
    );

    // The tool was polling all along (every 5 s: the server sends no `interval`; `within`
    // above bounds the wait) and has its tokens.
    let tokens = tokens.unwrap();
    let (status, body) = me(&peer, StaticToken::from_token(tokens.into_token())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"sub\":\"test-user\""), "{body}");
}
