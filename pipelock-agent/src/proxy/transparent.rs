//! The transparent listener (:15001): accepts kernel-redirected connections,
//! recovers their original destination and attribution ([`OrigDsts`]: the
//! kernel's records), hands them to `dispatch`, and logs one line per
//! connection.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    ConnSummary, Error, LiveContext, ProxyContext, dispatch, forward, limits::ConnLimits, relay,
};
use crate::{
    pipeline::{Attribution, ConnMeta, Listener},
    redirect::{OrigDstTable, pods::PodIndex},
    telemetry::metrics::Metrics,
};

/// Where an accepted connection was going and who made it, by its peer
/// address: the kernel's records in production ([`OrigDstTable`]).
pub trait OrigDsts: Send + Sync + 'static {
    /// Takes (reads and forgets) the record of `peer`'s connection.
    fn take(&self, peer: SocketAddr) -> Option<(SocketAddr, Attribution)>;
}

impl OrigDsts for OrigDstTable {
    fn take(&self, peer: SocketAddr) -> Option<(SocketAddr, Attribution)> {
        OrigDstTable::take(self, peer)
    }
}

/// The kernel's records with the pod and container of each connection's
/// cgroup filled in (pod-selector mode).
pub struct PodAttributed<T> {
    pub inner: T,
    pub pods: Arc<PodIndex>,
}

impl<T: OrigDsts> OrigDsts for PodAttributed<T> {
    fn take(&self, peer: SocketAddr) -> Option<(SocketAddr, Attribution)> {
        let (dst, mut who) = self.inner.take(peer)?;
        who.pod = self.pods.get(who.cgroup_id);
        Some((dst, who))
    }
}

/// A connection's maker as `status` ranks them: namespace/pod/container
/// when known, else the cgroup id.
fn talker(who: &Attribution) -> String {
    match &who.pod {
        Some(p) => format!("{}/{}/{}", p.namespace, p.pod, p.container),
        None => format!("cgroup {}", who.cgroup_id),
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Process-unique id for a new connection.
pub fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Binds every address, failing with a clear message when one is busy.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, std::io::Error> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Accepts until `shutdown`; every connection runs as a task on `tracker`.
/// `forward`: the forward listener's address and state, for redirected
/// connections to it.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    table: Arc<dyn OrigDsts>,
    live: Arc<LiveContext>,
    limits: Arc<ConnLimits>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    forward: Option<(SocketAddr, forward::Forward)>,
) {
    let forward = forward.map(Arc::new);
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let orig = table.take(peer);
        metrics.redirected_from(orig.as_ref().map_or(0, |(_, who)| who.cgroup_id));
        if let Some((_, who)) = &orig {
            metrics.top_talkers.inc(&talker(who));
        }
        let Some((stream, admission)) =
            limits.admit_or_reset(stream, peer, "transparent", orig.as_ref(), &metrics)
        else {
            continue;
        };
        // The config in force now serves this connection to its end.
        let ctx = live.load_full();
        // A covered pod calling the forward proxy (:8888) is served by the
        // forward proxy directly (keeping its attribution): scanned once.
        if let (Some((dst, _)), Some(fwd)) = (&orig, &forward)
            && is_addr(fwd.0, *dst)
        {
            let (fwd, who) = (fwd.1.clone(), orig.map(|(_, w)| w));
            tracker.spawn(async move {
                forward::serve_connection(stream, peer, who, ctx, fwd).await;
                drop(admission);
            });
            continue;
        }
        let metrics = metrics.clone();
        tracker.spawn(async move {
            metrics.active_connections.inc();
            handle(stream, peer, orig, ctx, &metrics).await;
            metrics.active_connections.dec();
            drop(admission);
        });
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    orig: Option<(SocketAddr, Attribution)>,
    ctx: Arc<ProxyContext>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let (orig_dst, attribution) = match orig {
        Some((dst, who)) => (Some(dst), Some(who)),
        None => (None, None),
    };
    let meta = Arc::new(ConnMeta {
        id: next_conn_id(),
        listener: Listener::Transparent,
        peer,
        orig_dst,
        attribution,
        verified_name: None,
    });
    let mut summary = ConnSummary::default();
    let ctx_log_allowed = ctx.log_allowed;
    let result = match orig_dst {
        None => {
            relay::reset(stream);
            Err(Error::NoOrigDst(peer))
        }
        Some(dst) if ctx.is_self(dst) => {
            relay::reset(stream);
            Err(Error::SelfCall(dst))
        }
        Some(_) => dispatch::serve(stream, meta.clone(), ctx, &mut summary).await,
    };
    count_connection(metrics, &summary, result.as_ref().err());
    if result.is_err() || ctx_log_allowed {
        log_connection(&meta, &summary, started.elapsed(), result.as_ref().err());
    }
}

/// Counts how a connection was served, and for intercepted TLS how the
/// interception went.
fn count_connection(m: &Metrics, s: &ConnSummary, error: Option<&Error>) {
    let kind = match (s.kind, error) {
        ("", Some(Error::NoOrigDst(_))) => "unattributed",
        ("", Some(Error::SelfCall(_))) => "loop",
        ("", _) => "error",
        (k, _) => k,
    };
    m.connection("transparent", kind);
    if kind == "tls" {
        m.tls_intercept(match error {
            Some(Error::DownstreamTls { .. }) => "handshake_error",
            Some(
                Error::UpstreamTls { .. }
                | Error::UpstreamHttp { .. }
                | Error::Connect { .. }
                | Error::ConnectTimeout(_),
            ) => "upstream_error",
            Some(Error::Tls(_)) => "failed",
            _ => "success",
        });
    }
}

/// The next connection on `listener`, or None once `shutdown` is cancelled.
/// A failed accept (EMFILE and friends) backs off instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// True when `dst` is the listener address `l` (an unspecified `l` covers loopback).
pub fn is_addr(l: SocketAddr, dst: SocketAddr) -> bool {
    l.port() == dst.port()
        && (l.ip() == dst.ip() || (l.ip().is_unspecified() && dst.ip().is_loopback()))
}

/// The one line per connection: destination, who, bytes, duration, outcome.
pub(crate) fn log_connection(
    meta: &ConnMeta,
    s: &ConnSummary,
    took: Duration,
    error: Option<&Error>,
) {
    let who = meta.attribution.as_ref();
    let pod = who.and_then(|w| w.pod.as_deref());
    let dst = meta.orig_dst.map(|d| d.to_string()).unwrap_or_default();
    let side = error.map(|e| tracing::field::debug(e.side()));
    let error = error.map(tracing::field::display);
    macro_rules! emit {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                target: "pipelock::conn",
                conn = meta.id,
                peer = %meta.peer,
                orig_dst = %dst,
                pid = who.map_or(0, |w| w.pid),
                tgid = who.map_or(0, |w| w.tgid),
                comm = who.map_or("", |w| w.comm.as_str()),
                cgroup_id = who.map_or(0, |w| w.cgroup_id),
                namespace = pod.map(|p| p.namespace.as_str()),
                pod = pod.map(|p| p.pod.as_str()),
                container = pod.map(|p| p.container.as_str()).filter(|c| !c.is_empty()),
                listener = meta.listener.as_str(),
                kind = s.kind,
                bytes_up = s.bytes_up,
                bytes_down = s.bytes_down,
                duration_ms = took.as_millis() as u64,
                side,
                error,
                $message
            )
        };
    }
    if error.is_some() {
        emit!(warn, "connection failed");
    } else {
        emit!(info, "connection closed");
    }
}
