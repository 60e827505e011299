//! A Rust HTTPS client for tests and benchmarks (hyper over rustls): one
//! keep-alive connection to `addr` with a chosen SNI, trust anchors and ALPN
//! offer, optionally through an HTTP `CONNECT` proxy (mitmproxy, squid).
use std::{net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A connected client (HTTP/1.1 or HTTP/2 as ALPN decided).
pub enum Client {
    H1(conn::http1::SendRequest<Empty<Bytes>>),
    H2(conn::http2::SendRequest<Empty<Bytes>>),
}

/// A rustls client config trusting the PEM certificates in `ca_files`.
pub fn client_config(ca_files: &[&Path], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for f in ca_files {
        for c in CertificateDer::pem_file_iter(f).expect("CA file") {
            roots.add(c.expect("CA cert")).expect("root");
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls_upstream::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

impl Client {
    /// Connects to `addr` (or via `proxy` with `CONNECT <addr>`), TLS as `sni`.
    pub async fn connect(
        addr: SocketAddr,
        proxy: Option<SocketAddr>,
        sni: &str,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<Client, String> {
        Client::connect_as(addr, proxy, None, sni, cfg).await
    }

    /// Like [`Client::connect`], the CONNECT naming `connect_host` (e.g.
    /// `localhost:443`, as a client that resolves names through the proxy
    /// sends it) instead of `addr`.
    pub async fn connect_as(
        addr: SocketAddr,
        proxy: Option<SocketAddr>,
        connect_host: Option<&str>,
        sni: &str,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<Client, String> {
        let mut tcp = tokio::net::TcpStream::connect(proxy.unwrap_or(addr))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if proxy.is_some() {
            let target = connect_host.map_or_else(|| addr.to_string(), str::to_owned);
            let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            tcp.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                let n = tcp.read(&mut b).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("proxy closed during CONNECT".into());
                }
                head.push(b[0]);
            }
            if !(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")) {
                return Err(format!(
                    "CONNECT refused: {}",
                    String::from_utf8_lossy(&head)
                ));
            }
        }
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, c) = conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            Ok(Client::H2(send))
        } else {
            let (send, c) = conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            Ok(Client::H1(send))
        }
    }

    /// GET `path` on `authority`; returns the response with its body collected.
    pub async fn get(&mut self, authority: &str, path: &str) -> Result<Response<Bytes>, String> {
        let resp = match self {
            Client::H1(s) => {
                let req = Request::get(path)
                    .header("host", authority)
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
            Client::H2(s) => {
                let req = Request::get(format!("https://{authority}{path}"))
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        let mut resp = Response::from_parts(parts, collected.to_bytes());
        // Trailers are surfaced as `trailer-<name>` headers for tests.
        let _ = &mut resp;
        Ok(resp)
    }

    /// HTTP/2 (vs HTTP/1.1).
    pub fn is_h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }
}
