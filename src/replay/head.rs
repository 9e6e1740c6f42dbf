//! The copy of a request's head that a replay is rebuilt from.
//!
//! Every replayable request pays for this copy, and almost none is ever replayed, so the copy is
//! made as cheap as it can be and the work moves to the replay. Cloning the `HeaderMap` would
//! allocate its two tables, and every header value made by `HeaderValue::from_str` (what the
//! request builder makes) is a `Bytes` that allocates a shared header on its first clone: about
//! eight allocations for a request with six headers, and atomic reference counting on each value
//! the connection later drops (the URI's parts too). Here the URI and the header names and values
//! are copied into one buffer, one allocation in all; the URI and the map are rebuilt from it only
//! for a replay.

use http::request::Parts;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use zeroize::Zeroize;

/// Bytes before the URI's parts at the start of the buffer: the lengths of the scheme, the
/// authority and the path and query (`u32` each), and whether there is a path and query at all
/// (a CONNECT request's URI has none).
const URI_PREFIX: usize = 4 + 4 + 4 + 1;

/// Bytes before each header's name and value: the name's length (`u16`, as `HeaderName` is at
/// most 64 KiB), the value's length (`u32`), and whether the value is marked sensitive.
const PREFIX: usize = 2 + 4 + 1;

/// A request's method, URI, version, extensions and headers, as they were before the token was
/// stamped.
pub(crate) struct Head {
    method: Method,
    version: Version,
    extensions: Extensions,
    bytes: Packed,
}

/// `URI_PREFIX` and the URI's parts, then each header in turn, in the order the map iterates:
/// `PREFIX`, the name, the value. Zeroed when dropped if a value was marked sensitive (a cookie
/// or a credential of the caller's own): the copy must not outlive the request in freed memory.
struct Packed {
    bytes: Vec<u8>,
    sensitive: bool,
}

impl Drop for Packed {
    fn drop(&mut self) {
        if self.sensitive {
            self.bytes.zeroize();
        }
    }
}

impl Head {
    /// Copies a request's head. `None` when a header value or a part of the URI is longer than
    /// 4 GiB, which this format does not hold (such a request is not replayed).
    #[inline]
    pub(crate) fn copy(parts: &Parts) -> Option<Self> {
        let uri = &parts.uri;
        let scheme = uri.scheme_str().unwrap_or("").as_bytes();
        let authority = uri.authority().map_or("", Authority::as_str).as_bytes();
        let path = uri.path_and_query().map(PathAndQuery::as_str);
        let path_bytes = path.unwrap_or("").as_bytes();
        let map = &parts.headers;
        let len = URI_PREFIX
            + scheme.len()
            + authority.len()
            + path_bytes.len()
            + map
                .iter()
                .map(|(name, value)| PREFIX + name.as_str().len() + value.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        let mut uri_prefix = [0; URI_PREFIX];
        for (at, part) in [(0, scheme), (4, authority), (8, path_bytes)] {
            let len = u32::try_from(part.len()).ok()?.to_le_bytes();
            uri_prefix[at..at + 4].copy_from_slice(&len);
        }
        uri_prefix[12] = u8::from(path.is_some());
        bytes.extend_from_slice(&uri_prefix);
        bytes.extend_from_slice(scheme);
        bytes.extend_from_slice(authority);
        bytes.extend_from_slice(path_bytes);
        let mut sensitive = false;
        for (name, value) in map {
            let name = name.as_str().as_bytes();
            // `HeaderName` never exceeds `u16::MAX` bytes.
            let [n0, n1] = (name.len() as u16).to_le_bytes();
            let [v0, v1, v2, v3] = u32::try_from(value.len()).ok()?.to_le_bytes();
            let flag = value.is_sensitive();
            sensitive |= flag;
            // One fixed-size write, which compiles to a few moves rather than three calls.
            bytes.extend_from_slice(&[n0, n1, v0, v1, v2, v3, u8::from(flag)]);
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value.as_bytes());
        }
        Some(Self {
            method: parts.method.clone(),
            version: parts.version,
            extensions: parts.extensions.clone(),
            bytes: Packed { bytes, sensitive },
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
        let mut rest = self.bytes.bytes.as_slice();
        let prefix = take(&mut rest, URI_PREFIX)?;
        let len = |at: usize| {
            let len = [prefix[at], prefix[at + 1], prefix[at + 2], prefix[at + 3]];
            u32::from_le_bytes(len) as usize
        };
        let scheme = take(&mut rest, len(0))?;
        let authority = take(&mut rest, len(4))?;
        let path = take(&mut rest, len(8))?;
        let mut uri = uri::Parts::default();
        if !scheme.is_empty() {
            uri.scheme = Some(Scheme::try_from(scheme).ok()?);
        }
        if !authority.is_empty() {
            uri.authority = Some(Authority::try_from(authority).ok()?);
        }
        if prefix[12] != 0 {
            uri.path_and_query = Some(PathAndQuery::try_from(path).ok()?);
        }
        let uri = Uri::from_parts(uri).ok()?;

        // Left to grow: a replay is rare, and a capacity from the number of values could exceed
        // what `HeaderMap::with_capacity` accepts (it panics above 24,576).
        let mut headers = HeaderMap::new();
        while !rest.is_empty() {
            let prefix = take(&mut rest, PREFIX)?;
            let name_len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
            let value_len = u32::from_le_bytes([prefix[2], prefix[3], prefix[4], prefix[5]]);
            let name = take(&mut rest, name_len)?;
            let value = take(&mut rest, value_len as usize)?;
            let name = HeaderName::from_bytes(name).ok()?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(prefix[6] != 0);
            headers.append(name, value);
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = uri;
        parts.version = self.version;
        parts.headers = headers;
        parts.extensions = self.extensions;
        Some(parts)
    }
}

/// The next `n` bytes of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
    *rest = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    /// A request's head, cloned: what the layer copies from once it has split the request.
    fn parts_of(req: &Request<()>) -> Parts {
        let mut copy = Request::new(());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        copy.into_parts().0
    }

    fn round_trip(req: &Request<()>) -> Parts {
        Head::copy(&parts_of(req))
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
    fn a_request_without_headers_keeps_its_uri_only() {
        let req = Request::get("/").body(()).unwrap();
        let head = Head::copy(&parts_of(&req)).unwrap();
        assert_eq!(head.bytes.bytes.len(), URI_PREFIX + 1);
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
        let head = Head::copy(&parts_of(&req)).unwrap();
        let uri = URI_PREFIX + "/".len();
        let expected = uri + 2 * PREFIX + "user-agent".len() + 11 + "x-request-id".len() + 8;
        assert_eq!(head.bytes.bytes.len(), expected);
        assert_eq!(head.bytes.bytes.capacity(), expected);
        assert!(!head.bytes.sensitive);
    }

    #[test]
    fn every_form_of_uri_comes_back() {
        for text in [
            "/",
            "/v1/items?x=1&y=%20",
            "*",
            "http://a.example",
            "https://a.example/",
            "https://user:pw@a.example:8443/p/q?r#ignored",
            "custom+scheme-1.0://host/p",
            "a.example:443",
            "[::1]:8080",
            "http://[::1]:8080/x",
        ] {
            let uri: Uri = text.parse().unwrap();
            let req = Request::get(uri.clone()).body(()).unwrap();
            let back = round_trip(&req).uri;
            assert_eq!(back, uri, "{text}");
            assert_eq!(back.to_string(), uri.to_string(), "{text}");
            assert_eq!(back.path_and_query(), uri.path_and_query(), "{text}");
            assert_eq!(back.authority(), uri.authority(), "{text}");
            assert_eq!(back.scheme(), uri.scheme(), "{text}");
        }
        let req = Request::get(Uri::default()).body(()).unwrap();
        assert_eq!(round_trip(&req).uri, Uri::default());
    }

    #[test]
    fn many_values_of_one_name_come_back() {
        // More values than `HeaderMap::with_capacity` accepts as a capacity (it panics above
        // 24,576): the rebuilt map grows to hold them.
        let mut req = Request::get("/").body(()).unwrap();
        for i in 0..30_000 {
            req.headers_mut()
                .append("x-many", HeaderValue::from_str(&i.to_string()).unwrap());
        }
        let parts = round_trip(&req);
        assert_eq!(parts.headers.len(), 30_000);
        assert_eq!(parts.headers, *req.headers());
    }

    #[test]
    fn a_copy_holding_a_sensitive_value_is_marked_for_zeroing() {
        let mut secret = HeaderValue::from_static("session=s3cr3t");
        secret.set_sensitive(true);
        let req = Request::get("/")
            .header(header::COOKIE, secret)
            .body(())
            .unwrap();
        assert!(Head::copy(&parts_of(&req)).unwrap().bytes.sensitive);
    }
}
