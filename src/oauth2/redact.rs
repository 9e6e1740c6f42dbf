//! The credentials one token request carried, kept so that an answer echoing them back (a proxy's
//! error page that quotes the request, a server that repeats the secret it refused) never puts
//! them into an error or a log line.

use std::borrow::Cow;

use zeroize::Zeroizing;

/// What replaces a credential found in server text.
const REDACTED: &str = "<redacted>";

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

/// The credentials of one token request, each in the forms it may come back in.
#[derive(Default)]
pub(crate) struct Redactions {
    /// Longest first, so that a longer form is replaced whole before a shorter one inside it.
    needles: Vec<Zeroizing<String>>,
}

impl Redactions {
    /// Nothing to redact: for answers this crate did not request itself.
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// A credential that was sent as a form value or inside a header: redacted as it is, as
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

    /// Text that was sent exactly so, such as the base64 of Basic credentials.
    pub(crate) fn exact(&mut self, text: &str) {
        if text.is_empty() || self.needles.iter().any(|needle| needle.as_str() == text) {
            return;
        }
        let at = self
            .needles
            .partition_point(|needle| needle.len() >= text.len());
        self.needles.insert(at, Zeroizing::new(text.to_owned()));
    }

    /// `text` with every credential replaced by `<redacted>`.
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
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
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_redacted() {
        let mut sent = Redactions::none();
        sent.secret("a b:c+d/e%f&g=h\"i");
        for echo in [
            "client_secret=a+b%3Ac%2Bd%2Fe%25f%26g%3Dh%22i&grant_type=client_credentials",
            "secret a%20b%3Ac%2Bd%2Fe%25f%26g%3Dh%22i refused",
            r#"{"client_secret":"a b:c+d/e%f&g=h\"i"}"#,
            "raw a b:c+d/e%f&g=h\"i",
        ] {
            let out = sent.redact(echo);
            assert!(out.contains(REDACTED), "{echo} -> {out}");
            assert!(!out.contains("c+d/e%f"), "{out}");
            assert!(!out.contains("c%2Bd%2Fe"), "{out}");
        }
        assert_eq!(
            sent.redact("grant_type=client_credentials"),
            "grant_type=client_credentials"
        );
    }

    #[test]
    fn longer_forms_go_first_and_text_without_secrets_is_borrowed() {
        let mut sent = Redactions::none();
        sent.exact("abc");
        sent.exact("xxabcxx");
        assert_eq!(sent.redact("1 xxabcxx 2 abc"), "1 <redacted> 2 <redacted>");
        assert!(matches!(sent.redact("nothing here"), Cow::Borrowed(_)));
        sent.secret("");
        assert_eq!(sent.needles.len(), 2);
    }
}
