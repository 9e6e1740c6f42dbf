//! `tower-bearer` in a tonic client: tonic's `Channel` behind the bearer layer, calling a tonic
//! server on 127.0.0.1 whose interceptor accepts only current tokens. The server is tonic-health's
//! Health service, whose code is pre-generated, so nothing here needs `protoc`.
//!
//! It shows, on a timeline:
//!
//! 1. the first call waiting for the first token;
//! 2. a token revoked by the server: the interceptor rejects the next call with UNAUTHENTICATED
//!    (a trailers-only response), the layer fetches a new token and replays the call once, and the
//!    caller only sees the answer.
//!
//! The client stack is the bearer layer, the layer that watches trailers for UNAUTHENTICATED,
//! and the `Channel`, with nothing in between: with the crate feature `tonic`, the layer keeps
//! tonic's body type while it keeps a copy of each call's body (up to 64 KiB) for a replay.
//!
//! The example checks what it claims and exits with an error if something does not hold:
//!
//! ```text
//! cargo run --example grpc --features tonic
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_bearer::grpc::{RejectOnTrailers, RejectOnTrailersLayer};
use tower_bearer::{source_fn, BearerAuth, BearerAuthLayer, BoxError, Token, TokenRequest};

/// The client stack, named for `check`'s signature.
type Client = BearerAuth<RejectOnTrailers<Channel>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let server = Arc::new(Tokens::default());
    let (addr, stop) = serve(server.clone()).await?;

    // The token source: here a closure issuing tok-1, tok-2, ... that the server then accepts.
    // A real client would use one of the `oauth2` grants.
    let source = source_fn({
        let server = server.clone();
        move |_: TokenRequest| {
            let token = server.issue();
            async move {
                Ok::<_, Infallible>(Token::new(token).with_expires_in(Duration::from_secs(3600)))
            }
        }
    });
    let bearer = BearerAuthLayer::new(source);
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = ServiceBuilder::new()
        .layer(bearer.clone())
        .layer(RejectOnTrailersLayer::new(&bearer))
        .service(channel);
    let mut health = HealthClient::new(client);
    let log = |what: &dyn Display| println!("{:>6.1} ms  {what}", ms(start));
    log(&format_args!("Health service on http://{addr}"));

    println!("-- 1. cold start: the first call waits for the first token");
    let status = check(&mut health).await?;
    log(&format_args!("Check -> {status:?}"));
    check_that(status == ServingStatus::Serving, "the call succeeds")?;
    check_that(
        server.seen() == ["Bearer tok-1 accepted"],
        "the server saw tok-1",
    )?;
    check_that(bearer.cache().stats().fetches == 1, "one token fetch")?;

    println!("-- 2. the server revokes tok-1: its interceptor rejects the next call, the layer");
    println!("      fetches tok-2 and replays the call; the caller only sees the answer");
    server.revoke("tok-1");
    log(&"revoked tok-1 on the server");
    let status = check(&mut health).await?;
    log(&format_args!("Check -> {status:?}"));
    for call in server.seen().iter().skip(1) {
        log(&format_args!("  the server saw: {call}"));
    }
    check_that(status == ServingStatus::Serving, "the call succeeds")?;
    check_that(
        server.seen()[1..] == ["Bearer tok-1 rejected", "Bearer tok-2 accepted"],
        "one rejected attempt with tok-1, one replay with tok-2",
    )?;
    let stats = bearer.cache().stats();
    log(&format_args!(
        "cache: fetches={} rejections={} replays={}",
        stats.fetches, stats.rejections, stats.replays
    ));
    check_that(
        stats.fetches == 2 && stats.rejections == 1 && stats.replays == 1,
        "2 fetches, 1 rejection, 1 replay",
    )?;
    check_that(server.issued() == 2, "the source was called twice")?;

    let _ = stop.send(());
    println!("all checks passed");
    Ok(())
}

/// A Health `Check` of the whole server, bounded in time.
async fn check(health: &mut HealthClient<Client>) -> Result<ServingStatus, BoxError> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = timeout(Duration::from_secs(5), health.check(request)).await??;
    Ok(response.into_inner().status())
}

fn check_that(claim: bool, what: &str) -> Result<(), BoxError> {
    if claim {
        println!("          ok: {what}");
        Ok(())
    } else {
        Err(format!("claim failed: {what}").into())
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// The server: tonic-health's Health service behind an interceptor that accepts only tokens
// issued and not revoked.
// ---------------------------------------------------------------------------------------------

/// What the token source issued and what the server saw.
#[derive(Default)]
struct Tokens {
    issued: AtomicUsize,
    valid: Mutex<HashSet<String>>,
    seen: Mutex<Vec<String>>,
}

impl Tokens {
    fn issue(&self) -> String {
        let token = format!("tok-{}", self.issued.fetch_add(1, Ordering::SeqCst) + 1);
        lock(&self.valid).insert(token.clone());
        token
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn revoke(&self, token: &str) {
        lock(&self.valid).remove(token);
    }

    fn seen(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }

    /// The interceptor's check: `authorization: Bearer <token>` with a valid token.
    fn accepts(&self, req: &Request<()>) -> bool {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let accepted = authorization
            .strip_prefix("Bearer ")
            .is_some_and(|token| lock(&self.valid).contains(token));
        let verdict = if accepted { "accepted" } else { "rejected" };
        lock(&self.seen).push(format!("{authorization} {verdict}"));
        accepted
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves the Health service on a fresh port of 127.0.0.1 until `stop` is sent.
async fn serve(
    tokens: Arc<Tokens>,
) -> Result<(std::net::SocketAddr, oneshot::Sender<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    // An interceptor's `Err` becomes a trailers-only response: `grpc-status: 16` in the headers,
    // which the bearer layer treats like an HTTP 401.
    let interceptor = move |req: Request<()>| {
        if tokens.accepts(&req) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("token not valid"))
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Server::builder().serve_with_incoming_shutdown(
        InterceptedService::new(health, interceptor),
        TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok((addr, stop))
}
