//! An upstream that records what arrives and answers what it is told: one
//! HTTPS listener (a test CA's certificate for any number of names,
//! HTTP/1.1) and one plain HTTP listener on loopback. Every request is
//! recorded whole (method, target, headers, body); the answer is the one
//! last set with [`RecordingUpstream::answer`] (default `200 ok`). Used by
//! the detection corpus through the real agent (`cargo xtask bench detect`,
//! `tests/tests/detection_e2e.rs`).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::tls_upstream::{TestCa, listen_on_runtime, provider};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Arrived over TLS.
    pub tls: bool,
}

/// What the upstream answers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"ok".to_vec(),
        }
    }
}

#[derive(Default)]
struct State {
    seen: Vec<Recorded>,
    answer: Answer,
}

/// The running upstream; stops when dropped.
pub struct RecordingUpstream {
    /// The HTTPS listener.
    pub tls_addr: SocketAddr,
    /// The plain HTTP listener.
    pub plain_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

async fn handle(
    req: Request<Incoming>,
    tls: bool,
    state: Arc<Mutex<State>>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let answer = {
        let mut s = state.lock().expect("upstream state");
        s.seen.push(Recorded {
            method,
            target,
            headers,
            body,
            tls,
        });
        s.answer.clone()
    };
    let mut b = Response::builder().status(answer.status);
    for (k, v) in &answer.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad answer"))))
}

impl RecordingUpstream {
    /// Starts both listeners on 127.0.0.1; the HTTPS one presents a
    /// certificate of `ca` for `names`.
    pub fn start(ca: &TestCa, names: &[&str]) -> RecordingUpstream {
        let (chain, key) = ca.leaf(names);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("upstream cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (rt, tls_listener, tls_addr) = listen_on_runtime(lo, 2);
        let plain_listener = rt
            .block_on(tokio::net::TcpListener::bind(lo))
            .expect("binding the plain listener");
        let plain_addr = plain_listener.local_addr().expect("addr");
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = tls_listener.accept().await {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(req, true, st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = plain_listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(req, false, st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        RecordingUpstream {
            tls_addr,
            plain_addr,
            state,
            _rt: rt,
        }
    }

    /// Sets what every following request is answered with.
    pub fn answer(&self, answer: Answer) {
        self.state.lock().expect("upstream state").answer = answer;
    }

    /// Everything recorded so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.state.lock().expect("upstream state").seen.clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.state.lock().expect("upstream state").seen.len()
    }
}
