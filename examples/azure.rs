//! Tokens of an Azure managed identity: from the instance metadata service (IMDS) on a VM,
//! scale set or AKS node, or from the identity endpoint of App Service, Functions and Container
//! Apps (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`). No client secret anywhere.
//!
//! On Azure, `AzureManagedIdentity::from_env()` picks the right one by itself. Here the example
//! runs against loopback fakes of both (`tests/support/metadata.rs`): IMDS, which
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` points at, first answers `404` (it is being updated) and
//! is retried 0.8 s later, as Azure documents; then the App Service endpoint.
//!
//! ```text
//! cargo run --example azure
//! ```

#[path = "../tests/support/metadata.rs"]
mod fakes;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_bearer::workload::{
    AzureManagedIdentity, AZURE_POD_IDENTITY_AUTHORITY_HOST, IDENTITY_ENDPOINT, IDENTITY_HEADER,
};
use tower_bearer::{BearerAuthLayer, TokenSource};

/// An API that answers with the `Authorization` header it received.
fn api() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(|req: Request<Full<Bytes>>| {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        std::future::ready(Ok(Response::new(auth.unwrap_or_default())))
    })
}

async fn call(
    source: impl TokenSource,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut vault = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source))
        .service(api());
    let request =
        Request::get("https://my-vault.vault.azure.net/secrets/db-password?api-version=7.4")
            .body(Full::default())?;
    Ok(vault.ready().await?.call(request).await?.into_body())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // IMDS, being updated: one 404 before it answers.
    let imds = fakes::Imds::new([(404, None)]);
    let base = imds.fake.serve().await;
    let env = move |name: &str| (name == AZURE_POD_IDENTITY_AUTHORITY_HOST).then(|| base.clone());
    let source = AzureManagedIdentity::from_lookup(env)
        .resource("https://vault.azure.net")
        .client_id("7f3c5e9a-0000-4000-8000-000000000001")
        .build()?;
    println!("source: {source:?}");
    let started = Instant::now();
    let sent = call(source).await?;
    println!(
        "the vault got `{}...` after {:.1?} (IMDS answered 404 first; retried 0.8 s later)",
        &sent[..24.min(sent.len())],
        started.elapsed()
    );
    let seen = imds.fake.requests();
    for request in &seen {
        println!(
            "IMDS saw GET {} (Metadata: {:?})",
            request.target,
            request.headers.get("metadata")
        );
    }

    // App Service: the endpoint and the header's secret come from the environment.
    let app = fakes::app_service("example-identity-header");
    let app_base = app.serve().await;
    let app_env = move |name: &str| match name {
        IDENTITY_ENDPOINT => Some(format!("{app_base}/msi/token")),
        IDENTITY_HEADER => Some("example-identity-header".to_owned()),
        _ => None,
    };
    let app_source = AzureManagedIdentity::from_lookup(app_env)
        .resource("https://vault.azure.net")
        .build()?;
    println!("source: {app_source:?}");
    let app_sent = call(app_source).await?;
    println!(
        "the vault got `{}...` through App Service",
        &app_sent[..24.min(app_sent.len())]
    );

    assert_eq!(seen.len(), 2);
    assert_eq!(
        sent,
        "Bearer eyJ0eXAi.fake-imds-1.7f3c5e9a-0000-4000-8000-000000000001"
    );
    assert_eq!(app_sent, "Bearer eyJ0eXAi.fake-appservice-1");
    Ok(())
}
