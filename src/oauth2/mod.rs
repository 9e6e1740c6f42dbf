//! OAuth 2.0 token sources (RFC 6749): client credentials, refresh token with rotation,
//! authorization code with PKCE, the device authorization grant, and token exchange (RFC 8693),
//! tolerant of the quirks real authorization servers have.
//!
//! Every grant talks to its token endpoint through a [`TokenEndpoint`]: the endpoint URL
//! (`https` required unless loopback), the client id, its authentication ([`ClientAuth`]) and
//! the HTTP client used (any tower service; hyper-util with rustls by default).
//!
//! | grant | source | |
//! |---|---|---|
//! | client credentials (§4.4) | [`ClientCredentials`] | a service acting as itself |
//! | refresh token (§6) | [`RefreshTokenSource`] | rotation, a [`RefreshTokenStore`] hook, one refresh at a time |
//! | authorization code + PKCE (§4.1, RFC 7636) | [`AuthorizationCode`], [`LoopbackRedirect`] | a user signs in; then a `RefreshTokenSource` |
//! | device authorization (RFC 8628) | [`DeviceAuthorization`], [`DevicePrompt`] | a command-line tool: the user enters a code on another device; then a `RefreshTokenSource` |
//! | token exchange (RFC 8693) | [`TokenExchange`] | a subject token from any source (a token file, another layer's cache) traded for a token for an audience or resource |
//!
//! Token responses are parsed leniently ([`TokenResponse`]): `expires_in` as a number or a
//! string, missing (the cache's default lifetime applies), zero, negative or huge; `token_type` in
//! any case; JSON or form-encoded; fields this crate does not know are kept in [`ExtraFields`].
//! Errors are one typed [`Error`]: an `error` field means an error even with HTTP 200.
//!
//! This module is the default-on `oauth2` feature; without it the crate's core (layer, cache,
//! replay) builds without the grants' dependencies (serde_json, sha2, base64, getrandom, hyper).
//!
//! As token sources, the grants fail with a [`SourceError`](crate::SourceError) that carries
//! the token endpoint's `Retry-After`, or says that retrying soon cannot help (`invalid_client`,
//! `invalid_grant`, ...), for the cache's backoff. The cache reports the [`Error`] inside:
//! `tower_bearer::Error::source_as::<oauth2::Error>()` finds it.

mod assertion;
mod authorization_code;
mod authorize;
mod client_credentials;
mod device;
mod discovery;
mod endpoint;
mod error;
mod exchange;
mod loopback;
mod pkce;
pub(crate) mod redact;
mod refresh;
pub(crate) mod response;
pub(crate) mod transport;

pub use assertion::{AssertionAudience, AssertionFuture, AssertionRequest, AssertionSource};
pub use authorization_code::AuthorizationCode;
pub use authorize::{AuthorizationRequest, AuthorizationResponse};
pub use client_credentials::ClientCredentials;
pub use device::{DeviceAuthorization, DevicePrompt};
pub use discovery::{Discovery, ServerMetadata, WellKnown};
pub use endpoint::{ClientAuth, ClientSecret, Confidential, TokenEndpoint, TokenEndpointBuilder};
pub use error::{Error, ErrorCode, ErrorKind};
pub use exchange::{SubjectDigest, TokenExchange};
pub use loopback::LoopbackRedirect;
pub use pkce::Pkce;
pub use refresh::{FileStore, MemoryStore, RefreshTokenSource, RefreshTokenStore};
pub use response::{ExtraFields, TokenResponse};
