//! The request/response pipeline every listener drives (transparent :15001,
//! forward proxy :8888, MCP :8889): connection metadata, phase hooks with a
//! per-exchange context (named after pingora's `ProxyHttp` phases), and the
//! decision a hook returns. Scanning and verdicts plug in here, once:
//! [`ScanPipeline`] (`scanning`) turns the hits of `crate::scan` into
//! actions by mode (`verdict`), logs them (`findings`) and counts them.
pub mod destination;
pub mod findings;
pub mod jwt;
pub mod rate;
pub mod scanning;
pub mod subtree;
pub mod verdict;

use std::{net::SocketAddr, sync::Arc};

pub use scanning::{CustomPattern, ScanConfig, ScanPipeline};

/// Which listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// Kernel-redirected connections (default :15001).
    Transparent,
    /// Explicit forward proxy (:8888).
    Forward,
    /// MCP reverse proxy (:8889).
    Mcp,
}

impl Listener {
    /// The name in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Transparent => "transparent",
            Listener::Forward => "forward",
            Listener::Mcp => "mcp",
        }
    }
}

/// Who made a connection, as recorded by the kernel at `connect()`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attribution {
    /// Thread id (kernel pid) in the initial pid namespace.
    pub pid: u32,
    /// Process id (kernel tgid) in the initial pid namespace.
    pub tgid: u32,
    /// Task `comm`.
    pub comm: String,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// The pod and container of that cgroup (pod-selector mode).
    pub pod: Option<std::sync::Arc<crate::redirect::pods::PodRef>>,
}

/// What is known about one accepted client connection.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnMeta {
    /// Process-unique connection id, for correlating log lines.
    pub id: u64,
    /// Listener that accepted it.
    pub listener: Listener,
    /// Client address as the agent sees it.
    pub peer: SocketAddr,
    /// Where the client was going (transparent: from the kernel; forward: from CONNECT).
    pub orig_dst: Option<SocketAddr>,
    /// Process that made the connection (transparent listener only).
    pub attribution: Option<Attribution>,
    /// The DNS name the upstream's certificate was verified for (TLS with
    /// SNI, lower case). Exemptions trust this, never a Host header; none on
    /// plain HTTP.
    pub verified_name: Option<String>,
}

/// A reason to stop an exchange, shaped for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// HTTP status to answer with (403 for policy blocks, 502 for upstream failures).
    pub status: http::StatusCode,
    /// Short human-readable reason (never contains secret material).
    pub reason: String,
    /// Ids of the rules that caused the block.
    pub rule_ids: Vec<String>,
    /// What kind of refusal it is (shapes the JSON answer).
    pub kind: BlockKind,
}

/// Why an exchange is refused, as the client is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlockKind {
    /// A scanner or policy finding (or a limit): `{"error":"blocked",…}`.
    #[default]
    Policy,
    /// The kill switch is on: Pipelock's `{"error":"kill_switch_active","message":…}`
    /// (`reason` holds `kill_switch.message`).
    KillSwitch,
}

impl Block {
    /// The JSON body every listener answers a block with:
    /// `{"error":"blocked","reason":…,"rule_ids":[…]}`, or for the kill
    /// switch `{"error":"kill_switch_active","message":…}`.
    pub fn json_body(&self) -> serde_json::Value {
        match self.kind {
            BlockKind::Policy => serde_json::json!({
                "error": "blocked",
                "reason": self.reason,
                "rule_ids": self.rule_ids,
            }),
            BlockKind::KillSwitch => serde_json::json!({
                "error": "kill_switch_active",
                "message": self.reason,
            }),
        }
    }
}

/// What a phase hook decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the data through.
    Continue,
    /// Stop: answer with a block before anything was sent, or cut the stream after.
    Block(Block),
}

impl Decision {
    /// True when the exchange must stop.
    pub fn is_block(&self) -> bool {
        matches!(self, Decision::Block(_))
    }
}

/// How an exchange ended, for the `logging` phase.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Status sent to the client, if any.
    pub status: Option<u16>,
    /// Request body bytes seen.
    pub request_bytes: u64,
    /// Response body bytes seen.
    pub response_bytes: u64,
    /// Set when the exchange was blocked or cut.
    pub blocked: Option<Block>,
    /// Set when the exchange failed (upstream or downstream error).
    pub error: Option<String>,
}

/// Per-exchange (one HTTP request and its response) hooks. Bodies arrive as
/// chunks in order; implementations keep constant state per stream.
pub trait Exchange: Send {
    /// Request line and headers, before the upstream is contacted.
    fn request_filter(&mut self, req: &http::request::Parts) -> Decision;
    /// One chunk of the request body (as sent on the wire, still content-encoded).
    fn request_body_filter(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision;
    /// Status and headers of the upstream response.
    fn response_filter(&mut self, resp: &http::response::Parts) -> Decision;
    /// One chunk of the response body (as received, still content-encoded).
    fn response_body_filter(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision;
    /// The trailers ending a request body (`response` false: scanned for
    /// DLP like request headers) or a response body (for injection like
    /// response headers), before they are forwarded.
    fn trailers_filter(&mut self, response: bool, trailers: &http::HeaderMap) -> Decision;
    /// One whole message of an upgraded connection (a WebSocket message,
    /// fragments joined), after the upgrade exchange's own hooks ran: scanned
    /// as a body of its own, uncompressed, like a request body when
    /// `response` is false (client to server: DLP) and like a response body
    /// when true (server to client: injection and DLP).
    fn message_filter(&mut self, response: bool, message: &[u8]) -> Decision;
    /// Traffic the pipeline cannot look into (`what`: a non-WebSocket
    /// upgrade, a WebSocket binary message when those are not allowed):
    /// blocked in strict and balanced, logged and let through in audit.
    fn unscannable(&mut self, response: bool, what: &str) -> Decision;
    /// Findings of a listener's own protocol checks (the MCP proxy's tool
    /// poisoning, drift, session binding, tool policy and chains), judged,
    /// logged and counted like scanner hits: the action by mode, where
    /// `section_blocks` (the check's config section says `block`) makes
    /// balanced block as for the other sections. The default (for
    /// pipelines that judge nothing, such as [`AllowAll`] and test doubles)
    /// lets everything through.
    fn report(
        &mut self,
        _response: bool,
        _hits: Vec<crate::scan::text::Hit>,
        _section_blocks: bool,
    ) -> Decision {
        Decision::Continue
    }
    /// Called once when the exchange is over.
    fn logging(&mut self, outcome: &Outcome);
}

/// Creates an [`Exchange`] per request. One instance serves every listener.
pub trait Pipeline: Send + Sync + 'static {
    /// Starts a new exchange on `conn`.
    fn exchange(&self, conn: &Arc<ConnMeta>) -> Box<dyn Exchange>;
    /// The enforcement mode for traffic of `conn` (for what is decided
    /// outside an exchange, such as unscannable connections).
    fn mode_for(&self, _conn: &ConnMeta) -> crate::config::Mode {
        crate::config::Mode::Balanced
    }
    /// True when a connection that is not scanned as HTTP (a raw relay, a
    /// passthrough or CONNECT tunnel) must be refused now: the kill switch
    /// is on. Counts the denial.
    fn refuse_connection(&self, _conn: &ConnMeta) -> bool {
        false
    }
}

/// A pipeline that lets everything through (used until scanning is configured).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Pipeline for AllowAll {
    fn exchange(&self, _conn: &Arc<ConnMeta>) -> Box<dyn Exchange> {
        Box::new(AllowAll)
    }
}

impl Exchange for AllowAll {
    fn request_filter(&mut self, _req: &http::request::Parts) -> Decision {
        Decision::Continue
    }
    fn request_body_filter(&mut self, _chunk: &[u8], _end: bool) -> Decision {
        Decision::Continue
    }
    fn response_filter(&mut self, _resp: &http::response::Parts) -> Decision {
        Decision::Continue
    }
    fn response_body_filter(&mut self, _chunk: &[u8], _end: bool) -> Decision {
        Decision::Continue
    }
    fn trailers_filter(&mut self, _response: bool, _trailers: &http::HeaderMap) -> Decision {
        Decision::Continue
    }
    fn message_filter(&mut self, _response: bool, _message: &[u8]) -> Decision {
        Decision::Continue
    }
    fn unscannable(&mut self, _response: bool, _what: &str) -> Decision {
        Decision::Continue
    }
    fn logging(&mut self, _outcome: &Outcome) {}
}
