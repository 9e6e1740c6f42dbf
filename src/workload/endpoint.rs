//! What the metadata-service sources share: where a service may be reached in plain `http`,
//! the HTTP client and timeout of one GET, and the reading of its answer and its errors.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tower::ServiceExt;
use tower_service::Service;

use super::error::{Error, ErrorKind};
use crate::oauth2::redact::Redactions;
use crate::oauth2::response::retry_after;
use crate::oauth2::transport::{default_transport, erase, Transport};
use crate::BoxError;

/// The longest access token taken from a service (Entra ID tokens reach a few KiB).
pub(crate) const MAX_TOKEN: usize = 16 * 1024;

/// The default time one request may take.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where plain `http` is allowed besides loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plain {
    /// Only loopback: the service is reached over the network (GitHub's token service).
    Loopback,
    /// Loopback, link-local addresses (`169.254.0.0/16`, `fe80::/10`), where metadata services
    /// answer from the host the workload runs on, and these host names of such a service.
    LinkLocal(&'static [&'static str]),
}

/// Parses a service's URL, and refuses plain `http` to a host that `plain` does not allow.
pub(crate) fn check_url(
    origin: &'static str,
    what: &str,
    url: &str,
    plain: Plain,
) -> Result<Uri, Error> {
    let config = |message: String| Error::new(ErrorKind::Config, origin, message);
    let uri: Uri = url
        .parse()
        .map_err(|e| config(format!("{what} {url:?} is not a valid URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| config(format!("{what} {url:?} is not an absolute URL")))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if plain_allowed(host, plain) => Ok(uri),
        Some("http") => Err(config(format!(
            "{what} {url:?} must use https: tokens would cross the network in clear text \
             (plain http is allowed for loopback{})",
            match plain {
                Plain::Loopback => "",
                Plain::LinkLocal(_) => " and link-local addresses",
            }
        ))),
        _ => Err(config(format!("{what} {url:?} must be an http(s) URL"))),
    }
}

fn plain_allowed(host: &str, plain: Plain) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = bare.parse::<IpAddr>().ok();
    if bare.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback()) {
        return true;
    }
    match plain {
        Plain::Loopback => false,
        Plain::LinkLocal(names) => {
            names.iter().any(|name| bare.eq_ignore_ascii_case(name))
                || match ip {
                    Some(IpAddr::V4(v4)) => v4.is_link_local(),
                    Some(IpAddr::V6(v6)) => v6.segments()[0] & 0xffc0 == 0xfe80,
                    None => false,
                }
        }
    }
}

/// An environment variable's value through a lookup; an empty value counts as unset, as the
/// cloud SDKs count it.
pub(crate) fn var(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name).filter(|value| !value.trim().is_empty())
}

/// The process environment as a lookup.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The HTTP client of a source: any tower service, or the crate's default one, built when the
/// source is.
#[derive(Clone, Default)]
pub(crate) struct Client {
    transport: Option<Transport>,
}

impl Client {
    /// The transport given, if any: for sources built by the default chain.
    pub(crate) fn given(&self) -> Option<Transport> {
        self.transport.clone()
    }

    pub(crate) fn set<S, B>(&mut self, transport: S)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.transport = Some(erase(transport));
    }

    pub(crate) fn build(self, origin: &'static str) -> Result<Transport, Error> {
        if let Some(transport) = self.transport {
            return Ok(transport);
        }
        #[cfg(feature = "default-client")]
        let built = default_transport(None)
            .map_err(|e| Error::new(ErrorKind::Config, origin, e.to_string()));
        #[cfg(not(feature = "default-client"))]
        let built = default_transport().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                origin,
                "no HTTP client: enable the `default-client` feature or give the source one with \
                 its builder's `transport`",
            )
        });
        built
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.transport {
            Some(_) => "Client(custom)",
            None => "Client(default)",
        })
    }
}

/// A service's answer, read in full.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Sends `request` through `transport` within `timeout`.
pub(crate) async fn send(
    origin: &'static str,
    transport: &Transport,
    timeout: Duration,
    request: Request<Full<Bytes>>,
) -> Result<Reply, Error> {
    let answer = match tokio::time::timeout(timeout, transport.clone().oneshot(request)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            return Err(
                Error::new(ErrorKind::Transport, origin, "cannot be reached").with_source(error),
            )
        }
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                origin,
                format!("did not answer within {timeout:?}"),
            ))
        }
    };
    let body = answer.body.map_err(|_| {
        Error::new(
            ErrorKind::InvalidResponse,
            origin,
            "its answer is longer than this crate reads (1 MiB)",
        )
        .with_status(answer.status)
    })?;
    Ok(Reply {
        status: answer.status,
        headers: answer.headers,
        body,
    })
}

impl Reply {
    /// The error an answer that is not a success makes: its status, its `Retry-After`, and what
    /// the service said, escaped, bounded and with each of `sent` (the credentials the request
    /// carried) cut out.
    pub(crate) fn error(&self, origin: &'static str, sent: &[&str]) -> Error {
        let error = Error::new(ErrorKind::Http, origin, self.text(sent)).with_status(self.status);
        match retry_after(&self.headers) {
            Some(delay) => error.with_retry_after(delay),
            None => error,
        }
    }

    /// What the service said: the `error`, `error_description` and `message` of a JSON object
    /// (Azure's and GitHub's errors), else the body as text.
    pub(crate) fn text(&self, sent: &[&str]) -> String {
        let raw = String::from_utf8_lossy(&self.body);
        let said = match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(fields)) => {
                let parts: Vec<String> = ["error", "error_description", "message", "Message"]
                    .iter()
                    .filter_map(|name| match fields.get(*name)? {
                        serde_json::Value::String(text) => Some(text.clone()),
                        serde_json::Value::Null => None,
                        other => Some(other.to_string()),
                    })
                    .collect();
                if parts.is_empty() {
                    raw.into_owned()
                } else {
                    parts.join(": ")
                }
            }
            _ => raw.into_owned(),
        };
        // The credentials this request carried, as oauth2's token requests redact theirs: in
        // the forms they travel and are re-encoded in, and the whole text withheld where one
        // shows through another encoding.
        let mut redactions = Redactions::none();
        for secret in sent {
            redactions.secret(secret);
        }
        let said = redactions.clean(said.trim()).into_owned();
        if said.is_empty() {
            "(an empty body)".to_owned()
        } else {
            Error::server_text(&said)
        }
    }

    /// The body as a JSON object, or the error saying it is not one.
    pub(crate) fn json(
        &self,
        origin: &'static str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(fields)) => Ok(fields),
            _ => Err(Error::new(
                ErrorKind::InvalidResponse,
                origin,
                format!(
                    "its answer is not a JSON object ({} bytes)",
                    self.body.len()
                ),
            )
            .with_status(self.status)),
        }
    }
}

/// The access token in `fields[name]`: a JSON string, not empty, of at most [`MAX_TOKEN`]
/// bytes. Never quoted in the error.
pub(crate) fn token_field(
    origin: &'static str,
    fields: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<String, Error> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidResponse, origin, why);
    match fields.get(name) {
        Some(serde_json::Value::String(token)) if token.is_empty() => {
            Err(invalid(format!("its `{name}` is empty")))
        }
        Some(serde_json::Value::String(token)) if token.len() > MAX_TOKEN => Err(invalid(format!(
            "its `{name}` is {} bytes long, more than the {MAX_TOKEN} bytes a token may have",
            token.len()
        ))),
        Some(serde_json::Value::String(token)) => Ok(token.clone()),
        Some(_) => Err(invalid(format!("its `{name}` is not a JSON string"))),
        None => Err(invalid(format!("its answer has no `{name}`"))),
    }
}

/// `url` with `path` appended to its path (without doubling a `/`).
pub(crate) fn join(base: &Uri, path: &str) -> String {
    let base = base.to_string();
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCP: Plain = Plain::LinkLocal(&["metadata.google.internal"]);

    #[test]
    fn plain_http_only_to_loopback_link_local_and_named_hosts() {
        for ok in [
            "http://169.254.169.254",
            "http://169.254.169.254/metadata/identity/oauth2/token",
            "http://[fe80::a9fe:a9fe]:80",
            "http://127.0.0.1:8080",
            "http://localhost:41741/MSI/token",
            "http://[::1]:1",
            "http://metadata.google.internal",
            "http://METADATA.google.internal:80",
            "https://anywhere.example.com/",
        ] {
            assert!(check_url("x", "u", ok, GCP).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1",
            "http://metadata.google.internal.example.com",
            "http://169.255.0.1",
            "http://[fd20:ce::254]",
            "ftp://169.254.169.254",
            "169.254.169.254",
            "",
        ] {
            let err = check_url("x", "u", bad, GCP).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
        assert!(check_url("x", "u", "http://169.254.169.254", Plain::Loopback).is_err());
        assert!(check_url(
            "x",
            "u",
            "http://metadata.google.internal",
            Plain::LinkLocal(&[])
        )
        .is_err());
        assert!(check_url("x", "u", "http://127.0.0.1:9", Plain::Loopback).is_ok());
        let err = check_url("the GCP metadata server", "host", "http://10.1.1.1", GCP).unwrap_err();
        assert!(err.to_string().contains("must use https"), "{err}");
    }

    #[test]
    fn error_text_is_redacted_escaped_and_prefers_json_fields() {
        let reply = |body: &str| Reply {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        };
        let r = reply(r#"{"error":"invalid_request","error_description":"Identity not found"}"#);
        assert_eq!(r.text(&[]), "invalid_request: Identity not found");
        let r = reply("you sent s3cr3t-h3ad3r\n\u{1b}[31m");
        let text = r.text(&["s3cr3t-h3ad3r"]);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        // Echoed re-encoded, as a proxy quoting the request would: percent-encoded, or in
        // upper or lower case hex, or JSON-escaped.
        for echo in [
            "header=ab%2Bcd%2Fef0123",
            "header=ab%2bcd%2fef0123",
            r"ab+cd\/ef0123",
        ] {
            let text = reply(echo).text(&["ab+cd/ef0123"]);
            assert!(
                !text.contains("cd/ef") && !text.contains("ef0123"),
                "{echo}: {text}"
            );
        }
        assert_eq!(reply("  ").text(&[]), "(an empty body)");
        let e = reply("Forbidden").error("the service", &[]);
        assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    }
}
