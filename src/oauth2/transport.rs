//! The HTTP client that reaches the authorization server: any tower service, type-erased, whose
//! answers are read in full up to a bound; hyper-util with rustls by default.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

use super::error::Error;
use super::response::MAX_BODY;
use crate::BoxError;

/// The HTTP client a token source uses to reach its token endpoint, type-erased.
pub(crate) type Transport = BoxCloneSyncService<Request<Full<Bytes>>, Answer, BoxError>;

/// A token endpoint's answer, read in full (up to [`MAX_BODY`]).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Result<Bytes, Error>,
}

pub(crate) fn erase<S, B>(transport: S) -> Transport
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        transport
            .map_err(Into::into)
            .and_then(|response: Response<B>| read_answer(response)),
    )
}

async fn read_answer<B>(response: Response<B>) -> Result<Answer, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // Refused before reading: a hostile server must not make us allocate.
        Err(Error::body_too_large(status, MAX_BODY))
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                Err(Error::body_too_large(status, MAX_BODY))
            }
            // The connection failed mid-body: a transport error, which is worth retrying.
            Err(error) => return Err(error),
        }
    };
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
    })
}

#[cfg(feature = "default-client")]
pub(crate) fn default_transport(tls: Option<rustls::ClientConfig>) -> Result<Transport, Error> {
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::rt::TokioExecutor;

    let connector = match tls {
        Some(mut config) => {
            // hyper-rustls sets ALPN from the protocols enabled below.
            config.alpn_protocols.clear();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build()
        }
        None => {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let builder = hyper_rustls::HttpsConnectorBuilder::new();
            // The system's roots include private CAs that companies add; the bundled Mozilla
            // roots keep working where the system has none (minimal containers).
            let builder = match builder.with_provider_and_native_roots(provider.clone()) {
                Ok(builder) => builder,
                Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(provider)
                    .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?,
            };
            builder
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .build()
        }
    };
    let client: HyperClient<_, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(erase(client))
}

#[cfg(not(feature = "default-client"))]
pub(crate) fn default_transport() -> Result<Transport, Error> {
    Err(Error::config(
        "no HTTP client for the token endpoint: enable the `default-client` feature or call \
         `TokenEndpointBuilder::transport`",
    ))
}
