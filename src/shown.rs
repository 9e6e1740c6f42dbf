//! Text that a server chose, made safe to show a person in an error message or a log line.
//!
//! A token endpoint (or anything on the path to it) picks these bytes. Shown as they came, a CR
//! or LF starts a forged log line, an ANSI escape rewrites the operator's terminal, a
//! bidirectional override makes a line read differently from what it holds, and a megabyte of
//! `error_description` is repeated in every failed request's error. So control characters and
//! invisible formatting characters are escaped (`\n`, `\u{1b}`, `\u{202e}`), a backslash is
//! doubled (so that a server's literal `\n` cannot pass for an escaped line break), and the text
//! is cut at a bound with a note saying how long it was. RFC 6749 §5.2 allows only printable ASCII in
//! these fields anyway; other printable characters are kept, so that a localized description
//! stays readable.

use std::fmt;

/// The most bytes of one piece of server text that an error keeps, escapes included. Enough to
/// recognize an error page or read a description; the note on a cut text adds a few more.
#[cfg(feature = "oauth2")]
pub(crate) const MAX_SHOWN: usize = 256;

/// Server text that went through [`shown`]: escaped and bounded. Errors take this type rather
/// than a `String`, so that raw server text cannot reach one by mistake.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Shown(String);

impl Shown {
    /// Text this crate wrote itself, which needs no escaping (it may quote server text that went
    /// through [`shown`]).
    #[cfg(feature = "oauth2")]
    pub(crate) fn ours(text: String) -> Self {
        Self(text)
    }

    #[cfg(any(test, feature = "oauth2"))]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(feature = "oauth2")]
    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text`, escaped and cut to at most `max` bytes (plus the note on the cut).
pub(crate) fn shown(text: &str, max: usize) -> Shown {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut cut = false;
    for c in text.chars() {
        let before = out.len();
        push_escaped(&mut out, c);
        if out.len() > max {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    if cut {
        use fmt::Write as _;
        let _ = write!(out, "… [cut; {} bytes in all]", text.len());
    }
    Shown(out)
}

/// Whether a character must not reach a log line or a terminal as it is: control characters
/// (C0, DEL, C1), the Unicode line and paragraph separators, and the invisible characters that
/// change how text around them is displayed or hide text (bidirectional controls, zero-width
/// and other format characters, fillers that render as nothing, variation selectors, tag
/// characters, the byte order mark, interlinear annotations).
pub(crate) fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{34f}'
                | '\u{61c}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if must_escape(c) => out.extend(c.escape_unicode()),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_kept() {
        assert_eq!(
            shown("invalid_client: bad secret", 64).as_str(),
            "invalid_client: bad secret"
        );
        assert_eq!(shown("Clé inconnue", 64).as_str(), "Clé inconnue");
    }

    #[test]
    fn line_breaks_escapes_and_invisible_characters_are_escaped() {
        let forged =
            "bad\r\n2026-01-01T00:00:00Z  INFO token accepted\u{1b}[2K\u{85}\u{202e}x\u{200b}";
        let out = shown(forged, 256);
        assert_eq!(
            out.as_str(),
            "bad\\r\\n2026-01-01T00:00:00Z  INFO token accepted\\u{1b}[2K\\u{85}\\u{202e}x\\u{200b}"
        );
        assert!(!out.as_str().chars().any(must_escape));
        let hidden = "a\u{ad}b\u{e0041}c\u{fe0f}d\u{2066}e\u{3164}";
        assert_eq!(
            shown(hidden, 256).as_str(),
            "a\\u{ad}b\\u{e0041}c\\u{fe0f}d\\u{2066}e\\u{3164}"
        );
    }

    #[test]
    fn a_literal_backslash_cannot_pass_for_an_escape() {
        // The server sends a backslash and an `n`, not a line break.
        assert_eq!(shown("a\\nb", 64).as_str(), "a\\\\nb");
        assert_ne!(shown("a\\nb", 64), shown("a\nb", 64));
    }

    #[test]
    fn long_text_is_cut_with_a_note() {
        let long = "a".repeat(900_000);
        let out = shown(&long, 256);
        assert!(out.as_str().starts_with(&"a".repeat(256)));
        assert!(out.as_str().ends_with("… [cut; 900000 bytes in all]"));
        assert!(out.as_str().len() < 300);
    }

    #[test]
    fn a_cut_never_splits_a_character_or_an_escape() {
        let out = shown(&"é".repeat(200), 255);
        assert!(out.as_str().starts_with(&"é".repeat(127)));
        assert!(out.as_str().contains("é… [cut"));
        let out = shown(&"\n".repeat(100), 7);
        assert_eq!(out.as_str(), "\\n\\n\\n… [cut; 100 bytes in all]");
    }
}
