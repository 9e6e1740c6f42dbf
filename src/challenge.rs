//! Parsing of `WWW-Authenticate` header values into challenges (RFC 9110
//! §11.6.1, RFC 7235 §4.1, RFC 6750 §3).
//!
//! ```text
//! challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param  = token BWS "=" BWS ( token / quoted-string )
//! token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! A comma separates both the parameters of one challenge and the challenges
//! themselves, so a list element that is a token followed by `=` continues the
//! current challenge, and any other token starts a new one.
//!
//! The grammar lives in one borrowing tokenizer so that [`parse`] and the
//! allocation-free `insufficient_scope` can never disagree on what a header
//! says.

use std::fmt;

use http::header::{HeaderMap, WWW_AUTHENTICATE};

/// One challenge from a `WWW-Authenticate` header value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Challenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn new(scheme: &str) -> Self {
        Self {
            scheme: scheme.to_owned(),
            token68: None,
            params: Vec::new(),
        }
    }

    /// The auth-scheme as the server wrote it, e.g. `Bearer`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether the auth-scheme is `scheme`, ignoring ASCII case as RFC 9110
    /// §11.1 requires.
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The token68 the challenge carries instead of parameters, if any.
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }

    /// The unescaped value of the first parameter called `name`, ignoring
    /// ASCII case in the name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All parameters in order of appearance: names as written, values
    /// unescaped.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Error for a malformed `WWW-Authenticate` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    position: usize,
    reason: &'static str,
}

impl ParseError {
    /// Byte offset in the header value at which parsing failed.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed WWW-Authenticate at byte {}: {}",
            self.position, self.reason
        )
    }
}

impl std::error::Error for ParseError {}

/// Parses one `WWW-Authenticate` header value into its challenges.
///
/// An empty value, or one made only of empty list elements, yields no
/// challenges.
///
/// # Errors
///
/// Returns a [`ParseError`] if the value does not match the grammar, for
/// example an unterminated quoted-string or a parameter with no challenge to
/// belong to.
pub fn parse(value: &str) -> Result<Vec<Challenge>, ParseError> {
    let mut challenges: Vec<Challenge> = Vec::new();
    for event in Tokenizer::new(value) {
        // The tokenizer emits Token68 and Param only after a Scheme, so
        // `last_mut` always finds the challenge they belong to.
        match event? {
            Event::Scheme(scheme) => challenges.push(Challenge::new(scheme)),
            Event::Token68(token) => {
                if let Some(challenge) = challenges.last_mut() {
                    challenge.token68 = Some(token.to_owned());
                }
            }
            Event::Param(name, value) => {
                if let Some(challenge) = challenges.last_mut() {
                    challenge.params.push((name.to_owned(), value.unescape()));
                }
            }
        }
    }
    Ok(challenges)
}

/// All challenges from every `WWW-Authenticate` header in `headers`, in
/// order; a response may send several such headers.
///
/// Values that are not valid UTF-8 or do not parse are skipped whole: this
/// feeds classification of a failed request, which must never fail itself.
pub fn from_headers(headers: &HeaderMap) -> Vec<Challenge> {
    header_values(headers)
        .filter_map(|value| parse(value).ok())
        .flatten()
        .collect()
}

/// True if some Bearer challenge says `error="insufficient_scope"` (RFC 6750
/// §3.1): a new token with the same scope will not help.
///
/// Agrees with [`from_headers`] followed by [`Challenge::param`], but does not
/// allocate.
pub(crate) fn insufficient_scope(headers: &HeaderMap) -> bool {
    header_values(headers).any(says_insufficient_scope)
}

fn header_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    // `HeaderValue::to_str` would also reject UTF-8 in quoted-strings
    // (obs-text), which is harmless to us and would cost a whole challenge.
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
}

fn says_insufficient_scope(value: &str) -> bool {
    // Must match what `from_headers` + `param("error")` would report: a value
    // that fails anywhere is dropped whole, and only the first `error` of a
    // challenge counts.
    let mut found = false;
    let mut in_bearer = false;
    let mut error_seen = false;
    for event in Tokenizer::new(value) {
        match event {
            Err(_) => return false,
            Ok(Event::Scheme(scheme)) => {
                in_bearer = scheme.eq_ignore_ascii_case("Bearer");
                error_seen = false;
            }
            Ok(Event::Token68(_)) => {}
            Ok(Event::Param(name, value)) => {
                if in_bearer && !error_seen && name.eq_ignore_ascii_case("error") {
                    error_seen = true;
                    found |= value.is("insufficient_scope");
                }
            }
        }
    }
    found
}

/// A piece of a header value, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event<'a> {
    /// Start of a new challenge.
    Scheme(&'a str),
    /// The token68 of the challenge just started.
    Token68(&'a str),
    /// An auth-param of the current challenge.
    Param(&'a str, Value<'a>),
}

/// A parameter value as it appears in the header: a token, or the inside of
/// a quoted-string with its escapes still in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Value<'a> {
    raw: &'a str,
    quoted: bool,
}

impl<'a> Value<'a> {
    fn chars(self) -> impl Iterator<Item = char> + 'a {
        let quoted = self.quoted;
        let mut chars = self.raw.chars();
        std::iter::from_fn(move || match chars.next()? {
            // The tokenizer accepts a backslash in a quoted-string only with
            // a character after it, so this never drops a lone backslash.
            '\\' if quoted => chars.next(),
            c => Some(c),
        })
    }

    fn is(self, expected: &str) -> bool {
        self.chars().eq(expected.chars())
    }

    fn unescape(self) -> String {
        if self.quoted && self.raw.contains('\\') {
            self.chars().collect()
        } else {
            self.raw.to_owned()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between list elements with no challenge that could take a parameter:
    /// at the start, or after a token68.
    Between,
    /// Right after an auth-scheme, where a token68 or the first auth-param
    /// may follow.
    AfterScheme,
    /// Between list elements of a challenge that takes auth-params.
    InParams,
    /// End of input reached or an error reported.
    Done,
}

/// Splits a header value into [`Event`]s; yields at most one error, then
/// stops.
#[derive(Debug)]
struct Tokenizer<'a> {
    input: &'a str,
    pos: usize,
    state: State,
}

impl<'a> Tokenizer<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            pos: 0,
            state: State::Between,
        }
    }

    fn step(&mut self) -> Result<Option<Event<'a>>, ParseError> {
        match self.state {
            State::Done => Ok(None),
            State::AfterScheme => self.after_scheme(),
            State::Between | State::InParams => self.element(),
        }
    }

    fn after_scheme(&mut self) -> Result<Option<Event<'a>>, ParseError> {
        let had_space = self.skip_ws() > 0;
        match self.peek() {
            None => Ok(None),
            Some(b',') => {
                self.state = State::InParams;
                self.element()
            }
            Some(_) if !had_space => Err(self.error_here("expected space after auth-scheme")),
            Some(_) => {
                // Anything that fits token68 and ends the element is one,
                // even a lone token: the grammar prefers it to an auth-param,
                // which would need an "=" and a value.
                if let Some(end) = self.token68_end() {
                    let token = self.slice(self.pos, end)?;
                    self.pos = end;
                    self.state = State::Between;
                    return Ok(Some(Event::Token68(token)));
                }
                self.state = State::InParams;
                let name = self.token("expected token68 or auth-param")?;
                self.skip_ws();
                self.param(name).map(Some)
            }
        }
    }

    fn element(&mut self) -> Result<Option<Event<'a>>, ParseError> {
        // Each element checked its own trailing comma, so separators here
        // are only runs of commas and whitespace (empty elements).
        loop {
            self.skip_ws();
            if self.peek() != Some(b',') {
                break;
            }
            self.pos += 1;
        }
        if self.peek().is_none() {
            return Ok(None);
        }
        let start = self.pos;
        let name = self.token("expected auth-scheme or auth-param")?;
        let after_name = self.pos;
        let had_space = self.skip_ws() > 0;
        match self.peek() {
            Some(b'=') if self.state == State::Between => Err(ParseError {
                position: start,
                reason: "auth-param without a challenge that takes parameters",
            }),
            Some(b'=') => self.param(name).map(Some),
            Some(b',') | None => self.scheme(name, after_name),
            Some(_) if had_space => self.scheme(name, after_name),
            Some(_) => Err(self.error_here("unexpected character after token")),
        }
    }

    fn scheme(
        &mut self,
        name: &'a str,
        after_name: usize,
    ) -> Result<Option<Event<'a>>, ParseError> {
        // Rewind so that `after_scheme` sees the whitespace it requires.
        self.pos = after_name;
        self.state = State::AfterScheme;
        Ok(Some(Event::Scheme(name)))
    }

    /// Parses the rest of an auth-param whose name and BWS were consumed.
    fn param(&mut self, name: &'a str) -> Result<Event<'a>, ParseError> {
        if self.peek() != Some(b'=') {
            return Err(self.error_here("expected '=' after auth-param name"));
        }
        self.pos += 1;
        self.skip_ws();
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            Value {
                raw: self.token("expected token or quoted-string")?,
                quoted: false,
            }
        };
        self.end_element()?;
        Ok(Event::Param(name, value))
    }

    fn quoted_string(&mut self) -> Result<Value<'a>, ParseError> {
        let open = self.pos;
        let bytes = self.input.as_bytes();
        let mut i = open + 1;
        loop {
            match bytes.get(i).copied() {
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1).copied() {
                    Some(b) if is_quotable(b) => i += 2,
                    Some(_) => return Err(self.error(i + 1, "invalid character in quoted-pair")),
                    None => return Err(self.error(open, "unterminated quoted-string")),
                },
                Some(b) if is_qdtext(b) => i += 1,
                Some(_) => return Err(self.error(i, "invalid character in quoted-string")),
                None => return Err(self.error(open, "unterminated quoted-string")),
            }
        }
        let raw = self.slice(open + 1, i)?;
        self.pos = i + 1;
        Ok(Value { raw, quoted: true })
    }

    /// End of the token68 starting at the cursor, if one is there and is the
    /// whole list element.
    fn token68_end(&self) -> Option<usize> {
        let rest = self.input.as_bytes().get(self.pos..)?;
        let body = rest.iter().take_while(|b| is_token68_char(**b)).count();
        if body == 0 {
            return None;
        }
        let padding = rest.iter().skip(body).take_while(|b| **b == b'=').count();
        let next = rest
            .iter()
            .skip(body + padding)
            .find(|b| !matches!(b, b' ' | b'\t'));
        matches!(next, None | Some(b',')).then_some(self.pos + body + padding)
    }

    fn end_element(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        match self.peek() {
            None | Some(b',') => Ok(()),
            Some(_) => Err(self.error_here("expected ',' between list elements")),
        }
    }

    fn token(&mut self, reason: &'static str) -> Result<&'a str, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error_here(reason));
        }
        self.slice(start, self.pos)
    }

    fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.pos).copied()
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'a str, ParseError> {
        // Bounds always sit next to ASCII delimiters, hence on char
        // boundaries; `get` keeps a slip there an error rather than a panic.
        self.input.get(start..end).ok_or(ParseError {
            position: start,
            reason: "bad character boundary",
        })
    }

    fn error(&self, position: usize, reason: &'static str) -> ParseError {
        ParseError { position, reason }
    }

    fn error_here(&self, reason: &'static str) -> ParseError {
        self.error(self.pos, reason)
    }
}

impl<'a> Iterator for Tokenizer<'a> {
    type Item = Result<Event<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let step = self.step();
        if !matches!(step, Ok(Some(_))) {
            self.state = State::Done;
        }
        step.transpose()
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// qdtext: HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// What may follow a backslash: HTAB / SP / VCHAR / obs-text.
fn is_quotable(b: u8) -> bool {
    matches!(b, b'\t' | 0x20..=0x7E | 0x80..=0xFF)
}

/// Whether a response says that the token it was sent with was rejected: status 401, unless a
/// Bearer challenge says `insufficient_scope` (a new token with the same scope would not help);
/// or a gRPC trailers-only response whose `grpc-status` is 16, UNAUTHENTICATED.
#[inline]
pub(crate) fn rejects_token<B>(response: &http::Response<B>) -> bool {
    match response.status() {
        http::StatusCode::UNAUTHORIZED => !insufficient_scope(response.headers()),
        // gRPC runs over HTTP/2 only: other responses skip the header lookup.
        http::StatusCode::OK if response.version() == http::Version::HTTP_2 => {
            grpc_unauthenticated(response.headers())
        }
        _ => false,
    }
}

/// Whether `headers` (a gRPC response's headers, or its trailers) carry `grpc-status: 16`.
#[inline]
pub(crate) fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"16")
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

#[cfg(test)]
mod tests {
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

    /// What `insufficient_scope` must agree with.
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
        let challenges = parse(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
        )
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
        assert!(!insufficient_scope(&map));
    }

    #[test]
    fn escaped_quotes_and_backslashes() {
        let challenges =
            parse(r#"Bearer a="x\"y", b="back\\slash", c="\q", d="\\\"", e="""#).unwrap();
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
            assert!(insufficient_scope(&map), "{values:?}");
            assert!(insufficient_scope_slow(&map), "{values:?}");
        }
    }

    #[test]
    fn insufficient_scope_false() {
        assert!(!insufficient_scope(&HeaderMap::new()));
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
            assert!(!insufficient_scope(&map), "{values:?}");
            assert!(!insufficient_scope_slow(&map), "{values:?}");
        }
        let mut map = HeaderMap::new();
        map.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static(r#"Bearer error="insufficient_scope""#),
        );
        assert!(!insufficient_scope(&map));
    }

    #[test]
    fn header_with_invalid_utf8_is_skipped() {
        let mut map = HeaderMap::new();
        map.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_bytes(b"Bearer error=\"insufficient_scope\", realm=\"\xff\"")
                .unwrap(),
        );
        map.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        let challenges = from_headers(&map);
        assert_eq!(challenges.len(), 1);
        assert!(challenges[0].is_scheme("basic"));
        assert!(!insufficient_scope(&map));
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
                insufficient_scope(&map),
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
}
