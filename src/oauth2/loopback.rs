//! Receiving the authorization redirect on a loopback port (RFC 8252 §7.3), for command-line
//! and desktop apps: a small HTTP/1 server (hyper's) that answers each request with a short
//! HTML page and ends its wait at the first redirect that carries the request's `state`.
//!
//! Anything on this machine can reach a loopback port, web pages in the user's browser
//! included, so the listener trusts nothing it receives: heads are bounded, connections time
//! out, and only a redirect with the right `state` can end the sign-in in progress.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::authorize::{carries_state, AuthorizationRequest, AuthorizationResponse};
use super::error::Error;
use super::pkce::is_unreserved;

/// The largest request head the listener reads (hyper's smallest buffer limit); a larger one is
/// answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long one connection may take to send its request head, and, in all, to be answered.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how much, a refused request is read further before its connection is closed,
/// so that closing with unread data does not reset the connection before the answer arrives.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_LIMIT: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Pause after a failed `accept` (for example, out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Receives the redirect on a loopback port (RFC 8252 §7.3), for command-line and desktop apps.
///
/// Bind it first, build the authorization request with its
/// [`redirect_uri`](Self::redirect_uri), open the request's URL in the browser, then
/// [`receive`](Self::receive) the redirect.
pub struct LoopbackRedirect {
    listener: TcpListener,
    local_addr: SocketAddr,
    redirect_uri: String,
    path: String,
}

impl LoopbackRedirect {
    /// Listens on `127.0.0.1` on a free port; the redirect URI is
    /// `http://127.0.0.1:<port>/callback`.
    pub async fn bind() -> Result<Self, Error> {
        Self::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "/callback").await
    }

    /// Listens on `addr`, which must be a loopback address (port 0 picks a free port), with the
    /// redirect URI's path `path`, which must start with `/` and may not have a query, a
    /// fragment, or characters that need percent-encoding.
    pub async fn bind_to(addr: SocketAddr, path: &str) -> Result<Self, Error> {
        if !addr.ip().is_loopback() {
            return Err(Error::config(format!(
                "the redirect listener must be on a loopback address (RFC 8252 §8.3), not {}",
                addr.ip()
            )));
        }
        if !path.starts_with('/') || !path.bytes().all(is_path_char) {
            return Err(Error::config(format!(
                "the redirect path {path:?} must start with '/' and have no query, fragment, \
                 space or other character that needs percent-encoding"
            )));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::config(format!("cannot listen on loopback: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::config(format!("cannot listen on loopback: {e}")))?;
        let host = match local_addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Ok(Self {
            listener,
            local_addr,
            redirect_uri: format!("http://{host}:{}{path}", local_addr.port()),
            path: path.to_owned(),
        })
    }

    /// The redirect URI to send in the authorization request.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the browser's redirect, answers it with a small HTML page (headed "Signed in"
    /// and telling the person they can close the window, or headed "Sign-in failed" with the
    /// error and how to try again), and returns the checked response (see
    /// [`AuthorizationResponse::from_query`]).
    ///
    /// Only a `GET` of the redirect path (`GET <path>?<query>`, HTTP/1.0 or 1.1) can end the
    /// wait, and only if its `state` is the request's:
    /// - a request to another path (such as `/favicon.ico`) is answered 404, one with another
    ///   method 405, a malformed one 400 and one whose head exceeds 8 KiB 431;
    /// - a redirect whose `state` is missing or not the request's is answered 400 with an error
    ///   page, and the wait goes on: anything on this machine, including web pages, can reach a
    ///   loopback port, so such a request must not end the sign-in in progress;
    /// - a redirect with the right `state` ends the wait, with the code or with the error it
    ///   carries (an `error` from the server, an `iss` that is not `expected_issuer`, no
    ///   `code`).
    ///
    /// Connections are served concurrently (so an idle one, such as a browser's speculative
    /// preconnection, blocks nothing; at most 16 at once), each answered with
    /// `Connection: close` and closed, and dropped if it has not sent its request head within
    /// 10 seconds or has not been answered within 10 seconds in all. Without the redirect
    /// within `timeout`, fails with a [`Callback`](super::ErrorKind::Callback) error. The
    /// listener is closed on return.
    pub async fn receive(
        self,
        request: &AuthorizationRequest,
        expected_issuer: Option<&str>,
        timeout: Duration,
    ) -> Result<AuthorizationResponse, Error> {
        let wait = Wait {
            path: &self.path,
            request,
            expected_issuer,
        };
        match tokio::time::timeout(timeout, self.serve(&wait)).await {
            Ok(result) => result,
            Err(_) => Err(Error::callback(format!("no redirect within {timeout:?}"))),
        }
    }

    /// Accepts and serves connections until one ends the wait.
    async fn serve(&self, wait: &Wait<'_>) -> Result<AuthorizationResponse, Error> {
        let mut connections: Vec<Pin<Box<dyn Future<Output = Outcome> + Send + '_>>> = Vec::new();
        let mut backoff: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(move |cx| loop {
            let mut i = 0;
            while i < connections.len() {
                match connections[i].as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(outcome) => {
                        drop(connections.swap_remove(i));
                        if let Some(result) = outcome {
                            return Poll::Ready(result);
                        }
                    }
                }
            }
            if let Some(sleep) = backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                backoff = None;
            }
            if connections.len() >= MAX_CONNECTIONS {
                // Woken again when one of them finishes.
                return Poll::Pending;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                // Polled, so registered for wake-ups, on the next turn of the loop.
                Poll::Ready(Ok((stream, _))) => connections.push(Box::pin(serve_one(stream, wait))),
                Poll::Ready(Err(_)) => {
                    backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        })
        .await
    }
}

impl fmt::Debug for LoopbackRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackRedirect")
            .field("local_addr", &self.local_addr)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// A path character that needs no percent-encoding (RFC 3986 `pchar` and `/`), or `%`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/%".contains(&b)
}

/// What a redirect must match.
struct Wait<'a> {
    path: &'a str,
    request: &'a AuthorizationRequest,
    expected_issuer: Option<&'a str>,
}

/// The result of one connection: `Some` ends the wait.
type Outcome = Option<Result<AuthorizationResponse, Error>>;

/// Serves one request on a connection, and closes it.
async fn serve_one(mut stream: TcpStream, wait: &Wait<'_>) -> Outcome {
    let outcome = Mutex::new(None);
    let service = service_fn(|request: Request<hyper::body::Incoming>| {
        let (reply, ends) = route(request.method(), request.uri(), wait);
        if ends.is_some() {
            *outcome.lock().unwrap_or_else(PoisonError::into_inner) = ends;
        }
        ready(Ok::<_, Infallible>(reply.into_response()))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        // A client that shuts down its side once its request is sent still gets the answer.
        .half_close(true)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(&mut stream), service);
    // An error (a malformed head, which hyper answers itself; a timeout; a browser gone away)
    // ends this connection only. The outcome stands even if the browser has gone away meanwhile.
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
    let outcome = outcome.into_inner().unwrap_or_else(PoisonError::into_inner);
    if outcome.is_none() {
        // The request may not have been read to its end (hyper stops at a head over the
        // limit): read on for a moment, so that closing does not reset the connection before
        // the answer is read.
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            // hyper may have shut the connection down already.
            let _ = stream.shutdown().await;
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < DRAIN_LIMIT {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => total += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
    outcome
}

/// Decides the answer to a request, and whether it ends the wait.
fn route(method: &Method, target: &Uri, wait: &Wait<'_>) -> (Reply, Outcome) {
    // Only the origin form (`/path?query`) that browsers send to a server: not a proxy's
    // absolute form (`http://host/path`) or `*`.
    if target.scheme().is_some() || !target.path().starts_with('/') {
        return (Reply::bad_request(), None);
    }
    if method != Method::GET {
        return (
            Reply::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Sign-in",
                "Method not allowed.",
            ),
            None,
        );
    }
    if target.path() != wait.path {
        return (
            Reply::new(StatusCode::NOT_FOUND, "Sign-in", "Not found."),
            None,
        );
    }
    let query = target.query().unwrap_or_default();
    if !carries_state(query, wait.request) {
        return (
            Reply::new(
                StatusCode::BAD_REQUEST,
                "Unexpected sign-in",
                "This redirect does not belong to the sign-in in progress. Return to the \
                 application and sign in again from there.",
            ),
            None,
        );
    }
    match AuthorizationResponse::from_query(query, wait.request, wait.expected_issuer) {
        Ok(response) => (
            Reply::new(
                StatusCode::OK,
                "Signed in",
                "You are signed in. You can close this window and return to the application.",
            ),
            Some(Ok(response)),
        ),
        Err(error) => (
            Reply::new(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                &format!(
                    "The application could not sign you in: {}. Close this window and return \
                     to the application to try again.",
                    error.to_string().trim_end_matches('.')
                ),
            ),
            Some(Err(error)),
        ),
    }
}

/// A small HTML answer: a heading (also the window's title) and a sentence, unstyled (the
/// content security policy allows no style), so that it reads the same in any browser.
struct Reply {
    status: StatusCode,
    heading: &'static str,
    message: String,
}

impl Reply {
    fn new(status: StatusCode, heading: &'static str, message: &str) -> Self {
        Self {
            status,
            heading,
            message: message.to_owned(),
        }
    }

    fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Sign-in", "Bad request.")
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (heading, message) = (escape_html(self.heading), escape_html(&self.message));
        let body = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{heading}</title></head>\
             <body><h1>{heading}</h1><p>{message}</p></body></html>\n"
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        let mut set = |name, value| {
            headers.insert(name, HeaderValue::from_static(value));
        };
        set(CONTENT_TYPE, "text/html; charset=utf-8");
        set(CACHE_CONTROL, "no-store");
        set(CONTENT_SECURITY_POLICY, "default-src 'none'");
        set(REFERRER_POLICY, "no-referrer");
        set(X_CONTENT_TYPE_OPTIONS, "nosniff");
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            set(ALLOW, "GET");
        }
        set(CONNECTION, "close");
        response
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
