//! TLS test material: a test CA (rcgen) and an HTTPS upstream (hyper, HTTP/1.1
//! and HTTP/2 by ALPN) with endpoints for the interception tests: `/hello`,
//! `/status/<n>`, `/headers` (request headers as JSON), `/bytes/<n>` (n
//! pattern bytes, Content-Length), `/chunked/<n>` (same, no length), `/echo`
//! (streams the request body back), `/sha` (length and SHA-256 of the request
//! body), `/trailers`, `/inject` (a body with a marker after 64 KiB),
//! `/injection` (a short text carrying a real prompt injection,
//! [`INJECTION`]), `/upgrade` (101 to an echo protocol). Also a raw TCP echo
//! server.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub use crate::upstream::{INJECTION, hex, pattern_byte, pattern_sha256};

/// A multi-thread runtime of `workers` threads with a listener bound on it
/// (port 0 for any); the runtime must outlive the servers spawned on it.
pub fn listen_on_runtime(
    bind: SocketAddr,
    workers: usize,
) -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(bind))
        .unwrap_or_else(|e| panic!("binding {bind}: {e}"));
    let addr = listener.local_addr().expect("addr");
    (rt, listener, addr)
}

/// The rustls crypto provider the tests use.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA for test upstreams.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, PKCS#8 key PEM), for tools that need to sign (squid).
    pub fn ca_pem_and_key(&self) -> (String, String) {
        (self.cert_pem.clone(), self.key_pem.clone())
    }

    /// Writes the CA certificate to `path`.
    pub fn write_pem(&self, path: &std::path::Path) {
        std::fs::write(path, &self.cert_pem).expect("writing test CA");
    }

    /// [`TestCa::leaf`] as PEM texts (certificate, PKCS#8 key), for servers
    /// that read files (Python's `ssl`).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        use base64::Engine as _;
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let mut out = format!("-----BEGIN {label}-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str(&format!("-----END {label}-----\n"));
            out
        };
        let (certs, key) = self.leaf(names);
        (
            pem("CERTIFICATE", &certs[0]),
            pem("PRIVATE KEY", key.secret_der()),
        )
    }

    /// A server certificate for `names` (DNS names or IP literals).
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }
}

/// A running HTTPS upstream; stops when dropped.
pub struct HttpsUpstream {
    /// Bound address.
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl HttpsUpstream {
    /// Serves on `bind` (port 0 for any) with a certificate from `ca` for
    /// `names`, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn start(ca: &TestCa, names: &[&str], alpn: &[&[u8]], bind: SocketAddr) -> HttpsUpstream {
        let (chain, key) = ca.leaf(names);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("upstream cert");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (rt, listener, addr) = listen_on_runtime(bind, 2);
        rt.spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().unwrap_or("").to_owned();
                    let h2 = conn.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(move |req| {
                        let sni = sni.clone();
                        async move { Ok::<_, Infallible>(handle(req, &sni, peer).await) }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        HttpsUpstream { addr, _rt: rt }
    }
}

type TestBody = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

async fn handle(mut req: Request<Incoming>, sni: &str, peer: SocketAddr) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let version = format!("{:?}", req.version());
    let mut resp = if path == "/hello" {
        Response::new(full("hello from upstream\n"))
    } else if path == "/peer" {
        // The TCP peer of the connection the request came on: which
        // upstream connection a proxy used.
        Response::new(full(format!("peer {peer}\n")))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok());
        let mut r = Response::new(full(format!("status {code}\n")));
        *r.status_mut() = status.unwrap_or(StatusCode::BAD_REQUEST);
        r
    } else if path == "/headers" {
        let mut map = serde_json::Map::new();
        for (k, v) in req.headers() {
            map.insert(
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
        map.insert(
            ":authority".into(),
            req.uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default()
                .into(),
        );
        Response::new(full(serde_json::Value::Object(map).to_string()))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n = n.parse().unwrap_or(0);
        Response::new(PatternBody::new(n, true).boxed())
    } else if let Some(n) = path.strip_prefix("/chunked/") {
        let n = n.parse().unwrap_or(0);
        Response::new(PatternBody::new(n, false).boxed())
    } else if path == "/echo" {
        let (_, body) = req.into_parts();
        Response::new(body.boxed())
    } else if path == "/sha" {
        let mut h = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(d) = frame.data_ref() {
                len += d.len() as u64;
                h.update(d);
            }
        }
        let v = serde_json::json!({"len": len, "sha256": hex(&h.finalize())});
        Response::new(full(v.to_string()))
    } else if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("done"));
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"body-before-trailers"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(FramesBody(frames.into_iter().collect()).boxed());
        // HTTP/1.1 trailers must be announced (hyper sends only declared ones).
        r.headers_mut()
            .insert("trailer", HeaderValue::from_static("x-trailer"));
        r
    } else if path == "/inject" {
        let mut body = vec![b'a'; 64 * 1024];
        body.extend_from_slice(b"INJECT");
        body.extend(vec![b'b'; 64 * 1024]);
        Response::new(full(body))
    } else if path == "/injection" {
        Response::new(full(format!(
            "Here is the summary you asked for.\n{INJECTION}\nThanks!\n"
        )))
    } else if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if io.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", HeaderValue::from_static("echo"));
        r.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        return r;
    } else {
        let mut r = Response::new(full("not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    let h = resp.headers_mut();
    h.insert(
        "x-upstream-version",
        HeaderValue::from_str(&version).expect("hv"),
    );
    h.insert(
        "x-upstream-sni",
        HeaderValue::from_str(sni).unwrap_or(HeaderValue::from_static("")),
    );
    h.insert("x-custom-response", HeaderValue::from_static("kept"));
    resp
}

/// `n` pattern bytes in 64 KiB frames, produced as they are polled.
struct PatternBody {
    off: u64,
    len: u64,
    sized: bool,
}

impl PatternBody {
    fn new(len: u64, sized: bool) -> Self {
        Self { off: 0, len, sized }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.off >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.off).min(64 * 1024);
        let start = self.off;
        let chunk: Vec<u8> = (0..n).map(|j| pattern_byte(start + j)).collect();
        self.off += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
    fn is_end_stream(&self) -> bool {
        self.off >= self.len
    }
    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.len - self.off)
        } else {
            SizeHint::default()
        }
    }
}

/// A body made of fixed frames (for trailers).
struct FramesBody(std::collections::VecDeque<Result<Frame<Bytes>, hyper::Error>>);

impl Body for FramesBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Poll::Ready(self.0.pop_front())
    }
}

/// A raw TCP server that echoes what it reads, for non-HTTP traffic.
pub struct TcpEcho {
    /// Bound address.
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl TcpEcho {
    /// Listens on `bind`.
    pub fn start(bind: SocketAddr) -> TcpEcho {
        let (rt, listener, addr) = listen_on_runtime(bind, 1);
        rt.spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        TcpEcho { addr, _rt: rt }
    }
}
