//! The forward proxy listener (Pipelock's :8888): `CONNECT host:port`
//! tunnels and absolute-form `http://` requests, plus origin-form requests
//! (`/health`, `/metrics`, …) for the admin routes.
//!
//! The upstream is chosen per request: the host is resolved by DNS, and the
//! resolved address passes the same destination checks as a redirected
//! connection (the self-call loop guard). A tunnel's stream then goes
//! through the same [`dispatch`] as a redirected connection (sniff, TLS
//! interception with the same CA and leaf cache, passthrough domains,
//! non-HTTP policy), with the CONNECT host as the name a ClientHello must
//! carry and the upstream certificate must prove. Absolute-form requests
//! are served by the same [`HttpConn`] (one pipeline for every listener).
//! `Proxy-Authorization` is removed before anything else sees the request.
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, StatusCode, header, uri::Authority, uri::Scheme};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    ConnSummary, Error, LiveContext, ProxyContext, dispatch,
    http::{DownBody, HttpConn},
    limits::ConnLimits,
    transparent::{log_connection, next_conn_id},
    upstream::{Keep, Proto, Target, UpstreamPool},
};
use crate::{
    pipeline::{Attribution, ConnMeta, Listener},
    telemetry::metrics::Metrics,
};

/// A boxed future answering one admin request.
pub type AdminFuture = Pin<Box<dyn Future<Output = Response<DownBody>> + Send>>;

/// Origin-form requests to the forward listener (`GET /health`, `/metrics`,
/// the kill switch API): implemented by the admin module.
pub trait AdminRoutes: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> AdminFuture;
}

/// `forward_proxy` settings (part of the live context: a reload applies
/// them to new connections).
#[derive(Clone, Debug)]
pub struct ForwardSettings {
    /// `forward_proxy.enabled`: false answers proxy requests with 405 (the
    /// admin routes stay).
    pub enabled: bool,
    /// `forward_proxy.idle_timeout_seconds`: idle limit of a client connection
    /// between requests (and for its request headers).
    pub idle: Duration,
    /// `forward_proxy.max_tunnel_seconds`: a CONNECT tunnel is closed after this.
    pub max_tunnel: Option<Duration>,
    /// `forward_proxy.sni_verification`: a ClientHello inside a tunnel must
    /// name the CONNECT host (else refused as domain fronting). Off, the
    /// mismatch is logged and the upstream (the CONNECT host's address) must
    /// prove the SNI name with its certificate instead.
    pub sni_verification: bool,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self::new(&Default::default())
    }
}

impl ForwardSettings {
    pub fn new(cfg: &crate::config::pipelock::ForwardProxy) -> Self {
        Self {
            enabled: cfg.enabled,
            idle: Duration::from_secs(cfg.idle_timeout_seconds.max(1)),
            max_tunnel: (cfg.max_tunnel_seconds > 0)
                .then(|| Duration::from_secs(cfg.max_tunnel_seconds)),
            sni_verification: cfg.sni_verification,
        }
    }
}

/// What every forward-proxy connection shares.
#[derive(Clone)]
pub struct Forward {
    /// The agent's registry (tunnels and connections are counted).
    pub metrics: Arc<Metrics>,
    pub admin: Arc<dyn AdminRoutes>,
    pub tracker: TaskTracker,
}

/// Accepts until `shutdown`, with the same admission limits as the
/// transparent listener; every connection runs as a task on `fwd.tracker`.
pub async fn serve(
    listener: TcpListener,
    live: Arc<LiveContext>,
    limits: Arc<ConnLimits>,
    metrics: Arc<Metrics>,
    fwd: Forward,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer)) = super::transparent::accept(&listener, &shutdown).await {
        let Some((stream, admission)) =
            limits.admit_or_reset(stream, peer, "forward", None, &metrics)
        else {
            continue;
        };
        let ctx = live.load_full();
        let f = fwd.clone();
        fwd.tracker.spawn(async move {
            serve_connection(stream, peer, None, ctx, f).await;
            drop(admission);
        });
    }
}

/// Serves one client connection of the forward proxy (also used for a
/// redirected connection whose original destination is the forward
/// listener, so it keeps its attribution and is scanned once).
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    attribution: Option<Attribution>,
    ctx: Arc<ProxyContext>,
    fwd: Forward,
) {
    let _ = stream.set_nodelay(true);
    let idle = ctx.forward.idle;
    let pools = Arc::new(PlainPools::default());
    let svc = service_fn(move |req| {
        let (ctx, fwd, who) = (ctx.clone(), fwd.clone(), attribution.clone());
        let pools = pools.clone();
        async move { Ok::<_, Infallible>(route(req, peer, who, ctx, fwd, &pools).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
    if let Err(e) = r {
        tracing::debug!(target: "pipelock::conn", peer = %peer, listener = "forward", error = %e, "forward proxy connection ended");
    }
}

async fn route(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    attribution: Option<Attribution>,
    ctx: Arc<ProxyContext>,
    fwd: Forward,
    pools: &PlainPools,
) -> Response<DownBody> {
    // Never forwarded, never logged.
    req.headers_mut().remove(header::PROXY_AUTHORIZATION);
    let is_connect = req.method() == Method::CONNECT;
    if !is_connect && req.uri().scheme().is_none() {
        return fwd.admin.handle(req).await;
    }
    if !ctx.forward.enabled {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "forward proxy disabled (forward_proxy.enabled: false)",
        );
    }
    let Some(authority) = req.uri().authority().cloned() else {
        return error(StatusCode::BAD_REQUEST, "request names no host");
    };
    if !is_connect && req.uri().scheme() != Some(&Scheme::HTTP) {
        return error(
            StatusCode::BAD_REQUEST,
            "only http:// absolute-form requests are proxied; use CONNECT for https",
        );
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = match authority.port_u16() {
        Some(p) => p,
        None if is_connect => 443,
        None => 80,
    };
    let host = host.to_owned();
    let dst = match resolve(&host, port).await {
        Ok(a) => a,
        Err(reason) => return error(StatusCode::BAD_GATEWAY, &reason),
    };
    if ctx.is_self(dst) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("refusing to proxy to the agent's own listener {dst} (loop)"),
        );
    }
    let meta = Arc::new(ConnMeta {
        id: next_conn_id(),
        listener: Listener::Forward,
        peer,
        orig_dst: Some(dst),
        attribution,
        verified_name: None,
    });
    if is_connect {
        let max = ctx.forward.max_tunnel;
        fwd.tracker.spawn(async move {
            let started = Instant::now();
            let mut summary = ConnSummary::default();
            let result = match hyper::upgrade::on(req).await {
                Ok(up) => {
                    let io = TokioIo::new(up);
                    let serving =
                        dispatch::serve_as(io, meta.clone(), ctx.clone(), Some(host), &mut summary);
                    match max {
                        Some(max) => match tokio::time::timeout(max, serving).await {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::info!(target: "pipelock::conn", conn = meta.id, orig_dst = %dst, "tunnel lifetime limit (forward_proxy.max_tunnel_seconds) reached; closing");
                                Ok(())
                            }
                        },
                        None => serving.await,
                    }
                }
                Err(e) => Err(Error::DownstreamHttp(format!("CONNECT upgrade: {e}"))),
            };
            let blocked = matches!(
                result,
                Err(Error::DomainFronting { .. }
                    | Error::KillSwitch
                    | Error::NonHttpRefused
                    | Error::PassthroughUnverified { .. })
            );
            fwd.metrics
                .tunnel(if blocked { "blocked" } else { "completed" });
            let kind = if summary.kind.is_empty() {
                "error"
            } else {
                summary.kind
            };
            fwd.metrics.connection("forward", kind);
            if result.is_err() || ctx.log_allowed {
                log_connection(&meta, &summary, started.elapsed(), result.as_ref().err());
            }
        });
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::OK;
        return resp;
    }
    // Absolute-form http://: scanned by the same HttpConn as a redirected
    // plaintext connection, sent on an upstream connection this client
    // connection keeps alive for its next requests to the same address.
    let pool = match pools.get(dst) {
        Some(p) => Ok(p),
        None => {
            let target = Target {
                addr: dst,
                tls: None,
                connect_timeout: ctx.connect_timeout,
                response_timeout: ctx.upstream_response_timeout,
            };
            UpstreamPool::open(target, Proto::Http1, Keep::for_conn(&ctx, &meta))
                .await
                .map(|p| pools.put(dst, p))
                .map_err(|e| e.to_string())
        }
    };
    let conn = Arc::new(HttpConn::new(
        &ctx,
        meta,
        pool,
        Scheme::HTTP,
        Authority::try_from(format!("{host}:{port}")).ok(),
        fwd.tracker.clone(),
    ));
    conn.handle(req).await
}

/// Upstream pools of one client connection's absolute-form requests, by
/// the address connected to (never by a client-written name); the oldest is
/// dropped beyond [`MAX_PLAIN_POOLS`] destinations.
#[derive(Default)]
struct PlainPools(std::sync::Mutex<Vec<(SocketAddr, Arc<UpstreamPool>)>>);

/// Destinations one forward-proxy client connection keeps connections to.
const MAX_PLAIN_POOLS: usize = 8;

impl PlainPools {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SocketAddr, Arc<UpstreamPool>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, dst: SocketAddr) -> Option<Arc<UpstreamPool>> {
        self.lock()
            .iter()
            .find(|(a, _)| *a == dst)
            .map(|(_, p)| p.clone())
    }

    fn put(&self, dst: SocketAddr, pool: Arc<UpstreamPool>) -> Arc<UpstreamPool> {
        let mut pools = self.lock();
        pools.retain(|(a, _)| *a != dst);
        if pools.len() >= MAX_PLAIN_POOLS {
            pools.remove(0);
        }
        pools.push((dst, pool.clone()));
        pool
    }
}

/// The first address `host` resolves to (a literal address as is).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))
}

fn empty() -> DownBody {
    Full::new(Bytes::new())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

/// A JSON answer from the forward listener itself.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<DownBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|n: Infallible| match n {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("x-pipelock", header::HeaderValue::from_static("agent"));
    resp
}

fn error(status: StatusCode, reason: &str) -> Response<DownBody> {
    let kind = match status {
        StatusCode::BAD_GATEWAY => "upstream_failure",
        StatusCode::FORBIDDEN => "blocked",
        StatusCode::METHOD_NOT_ALLOWED => "forward_proxy_disabled",
        _ => "bad_request",
    };
    tracing::info!(target: "pipelock::http", listener = "forward", status = status.as_u16(), reason, "forward proxy refused a request");
    json(
        status,
        serde_json::json!({ "error": kind, "reason": reason }),
    )
}
