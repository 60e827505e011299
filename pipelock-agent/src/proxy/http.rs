//! HTTP proxying for intercepted TLS and plaintext HTTP alike: hyper serves
//! the client (HTTP/1.1 or HTTP/2), every request drives the shared
//! [`Pipeline`] (request_filter before the upstream is contacted, body
//! filters per chunk both ways, response_filter, logging at the end) and is
//! sent upstream through the connection's [`UpstreamPool`]. Bodies stream
//! with backpressure (a chunk is read from one side only when the other side
//! asks for one); hop-by-hop fields are dropped per RFC 9110 §7.6.1;
//! after a 101, WebSocket is relayed message by message through the same
//! exchange (`websocket`); any other upgrade cannot be scanned: refused in
//! strict and balanced (`h2c` is not forwarded, others answered 403),
//! relayed as bytes with a warning in audit.
use std::{
    convert::Infallible,
    future::Future as _,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, StatusCode, Uri, Version,
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use super::{
    hold::{self, BodyHold, BodyScan, HoldError},
    upstream::{Proto, UpstreamPool},
    websocket::{self, WsSettings},
};
use crate::pipeline::{Block, ConnMeta, Decision, Exchange, Outcome, Pipeline};

/// Body type answered to the client.
pub type DownBody = BoxBody<Bytes, BodyError>;

/// Why a proxied body stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A body filter blocked the exchange.
    #[error("blocked by policy")]
    Blocked,
    /// The other side failed.
    #[error("{0}")]
    Io(#[from] hyper::Error),
    /// The sending side left the body without a byte for too long.
    #[error("body idle for {0:?}")]
    Idle(std::time::Duration),
}

/// Per client connection: what every request on it shares.
pub struct HttpConn {
    /// The client connection.
    pub meta: Arc<ConnMeta>,
    /// The shared pipeline.
    pub pipeline: Arc<dyn Pipeline>,
    /// Where requests go, or why they cannot (answered as 502).
    pub upstream: Result<Arc<UpstreamPool>, String>,
    /// `https` for intercepted TLS, `http` for plaintext.
    pub scheme: Scheme,
    /// Authority to use when a request names none (SNI, else ip:port).
    pub default_authority: Option<Authority>,
    /// Tasks that outlive a request (upgraded connections).
    pub tasks: TaskTracker,
    /// Limits of relayed WebSockets.
    pub websocket: Arc<WsSettings>,
    /// How long a client may take to send request headers (HTTP/1.1: also
    /// the idle limit between keep-alive requests).
    pub header_read_timeout: std::time::Duration,
    /// How request bodies are held until scanned.
    pub body_hold: Arc<BodyHold>,
    /// Limits of unscanned upgraded connections and CONNECT tunnels (audit).
    pub relay_limits: super::relay::RelayLimits,
    /// Write the per-request line of requests that ended allowed and
    /// without error too (`logging.include_allowed`); blocked and failed
    /// ones are always logged.
    pub log_allowed: bool,
}

/// How an upgraded connection is relayed.
enum Upgraded {
    /// Message by message, scanned (holds a `max_concurrent_connections` slot).
    WebSocket(Option<tokio::sync::OwnedSemaphorePermit>),
    /// As bytes, unscanned (audit only): a non-WebSocket upgrade or a
    /// CONNECT tunnel inside the connection.
    Raw(String),
}

/// Serves one client connection speaking `proto` until it closes.
pub async fn serve<IO>(io: IO, proto: Proto, conn: Arc<HttpConn>) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_conn = conn.clone();
    // The handler's future (~4 KB) is boxed per request: hyper's HTTP/1
    // server keeps one slot of the service's future type for the whole
    // connection, so an unboxed future would sit in every idle keep-alive
    // connection.
    let svc = service_fn(move |req| {
        let conn = svc_conn.clone();
        Box::pin(async move { Ok::<_, Infallible>(conn.handle(req).await) })
    });
    let io = TokioIo::new(io);
    let header_read = conn.header_read_timeout;
    match proto {
        Proto::Http1 => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
        Proto::Http2 => {
            // HTTP/2: a dead client is found by pings, not by a header timer.
            Box::pin(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
                    .keep_alive_timeout(std::time::Duration::from_secs(20))
                    .serve_connection(io, svc),
            )
            .await
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

/// One exchange's hooks and what happened so far.
struct ExchangeState {
    exchange: Box<dyn Exchange>,
    outcome: Outcome,
    finished: bool,
    log_allowed: bool,
    conn: u64,
    listener: &'static str,
    method: Method,
    host: String,
    path: String,
}

type Shared = Arc<Mutex<ExchangeState>>;

fn lock(s: &Shared) -> MutexGuard<'_, ExchangeState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl ExchangeState {
    fn body_filter(&mut self, dir: Dir, chunk: &[u8], eos: bool) -> Decision {
        let d = match dir {
            Dir::Request => {
                self.outcome.request_bytes += chunk.len() as u64;
                self.exchange.request_body_filter(chunk, eos)
            }
            Dir::Response => {
                self.outcome.response_bytes += chunk.len() as u64;
                self.exchange.response_body_filter(chunk, eos)
            }
        };
        if let Decision::Block(b) = &d {
            self.outcome.blocked = Some(b.clone());
        }
        d
    }

    fn trailers_filter(&mut self, dir: Dir, trailers: &HeaderMap) -> Decision {
        let d = self
            .exchange
            .trailers_filter(dir == Dir::Response, trailers);
        if let Decision::Block(b) = &d {
            self.outcome.blocked = Some(b.clone());
        }
        d
    }

    /// Calls the `logging` hook once and writes the per-request log line.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.exchange.logging(&self.outcome);
        let o = &self.outcome;
        if !self.log_allowed && o.blocked.is_none() && o.error.is_none() {
            return;
        }
        let blocked = o.blocked.as_ref().map(|b| b.reason.as_str());
        tracing::info!(
            target: "pipelock::http",
            conn = self.conn,
            listener = self.listener,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = o.status.unwrap_or(0),
            request_bytes = o.request_bytes,
            response_bytes = o.response_bytes,
            blocked = blocked.unwrap_or(""),
            error = o.error.as_deref().unwrap_or(""),
            "request"
        );
    }
}

/// A body stream passed through the pipeline's body filters, cut when its
/// sender leaves it without a frame for `idle` (a stalled client upload
/// or upstream response must not hold a connection and its scan state for
/// ever; waiting on the reader is not idleness).
struct ScannedBody {
    inner: Incoming,
    dir: Dir,
    state: Shared,
    eos_sent: bool,
    idle: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The timer runs for the current wait on the sender (reset when a
    /// wait starts, so time the reader took is never counted).
    waiting: bool,
}

impl ScannedBody {
    fn new(
        inner: Incoming,
        dir: Dir,
        state: Shared,
        eos_sent: bool,
        idle: std::time::Duration,
    ) -> Self {
        ScannedBody {
            inner,
            dir,
            state,
            eos_sent,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
        }
    }
}

impl Body for ScannedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if !std::mem::replace(&mut this.waiting, true) {
                    this.timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.idle);
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    let mut st = lock(&this.state);
                    let side = match this.dir {
                        Dir::Request => "client",
                        Dir::Response => "upstream",
                    };
                    tracing::info!(target: "pipelock::http", conn = st.conn, side, idle_seconds = this.idle.as_secs(), "body idle limit reached; cut");
                    st.outcome
                        .error
                        .get_or_insert_with(|| format!("{side} body idle for {:?}", this.idle));
                    return Poll::Ready(Some(Err(BodyError::Idle(this.idle))));
                }
                return Poll::Pending;
            }
            Poll::Ready(polled) => {
                this.waiting = false;
                polled
            }
        };
        let frame = match polled {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                let mut st = lock(&this.state);
                st.outcome.error.get_or_insert_with(|| {
                    let side = match this.dir {
                        Dir::Request => "client",
                        Dir::Response => "upstream",
                    };
                    format!("{side} body: {e}")
                });
                return Poll::Ready(Some(Err(BodyError::Io(e))));
            }
            None => {
                if !std::mem::replace(&mut this.eos_sent, true)
                    && lock(&this.state)
                        .body_filter(this.dir, &[], true)
                        .is_block()
                {
                    return Poll::Ready(Some(Err(BodyError::Blocked)));
                }
                if this.dir == Dir::Response {
                    lock(&this.state).finish();
                }
                return Poll::Ready(None);
            }
        };
        let eos_now = this.inner.is_end_stream();
        let decision = if let Some(data) = frame.data_ref() {
            this.eos_sent |= eos_now;
            lock(&this.state).body_filter(this.dir, data, eos_now)
        } else if let Some(trailers) = frame.trailers_ref() {
            // Trailers end the body: its end is scanned, then they are.
            let mut st = lock(&this.state);
            let end = if std::mem::replace(&mut this.eos_sent, true) {
                Decision::Continue
            } else {
                st.body_filter(this.dir, &[], true)
            };
            if end.is_block() {
                end
            } else {
                st.trailers_filter(this.dir, trailers)
            }
        } else {
            Decision::Continue
        };
        if decision.is_block() {
            return Poll::Ready(Some(Err(BodyError::Blocked)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ScannedBody {
    fn drop(&mut self) {
        if self.dir == Dir::Response {
            let mut st = lock(&self.state);
            if !self.eos_sent && st.outcome.blocked.is_none() {
                st.outcome
                    .error
                    .get_or_insert_with(|| "response body not completed".into());
            }
            st.finish();
        }
    }
}

impl HttpConn {
    /// A client connection's shared state: the listener-independent parts
    /// come from `ctx`; `tasks` tracks what outlives its requests.
    pub fn new(
        ctx: &super::ProxyContext,
        meta: Arc<ConnMeta>,
        upstream: Result<Arc<UpstreamPool>, String>,
        scheme: Scheme,
        default_authority: Option<Authority>,
        tasks: TaskTracker,
    ) -> Self {
        HttpConn {
            header_read_timeout: ctx.header_read_timeout,
            meta,
            pipeline: ctx.pipeline.clone(),
            upstream,
            scheme,
            default_authority,
            tasks,
            websocket: ctx.websocket.clone(),
            body_hold: ctx.body_hold.clone(),
            relay_limits: ctx.relay_limits(),
            log_allowed: ctx.log_allowed,
        }
    }

    /// After [`serve`]: waits for the tasks the connection's requests left
    /// running (upgraded connections) to end. (Not a wrapper around `serve`:
    /// an `async fn` keeps its by-value arguments for its whole life, and
    /// the connection's stream would be held twice in its task.)
    pub async fn end_tasks(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<DownBody> {
        let down_version = req.version();
        // A CONNECT inside an intercepted or plain connection asks the
        // upstream (a proxy of the pod's choosing) for a tunnel the agent
        // cannot look into.
        let connect = req.method() == Method::CONNECT;
        let mut on_upgrade = (connect || is_upgrade(req.headers(), down_version))
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let state: Shared = Arc::new(Mutex::new(ExchangeState {
            exchange: self.pipeline.exchange(&self.meta),
            outcome: Outcome::default(),
            finished: false,
            log_allowed: self.log_allowed,
            conn: self.meta.id,
            listener: self.meta.listener.as_str(),
            method: parts.method.clone(),
            host: authority_of(&parts.uri, &parts.headers)
                .map(|a| a.to_string())
                .or_else(|| self.default_authority.as_ref().map(|a| a.to_string()))
                .unwrap_or_default(),
            path: crate::pipeline::findings::redact_path(parts.uri.path()),
        }));

        let decision = lock(&state).exchange.request_filter(&parts);
        if let Decision::Block(b) = decision {
            return block_response(&state, b, down_version);
        }
        if let Err(b) = grpc_compression_filter(&state, false, &mut parts.headers) {
            return block_response(&state, b, down_version);
        }
        let pool = match &self.upstream {
            Ok(p) => p.clone(),
            Err(reason) => {
                return error_response(&state, StatusCode::BAD_GATEWAY, reason, down_version);
            }
        };
        let mut body = body;
        let eos_sent;
        let mut held = None;
        if body.is_end_stream() {
            eos_sent = true;
            if let Decision::Block(b) = lock(&state).body_filter(Dir::Request, &[], true) {
                return block_response(&state, b, down_version);
            }
        } else {
            // Held until scanned: a block sends nothing upstream.
            let length = content_length(&parts.headers);
            let mut scan = RequestScan(&state);
            match hold::hold(&mut body, length, &self.body_hold, &mut scan).await {
                Ok(h) => {
                    eos_sent = h.is_complete();
                    held = Some(h);
                }
                Err(HoldError::Blocked(b)) => return block_response(&state, b, down_version),
                Err(e) => {
                    let status = match e {
                        HoldError::Idle(_) => StatusCode::REQUEST_TIMEOUT,
                        HoldError::Budget => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    tracing::warn!(target: "pipelock::http", conn = self.meta.id, error = %e, "request body not forwarded");
                    return error_response(&state, status, &e.to_string(), down_version);
                }
            }
        }
        let mut upgraded = None;
        if on_upgrade.is_some() {
            let filtered = if connect {
                self.connect_filter(&state, &parts)
            } else {
                self.upgrade_filter(&state, &mut parts.headers)
            };
            match filtered {
                Ok(Some(u)) => upgraded = Some(u),
                Ok(None) => on_upgrade = None,
                Err(b) => return block_response(&state, b, down_version),
            }
        }
        if let Err(reason) = self.prepare_request(&mut parts, pool.proto(), on_upgrade.is_some()) {
            return error_response(&state, StatusCode::BAD_REQUEST, &reason, down_version);
        }
        let rest = ScannedBody::new(
            body,
            Dir::Request,
            state.clone(),
            eos_sent,
            self.body_hold.idle,
        );
        let up_body = match held {
            Some(h) => h.replay(Some(rest)).boxed(),
            None => rest.boxed(),
        };
        let mut resp = match pool.send(Request::from_parts(parts, up_body)).await {
            Ok(r) => r,
            Err(e) => {
                let blocked = lock(&state).outcome.blocked.clone();
                if let Some(b) = blocked {
                    return block_response(&state, b, down_version);
                }
                tracing::warn!(target: "pipelock::http", conn = self.meta.id, side = ?e.side(), error = %e, "upstream request failed");
                return error_response(
                    &state,
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream request failed: {e}"),
                    down_version,
                );
            }
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (connect && resp.status().is_success());
        if let (true, Some(down), Some(how)) = (switching, on_upgrade, upgraded) {
            let up = hyper::upgrade::on(&mut resp);
            self.spawn_upgrade(down, up, how, state.clone());
        }
        let (mut rparts, rbody) = resp.into_parts();
        lock(&state).outcome.status = Some(rparts.status.as_u16());
        let decision = lock(&state).exchange.response_filter(&rparts);
        if let Decision::Block(b) = decision {
            return block_response(&state, b, down_version);
        }
        if let Err(b) = grpc_compression_filter(&state, true, &mut rparts.headers) {
            return block_response(&state, b, down_version);
        }
        strip_hop_by_hop(&mut rparts.headers, switching && !connect);
        rparts.version = down_version;
        let mut eos_sent = false;
        if rbody.is_end_stream() {
            eos_sent = true;
            if let Decision::Block(b) = lock(&state).body_filter(Dir::Response, &[], true) {
                return block_response(&state, b, down_version);
            }
        }
        let body = ScannedBody::new(
            rbody,
            Dir::Response,
            state,
            eos_sent,
            self.relay_limits.idle,
        );
        Response::from_parts(rparts, body.boxed())
    }

    /// Rewrites a client request for the upstream's HTTP version.
    fn prepare_request(
        &self,
        parts: &mut http::request::Parts,
        up: Proto,
        upgrade: bool,
    ) -> Result<(), String> {
        let authority = authority_of(&parts.uri, &parts.headers)
            .or_else(|| self.default_authority.clone())
            .ok_or_else(|| "request names no host".to_string())?;
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let connect = parts.method == Method::CONNECT;
        strip_hop_by_hop(&mut parts.headers, upgrade && !connect);
        // 100-continue is answered by the agent when it starts reading the body.
        parts.headers.remove(header::EXPECT);
        if connect {
            // Authority-form target, as the client sent it (audit only).
            parts.uri = Uri::from(authority);
            parts.version = match up {
                Proto::Http1 => Version::HTTP_11,
                Proto::Http2 => Version::HTTP_2,
            };
            return Ok(());
        }
        match up {
            Proto::Http1 => {
                parts.uri = Uri::from(path);
                parts.version = Version::HTTP_11;
                if !parts.headers.contains_key(header::HOST) {
                    let host = HeaderValue::from_str(authority.as_str())
                        .map_err(|e| format!("bad authority: {e}"))?;
                    parts.headers.insert(header::HOST, host);
                }
            }
            Proto::Http2 => {
                parts.uri = Uri::builder()
                    .scheme(self.scheme.clone())
                    .authority(authority)
                    .path_and_query(path)
                    .build()
                    .map_err(|e| format!("bad request target: {e}"))?;
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
            }
        }
        Ok(())
    }

    /// Decides what becomes of an upgrade request before it is forwarded:
    /// `Ok(Some)` forward it, `Ok(None)` forward the request without the
    /// upgrade, `Err` answer the block.
    fn upgrade_filter(
        &self,
        state: &Shared,
        headers: &mut HeaderMap,
    ) -> Result<Option<Upgraded>, Block> {
        let id = self.meta.id;
        if websocket::is_websocket(headers) {
            let Some(slot) = self.websocket.slot() else {
                tracing::warn!(target: "pipelock::websocket", conn = id, "websocket refused: max_concurrent_connections reached");
                return Err(Block {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "websocket_proxy.max_concurrent_connections reached".into(),
                    rule_ids: Vec::new(),
                    kind: Default::default(),
                });
            };
            websocket::prepare_request(headers, id);
            return Ok(Some(Upgraded::WebSocket(Some(slot))));
        }
        let name = websocket::upgrade_name(headers);
        let what = format!("upgrade:{name}");
        match lock(state).exchange.unscannable(false, &what) {
            Decision::Block(_) if name.eq_ignore_ascii_case("h2c") => {
                // Optional by design (RFC 7540 §3.2): the request goes on as HTTP/1.1.
                tracing::warn!(target: "pipelock::http", conn = id, upgrade = %name, "upgrade cannot be scanned: not forwarded");
                Ok(None)
            }
            Decision::Block(b) => {
                tracing::warn!(target: "pipelock::http", conn = id, upgrade = %name, "upgrade cannot be scanned: refused");
                Err(b)
            }
            Decision::Continue => Ok(Some(Upgraded::Raw(name))),
        }
    }

    /// A CONNECT request: its tunnel cannot be scanned, so it is refused in
    /// strict and balanced, relayed unscanned with a warning in audit.
    fn connect_filter(
        &self,
        state: &Shared,
        parts: &http::request::Parts,
    ) -> Result<Option<Upgraded>, Block> {
        let target = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match lock(state).exchange.unscannable(false, "tunnel:CONNECT") {
            Decision::Block(b) => {
                tracing::warn!(target: "pipelock::http", conn = self.meta.id, connect = %target, "CONNECT tunnel inside the connection cannot be scanned: refused");
                Err(b)
            }
            Decision::Continue => Ok(Some(Upgraded::Raw("CONNECT".into()))),
        }
    }

    fn spawn_upgrade(
        &self,
        down: hyper::upgrade::OnUpgrade,
        up: hyper::upgrade::OnUpgrade,
        how: Upgraded,
        state: Shared,
    ) {
        let id = self.meta.id;
        let ws = self.websocket.clone();
        let limits = self.relay_limits;
        self.tasks.spawn(async move {
            let (down, up) = match tokio::join!(down, up) {
                (Ok(d), Ok(u)) => (d, u),
                (d, u) => {
                    tracing::warn!(conn = id, client = ?d.err(), upstream = ?u.err(), "upgrade failed");
                    return;
                }
            };
            let (down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            let name = match how {
                Upgraded::WebSocket(slot) => {
                    websocket::relay(down, up, state, ws, id, slot).await;
                    return;
                }
                Upgraded::Raw(name) => name,
            };
            tracing::warn!(target: "pipelock::http", conn = id, upgrade = %name, "upgraded connection relayed unscanned (audit)");
            match super::relay::relay_limited(down, &mut up, limits).await {
                (Ok(end), (c2u, u2c)) => {
                    tracing::info!(target: "pipelock::http", conn = id, upgrade = %name, c2u, u2c, end = end.as_str(), "unscanned upgraded connection closed")
                }
                (Err(e), _) => tracing::info!(target: "pipelock::http", conn = id, upgrade = %name, error = %e, "unscanned upgraded connection failed"),
            }
        });
    }
}

/// The request body filter, as [`hold`] calls it.
struct RequestScan<'a>(&'a Shared);

impl BodyScan for RequestScan<'_> {
    fn data(&mut self, chunk: &[u8], eos: bool) -> Decision {
        lock(self.0).body_filter(Dir::Request, chunk, eos)
    }
    fn trailers(&mut self, trailers: &HeaderMap) -> Decision {
        lock(self.0).trailers_filter(Dir::Request, trailers)
    }
}

/// gRPC compresses message by message (`grpc-encoding`), inside a body
/// that carries no Content-Encoding: such messages cannot be scanned. The
/// agent asks for uncompressed answers (`grpc-accept-encoding` removed
/// from requests); a body declared compressed anyway (any coding but
/// `identity`) is [`Exchange::unscannable`]: refused in strict and
/// balanced, let through with a finding in audit.
fn grpc_compression_filter(
    state: &Shared,
    response: bool,
    headers: &mut HeaderMap,
) -> Result<(), Block> {
    if !response {
        headers.remove("grpc-accept-encoding");
    }
    let coding = headers
        .get_all("grpc-encoding")
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .find(|c| c != "identity");
    let Some(coding) = coding else {
        return Ok(());
    };
    let what: String = format!("grpc-encoding:{coding}")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    match lock(state).exchange.unscannable(response, &what) {
        Decision::Block(b) => Err(b),
        Decision::Continue => Ok(()),
    }
}

/// The declared `Content-Length`, when there is exactly one valid value.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?.to_str().ok()?.trim().parse().ok();
    if values.next().is_some() { None } else { first }
}

impl websocket::Hooks for Shared {
    fn with<R>(&self, f: impl FnOnce(&mut dyn Exchange) -> R) -> R {
        f(lock(self).exchange.as_mut())
    }
}

fn is_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): Connection and the fields it
/// names, Keep-Alive, Proxy-Connection, TE (but `trailers`), Transfer-Encoding
/// and Upgrade. For an upgrade, `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<Authority> {
    uri.authority().cloned().or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
    })
}

fn json_response(
    status: StatusCode,
    body: serde_json::Value,
    version: Version,
) -> Response<DownBody> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(Full::new(bytes).map_err(|n: Infallible| match n {}).boxed());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("x-pipelock", HeaderValue::from_static("agent"));
    resp
}

/// The answer for a blocked exchange (nothing was sent to the client yet).
fn block_response(state: &Shared, b: Block, version: Version) -> Response<DownBody> {
    let body = b.json_body();
    let status = b.status;
    {
        let mut st = lock(state);
        st.outcome.status = Some(status.as_u16());
        st.outcome.blocked = Some(b);
        st.finish();
    }
    json_response(status, body, version)
}

/// The answer when the agent cannot proxy (upstream failure, bad request).
fn error_response(
    state: &Shared,
    status: StatusCode,
    reason: &str,
    version: Version,
) -> Response<DownBody> {
    let kind = match status {
        StatusCode::BAD_GATEWAY => "upstream_failure",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded",
        _ => "bad_request",
    };
    let body = serde_json::json!({ "error": kind, "reason": reason });
    {
        let mut st = lock(state);
        st.outcome.status = Some(status.as_u16());
        st.outcome.error = Some(reason.to_owned());
        st.finish();
    }
    json_response(status, body, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.contains_key("x-end-to-end"));
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept: {names:?}");
        }
    }

    #[test]
    fn upgrade_fields_survive_for_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h, Version::HTTP_11));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }
}
