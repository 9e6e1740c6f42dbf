//! `challenge::parse` on the input as a string, and `challenge::from_headers` on it as a
//! `WWW-Authenticate` header value when it is one. Neither may panic, and they must agree.

#![no_main]

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_bearer::challenge;

fuzz_target!(|data: &[u8]| {
    let parsed = std::str::from_utf8(data).ok().map(|text| {
        let parsed = challenge::parse(text);
        match &parsed {
            Ok(challenges) => {
                for c in challenges {
                    assert!(!c.scheme().is_empty());
                    let _ = (c.token68(), c.param("error"), c.params().count());
                    let _ = format!("{c:?}");
                }
            }
            Err(error) => {
                assert!(error.position() <= text.len());
                let _ = error.to_string();
            }
        }
        parsed
    });

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.append(WWW_AUTHENTICATE, value.clone());
        headers.append(WWW_AUTHENTICATE, value);
        let challenges = challenge::from_headers(&headers);
        match parsed {
            // Valid UTF-8: twice what `parse` found, or nothing if it failed.
            Some(parsed) => {
                let once = parsed.unwrap_or_default();
                assert_eq!(challenges.len(), once.len() * 2);
                assert!(challenges
                    .iter()
                    .zip(once.iter().chain(once.iter()))
                    .all(|(a, b)| a == b));
            }
            // Not UTF-8: skipped whole.
            None => assert!(challenges.is_empty()),
        }
    }
});
