//! What a response says about the token its request carried.

use http::header::HeaderMap;
use http::{HeaderName, Response, StatusCode, Version};

use crate::challenge::{has_bearer_error, has_scheme_error};

/// Whether a response says that the token it was sent with was rejected, so that a new token
/// may help: status 401, unless a Bearer challenge says `insufficient_scope` (a new token with
/// the same scope would not help, RFC 6750 §3.1); or a gRPC trailers-only response whose
/// `grpc-status` is 16, UNAUTHENTICATED. A 403 never is: the token was understood and refused.
#[inline]
pub(crate) fn rejects_token<B>(response: &Response<B>) -> bool {
    match response.status() {
        StatusCode::UNAUTHORIZED => {
            !has_bearer_error(response.headers(), "insufficient_scope")
                && !has_scheme_error(response.headers(), "DPoP", "insufficient_scope")
        }
        // gRPC runs over HTTP/2 only: other responses skip the header lookup.
        StatusCode::OK if response.version() == Version::HTTP_2 => {
            grpc_unauthenticated(response.headers())
        }
        _ => false,
    }
}

/// Whether a response to a DPoP request asks for a nonce (RFC 9449 §9): a 401 whose `DPoP`
/// challenge says `use_dpop_nonce`. Its token was not rejected.
#[cfg(feature = "jose")]
pub(crate) fn asks_dpop_nonce<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        && has_scheme_error(response.headers(), "DPoP", "use_dpop_nonce")
}

/// Whether `headers` (a gRPC response's headers, or its trailers) carry `grpc-status: 16`.
#[inline]
pub(crate) fn grpc_unauthenticated(headers: &HeaderMap) -> bool {
    headers
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"16")
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

#[cfg(test)]
mod tests {
    use http::header::WWW_AUTHENTICATE;
    use http::HeaderValue;

    use super::*;

    fn response(status: StatusCode, version: Version, headers: &[(&str, &str)]) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        for (name, value) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        response
    }

    #[test]
    fn a_401_rejects_unless_the_scope_is_insufficient() {
        let bare = response(StatusCode::UNAUTHORIZED, Version::HTTP_11, &[]);
        assert!(rejects_token(&bare));
        let invalid = response(
            StatusCode::UNAUTHORIZED,
            Version::HTTP_11,
            &[("www-authenticate", r#"Bearer error="invalid_token""#)],
        );
        assert!(rejects_token(&invalid));
        let scope = response(
            StatusCode::UNAUTHORIZED,
            Version::HTTP_11,
            &[(
                WWW_AUTHENTICATE.as_str(),
                r#"Bearer error="insufficient_scope""#,
            )],
        );
        assert!(!rejects_token(&scope));
    }

    #[test]
    fn a_403_or_a_success_never_rejects() {
        for status in [StatusCode::FORBIDDEN, StatusCode::OK, StatusCode::NOT_FOUND] {
            assert!(!rejects_token(&response(status, Version::HTTP_11, &[])));
        }
    }

    #[test]
    fn grpc_unauthenticated_counts_in_http2_headers_only() {
        let h2 = response(StatusCode::OK, Version::HTTP_2, &[("grpc-status", "16")]);
        assert!(rejects_token(&h2));
        let h1 = response(StatusCode::OK, Version::HTTP_11, &[("grpc-status", "16")]);
        assert!(!rejects_token(&h1));
        let other = response(StatusCode::OK, Version::HTTP_2, &[("grpc-status", "7")]);
        assert!(!rejects_token(&other));
    }
}
