use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::oauth2::{ErrorCode, ErrorKind};

const ISSUER: &str = "https://as.example";
const ENDPOINT: &str = "https://as.example/authorize";

fn request_to(redirect_uri: &str) -> AuthorizationRequest {
    AuthorizationRequest::new(ENDPOINT, "client", redirect_uri, &[], &[], &[], false).unwrap()
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Sends `raw` as a browser would and reads the whole answer (the listener closes).
async fn send(addr: SocketAddr, raw: &[u8]) -> String {
    send_and_shut(addr, raw, false).await
}

/// Sends `raw`, shutting the sending side down after it if `shut`, and reads the whole answer.
async fn send_and_shut(addr: SocketAddr, raw: &[u8], shut: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    if shut {
        // A head that never ends would otherwise keep the connection open until its timeout.
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the listener answers in time")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\r\n").into_bytes()
}

fn status_of(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn loopback_receives_the_redirect_and_ignores_the_rest() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(
        redirect.redirect_uri(),
        format!("http://127.0.0.1:{}/callback", addr.port())
    );
    let request = request_to(redirect.redirect_uri());
    let state = request.state().to_owned();
    let other_state = request_to(redirect.redirect_uri()).state().to_owned();

    let browser = tokio::spawn(async move {
        let favicon = send(addr, &get("/favicon.ico")).await;
        let wrong = send(
            addr,
            &get(&format!("/callback?code=evil&state={other_state}")),
        )
        .await;
        let stateless = send(addr, &get("/callback?code=evil")).await;
        let right = send(
            addr,
            &get(&format!(
                "/callback?code=the-code&state={state}&iss={}",
                enc(ISSUER)
            )),
        )
        .await;
        (favicon, wrong, stateless, right)
    });
    let response = redirect
        .receive(&request, Some(ISSUER), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.code(), "the-code");
    assert_eq!(response.issuer(), Some(ISSUER));

    let (favicon, wrong, stateless, right) = browser.await.unwrap();
    assert_eq!(status_of(&favicon), "HTTP/1.1 404 Not Found");
    assert_eq!(status_of(&wrong), "HTTP/1.1 400 Bad Request");
    assert!(wrong.contains("does not belong to the sign-in in progress"));
    assert_eq!(status_of(&stateless), "HTTP/1.1 400 Bad Request");
    assert_eq!(status_of(&right), "HTTP/1.1 200 OK");
    assert!(right.contains("\r\nConnection: close\r\n"), "{right}");
    assert!(
        right.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
        "{right}"
    );
    assert!(
        right.contains(
            "<h1>Signed in</h1><p>You are signed in. You can close this window and return to \
             the application.</p>"
        ),
        "{right}"
    );
    let (head, body) = right.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(body.starts_with("<!DOCTYPE html>"));
}

#[tokio::test]
async fn loopback_refuses_bad_requests_and_keeps_waiting() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    let request = request_to(redirect.redirect_uri());
    let state = request.state().to_owned();

    let browser = tokio::spawn(async move {
        // An idle connection (a speculative preconnect) must not block the others.
        let idle = TcpStream::connect(addr).await.unwrap();
        let mut huge = format!("GET /callback?code=c&state={state}&pad=").into_bytes();
        huge.extend_from_slice(&[b'a'; 9 * 1024]);
        huge.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let mut huge_header = get("/favicon.ico");
        huge_header.truncate(huge_header.len() - 2);
        huge_header
            .extend_from_slice(format!("X-Big: {}\r\n\r\n", "b".repeat(8 * 1024)).as_bytes());
        let answers = vec![
            send(addr, &huge).await,
            send(addr, &huge_header).await,
            send(addr, b"garbage\r\n\r\n").await,
            send(addr, b"GET /callback HTTP/2.0\r\n\r\n").await,
            send(addr, b"GET  /callback HTTP/1.1\r\n\r\n").await,
            send(addr, b"GET http://127.0.0.1/callback HTTP/1.1\r\n\r\n").await,
            send(addr, b"\xff\xfe /callback HTTP/1.1\r\n\r\n").await,
            send(
                addr,
                format!("POST /callback?code=c&state={state} HTTP/1.1\r\n\r\n").as_bytes(),
            )
            .await,
            send(addr, &get("/callback/?code=c")).await,
            send(addr, &get("/callback")).await,
        ];
        // Closed before sending anything, and closed mid-head: nothing ends the wait.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /callback?code=c&st").await.unwrap();
        drop(half);
        let right = send(
            addr,
            format!("GET /callback?code=c0de&state={state} HTTP/1.0\n\n").as_bytes(),
        )
        .await;
        drop(idle);
        (answers, right)
    });
    let response = redirect
        .receive(&request, None, Duration::from_secs(8))
        .await
        .unwrap();
    assert_eq!(response.code(), "c0de");

    let (answers, right) = browser.await.unwrap();
    let statuses: Vec<_> = answers.iter().map(|a| status_of(a)).collect();
    assert_eq!(
        statuses,
        [
            // A head over 8 KiB, in its request line or in a header.
            "HTTP/1.1 431 Request Header Fields Too Large",
            "HTTP/1.1 431 Request Header Fields Too Large",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 405 Method Not Allowed",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 400 Bad Request",
        ]
    );
    assert!(answers[7].contains("\r\nAllow: GET\r\n"));
    // An HTTP/1.0 request is answered in HTTP/1.0.
    assert_eq!(status_of(&right), "HTTP/1.0 200 OK");
}

#[tokio::test]
async fn loopback_reports_the_server_error_escaped() {
    let redirect = LoopbackRedirect::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)), "/oauth/done")
        .await
        .unwrap();
    let addr = redirect.local_addr();
    assert_eq!(
        redirect.redirect_uri(),
        format!("http://127.0.0.1:{}/oauth/done", addr.port())
    );
    let request = request_to(redirect.redirect_uri());
    let target = format!(
        "/oauth/done?error=access_denied&error_description={}&state={}",
        enc("<script>alert('x')</script> & no"),
        request.state()
    );
    let browser = tokio::spawn(async move { send(addr, &get(&target)).await });
    let err = redirect
        .receive(&request, None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authorization);
    assert_eq!(err.code(), Some(&ErrorCode::AccessDenied));

    let answer = browser.await.unwrap();
    assert_eq!(status_of(&answer), "HTTP/1.1 400 Bad Request");
    assert!(answer.contains("access_denied"), "{answer}");
    assert!(!answer.contains("<script>"), "{answer}");
    assert!(
        answer.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; no"),
        "{answer}"
    );
}

#[tokio::test]
async fn loopback_with_the_right_state_but_no_code_ends_the_wait() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    let request = request_to(redirect.redirect_uri());
    let target = format!(
        "/callback?state={}&iss=https%3A%2F%2Fevil.example",
        request.state()
    );
    let browser = tokio::spawn(async move { send(addr, &get(&target)).await });
    let err = redirect
        .receive(&request, Some(ISSUER), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Callback);
    assert!(err.to_string().contains("issuer does not match"), "{err}");
    assert_eq!(
        status_of(&browser.await.unwrap()),
        "HTTP/1.1 400 Bad Request"
    );
}

#[tokio::test]
async fn loopback_times_out_without_a_browser() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    let request = request_to(redirect.redirect_uri());
    // An idle connection does not keep the wait alive past its timeout either.
    let _idle = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let err = redirect
        .receive(&request, None, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Callback);
    assert!(
        err.to_string().contains("no redirect within 200ms"),
        "{err}"
    );
    // The listener is closed once the wait is over.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn loopback_binding_rules() {
    let err = LoopbackRedirect::bind_to(SocketAddr::from(([0, 0, 0, 0], 0)), "/cb")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = LoopbackRedirect::bind_to(SocketAddr::from(([192, 168, 1, 1], 0)), "/cb")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    for path in ["", "cb", "/cb?x=1", "/cb#x", "/c b", "/cé", "/cb\r\n"] {
        let err = LoopbackRedirect::bind_to(SocketAddr::from(([127, 0, 0, 1], 0)), path)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{path:?}");
    }
    let redirect = LoopbackRedirect::bind().await.unwrap();
    // The port is taken.
    let err = LoopbackRedirect::bind_to(redirect.local_addr(), "/callback")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("cannot listen on loopback"),
        "{err}"
    );
    let printed = format!("{redirect:?}");
    assert!(printed.contains(redirect.redirect_uri()), "{printed}");
    // IPv6 loopback, where the system has it.
    if let Ok(v6) = LoopbackRedirect::bind_to("[::1]:0".parse().unwrap(), "/cb").await {
        assert_eq!(
            v6.redirect_uri(),
            format!("http://[::1]:{}/cb", v6.local_addr().port())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn loopback_drops_a_connection_that_does_not_send_its_head_in_time() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    let request = request_to(redirect.redirect_uri());
    let target = format!("/callback?code=c0de&state={}", request.state());
    let browser = tokio::spawn(async move {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /callback?code=c&st").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        // Closed without an answer: hyper has nothing to say to a head that never ended.
        let _ = slow.read_to_end(&mut answer).await;
        let waited = started.elapsed();
        (answer, waited, send(addr, &get(&target)).await)
    });
    let response = redirect
        .receive(&request, None, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(response.code(), "c0de");
    let (answer, waited, right) = browser.await.unwrap();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(waited >= CONNECTION_TIMEOUT, "{waited:?}");
    assert!(
        waited < CONNECTION_TIMEOUT + DRAIN_TIMEOUT * 2,
        "{waited:?}"
    );
    assert_eq!(status_of(&right), "HTTP/1.1 200 OK");
}

// --- No panics -----------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn no_panic_on_any_request_head() {
    let redirect = LoopbackRedirect::bind().await.unwrap();
    let addr = redirect.local_addr();
    let request = request_to(redirect.redirect_uri());
    let target = format!(
        "/callback?code=c%C3%A9de&state={}&error_description=%E2%82%AC%ZZ+x",
        request.state()
    );
    let alphabet = b"=&%+?#;codestaeiru_ \r\n\xc3\xa90123456789ABCDEFxyzGET/HTTP1.\x00\xff";
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut heads = Vec::new();
    while heads.len() < 300 {
        let len = (rng.next() % 96) as usize;
        let case: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if r & 3 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        // Random bytes after the redirect path, and as a whole request line.
        let mut head = b"GET /callback?".to_vec();
        head.extend_from_slice(&case);
        head.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        heads.push(head);
        let mut head = case;
        head.extend_from_slice(b"\r\n\r\n");
        heads.push(head);
    }
    let browser = tokio::spawn(async move {
        let mut answers = Vec::new();
        for head in &heads {
            answers.push(send_and_shut(addr, head, true).await);
        }
        (answers, send(addr, &get(&target)).await)
    });
    let response = redirect
        .receive(&request, None, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(response.code(), "céde");
    let (answers, right) = browser.await.unwrap();
    assert_eq!(status_of(&right), "HTTP/1.1 200 OK");
    // Every random head was refused, by hyper or by the listener, and none ended the wait.
    let mut statuses = std::collections::BTreeMap::<&str, usize>::new();
    for answer in &answers {
        *statuses.entry(status_of(answer)).or_default() += 1;
    }
    for status in statuses.keys() {
        assert!(
            [
                "",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 404 Not Found",
                "HTTP/1.1 405 Method Not Allowed",
                "HTTP/1.0 400 Bad Request",
                "HTTP/1.0 404 Not Found",
                "HTTP/1.0 405 Method Not Allowed",
            ]
            .contains(status),
            "{statuses:?}"
        );
    }
    assert!(statuses["HTTP/1.1 400 Bad Request"] > 100, "{statuses:?}");
}
