//! Tokens without stored secrets: token sources for where a platform already proves who a
//! workload is (Kubernetes, clouds, CI).
//!
//! | source | where | follows |
//! |---|---|---|
//! | [`TokenFile`] | Kubernetes projected service-account tokens, `AZURE_FEDERATED_TOKEN_FILE`, `AWS_WEB_IDENTITY_TOKEN_FILE` | Kubernetes, "Configure Service Accounts for Pods: Service account token volume projection" (the kubelet rewrites the token at 80 % of its lifetime) |
//! | [`GcpMetadata`] | GCP VMs, Cloud Run, Cloud Functions, GKE workload identity: access tokens and ID tokens (`GCE_METADATA_HOST`) | Compute Engine "About VM metadata" and "Authenticate workloads to Google Cloud APIs using service accounts"; Cloud Run "Fetching identity and access tokens" |
//! | [`AzureManagedIdentity`] | Azure VMs, scale sets, AKS nodes (IMDS, `AZURE_POD_IDENTITY_AUTHORITY_HOST`); App Service, Functions, Container Apps (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`) | Microsoft Entra "How to use managed identities for Azure resources on an Azure VM to acquire an access token" (with its retry guidance); "How to use managed identities for App Service and Azure Functions" |
//! | [`GitHubActionsOidc`] | GitHub Actions jobs with `id-token: write` (`ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) | GitHub "About security hardening with OpenID Connect"; `@actions/core` `getIDToken` |
//! | [`DefaultChain`] | the first of: client credentials from the environment, Entra workload identity, a federated token file, App Service, the GCP metadata server, Azure IMDS | Microsoft identity platform, "OAuth 2.0 client credentials flow" (federated credential); `azure-identity`'s environment variables and IMDS probe; `google-auth`'s `GCE_METADATA_HOST` / `GCE_METADATA_IP` and metadata-server ping |
//!
//! A token file's JWT is also a federated client assertion ([`TokenFile`] and
//! [`GitHubActionsOidc`] are [`AssertionSource`](crate::oauth2::AssertionSource)s), and a
//! subject token for the token exchange grant ([`oauth2::TokenExchange`](crate::oauth2)).
//!
//! These sources fail with [`Error`], which never holds a token; as token sources they fail
//! with a [`SourceError`](crate::SourceError) wrapping it, so the cache backs off as the
//! error says. [`DefaultChain`] fails with the error of the source it picked (an
//! [`oauth2::Error`](crate::oauth2::Error) for the OAuth 2.0 ones), or with [`Error`] when no
//! source applies.

/// The `tower::Service<TokenRequest>` of a workload source, from its
/// `request_token_for(&TokenKey) -> Result<Token, Error>`: one definition for every source, as
/// tower-http defines its inner-service accessors once.
macro_rules! token_source_service {
    ($source:ty) => {
        /// A token source: fails with a [`SourceError`](crate::SourceError) wrapping the
        /// [`Error`](crate::workload::Error).
        impl tower_service::Service<crate::TokenRequest> for $source {
            type Response = crate::Token;
            type Error = crate::SourceError;
            type Future = std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<crate::Token, crate::SourceError>>
                        + Send,
                >,
            >;

            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), crate::SourceError>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: crate::TokenRequest) -> Self::Future {
                let this = self.clone();
                Box::pin(async move { Ok(this.request_token_for(req.key()).await?) })
            }
        }
    };
}

/// The `timeout` and `transport` setters every metadata and CI source's builder has, with the
/// same meaning and defaults.
macro_rules! http_client_setters {
    () => {
        /// How long one request may take.
        ///
        /// Default: 10 seconds.
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// The HTTP client: any tower service taking `http::Request<Full<Bytes>>` and answering
        /// an `http::Response` with any body.
        ///
        /// Default: hyper-util's client with rustls (the `default-client` feature).
        pub fn transport<S, B>(mut self, transport: S) -> Self
        where
            S: tower_service::Service<
                    http::Request<http_body_util::Full<bytes::Bytes>>,
                    Response = http::Response<B>,
                > + Clone
                + Send
                + Sync
                + 'static,
            S::Error: Into<crate::BoxError>,
            S::Future: Send + 'static,
            B: http_body::Body + Send + 'static,
            B::Data: Send,
            B::Error: Into<crate::BoxError>,
        {
            self.client.set(transport);
            self
        }
    };
}

mod azure;
mod chain;
mod endpoint;
mod error;
mod gcp;
mod github;
mod jwt;
mod token_file;

pub use azure::{
    AzureManagedIdentity, AzureManagedIdentityBuilder, AZURE_POD_IDENTITY_AUTHORITY_HOST,
    IDENTITY_ENDPOINT, IDENTITY_HEADER,
};
pub use chain::{Chosen, DefaultChain};
pub use error::{Error, ErrorKind};
pub use gcp::{GcpMetadata, GcpMetadataBuilder, GCE_METADATA_HOST, RENEWAL_WINDOW};
pub use github::{
    GitHubActionsOidc, GitHubActionsOidcBuilder, ACTIONS_ID_TOKEN_REQUEST_TOKEN,
    ACTIONS_ID_TOKEN_REQUEST_URL,
};
pub use token_file::TokenFile;
