//! The MCP reverse proxy listener (Pipelock's :8889, `--mcp-listen` in
//! front of `--mcp-upstream`): HTTP/1.1 and h2 (prior knowledge) from
//! clients, hyper towards the one configured upstream (TLS verified like
//! every upstream of the agent: system roots plus `--upstream-ca`).
//!
//! - `GET /health` answers `{"status":"ok"}`; every other path is proxied
//!   to the upstream URL (the client's path and query are not forwarded).
//! - `POST` carries JSON-RPC: the body is read whole (up to
//!   `request_body_scanning.max_body_bytes`), goes through the one pipeline
//!   (`request_filter`: kill switch, headers; `request_body_filter`: DLP;
//!   for `tools/call`, the de-obfuscated argument strings through
//!   `message_filter`), then the MCP checks of `crate::mcp` (session
//!   binding, tool policy, chains) report their findings to the same
//!   exchange. Nothing is sent upstream before all of that passed.
//! - Answers (JSON or an SSE stream, to POST and to the `GET` stream) are
//!   scanned the same way: every message (SSE: every event) through
//!   `message_filter` with the texts of tool results unpacked (Sure
//!   double-encodes JSON in `result.content[0].text`), and `tools/list`
//!   results checked for poisoning and against the session's pins.
//!   Clean answers are relayed byte for byte.
//! - A block is a JSON-RPC error with HTTP 200, Pipelock's codes: -32000
//!   response, -32001 input DLP, -32002 tool policy and session binding,
//!   -32004 chains and the kill switch, -32020 `Mcp-Method`/`Mcp-Name`
//!   headers disagreeing with the body. A blocked SSE stream gets the error
//!   as its last event.
//! - `Authorization`, `Cookie` and `Mcp-Session-Id` are the upstream's: passed
//!   through untouched, never scanned as leaks to it, never logged; a 401
//!   with `WWW-Authenticate` passes back as it is. `DELETE` ends a session
//!   upstream and here. With `--mcp-auth-token-file`, clients must also send
//!   `Proxy-Authorization: Bearer <token>` (removed before forwarding).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{
    HeaderMap, HeaderValue, Method, StatusCode, Uri, Version,
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    LiveContext, ProxyContext,
    http::{BodyError, DownBody, strip_hop_by_hop},
    limits::ConnLimits,
    transparent::next_conn_id,
    upstream::{self, Proto, Target, TlsTarget, UpstreamPool},
};
use crate::{
    mcp::{self, Checked, McpSettings, jsonrpc, session},
    pipeline::{Block, BlockKind, ConnMeta, Decision, Exchange, Listener, Outcome},
    telemetry::metrics::Metrics,
    tls::AlpnOffer,
};

/// How long a client may take to send a whole request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Header names of the newer MCP revision, checked against the body.
const MCP_METHOD: &str = "mcp-method";
const MCP_NAME: &str = "mcp-name";
const MCP_SESSION_ID: &str = "mcp-session-id";

/// The upstream URL, parsed once at start.
#[derive(Clone, Debug)]
pub struct UpstreamUrl {
    pub tls: bool,
    /// Host as written (DNS name or address literal without brackets).
    pub host: String,
    pub port: u16,
    pub authority: Authority,
    pub path: PathAndQuery,
}

/// `--mcp-upstream` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--mcp-upstream {url}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let bad = |reason: &str| UrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            authority,
            path,
        })
    }
}

/// What every connection of the MCP listener shares (start-only).
pub struct McpProxy {
    pub upstream: UpstreamUrl,
    /// Per-session and per-client state, kept across reloads.
    pub state: Arc<session::State>,
    /// `--mcp-auth-token-file`: the token clients must send.
    pub token: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
}

/// Accepts until `shutdown`, with the agent's admission limits.
pub async fn serve(
    listener: TcpListener,
    live: Arc<LiveContext>,
    limits: Arc<ConnLimits>,
    proxy: Arc<McpProxy>,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer)) = super::transparent::accept(&listener, &shutdown).await {
        let Some((stream, admission)) =
            limits.admit_or_reset(stream, peer, "mcp", None, &proxy.metrics)
        else {
            continue;
        };
        let ctx = live.load_full();
        let p = proxy.clone();
        proxy.tracker.spawn(async move {
            serve_connection(stream, peer, ctx, p).await;
            drop(admission);
        });
    }
}

/// One client connection.
struct Conn {
    ctx: Arc<ProxyContext>,
    proxy: Arc<McpProxy>,
    peer: SocketAddr,
    /// The upstream's address (resolved at connection start) or why not.
    dst: Result<SocketAddr, String>,
    meta: Arc<ConnMeta>,
    pool: tokio::sync::Mutex<Option<Arc<UpstreamPool>>>,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    proxy: Arc<McpProxy>,
) {
    let _ = stream.set_nodelay(true);
    let up = &proxy.upstream;
    let dst = resolve(&up.host, up.port).await.and_then(|a| {
        if ctx.is_self(a) {
            Err(format!(
                "--mcp-upstream resolves to the agent's own listener {a} (loop)"
            ))
        } else {
            Ok(a)
        }
    });
    let meta = Arc::new(ConnMeta {
        id: next_conn_id(),
        listener: Listener::Mcp,
        peer,
        orig_dst: dst.as_ref().ok().copied(),
        attribution: None,
        // Set only when rustls verifies the upstream's certificate for it:
        // every request goes to that name and nowhere else.
        verified_name: (up.tls && up.host.parse::<std::net::IpAddr>().is_err())
            .then(|| up.host.to_ascii_lowercase()),
    });
    proxy.metrics.connection("mcp", "http");
    let conn = Arc::new(Conn {
        ctx: ctx.clone(),
        proxy,
        peer,
        dst,
        meta,
        pool: tokio::sync::Mutex::new(None),
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.header_read_timeout)
        .keep_alive(true);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
        tracing::debug!(target: "pipelock::conn", peer = %peer, listener = "mcp", error = %e, "MCP connection ended");
    }
}

/// The first address `host` resolves to (a literal address as is).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))
}

/// What a request was, for judging its answer.
#[derive(Default)]
struct Asked {
    /// Ids of the requests in the body (in order; a batch has several).
    ids: Vec<Value>,
    batch: bool,
    /// A `tools/list` request: `Some(paged)` (paged: it asked for a cursor).
    tools_list: Option<bool>,
    session: session::Key,
    /// The client (its earlier tool pins).
    client: session::Key,
}

impl Asked {
    /// The error answering the request(s) with `code`.
    fn error(&self, code: i64, message: &str, rule_ids: &[String]) -> Value {
        if self.batch {
            Value::Array(
                self.ids
                    .iter()
                    .map(|id| jsonrpc::error(id.clone(), code, message, rule_ids))
                    .collect(),
            )
        } else {
            let id = self.ids.first().cloned().unwrap_or(Value::Null);
            jsonrpc::error(id, code, message, rule_ids)
        }
    }
}

impl Conn {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<DownBody> {
        if req.method() == Method::GET && req.uri().path() == "/health" {
            return json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }), None);
        }
        if let Some(expected) = &self.proxy.token {
            let given = req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !crate::admin::token_matches(given, expected) {
                tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, "MCP request without the listener token refused (407)");
                let mut r = json_response(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    &jsonrpc::error(
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "proxy authentication required (Proxy-Authorization: Bearer <token>)",
                        &[],
                    ),
                    None,
                );
                r.headers_mut().insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pipelock-mcp\""),
                );
                return r;
            }
        }
        match *req.method() {
            Method::POST => self.post(req).await,
            Method::GET | Method::DELETE => self.bodyless(req).await,
            _ => {
                let mut r = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &jsonrpc::error(
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "method not allowed",
                        &[],
                    ),
                    None,
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                r
            }
        }
    }

    fn settings(&self) -> &McpSettings {
        &self.ctx.mcp
    }

    /// The session a request belongs to (`session_id` overrides the
    /// request's header: the id an `initialize` answer assigns).
    fn session_key(&self, headers: &HeaderMap, session_id: Option<&HeaderValue>) -> session::Key {
        session::key(
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            session_id
                .or_else(|| headers.get(MCP_SESSION_ID))
                .map(HeaderValue::as_bytes),
            self.peer.ip(),
        )
    }

    /// The client a request comes from, for the upstream.
    fn client_key(&self, headers: &HeaderMap) -> session::Key {
        session::client_key(
            self.proxy.upstream.authority.as_str(),
            headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            self.peer.ip(),
        )
    }

    /// The request as the pipeline sees it: the upstream's URL, without the
    /// credentials and session id that belong to the upstream.
    fn scanned_parts(&self, parts: &http::request::Parts) -> http::request::Parts {
        let up = &self.proxy.upstream;
        let uri = Uri::builder()
            .scheme(if up.tls { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(up.authority.clone())
            .path_and_query(up.path.clone())
            .build()
            .unwrap_or_default();
        let mut headers = parts.headers.clone();
        for h in [
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HOST,
        ] {
            headers.remove(h);
        }
        headers.remove(MCP_SESSION_ID);
        let mut b = Request::builder().method(parts.method.clone()).uri(uri);
        if let Some(h) = b.headers_mut() {
            *h = headers;
        }
        b.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|_| Request::new(()).into_parts().0)
    }

    async fn post(self: Arc<Self>, req: Request<Incoming>) -> Response<DownBody> {
        let (parts, body) = req.into_parts();
        let max = self.settings().max_body;
        let body = match read_bounded(body, max).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &jsonrpc::error(
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "request body too large to scan",
                        &[],
                    ),
                    None,
                );
            }
            Err(ReadError::Failed(reason)) => {
                tracing::debug!(target: "pipelock::conn", listener = "mcp", peer = %self.peer, reason, "reading an MCP request body failed");
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "request body unreadable",
                        &[],
                    ),
                    None,
                );
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let mut asked = Asked {
            session: self.session_key(&parts.headers, None),
            client: self.client_key(&parts.headers),
            ..Default::default()
        };
        let messages: Vec<&Value> = match &parsed {
            Some(Value::Array(a)) => {
                asked.batch = true;
                a.iter().collect()
            }
            Some(v) => vec![v],
            None => Vec::new(),
        };
        for m in &messages {
            if jsonrpc::is_request(m)
                && let Some(id) = jsonrpc::id(m)
            {
                asked.ids.push(id.clone());
            }
        }
        if !asked.batch
            && let Some(m) = messages.first()
            && jsonrpc::method(m) == Some("tools/list")
        {
            let paged = m
                .get("params")
                .and_then(|p| p.get("cursor"))
                .is_some_and(|c| !c.is_null());
            asked.tools_list = Some(paged);
        }

        let mut ex = self.ctx.pipeline.exchange(&self.meta);
        let scanned = self.scanned_parts(&parts);
        let mut outcome = Outcome {
            request_bytes: body.len() as u64,
            ..Default::default()
        };
        // Kill switch and headers first, then the body.
        let d = ex.request_filter(&scanned);
        if let Decision::Block(b) = d {
            return self.refuse(
                ex,
                &asked,
                &b,
                input_code(&b),
                "request blocked by MCP input scanning",
                outcome,
            );
        }
        if parsed.is_none() && self.settings().parse_error_block {
            tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, conn_id = self.meta.id, "MCP request body is not JSON: refused (mcp_input_scanning.on_parse_error: block)");
            outcome.status = Some(400);
            ex.logging(&outcome);
            return json_response(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    "parse error: the body is not JSON",
                    &[],
                ),
                None,
            );
        }
        if !asked.batch
            && let Some(m) = messages.first()
            && let Some(why) = header_mismatch(&parts.headers, m)
        {
            tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, conn_id = self.meta.id, why, "Mcp-Method / Mcp-Name header disagrees with the body");
            outcome.status = Some(200);
            ex.logging(&outcome);
            return json_response(
                StatusCode::OK,
                &asked.error(jsonrpc::HEADER_MISMATCH, why, &[]),
                None,
            );
        }
        if let Decision::Block(b) = ex.request_body_filter(&body, true) {
            return self.refuse(
                ex,
                &asked,
                &b,
                input_code(&b),
                "request blocked by MCP input scanning",
                outcome,
            );
        }
        for m in &messages {
            if let Some(resp) = self.check_call(&mut *ex, &asked, m, &mut outcome) {
                return resp;
            }
        }
        let resp = match self
            .send(
                &parts,
                Full::new(body.clone())
                    .map_err(|n: Infallible| match n {})
                    .boxed(),
            )
            .await
        {
            Ok(r) => r,
            Err(reason) => return self.upstream_failed(ex, &asked, &reason, outcome),
        };
        self.respond(resp, ex, asked, outcome, &parts.headers).await
    }

    /// The MCP checks of one `tools/call`; `Some` answer when it is blocked.
    fn check_call(
        &self,
        ex: &mut dyn Exchange,
        asked: &Asked,
        msg: &Value,
        outcome: &mut Outcome,
    ) -> Option<Response<DownBody>> {
        let (tool, arguments) = jsonrpc::tool_call(msg)?;
        let one = Asked {
            ids: jsonrpc::id(msg).cloned().into_iter().collect(),
            batch: false,
            tools_list: None,
            session: asked.session,
            client: asked.client,
        };
        let answer_for = if asked.batch { asked } else { &one };
        // What a shell would run: the argument strings de-obfuscated, where
        // that changes them, through the DLP scan as well.
        let mut strs = Vec::new();
        if self.settings().input_scanning {
            jsonrpc::strings(arguments, &mut strs);
        }
        let mut views = String::new();
        for s in strs {
            let d = mcp::shell::deobfuscate(s);
            if d != s.split_whitespace().collect::<Vec<_>>().join(" ") {
                views.push_str(&d);
                views.push('\n');
            }
        }
        if !views.is_empty()
            && let Decision::Block(b) = ex.message_filter(false, views.as_bytes())
        {
            return Some(self.refuse_boxed(
                ex,
                answer_for,
                &b,
                input_code(&b),
                "request blocked by MCP input scanning",
                outcome,
            ));
        }
        let s = self.settings();
        let sessions = &self.proxy.state.sessions;
        let binding = sessions.with(&asked.session, Instant::now(), |sess| {
            mcp::check_binding(s, sess, tool)
        });
        if let Some(b) = report(ex, false, vec![binding]) {
            return Some(self.refuse_boxed(
                ex,
                answer_for,
                &b,
                jsonrpc::POLICY_BLOCKED,
                "tool call blocked: tool not in the session's tool baseline",
                outcome,
            ));
        }
        if let Some(b) = report(ex, false, mcp::check_policy(s, tool, arguments).into()) {
            return Some(self.refuse_boxed(
                ex,
                answer_for,
                &b,
                jsonrpc::POLICY_BLOCKED,
                "request blocked by tool call policy",
                outcome,
            ));
        }
        let (chain, name) = sessions.with(&asked.session, Instant::now(), |sess| {
            mcp::check_chain(s, sess, tool, arguments, Instant::now())
        });
        self.count_chains(&chain);
        if let Some(b) = report(ex, false, chain.into()) {
            let msg = format!(
                "tool call blocked: chain pattern \"{}\" detected",
                name.as_deref().map(mcp::poison::safe).unwrap_or_default()
            );
            return Some(self.refuse_boxed(
                ex,
                answer_for,
                &b,
                jsonrpc::CHAIN_OR_KILL_SWITCH,
                &msg,
                outcome,
            ));
        }
        None
    }

    /// Counts detected chains in `pipelock_chain_detections_total` with the
    /// action the mode and section give them.
    fn count_chains(&self, groups: &[Checked; 2]) {
        let mode = self.ctx.pipeline.mode_for(&self.meta);
        for g in groups {
            let action = match mode {
                crate::config::Mode::Audit => "log",
                crate::config::Mode::Strict => "block",
                crate::config::Mode::Balanced if g.section_blocks => "block",
                crate::config::Mode::Balanced => "warn",
            };
            for h in &g.hits {
                let pattern = h.meta.id.strip_prefix("mcp.chain.").unwrap_or(&h.meta.id);
                self.proxy
                    .metrics
                    .chain_detected(pattern, h.meta.severity.as_str(), action);
            }
        }
    }

    /// GET (the server's SSE stream) and DELETE (end of session).
    async fn bodyless(self: Arc<Self>, req: Request<Incoming>) -> Response<DownBody> {
        let (parts, _body) = req.into_parts();
        let asked = Asked {
            session: self.session_key(&parts.headers, None),
            client: self.client_key(&parts.headers),
            ..Default::default()
        };
        let mut ex = self.ctx.pipeline.exchange(&self.meta);
        let outcome = Outcome::default();
        if let Decision::Block(b) = ex.request_filter(&self.scanned_parts(&parts)) {
            return self.refuse(
                ex,
                &asked,
                &b,
                input_code(&b),
                "request blocked by MCP input scanning",
                outcome,
            );
        }
        let resp = match self.send(&parts, empty()).await {
            Ok(r) => r,
            Err(reason) => return self.upstream_failed(ex, &asked, &reason, outcome),
        };
        if parts.method == Method::DELETE && resp.status().is_success() {
            self.proxy.state.sessions.remove(&asked.session);
        }
        self.respond(resp, ex, asked, outcome, &parts.headers).await
    }

    /// Sends the request upstream: the client's headers minus hop-by-hop
    /// fields and the listener's own `Proxy-Authorization`, identity
    /// encoding asked (answers are scanned), to the upstream URL.
    async fn send(
        &self,
        parts: &http::request::Parts,
        body: upstream::UpBody,
    ) -> Result<Response<Incoming>, String> {
        let pool = self.pool().await?;
        let up = &self.proxy.upstream;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers, false);
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut b = Request::builder().method(parts.method.clone());
        b = match pool.proto() {
            Proto::Http1 => {
                let host = HeaderValue::from_str(up.authority.as_str())
                    .map_err(|e| format!("bad upstream authority: {e}"))?;
                headers.insert(header::HOST, host);
                b.uri(Uri::from(up.path.clone())).version(Version::HTTP_11)
            }
            Proto::Http2 => b
                .uri(
                    Uri::builder()
                        .scheme(if up.tls { Scheme::HTTPS } else { Scheme::HTTP })
                        .authority(up.authority.clone())
                        .path_and_query(up.path.clone())
                        .build()
                        .map_err(|e| format!("bad upstream URL: {e}"))?,
                )
                .version(Version::HTTP_2),
        };
        let mut req = b
            .body(body)
            .map_err(|e| format!("building the upstream request: {e}"))?;
        *req.headers_mut() = headers;
        pool.send(req).await.map_err(|e| e.to_string())
    }

    /// The connection's upstream pool, dialled on first use.
    async fn pool(&self) -> Result<Arc<UpstreamPool>, String> {
        let mut slot = self.pool.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let addr = self.dst.clone()?;
        let up = &self.proxy.upstream;
        let tls = if up.tls {
            let server_name = ServerName::try_from(up.host.clone())
                .map_err(|e| format!("--mcp-upstream host {}: {e}", up.host))?;
            Some(TlsTarget {
                tls: self.ctx.tls.clone(),
                server_name,
                offer: AlpnOffer::Both,
            })
        } else {
            None
        };
        let target = Target {
            addr,
            tls,
            connect_timeout: self.ctx.connect_timeout,
            response_timeout: self.ctx.upstream_response_timeout,
        };
        let (io, proto) = upstream::dial(&target, Proto::Http1, None)
            .await
            .map_err(|e| e.to_string())?;
        let pool = Arc::new(
            UpstreamPool::with_first(target, io, proto)
                .await
                .map_err(|e| e.to_string())?,
        );
        *slot = Some(pool.clone());
        Ok(pool)
    }

    /// Judges and relays the upstream's answer.
    async fn respond(
        &self,
        resp: Response<Incoming>,
        mut ex: Box<dyn Exchange>,
        mut asked: Asked,
        mut outcome: Outcome,
        req_headers: &HeaderMap,
    ) -> Response<DownBody> {
        let (mut parts, body) = resp.into_parts();
        // An initialize answer assigns the session: its state is keyed by it.
        if req_headers.get(MCP_SESSION_ID).is_none()
            && let Some(id) = parts.headers.get(MCP_SESSION_ID)
        {
            asked.session = self.session_key(req_headers, Some(id));
        }
        strip_hop_by_hop(&mut parts.headers, false);
        outcome.status = Some(parts.status.as_u16());
        if let Decision::Block(b) = ex.response_filter(&parts) {
            return self.refuse(
                ex,
                &asked,
                &b,
                jsonrpc::RESPONSE_BLOCKED,
                "prompt injection detected in MCP response",
                outcome,
            );
        }
        let session_header = parts.headers.get(MCP_SESSION_ID).cloned();
        let encoded = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            // Asked for identity; a coded answer is not read (strict and
            // balanced refuse, audit relays it unread).
            if let Decision::Block(b) = ex.unscannable(true, "content-encoding") {
                return self.refuse(
                    ex,
                    &asked,
                    &b,
                    jsonrpc::RESPONSE_BLOCKED,
                    "upstream response is compressed and cannot be scanned",
                    outcome,
                );
            }
            ex.logging(&outcome);
            return Response::from_parts(parts, body.map_err(BodyError::Io).boxed());
        }
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if sse {
            parts.headers.remove(header::CONTENT_LENGTH);
            let (tx, mut rx) = tokio::sync::mpsc::channel(SSE_QUEUE);
            let relay = SseRelay {
                body,
                ex,
                asked,
                settings: self.ctx.mcp.clone(),
                state: self.proxy.state.clone(),
                buf: BytesMut::new(),
                tx,
                outcome,
            };
            self.proxy.tracker.spawn(relay.run());
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let body = http_body_util::BodyExt::boxed(StreamBody::new(stream));
            return Response::from_parts(parts, body);
        }
        let bytes = match read_bounded(body, self.settings().max_body).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                if let Decision::Block(b) = ex.unscannable(true, "oversized MCP response") {
                    return self.refuse(
                        ex,
                        &asked,
                        &b,
                        jsonrpc::RESPONSE_BLOCKED,
                        "upstream response too large to scan",
                        outcome,
                    );
                }
                outcome.error = Some("oversized response not relayed".into());
                ex.logging(&outcome);
                return self.upstream_failed_plain("upstream response too large to scan");
            }
            Err(ReadError::Failed(reason)) => {
                return self.upstream_failed(ex, &asked, &reason, outcome);
            }
        };
        outcome.response_bytes = bytes.len() as u64;
        if !bytes.is_empty()
            && let Err((code, msg, b)) =
                check_message(&mut *ex, &asked, &bytes, &self.ctx.mcp, &self.proxy.state)
        {
            return self.refuse_with_session(ex, &asked, &b, code, msg, outcome, session_header);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        ex.logging(&outcome);
        Response::from_parts(parts, full(bytes))
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse_with_session(
        &self,
        mut ex: Box<dyn Exchange>,
        asked: &Asked,
        b: &Block,
        code: i64,
        message: &str,
        mut outcome: Outcome,
        session: Option<HeaderValue>,
    ) -> Response<DownBody> {
        let (code, message) = kill_switch_or(b, code, message);
        outcome.status = Some(200);
        outcome.blocked = Some(b.clone());
        ex.logging(&outcome);
        json_response(
            StatusCode::OK,
            &asked.error(code, &message, &b.rule_ids),
            session,
        )
    }

    fn refuse(
        &self,
        ex: Box<dyn Exchange>,
        asked: &Asked,
        b: &Block,
        code: i64,
        message: &str,
        outcome: Outcome,
    ) -> Response<DownBody> {
        self.refuse_with_session(ex, asked, b, code, message, outcome, None)
    }

    /// [`Conn::refuse`] for an exchange that stays owned by the caller.
    fn refuse_boxed(
        &self,
        ex: &mut dyn Exchange,
        asked: &Asked,
        b: &Block,
        code: i64,
        message: &str,
        outcome: &mut Outcome,
    ) -> Response<DownBody> {
        let (code, message) = kill_switch_or(b, code, message);
        outcome.status = Some(200);
        outcome.blocked = Some(b.clone());
        ex.logging(outcome);
        json_response(
            StatusCode::OK,
            &asked.error(code, &message, &b.rule_ids),
            None,
        )
    }

    fn upstream_failed(
        &self,
        mut ex: Box<dyn Exchange>,
        asked: &Asked,
        reason: &str,
        mut outcome: Outcome,
    ) -> Response<DownBody> {
        tracing::warn!(target: "pipelock::conn", listener = "mcp", conn_id = self.meta.id, upstream = %self.proxy.upstream.authority, error = reason, "MCP upstream failed");
        outcome.status = Some(502);
        outcome.error = Some(reason.to_owned());
        ex.logging(&outcome);
        json_response(
            StatusCode::BAD_GATEWAY,
            &asked.error(jsonrpc::RESPONSE_BLOCKED, "upstream unavailable", &[]),
            None,
        )
    }

    fn upstream_failed_plain(&self, reason: &str) -> Response<DownBody> {
        json_response(
            StatusCode::BAD_GATEWAY,
            &jsonrpc::error(Value::Null, jsonrpc::RESPONSE_BLOCKED, reason, &[]),
            None,
        )
    }
}

/// Reports each check's hits to the exchange (warn-only groups first, so
/// they are logged even when a later group blocks); the block, if any.
fn report(ex: &mut dyn Exchange, response: bool, checks: Vec<Checked>) -> Option<Block> {
    let mut checks = checks;
    checks.sort_by_key(|c| c.section_blocks);
    for c in checks {
        if c.hits.is_empty() {
            continue;
        }
        if let Decision::Block(b) = ex.report(response, c.hits, c.section_blocks) {
            return Some(b);
        }
    }
    None
}

/// Scans one JSON-RPC answer (or any answer body): the raw bytes and the
/// unpacked texts of tool results through the pipeline, then a `tools/list`
/// result's tools. `Err`: the code, message and block to answer with.
fn check_message(
    ex: &mut dyn Exchange,
    asked: &Asked,
    data: &[u8],
    settings: &McpSettings,
    state: &session::State,
) -> Result<(), (i64, &'static str, Block)> {
    let parsed: Option<Value> = serde_json::from_slice(data).ok();
    let msgs: Vec<&Value> = match &parsed {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    let mut scan = Vec::with_capacity(data.len() + 64);
    scan.extend_from_slice(data);
    for m in &msgs {
        for t in jsonrpc::result_texts(m) {
            scan.push(b'\n');
            scan.extend_from_slice(t.as_bytes());
        }
        if let Some(tools) = m
            .get("result")
            .and_then(|r| r.get("tools"))
            .and_then(Value::as_array)
        {
            // Tool texts, unescaped, for the injection rules.
            for t in tools {
                let mut strs = Vec::new();
                jsonrpc::strings(t, &mut strs);
                for s in strs {
                    scan.push(b'\n');
                    scan.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
    // A listing's own checks first, so their findings are logged even when
    // the scan below blocks the answer.
    // Tool listings are recognised by shape (`result.tools`), whatever the
    // request was, as Pipelock does: a server cannot slip tools past the
    // checks in another answer.
    let mut listings = Vec::new();
    let paged = asked.tools_list.unwrap_or(false);
    for m in &msgs {
        if tools_shaped(m) {
            // The baselines are copied out: the checks run without the locks.
            let now = Instant::now();
            let baseline = state
                .sessions
                .with(&asked.session, now, |s| session::Session {
                    tools: s.tools.clone(),
                    tools_complete: s.tools_complete,
                    calls: Default::default(),
                });
            let earlier = state.clients.with(&asked.client, now, |c| c.clone());
            let Some(mut listing) = mcp::check_listing(settings, &baseline, &earlier, m, paged)
            else {
                continue;
            };
            let checked = std::mem::take(&mut listing.checked);
            if let Some(b) = report(ex, true, vec![checked]) {
                return Err((jsonrpc::RESPONSE_BLOCKED, TOOL_POISONING, b));
            }
            listings.push(listing);
        }
    }
    if let Decision::Block(b) = ex.message_filter(true, &scan) {
        let msg = if listings.is_empty() {
            "prompt injection detected in MCP response"
        } else {
            TOOL_POISONING
        };
        return Err((jsonrpc::RESPONSE_BLOCKED, msg, b));
    }
    for listing in listings {
        let now = Instant::now();
        state.clients.with(&asked.client, now, |earlier| {
            state.sessions.with(&asked.session, now, |sess| {
                mcp::commit_listing(sess, earlier, listing)
            })
        });
    }
    Ok(())
}

/// A message carrying a tool list (`result.tools` is an array).
fn tools_shaped(m: &Value) -> bool {
    m.get("result")
        .and_then(|r| r.get("tools"))
        .is_some_and(Value::is_array)
}

/// The message of a blocked `tools/list` answer (Pipelock's).
const TOOL_POISONING: &str = "tool poisoning detected in tools/list";

/// Request-side blocks from the pipeline: the kill switch gets -32004, the rest -32001.
fn input_code(b: &Block) -> i64 {
    match b.kind {
        BlockKind::KillSwitch => jsonrpc::CHAIN_OR_KILL_SWITCH,
        BlockKind::Policy => jsonrpc::INPUT_BLOCKED,
    }
}

/// The kill switch answers with its own code and message wherever it hits.
fn kill_switch_or(b: &Block, code: i64, message: &str) -> (i64, String) {
    match b.kind {
        BlockKind::KillSwitch => (jsonrpc::CHAIN_OR_KILL_SWITCH, b.reason.clone()),
        BlockKind::Policy => (code, message.to_owned()),
    }
}

/// `Mcp-Method` / `Mcp-Name` against the body; the disagreement, if any.
fn header_mismatch(headers: &HeaderMap, msg: &Value) -> Option<&'static str> {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(m) = get(MCP_METHOD)
        && Some(m) != jsonrpc::method(msg)
    {
        return Some("Mcp-Method header does not match the request body");
    }
    if let Some(n) = get(MCP_NAME)
        && Some(n) != jsonrpc::subject(msg)
    {
        return Some("Mcp-Name header does not match the request body");
    }
    None
}

enum ReadError {
    TooLarge,
    Failed(String),
}

/// A whole body, at most `max` bytes, within [`BODY_TIMEOUT`].
async fn read_bounded(body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ReadError::Failed("body not complete in time".into())),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Ok(Err(e)) => Err(ReadError::Failed(e.to_string())),
    }
}

fn full(b: Bytes) -> DownBody {
    Full::new(b).map_err(|n: Infallible| match n {}).boxed()
}

fn empty() -> upstream::UpBody {
    Full::new(Bytes::new())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

/// A JSON answer of the listener itself (keeping the upstream's session id
/// when given).
fn json_response(
    status: StatusCode,
    body: &Value,
    session: Option<HeaderValue>,
) -> Response<DownBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-pipelock", HeaderValue::from_static("agent"));
    if let Some(s) = session {
        h.insert(HeaderName::from_static(MCP_SESSION_ID), s);
    }
    resp
}

/// An SSE answer relayed event by event (a task of its own feeding the
/// client's body through a small channel, so a slow client slows the
/// upstream read): each event's data is checked like a JSON answer; a clean
/// event goes out as its original bytes, a blocked one is replaced by the
/// JSON-RPC error and ends the stream.
struct SseRelay {
    body: Incoming,
    ex: Box<dyn Exchange>,
    asked: Asked,
    settings: Arc<McpSettings>,
    state: Arc<session::State>,
    /// Bytes of the event being received.
    buf: BytesMut,
    tx: tokio::sync::mpsc::Sender<SseItem>,
    outcome: Outcome,
}

type SseItem = Result<hyper::body::Frame<Bytes>, BodyError>;

/// Events queued towards the client at most.
const SSE_QUEUE: usize = 8;

impl SseRelay {
    async fn run(mut self) {
        let error = self.relay().await.err();
        if let Some(e) = &error {
            tracing::debug!(target: "pipelock::conn", listener = "mcp", error = %e, "MCP event stream ended");
        }
        self.outcome.error = error;
        self.ex.logging(&self.outcome);
    }

    /// Relays until the upstream ends, a block, or the client leaves.
    async fn relay(&mut self) -> Result<(), String> {
        loop {
            let frame = match self.body.frame().await {
                None => {
                    if !self.buf.is_empty() {
                        let rest = self.buf.split().freeze();
                        self.event(rest).await?;
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    let reason = e.to_string();
                    let _ = self.tx.send(Err(BodyError::Io(e))).await;
                    return Err(reason);
                }
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.outcome.response_bytes += data.len() as u64;
            self.buf.extend_from_slice(&data);
            while let Some(end) = event_end(&self.buf) {
                let ev = self.buf.split_to(end).freeze();
                if !self.event(ev).await? {
                    return Ok(());
                }
            }
            if self.buf.len() > self.settings.max_body {
                if let Decision::Block(b) = self.ex.unscannable(true, "oversized SSE event") {
                    let asked = Asked {
                        ids: self.asked.ids.clone(),
                        ..Default::default()
                    };
                    self.blocked(
                        &asked,
                        jsonrpc::RESPONSE_BLOCKED,
                        "upstream event too large to scan",
                        b,
                    )
                    .await?;
                    return Ok(());
                }
                // Audit: relayed unread.
                let raw = self.buf.split().freeze();
                self.send(raw).await?;
            }
        }
    }

    async fn send(&mut self, b: Bytes) -> Result<(), String> {
        self.tx
            .send(Ok(hyper::body::Frame::data(b)))
            .await
            .map_err(|_| "the client went away".to_owned())
    }

    /// One complete event (with its terminating blank line); false when it
    /// was blocked (the stream ends).
    async fn event(&mut self, raw: Bytes) -> Result<bool, String> {
        let data = event_data(&raw);
        if data.is_empty() {
            self.send(raw).await?;
            return Ok(true);
        }
        // A response in the stream answers its own id.
        let answer_for = Asked {
            ids: serde_json::from_slice::<Value>(&data)
                .ok()
                .filter(|v| v.get("method").is_none())
                .and_then(|v| v.get("id").cloned())
                .into_iter()
                .collect(),
            batch: false,
            tools_list: self.asked.tools_list,
            session: self.asked.session,
            client: self.asked.client,
        };
        match check_message(
            &mut *self.ex,
            &answer_for,
            &data,
            &self.settings,
            &self.state,
        ) {
            Ok(()) => {
                self.send(raw).await?;
                Ok(true)
            }
            Err((code, msg, b)) => {
                self.blocked(&answer_for, code, msg, b).await?;
                Ok(false)
            }
        }
    }

    async fn blocked(
        &mut self,
        asked: &Asked,
        code: i64,
        msg: &str,
        b: Block,
    ) -> Result<(), String> {
        let (code, msg) = kill_switch_or(&b, code, msg);
        let rule_ids = b.rule_ids.clone();
        self.outcome.blocked = Some(b);
        if !asked.ids.is_empty() {
            let err = asked.error(code, &msg, &rule_ids);
            self.send(Bytes::from(format!("event: message\ndata: {err}\n\n")))
                .await?;
        }
        Ok(())
    }
}

/// Where the first event in `buf` ends (after its blank line), if complete.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        let nl = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let j = i + nl;
        match buf.get(j) {
            Some(b'\n') => return Some(j + 1),
            Some(b'\r') if buf.get(j + 1) == Some(&b'\n') => return Some(j + 2),
            Some(b'\r') => return Some(j + 1),
            None => return None,
            _ => i = j,
        }
    }
    None
}

/// The data of one event: its `data:` lines joined with `\n`.
fn event_data(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(raw);
    for line in text.split(['\n', '\r']) {
        if let Some(rest) = line.strip_prefix("data") {
            let v = rest
                .strip_prefix(':')
                .map(|r| r.strip_prefix(' ').unwrap_or(r));
            if let Some(v) = v.or((rest.is_empty()).then_some("")) {
                if !out.is_empty() {
                    out.push(b'\n');
                }
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("http://sure:3000/mcp").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "sure", 3000, "/mcp")
        );
        let u = UpstreamUrl::parse("https://[::1]/mcp?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 443, "/mcp?x=1")
        );
        assert!(UpstreamUrl::parse("ftp://x/").is_err());
        assert!(UpstreamUrl::parse("http://u:p@x/").is_err());
    }

    #[test]
    fn sse_framing() {
        let s = b"event: message\ndata: {\"a\":1}\n\ndata: x\r\n\r\nrest";
        let e1 = event_end(s).unwrap();
        assert_eq!(&s[..e1], b"event: message\ndata: {\"a\":1}\n\n");
        assert_eq!(event_data(&s[..e1]), b"{\"a\":1}");
        let e2 = event_end(&s[e1..]).unwrap();
        assert_eq!(event_data(&s[e1..e1 + e2]), b"x");
        assert!(event_end(b"data: partial\n").is_none());
        assert_eq!(event_data(b"data: a\ndata: b\n\n"), b"a\nb");
        assert_eq!(event_data(b": comment\nretry: 5\n\n"), b"");
    }

    #[test]
    fn header_checks() {
        let msg: Value = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_accounts"}}"#,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        assert!(header_mismatch(&h, &msg).is_none());
        h.insert(MCP_METHOD, HeaderValue::from_static("tools/call"));
        h.insert(MCP_NAME, HeaderValue::from_static("get_accounts"));
        assert!(header_mismatch(&h, &msg).is_none());
        h.insert(MCP_NAME, HeaderValue::from_static("delete_everything"));
        assert!(header_mismatch(&h, &msg).is_some());
        h.insert(MCP_NAME, HeaderValue::from_static("get_accounts"));
        h.insert(MCP_METHOD, HeaderValue::from_static("tools/list"));
        assert!(header_mismatch(&h, &msg).is_some());
    }
}
