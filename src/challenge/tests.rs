use super::*;
use http::HeaderValue;

fn headers(values: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for value in values {
        map.append(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn params(challenge: &Challenge) -> Vec<(&str, &str)> {
    challenge.params().collect()
}

/// The parsed view that `has_bearer_error` must agree with.
fn is_insufficient_scope(map: &HeaderMap) -> bool {
    has_bearer_error(map, "insufficient_scope")
}

fn insufficient_scope_slow(map: &HeaderMap) -> bool {
    from_headers(map)
        .iter()
        .any(|c| c.is_scheme("bearer") && c.param("error") == Some("insufficient_scope"))
}

#[test]
fn rfc6750_realm_only() {
    let challenges = parse(r#"Bearer realm="example""#).unwrap();
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].scheme(), "Bearer");
    assert_eq!(challenges[0].token68(), None);
    assert_eq!(params(&challenges[0]), [("realm", "example")]);
}

#[test]
fn rfc6750_error_and_description() {
    let challenges = parse(
        r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
    )
    .unwrap();
    assert_eq!(challenges.len(), 1);
    let c = &challenges[0];
    assert_eq!(c.param("realm"), Some("example"));
    assert_eq!(c.param("error"), Some("invalid_token"));
    assert_eq!(
        c.param("error_description"),
        Some("The access token expired")
    );
    assert_eq!(c.param("scope"), None);
}

#[test]
fn rfc7235_several_challenges_in_one_value() {
    let challenges =
        parse(r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#)
            .unwrap();
    assert_eq!(challenges.len(), 2);
    assert_eq!(challenges[0].scheme(), "Newauth");
    assert_eq!(
        params(&challenges[0]),
        [
            ("realm", "apps"),
            ("type", "1"),
            ("title", r#"Login to "apps""#)
        ]
    );
    assert_eq!(challenges[1].scheme(), "Basic");
    assert_eq!(params(&challenges[1]), [("realm", "simple")]);
}

#[test]
fn several_headers_as_oidc_provider_sends() {
    let map = headers(&[
        r#"Bearer realm="http://localhost:3000", error="invalid_token", error_description="invalid token provided""#,
        r#"DPoP algs="ES256 PS256", realm="http://localhost:3000""#,
    ]);
    let challenges = from_headers(&map);
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].is_scheme("bearer"));
    assert_eq!(challenges[0].param("realm"), Some("http://localhost:3000"));
    assert_eq!(challenges[0].param("error"), Some("invalid_token"));
    assert_eq!(
        challenges[0].param("error_description"),
        Some("invalid token provided")
    );
    assert!(challenges[1].is_scheme("DPoP"));
    assert_eq!(challenges[1].param("algs"), Some("ES256 PS256"));
    assert_eq!(challenges[1].param("realm"), Some("http://localhost:3000"));
    assert!(!is_insufficient_scope(&map));
}

#[test]
fn escaped_quotes_and_backslashes() {
    let challenges = parse(r#"Bearer a="x\"y", b="back\\slash", c="\q", d="\\\"", e="""#).unwrap();
    assert_eq!(
        params(&challenges[0]),
        [
            ("a", r#"x"y"#),
            ("b", r"back\slash"),
            ("c", "q"),
            ("d", r#"\""#),
            ("e", ""),
        ]
    );
    // A comma inside quotes is text, not a list separator.
    let challenges = parse(r#"Bearer realm="a, Basic b", x=y"#).unwrap();
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].param("realm"), Some("a, Basic b"));
    assert_eq!(challenges[0].param("x"), Some("y"));
}

#[test]
fn token68() {
    let challenges = parse("Basic dXNlcjpwYXNz==").unwrap();
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].token68(), Some("dXNlcjpwYXNz=="));
    assert_eq!(challenges[0].params().count(), 0);

    let challenges = parse(r#"Negotiate a/b+c-d.e_f~g ,Bearer realm="x""#).unwrap();
    assert_eq!(challenges.len(), 2);
    assert_eq!(challenges[0].token68(), Some("a/b+c-d.e_f~g"));
    assert_eq!(challenges[1].param("realm"), Some("x"));

    // A lone token is a token68: an auth-param needs "=" and a value.
    let challenges = parse("Negotiate abc").unwrap();
    assert_eq!(challenges[0].token68(), Some("abc"));
    // So is a first "param" without a value.
    let challenges = parse("Bearer realm=, Basic").unwrap();
    assert_eq!(challenges[0].token68(), Some("realm="));
    assert!(challenges[1].is_scheme("basic"));
}

#[test]
fn scheme_only() {
    let challenges = parse("Bearer").unwrap();
    assert_eq!(challenges.len(), 1);
    assert_eq!(challenges[0].scheme(), "Bearer");
    assert_eq!(challenges[0].token68(), None);
    assert_eq!(challenges[0].params().count(), 0);

    let schemes: Vec<String> = parse("Bearer, Basic ,Negotiate")
        .unwrap()
        .iter()
        .map(|c| c.scheme().to_owned())
        .collect();
    assert_eq!(schemes, ["Bearer", "Basic", "Negotiate"]);
}

#[test]
fn scheme_and_param_names_ignore_case() {
    let challenges = parse(r#"bEaReR REALM="x", Error=invalid_token"#).unwrap();
    let c = &challenges[0];
    assert_eq!(c.scheme(), "bEaReR");
    assert!(c.is_scheme("Bearer"));
    assert!(c.is_scheme("BEARER"));
    assert!(!c.is_scheme("Basic"));
    assert_eq!(c.param("realm"), Some("x"));
    assert_eq!(c.param("ERROR"), Some("invalid_token"));
    // Names are kept as written.
    assert_eq!(params(c), [("REALM", "x"), ("Error", "invalid_token")]);
}

#[test]
fn param_returns_first_match() {
    let challenges = parse("Bearer error=a, ERROR=b").unwrap();
    assert_eq!(challenges[0].param("error"), Some("a"));
}

#[test]
fn bws_around_equals() {
    for value in [
        r#"Bearer realm = "x" , error=	invalid_token"#,
        r#"Bearer realm ="x",error =invalid_token"#,
        r#"Bearer realm= "x",	error= invalid_token "#,
    ] {
        let challenges = parse(value).unwrap();
        assert_eq!(challenges.len(), 1, "{value}");
        assert_eq!(
            params(&challenges[0]),
            [("realm", "x"), ("error", "invalid_token")],
            "{value}"
        );
    }
}

#[test]
fn empty_elements() {
    let challenges =
        parse(r#" , , Bearer realm="x" , , error="y",, ,Basic , ,Foo , a=b,"#).unwrap();
    assert_eq!(challenges.len(), 3);
    assert_eq!(params(&challenges[0]), [("realm", "x"), ("error", "y")]);
    assert!(challenges[1].is_scheme("basic"));
    assert_eq!(challenges[1].params().count(), 0);
    assert_eq!(params(&challenges[2]), [("a", "b")]);

    for value in ["", " ", ",", " , ,\t,"] {
        assert_eq!(parse(value), Ok(Vec::new()), "{value:?}");
    }
}

#[test]
fn unterminated_quote_is_an_error() {
    let err = parse(r#"Bearer realm="abc"#).unwrap_err();
    assert_eq!(err.position(), 13);
    let err = parse(r#"Bearer realm="abc\""#).unwrap_err();
    assert_eq!(err.position(), 13);
    let err = parse(r#"Bearer realm="abc\"#).unwrap_err();
    assert_eq!(err.position(), 13);
    assert_eq!(
        err.to_string(),
        "malformed WWW-Authenticate at byte 13: unterminated quoted-string"
    );
}

#[test]
fn garbage_is_an_error() {
    for (value, position) in [
        ("=", 0),
        (r#""x""#, 0),
        (r#"Bearer "x""#, 7),
        (r#"realm="x""#, 0),
        (r#"Basic abc==, realm="x""#, 13),
        (r#"Bearer realm="x" error="y""#, 17),
        ("Bearer a=b, realm=", 18),
        ("Bearer a=b, realm=,", 18),
        ("Bearer realm foo", 13),
        ("Bearer@", 6),
        ("Bearer realm=a/b", 14),
        ("Bearer realm=\"a\u{1}\"", 15),
        ("Bearer realm=\"a\\\u{1}\"", 16),
        ("Basic abc== def", 10),
    ] {
        let err = parse(value).unwrap_err();
        assert_eq!(err.position(), position, "{value:?}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("malformed WWW-Authenticate at byte {position}: ")),
            "{err}"
        );
    }
}

#[test]
fn non_ascii_in_quoted_string_is_obs_text() {
    let challenges = parse("Bearer error_description=\"caf\u{e9} \\\u{e9}\"").unwrap();
    assert_eq!(
        challenges[0].param("error_description"),
        Some("caf\u{e9} \u{e9}")
    );
}

#[test]
fn insufficient_scope_true() {
    for values in [
        &[r#"Bearer realm="x", error="insufficient_scope", scope="a b""#][..],
        &["Bearer error=insufficient_scope"],
        &["bearer ERROR = \"insufficient_scope\""],
        &[r#"Bearer error="insufficient\_scope""#],
        &[r#"Basic realm="x", Bearer error="insufficient_scope""#],
        &[
            r#"DPoP algs="ES256""#,
            r#"Bearer error="insufficient_scope""#,
        ],
        &["Bearer realm=\"\u{e9}\", error=insufficient_scope"],
    ] {
        let map = headers(values);
        assert!(is_insufficient_scope(&map), "{values:?}");
        assert!(insufficient_scope_slow(&map), "{values:?}");
    }
}

#[test]
fn insufficient_scope_false() {
    assert!(!is_insufficient_scope(&HeaderMap::new()));
    for values in [
        &[r#"Bearer error="invalid_token""#][..],
        &[r#"DPoP error="insufficient_scope""#],
        &[r#"Basic realm="x", error="insufficient_scope""#],
        &[r#"Bearer error="invalid_token", error="insufficient_scope""#],
        &[r#"Bearer error_description="insufficient_scope""#],
        &[r#"Bearer error="INSUFFICIENT_SCOPE""#],
        &[r#"Bearer error="insufficient_scope "#],
        &[r#"Bearer error="insufficient_scope", @@"#],
        &["Bearer insufficient_scope"],
        &["Bearer"],
        &[""],
    ] {
        let map = headers(values);
        assert!(!is_insufficient_scope(&map), "{values:?}");
        assert!(!insufficient_scope_slow(&map), "{values:?}");
    }
    let mut map = HeaderMap::new();
    map.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
    );
    assert!(!is_insufficient_scope(&map));
}

#[test]
fn header_with_invalid_utf8_is_skipped() {
    let mut map = HeaderMap::new();
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_bytes(b"Bearer error=\"insufficient_scope\", realm=\"\xff\"").unwrap(),
    );
    map.append(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="x""#),
    );
    let challenges = from_headers(&map);
    assert_eq!(challenges.len(), 1);
    assert!(challenges[0].is_scheme("basic"));
    assert!(!is_insufficient_scope(&map));
}

#[test]
fn unparsable_header_is_skipped_others_kept() {
    let map = headers(&[r#"Bearer realm="x"#, r#"Basic realm="y""#, "Negotiate"]);
    let schemes: Vec<String> = from_headers(&map)
        .iter()
        .map(|c| c.scheme().to_owned())
        .collect();
    assert_eq!(schemes, ["Basic", "Negotiate"]);
}

const EXAMPLES: &[&str] = &[
    r#"Bearer realm="example""#,
    r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
    r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
    r#"Bearer realm="http://localhost:3000", error="invalid_token", error_description="invalid token provided""#,
    r#"DPoP algs="ES256 PS256", realm="http://localhost:3000""#,
    r#"Bearer error=insufficient_scope, Basic dXNlcjpwYXNz==, Foo"#,
    "Bearer realm=\"caf\u{e9}\\\u{e9}\"",
];

/// Parses `value` and, if it is a valid header value, checks that the
/// allocation-free classification agrees with the full parse.
fn check_no_panic(value: &str) {
    if let Err(err) = parse(value) {
        assert!(err.position() <= value.len(), "{value:?}: {err}");
    }
    if let Ok(header) = HeaderValue::from_str(value) {
        let mut map = HeaderMap::new();
        map.insert(WWW_AUTHENTICATE, header);
        assert_eq!(
            is_insufficient_scope(&map),
            insufficient_scope_slow(&map),
            "{value:?}"
        );
    }
}

#[test]
fn brute_force_no_panic() {
    const ALPHABET: [char; 7] = [' ', ',', '=', '"', '\\', 'a', 'B'];
    let mut current = vec![String::new()];
    check_no_panic("");
    for _ in 0..4 {
        let mut next = Vec::with_capacity(current.len() * ALPHABET.len());
        for prefix in &current {
            for c in ALPHABET {
                let mut s = prefix.clone();
                s.push(c);
                check_no_panic(&s);
                next.push(s);
            }
        }
        current = next;
    }
    for example in EXAMPLES {
        parse(example).unwrap();
        for (i, _) in example.char_indices() {
            check_no_panic(&example[..i]);
        }
    }
}
