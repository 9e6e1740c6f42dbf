//! A GitHub Actions job calling a cloud with no stored secret: the job's OIDC token (a JWT
//! naming the repository and workflow) is the client assertion of a client credentials request
//! to Entra ID (workload identity federation), and the access token that comes back goes on the
//! API calls.
//!
//! In a job with `permissions: id-token: write`, `GitHubActionsOidc::from_env()` reads
//! `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. Here the example runs
//! against a loopback fake of GitHub's token service (`tests/support/metadata.rs`) and an
//! in-process token endpoint standing in for Entra ID:
//!
//! ```text
//! cargo run --example github_actions
//! ```

#[path = "../tests/support/metadata.rs"]
mod fakes;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_bearer::oauth2::{ClientCredentials, TokenEndpoint};
use tower_bearer::workload::{
    GitHubActionsOidc, ACTIONS_ID_TOKEN_REQUEST_TOKEN, ACTIONS_ID_TOKEN_REQUEST_URL,
};
use tower_bearer::BearerAuthLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let github = fakes::github("example-request-token", Duration::from_secs(300));
    let base = github.serve().await;
    let env = move |name: &str| match name {
        ACTIONS_ID_TOKEN_REQUEST_URL => Some(format!("{base}/idtoken?api-version=2.0")),
        ACTIONS_ID_TOKEN_REQUEST_TOKEN => Some("example-request-token".to_owned()),
        _ => None,
    };
    let oidc = GitHubActionsOidc::from_lookup(env)
        .audience("api://AzureADTokenExchange")
        .build()?;
    println!("source: {oidc:?}");

    // Entra ID, in-process: it accepts a JWT bearer client assertion issued by GitHub for its
    // exchange audience, and says which repository it came from.
    let entra = service_fn(|req: Request<Full<Bytes>>| async move {
        let form = String::from_utf8(req.into_body().collect().await?.to_bytes().to_vec())?;
        let assertion = fakes::query(&format!("?{form}"), "client_assertion").unwrap_or_default();
        let claims = fakes::claims(&assertion);
        println!(
            "the token endpoint got a client assertion from {} for {} (sub {})",
            claims["iss"], claims["aud"], claims["sub"]
        );
        assert_eq!(claims["aud"], "api://AzureADTokenExchange");
        let body =
            r#"{"access_token":"entra-access-token","token_type":"Bearer","expires_in":3599}"#;
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse()?);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
    });
    let endpoint = TokenEndpoint::builder(
        "https://login.microsoftonline.com/my-tenant/oauth2/v2.0/token",
        "00000000-0000-0000-0000-000000000001",
    )
    .client_assertion(oidc)
    .transport(entra)
    .build()?;
    let source = ClientCredentials::new(endpoint).scope("https://management.azure.com/.default");

    let api = service_fn(|req: Request<Full<Bytes>>| {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        std::future::ready(Ok::<_, Infallible>(Response::new(auth.unwrap_or_default())))
    });
    let mut arm = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(source))
        .service(api);
    let request = Request::get("https://management.azure.com/subscriptions?api-version=2022-12-01")
        .body(Full::default())?;
    let sent = arm.ready().await?.call(request).await?.into_body();
    println!("the Azure API got `{sent}`");

    let asked = github.requests();
    println!(
        "GitHub's token service was asked {} time(s), for audience {:?}",
        asked.len(),
        asked[0].query("audience")
    );
    assert_eq!(sent, "Bearer entra-access-token");
    assert_eq!(asked.len(), 1);
    Ok(())
}
