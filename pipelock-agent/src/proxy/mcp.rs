//! The MCP reverse proxy listener (Pipelock's :8889, `--mcp-listen` in
//! front of `--mcp-upstream`): HTTP/1.1 and h2 (prior knowledge) from
//! clients, hyper towards the one configured upstream (TLS verified like
//! every upstream of the agent: system roots plus `--upstream-ca`).
//!
//! - `GET /health` answers `{"status":"ok"}`; every other path is proxied
//!   to the upstream URL (the client's path and query are not forwarded).
//! - `POST` carries JSON-RPC: the body is read whole (up to
//!   `request_body_scanning.max_body_bytes`), goes through the one pipeline
//!   (`request_filter`: kill switch, headers; `request_body_filter`: DLP
//!   and, with `mcp_input_scanning`, injection; the unescaped strings and
//!   a `tools/call`'s de-obfuscated argument strings through
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
    upstream::{self, Keep, Proto, Target, TlsTarget, UpstreamPool},
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
    /// The listener is on a loopback address (only loopback `Host` names
    /// are answered: DNS rebinding).
    pub loopback: bool,
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
        if let Some(why) = rebinding(self.proxy.loopback, req.headers(), req.uri()) {
            tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, why, "MCP request refused (DNS rebinding protection)");
            return plain_error(StatusCode::FORBIDDEN, jsonrpc::INVALID_REQUEST, why);
        }
        if let Some(expected) = &self.proxy.token {
            let given = req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !crate::admin::token_matches(given, expected) {
                tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, "MCP request without the listener token refused (407)");
                let mut r = plain_error(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    jsonrpc::INVALID_REQUEST,
                    "proxy authentication required (Proxy-Authorization: Bearer <token>)",
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
                let mut r = plain_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    jsonrpc::INVALID_REQUEST,
                    "method not allowed",
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

    /// How answers on this connection are judged.
    fn judge(&self) -> Judge<'_> {
        Judge {
            settings: &self.ctx.mcp,
            state: &self.proxy.state,
            strip_poisoned: self.strip_poisoned(),
        }
    }

    /// Poisoned tools a warn lets through are stripped, except in audit
    /// (which changes nothing it relays).
    fn strip_poisoned(&self) -> bool {
        self.ctx.pipeline.mode_for(&self.meta) != crate::config::Mode::Audit
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
                return plain_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    jsonrpc::INVALID_REQUEST,
                    "request body too large to scan",
                );
            }
            Err(ReadError::Failed(reason)) => {
                tracing::debug!(target: "pipelock::conn", listener = "mcp", peer = %self.peer, reason, "reading an MCP request body failed");
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    jsonrpc::INVALID_REQUEST,
                    "request body unreadable",
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
            return refuse_input(&mut *ex, &asked, &b, &mut outcome);
        }
        if parsed.is_none() && self.settings().parse_error_block {
            tracing::info!(target: "pipelock::http", listener = "mcp", peer = %self.peer, conn_id = self.meta.id, "MCP request body is not JSON: refused (mcp_input_scanning.on_parse_error: block)");
            return finish(
                &mut *ex,
                &mut outcome,
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
            return finish(
                &mut *ex,
                &mut outcome,
                StatusCode::OK,
                &asked.error(jsonrpc::HEADER_MISMATCH, why, &[]),
                None,
            );
        }
        if let Decision::Block(b) = ex.request_body_filter(&body, true) {
            return refuse_input(&mut *ex, &asked, &b, &mut outcome);
        }
        let has_escapes = memchr::memchr(b'\\', &body).is_some();
        for m in &messages {
            if let Some(resp) = self
                .check_request(&mut *ex, &asked, m, has_escapes, &mut outcome)
                .await
            {
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
            Err(reason) => return self.upstream_failed(&mut *ex, &asked, &reason, &mut outcome),
        };
        self.respond(resp, ex, asked, outcome, &parts.headers).await
    }

    /// The checks of one client message: its texts through the pipeline
    /// (`mcp_input_scanning`), then for a `tools/call` the MCP checks;
    /// `Some` answer when it is blocked. `has_escapes`: the raw body has
    /// JSON escapes.
    async fn check_request(
        &self,
        ex: &mut dyn Exchange,
        asked: &Asked,
        msg: &Value,
        has_escapes: bool,
        outcome: &mut Outcome,
    ) -> Option<Response<DownBody>> {
        let one = Asked {
            ids: jsonrpc::id(msg).cloned().into_iter().collect(),
            batch: false,
            tools_list: None,
            session: asked.session,
            client: asked.client,
        };
        let answer_for = if asked.batch { asked } else { &one };
        let views = if self.settings().input_scanning {
            mcp::input_views(msg, has_escapes)
        } else {
            String::new()
        };
        if !views.is_empty()
            && let Decision::Block(b) = ex.message_filter(false, views.as_bytes())
        {
            return Some(refuse_input(ex, answer_for, &b, outcome));
        }
        let (tool, arguments) = jsonrpc::tool_call(msg)?;
        let s = self.settings();
        let sessions = &self.proxy.state.sessions;
        let binding = sessions.with(&asked.session, Instant::now(), |sess| {
            mcp::check_binding(s, sess, tool)
        });
        if let Some(b) = report(ex, false, vec![binding]) {
            return Some(refuse(
                ex,
                answer_for,
                &b,
                jsonrpc::POLICY_BLOCKED,
                "tool call blocked: tool not in the session's tool baseline",
                outcome,
                None,
            ));
        }
        let policy = mcp::check_policy(s, tool, arguments);
        if let Some(b) = report(ex, false, policy.groups.into()) {
            return Some(refuse(
                ex,
                answer_for,
                &b,
                jsonrpc::POLICY_BLOCKED,
                "request blocked by tool call policy",
                outcome,
                None,
            ));
        }
        // A redirect is judged like a block (audit forwards the call).
        if let Some(r) = policy.redirect
            && let Some(b) = report(ex, false, vec![r.checked])
        {
            let call = mcp::redirect::Call {
                profile: &r.profile,
                rule: &r.rule,
                arguments,
            };
            return Some(self.redirect(ex, answer_for, &b, &call, outcome).await);
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
            return Some(refuse(
                ex,
                answer_for,
                &b,
                jsonrpc::CHAIN_OR_KILL_SWITCH,
                &msg,
                outcome,
                None,
            ));
        }
        None
    }

    /// Answers a `tools/call` the policy redirected (`b`: the block its
    /// rules made) with the output of the profile's handler, instead of
    /// sending it upstream. The output is scanned first, on an exchange of
    /// its own (`ex` ended when the call was stopped), as what leaves
    /// (DLP; the handler may read anything) and as an answer (injection):
    /// a finding there refuses it with -32001; a handler that fails, or a
    /// redirect inside a batch, refuses the call with -32002.
    async fn redirect(
        &self,
        ex: &mut dyn Exchange,
        asked: &Asked,
        b: &Block,
        call: &mcp::redirect::Call<'_>,
        outcome: &mut Outcome,
    ) -> Response<DownBody> {
        let policy_refusal = |ex: &mut dyn Exchange, outcome: &mut Outcome| {
            refuse(
                ex,
                asked,
                b,
                jsonrpc::POLICY_BLOCKED,
                "request blocked by tool call policy",
                outcome,
                None,
            )
        };
        if asked.batch {
            return policy_refusal(ex, outcome);
        }
        let s = self.settings();
        let profile = s.policy.as_ref().and_then(|p| p.profile(call.profile));
        let started = Instant::now();
        let text = match mcp::redirect::run(profile, call, s.max_body).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(target: "pipelock::http", listener = "mcp", conn_id = self.meta.id, profile = %mcp::poison::safe(call.profile), rule = %mcp::poison::safe(call.rule), error = %e, "redirect handler gave no result: the call is blocked");
                return policy_refusal(ex, outcome);
            }
        };
        tracing::info!(target: "pipelock::http", listener = "mcp", conn_id = self.meta.id, profile = %mcp::poison::safe(call.profile), rule = %mcp::poison::safe(call.rule), ms = started.elapsed().as_millis() as u64, "tools/call redirected to its profile's handler");
        outcome.blocked = Some(b.clone());
        let id = asked.ids.first().cloned().unwrap_or(Value::Null);
        let answer = mcp::redirect::result(id, &text);
        let mut out_ex = self.ctx.pipeline.exchange(&self.meta);
        let mut out_outcome = Outcome {
            response_bytes: text.len() as u64,
            ..Default::default()
        };
        let scanned = match out_ex.message_filter(false, text.as_bytes()) {
            Decision::Block(b) => Err(b),
            Decision::Continue => {
                let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                check_message(&mut *out_ex, asked, &bytes, &self.judge())
                    .map(drop)
                    .map_err(|(_, _, b)| b)
            }
        };
        // The call's own exchange ends here: stopped, answered locally.
        outcome.status = Some(200);
        ex.logging(outcome);
        if let Err(b) = scanned {
            return refuse(
                &mut *out_ex,
                asked,
                &b,
                jsonrpc::INPUT_BLOCKED,
                "redirect handler output blocked by content scanning",
                &mut out_outcome,
                None,
            );
        }
        finish(
            &mut *out_ex,
            &mut out_outcome,
            StatusCode::OK,
            &answer,
            None,
        )
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
        let mut outcome = Outcome::default();
        if let Decision::Block(b) = ex.request_filter(&self.scanned_parts(&parts)) {
            return refuse_input(&mut *ex, &asked, &b, &mut outcome);
        }
        let resp = match self.send(&parts, empty()).await {
            Ok(r) => r,
            Err(reason) => return self.upstream_failed(&mut *ex, &asked, &reason, &mut outcome),
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
        let keep = Keep::for_conn(&self.ctx, &self.meta);
        let pool = UpstreamPool::open(target, Proto::Http1, keep)
            .await
            .map_err(|e| e.to_string())?;
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
            return refuse(
                &mut *ex,
                &asked,
                &b,
                jsonrpc::RESPONSE_BLOCKED,
                "prompt injection detected in MCP response",
                &mut outcome,
                None,
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
                return refuse(
                    &mut *ex,
                    &asked,
                    &b,
                    jsonrpc::RESPONSE_BLOCKED,
                    "upstream response is compressed and cannot be scanned",
                    &mut outcome,
                    None,
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
                strip_poisoned: self.strip_poisoned(),
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
                    return refuse(
                        &mut *ex,
                        &asked,
                        &b,
                        jsonrpc::RESPONSE_BLOCKED,
                        "upstream response too large to scan",
                        &mut outcome,
                        None,
                    );
                }
                outcome.error = Some("oversized response not relayed".into());
                return finish(
                    &mut *ex,
                    &mut outcome,
                    StatusCode::BAD_GATEWAY,
                    &jsonrpc::error(
                        Value::Null,
                        jsonrpc::RESPONSE_BLOCKED,
                        "upstream response too large to scan",
                        &[],
                    ),
                    None,
                );
            }
            Err(ReadError::Failed(reason)) => {
                return self.upstream_failed(&mut *ex, &asked, &reason, &mut outcome);
            }
        };
        outcome.response_bytes = bytes.len() as u64;
        let mut bytes = bytes;
        if !bytes.is_empty() {
            match check_message(&mut *ex, &asked, &bytes, &self.judge()) {
                Ok(None) => {}
                Ok(Some(rewritten)) => bytes = rewritten,
                Err((code, msg, b)) => {
                    return refuse(
                        &mut *ex,
                        &asked,
                        &b,
                        code,
                        msg,
                        &mut outcome,
                        session_header,
                    );
                }
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        ex.logging(&outcome);
        Response::from_parts(parts, full(bytes))
    }

    /// Ends an exchange the upstream failed (502, `upstream unavailable`).
    fn upstream_failed(
        &self,
        ex: &mut dyn Exchange,
        asked: &Asked,
        reason: &str,
        outcome: &mut Outcome,
    ) -> Response<DownBody> {
        tracing::warn!(target: "pipelock::conn", listener = "mcp", conn_id = self.meta.id, upstream = %self.proxy.upstream.authority, error = reason, "MCP upstream failed");
        outcome.error = Some(reason.to_owned());
        finish(
            ex,
            outcome,
            StatusCode::BAD_GATEWAY,
            &asked.error(jsonrpc::RESPONSE_BLOCKED, "upstream unavailable", &[]),
            None,
        )
    }
}

/// Ends an exchange with an answer of the listener's own (a block, a
/// failure): the outcome logged with `status`, then the JSON `body` (with
/// the upstream's session id when given).
fn finish(
    ex: &mut dyn Exchange,
    outcome: &mut Outcome,
    status: StatusCode,
    body: &Value,
    session: Option<HeaderValue>,
) -> Response<DownBody> {
    outcome.status = Some(status.as_u16());
    ex.logging(outcome);
    json_response(status, body, session)
}

/// Refuses with the JSON-RPC error `code` and `message` (the kill
/// switch's own where it is the cause) answering `asked`, HTTP 200.
fn refuse(
    ex: &mut dyn Exchange,
    asked: &Asked,
    b: &Block,
    code: i64,
    message: &str,
    outcome: &mut Outcome,
    session: Option<HeaderValue>,
) -> Response<DownBody> {
    let (code, message) = kill_switch_or(b, code, message);
    outcome.blocked = Some(b.clone());
    finish(
        ex,
        outcome,
        StatusCode::OK,
        &asked.error(code, &message, &b.rule_ids),
        session,
    )
}

/// An answer before any exchange began (or after the upstream's answer
/// was given up): a JSON-RPC error without an id.
fn plain_error(status: StatusCode, code: i64, message: &str) -> Response<DownBody> {
    json_response(
        status,
        &jsonrpc::error(Value::Null, code, message, &[]),
        None,
    )
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

/// How one answer is judged: the settings, the listener's state, and
/// whether poisoned tools are stripped when only warned about (not in
/// audit, which changes nothing).
struct Judge<'a> {
    settings: &'a McpSettings,
    state: &'a session::State,
    strip_poisoned: bool,
}

/// Scans one JSON-RPC answer (or any answer body): a `tools/list` result's
/// tools first (poisoning, pins; poisoned tools a warn lets through are
/// stripped), then the raw bytes and the unpacked texts of tool results
/// of what is relayed through the pipeline. `Ok(Some)`: the answer to relay
/// instead (tools stripped); `Err`: the code, message and block to answer with.
fn check_message(
    ex: &mut dyn Exchange,
    asked: &Asked,
    data: &[u8],
    judge: &Judge<'_>,
) -> Result<Option<Bytes>, (i64, &'static str, Block)> {
    let mut parsed: Option<Value> = serde_json::from_slice(data).ok();
    // Tool listings are recognised by shape (`result.tools`), whatever the
    // request was, as Pipelock does: a server cannot slip tools past the
    // checks in another answer. Their own checks come first, so their
    // findings are logged even when the scan below blocks the answer.
    let mut listings = Vec::new();
    let mut stripped = Vec::new();
    let paged = asked.tools_list.unwrap_or(false);
    for m in messages_mut(&mut parsed) {
        if !tools_shaped(m) {
            continue;
        }
        // The baselines are copied out: the checks run without the locks.
        let now = Instant::now();
        let state = judge.state;
        let baseline = state
            .sessions
            .with(&asked.session, now, |s| session::Session {
                tools: s.tools.clone(),
                tools_complete: s.tools_complete,
                calls: Default::default(),
            });
        let earlier = state.clients.with(&asked.client, now, |c| c.clone());
        let Some(mut listing) = mcp::check_listing(judge.settings, &baseline, &earlier, m, paged)
        else {
            continue;
        };
        let checked = std::mem::take(&mut listing.checked);
        if let Some(b) = report(ex, true, vec![checked]) {
            return Err((jsonrpc::RESPONSE_BLOCKED, TOOL_POISONING, b));
        }
        if judge.strip_poisoned && mcp::tools::strip(m, &listing.poisoned) > 0 {
            stripped.extend(listing.poisoned.iter().map(|n| mcp::poison::safe(n)));
        }
        listings.push(listing);
    }
    let rewritten = if stripped.is_empty() {
        None
    } else {
        tracing::info!(target: "pipelock::http", listener = "mcp", tools = ?stripped, "poisoned tools stripped from a tools/list answer (mcp_tool_scanning.action: warn)");
        parsed
            .as_ref()
            .and_then(|v| serde_json::to_vec(v).ok())
            .map(Bytes::from)
    };
    let relayed = rewritten.as_deref().unwrap_or(data);
    let mut scan = Vec::with_capacity(relayed.len() + 64);
    scan.extend_from_slice(relayed);
    for m in messages_mut(&mut parsed) {
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
        let state = judge.state;
        state.clients.with(&asked.client, now, |earlier| {
            state.sessions.with(&asked.session, now, |sess| {
                mcp::commit_listing(sess, earlier, listing)
            })
        });
    }
    Ok(rewritten)
}

/// The messages of a parsed body (a batch: each of its elements).
fn messages_mut(parsed: &mut Option<Value>) -> Vec<&mut Value> {
    match parsed {
        Some(Value::Array(a)) => a.iter_mut().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    }
}

/// A message carrying a tool list (`result.tools` is an array).
fn tools_shaped(m: &Value) -> bool {
    m.get("result")
        .and_then(|r| r.get("tools"))
        .is_some_and(Value::is_array)
}

/// The message of a blocked `tools/list` answer (Pipelock's).
const TOOL_POISONING: &str = "tool poisoning detected in tools/list";

/// Refuses a request the pipeline blocked (-32001, Pipelock's input
/// scanning answer; the kill switch its own).
fn refuse_input(
    ex: &mut dyn Exchange,
    asked: &Asked,
    b: &Block,
    outcome: &mut Outcome,
) -> Response<DownBody> {
    refuse(
        ex,
        asked,
        b,
        jsonrpc::INPUT_BLOCKED,
        "request blocked by MCP input scanning",
        outcome,
        None,
    )
}

/// The kill switch answers with its own code and message wherever it hits.
fn kill_switch_or(b: &Block, code: i64, message: &str) -> (i64, String) {
    match b.kind {
        BlockKind::KillSwitch => (jsonrpc::CHAIN_OR_KILL_SWITCH, b.reason.clone()),
        BlockKind::Policy => (code, message.to_owned()),
    }
}

/// DNS rebinding (the MCP transport's security warning): a web page whose
/// name was made to resolve to the listener's address sends that name as
/// `Host` and its own site as `Origin`. The upstream cannot check them any
/// more (it sees its own name as `Host`), so the listener does: on a
/// loopback listener only loopback names are answered, in `Host` and in
/// `Origin`; on any listener a browser request (`Origin`) must come from
/// the site it addresses. Clients other than browsers send no `Origin`.
fn rebinding(loopback: bool, headers: &HeaderMap, uri: &Uri) -> Option<&'static str> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(Authority::as_str))
        .map(host_of);
    if loopback && !host.as_deref().is_some_and(is_loopback_name) {
        return Some("Host is not a loopback name on a loopback listener");
    }
    let origin = headers
        .get(header::ORIGIN)?
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| host_of(rest));
    let allowed = match &origin {
        None => false,
        Some(o) if loopback => is_loopback_name(o),
        Some(o) => host.as_deref() == Some(o.as_str()),
    };
    (!allowed).then_some("Origin is not the site the request addresses")
}

/// The host of an authority (`host[:port]`, `[v6][:port]`), lower case,
/// without brackets or a trailing dot.
fn host_of(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `localhost` (and its subdomains) or a loopback address.
fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    strip_poisoned: bool,
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
        let judge = Judge {
            settings: &self.settings,
            state: &self.state,
            strip_poisoned: self.strip_poisoned,
        };
        match check_message(&mut *self.ex, &answer_for, &data, &judge) {
            Ok(None) => {
                self.send(raw).await?;
                Ok(true)
            }
            Ok(Some(rewritten)) => {
                self.send(with_data(&raw, &rewritten)).await?;
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

/// An event with its data replaced by `data` (one line: JSON has no raw
/// line breaks), its other fields (`event:`, `id:`, `retry:`) kept.
fn with_data(raw: &[u8], data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len().max(data.len()) + 16);
    let text = String::from_utf8_lossy(raw);
    let mut written = false;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with("data") {
            if !written {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(data);
                out.push(b'\n');
                written = true;
            }
        } else {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    Bytes::from(out)
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
        let ev = with_data(
            b"event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n",
            b"{}",
        );
        assert_eq!(&ev[..], b"event: message\nid: 7\ndata: {}\n\n");
        assert_eq!(event_data(&ev), b"{}");
    }

    #[test]
    fn dns_rebinding() {
        let uri = Uri::from_static("/mcp");
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        for ok in [
            "127.0.0.1:8889",
            "localhost:8889",
            "[::1]:8889",
            "LOCALHOST",
        ] {
            assert!(rebinding(true, &h(&[("host", ok)]), &uri).is_none(), "{ok}");
        }
        assert!(rebinding(true, &h(&[("host", "evil.example:8889")]), &uri).is_some());
        assert!(rebinding(true, &h(&[("host", "127.0.0.1.evil.example")]), &uri).is_some());
        assert!(rebinding(true, &h(&[]), &uri).is_some(), "no Host");
        let with_origin = |host, origin| h(&[("host", host), ("origin", origin)]);
        assert!(
            rebinding(
                true,
                &with_origin("127.0.0.1:8889", "http://evil.example"),
                &uri
            )
            .is_some()
        );
        assert!(
            rebinding(
                true,
                &with_origin("127.0.0.1:8889", "http://localhost:6274"),
                &uri
            )
            .is_none()
        );
        assert!(rebinding(true, &with_origin("127.0.0.1:8889", "null"), &uri).is_some());
        // Beyond loopback any Host is answered, a browser only from its own site.
        assert!(rebinding(false, &h(&[("host", "sure-pipelock:8889")]), &uri).is_none());
        assert!(
            rebinding(
                false,
                &with_origin("sure-pipelock:8889", "https://evil.example"),
                &uri
            )
            .is_some()
        );
        assert!(
            rebinding(
                false,
                &with_origin("sure-pipelock:8889", "http://sure-pipelock"),
                &uri
            )
            .is_none()
        );
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
