//! OAuth 2.0 bearer authentication for any [tower] HTTP client.
//!
//! [`BearerAuthLayer`] gets tokens from a [`TokenSource`], caches them, refreshes them ahead of
//! expiry with one fetch however many requests wait, stamps them on outgoing requests
//! (`Authorization: Bearer …` by default) and, when a server answers 401, drops that token and
//! replays the request once with a fresh one.
//!
//! # The request path
//!
//! 1. The current token is read without a lock or a clock read. A fresh token is stamped and the
//!    request goes on at once. A token inside its refresh-ahead window is stamped too, and the
//!    first request to see it starts one background refresh. Only an expired or missing token
//!    makes requests wait, all of them for the same fetch.
//! 2. If the request can be sent twice (see [`replay`]), a copy is kept.
//! 3. A 401 response drops the token it carried, and only that token: if another request
//!    already replaced it, no second fetch happens. The request is then replayed once with a
//!    fresh token, through a clone of the inner service polled ready again, and whatever the
//!    replay answers is returned. A 401 whose challenge says `insufficient_scope`, and any 403,
//!    is returned as it is: a new token would not help. A rejection drops a token at most once
//!    per [rejection interval](cache::TokenCacheBuilder::rejection_interval): within it, the
//!    token is kept and the request replayed with it, so that an API refusing every token does
//!    not make the layer fetch tokens in a loop.
//!
//! Token failures reach callers as [`Error`] (inside the service's [`BoxError`]); a request is
//! never sent without its token. Errors from the inner service pass through unchanged.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_bearer::{source_fn, BearerAuthLayer, Token, TokenRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Any async function that returns a token; the `oauth2` grants are sources too.
//! let source = source_fn(|_: TokenRequest| async {
//!     Ok::<_, std::io::Error>(Token::new("t0k3n").with_expires_in(Duration::from_secs(3600)))
//! });
//!
//! // A stand-in for an HTTP client such as hyper-util's `Client`.
//! let client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     let status = match req.headers().get("authorization") {
//!         Some(value) if value == "Bearer t0k3n" => StatusCode::OK,
//!         _ => StatusCode::UNAUTHORIZED,
//!     };
//!     let mut response = Response::new(Full::<Bytes>::default());
//!     *response.status_mut() = status;
//!     Ok::<_, std::convert::Infallible>(response)
//! });
//!
//! let layer = BearerAuthLayer::new(source);
//! let client = ServiceBuilder::new().layer(layer.clone()).service(client);
//! let response = client.oneshot(Request::new(Full::default())).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(layer.cache().stats().fetches, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! In the order they build on each other:
//!
//! | module | what it holds |
//! |---|---|
//! | [`token`], [`key`], [`source`] | what a token is and what it is for ([`TokenKey`]), and where tokens come from: [`TokenSource`], [`source_fn`], [`StaticToken`], [`SourceError`] |
//! | [`cache`] | [`TokenCache`]: single flight, refresh ahead, rejection, backoff, and its [builder](cache::TokenCacheBuilder) and [stats](cache::CacheStats); [`KeyedCache`](cache::KeyedCache), one token per key |
//! | [`placement`], [`challenge`], [`replay`], [`origin`] | where a token goes on a request; `WWW-Authenticate` parsing; how a request is kept for a replay; which origins get the token |
//! | [`auth`] | the middleware: [`BearerAuthLayer`], [`BearerAuth`], its [`ResponseFuture`](auth::ResponseFuture), [`Destinations`](auth::Destinations), and what a response says about its token |
//! | [`grpc`], `oauth2` | gRPC trailers; the OAuth 2.0 grants (feature `oauth2`, on by default) |
//! | `workload` | tokens without stored secrets: Kubernetes token files, token exchange, cloud metadata services, CI OIDC, and a default chain (feature `oauth2`) |
//! | `jose`, `dpop` | JWS signing keys on ring, and DPoP proofs (RFC 9449) for token requests and, through `Placement::dpop`, every API request (feature `jose`, part of `oauth2`) |
//!
//! With the feature `metrics`, the module `metrics` lists the counters and histograms the caches
//! record (fetches, failures, waits, rejections, replays) through the `metrics` crate's facade.
//!
//! The crate root re-exports what most programs name; secondary types (futures, builders,
//! statistics, parse errors) are reached through their module.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

// The order modules build on each other is in the table above; `tests/layout.rs` keeps it.
pub mod auth;
pub mod cache;
pub mod challenge;
#[cfg(feature = "jose")]
pub mod dpop;
mod error;
pub mod grpc;
#[cfg(feature = "jose")]
pub mod jose;
pub mod key;
// Without the feature, its hooks are empty functions the cache calls all the same.
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
#[cfg(feature = "oauth2")]
pub mod oauth2;
pub mod origin;
pub mod placement;
pub mod replay;
#[cfg(feature = "redis")]
pub mod shared;
mod shown;
pub mod source;
mod stamp;
pub mod token;
#[cfg(feature = "oauth2")]
pub mod workload;

pub use auth::{BearerAuth, BearerAuthLayer};
pub use cache::TokenCache;
pub use error::{Error, ErrorKind};
pub use key::TokenKey;
pub use origin::Origin;
pub use placement::Placement;
pub use source::{source_fn, SourceError, StaticToken, TokenSource};
pub use token::{AccessToken, Expiry, Reason, RefreshToken, Token, TokenRequest};

/// The README's code, compiled and run as doc tests (it uses the optional features: the test
/// command runs with all of them).
#[doc = include_str!("../README.md")]
#[cfg(all(
    doctest,
    feature = "tonic",
    feature = "axum",
    feature = "metrics",
    feature = "redis"
))]
pub struct ReadmeDoctests;

/// A type-erased error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
