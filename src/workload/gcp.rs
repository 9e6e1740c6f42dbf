//! The GCP metadata server: access tokens and ID tokens of the service account a VM, a Cloud
//! Run service, a function or a GKE pod (workload identity) runs as.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;

use super::endpoint::{self, check_url, var, Client, Plain, Reply};
use super::error::{Error, ErrorKind};
use super::jwt;
use crate::oauth2::response;
use crate::oauth2::transport::Transport;
use crate::{Token, TokenKey};

const ORIGIN: &str = "the GCP metadata server";

/// The environment variable naming the metadata server's host (and port), as Google's client
/// libraries read it.
pub const GCE_METADATA_HOST: &str = "GCE_METADATA_HOST";

/// The metadata server's address, used when `GCE_METADATA_HOST` is not set (Google's Go client
/// library uses the address rather than `metadata.google.internal`, saving a DNS lookup).
const DEFAULT_HOST: &str = "169.254.169.254";

/// The header every request and every answer of the metadata server carries.
const METADATA_FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");

/// The metadata server's own name, reached in plain http like its address.
const NAMED_HOSTS: &[&str] = &["metadata.google.internal"];

/// How long before an access token's expiry the metadata server starts handing out a new one.
/// Google documents five minutes ("The metadata server caches access tokens until 5 minutes
/// before they expire", Compute Engine, "Authenticate workloads to Google Cloud APIs using
/// service accounts"); Google's Go library found metadata servers (GKE's) whose shortest cache
/// is four minutes, and waits for those: so does this.
pub const RENEWAL_WINDOW: Duration = Duration::from_secs(4 * 60);

/// A token source for the GCP metadata server: the access tokens
/// (`/computeMetadata/v1/instance/service-accounts/{account}/token`, optionally for some
/// scopes), or the ID tokens for an audience (`.../identity?audience=...&format=full`), of the
/// service account the workload runs as. Follows Compute Engine's "About VM metadata" and
/// "Authenticate workloads to Google Cloud APIs using service accounts", and Cloud Run's
/// "Fetching identity and access tokens".
///
/// Every request carries `Metadata-Flavor: Google`, and an answer without it is refused (it
/// did not come from the metadata server). The server hands out the same cached access token
/// until its last minutes: access tokens carry that [`RENEWAL_WINDOW`]
/// ([`Token::with_renewal_window`]), so the token cache does not ask for a new one before.
/// An ID token's lifetime is its JWT's `exp`.
///
/// ```no_run
/// use tower_bearer::workload::GcpMetadata;
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), tower_bearer::workload::Error> {
/// // Access tokens of the VM's service account, for Google APIs:
/// let layer = BearerAuthLayer::new(GcpMetadata::from_env().build()?);
/// // ID tokens for a Cloud Run service:
/// let id = GcpMetadata::from_env().id_token("https://hello-abc123-uc.a.run.app").build()?;
/// # drop((layer, id));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GcpMetadata {
    inner: Arc<Inner>,
}

struct Inner {
    base: Uri,
    account: String,
    scopes: Vec<String>,
    audience: Option<String>,
    timeout: Duration,
    renewal_window: Duration,
    transport: Transport,
}

/// Builds a [`GcpMetadata`]; made by [`GcpMetadata::from_env`], [`GcpMetadata::from_lookup`]
/// or [`GcpMetadata::builder`].
#[derive(Debug)]
pub struct GcpMetadataBuilder {
    host: Option<String>,
    base_url: Option<String>,
    account: String,
    scopes: Vec<String>,
    audience: Option<String>,
    timeout: Duration,
    renewal_window: Duration,
    client: Client,
}

impl GcpMetadata {
    /// A builder reading `GCE_METADATA_HOST` from the process environment.
    pub fn from_env() -> GcpMetadataBuilder {
        Self::from_lookup(endpoint::process_env)
    }

    /// A builder reading `GCE_METADATA_HOST` through `lookup` (a name to its value), so that
    /// tests and chains need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> GcpMetadataBuilder {
        let mut builder = Self::builder();
        builder.host = var(&lookup, GCE_METADATA_HOST);
        builder
    }

    /// A builder that reads no environment: the metadata server at `169.254.169.254`.
    pub fn builder() -> GcpMetadataBuilder {
        GcpMetadataBuilder {
            host: None,
            base_url: None,
            account: "default".to_owned(),
            scopes: Vec::new(),
            audience: None,
            timeout: endpoint::DEFAULT_TIMEOUT,
            renewal_window: RENEWAL_WINDOW,
            client: Client::default(),
        }
    }

    /// The metadata server's base URL.
    pub fn base_url(&self) -> &Uri {
        &self.inner.base
    }

    /// Asks the metadata server for a token for `key` now, bypassing any cache: an access token
    /// for the key's scopes (or the configured ones), or in ID-token mode an ID token for the
    /// key's first audience (or the configured one).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached, refuses, is not the metadata server (no
    /// `Metadata-Flavor: Google`), or answers something unusable.
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<Token, Error> {
        let inner = &self.inner;
        let account = format!(
            "/computeMetadata/v1/instance/service-accounts/{}/",
            inner.account
        );
        let url = match &inner.audience {
            Some(configured) => {
                let audience = key.audiences().next().unwrap_or(configured);
                format!(
                    "{}identity?audience={}&format=full",
                    endpoint::join(&inner.base, &account),
                    endpoint::encode(audience)
                )
            }
            None => {
                let mut url = format!("{}token", endpoint::join(&inner.base, &account));
                let scopes: Vec<&str> = match key.scopes().next() {
                    Some(_) => key.scopes().collect(),
                    None => inner.scopes.iter().map(String::as_str).collect(),
                };
                if !scopes.is_empty() {
                    url.push_str("?scopes=");
                    url.push_str(&endpoint::encode(&scopes.join(",")));
                }
                url
            }
        };
        let mut request = Request::new(Full::default());
        *request.uri_mut() = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                ORIGIN,
                format!("cannot make the URL: {e}"),
            )
        })?;
        request
            .headers_mut()
            .insert(METADATA_FLAVOR, HeaderValue::from_static("Google"));
        let reply = endpoint::send(ORIGIN, &inner.transport, inner.timeout, request).await?;
        let flavored = reply
            .headers
            .get(METADATA_FLAVOR)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
        // An error status is judged by its status even without the header (a proxy's 503, a
        // loaded server's 429 are worth retrying); a success without it is not the server's.
        if !reply.status.is_success() {
            return Err(reply.error(ORIGIN, &[]));
        }
        if !flavored {
            return Err(Error::new(
                ErrorKind::NotConfigured,
                ORIGIN,
                "the answer does not carry `Metadata-Flavor: Google`: whatever answered is not \
                 a GCP metadata server",
            )
            .with_status(reply.status));
        }
        match inner.audience {
            Some(_) => id_token(&reply),
            None => self.access_token(&reply),
        }
    }

    fn access_token(&self, reply: &Reply) -> Result<Token, Error> {
        let fields = reply.json(ORIGIN)?;
        let access_token = endpoint::token_field(ORIGIN, &fields, "access_token")?;
        let mut token = Token::new(access_token).with_renewal_window(self.inner.renewal_window);
        if let Some(lifetime) = fields.get("expires_in") {
            let lifetime = response::lifetime(lifetime).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidResponse,
                    ORIGIN,
                    "its `expires_in` is not a number of seconds",
                )
            })?;
            token = token.with_expires_in(lifetime);
        }
        if let Some(serde_json::Value::String(kind)) = fields.get("token_type") {
            token = token.with_token_type(kind.as_str());
        }
        Ok(token)
    }
}

/// The ID token in an answer's body, living until its `exp`.
fn id_token(reply: &Reply) -> Result<Token, Error> {
    let text = std::str::from_utf8(&reply.body)
        .map_err(|_| Error::new(ErrorKind::InvalidToken, ORIGIN, "the ID token is not text"))?
        .trim();
    let times = jwt::times(text).map_err(|jwt::NotAJwt(why)| {
        Error::new(
            ErrorKind::InvalidToken,
            ORIGIN,
            format!("the ID token is not usable: {why}"),
        )
    })?;
    let remaining = times.remaining();
    if remaining.is_zero() {
        return Err(Error::new(
            ErrorKind::InvalidToken,
            ORIGIN,
            "the ID token has already expired by this machine's clock (is the clock right?)",
        ));
    }
    Ok(Token::new(text).with_expires_in(remaining))
}

impl GcpMetadataBuilder {
    /// The metadata server's base URL, such as `http://127.0.0.1:8080` for an emulator. Plain
    /// `http` is allowed for link-local addresses, `metadata.google.internal` and loopback only.
    ///
    /// Default: `http://` and the host in `GCE_METADATA_HOST` when that variable is set (as
    /// Google's client libraries read it), else `http://169.254.169.254`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The service account: its email, or `default` for the one the workload runs as.
    ///
    /// Default: `default`.
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.account = account.into();
        self
    }

    /// Adds an OAuth scope the access tokens are for (sent as `scopes=a,b`). A token key's
    /// scopes replace these.
    ///
    /// Default: none, the scopes the instance was given.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds several scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Fetches ID tokens (Google-signed OpenID Connect JWTs) for `audience` instead of access
    /// tokens, as Cloud Run and IAP want. A token key's first audience replaces it.
    ///
    /// Default: access tokens.
    pub fn id_token(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long before its expiry the server starts handing out a new access token; the cache
    /// does not refresh before that ([`Token::with_renewal_window`]).
    ///
    /// Default: [`RENEWAL_WINDOW`] (4 minutes).
    pub fn renewal_window(mut self, window: Duration) -> Self {
        self.renewal_window = window;
        self
    }

    http_client_setters!();

    /// The HTTP client of a default chain that was given one.
    pub(crate) fn client(mut self, client: Client) -> Self {
        self.client = client;
        self
    }

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a base URL (or `GCE_METADATA_HOST`) that is not a URL, or is
    /// plain `http` to a host that is neither link-local, the metadata server's name nor
    /// loopback; for an account name with characters other than letters, digits and `@._-`;
    /// or with no transport and no `default-client` feature.
    pub fn build(self) -> Result<GcpMetadata, Error> {
        let url = match (&self.base_url, &self.host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => format!("http://{}", host.trim().trim_end_matches('/')),
            (None, None) => format!("http://{DEFAULT_HOST}"),
        };
        let what = match (&self.base_url, &self.host) {
            (None, Some(_)) => "GCE_METADATA_HOST",
            _ => "the base URL",
        };
        let base = check_url(ORIGIN, what, &url, Plain::LinkLocal(NAMED_HOSTS))?;
        let account_ok = !self.account.is_empty()
            && self
                .account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b));
        if !account_ok {
            return Err(Error::new(
                ErrorKind::Config,
                ORIGIN,
                format!(
                    "the account {:?} is not a service account email or `default`",
                    self.account
                ),
            ));
        }
        Ok(GcpMetadata {
            inner: Arc::new(Inner {
                base,
                account: self.account,
                scopes: self.scopes,
                audience: self.audience,
                timeout: self.timeout,
                renewal_window: self.renewal_window,
                transport: self.client.build(ORIGIN)?,
            }),
        })
    }
}

impl fmt::Debug for GcpMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("GcpMetadata")
            .field("base_url", &inner.base)
            .field("account", &inner.account)
            .field("scopes", &inner.scopes)
            .field("audience", &inner.audience)
            .field("timeout", &inner.timeout)
            .field("renewal_window", &inner.renewal_window)
            .finish_non_exhaustive()
    }
}

token_source_service!(GcpMetadata);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_comes_from_the_environment_unless_a_base_url_is_given() {
        let env = |name: &str| (name == GCE_METADATA_HOST).then(|| "127.0.0.1:8088".to_owned());
        let source = GcpMetadata::from_lookup(env).build().unwrap();
        assert_eq!(source.base_url().to_string(), "http://127.0.0.1:8088/");
        let source = GcpMetadata::from_lookup(env)
            .base_url("http://127.0.0.1:9")
            .build()
            .unwrap();
        assert_eq!(source.base_url().to_string(), "http://127.0.0.1:9/");
        let source = GcpMetadata::from_lookup(|_| None).build().unwrap();
        assert_eq!(source.base_url().to_string(), "http://169.254.169.254/");
        let named = |_: &str| Some("metadata.google.internal".to_owned());
        assert!(GcpMetadata::from_lookup(named).build().is_ok());
        let remote = |_: &str| Some("metadata.example.com".to_owned());
        let err = GcpMetadata::from_lookup(remote).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("GCE_METADATA_HOST"), "{err}");
        let err = GcpMetadata::builder()
            .account("a/../b")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
