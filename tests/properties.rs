//! Hostile input: property tests for the token-response parser, the `WWW-Authenticate` parser
//! and header stamping. Whatever comes in, the answer is `Ok` or a typed error, never a panic,
//! and a request never reaches the inner service without its token. Also: the copy kept for a
//! replay gives back the request's head as it came, whatever its method, URI and headers.
//!
//! Failing cases are not persisted to files (the suite must not write into the source tree):
//! proptest prints the minimal input, which then becomes a plain test below.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::WWW_AUTHENTICATE;
use http::header::{HeaderName, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_bearer::challenge;
use tower_bearer::oauth2::{ErrorKind as OAuthErrorKind, TokenResponse};
use tower_bearer::{BearerAuthLayer, ErrorKind, Placement, StaticToken};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Token responses
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "access_token",
    "expires_in",
    "token_type",
    "error",
    "error_description",
    "error_uri",
    "refresh_token",
    "scope",
    "id_token",
];

/// Numbers as text, including ones no f64 or u64 holds.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "1e308",
            "1.7976931348623157e308",
            "4.9e-324",
            "1e-400",
            "-0",
            "0.0",
            "-0.0",
            "1E+2",
            "3599.9999",
            "0.0005",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890123456789012345678901234567890",
            "3155760000",
            "3155760001",
        ])
        .prop_map(str::to_owned),
        "-?(0|[1-9][0-9]{0,39})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
    ]
}

/// String values, including numbers as strings (`"3600"`, `" 60 "`, `"1e400"`, `"NaN"`).
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        json_number().prop_map(|n| serde_json::to_string(&n).unwrap()),
        "[0-9eE+. -]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop::sample::select(vec![
            "\"\"",
            "\"NaN\"",
            "\"inf\"",
            "\"-inf\"",
            "\"infinity\"",
            "\" 60 \"",
            "\"+7\"",
            "\"1e\"",
            "\"--1\"",
            "\"1.2.3\"",
            "\".\"",
            "\"e\"",
            "\"bearer\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"a\\r\\nb\"",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(|k| serde_json::to_string(k).unwrap()),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]
}

/// Any JSON value, as text.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((json_key(), inner), 0..5).prop_map(|fields| {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A JSON object such as a token endpoint would answer, valid or nearly so.
fn json_object() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((json_key(), json_value()), 0..8),
        any::<bool>(),
        prop_oneof![4 => Just(None), 1 => any::<usize>().prop_map(Some)],
        "[ \t\r\n]{0,2}",
    )
        .prop_map(|(fields, bom, cut, ws)| {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{ws}{k}{ws}:{ws}{v}"))
                .collect();
            let mut body = Vec::new();
            if bom {
                body.extend_from_slice(b"\xEF\xBB\xBF");
            }
            body.extend_from_slice(format!("{ws}{{{}}}{ws}", fields.join(",")).as_bytes());
            // Sometimes truncated, as a connection cut mid-answer would.
            if let Some(cut) = cut {
                body.truncate(cut % (body.len() + 1));
            }
            body
        })
}

/// A form-encoded answer (`text/plain` or `application/x-www-form-urlencoded`).
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[ -~]{0,8}",
    ];
    let value = prop_oneof!["[ -~]{0,16}", any::<String>(), json_number()];
    (
        prop::collection::vec((key, value, any::<bool>()), 0..6),
        "[ \r\n]{0,2}",
    )
        .prop_map(|(pairs, trailer)| {
            let pairs: Vec<String> = pairs
                .iter()
                .map(|(k, v, encode)| {
                    if *encode {
                        form_urlencoded::Serializer::new(String::new())
                            .append_pair(k, v)
                            .finish()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            format!("{}{trailer}", pairs.join("&")).into_bytes()
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..200),
        4 => json_object(),
        1 => json_value().prop_map(String::into_bytes),
        2 => form_body(),
    ]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "APPLICATION/X-WWW-FORM-URLENCODED ; charset=UTF-8",
            "text/plain",
            "text/html",
            "",
            "0",
            "120",
            "18446744073709551616",
            "+7",
            " 5 ",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ])
        .prop_map(HeaderValue::from_static),
        "[0-9]{0,30}".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
        prop::collection::vec(any::<u8>(), 0..20)
            .prop_filter_map("a header value", |b| HeaderValue::from_bytes(&b).ok()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop::sample::select(vec![CONTENT_TYPE, RETRY_AFTER]);
    prop::collection::vec((name, header_value()), 0..4).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

fn check_token_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) {
    match TokenResponse::parse(status, headers, body) {
        Ok(response) => {
            assert!(
                status.is_success(),
                "{status}: a token from a non-2xx answer"
            );
            assert!(!response.access_token().secret().is_empty());
            if let Some(lifetime) = response.expires_in() {
                assert!(lifetime <= Duration::from_secs(36_525 * 24 * 60 * 60));
            }
            let _ = format!("{response:?}");
            let secret = response.access_token().secret().to_owned();
            let token = response.into_token();
            assert_eq!(token.access_token().secret(), secret);
        }
        Err(error) => {
            if status.is_redirection() {
                assert_eq!(error.kind(), OAuthErrorKind::Redirect);
            }
            if let Some(retry_after) = error.retry_after() {
                assert!(retry_after <= Duration::from_secs(3600));
            }
            let _ = (
                format!("{error}"),
                format!("{error:?}"),
                error.is_retryable(),
            );
            let _ = (
                error.status(),
                error.code(),
                error.description(),
                error.uri(),
            );
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn token_response_never_panics(
        status in 100u16..=599,
        headers in headers(),
        body in body(),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        check_token_response(status, &headers, &body);
    }

    #[test]
    fn token_response_success_keeps_the_token(
        token in "[ -~]{1,40}",
        expires_in in json_number(),
        form in any::<bool>(),
    ) {
        // A well-formed success: the token comes back as sent, and `expires_in` never fails it.
        let mut headers = HeaderMap::new();
        let body = if form {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            form_urlencoded::Serializer::new(String::new())
                .append_pair("access_token", &token)
                .append_pair("expires_in", &expires_in)
                .finish()
        } else {
            format!(
                r#"{{"access_token":{},"expires_in":{expires_in},"token_type":"Bearer"}}"#,
                serde_json::to_string(&token).unwrap()
            )
        };
        let response = TokenResponse::parse(StatusCode::OK, &headers, body.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{body:?}: {e}")))?;
        prop_assert_eq!(response.access_token().secret(), token.as_str());
        prop_assert_eq!(response.token_type(), if form { None } else { Some("Bearer") });
    }
}

/// README: `expires_in` "huge (saturated)", also as a JSON *number* beyond f64's range
/// (`1e400`, `0.1E310`), which serde_json alone refuses along with the whole document.
#[test]
fn huge_expires_in_number_saturates() {
    let body = br#"{"access_token":"t0k3n","expires_in":1e400}"#;
    let response = TokenResponse::parse(StatusCode::OK, &HeaderMap::new(), body).unwrap();
    assert_eq!(response.access_token().secret(), "t0k3n");
    assert_eq!(
        response.expires_in(),
        Some(Duration::from_secs(36_525 * 24 * 60 * 60))
    );
}

#[test]
fn huge_expires_in_string_saturates() {
    let body = br#"{"access_token":"t0k3n","expires_in":"1e400"}"#;
    let response = TokenResponse::parse(StatusCode::OK, &HeaderMap::new(), body).unwrap();
    assert_eq!(
        response.expires_in(),
        Some(Duration::from_secs(36_525 * 24 * 60 * 60))
    );
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate
// ---------------------------------------------------------------------------------------------

fn tchar_token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,10}"
}

/// A parameter value as it goes on the wire, and as it reads unescaped.
fn param_value() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        tchar_token().prop_map(|t| (t.clone(), t)),
        // A quoted-string: qdtext, escaped quotes and backslashes, needless escapes, obs-text.
        prop::collection::vec(
            (prop_oneof!["[\t -~]", "[\u{80}-\u{10ffff}]"], any::<bool>()),
            0..12
        )
        .prop_map(|chars| {
            let mut wire = String::from("\"");
            let mut plain = String::new();
            for (c, escape) in chars {
                let needs = c == "\"" || c == "\\";
                if needs || escape {
                    wire.push('\\');
                }
                wire.push_str(&c);
                plain.push_str(&c);
            }
            wire.push('"');
            (wire, plain)
        }),
    ]
}

/// Optional whitespace, including tabs.
fn ows() -> impl Strategy<Value = String> {
    "[ \t]{0,2}"
}

/// One challenge: its wire form and what it parses to.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

fn challenge_strategy() -> impl Strategy<Value = (String, Expected)> {
    let params = prop::collection::vec((tchar_token(), ows(), ows(), param_value(), ows()), 0..4);
    let token68 = "[A-Za-z0-9._~+/-]{1,12}={0,2}";
    (
        tchar_token(),
        prop_oneof![
            3 => params.prop_map(Ok),
            1 => token68.prop_map(Err),
        ],
    )
        .prop_map(|(scheme, rest)| {
            let mut wire = scheme.clone();
            let mut expected = Expected {
                scheme,
                token68: None,
                params: Vec::new(),
            };
            match rest {
                Ok(params) => {
                    for (i, (name, ws1, ws2, (value, plain), ws3)) in params.into_iter().enumerate()
                    {
                        wire.push_str(if i == 0 { " " } else { "," });
                        wire.push_str(&format!("{ws1}{name}{ws2}={ws2}{value}{ws3}"));
                        expected.params.push((name, plain));
                    }
                }
                Err(token68) => {
                    wire.push(' ');
                    wire.push_str(&token68);
                    expected.token68 = Some(token68);
                }
            }
            (wire, expected)
        })
}

fn challenges_strategy() -> impl Strategy<Value = (String, Vec<Expected>)> {
    (
        prop::collection::vec((challenge_strategy(), "[ \t]{0,2}(,[ \t]{0,2}){1,3}"), 1..4),
        "([ \t]{0,2},){0,2}[ \t]{0,2}",
    )
        .prop_map(|(challenges, lead)| {
            let mut wire = lead;
            let mut expected = Vec::new();
            let count = challenges.len();
            for (i, ((text, parsed), separator)) in challenges.into_iter().enumerate() {
                wire.push_str(&text);
                if i + 1 < count {
                    wire.push_str(&separator);
                }
                expected.push(parsed);
            }
            (wire, expected)
        })
}

/// Strings made mostly of the characters the grammar cares about.
fn hostile_header() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(" "),
            Just("\t"),
            Just(","),
            Just("="),
            Just("\""),
            Just("\\"),
            Just("a"),
            Just("Bearer"),
            Just("error"),
            Just("insufficient_scope"),
            Just("/"),
            Just("é"),
            Just("\u{1}"),
            Just("=="),
            Just("\r\n"),
            Just("\u{7f}"),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

fn check_challenge(value: &str) {
    match challenge::parse(value) {
        Ok(challenges) => {
            for c in &challenges {
                assert!(!c.scheme().is_empty());
                let _ = (c.token68(), c.params().count(), c.param("error"));
            }
        }
        Err(error) => {
            assert!(error.position() <= value.len(), "{value:?}: {error}");
            let _ = error.to_string();
        }
    }
    if let Ok(header) = HeaderValue::from_bytes(value.as_bytes()) {
        let mut map = HeaderMap::new();
        map.append(WWW_AUTHENTICATE, header);
        let from_headers = challenge::from_headers(&map);
        assert_eq!(from_headers, challenge::parse(value).unwrap_or_default());
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn challenge_never_panics_on_any_string(value in any::<String>()) {
        check_challenge(&value);
    }

    #[test]
    fn challenge_never_panics_on_hostile_strings(value in hostile_header()) {
        check_challenge(&value);
    }

    #[test]
    fn challenge_never_panics_on_mutated_headers(
        (wire, _) in challenges_strategy(),
        at in any::<usize>(),
        insert in "[ -~\t\u{80}-\u{ff}]{0,2}",
        cut in any::<bool>(),
    ) {
        let mut wire = wire;
        let mut at = at % (wire.len() + 1);
        while !wire.is_char_boundary(at) {
            at -= 1;
        }
        if cut {
            wire.truncate(at);
        } else {
            wire.insert_str(at, &insert);
        }
        check_challenge(&wire);
    }

    #[test]
    fn challenge_round_trips((wire, expected) in challenges_strategy()) {
        let parsed = challenge::parse(&wire).map_err(|e| TestCaseError::fail(format!("{wire:?}: {e}")))?;
        let parsed: Vec<Expected> = parsed
            .iter()
            .map(|c| Expected {
                scheme: c.scheme().to_owned(),
                token68: c.token68().map(str::to_owned),
                params: c.params().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            })
            .collect();
        prop_assert_eq!(parsed, expected, "{:?}", wire);
    }

    #[test]
    fn challenge_from_several_headers((a, ea) in challenges_strategy(), (b, eb) in challenges_strategy()) {
        let mut map = HeaderMap::new();
        for value in [&a, &b] {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.append(WWW_AUTHENTICATE, value);
            }
        }
        let schemes: Vec<String> = challenge::from_headers(&map).iter().map(|c| c.scheme().to_owned()).collect();
        let mut expected = Vec::new();
        for (value, challenges) in [(&a, ea), (&b, eb)] {
            if HeaderValue::from_str(value).is_ok() {
                expected.extend(challenges.into_iter().map(|c| c.scheme));
            }
        }
        prop_assert_eq!(schemes, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Header stamping
// ---------------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Where {
    Bearer,
    Raw,
    Scheme,
    ApiKey,
    ApiKeyScheme,
    Query,
}

impl Where {
    fn placement(self) -> Placement {
        match self {
            Where::Bearer => Placement::bearer(),
            Where::Raw => Placement::authorization_raw(),
            Where::Scheme => Placement::authorization_scheme("Token").unwrap(),
            Where::ApiKey => Placement::header(HeaderName::from_static("x-api-key")),
            Where::ApiKeyScheme => {
                Placement::header_with_scheme(HeaderName::from_static("x-api-key"), "Key").unwrap()
            }
            Where::Query => Placement::query(),
        }
    }

    /// The header the token goes in, and what it must read.
    fn expected(self, token: &str) -> Option<(HeaderName, String)> {
        let api_key = HeaderName::from_static("x-api-key");
        match self {
            Where::Bearer => Some((AUTHORIZATION, format!("Bearer {token}"))),
            Where::Raw => Some((AUTHORIZATION, token.to_owned())),
            Where::Scheme => Some((AUTHORIZATION, format!("Token {token}"))),
            Where::ApiKey => Some((api_key, token.to_owned())),
            Where::ApiKeyScheme => Some((api_key, format!("Key {token}"))),
            Where::Query => None,
        }
    }
}

fn placement() -> impl Strategy<Value = Where> {
    prop::sample::select(vec![
        Where::Bearer,
        Where::Raw,
        Where::Scheme,
        Where::ApiKey,
        Where::ApiKeyScheme,
        Where::Query,
    ])
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{1,40}",
        2 => "[A-Za-z0-9._~+/-]{1,40}={0,2}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "[ -~]{0,8}[\r\n\u{0}\t\u{7f}\u{80}-\u{10ffff}][ -~]{0,8}",
    ]
}

/// Query parameter names that come close to `access_token`.
fn query_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "access_token",
            "ACCESS_TOKEN",
            "access_token+",
            "access_token%20",
            "a",
            "",
            "=",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,6}",
    ]
}

fn uri() -> impl Strategy<Value = Uri> {
    let scheme = prop::sample::select(vec!["", "http://", "https://"]);
    let host = prop_oneof![
        "[a-z0-9-]{1,10}(\\.[a-z]{2,4}){0,2}",
        Just("127.0.0.1".to_owned()),
        Just("[::1]".to_owned()),
        Just("user:pw@example.com".to_owned()),
    ];
    let port = prop_oneof![
        Just(String::new()),
        (0u32..70_000).prop_map(|p| format!(":{p}"))
    ];
    let segment = "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,8}(%[0-9A-F]{2})?";
    let path = prop::collection::vec(segment, 0..4).prop_map(|s| {
        if s.is_empty() {
            String::new()
        } else {
            format!("/{}", s.join("/"))
        }
    });
    let value = "[A-Za-z0-9._~!$'()*+,;:@/?-]{0,8}(%[0-9A-F]{2})?";
    let pair = (query_name(), prop::option::of(value)).prop_map(|(name, value)| match value {
        Some(value) => format!("{name}={value}"),
        None => name,
    });
    let query = prop::option::of(prop::collection::vec(pair, 0..5).prop_map(|p| p.join("&")));
    let general = (scheme, host, port, path, query).prop_filter_map(
        "a valid URI",
        |(scheme, host, port, path, query)| {
            let mut uri = if scheme.is_empty() {
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                }
            } else {
                format!("{scheme}{host}{port}{path}")
            };
            if let Some(query) = query {
                uri.push('?');
                uri.push_str(&query);
            }
            Uri::try_from(uri).ok()
        },
    );
    prop_oneof![
        8 => general,
        1 => Just(Uri::from_static("*")),
        1 => Just(Uri::from_static("example.com:443")),
    ]
}

/// The query parameters other than `access_token`, as written.
fn other_pairs(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("access_token"))
        .map(str::to_owned)
        .collect()
}

/// Sends a request to `uri` through a layer with `StaticToken::new(token)` at `at`; returns
/// what reached the inner service, or the error.
fn send(at: Where, token: &str, uri: &Uri) -> Result<Request<()>, BoxError> {
    let seen = Arc::new(Mutex::new(None));
    let inner = {
        let seen = seen.clone();
        service_fn(move |req: Request<()>| {
            *seen.lock().unwrap() = Some(req);
            async { Ok::<_, BoxError>(Response::new(())) }
        })
    };
    let layer = BearerAuthLayer::new(StaticToken::new(token)).placement(at.placement());
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let mut req = Request::builder().uri(uri.clone()).body(()).unwrap();
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Basic b2xkOm9sZA=="),
    );
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("old"));
    let result = runtime().block_on(svc.oneshot(req));
    let seen = seen.lock().unwrap().take();
    match result {
        Ok(_) => Ok(seen.expect("answered without reaching the inner service")),
        Err(error) => {
            assert!(seen.is_none(), "the inner service was called, yet {error}");
            Err(error)
        }
    }
}

fn check_stamping(at: Where, token: &str, uri: &Uri) -> Result<(), TestCaseError> {
    let placeable = !token.is_empty() && token.bytes().all(|b| (0x20..0x7f).contains(&b));
    let req = match send(at, token, uri) {
        Ok(req) => req,
        Err(error) => {
            let kind = error
                .downcast_ref::<tower_bearer::Error>()
                .map(|e| e.kind());
            prop_assert_eq!(kind, Some(ErrorKind::InvalidToken), "{}", error);
            // Only a token that cannot be sent, or a URI that cannot carry a query (the
            // authority form of CONNECT, `*`), fails.
            let no_query = *uri == "*" || (uri.scheme().is_none() && uri.authority().is_some());
            prop_assert!(
                !placeable || (matches!(at, Where::Query) && no_query),
                "{:?} {:?}",
                token,
                uri
            );
            return Ok(());
        }
    };
    prop_assert!(placeable, "an unplaceable token {:?} was sent", token);
    match at.expected(token) {
        Some((name, value)) => {
            let values: Vec<&HeaderValue> = req.headers().get_all(&name).iter().collect();
            prop_assert_eq!(values.len(), 1);
            prop_assert_eq!(values[0].as_bytes(), value.as_bytes());
            prop_assert!(values[0].is_sensitive());
        }
        None => {
            let query = req.uri().query();
            let tokens: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .filter(|(name, _)| name == "access_token")
                .map(|(_, value)| value.into_owned())
                .collect();
            prop_assert_eq!(tokens, vec![token.to_owned()], "{:?}", req.uri());
            prop_assert_eq!(
                other_pairs(query),
                other_pairs(uri.query()),
                "{:?}",
                req.uri()
            );
            prop_assert_eq!(req.uri().path(), uri.path());
            prop_assert_eq!(req.uri().authority(), uri.authority());
            prop_assert_eq!(&req.headers()[CACHE_CONTROL], "no-store");
            // The request's own Authorization stays as it was.
            prop_assert_eq!(&req.headers()[AUTHORIZATION], "Basic b2xkOm9sZA==");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn stamping_carries_the_token_or_fails(at in placement(), token in token(), uri in uri()) {
        check_stamping(at, &token, &uri)?;
    }

    #[test]
    fn rejection_replays_unless_insufficient_scope(value in prop_oneof![
        challenges_strategy().prop_map(|(wire, _)| wire),
        hostile_header(),
        Just(r#"Bearer error="insufficient_scope""#.to_owned()),
    ]) {
        let Ok(header) = HeaderValue::from_str(&value) else {
            return Ok(());
        };
        let mut map = HeaderMap::new();
        map.append(WWW_AUTHENTICATE, header.clone());
        let insufficient = challenge::from_headers(&map)
            .iter()
            .any(|c| c.is_scheme("bearer") && c.param("error") == Some("insufficient_scope"));

        let calls = Arc::new(Mutex::new(0));
        let inner = {
            let calls = calls.clone();
            service_fn(move |_req: Request<()>| {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                let mut response = Response::new(());
                if *calls == 1 {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                    response.headers_mut().insert(WWW_AUTHENTICATE, header.clone());
                }
                async move { Ok::<_, BoxError>(response) }
            })
        };
        let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"));
        let svc = ServiceBuilder::new().layer(layer).service(inner);
        let response = runtime()
            .block_on(svc.oneshot(Request::new(())))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let calls = *calls.lock().unwrap();
        if insufficient {
            prop_assert_eq!(calls, 1);
            prop_assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        } else {
            prop_assert_eq!(calls, 2);
            prop_assert_eq!(response.status(), StatusCode::OK);
        }
    }
}

/// `Placement::query` replaces any `access_token` already in the query, also when its name is
/// percent-encoded (`access%5Ftoken`, which every server decodes to `access_token`).
#[test]
fn query_placement_replaces_an_encoded_access_token() {
    for uri in [
        "/?access%5Ftoken",
        "/?access%5ftoken=evil&a=1",
        "/?%61ccess_token=evil",
    ] {
        let req = send(Where::Query, "t0k3n", &Uri::from_static(uri)).unwrap();
        let tokens: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap().as_bytes())
            .filter(|(name, _)| name == "access_token")
            .map(|(_, value)| value.into_owned())
            .collect();
        assert_eq!(tokens, ["t0k3n"], "{uri} became {}", req.uri());
    }
}

// ---------------------------------------------------------------------------------------------
// The copy kept for a replay
// ---------------------------------------------------------------------------------------------

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        prop::sample::select(vec![
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::DELETE,
            http::Method::PATCH,
            http::Method::OPTIONS,
            http::Method::CONNECT,
        ]),
        "[A-Z]{1,12}".prop_map(|m| http::Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

fn replay_uri() -> impl Strategy<Value = Uri> {
    let path = "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,12}){1,4}(\\?[a-zA-Z0-9._~%&=/?-]{0,20})?";
    let authority =
        "(user(:pw)?@)?([a-z0-9-]{1,12}(\\.[a-z]{2,5})?|127\\.0\\.0\\.1|\\[::1\\])(:[0-9]{1,5})?";
    prop_oneof![
        path.prop_map(|p| p.parse::<Uri>().ok()),
        (
            prop::sample::select(vec!["http", "https", "grpc+tls"]),
            authority,
            path
        )
            .prop_map(|(s, a, p)| format!("{s}://{a}{p}").parse::<Uri>().ok()),
        (prop::sample::select(vec!["http", "https"]), authority).prop_map(|(s, a)| format!(
            "{s}://{a}"
        )
        .parse::<Uri>()
        .ok()),
        authority.prop_map(|a| a.parse::<Uri>().ok()),
        Just(Some(Uri::from_static("*"))),
    ]
    .prop_filter_map("a URI", |uri| uri)
}

fn replay_headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        prop::sample::select(vec![
            CONTENT_TYPE,
            AUTHORIZATION,
            http::header::COOKIE,
            http::header::ACCEPT,
            http::header::HOST,
        ]),
        "[a-z][a-z0-9-]{0,20}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
    ];
    prop::collection::vec((name, header_value(), any::<bool>()), 0..12).prop_map(|entries| {
        let mut map = HeaderMap::new();
        for (name, mut value, sensitive) in entries {
            value.set_sensitive(sensitive);
            map.append(name, value);
        }
        map
    })
}

/// Every header in iteration order, with its sensitive flag.
fn listed(map: &HeaderMap) -> Vec<(HeaderName, HeaderValue, bool)> {
    map.iter()
        .map(|(name, value)| (name.clone(), value.clone(), value.is_sensitive()))
        .collect()
}

proptest! {
    #![proptest_config(config(512))]

    /// What a replay sends is the request as it came: method, URI, version, every header in
    /// order with its sensitive flag, extensions and body.
    #[test]
    fn a_replay_rebuilds_the_request_head_as_it_came(
        method in method(),
        uri in replay_uri(),
        http2 in any::<bool>(),
        headers in replay_headers(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        tag in any::<u32>(),
    ) {
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};
        use tower_bearer::replay::{Replay, ReplayWrapped, ReplayPolicy};

        let version = if http2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        let request = || {
            let mut req = Request::new(Full::new(Bytes::from(body.clone())));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.version_mut() = version;
            *req.headers_mut() = headers.clone();
            req.extensions_mut().insert(tag);
            req
        };

        let check = |copy: Request<Full<Bytes>>| -> Result<(), TestCaseError> {
            prop_assert_eq!(copy.method(), &method);
            prop_assert_eq!(copy.uri(), &uri);
            prop_assert_eq!(copy.uri().to_string(), uri.to_string());
            prop_assert_eq!(copy.version(), version);
            prop_assert_eq!(listed(copy.headers()), listed(&headers));
            prop_assert_eq!(copy.extensions().get::<u32>(), Some(&tag));
            let copied = runtime().block_on(copy.into_body().collect()).unwrap().to_bytes();
            prop_assert_eq!(&copied[..], &body[..]);
            Ok(())
        };

        let (sent, kept) = Replay::new().keep(request());
        prop_assert_eq!(listed(sent.headers()), listed(&headers));
        check(Replay::new().replay(kept.expect("a Full body is replayable")).expect("rebuilt"))?;

        // `ReplayWrapped` keeps what the first attempt sends: send it, then replay.
        let (sent, kept) = ReplayWrapped::new().keep(request());
        let sent = runtime().block_on(sent.into_body().collect()).unwrap().to_bytes();
        prop_assert_eq!(&sent[..], &body[..]);
        let replay = ReplayWrapped::new()
            .replay(kept.expect("a Full body is replayable"))
            .expect("rebuilt");
        let (parts, replayed) = replay.into_parts();
        let replayed = runtime().block_on(replayed.collect()).unwrap().to_bytes();
        check(Request::from_parts(parts, Full::new(replayed)))?;
    }
}
