//! The HTTP client of the webhook and OTLP sinks: one HTTP/1.1 request per
//! fresh connection, opened like every other connection of the agent
//! (`proxy::relay::connect_upstream`, carrying the socket mark so the
//! kernel never redirects the agent's own exports back to it), TLS with
//! the agent's upstream trust store, hyper for the protocol, the whole
//! exchange under one deadline. It also serves as OTLP's
//! `opentelemetry_http::HttpClient`.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::Error;

/// Largest response body read back (sinks answer with little).
const MAX_RESPONSE: usize = 64 * 1024;

/// Sends requests to one kind of sink.
#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("export::http::Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `tls`: the client config for `https://` URLs (none: they fail).
    pub fn new(tls: Option<Arc<ClientConfig>>, timeout: Duration) -> Self {
        Client { tls, timeout }
    }

    /// Sends `req` (absolute URI) and reads the whole answer, within the timeout.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        let what = req.uri().to_string();
        tokio::time::timeout(self.timeout, self.send_inner(req))
            .await
            .map_err(|_| Error::Http {
                url: what,
                reason: format!("no answer within {:?}", self.timeout),
            })?
    }

    async fn send_inner(&self, req: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        let uri = req.uri().clone();
        let fail = |reason: String| Error::Http {
            url: uri.to_string(),
            reason,
        };
        let (https, host, port) = target(&uri).map_err(fail)?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| fail(format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("{host} has no address")))?;
        let tcp = crate::proxy::relay::connect_upstream(addr, self.timeout)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut parts, body) = req.into_parts();
        // Origin-form on the wire, Host from the URI.
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or(host.clone());
        parts.uri = path.parse().map_err(|e| fail(format!("{e}")))?;
        if let Ok(v) = http::HeaderValue::from_str(&authority) {
            parts.headers.insert(http::header::HOST, v);
        }
        let req = Request::from_parts(parts, Full::new(body));
        let answer = if https {
            let cfg = self
                .tls
                .clone()
                .ok_or_else(|| fail("no TLS configuration for https".into()))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| fail(format!("bad server name {host}: {e}")))?;
            let tls = TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        };
        answer.map_err(fail)
    }
}

/// (https, host, port) of an absolute http(s) URI.
fn target(uri: &Uri) -> Result<(bool, String, u16), String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host, port))
}

async fn exchange<S>(io: TokioIo<S>, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
    .await;
    driver.abort();
    result
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        self.send(request).await.map_err(Into::into)
    }
}
