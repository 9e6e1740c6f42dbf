//! Tokens without stored secrets: token sources for where a platform already proves who a
//! workload is (Kubernetes, clouds, CI).
//!
//! | source | where | follows |
//! |---|---|---|
//! | [`TokenFile`] | Kubernetes projected service-account tokens, `AZURE_FEDERATED_TOKEN_FILE`, `AWS_WEB_IDENTITY_TOKEN_FILE` | Kubernetes, "Configure Service Accounts for Pods: Service account token volume projection" (the kubelet rewrites the token at 80 % of its lifetime) |
//! | [`DefaultChain`] | the first of: client credentials from the environment, Entra workload identity, a federated token file | Microsoft identity platform, "OAuth 2.0 client credentials flow" (federated credential); `azure-identity`'s environment variables |
//!
//! A token file's JWT is also a federated client assertion ([`TokenFile`] is an
//! [`AssertionSource`](crate::oauth2::AssertionSource)), and a subject token for the token
//! exchange grant ([`oauth2::TokenExchange`](crate::oauth2)).
//!
//! These sources fail with [`Error`], which never holds a token; as token sources they fail
//! with a [`SourceError`](crate::SourceError) wrapping it, so the cache backs off as the
//! error says.

mod chain;
mod error;
mod jwt;
mod token_file;

pub use chain::{Chosen, DefaultChain};
pub use error::{Error, ErrorKind};
pub use token_file::TokenFile;
