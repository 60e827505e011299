//! Connections to the original destination: always its recorded ip:port
//! (never a re-resolved name), TLS with the client's SNI (or the IP when it
//! sent none) verified against the system roots plus `--upstream-ca`, HTTP/1.1
//! or HTTP/2 as ALPN decided. One [`UpstreamPool`] per client connection
//! sends its requests: HTTP/2 on a connection of its own, HTTP/1.1 on the
//! connections it keeps idle for its next requests; those outlive it in the
//! [`keepalive`](super::keepalive) store, shared by the client connections
//! of one pod, and its first request takes one from there before dialling.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{Request, Response, body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;

use super::{
    Error, ProxyContext,
    keepalive::{IdleUpstreams, Owner, TlsKey},
    relay,
};
use crate::{
    pipeline::ConnMeta,
    tls::{AlpnOffer, Tls},
};

/// The body type sent upstream (a scanned stream of the client's body).
pub type UpBody = BoxBody<Bytes, super::http::BodyError>;

/// A connected upstream byte stream.
pub type UpStream = Either<TcpStream, TlsStream<TcpStream>>;

/// How long an upstream TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP version spoken with the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// The original destination.
    pub addr: SocketAddr,
    /// TLS towards it, or plaintext.
    pub tls: Option<TlsTarget>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long the upstream may take to answer with its response headers.
    pub response_timeout: Duration,
}

/// TLS parameters towards an upstream.
#[derive(Clone)]
pub struct TlsTarget {
    pub tls: Arc<Tls>,
    /// The client's SNI, else the destination IP.
    pub server_name: ServerName<'static>,
    pub offer: AlpnOffer,
}

/// Opens a connection (over `pre`, an already connected socket, if given);
/// returns the stream and the protocol ALPN chose (HTTP/1.1 when the upstream
/// selected none).
pub async fn dial(
    target: &Target,
    plain_proto: Proto,
    pre: Option<TcpStream>,
) -> Result<(UpStream, Proto), Error> {
    let tcp = match pre {
        Some(t) => t,
        None => relay::connect_upstream(target.addr, target.connect_timeout).await?,
    };
    let Some(t) = &target.tls else {
        return Ok((Either::Left(tcp), plain_proto));
    };
    let connector = TlsConnector::from(t.tls.client_config(t.offer));
    let handshake = connector.connect(t.server_name.clone(), tcp);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| Error::UpstreamTls {
            addr: target.addr,
            name: name_str(&t.server_name),
            reason: "TLS handshake timed out".into(),
        })?
        .map_err(|e| Error::UpstreamTls {
            addr: target.addr,
            name: name_str(&t.server_name),
            reason: tls_reason(&e),
        })?;
    let proto = match stream.get_ref().1.alpn_protocol() {
        Some(p) if p == crate::tls::config::H2 => Proto::Http2,
        _ => Proto::Http1,
    };
    Ok((Either::Right(stream), proto))
}

/// The server name as text, for messages.
pub fn name_str(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "?".into(),
    }
}

/// A readable reason for a TLS failure (certificate problems spelled out).
fn tls_reason(e: &std::io::Error) -> String {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match inner {
            rustls::Error::InvalidCertificate(c) => {
                format!("certificate verification failed: {c:?}")
            }
            other => other.to_string(),
        };
    }
    e.to_string()
}

enum Sender {
    H1(conn::http1::SendRequest<UpBody>),
    H2(conn::http2::SendRequest<UpBody>),
}

/// Idle HTTP/1.1 connections one client connection keeps for its next requests.
const MAX_IDLE_OWN: usize = 16;

/// Where idle HTTP/1.1 upstream connections go when a client connection
/// ends (none: they close with it), and whom they were opened for.
#[derive(Clone)]
pub struct Keep {
    store: Option<Arc<IdleUpstreams>>,
    owner: Owner,
}

impl Keep {
    /// The configuration's shared store (`interceptor.upstream_keepalive`).
    pub fn for_conn(ctx: &ProxyContext, meta: &ConnMeta) -> Self {
        Keep {
            store: ctx.upstreams.clone(),
            owner: Owner::of(meta),
        }
    }

    /// True when a kept HTTP/1.1 connection for `target` is ready.
    pub fn has_ready(&self, target: &Target) -> bool {
        self.store_has_ready(target.addr, Some(&tls_key(target)))
    }

    /// True when some kept connection to `addr` (any TLS name) is ready.
    pub fn any_ready(&self, addr: SocketAddr) -> bool {
        self.store_has_ready(addr, None)
    }

    fn store_has_ready(&self, addr: SocketAddr, tls: Option<&TlsKey>) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.has_ready(addr, self.owner, tls))
    }
}

/// The part of a key a target decides.
fn tls_key(target: &Target) -> TlsKey {
    target
        .tls
        .as_ref()
        .map(|t| (t.server_name.clone(), t.offer))
}

/// Upstream connections of one client connection.
pub struct UpstreamPool {
    target: Target,
    proto: Proto,
    keep: Keep,
    tls_key: TlsKey,
    /// This client connection's idle HTTP/1.1 connections (most recent last).
    own: Mutex<Vec<conn::http1::SendRequest<UpBody>>>,
    /// When a request last started or got its response headers.
    last_used: Mutex<Instant>,
    h2: Mutex<Option<conn::http2::SendRequest<UpBody>>>,
}

/// A client connection that ends leaves its idle HTTP/1.1 connections to
/// the shared store (they close when there is none).
impl Drop for UpstreamPool {
    fn drop(&mut self) {
        let Some(store) = &self.keep.store else {
            return;
        };
        let own = std::mem::take(self.own.get_mut().unwrap_or_else(|p| p.into_inner()));
        self.leave(store, own.into_iter().filter(|s| !s.is_closed()));
    }
}

impl UpstreamPool {
    /// A pool with no connection yet: its first request reuses an idle one
    /// from `keep` or dials.
    pub fn new(target: Target, proto: Proto, keep: Keep) -> Arc<Self> {
        let pool = Arc::new(Self {
            tls_key: tls_key(&target),
            target,
            proto,
            keep,
            own: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
            h2: Mutex::new(None),
        });
        if let Some(store) = &pool.keep.store {
            store.register(&pool);
        }
        pool
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since a request last started or got its response headers.
    pub fn unused_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Moves this client connection's ready HTTP/1.1 connections (an
    /// exchange still in flight keeps its own) to `store`.
    pub fn release_ready(&self, store: &IdleUpstreams) {
        let ready: Vec<conn::http1::SendRequest<UpBody>> = {
            let mut own = self.lock_own();
            own.retain(|s| !s.is_closed());
            let (ready, busy) = std::mem::take(&mut *own)
                .into_iter()
                .partition(|s| s.is_ready());
            *own = busy;
            ready
        };
        self.leave(store, ready);
    }

    /// Puts `sends` in `store` under this pool's key.
    fn leave(
        &self,
        store: &IdleUpstreams,
        sends: impl IntoIterator<Item = conn::http1::SendRequest<UpBody>>,
    ) {
        for send in sends {
            store.put(
                self.target.addr,
                self.keep.owner,
                self.tls_key.clone(),
                send,
            );
        }
    }

    /// A pool that starts with the already connected `first` stream.
    pub async fn with_first(
        target: Target,
        first: UpStream,
        proto: Proto,
        keep: Keep,
    ) -> Result<Arc<Self>, Error> {
        let pool = Self::new(target, proto, keep);
        match Box::pin(pool.handshake(first)).await? {
            // Ready once its connection task first ran: a first request
            // sent right away (a forward-proxy request) takes it instead of
            // dialling a second connection.
            Sender::H1(mut s) => {
                if s.ready().await.is_ok() {
                    pool.keep_idle(s);
                }
            }
            Sender::H2(s) => *pool.lock_h2() = Some(s),
        }
        Ok(pool)
    }

    /// A pool for `target` whose first request reuses a kept HTTP/1.1
    /// connection when one is ready, else one that starts with a connection
    /// dialled now (`plain_proto` on plaintext; ALPN decides on TLS).
    pub async fn open(target: Target, plain_proto: Proto, keep: Keep) -> Result<Arc<Self>, Error> {
        if (plain_proto == Proto::Http1 || target.tls.is_some()) && keep.has_ready(&target) {
            return Ok(Self::new(target, Proto::Http1, keep));
        }
        let (io, proto) = dial(&target, plain_proto, None).await?;
        Self::with_first(target, io, proto, keep).await
    }

    /// The protocol spoken upstream.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    fn lock_own(&self) -> std::sync::MutexGuard<'_, Vec<conn::http1::SendRequest<UpBody>>> {
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<conn::http2::SendRequest<UpBody>>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `send` for this client connection's next requests (it may
    /// still be busy with the response it just received).
    fn keep_idle(&self, send: conn::http1::SendRequest<UpBody>) {
        self.touch();
        let mut own = self.lock_own();
        if own.len() < MAX_IDLE_OWN {
            own.push(send);
        }
    }

    /// A ready connection of this client connection's own, else one from
    /// the shared store.
    fn take_idle(&self) -> Option<conn::http1::SendRequest<UpBody>> {
        self.touch();
        let own = {
            let mut own = self.lock_own();
            own.retain(|s| !s.is_closed());
            own.iter()
                .rposition(|s| s.is_ready())
                .map(|i| own.swap_remove(i))
        };
        own.or_else(|| {
            self.keep
                .store
                .as_ref()?
                .take(self.target.addr, self.keep.owner, &self.tls_key)
        })
    }

    /// HTTP handshake over `io`; the connection is driven by a task of its
    /// own. Callers box this future (`Box::pin`): hyper's handshake state is
    /// about 7 KB, and awaited inline it would size every future above it
    /// for the connection's whole life: the client connection's task, and
    /// the slot hyper keeps per HTTP/1 connection for the request handler's
    /// future (which reaches here through `send` when it dials anew).
    async fn handshake(&self, io: UpStream) -> Result<Sender, Error> {
        let io = TokioIo::new(io);
        let addr = self.target.addr;
        let fail = move |e: hyper::Error| Error::UpstreamHttp {
            addr,
            reason: e.to_string(),
        };
        match self.proto {
            Proto::Http1 => {
                let (send, conn) = conn::http1::Builder::new()
                    .preserve_header_case(false)
                    .handshake(io)
                    .await
                    .map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/1.1 connection ended");
                    }
                });
                Ok(Sender::H1(send))
            }
            Proto::Http2 => {
                let (send, conn) = conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                Ok(Sender::H2(send))
            }
        }
    }

    async fn connect_new(&self) -> Result<Sender, Error> {
        let (io, proto) = dial(&self.target, self.proto, None).await?;
        if proto != self.proto {
            return Err(Error::UpstreamHttp {
                addr: self.target.addr,
                reason: format!(
                    "upstream switched protocol on reconnect ({:?} -> {proto:?})",
                    self.proto
                ),
            });
        }
        Box::pin(self.handshake(io)).await
    }

    /// Sends `req` on a reusable connection (opening one when none is idle).
    /// A request that never left (the reused connection had just closed) is
    /// sent again once on a fresh connection.
    pub async fn send(&self, req: Request<UpBody>) -> Result<Response<Incoming>, Error> {
        let limit = self.target.response_timeout;
        tokio::time::timeout(limit, self.send_retrying(req))
            .await
            .unwrap_or_else(|_| {
                Err(Error::UpstreamHttp {
                    addr: self.target.addr,
                    reason: format!("no response headers within {}s", limit.as_secs()),
                })
            })
    }

    async fn send_retrying(&self, req: Request<UpBody>) -> Result<Response<Incoming>, Error> {
        match self.send_once(req, false).await {
            Ok(r) => Ok(r),
            Err(Attempt::Unsent(req, e)) => {
                tracing::debug!(upstream = %self.target.addr, error = %e, "reused connection was closed; retrying on a new one");
                match self.send_once(*req, true).await {
                    Ok(r) => Ok(r),
                    Err(Attempt::Unsent(_, e) | Attempt::Failed(e)) => Err(e),
                }
            }
            Err(Attempt::Failed(e)) => Err(e),
        }
    }

    async fn send_once(
        &self,
        req: Request<UpBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, Attempt> {
        let addr = self.target.addr;
        let fail = move |e: hyper::Error| Error::UpstreamHttp {
            addr,
            reason: e.to_string(),
        };
        let unsent = move |mut e: hyper::client::conn::TrySendError<Request<UpBody>>| match e
            .take_message()
        {
            Some(req) => Attempt::Unsent(Box::new(req), fail(e.into_error())),
            None => Attempt::Failed(fail(e.into_error())),
        };
        match self.proto {
            Proto::Http2 => {
                let existing = if fresh {
                    None
                } else {
                    self.lock_h2().clone().filter(|s| !s.is_closed())
                };
                let mut send = match existing {
                    Some(s) => s,
                    None => match self.connect_new().await.map_err(Attempt::Failed)? {
                        Sender::H2(s) => {
                            *self.lock_h2() = Some(s.clone());
                            s
                        }
                        Sender::H1(_) => return Err(Attempt::Failed(proto_mismatch(addr))),
                    },
                };
                if let Err(e) = send.ready().await {
                    return Err(Attempt::Unsent(Box::new(req), fail(e)));
                }
                send.try_send_request(req).await.map_err(unsent)
            }
            Proto::Http1 => {
                let idle = if fresh { None } else { self.take_idle() };
                let mut send = match idle {
                    Some(s) => s,
                    None => match self.connect_new().await.map_err(Attempt::Failed)? {
                        Sender::H1(s) => s,
                        Sender::H2(_) => return Err(Attempt::Failed(proto_mismatch(addr))),
                    },
                };
                if let Err(e) = send.ready().await {
                    return Err(Attempt::Unsent(Box::new(req), fail(e)));
                }
                let resp = send.try_send_request(req).await.map_err(unsent)?;
                // Handed out again once this response's body is consumed.
                self.keep_idle(send);
                Ok(resp)
            }
        }
    }
}

/// How one send attempt failed.
enum Attempt {
    /// The request never left: it may be sent again.
    Unsent(Box<Request<UpBody>>, Error),
    /// It may have left: not retried.
    Failed(Error),
}

fn proto_mismatch(addr: SocketAddr) -> Error {
    Error::UpstreamHttp {
        addr,
        reason: "internal: protocol mismatch".into(),
    }
}
