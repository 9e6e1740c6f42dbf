use super::*;
use crate::oauth2::ErrorKind;

const ISSUER: &str = "https://as.example";
const ENDPOINT: &str = "https://as.example/authorize";

fn request_to(redirect_uri: &str) -> AuthorizationRequest {
    AuthorizationRequest::new(ENDPOINT, "client", redirect_uri, &[], &[], &[], false).unwrap()
}

fn request() -> AuthorizationRequest {
    request_to("http://127.0.0.1:8000/callback")
}

fn build(endpoint: &str, allow_insecure: bool) -> Result<AuthorizationRequest, Error> {
    AuthorizationRequest::new(
        endpoint,
        "c",
        "http://127.0.0.1/cb",
        &[],
        &[],
        &[],
        allow_insecure,
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn query_of(url: &str) -> Vec<(String, String)> {
    let (_, query) = url.split_once('?').unwrap();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn values<'a>(params: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    params
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

// --- The authorization request ----------------------------------------------------------

#[test]
fn url_carries_every_parameter() {
    let request = AuthorizationRequest::new(
        ENDPOINT,
        "my client",
        "http://127.0.0.1:8000/callback",
        &strings(&["openid", "read:all", "a&b=c"]),
        &strings(&["https://api.example/", "https://other.example/x?y=z"]),
        &[
            ("prompt".into(), "consent".into()),
            ("login_hint".into(), "ü@x+y".into()),
        ],
        false,
    )
    .unwrap();
    let url = request.url();
    assert!(url.starts_with("https://as.example/authorize?response_type=code&client_id="));
    assert!(
        url.contains("&scope=openid%20read%3Aall%20a%26b%3Dc&"),
        "{url}"
    );
    assert!(!url.contains('+') && !url.contains(' '), "{url}");

    let params = query_of(url);
    assert_eq!(values(&params, "response_type"), ["code"]);
    assert_eq!(values(&params, "client_id"), ["my client"]);
    assert_eq!(
        values(&params, "redirect_uri"),
        ["http://127.0.0.1:8000/callback"]
    );
    assert_eq!(values(&params, "scope"), ["openid read:all a&b=c"]);
    assert_eq!(values(&params, "state"), [request.state()]);
    assert_eq!(
        values(&params, "code_challenge"),
        [request.pkce().challenge()]
    );
    assert_eq!(values(&params, "code_challenge_method"), ["S256"]);
    assert_eq!(
        values(&params, "resource"),
        ["https://api.example/", "https://other.example/x?y=z"]
    );
    assert_eq!(values(&params, "prompt"), ["consent"]);
    assert_eq!(values(&params, "login_hint"), ["ü@x+y"]);
    assert_eq!(params.len(), 11);
    assert!(!url.contains(request.pkce().verifier()));
    assert_eq!(request.redirect_uri(), "http://127.0.0.1:8000/callback");
    assert_eq!(request.state().len(), 43);
}

#[test]
fn empty_scopes_are_left_out_and_requests_differ() {
    let a = request();
    let b = request();
    assert!(values(&query_of(a.url()), "scope").is_empty());
    assert_ne!(a.state(), b.state());
    assert_ne!(a.pkce().verifier(), b.pkce().verifier());
    let empty = AuthorizationRequest::new(ENDPOINT, "c", "x:/cb", &strings(&[""]), &[], &[], false)
        .unwrap();
    assert!(values(&query_of(empty.url()), "scope").is_empty());
}

#[test]
fn endpoint_with_a_query_gets_more_parameters() {
    let request = build("https://as.example/authorize?tenant=a%20b", false).unwrap();
    assert!(request
        .url()
        .starts_with("https://as.example/authorize?tenant=a%20b&response_type=code&"));
    assert_eq!(values(&query_of(request.url()), "tenant"), ["a b"]);
    for endpoint in [
        "https://as.example/authorize?",
        "https://as.example/authorize?x=1&",
    ] {
        let request = build(endpoint, false).unwrap();
        assert!(request
            .url()
            .starts_with(&format!("{endpoint}response_type=code&")));
    }
}

#[test]
fn endpoint_must_be_https_unless_loopback_or_allowed() {
    for ok in [
        "https://as.example/authorize",
        "HTTPS://as.example",
        "https://as.example:8443/a/b",
        "http://127.0.0.1:8080/authorize",
        "http://127.1.2.3/authorize",
        "http://[::1]:8080/authorize",
        "http://localhost/authorize",
        "http://LOCALHOST:1234",
    ] {
        assert!(build(ok, false).is_ok(), "{ok}");
    }
    for remote in [
        "http://as.example/authorize",
        "http://10.0.0.1/a",
        "http://[::2]/a",
        "http://localhost.evil.example/a",
    ] {
        let err = build(remote, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{remote}");
        assert!(err.to_string().contains("https"), "{err}");
        assert!(build(remote, true).is_ok(), "{remote}");
    }
    for garbage in [
        "",
        "not a url",
        "as.example/authorize",
        "/authorize",
        "as.example:443",
        "ftp://as.example/authorize",
        "https://as.example/authorize#frag",
        "https://",
        "https://exa mple.com/",
        "http://[::1/",
    ] {
        for allow_insecure in [false, true] {
            let err = build(garbage, allow_insecure).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{garbage}");
        }
    }
}

#[test]
fn reserved_or_empty_extra_parameters_and_empty_ids_are_refused() {
    for name in RESERVED_PARAMS.iter().copied().chain([""]) {
        let extra = [(name.to_string(), "x".to_string())];
        let err =
            AuthorizationRequest::new(ENDPOINT, "c", "x:/cb", &[], &[], &extra, false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{name}");
    }
    let err = AuthorizationRequest::new(ENDPOINT, "", "x:/cb", &[], &[], &[], false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = AuthorizationRequest::new(ENDPOINT, "c", "", &[], &[], &[], false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

// --- The authorization response --------------------------------------------------------

#[test]
fn redirect_with_code_state_and_issuer() {
    let request = request();
    let state = request.state();
    let query = format!("code=the%2Bcode&state={state}&iss={}", enc(ISSUER));
    let response = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap();
    assert_eq!(response.code(), "the+code");
    assert_eq!(response.issuer(), Some(ISSUER));
    // A leading `?` is accepted, and unknown parameters are ignored.
    let query = format!("?session_state=x&code=c&state={state}");
    let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
    assert_eq!(response.code(), "c");
    assert_eq!(response.issuer(), None);
    // Without an expected issuer, any `iss` is kept as it is.
    let query = format!("code=c&state={state}&iss=whoever");
    let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
    assert_eq!(response.issuer(), Some("whoever"));
}

#[test]
fn issuer_must_match_when_present() {
    let request = request();
    let state = request.state();
    for iss in [
        "https://evil.example",
        "https://as.example/",
        "HTTPS://as.example",
        "",
    ] {
        let query = format!("code=c&state={state}&iss={}", enc(iss));
        let err = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback);
        assert!(err.to_string().contains("issuer does not match"), "{err}");
        assert!(!err.to_string().contains("code=c"));
    }
    // Also on error responses (RFC 9207 §2.4): the error may not come from our server.
    let query = format!("error=access_denied&state={state}&iss=https%3A%2F%2Fevil.example");
    let err = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Callback);
    // A server that does not implement RFC 9207 sends no `iss`.
    let query = format!("code=c&state={state}");
    let response = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap();
    assert_eq!(response.code(), "c");
    assert_eq!(response.issuer(), None);
}

#[test]
fn state_must_match_and_be_present() {
    let request = request();
    let other = request_to("http://127.0.0.1:8000/callback");
    let err = AuthorizationResponse::from_query(
        &format!("code=c&state={}", other.state()),
        &request,
        None,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Callback);
    assert!(
        err.to_string()
            .contains("state does not match: possible CSRF"),
        "{err}"
    );
    for query in ["code=c", "code=c&state=", "code=c&State=x"] {
        let err = AuthorizationResponse::from_query(query, &request, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
        assert!(err.to_string().contains("state"), "{err}");
    }
    // A mismatching state wins over an error: it was not our request.
    let query = format!("error=access_denied&state={}", other.state());
    let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Callback);
}

#[test]
fn error_redirect_is_an_authorization_error() {
    let request = request();
    let query = format!(
        "error=access_denied&error_description=The+user+said+no&error_uri={}&state={}",
        enc("https://as.example/help"),
        request.state()
    );
    let err = AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authorization);
    assert_eq!(err.code(), Some(&ErrorCode::AccessDenied));
    assert_eq!(err.description(), Some("The user said no"));
    assert_eq!(err.uri(), Some("https://as.example/help"));
    // Without state too: the error is reported.
    let err = AuthorizationResponse::from_query("error=server_error", &request, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authorization);
    assert_eq!(err.code(), Some(&ErrorCode::ServerError));
    assert_eq!(err.description(), None);
    let err =
        AuthorizationResponse::from_query("error=weird_one&code=c", &request, None).unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Other("weird_one".into())));
}

#[test]
fn code_must_be_present_once() {
    let request = request();
    let state = request.state();
    for query in [
        format!("state={state}"),
        format!("state={state}&code="),
        format!("state={state}&code"),
    ] {
        let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
        assert!(err.to_string().contains("no code in the redirect"), "{err}");
    }
    for query in [
        format!("state={state}&code=a&code=b"),
        format!("state={state}&state={state}&code=a"),
        format!("state={state}&code=a&iss=x&iss=x"),
    ] {
        let err = AuthorizationResponse::from_query(&query, &request, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Callback, "{query}");
        assert!(err.to_string().contains("more than once"), "{err}");
    }
}

#[test]
fn debug_shows_no_secret() {
    let request = request();
    let verifier = request.pkce().verifier().to_owned();
    let query = format!("code=SECRET-CODE-123&state={}&iss=x", request.state());
    let response = AuthorizationResponse::from_query(&query, &request, None).unwrap();
    let printed = format!(
        "{:?} {:?} {:?} {:#?}",
        request.pkce(),
        request,
        response,
        response
    );
    assert!(!printed.contains(&verifier), "{printed}");
    assert!(!printed.contains("SECRET-CODE-123"), "{printed}");
    assert!(printed.contains("<redacted>"));
    assert!(printed.contains(request.pkce().challenge()));
    assert!(printed.contains(request.state()));
    let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
    assert!(!format!("{pkce:?}").contains("dBjftJeZ4CVP"));
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

#[test]
fn no_panic_on_any_query() {
    let request = request();
    let valid = format!(
        "code=c%C3%A9de&state={}&iss={}&error_description=%E2%82%AC%ZZ+x",
        request.state(),
        enc(ISSUER)
    );
    let mut cases: Vec<Vec<u8>> = (0..=valid.len())
        .map(|n| valid.as_bytes()[..n].to_vec())
        .collect();
    let alphabet = b"=&%+?#;codestaeiru_ \r\n\xc3\xa90123456789ABCDEFxyzGET/HTTP1.\x00\xff";
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    while cases.len() < 2_000 {
        let len = (rng.next() % 96) as usize;
        let case = (0..len)
            .map(|_| {
                let r = rng.next();
                if r & 3 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        cases.push(case);
    }
    assert_eq!(cases.len(), 2_000);
    let mut accepted = 0;
    for case in &cases {
        let query = String::from_utf8_lossy(case);
        if AuthorizationResponse::from_query(&query, &request, Some(ISSUER)).is_ok() {
            accepted += 1;
            assert!(carries_state(&query, &request), "{query}");
        }
        let _ = AuthorizationResponse::from_query(&query, &request, None);
        let _ = carries_state(&query, &request);
        let _ = Pkce::from_verifier(query.into_owned());
    }
    // Only the prefixes that include the whole state (and a code) pass.
    assert!(accepted > 0);
    assert!(accepted < valid.len());
}
