//! The default chain: the first workload identity the environment offers, tried in one
//! documented order.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OnceCell;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use super::error::{Error, ErrorKind};
use super::token_file::TokenFile;
use crate::oauth2::{ClientCredentials, TokenEndpoint};
use crate::{BoxError, Token, TokenRequest};

const ORIGIN: &str = "the default chain";

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
}

impl Chosen {
    /// How the documentation and the chain's errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client credentials from the environment",
            Self::EntraWorkloadIdentity => "Entra workload identity (federated token file)",
            Self::FederatedTokenFile => "federated token file",
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
///
/// What the token is for is given once ([`scope`](Self::scope),
/// [`audience`](Self::audience), [`resource`](Self::resource)) and passed to the chosen source.
///
/// The choice is made at the first token request (or by [`resolve`](Self::resolve)), reading
/// the environment then, and kept. If nothing applies, the error lists each source and why it
/// did not apply, naming variables, never their values. A source that applies but is
/// misconfigured (an invalid URL) ends the chain with its error rather than falling through to
/// another identity.
///
/// ```
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
/// let chain = DefaultChain::with_lookup(env).scope("invoices:read");
/// assert_eq!(chain.resolve().await.unwrap(), Chosen::ClientCredentials);
///
/// let err = DefaultChain::with_lookup(|_| None).resolve().await.unwrap_err();
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
}

impl Default for DefaultChain {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultChain {
    /// A chain reading the process environment.
    pub fn new() -> Self {
        Self::with_lookup(|name| std::env::var(name).ok())
    }

    /// A chain reading variables through `lookup` instead of the process environment.
    pub fn with_lookup(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::from_config(Config {
            lookup: Arc::new(lookup),
            scopes: Vec::new(),
            audiences: Vec::new(),
            resources: Vec::new(),
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

    /// Adds an `audience` (Auth0, Okta) for the OAuth 2.0 sources.
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
            .get_or_try_init(|| async { choose(&self.inner.config) })
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

fn choose(config: &Config) -> Result<(Chosen, BoxSource), Error> {
    let steps: [(Chosen, Try); 3] = [
        (Chosen::ClientCredentials, client_credentials),
        (Chosen::EntraWorkloadIdentity, entra),
        (Chosen::FederatedTokenFile, federated_file),
    ];
    let mut skipped = Vec::with_capacity(steps.len());
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

fn boxed(source: ClientCredentials) -> BoxSource {
    BoxCloneSyncService::new(source.map_err(BoxError::from))
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
