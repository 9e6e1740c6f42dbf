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
//! allocation-free `has_bearer_error` can never disagree on what a header
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

/// Whether some Bearer challenge in `headers` has an `error` parameter equal to
/// `code` (RFC 6750 §3.1), such as `insufficient_scope`.
///
/// Agrees with [`from_headers`] followed by [`Challenge::param`], but does not
/// allocate: it runs on every 401 a client receives.
pub(crate) fn has_bearer_error(headers: &HeaderMap, code: &str) -> bool {
    has_scheme_error(headers, "Bearer", code)
}

/// Whether some challenge of `scheme` (such as `DPoP`) in `headers` has an `error` parameter
/// equal to `code`; [`has_bearer_error`] for any scheme.
pub(crate) fn has_scheme_error(headers: &HeaderMap, scheme: &str, code: &str) -> bool {
    header_values(headers).any(|value| says_scheme_error(value, scheme, code))
}

fn header_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    // `HeaderValue::to_str` would also reject UTF-8 in quoted-strings
    // (obs-text), which is harmless to us and would cost a whole challenge.
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
}

fn says_scheme_error(value: &str, wanted: &str, code: &str) -> bool {
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
                in_bearer = scheme.eq_ignore_ascii_case(wanted);
                error_seen = false;
            }
            Ok(Event::Token68(_)) => {}
            Ok(Event::Param(name, value)) => {
                if in_bearer && !error_seen && name.eq_ignore_ascii_case("error") {
                    error_seen = true;
                    found |= value.is(code);
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

#[cfg(test)]
mod tests;
