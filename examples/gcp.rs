//! Access tokens and ID tokens from the GCP metadata server, as a workload on a VM, Cloud Run,
//! Cloud Functions or GKE (workload identity) gets them: no key file anywhere.
//!
//! On GCP, `GcpMetadata::from_env()` finds the metadata server by itself (`169.254.169.254`, or
//! `GCE_METADATA_HOST`). Here the example runs against a loopback fake of the server
//! (`tests/support/metadata.rs`), which `GCE_METADATA_HOST` points at:
//!
//! ```text
//! cargo run --example gcp
//! ```

#[path = "../tests/support/metadata.rs"]
mod fakes;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_bearer::workload::{GcpMetadata, GCE_METADATA_HOST};
use tower_bearer::BearerAuthLayer;

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The fake metadata server: one-hour tokens, renewed in their last 5 minutes.
    let server = fakes::Gcp::new(Duration::from_secs(3600), Duration::from_secs(300));
    let base = server.fake.serve().await;
    let host = base.trim_start_matches("http://").to_owned();
    let env = move |name: &str| (name == GCE_METADATA_HOST).then(|| host.clone());

    // Access tokens of the workload's service account, for Google APIs.
    let source = GcpMetadata::from_lookup(&env)
        .scope("https://www.googleapis.com/auth/devstorage.read_only")
        .build()?;
    println!("source: {source:?}");
    let mut storage = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source))
        .service(api());
    let request = Request::get("https://storage.googleapis.com/storage/v1/b/my-bucket/o")
        .body(Full::default())?;
    let sent = storage.ready().await?.call(request).await?.into_body();
    println!("the storage API got `{}...`", &sent[..20.min(sent.len())]);

    // ID tokens for a Cloud Run service (its URL is the audience).
    let id_source = GcpMetadata::from_lookup(&env)
        .id_token("https://hello-abc123-uc.a.run.app")
        .build()?;
    let mut run = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(id_source))
        .service(api());
    let request = Request::get("https://hello-abc123-uc.a.run.app/").body(Full::default())?;
    let id = run.ready().await?.call(request).await?.into_body();
    let jwt = id.strip_prefix("Bearer ").unwrap_or_default();
    println!(
        "the Cloud Run service got an ID token for {}",
        fakes::claims(jwt)["aud"]
    );

    for seen in server.fake.requests() {
        println!(
            "the metadata server saw GET {} (Metadata-Flavor: {:?})",
            seen.target,
            seen.headers.get("metadata-flavor")
        );
    }
    assert_eq!(sent, "Bearer ya29.fake-gcp-1");
    assert_eq!(
        fakes::claims(jwt)["aud"],
        "https://hello-abc123-uc.a.run.app"
    );
    Ok(())
}
