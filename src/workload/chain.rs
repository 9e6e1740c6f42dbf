//! The default chain: the first workload identity the environment offers, tried in one
//! documented order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::OnceCell;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::azure::{AzureManagedIdentity, IDENTITY_ENDPOINT, IDENTITY_HEADER};
use super::endpoint::{self, Client};
use super::error::{Error, ErrorKind};
use super::gcp::{GcpMetadata, GCE_METADATA_HOST};
use super::token_file::TokenFile;
use crate::oauth2::{ClientCredentials, TokenEndpoint};
use crate::{BoxError, Token, TokenRequest};

const ORIGIN: &str = "the default chain";

/// How long the chain waits for a metadata service to answer its probe, by default: on a
/// cloud VM the link-local service answers in milliseconds; elsewhere the address is usually
/// unroutable and the connection attempt hangs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the metadata services listen on every cloud.
const LINK_LOCAL: &str = "169.254.169.254";

/// The address Google's client libraries probe for the GCP metadata server, overridable.
const GCE_METADATA_IP: &str = "GCE_METADATA_IP";

/// The Entra ID authority when `AZURE_AUTHORITY_HOST` is not set (the public cloud).
const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com/";

type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
type BoxSource = BoxCloneSyncService<TokenRequest, Token, BoxError>;

/// The source a [`DefaultChain`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Chosen {
    /// Client credentials from `OAUTH_TOKEN_URL`, `OAUTH_CLIENT_ID` and `OAUTH_CLIENT_SECRET`.
    ClientCredentials,
    /// Entra workload identity: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID` (and `AZURE_AUTHORITY_HOST`).
    EntraWorkloadIdentity,
    /// A federated token file as client assertion: `OAUTH_FEDERATED_TOKEN_FILE`,
    /// `OAUTH_TOKEN_URL`, `OAUTH_CLIENT_ID`.
    FederatedTokenFile,
    /// Azure App Service or Functions managed identity: `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`.
    AzureAppService,
    /// The GCP metadata server: `GCE_METADATA_HOST`, or one answering the probe.
    GcpMetadata,
    /// Azure IMDS managed identity: an IMDS answering the probe.
    AzureImds,
}

impl Chosen {
    /// How the documentation and the chain's errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client credentials from the environment",
            Self::EntraWorkloadIdentity => "Entra workload identity (federated token file)",
            Self::FederatedTokenFile => "federated token file",
            Self::AzureAppService => "Azure App Service managed identity",
            Self::GcpMetadata => "GCP metadata server",
            Self::AzureImds => "Azure IMDS managed identity",
        }
    }
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first workload identity the environment offers, as one token source, so that the same
/// program runs with a client secret on a laptop and with no secret at all in a cluster.
///
/// The sources are tried in this order; the first whose environment is complete is used:
///
/// | # | source | applies when set |
/// |---|---|---|
/// | 1 | client credentials ([`ClientCredentials`]) | `OAUTH_TOKEN_URL`, `OAUTH_CLIENT_ID`, `OAUTH_CLIENT_SECRET` |
/// | 2 | Entra workload identity: client credentials at `{AZURE_AUTHORITY_HOST}{AZURE_TENANT_ID}/oauth2/v2.0/token` with the [`TokenFile`] as client assertion | `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` |
/// | 3 | a federated token file as client assertion at any token endpoint | `OAUTH_FEDERATED_TOKEN_FILE`, `OAUTH_TOKEN_URL`, `OAUTH_CLIENT_ID` |
/// | 4 | Azure App Service / Functions managed identity ([`AzureManagedIdentity`]) | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` |
/// | 5 | the GCP metadata server ([`GcpMetadata`]) | `GCE_METADATA_HOST`, or a server answering at `GCE_METADATA_IP` (default `169.254.169.254`) with `Metadata-Flavor: Google` |
/// | 6 | Azure IMDS managed identity ([`AzureManagedIdentity`]) | an IMDS answering at `AZURE_POD_IDENTITY_AUTHORITY_HOST` (default `http://169.254.169.254`) |
///
/// The two probes (5 and 6) run at once, each bounded by
/// [`probe_timeout`](Self::probe_timeout), and only when no earlier source applies: off the
/// clouds the chain costs one timeout at its first use. GCP takes [`scope`](Self::scope)s
/// (an [`audience`](Self::audience) asks for an ID token instead); Azure takes a
/// [`resource`](Self::resource), or a scope's resource (`{resource}/.default`).
///
/// What the token is for is given once ([`scope`](Self::scope),
/// [`audience`](Self::audience), [`resource`](Self::resource)) and passed to the chosen source.
///
/// The chain and its probes use the crate's default HTTP client (feature `default-client`)
/// unless given another ([`transport`](Self::transport)).
///
/// The choice is made at the first token request (or by [`resolve`](Self::resolve)), reading
/// the environment then, and kept. If nothing applies, the error lists each source and why it
/// did not apply, naming variables, never their values. A source that applies but is
/// misconfigured (an invalid URL) ends the chain with its error rather than falling through to
/// another identity.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::workload::{Chosen, DefaultChain, ErrorKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = |name: &str| match name {
///     "OAUTH_TOKEN_URL" => Some("https://auth.example.com/token".to_owned()),
///     "OAUTH_CLIENT_ID" => Some("reporting".to_owned()),
///     "OAUTH_CLIENT_SECRET" => Some("s3cr3t".to_owned()),
///     _ => None,
/// };
/// let chain = DefaultChain::from_lookup(env).scope("invoices:read");
/// assert_eq!(chain.resolve().await.unwrap(), Chosen::ClientCredentials);
///
/// // Without probing the metadata services (a test should not depend on the machine it runs on).
/// let err = DefaultChain::from_lookup(|_| None)
///     .probe_timeout(Duration::ZERO)
///     .resolve()
///     .await
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::NotConfigured);
/// assert!(err.to_string().contains("OAUTH_TOKEN_URL is not set"));
/// # }
/// ```
#[derive(Clone)]
pub struct DefaultChain {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    chosen: OnceCell<(Chosen, BoxSource)>,
}

#[derive(Clone)]
struct Config {
    lookup: Lookup,
    scopes: Vec<String>,
    audiences: Vec<String>,
    resources: Vec<String>,
    probe_timeout: Duration,
    client: Client,
}

impl Default for DefaultChain {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultChain {
    /// A chain reading the process environment.
    pub fn new() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// A chain reading variables through `lookup` instead of the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::from_config(Config {
            lookup: Arc::new(lookup),
            scopes: Vec::new(),
            audiences: Vec::new(),
            resources: Vec::new(),
            probe_timeout: PROBE_TIMEOUT,
            client: Client::default(),
        })
    }

    fn from_config(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                chosen: OnceCell::new(),
            }),
        }
    }

    fn map_config(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.inner.config.clone();
        f(&mut config);
        Self::from_config(config)
    }

    /// Adds a scope to ask for. Entra ID takes scopes of the form `{resource}/.default`; with
    /// no scope but a [`resource`](Self::resource), that scope is asked for.
    ///
    /// Default: none.
    pub fn scope(self, scope: impl Into<String>) -> Self {
        let scope = scope.into();
        self.map_config(|c| c.scopes.push(scope))
    }

    /// Adds an `audience` (Auth0, Okta) for the OAuth 2.0 sources. On GCP an audience asks the
    /// metadata server for an ID token for it (what Cloud Run and IAP check) instead of an
    /// access token; Azure's managed identities ignore it.
    ///
    /// Default: none.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.map_config(|c| c.audiences.push(audience))
    }

    /// Adds a `resource` indicator (RFC 8707), the API the token is for.
    ///
    /// Default: none.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        let resource = resource.into();
        self.map_config(|c| c.resources.push(resource))
    }

    /// How long each metadata service probe waits for an answer; zero skips the probes, so
    /// that only metadata services named by the environment (`GCE_METADATA_HOST`, App Service's
    /// variables) are used.
    ///
    /// Default: 1 s.
    pub fn probe_timeout(self, timeout: Duration) -> Self {
        self.map_config(|c| c.probe_timeout = timeout)
    }

    /// The HTTP client of the probes and of the source chosen: any tower service taking
    /// `http::Request<Full<Bytes>>` and answering an `http::Response` with any body.
    ///
    /// Default: hyper-util's client with rustls (the `default-client` feature).
    pub fn transport<S, B>(self, transport: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.map_config(|c| c.client.set(transport))
    }

    /// Chooses the source now (if not chosen yet) and says which.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotConfigured`] listing each source and why it did not apply, or the
    /// error of a source that applies but cannot be set up.
    pub async fn resolve(&self) -> Result<Chosen, Error> {
        Ok(self.chosen().await?.0)
    }

    async fn chosen(&self) -> Result<&(Chosen, BoxSource), Error> {
        self.inner
            .chosen
            .get_or_try_init(|| choose(&self.inner.config))
            .await
    }
}

impl fmt::Debug for DefaultChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultChain")
            .field("chosen", &self.inner.chosen.get().map(|(chosen, _)| chosen))
            .field("scopes", &self.inner.config.scopes)
            .field("audiences", &self.inner.config.audiences)
            .field("resources", &self.inner.config.resources)
            .finish_non_exhaustive()
    }
}

/// What one source made of the environment.
enum Step {
    Applies(Chosen, BoxSource),
    /// Why it does not apply.
    Skipped(String),
}

/// One source's look at the environment.
type Try = fn(&Config) -> Result<Step, Error>;

async fn choose(config: &Config) -> Result<(Chosen, BoxSource), Error> {
    let steps: [(Chosen, Try); 4] = [
        (Chosen::ClientCredentials, client_credentials),
        (Chosen::EntraWorkloadIdentity, entra),
        (Chosen::FederatedTokenFile, federated_file),
        (Chosen::AzureAppService, app_service),
    ];
    let mut skipped = Vec::with_capacity(steps.len() + 2);
    for (chosen, step) in steps {
        match step(config) {
            Ok(Step::Applies(chosen, source)) => {
                tracing::debug!(source = chosen.name(), "the default chain chose its source");
                return Ok((chosen, source));
            }
            Ok(Step::Skipped(why)) => skipped.push(format!("{} ({why})", chosen.name())),
            Err(error) => return Err(error),
        }
    }
    // The two probes at once: one on a task of its own (the crate's tokio features have no
    // `join!`), bounded by the probe timeout like the other.
    let imds = {
        let config = config.clone();
        tokio::spawn(async move { imds(&config).await })
    };
    let gcp = gcp(config).await;
    // GCP comes first: once it applies (named by its variable, or answering), or fails, the
    // IMDS probe's answer is not needed, nor worth waiting up to the probe timeout for.
    let imds = if matches!(gcp, Ok(Step::Skipped(_))) {
        imds.await
            .unwrap_or_else(|e| Ok(Step::Skipped(format!("the probe failed: {e}"))))
    } else {
        imds.abort();
        Ok(Step::Skipped("not probed".into()))
    };
    for (chosen, step) in [(Chosen::GcpMetadata, gcp), (Chosen::AzureImds, imds)] {
        match step? {
            Step::Applies(chosen, source) => {
                tracing::debug!(source = chosen.name(), "the default chain chose its source");
                return Ok((chosen, source));
            }
            Step::Skipped(why) => skipped.push(format!("{} ({why})", chosen.name())),
        }
    }
    Err(Error::new(
        ErrorKind::NotConfigured,
        ORIGIN,
        format!("no workload identity found; tried {}", skipped.join("; ")),
    ))
}

/// The variables' values, or why the source does not apply: the first one missing.
fn require<const N: usize>(config: &Config, names: [&str; N]) -> Result<[String; N], String> {
    let mut values: [String; N] = std::array::from_fn(|_| String::new());
    for (value, name) in values.iter_mut().zip(names) {
        match (config.lookup)(name) {
            Some(found) if !found.trim().is_empty() => *value = found.trim().to_owned(),
            _ => return Err(format!("{name} is not set")),
        }
    }
    Ok(values)
}

/// The error of a source that applies but cannot be set up: it ends the chain.
fn config_error(chosen: Chosen, what: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Config,
        chosen.name(),
        format!("it applies but cannot be set up: {what}"),
    )
}

fn with_target(mut source: ClientCredentials, config: &Config) -> ClientCredentials {
    source = source.scopes(config.scopes.iter().cloned());
    for audience in &config.audiences {
        source = source.audience(audience.clone());
    }
    for resource in &config.resources {
        source = source.resource(resource.clone());
    }
    source
}

fn boxed<S>(source: S) -> BoxSource
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(source.map_err(Into::into))
}

fn client_credentials(config: &Config) -> Result<Step, Error> {
    let [url, client_id, secret] = match require(
        config,
        ["OAUTH_TOKEN_URL", "OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET"],
    ) {
        Ok(values) => values,
        Err(why) => return Ok(Step::Skipped(why)),
    };
    let endpoint = TokenEndpoint::builder(url, client_id)
        .client_secret(secret)
        .erased_transport(config.client.given())
        .build()
        .map_err(|e| {
            config_error(
                Chosen::ClientCredentials,
                format_args!("OAUTH_TOKEN_URL: {e}"),
            )
        })?;
    let source = with_target(ClientCredentials::new(endpoint), config);
    Ok(Step::Applies(Chosen::ClientCredentials, boxed(source)))
}

fn entra(config: &Config) -> Result<Step, Error> {
    let [file, client_id, tenant] = match require(
        config,
        [
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
        ],
    ) {
        Ok(values) => values,
        Err(why) => return Ok(Step::Skipped(why)),
    };
    let authority = (config.lookup)("AZURE_AUTHORITY_HOST")
        .filter(|host| !host.trim().is_empty())
        .unwrap_or_else(|| ENTRA_AUTHORITY.to_owned());
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        authority.trim().trim_end_matches('/'),
        tenant
    );
    let endpoint = TokenEndpoint::builder(url, client_id)
        .client_assertion(TokenFile::new(file))
        .erased_transport(config.client.given())
        .build()
        .map_err(|e| {
            config_error(
                Chosen::EntraWorkloadIdentity,
                format_args!("AZURE_AUTHORITY_HOST or AZURE_TENANT_ID: {e}"),
            )
        })?;
    let mut source = ClientCredentials::new(endpoint);
    if config.scopes.is_empty() {
        // Entra's client credentials take one `{resource}/.default` scope.
        let Some(resource) = config.resources.first() else {
            return Err(config_error(
                Chosen::EntraWorkloadIdentity,
                "Entra ID needs a scope (`{resource}/.default`): give the chain a scope or a \
                 resource",
            ));
        };
        source = source.scope(format!("{}/.default", resource.trim_end_matches('/')));
    } else {
        source = source.scopes(config.scopes.iter().cloned());
    }
    Ok(Step::Applies(Chosen::EntraWorkloadIdentity, boxed(source)))
}

fn federated_file(config: &Config) -> Result<Step, Error> {
    let [file, url, client_id] = match require(
        config,
        [
            "OAUTH_FEDERATED_TOKEN_FILE",
            "OAUTH_TOKEN_URL",
            "OAUTH_CLIENT_ID",
        ],
    ) {
        Ok(values) => values,
        Err(why) => return Ok(Step::Skipped(why)),
    };
    let endpoint = TokenEndpoint::builder(url, client_id)
        .client_assertion(TokenFile::new(file))
        .erased_transport(config.client.given())
        .build()
        .map_err(|e| {
            config_error(
                Chosen::FederatedTokenFile,
                format_args!("OAUTH_TOKEN_URL: {e}"),
            )
        })?;
    let source = with_target(ClientCredentials::new(endpoint), config);
    Ok(Step::Applies(Chosen::FederatedTokenFile, boxed(source)))
}

/// The resource Azure's managed identities ask for: the chain's resource, or its scope's
/// (Entra scopes are `{resource}/.default`).
fn azure_resource(config: &Config, chosen: Chosen) -> Result<String, Error> {
    if let Some(resource) = config.resources.first() {
        return Ok(resource.clone());
    }
    match config.scopes.first() {
        Some(scope) => Ok(scope.strip_suffix("/.default").unwrap_or(scope).to_owned()),
        None => Err(config_error(
            chosen,
            "a managed identity needs a resource: give the chain a resource or a scope",
        )),
    }
}

fn app_service(config: &Config) -> Result<Step, Error> {
    if let Err(why) = require(config, [IDENTITY_ENDPOINT, IDENTITY_HEADER]) {
        return Ok(Step::Skipped(why));
    }
    let chosen = Chosen::AzureAppService;
    let source = AzureManagedIdentity::from_lookup(&*config.lookup)
        .resource(azure_resource(config, chosen)?)
        .client(config.client.clone())
        .build()
        .map_err(|e| config_error(chosen, e))?;
    Ok(Step::Applies(chosen, boxed(source)))
}

fn gcp_source(config: &Config, base_url: Option<String>) -> Result<Step, Error> {
    let chosen = Chosen::GcpMetadata;
    let mut builder = GcpMetadata::from_lookup(&*config.lookup)
        .scopes(config.scopes.clone())
        .client(config.client.clone());
    if let Some(base_url) = base_url {
        builder = builder.base_url(base_url);
    }
    if let Some(audience) = config.audiences.first() {
        builder = builder.id_token(audience.clone());
    }
    let source = builder.build().map_err(|e| config_error(chosen, e))?;
    Ok(Step::Applies(chosen, boxed(source)))
}

/// The GCP metadata server: named by `GCE_METADATA_HOST` (Google's libraries then take it as
/// there), or answering with `Metadata-Flavor: Google`.
async fn gcp(config: &Config) -> Result<Step, Error> {
    if endpoint::var(&*config.lookup, GCE_METADATA_HOST).is_some() {
        return gcp_source(config, None);
    }
    let ip = endpoint::var(&*config.lookup, GCE_METADATA_IP).unwrap_or_else(|| LINK_LOCAL.into());
    let base = format!("http://{}", ip.trim());
    let request = Request::get(format!("{base}/"))
        .header("metadata-flavor", "Google")
        .body(Full::<Bytes>::default());
    match probe(config, request).await {
        Probe::Answered(headers, _) if is_google(&headers) => gcp_source(config, Some(base)),
        Probe::Answered(..) => Ok(Step::Skipped(format!(
            "{GCE_METADATA_HOST} is not set, and what answers at {ip} is not GCP's"
        ))),
        Probe::Silent(why) => Ok(Step::Skipped(format!(
            "{GCE_METADATA_HOST} is not set, and no metadata server at {ip}: {why}"
        ))),
    }
}

fn is_google(headers: &http::HeaderMap) -> bool {
    headers
        .get("metadata-flavor")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"))
}

/// Azure IMDS: as the Azure SDKs probe it, a token request without the `Metadata` header,
/// which IMDS refuses with 400.
async fn imds(config: &Config) -> Result<Step, Error> {
    let base = endpoint::var(
        &*config.lookup,
        super::azure::AZURE_POD_IDENTITY_AUTHORITY_HOST,
    )
    .unwrap_or_else(|| format!("http://{LINK_LOCAL}"));
    let base = base.trim().trim_end_matches('/').to_owned();
    let request = Request::get(format!(
        "{base}/metadata/identity/oauth2/token?api-version=2018-02-01"
    ))
    .body(Full::<Bytes>::default());
    match probe(config, request).await {
        Probe::Answered(headers, status) if status == 400 && !is_google(&headers) => {
            let chosen = Chosen::AzureImds;
            let source = AzureManagedIdentity::from_lookup(&*config.lookup)
                .resource(azure_resource(config, chosen)?)
                .client(config.client.clone())
                .build()
                .map_err(|e| config_error(chosen, e))?;
            Ok(Step::Applies(chosen, boxed(source)))
        }
        Probe::Answered(_, status) => Ok(Step::Skipped(format!(
            "what answers at {base} is not IMDS (HTTP {status})"
        ))),
        Probe::Silent(why) => Ok(Step::Skipped(format!("no IMDS at {base}: {why}"))),
    }
}

enum Probe {
    Answered(http::HeaderMap, u16),
    /// Why not.
    Silent(String),
}

async fn probe(config: &Config, request: Result<Request<Full<Bytes>>, http::Error>) -> Probe {
    if config.probe_timeout.is_zero() {
        return Probe::Silent("not probed (probe_timeout is zero)".into());
    }
    let Ok(request) = request else {
        return Probe::Silent("the address is not a valid URL".into());
    };
    let transport = match config.client.clone().build(ORIGIN) {
        Ok(transport) => transport,
        Err(error) => return Probe::Silent(error.to_string()),
    };
    match endpoint::send(ORIGIN, &transport, config.probe_timeout, request).await {
        Ok(reply) => Probe::Answered(reply.headers, reply.status.as_u16()),
        Err(error) if error.kind() == ErrorKind::Timeout => {
            Probe::Silent(format!("no answer within {:?}", config.probe_timeout))
        }
        Err(_) => Probe::Silent("cannot be reached".into()),
    }
}

/// A token source: the first call chooses; every call goes to the chosen source. Fails with
/// the chain's [`Error`] (as a `SourceError`) while nothing applies, and with the chosen
/// source's error after.
impl Service<TokenRequest> for DefaultChain {
    type Response = Token;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TokenRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let source = match this.chosen().await {
                Ok((_, source)) => source.clone(),
                Err(error) => return Err(crate::SourceError::from(error).into()),
            };
            source.oneshot(req).await
        })
    }
}
