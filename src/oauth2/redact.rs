//! The credentials one token request carried, kept so that an answer echoing them back (a proxy's
//! error page that quotes the request, a server that repeats the secret it refused) never puts
//! them into an error or a log line.
//!
//! Two steps. The forms a credential travelled in, and the usual re-encodings of it, are
//! replaced by `<redacted>` where they appear, so that the rest of the text stays readable. Then
//! the text is decoded the ways a server may have encoded it (percent-encoding in either case,
//! HTML entities, JSON escapes, whitespace or NULs inserted, as in a wrapped line or a UTF-16
//! body); if a credential still shows through any of those, the whole text is withheld.

use std::borrow::Cow;
use std::fmt;

use zeroize::Zeroizing;

/// What replaces a credential found in server text.
pub(super) const REDACTED: &str = "<redacted>";

/// What replaces server text in which a credential shows through an encoding.
const WITHHELD: &str = "<withheld: the text repeats a credential this request carried>";

/// Form parameters whose values are credentials, whatever the grant. The others (`grant_type`,
/// `scope`, `audience`, `redirect_uri`, ...) are kept in errors: they help to find out what went
/// wrong.
pub(crate) const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "client_assertion",
    "refresh_token",
    "code",
    "code_verifier",
    "device_code",
    "password",
    "assertion",
    "subject_token",
    "actor_token",
];

/// Whether the form parameter `name` carries a credential, which a source's identity and
/// `Debug` leave out (they may be seen): the `client_*` ones and every parameter the error
/// redaction treats as a credential (one list, [`SECRET_PARAMS`]).
pub(super) fn is_credential(name: &str) -> bool {
    name.starts_with("client_") || SECRET_PARAMS.contains(&name)
}

/// Debug-prints form parameters, with the values of credentials redacted (see
/// [`is_credential`]): an assertion or a password given as a parameter must not reach a log.
pub(super) struct Params<'a>(pub(super) &'a [(String, String)]);

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                let value = if is_credential(name) { REDACTED } else { value };
                (name, value)
            }))
            .finish()
    }
}

/// The credentials of one token request.
#[derive(Default)]
pub(crate) struct Redactions {
    /// The forms replaced where they appear, longest first, so that a longer form is replaced
    /// whole before a shorter one inside it.
    needles: Vec<Zeroizing<String>>,
    /// The credentials as they are, without whitespace: what must not show through any decoding.
    secrets: Vec<Zeroizing<String>>,
}

impl Redactions {
    /// Nothing to redact: for answers this crate did not request itself.
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// A credential that was sent as a form value or inside a header: replaced as it is, as
    /// form-urlencoding wrote it (`+` for a space) or as percent-encoding writes it (`%20`), and
    /// as a JSON string would hold it (quotes and backslashes escaped).
    pub(crate) fn secret(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let form: Zeroizing<String> =
            Zeroizing::new(form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        let percent = Zeroizing::new(form.replace('+', "%20"));
        let json = Zeroizing::new(serde_json::to_string(secret).unwrap_or_default());
        let json = json
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_default();
        self.exact(secret);
        self.exact(&form);
        self.exact(&percent);
        self.exact(json);
    }

    /// A credential that was sent exactly so, such as the base64 of Basic credentials.
    pub(crate) fn exact(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !self.needles.iter().any(|needle| needle.as_str() == text) {
            let at = self
                .needles
                .partition_point(|needle| needle.len() >= text.len());
            self.needles.insert(at, Zeroizing::new(text.to_owned()));
        }
        let bare = Zeroizing::new(visible(text).collect::<String>());
        if !bare.is_empty() && !self.secrets.iter().any(|secret| **secret == *bare) {
            self.secrets.push(bare);
        }
    }

    /// `text` with every credential replaced by `<redacted>`; or, if a credential still shows
    /// through one of the encodings servers use, a note that the text was withheld.
    pub(crate) fn clean<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                // The text held a credential: the copy it was in is zeroed when dropped.
                let redacted = text.replace(needle.as_str(), REDACTED);
                if let Cow::Owned(previous) = text {
                    drop(Zeroizing::new(previous));
                }
                text = Cow::Owned(redacted);
            }
        }
        if self.shows_through(&text) {
            if let Cow::Owned(previous) = text {
                drop(Zeroizing::new(previous));
            }
            return Cow::Borrowed(WITHHELD);
        }
        text
    }

    /// Whether a credential shows through `text` decoded one of the ways a server may encode it.
    fn shows_through(&self, text: &str) -> bool {
        if self.secrets.is_empty() {
            return false;
        }
        let bare = Zeroizing::new(visible(text).collect::<String>());
        let html = Zeroizing::new(html_decoded(&bare));
        // In form data `+` is a space, which `visible` then drops, as it dropped the secret's.
        let form = Zeroizing::new(bare.replace('+', " "));
        let views = [
            percent_decoded(&bare),
            percent_decoded(&form),
            html_decoded(&bare),
            json_unescaped(&bare),
            percent_decoded(&html),
        ];
        let views = views.map(|view| Zeroizing::new(visible(&view).collect::<String>()));
        self.secrets.iter().any(|secret| {
            bare.contains(secret.as_str())
                || views.iter().any(|view| view.contains(secret.as_str()))
        })
    }
}

/// The characters of `text` that a person sees: without whitespace, control characters and
/// NULs (a line wrapped in the middle of a credential, a UTF-16 body read as UTF-8).
fn visible(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
}

/// `%XX` sequences decoded, in either case; anything else kept.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes.get(i),
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (Some(b'%'), Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (Some(&b), _, _) => {
                out.push(b);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    let decoded = String::from_utf8_lossy(&out).into_owned();
    drop(Zeroizing::new(out));
    decoded
}

/// The longest character reference [`html_decoded`] looks for after a `&`: `#x10FFFF;`.
const LONGEST_REFERENCE: usize = 9;

/// The HTML character references an error page may use: `&amp;`, `&lt;`, `&gt;`, `&quot;`,
/// `&apos;`, and numeric ones (`&#39;`, `&#x2F;`).
fn html_decoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // The `;` is looked for only as far as a reference can reach: looking further would
        // make a body of `&`s cost time quadratic in its length.
        let reference = rest
            .bytes()
            .skip(1)
            .take(LONGEST_REFERENCE)
            .position(|b| b == b';')
            .map(|at| (&rest[1..at + 1], at + 1));
        let decoded = reference.and_then(|(name, end)| {
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// JSON string escapes decoded (`\/`, `\"`, `\\`, `\uXXXX` with surrogate pairs, `\n`...), as
/// found in a JSON error body that an excerpt shows raw.
fn json_unescaped(text: &str) -> String {
    fn unit(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<u32> {
        let hex: String = (0..4).map_while(|_| chars.next()).collect();
        u32::from_str_radix(&hex, 16).ok()
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let Some(first) = unit(&mut chars) else {
                    continue;
                };
                let code = if (0xd800..0xdc00).contains(&first) && chars.peek() == Some(&'\\') {
                    chars.next();
                    chars.next();
                    match unit(&mut chars) {
                        Some(low) if (0xdc00..0xe000).contains(&low) => {
                            0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
                        }
                        _ => first,
                    }
                } else {
                    first
                };
                out.extend(char::from_u32(code));
            }
            Some('n' | 'r' | 't' | 'b' | 'f') => {}
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a b:c+d/e%f&g=h\"i*j~k";

    fn sent() -> Redactions {
        let mut sent = Redactions::none();
        sent.secret(SECRET);
        sent
    }

    #[test]
    fn the_forms_a_secret_travelled_in_are_replaced() {
        let sent = sent();
        for echo in [
            "client_secret=a+b%3Ac%2Bd%2Fe%25f%26g%3Dh%22i*j%7Ek&grant_type=client_credentials",
            "secret a%20b%3Ac%2Bd%2Fe%25f%26g%3Dh%22i*j%7Ek refused",
            r#"{"client_secret":"a b:c+d/e%f&g=h\"i*j~k"}"#,
            "raw a b:c+d/e%f&g=h\"i*j~k",
        ] {
            let out = sent.clean(echo);
            assert!(out.contains(REDACTED), "{echo} -> {out}");
            assert!(!out.contains(WITHHELD), "{echo} -> {out}");
            assert!(!out.contains("c+d/e%f"), "{out}");
            assert!(!out.contains("c%2Bd%2Fe"), "{out}");
        }
        assert_eq!(
            sent.clean("grant_type=client_credentials"),
            "grant_type=client_credentials"
        );
    }

    #[test]
    fn other_encodings_of_a_secret_withhold_the_text() {
        let sent = sent();
        for echo in [
            // Lowercase hex (.NET's HttpUtility.UrlEncode), `*` and `~` escaped (Go).
            "client_secret=a+b%3ac%2bd%2fe%25f%26g%3dh%22i%2Aj%7Ek",
            // HTML entities in an error page.
            "<p>secret: a b:c+d/e%f&amp;g=h&quot;i*j~k</p>",
            "<p>secret: a b:c+d/e%f&#38;g=h&#x22;i*j~k</p>",
            // JSON escapes of other encoders.
            r#"{"secret":"a b:c+d\/e%f\u0026g=h\u0022i*j~k"}"#,
            // Wrapped across lines, or read from a UTF-16 body.
            "secret a b:c+d/e%f&g=\n   h\"i*j~k",
            "s\0e\0c\0r\0e\0t\0 \0a\0 \0b\0:\0c\0+\0d\0/\0e\0%\0f\0&\0g\0=\0h\0\"\0i\0*\0j\0~\0k\0",
        ] {
            assert_eq!(sent.clean(echo), WITHHELD, "{echo}");
        }
    }

    #[test]
    fn text_without_a_secret_is_left_alone() {
        let sent = sent();
        for text in [
            "invalid_client: client authentication failed",
            "<html><body>502 Bad Gateway &amp; more</body></html>",
            r#"{"error":"invalid_request","error_description":"missing \u0022scope\u0022"}"#,
        ] {
            assert!(
                matches!(sent.clean(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn longer_forms_go_first() {
        let mut sent = Redactions::none();
        sent.exact("abc");
        sent.exact("xxabcxx");
        assert_eq!(sent.clean("1 xxabcxx 2 abc"), "1 <redacted> 2 <redacted>");
        sent.secret("");
        assert_eq!(sent.needles.len(), 2);
    }

    #[test]
    fn decoding_takes_linear_time() {
        // A hostile error page of a megabyte of `&` (or `%`, `\`): each decoder walks it once.
        // It took seconds per 64 KiB when a `&` looked for its `;` to the end of the text.
        let sent = sent();
        for c in ['&', '%', '\\'] {
            let text = c.to_string().repeat(1 << 20);
            assert_eq!(sent.clean(&text).len(), text.len());
        }
        assert_eq!(html_decoded("&#x10FFFF;&#x110000;"), "\u{10ffff}&#x110000;");
    }

    #[test]
    fn decoders() {
        assert_eq!(percent_decoded("a%2fb%2Fc%zz%"), "a/b/c%zz%");
        assert_eq!(
            html_decoded("a&amp;b&#47;c&#x2f;d&bogus;e&"),
            "a&b/c/d&bogus;e&"
        );
        assert_eq!(
            json_unescaped(r#"a\/b\u0026c\"d\\e\ud83d\ude00f\n"#),
            "a/b&c\"d\\e😀f"
        );
    }
}
