//! What the integration tests share: requests and errors, bounded waits, token sources that
//! count their calls, captured logs, the pieces of a raw HTTP/1.1 server, and a real
//! `redis-server` (`redis_server.rs`, for `tests/shared.rs`, `tests/metrics.rs` and
//! `benches/shared.rs`, which includes that file by path).
//!
//! Each test file declares it with `#[allow(dead_code)] mod support;` (cargo builds
//! `tests/support/mod.rs` as a module of those files, not as a test of its own), as tower's and
//! tokio's tests do. A helper belongs here once two files need it; one file's helpers stay in
//! that file.

pub(crate) mod metadata;
pub(crate) mod oidc_peer;
pub(crate) mod redis_server;

use std::collections::HashSet;
use std::error::Error as StdError;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, Service};
use tower_bearer::{source_fn, Reason, Token, TokenRequest, TokenSource};
use tracing_subscriber::fmt::format::FmtSpan;

// ---------------------------------------------------------------------------------------------
// Requests, errors and waits
// ---------------------------------------------------------------------------------------------

/// A `GET` of `uri` with an empty body.
pub(crate) fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

/// The `tower_bearer::Error` a request through the layer failed with.
pub(crate) fn token_error(err: BoxError) -> tower_bearer::Error {
    match err.downcast::<tower_bearer::Error>() {
        Ok(err) => *err,
        Err(other) => panic!("expected a tower_bearer::Error, got {other:?}"),
    }
}

/// An error and its sources, as a log line shows them: `outer: inner: ...`.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    std::iter::successors(Some(err), |&err| err.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Bounds a step that must finish: panics naming `what` if it takes longer than `limit`. With
/// the paused clock, a hang fails at once.
pub(crate) async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// A listener on 127.0.0.1, on a port the system picks (so tests running at once never share
/// one), and its address.
pub(crate) async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

// ---------------------------------------------------------------------------------------------
// Token sources
// ---------------------------------------------------------------------------------------------

type TokenFuture = Pin<Box<dyn Future<Output = Result<Token, io::Error>> + Send>>;

/// Counts the calls a source gets and why it got them.
#[derive(Clone, Default)]
pub(crate) struct Calls {
    n: Arc<AtomicUsize>,
    reasons: Arc<Mutex<Vec<Reason>>>,
}

impl Calls {
    pub(crate) fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    pub(crate) fn reasons(&self) -> Vec<Reason> {
        self.reasons.lock().unwrap().clone()
    }

    /// A source whose `n`th call (from 1) waits `delay`, then answers `make(n)`.
    pub(crate) fn source<F>(
        &self,
        delay: Duration,
        make: F,
    ) -> impl Service<TokenRequest, Response = Token, Error = io::Error, Future = TokenFuture>
           + Clone
           + Send
           + 'static
    where
        F: Fn(usize) -> Result<Token, io::Error> + Clone + Send + Sync + 'static,
    {
        let this = self.clone();
        source_fn(move |req: TokenRequest| {
            let n = this.n.fetch_add(1, Ordering::SeqCst) + 1;
            this.reasons.lock().unwrap().push(req.reason());
            let make = make.clone();
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                make(n)
            }) as TokenFuture
        })
    }

    /// `tok-1`, `tok-2`, ... living `lifetime` each.
    pub(crate) fn lasting(
        &self,
        delay: Duration,
        lifetime: Duration,
    ) -> impl Service<TokenRequest, Response = Token, Error = io::Error, Future = TokenFuture>
           + Clone
           + Send
           + 'static {
        self.source(delay, move |n| {
            Ok(Token::new(format!("tok-{n}")).with_expires_in(lifetime))
        })
    }
}

/// An authorization server and the API it protects: the tokens it issues, `tok-1`, `tok-2`, ...,
/// are valid from when they are issued until revoked (and expire in an hour).
#[derive(Clone, Default)]
pub(crate) struct Issuer {
    calls: Calls,
    valid: Arc<Mutex<HashSet<String>>>,
}

impl Issuer {
    /// The token source of the authorization server.
    pub(crate) fn source(&self) -> impl TokenSource {
        let valid = self.valid.clone();
        self.calls.source(Duration::ZERO, move |n| {
            let token = format!("tok-{n}");
            valid.lock().unwrap().insert(token.clone());
            Ok(Token::new(token).with_expires_in(Duration::from_secs(3600)))
        })
    }

    /// Whether the API accepts `token`.
    pub(crate) fn is_valid(&self, token: &str) -> bool {
        self.valid.lock().unwrap().contains(token)
    }

    pub(crate) fn revoke(&self, token: &str) {
        let removed = self.valid.lock().unwrap().remove(token);
        assert!(removed, "{token} was not valid");
    }

    /// Calls to the token source.
    pub(crate) fn issued(&self) -> usize {
        self.calls.count()
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// The log, as `tracing-subscriber`'s default format writes it.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Log {
    /// A subscriber writing the events at `level` and above, and the span events `spans`, to
    /// this log, without colours.
    pub(crate) fn subscriber(
        &self,
        level: tracing::Level,
        spans: FmtSpan,
    ) -> impl tracing::Subscriber + Send + Sync + 'static {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_span_events(spans)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    pub(crate) fn lines_with(&self, what: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains(what))
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 server, for endpoints that misbehave at the byte level
// ---------------------------------------------------------------------------------------------

/// Reads one HTTP/1.1 request: its head and its `Content-Length` body. `None` if the connection
/// ends first, or the head is not text or goes on past 64 KiB.
pub(crate) async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).ok()?;
            let length = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[end + 4..end + 4 + length].to_vec()));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of the header `name` in a request's `head`.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Writes a whole response and closes the connection. `status` is the status line's code and
/// reason; `extra` holds further header lines, each ending in `\r\n`.
pub(crate) async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n{extra}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    stream.shutdown().await
}
