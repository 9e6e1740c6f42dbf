use super::super::error::ErrorKind;
use super::*;
use crate::Expiry;
use http::HeaderValue;

fn parse_with(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &[u8],
) -> Result<TokenResponse, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, HeaderValue::from_static(value));
    }
    parse_token_response(
        StatusCode::from_u16(status).unwrap(),
        &map,
        body,
        &Redactions::none(),
        None,
    )
}

fn parse(status: u16, body: &str) -> Result<TokenResponse, Error> {
    parse_with(
        status,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

fn ok(body: &str) -> TokenResponse {
    parse(200, body).expect("a token response")
}

fn err(status: u16, body: &str) -> Error {
    parse(status, body).expect_err("an error")
}

fn expires(value: &str) -> Result<Option<Duration>, Error> {
    parse(
        200,
        &format!(r#"{{"access_token":"t","expires_in":{value}}}"#),
    )
    .map(|response| response.expires_in())
}

const CENTURY: Duration = MAX_EXPIRES_IN;

#[test]
fn standard_response() {
    // RFC 6749 §5.1
    let response = ok(r#"{
        "access_token":"2YotnFZFEjr1zCsicMWpAA",
        "token_type":"example",
        "expires_in":3600,
        "refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA",
        "example_parameter":"example_value"
    }"#);
    assert_eq!(response.access_token().secret(), "2YotnFZFEjr1zCsicMWpAA");
    assert_eq!(response.token_type(), Some("example"));
    assert_eq!(response.expires_in(), Some(Duration::from_secs(3600)));
    assert_eq!(
        response.refresh_token().map(RefreshToken::secret),
        Some("tGzv3JOkF0XG5Qx2TlKWIA")
    );
    assert_eq!(response.scope(), None);
    assert_eq!(response.extra().len(), 1);
    assert_eq!(
        response.extra().get("example_parameter"),
        Some(&Value::from("example_value"))
    );
    let debug = format!("{response:?}");
    assert!(!debug.contains("2YotnFZFEjr1zCsicMWpAA"), "{debug}");
    assert!(!debug.contains("tGzv3JOkF0XG5Qx2TlKWIA"), "{debug}");
    assert!(!debug.contains("example_value"), "{debug}");
    assert!(debug.contains("example_parameter"), "{debug}");
}

#[test]
fn expires_in_numbers() {
    let cases = [
        ("3600", 3_600_000),
        (r#""3599""#, 3_599_000),
        (r#"" 60 ""#, 60_000),
        ("0", 0),
        (r#""0""#, 0),
        ("-5", 0),
        (r#""-5""#, 0),
        ("-0.5", 0),
        ("3599.5", 3_599_500),
        (r#""0.0015""#, 2),
        ("1e3", 1_000_000),
    ];
    for (value, millis) in cases {
        assert_eq!(
            expires(value).ok(),
            Some(Some(Duration::from_millis(millis))),
            "{value}"
        );
    }
}

#[test]
fn expires_in_missing_or_null() {
    assert_eq!(ok(r#"{"access_token":"t"}"#).expires_in(), None);
    assert_eq!(expires("null").ok(), Some(None));
}

#[test]
fn expires_in_huge_saturates() {
    for value in [
        "1e300",
        r#""1e300""#,
        r#""1e400""#,
        "18446744073709551615",
        "18446744073709551616",
        r#""18446744073709551616""#,
        "123456789012345678901234567890",
        "3155760001",
    ] {
        assert_eq!(expires(value).ok(), Some(Some(CENTURY)), "{value}");
    }
    // Just below the cap is kept.
    assert_eq!(
        expires("3155759999").ok(),
        Some(Some(Duration::from_secs(3_155_759_999)))
    );
}

#[test]
fn expires_in_not_a_number() {
    for value in [
        r#""abc""#,
        "true",
        r#""NaN""#,
        r#""nan""#,
        r#""inf""#,
        r#""-infinity""#,
        r#""""#,
        r#""  ""#,
        r#""1e""#,
        r#""1.2.3""#,
        r#""0x10""#,
        r#"{"s":1}"#,
        "[1]",
    ] {
        let error = expires(value).expect_err(value);
        assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{value}");
        assert_eq!(error.status(), Some(StatusCode::OK));
        let description = error.description().unwrap();
        assert!(
            description.starts_with("expires_in is not a number"),
            "{description}"
        );
    }
}

#[test]
fn expires_in_long_value_is_not_echoed_whole() {
    let long = "x".repeat(1000);
    let error = expires(&format!(r#""{long}""#)).unwrap_err();
    let description = error.description().unwrap();
    assert!(description.len() < 100, "{description}");
    assert!(
        description.ends_with("[cut; 1000 bytes in all]"),
        "{description}"
    );
    assert!(!error.to_string().contains(&"x".repeat(40)));
}

#[test]
fn token_type_kept_as_sent() {
    for token_type in ["bearer", "Bearer", "BEARER", "DPoP", "mac"] {
        let response = ok(&format!(
            r#"{{"access_token":"t","token_type":"{token_type}"}}"#
        ));
        assert_eq!(response.token_type(), Some(token_type));
    }
    assert_eq!(ok(r#"{"access_token":"t"}"#).token_type(), None);
    assert_eq!(
        ok(r#"{"access_token":"t","token_type":7}"#).token_type(),
        None
    );
}

#[test]
fn refresh_token_and_scope() {
    let response = ok(r#"{"access_token":"t","refresh_token":"r","scope":"a b"}"#);
    assert_eq!(
        response.refresh_token().map(RefreshToken::secret),
        Some("r")
    );
    assert_eq!(response.scope(), Some("a b"));

    let response = ok(r#"{"access_token":"t","refresh_token":"","scope":""}"#);
    assert!(response.refresh_token().is_none());
    assert_eq!(response.scope(), Some(""));
    assert!(
        response.extra().is_empty(),
        "interpreted fields are not extra"
    );

    let response = ok(r#"{"access_token":"t","refresh_token":null,"scope":null}"#);
    assert!(response.refresh_token().is_none());
    assert_eq!(response.scope(), None);
}

#[test]
fn extra_fields_kept_but_not_debug_printed() {
    let response = ok(r#"{
        "access_token":"t",
        "id_token":"eyJhbGciOiJSUzI1NiJ9.SECRET_ID.sig",
        "vendor":{"nested":{"deep":"SECRET_NESTED"},"n":[1,2]}
    }"#);
    let extra = response.extra();
    assert_eq!(extra.len(), 2);
    assert!(!extra.is_empty());
    assert_eq!(
        extra.get("id_token").and_then(Value::as_str),
        Some("eyJhbGciOiJSUzI1NiJ9.SECRET_ID.sig")
    );
    assert_eq!(
        extra.get("vendor").and_then(|v| v.pointer("/nested/deep")),
        Some(&Value::from("SECRET_NESTED"))
    );
    assert_eq!(extra.get("access_token"), None);
    let mut names: Vec<&str> = extra.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["id_token", "vendor"]);

    for debug in [format!("{extra:?}"), format!("{response:?}")] {
        assert!(
            debug.contains("id_token") && debug.contains("vendor"),
            "{debug}"
        );
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(!debug.contains("nested"), "{debug}");
    }
    assert_eq!(format!("{:?}", ExtraFields::default()), "ExtraFields([])");
}

#[test]
fn form_response_with_content_type() {
    let body = b"access_token=x&token_type=bearer&expires_in=3600&scope=a+b";
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    ] {
        let response = parse_with(200, &[("content-type", content_type)], body).unwrap();
        assert_form(&response);
    }
}

#[test]
fn form_response_without_content_type() {
    let body = b"access_token=x&token_type=bearer&expires_in=3600&scope=a+b\n";
    for headers in [&[][..], &[("content-type", "text/plain")][..]] {
        let response = parse_with(200, headers, body).unwrap();
        assert_form(&response);
    }
}

fn assert_form(response: &TokenResponse) {
    assert_eq!(response.access_token().secret(), "x");
    assert_eq!(response.token_type(), Some("bearer"));
    assert_eq!(response.expires_in(), Some(Duration::from_secs(3600)));
    assert_eq!(response.scope(), Some("a b"));
    assert!(response.extra().is_empty());
}

#[test]
fn form_extra_fields_are_strings() {
    let response = parse_with(200, &[], b"access_token=x&id_token=abc&n=5").unwrap();
    assert_eq!(response.extra().get("id_token"), Some(&Value::from("abc")));
    assert_eq!(response.extra().get("n"), Some(&Value::from("5")));
}

#[test]
fn form_error() {
    let error = parse_with(
        400,
        &[("content-type", "text/plain")],
        b"error=bad_verification_code&error_description=The+code+is+wrong",
    )
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(
        error.code(),
        Some(&ErrorCode::Other("bad_verification_code".into()))
    );
    assert_eq!(error.description(), Some("The code is wrong"));
}

#[test]
fn json_labelled_as_form_still_parses() {
    let response = parse_with(
        200,
        &[("content-type", "application/x-www-form-urlencoded")],
        br#"{"access_token":"x","expires_in":5}"#,
    )
    .unwrap();
    assert_eq!(response.access_token().secret(), "x");
    assert_eq!(response.expires_in(), Some(Duration::from_secs(5)));
}

#[test]
fn byte_order_mark_is_skipped() {
    let response = parse_with(200, &[], b"\xEF\xBB\xBF{\"access_token\":\"x\"}").unwrap();
    assert_eq!(response.access_token().secret(), "x");
}

#[test]
fn oauth_error_400_and_401() {
    // RFC 6749 §5.2
    let error = err(400, r#"{"error":"invalid_request"}"#);
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(error.code(), Some(&ErrorCode::InvalidRequest));
    assert_eq!(error.description(), None);
    assert_eq!(error.uri(), None);
    assert!(!error.is_retryable());

    let error = err(
        401,
        r#"{"error":"invalid_client","error_description":"Client authentication failed",
            "error_uri":"https://example.com/errors/client"}"#,
    );
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(error.code(), Some(&ErrorCode::InvalidClient));
    assert_eq!(error.description(), Some("Client authentication failed"));
    assert_eq!(error.uri(), Some("https://example.com/errors/client"));
    assert!(!error.is_retryable());
    assert!(!error.needs_reauthorization());
}

#[test]
fn oauth_error_with_http_200() {
    let error = err(200, r#"{"error":"invalid_scope","error_description":"no"}"#);
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(error.status(), Some(StatusCode::OK));
    assert_eq!(error.code(), Some(&ErrorCode::InvalidScope));
    // Even when an access token comes along.
    let error = err(200, r#"{"access_token":"SECRET","error":"server_error"}"#);
    assert_eq!(error.code(), Some(&ErrorCode::ServerError));
    assert!(!format!("{error} {error:?}").contains("SECRET"));
}

#[test]
fn null_or_empty_error_is_no_error() {
    let response = ok(r#"{"access_token":"t","error":null}"#);
    assert_eq!(response.access_token().secret(), "t");
    assert!(ok(r#"{"access_token":"t","error":""}"#)
        .extra()
        .get("error")
        .is_some());
    let error = err(400, r#"{"error":null}"#);
    assert_eq!(error.kind(), ErrorKind::Http);
}

#[test]
fn non_string_error_field() {
    let error = err(400, r#"{"error":42}"#);
    assert_eq!(error.code(), Some(&ErrorCode::Other("42".into())));
    let error = err(401, r#"{"error":{"code":401,"message":"denied"}}"#);
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(
        error.code(),
        Some(&ErrorCode::Other(
            r#"{"code":401,"message":"denied"}"#.into()
        ))
    );
    let error = err(
        400,
        r#"{"error":"invalid_request","error_description":["a"]}"#,
    );
    assert_eq!(error.description(), Some(r#"["a"]"#));
}

#[test]
fn invalid_grant_needs_reauthorization() {
    let error = err(400, r#"{"error":"invalid_grant"}"#);
    assert_eq!(error.code(), Some(&ErrorCode::InvalidGrant));
    assert!(error.needs_reauthorization());
    assert!(!error.is_retryable());
}

#[test]
fn unknown_code_is_other() {
    let error = err(400, r#"{"error":"try_later"}"#);
    assert_eq!(error.code(), Some(&ErrorCode::Other("try_later".into())));
    assert!(!error.is_retryable());
    let error = err(503, r#"{"error":"overloaded"}"#);
    assert!(error.is_retryable(), "an unknown code follows the status");
}

#[test]
fn temporarily_unavailable_is_retryable() {
    let error = err(400, r#"{"error":"temporarily_unavailable"}"#);
    assert!(error.is_retryable());
}

#[test]
fn display_has_status_and_code() {
    let text = err(
        400,
        r#"{"error":"invalid_client","error_description":"bad secret"}"#,
    )
    .to_string();
    assert!(text.contains("400"), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(text.contains("bad secret"), "{text}");
    let text = err(400, r#"{"error":"invalid_grant"}"#).to_string();
    assert!(
        text.contains("400") && text.contains("invalid_grant"),
        "{text}"
    );
}

#[test]
fn empty_401() {
    for body in ["", "  \r\n"] {
        let error = parse_with(401, &[], body.as_bytes()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Http);
        assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(error.description(), None);
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("401"));
    }
}

#[test]
fn html_500() {
    let body = format!(
        "<html>\r\n<head><title>500 Internal Server Error</title></head>\n<body>{}</body></html>",
        "x".repeat(500)
    );
    let error = parse_with(500, &[("content-type", "text/html")], body.as_bytes()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Http);
    assert_eq!(error.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(error.is_retryable());
    let hint = error.description().unwrap();
    assert!(hint.starts_with("<html>"), "{hint}");
    assert!(hint.contains("500 Internal Server Error"), "{hint}");
    assert!(!hint.chars().any(char::is_control), "{hint:?}");
    assert!(hint.len() <= HINT_BYTES + 40, "{hint}");
    assert!(
        hint.ends_with(&format!("… [cut; {} bytes in all]", body.len())),
        "{hint}"
    );
}

#[test]
fn json_without_error_on_error_status() {
    let error = err(502, r#"{"message":"upstream failed"}"#);
    assert_eq!(error.kind(), ErrorKind::Http);
    assert!(error.description().unwrap().contains("upstream failed"));
    assert!(error.is_retryable());
}

#[test]
fn hint_of_binary_or_multibyte_body() {
    let error = parse_with(500, &[], &[0xff, 0xfe, 0, 1, b'a']).unwrap_err();
    assert!(!error.description().unwrap().chars().any(char::is_control));
    let body = "é".repeat(1000);
    let error = parse_with(500, &[], body.as_bytes()).unwrap_err();
    let hint = error.description().unwrap();
    assert_eq!(hint.chars().filter(|c| *c == 'é').count(), HINT_BYTES / 2);
}

#[test]
fn service_unavailable_with_retry_after() {
    let error = parse_with(503, &[("retry-after", "7")], b"busy").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Http);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(error.is_retryable());
    assert_eq!(error.description(), Some("busy"));
}

#[test]
fn too_many_requests_with_retry_after() {
    let error = parse_with(429, &[("retry-after", " 120 ")], b"").unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert!(error.is_retryable());
    // Also carried by OAuth errors.
    let error = parse_with(
        429,
        &[("retry-after", "3"), ("content-type", "application/json")],
        br#"{"error":"slow_down"}"#,
    )
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OAuth);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    assert!(error.is_retryable());
}

#[test]
fn retry_after_forms() {
    let of = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        retry_after(&headers)
    };
    assert_eq!(of("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    assert_eq!(of("0"), Some(Duration::ZERO));
    assert_eq!(of("3600"), Some(Duration::from_secs(3600)));
    assert_eq!(of("86400"), Some(MAX_RETRY_AFTER));
    assert_eq!(of("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
    for bad in ["", " ", "-1", "+7", "1.5", "7s", "abc"] {
        assert_eq!(of(bad), None, "{bad:?}");
    }
    assert_eq!(retry_after(&HeaderMap::new()), None);
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_bytes(b"\xff7").unwrap());
    assert_eq!(retry_after(&headers), None);
}

#[test]
fn http_date_retry_after_on_error() {
    let error = parse_with(
        503,
        &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
        b"",
    )
    .unwrap_err();
    assert_eq!(error.retry_after(), None);
    assert!(error.is_retryable());
}

#[test]
fn redirect() {
    for status in [301, 302, 303, 307, 308] {
        let error = parse_with(
            status,
            &[("location", "https://evil.example/")],
            br#"{"access_token":"t"}"#,
        )
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Redirect);
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
        assert!(!error.is_retryable());
    }
}

#[test]
fn json_not_an_object() {
    for body in ["[]", r#"["access_token"]"#, "\"t\"", "42", "null", "true"] {
        let error = err(200, body);
        assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{body}");
        assert_eq!(error.status(), Some(StatusCode::OK));
    }
}

#[test]
fn unreadable_success_body() {
    for body in ["", "  ", "<html>ok</html>", "{\"access_token\":"] {
        let error = err(200, body);
        assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{body}");
    }
    // The body of a 2xx might hold a token: it is never echoed.
    let error = err(200, r#"{"access_token":"SECRET""#);
    assert!(!format!("{error} {error:?}").contains("SECRET"));
}

#[test]
fn missing_or_empty_access_token() {
    for (body, why) in [
        (r#"{}"#, "no access_token"),
        (
            r#"{"token_type":"bearer","expires_in":3600}"#,
            "no access_token",
        ),
        (r#"{"access_token":""}"#, "access_token is empty"),
        (r#"{"access_token":null}"#, "no access_token"),
        (
            r#"{"access_token":42}"#,
            "access_token is a JSON number, not a string",
        ),
        (
            r#"{"access_token":["t"]}"#,
            "access_token is a JSON array, not a string",
        ),
    ] {
        let error = err(200, body);
        assert_eq!(error.kind(), ErrorKind::InvalidResponse, "{body}");
        assert_eq!(error.description(), Some(why), "{body}");
    }
    let error = parse_with(200, &[], b"access_token=&token_type=bearer").unwrap_err();
    assert_eq!(error.description(), Some("access_token is empty"));
}

#[test]
fn access_token_characters_not_checked() {
    let response = ok(r#"{"access_token":"a b\nc\u0000"}"#);
    assert_eq!(response.access_token().secret(), "a b\nc\u{0}");
}

#[test]
fn secret_never_in_errors() {
    let bodies = [
        r#"{"access_token":"SECRET","expires_in":"abc"}"#,
        r#"{"access_token":"SECRET","expires_in":true}"#,
        r#"{"access_token":"SECRET","refresh_token":"SECRET","error":"x"}"#,
        r#"{"access_token":"SECRET","#,
        r#"["SECRET"]"#,
    ];
    for status in [200, 201] {
        for body in bodies {
            let error = err(status, body);
            let text = format!("{error} {error:?}");
            assert!(!text.contains("SECRET"), "{text}");
        }
    }
    let text = format!(
        "{:?}",
        ok(r#"{"access_token":"SECRET","refresh_token":"SECRET"}"#)
    );
    assert!(!text.contains("SECRET"), "{text}");
}

#[test]
fn into_token_carries_everything() {
    let token = ok(r#"{
        "access_token":"at","token_type":"Bearer","expires_in":"3599.5",
        "refresh_token":"rt","scope":"read write","id_token":"idt"
    }"#)
    .into_token();
    assert_eq!(token.access_token().secret(), "at");
    assert_eq!(token.token_type(), Some("Bearer"));
    assert_eq!(
        token.expiry(),
        Some(Expiry::In(Duration::from_millis(3_599_500)))
    );
    assert_eq!(token.refresh_token().map(RefreshToken::secret), Some("rt"));
    assert_eq!(token.scope(), Some("read write"));
    let extra = token.extensions().get::<ExtraFields>().unwrap();
    assert_eq!(extra.get("id_token"), Some(&Value::from("idt")));
    assert_eq!(extra.len(), 1);
    assert!(!format!("{token:?}").contains("at\""));
}

#[test]
fn into_token_minimal() {
    let token = ok(r#"{"access_token":"at"}"#).into_token();
    assert_eq!(token.expiry(), None);
    assert_eq!(token.token_type(), None);
    assert!(token.refresh_token().is_none());
    assert_eq!(token.scope(), None);
    assert!(token.extensions().get::<ExtraFields>().unwrap().is_empty());
}

fn check_no_panic(body: &[u8]) {
    for status in [200, 400, 500] {
        for headers in [
            &[][..],
            &[("content-type", "application/x-www-form-urlencoded")][..],
            &[("retry-after", "5")][..],
        ] {
            // Whatever comes back is fine; it must not panic, and an error must print.
            match parse_with(status, headers, body) {
                Err(error) => drop(format!("{error} {error:?}")),
                Ok(response) => {
                    drop(format!("{response:?}"));
                    drop(response.into_token());
                }
            }
        }
    }
}

#[test]
fn no_panic_on_prefixes() {
    let samples: [&[u8]; 5] = [
        br#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example","expires_in":3600.25,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA","scope":"a b","id_token":{"x":[1,2,{"y":null}]}}"#,
        br#"{"error":"invalid_grant","error_description":"Bad \u00e9 \ud83d\ude00","error_uri":"https://e.example/"}"#,
        b"access_token=x%20y&token_type=bearer&expires_in=1e300&scope=a+b&error=%ZZ",
        "<html><body>Fehler \u{e9}\u{1F600}</body></html>".as_bytes(),
        b"\xEF\xBB\xBF{\"access_token\":\"t\",\"expires_in\":\"-18446744073709551616\"}",
    ];
    for sample in samples {
        for end in 0..=sample.len() {
            check_no_panic(&sample[..end]);
        }
    }
}

#[test]
fn no_panic_on_random_bytes() {
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Half the cases draw from bytes that make JSON and form data likely to go deep.
    const ALPHABET: &[u8] = b"{}[]\":,=&+%0123456789.eE- _access_tokenexpires_inerror\\u";
    for case in 0..2_000 {
        let len = (next() % 96) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if case % 2 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r % ALPHABET.len() as u64) as usize]
                }
            })
            .collect();
        check_no_panic(&body);
    }
}
