//! `TokenResponse::parse` on any answer: the first byte picks the status and the content type
//! (form-encoded on odd bytes), the rest is the body. It must return `Ok` or a typed error.

#![no_main]

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower_bearer::oauth2::{ErrorKind, TokenResponse};

const STATUSES: [u16; 32] = [
    200, 200, 200, 200, 200, 200, 201, 204, 299, 100, 101, 103, 300, 301, 302, 303, 304, 307, 308,
    399, 400, 401, 403, 404, 418, 429, 499, 500, 502, 503, 504, 599,
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(first >> 1) % STATUSES.len()]).unwrap();
    let mut headers = HeaderMap::new();
    if first & 1 == 1 {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    } else if first & 0x40 == 0 {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if first & 0x80 != 0 {
        // The first line of the body doubles as a Retry-After value.
        let line = body.split(|b| *b == b'\n').next().unwrap_or_default();
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.insert(RETRY_AFTER, value);
        }
    }

    match TokenResponse::parse(status, &headers, body) {
        Ok(response) => {
            assert!(status.is_success());
            assert!(!response.access_token().secret().is_empty());
            let _ = format!("{response:?}");
            let token = response.into_token();
            assert!(!token.access_token().secret().is_empty());
        }
        Err(error) => {
            if status.is_redirection() {
                assert_eq!(error.kind(), ErrorKind::Redirect);
            }
            let _ = (
                format!("{error}"),
                format!("{error:?}"),
                error.is_retryable(),
            );
            if let Some(retry_after) = error.retry_after() {
                assert!(retry_after.as_secs() <= 3600);
            }
        }
    }
});
