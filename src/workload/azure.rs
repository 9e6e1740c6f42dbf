//! Azure managed identities: the Instance Metadata Service (VMs, scale sets, AKS nodes) and the
//! identity endpoint of App Service, Functions and Container Apps.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use zeroize::Zeroizing;

use super::endpoint::{self, check_url, var, Client, Plain, Reply};
use super::error::{Error, ErrorKind};
use crate::oauth2::response::lifetime;
use crate::oauth2::transport::Transport;
use crate::{Token, TokenKey};

const IMDS: &str = "the Azure instance metadata service";
const APP_SERVICE: &str = "the Azure App Service identity endpoint";

/// The App Service / Functions identity endpoint's URL.
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// The secret App Service / Functions expects in `X-IDENTITY-HEADER`.
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// The base URL of the instance metadata service, as the Azure SDKs read it (AAD Pod Identity
/// and tests point it elsewhere).
pub const AZURE_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

const IMDS_BASE: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// How often, and how far apart, a `410 Gone` is retried: IMDS "will be available within 70
/// seconds" (Azure's retry guidance); MSAL's IMDS retry specification retries it every 10 s, up
/// to 7 times.
const GONE_RETRIES: u32 = 7;
const GONE_DELAY: Duration = Duration::from_secs(10);

/// A `Retry-After` longer than this is not waited for inside one fetch: the error carries it,
/// and the token cache backs off that long.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The App Service header carrying the secret.
const X_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");

/// A token source for an Azure managed identity (system-assigned, or a user-assigned one named
/// by client id, object id or resource id), for one `resource` (such as
/// `https://vault.azure.net`).
///
/// - On VMs, scale sets and AKS nodes it asks the instance metadata service (IMDS):
///   `GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`
///   with `Metadata: true`, following "How to use managed identities for Azure resources on an
///   Azure VM to acquire an access token" (Microsoft Entra docs).
/// - Where `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (App Service, Functions, Container
///   Apps) it asks that endpoint: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=...`
///   with `X-IDENTITY-HEADER`, following "How to use managed identities for App Service and
///   Azure Functions" (its "REST endpoint reference").
///
/// Retries follow Azure's "Retry guidance" for IMDS, with the delays of the Azure Identity
/// SDKs: `404` (IMDS updating), `429` and `5xx` are retried up to 5 times, after 0.8 s, 1.6 s,
/// 3.2 s, 6.4 s and 12.8 s ([`max_retries`](AzureManagedIdentityBuilder::max_retries),
/// [`retry_delay`](AzureManagedIdentityBuilder::retry_delay)); a `410` (IMDS "will be
/// available within 70 seconds") every 10 s up to 7 times, as MSAL's IMDS retry specification
/// does; a longer `Retry-After` is honoured, one over a minute ends the retries and is left to
/// the token cache's backoff. App Service retries `429` and `5xx` alike. Connection failures
/// and timeouts are not retried here: the token cache backs off from them.
///
/// A `410` sequence takes up to 70 s, more than the token cache's default
/// [`fetch_timeout`](crate::cache::TokenCacheBuilder::fetch_timeout) of 30 s, which then ends
/// the fetch and backs off before the next: raise it to 90 s to let one fetch ride out an IMDS
/// update.
///
/// ```no_run
/// use tower_bearer::workload::AzureManagedIdentity;
/// use tower_bearer::BearerAuthLayer;
///
/// # fn main() -> Result<(), tower_bearer::workload::Error> {
/// let source = AzureManagedIdentity::from_env()
///     .resource("https://vault.azure.net")
///     .client_id("7f3c5e9a-0000-4000-8000-000000000001")
///     .build()?;
/// let layer = BearerAuthLayer::new(source);
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AzureManagedIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    flavor: Flavor,
    resource: String,
    identity: Option<(Id, String)>,
    timeout: Duration,
    max_retries: u32,
    retry_delay: Duration,
    transport: Transport,
}

enum Flavor {
    Imds(Uri),
    AppService(Uri, Zeroizing<String>),
}

/// How a user-assigned identity is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Id {
    Client,
    Object,
    Resource,
}

/// Builds an [`AzureManagedIdentity`]; made by [`AzureManagedIdentity::from_env`],
/// [`AzureManagedIdentity::from_lookup`] or [`AzureManagedIdentity::builder`].
pub struct AzureManagedIdentityBuilder {
    imds_base: Option<String>,
    app_service: Option<(String, Zeroizing<String>)>,
    resource: Option<String>,
    identity: Option<(Id, String)>,
    timeout: Duration,
    max_retries: u32,
    retry_delay: Duration,
    client: Client,
}

impl AzureManagedIdentity {
    /// A builder reading `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` and
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` from the process environment.
    pub fn from_env() -> AzureManagedIdentityBuilder {
        Self::from_lookup(endpoint::process_env)
    }

    /// A builder reading the same variables through `lookup`: with both `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`, the App Service endpoint, else IMDS at
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` if set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> AzureManagedIdentityBuilder {
        let mut builder = Self::builder();
        builder.imds_base = var(&lookup, AZURE_POD_IDENTITY_AUTHORITY_HOST);
        if let (Some(url), Some(header)) = (
            var(&lookup, IDENTITY_ENDPOINT),
            var(&lookup, IDENTITY_HEADER),
        ) {
            builder.app_service = Some((url, Zeroizing::new(header)));
        }
        builder
    }

    /// A builder that reads no environment: IMDS at `http://169.254.169.254`.
    pub fn builder() -> AzureManagedIdentityBuilder {
        AzureManagedIdentityBuilder {
            imds_base: None,
            app_service: None,
            resource: None,
            identity: None,
            timeout: endpoint::DEFAULT_TIMEOUT,
            max_retries: 5,
            retry_delay: Duration::from_millis(800),
            client: Client::default(),
        }
    }

    /// Whether this source asks the App Service identity endpoint rather than IMDS.
    pub fn is_app_service(&self) -> bool {
        matches!(self.inner.flavor, Flavor::AppService(..))
    }

    /// Asks for a token for `key` now, bypassing any cache, retrying as Azure documents: for
    /// the key's first resource (or a single scope ending in `/.default`, without it), else the
    /// configured resource.
    ///
    /// # Errors
    ///
    /// When the service cannot be reached, refuses (after the retries), or answers something
    /// unusable.
    pub async fn request_token_for(&self, key: &TokenKey) -> Result<Token, Error> {
        let inner = &self.inner;
        let resource = key.resources().next().map(str::to_owned).or_else(|| {
            // Entra's `{resource}/.default`; a managed identity's token is for one resource.
            let mut scopes = key.scopes();
            let scope = scopes.next()?;
            if scopes.next().is_some() {
                return None;
            }
            Some(scope.strip_suffix("/.default").unwrap_or(scope).to_owned())
        });
        let (origin, mut url, api_version) = match &inner.flavor {
            Flavor::Imds(url) => (IMDS, url.to_string(), IMDS_API_VERSION),
            Flavor::AppService(url, _) => (APP_SERVICE, url.to_string(), APP_SERVICE_API_VERSION),
        };
        let resource = match resource {
            Some(resource) => resource,
            None if key.scopes().next().is_some() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    origin,
                    "a managed identity's token is for one resource: the key's scopes must be \
                     one `{resource}/.default` (or the key must name a resource)",
                ))
            }
            None => inner.resource.clone(),
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!(
            "api-version={api_version}&resource={}",
            endpoint::encode(&resource)
        ));
        if let Some((id, value)) = &inner.identity {
            let name = match (id, &inner.flavor) {
                (Id::Client, _) => "client_id",
                (Id::Object, Flavor::Imds(_)) => "object_id",
                (Id::Object, Flavor::AppService(..)) => "principal_id",
                (Id::Resource, Flavor::Imds(_)) => "msi_res_id",
                (Id::Resource, Flavor::AppService(..)) => "mi_res_id",
            };
            url.push_str(&format!("&{name}={}", endpoint::encode(value)));
        }
        let uri: Uri = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                origin,
                format!("cannot make the URL: {e}"),
            )
        })?;
        // The 410 schedule (IMDS being updated) and the exponential one count apart, so that
        // an update's 410s do not use up the retries of a later throttling.
        let (mut gone, mut other) = (0, 0);
        loop {
            let reply =
                endpoint::send(origin, &inner.transport, inner.timeout, self.request(&uri)?)
                    .await?;
            if reply.status.is_success() {
                return parse(origin, &reply);
            }
            let sent: &[&str] = match &inner.flavor {
                Flavor::AppService(_, header) => &[header.as_str()],
                Flavor::Imds(_) => &[],
            };
            let error = reply.error(origin, sent);
            let retries = if reply.status == StatusCode::GONE {
                gone += 1;
                gone
            } else {
                other += 1;
                other
            };
            match self.retry_delay(reply.status, retries, error.retry_after()) {
                Some(delay) => {
                    tracing::debug!(
                        status = reply.status.as_u16(),
                        retry = retries,
                        ?delay,
                        "{origin} asked to try again"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }

    fn request(&self, uri: &Uri) -> Result<Request<Full<Bytes>>, Error> {
        let mut request = Request::new(Full::default());
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        match &self.inner.flavor {
            Flavor::Imds(_) => {
                headers.insert("metadata", HeaderValue::from_static("true"));
            }
            Flavor::AppService(_, secret) => {
                let mut value = HeaderValue::from_str(secret).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        APP_SERVICE,
                        "IDENTITY_HEADER is not a valid header value",
                    )
                })?;
                value.set_sensitive(true);
                headers.insert(X_IDENTITY_HEADER, value);
            }
        }
        Ok(request)
    }

    /// How long to wait before retry number `retry` (from 1) after `status`, or `None` to give
    /// up.
    fn retry_delay(
        &self,
        status: StatusCode,
        retry: u32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let inner = &self.inner;
        let imds = matches!(inner.flavor, Flavor::Imds(_));
        if inner.max_retries == 0 || retry_after.is_some_and(|asked| asked > MAX_WAIT) {
            return None;
        }
        let scheduled = if imds && status == StatusCode::GONE {
            (retry <= GONE_RETRIES).then_some(GONE_DELAY)?
        } else if (imds && status == StatusCode::NOT_FOUND)
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            if retry > inner.max_retries {
                return None;
            }
            inner
                .retry_delay
                .saturating_mul(1 << (retry - 1).min(16))
                .min(MAX_WAIT)
        } else {
            return None;
        };
        Some(scheduled.max(retry_after.unwrap_or_default()))
    }
}

/// Reads a token answer: `access_token`, `expires_in` or `expires_on`, `token_type`.
fn parse(origin: &'static str, reply: &Reply) -> Result<Token, Error> {
    let fields = reply.json(origin)?;
    let access_token = endpoint::token_field(origin, &fields, "access_token")?;
    let mut token = Token::new(access_token);
    let invalid = |why: &str| Error::new(ErrorKind::InvalidResponse, origin, why.to_owned());
    if let Some(value) = fields.get("expires_in") {
        let lifetime = lifetime(value)
            .ok_or_else(|| invalid("its `expires_in` is not a number of seconds"))?;
        token = token.with_expires_in(lifetime);
    } else if let Some(value) = fields.get("expires_on") {
        let at = lifetime(value)
            .map(|since_1970| since_1970.as_secs())
            .or_else(|| value.as_str().and_then(parse_date))
            .ok_or_else(|| {
                invalid("its `expires_on` is neither seconds since 1970 nor a date it can read")
            })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let remaining = Duration::from_secs(at).saturating_sub(now);
        // Counted from the request: a little early, never late; and a huge value from the
        // server is capped by the cache rather than overflowing an instant.
        token = token.with_expires_in(remaining);
    }
    if let Some(serde_json::Value::String(kind)) = fields.get("token_type") {
        token = token.with_token_type(kind.as_str());
    }
    Ok(token)
}

/// Seconds since 1970 of a date as App Service's older API versions wrote `expires_on`:
/// `MM/DD/YYYY hh:mm:ss AM +00:00` (12-hour clock, an offset from UTC).
fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let (date, time, half, offset) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let number = |s: &str| s.parse::<i64>().ok();
    let mut date = date.split('/').map(number);
    let (month, day, year) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.split(':').map(number);
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if !(0..=12).contains(&hour) || !(0..60).contains(&minute) || !(0..=60).contains(&second) {
        return None;
    }
    let hour = match half.to_ascii_uppercase().as_str() {
        "AM" => hour % 12,
        "PM" => hour % 12 + 12,
        _ => return None,
    };
    let (sign, offset) = match offset.as_bytes().first()? {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return None,
    };
    let (oh, om) = offset.split_once(':')?;
    let (oh, om) = (number(oh)?, number(om)?);
    // Real offsets are within ±14 h, and years within what a token can mean: anything else
    // is garbage, and must not overflow the arithmetic below.
    if !(0..=14).contains(&oh) || !(0..60).contains(&om) || !(1970..=9999).contains(&year) {
        return None;
    }
    let offset = sign * (oh * 3600 + om * 60);
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

impl AzureManagedIdentityBuilder {
    /// The resource the tokens are for (the `resource` parameter), such as
    /// `https://management.azure.com/`. A token key's first resource replaces it. Required.
    ///
    /// Default: none.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// A user-assigned identity, by its client id (`client_id`).
    ///
    /// Default: the system-assigned identity (or the only user-assigned one).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.identity = Some((Id::Client, id.into()));
        self
    }

    /// A user-assigned identity, by its object (principal) id (`object_id` for IMDS,
    /// `principal_id` for App Service).
    ///
    /// Default: the system-assigned identity.
    pub fn object_id(mut self, id: impl Into<String>) -> Self {
        self.identity = Some((Id::Object, id.into()));
        self
    }

    /// A user-assigned identity, by its Azure resource id (`msi_res_id` for IMDS, `mi_res_id`
    /// for App Service).
    ///
    /// Default: the system-assigned identity.
    pub fn resource_id(mut self, id: impl Into<String>) -> Self {
        self.identity = Some((Id::Resource, id.into()));
        self
    }

    /// The base URL of IMDS (the token path is appended), and IMDS rather than App Service.
    /// Plain `http` is allowed for link-local addresses and loopback only.
    ///
    /// Default: `AZURE_POD_IDENTITY_AUTHORITY_HOST` when set, else `http://169.254.169.254`.
    pub fn imds_base_url(mut self, url: impl Into<String>) -> Self {
        self.imds_base = Some(url.into());
        self.app_service = None;
        self
    }

    /// The App Service / Functions identity endpoint and the secret it expects, rather than
    /// IMDS. Plain `http` is allowed for loopback and link-local addresses only (Linux App
    /// Service and Container Apps give `http://169.254.255.2:8081/msi/token`).
    ///
    /// Default: `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` when both are set (with
    /// [`from_env`](AzureManagedIdentity::from_env)), else IMDS.
    pub fn app_service(mut self, endpoint: impl Into<String>, header: impl Into<String>) -> Self {
        self.app_service = Some((endpoint.into(), Zeroizing::new(header.into())));
        self
    }

    /// How many times a `404` (IMDS), `429` or `5xx` is retried; `0` retries nothing, not even
    /// a `410`.
    ///
    /// Default: 5.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The delay before the first retry, doubled for each next one.
    ///
    /// Default: 800 ms, as the Azure Identity SDKs.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
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
    /// [`ErrorKind::Config`] without a resource, for a URL that is not one or is plain `http`
    /// to a host that is not allowed, or with no transport and no `default-client` feature.
    pub fn build(self) -> Result<AzureManagedIdentity, Error> {
        let (origin, flavor) = match self.app_service {
            Some((url, header)) => {
                // Windows plans give a loopback endpoint, Linux ones and Container Apps a
                // link-local one (`http://169.254.255.2:8081/msi/token`).
                let url = check_url(
                    APP_SERVICE,
                    "IDENTITY_ENDPOINT",
                    &url,
                    Plain::LinkLocal(&[]),
                )?;
                (APP_SERVICE, Flavor::AppService(url, header))
            }
            None => {
                let base = self.imds_base.as_deref().unwrap_or(IMDS_BASE);
                let base = format!("{}{IMDS_PATH}", base.trim().trim_end_matches('/'));
                let what = match self.imds_base {
                    Some(_) => "the IMDS base URL",
                    None => "the IMDS URL",
                };
                (
                    IMDS,
                    Flavor::Imds(check_url(IMDS, what, &base, Plain::LinkLocal(&[]))?),
                )
            }
        };
        let resource = self.resource.filter(|r| !r.is_empty()).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                origin,
                "no resource to ask a token for (AzureManagedIdentityBuilder::resource)",
            )
        })?;
        Ok(AzureManagedIdentity {
            inner: Arc::new(Inner {
                flavor,
                resource,
                identity: self.identity,
                timeout: self.timeout,
                max_retries: self.max_retries,
                retry_delay: self.retry_delay,
                transport: self.client.build(origin)?,
            }),
        })
    }
}

impl fmt::Debug for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Imds(url) => f.debug_tuple("Imds").field(url).finish(),
            Self::AppService(url, _) => f
                .debug_struct("AppService")
                .field("endpoint", url)
                .field("identity_header", &"<redacted>")
                .finish(),
        }
    }
}

impl fmt::Debug for AzureManagedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("AzureManagedIdentity")
            .field("flavor", &inner.flavor)
            .field("resource", &inner.resource)
            .field("identity", &inner.identity)
            .field("timeout", &inner.timeout)
            .field("max_retries", &inner.max_retries)
            .field("retry_delay", &inner.retry_delay)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AzureManagedIdentityBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureManagedIdentityBuilder")
            .field("imds_base", &self.imds_base)
            .field(
                "app_service",
                &self
                    .app_service
                    .as_ref()
                    .map(|(url, _)| (url, "<redacted>")),
            )
            .field("resource", &self.resource)
            .field("identity", &self.identity)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_delay", &self.retry_delay)
            .finish_non_exhaustive()
    }
}

token_source_service!(AzureManagedIdentity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_service_dates_are_read() {
        // 2017-09-14 12:00:00 UTC is 1505390400.
        assert_eq!(
            parse_date("09/14/2017 00:00:00 PM +00:00"),
            Some(1_505_390_400)
        );
        assert_eq!(
            parse_date("09/14/2017 12:00:00 AM +00:00"),
            Some(1_505_347_200)
        );
        assert_eq!(
            parse_date("09/14/2017 02:00:00 PM +02:00"),
            Some(1_505_390_400)
        );
        assert_eq!(parse_date("01/01/1970 12:00:00 AM +00:00"), Some(0));
        assert_eq!(
            parse_date("02/29/2024 11:59:59 PM -01:30"),
            Some(1_709_256_599)
        );
        for bad in [
            "",
            "1505390400x",
            "13/14/2017 00:00:00 PM +00:00",
            "09/14/2017 00:00:00 XM +00:00",
            "09/14/2017 00:00 PM +00:00",
            "09/14/2017 00:00:00 PM 00:00",
            "09/14/2017 00:00:00 PM +00:00 extra",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_environment_chooses_app_service_or_imds() {
        let app = |name: &str| match name {
            IDENTITY_ENDPOINT => Some("http://127.0.0.1:41741/MSI/token/".to_owned()),
            IDENTITY_HEADER => Some("h3ad3r-s3cr3t".to_owned()),
            _ => None,
        };
        let source = AzureManagedIdentity::from_lookup(app)
            .resource("https://vault.azure.net")
            .build()
            .unwrap();
        assert!(source.is_app_service());
        let shown = format!("{source:?} {:?}", AzureManagedIdentity::from_lookup(app));
        assert!(!shown.contains("h3ad3r"), "{shown}");
        let header_only = |name: &str| (name == IDENTITY_HEADER).then(|| "x".to_owned());
        let source = AzureManagedIdentity::from_lookup(header_only)
            .resource("r")
            .build()
            .unwrap();
        assert!(!source.is_app_service());
        let remote = |name: &str| {
            (name == AZURE_POD_IDENTITY_AUTHORITY_HOST).then(|| "http://10.0.0.9".to_owned())
        };
        let err = AzureManagedIdentity::from_lookup(remote)
            .resource("r")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = AzureManagedIdentity::builder().build().unwrap_err();
        assert!(err.to_string().contains("no resource"), "{err}");
        // Linux App Service and Container Apps: a link-local endpoint is fine.
        let linux = |name: &str| match name {
            IDENTITY_ENDPOINT => Some("http://169.254.255.2:8081/msi/token".to_owned()),
            IDENTITY_HEADER => Some("x".to_owned()),
            _ => None,
        };
        let source = AzureManagedIdentity::from_lookup(linux)
            .resource("r")
            .build()
            .unwrap();
        assert!(source.is_app_service());
        let app_remote = |name: &str| match name {
            IDENTITY_ENDPOINT => Some("http://10.1.1.1/token".to_owned()),
            IDENTITY_HEADER => Some("x".to_owned()),
            _ => None,
        };
        let err = AzureManagedIdentity::from_lookup(app_remote)
            .resource("r")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("IDENTITY_ENDPOINT"), "{err}");
    }
}
