//! The copy of a request's head that a replay is rebuilt from.
//!
//! Every replayable request pays for this copy, and almost none is ever replayed, so the copy is
//! made as cheap as it can be and the work moves to the replay. Cloning the `HeaderMap` would
//! allocate its two tables, and every header value made by `HeaderValue::from_str` (what the
//! request builder makes) is a `Bytes` that allocates a shared header on its first clone: about
//! eight allocations for a request with six headers, and atomic reference counting on each value
//! the connection later drops. Here the names and values are copied into one buffer, one
//! allocation in all; the map is rebuilt from it only for a replay.

use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

/// Bytes before each header's name and value: the name's length (`u16`, as `HeaderName` is at
/// most 64 KiB), the value's length (`u32`), and whether the value is marked sensitive.
const PREFIX: usize = 2 + 4 + 1;

/// A request's method, URI, version, extensions and headers, as they were before the token was
/// stamped.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    extensions: Extensions,
    /// Each header in turn, in the order the map iterates: `PREFIX`, the name, the value.
    headers: Vec<u8>,
    /// The number of header values.
    count: usize,
}

impl Head {
    /// Copies a request's head. `None` when a header value is longer than 4 GiB, which this
    /// format does not hold (such a request is not replayed).
    #[inline]
    pub(crate) fn copy<B>(req: &Request<B>) -> Option<Self> {
        let map = req.headers();
        let len = map
            .iter()
            .map(|(name, value)| PREFIX + name.as_str().len() + value.len())
            .sum();
        let mut headers = Vec::with_capacity(len);
        for (name, value) in map {
            let name = name.as_str().as_bytes();
            let value_len = u32::try_from(value.len()).ok()?;
            // `HeaderName` never exceeds `u16::MAX` bytes.
            let [n0, n1] = (name.len() as u16).to_le_bytes();
            let [v0, v1, v2, v3] = value_len.to_le_bytes();
            let sensitive = u8::from(value.is_sensitive());
            // One fixed-size write, which compiles to a few moves rather than three calls.
            headers.extend_from_slice(&[n0, n1, v0, v1, v2, v3, sensitive]);
            headers.extend_from_slice(name);
            headers.extend_from_slice(value.as_bytes());
        }
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            extensions: req.extensions().clone(),
            headers,
            count: map.len(),
        })
    }

    /// The method of the copied request.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// Rebuilds the head. `None` if a header can no longer be made from its bytes, which only a
    /// value built in a release build by `HeaderValue::from_maybe_shared_unchecked` from bytes a
    /// header value may not hold can cause. Such a request is not replayed.
    pub(crate) fn into_parts(self) -> Option<Parts> {
        let mut headers = HeaderMap::with_capacity(self.count);
        let mut rest = self.headers.as_slice();
        while let Some((prefix, tail)) = rest.split_first_chunk::<PREFIX>() {
            let name_len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
            let value_len = u32::from_le_bytes([prefix[2], prefix[3], prefix[4], prefix[5]]);
            let (name, tail) = tail.split_at(name_len);
            let (value, tail) = tail.split_at(value_len as usize);
            rest = tail;
            let name = HeaderName::from_bytes(name).ok()?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(prefix[6] != 0);
            headers.append(name, value);
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = self.uri;
        parts.version = self.version;
        parts.headers = headers;
        parts.extensions = self.extensions;
        Some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn round_trip(req: &Request<()>) -> Parts {
        Head::copy(req)
            .expect("copied")
            .into_parts()
            .expect("rebuilt")
    }

    #[test]
    fn every_part_of_the_head_comes_back() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tag(u32);

        let mut secret = HeaderValue::from_static("s3cr3t");
        secret.set_sensitive(true);
        let mut req = Request::builder()
            .method(Method::PATCH)
            .uri("https://api.example.com:8443/v1/items/7?x=1&y=%20")
            .version(Version::HTTP_2)
            .header(header::ACCEPT, "application/json")
            .header(header::ACCEPT, "text/plain")
            .header("x-custom-name", "caf\u{e9}".as_bytes())
            .header(header::COOKIE, secret)
            .header("x-empty", "")
            .extension(Tag(7))
            .body(())
            .unwrap();
        req.headers_mut().append(
            "x-obs-text",
            HeaderValue::from_bytes(b"\x80\xff\ttab").unwrap(),
        );

        let parts = round_trip(&req);
        assert_eq!(parts.method, Method::PATCH);
        assert_eq!(parts.uri, *req.uri());
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.extensions.get::<Tag>(), Some(&Tag(7)));
        assert_eq!(parts.headers, *req.headers());
        let order = |map: &HeaderMap| {
            map.iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&parts.headers), order(req.headers()));
        assert!(parts.headers[header::COOKIE].is_sensitive());
        assert!(!parts.headers[header::ACCEPT].is_sensitive());
    }

    #[test]
    fn a_request_without_headers_copies_without_allocating_a_buffer() {
        let req = Request::get("/").body(()).unwrap();
        let head = Head::copy(&req).unwrap();
        assert_eq!(head.headers.capacity(), 0);
        let parts = head.into_parts().unwrap();
        assert!(parts.headers.is_empty());
        assert_eq!(parts.uri, "/");
    }

    #[test]
    fn the_buffer_is_allocated_once_at_its_final_size() {
        let req = Request::get("/")
            .header(header::USER_AGENT, "loadgen/1.0")
            .header("x-request-id", "7d4c6a1e")
            .body(())
            .unwrap();
        let head = Head::copy(&req).unwrap();
        let expected = 2 * PREFIX + "user-agent".len() + 11 + "x-request-id".len() + 8;
        assert_eq!(head.headers.len(), expected);
        assert_eq!(head.headers.capacity(), expected);
    }
}
