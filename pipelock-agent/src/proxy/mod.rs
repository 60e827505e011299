//! Listeners and per-connection handling. The transparent listener accepts
//! kernel-redirected connections; `dispatch` decides how each is served
//! (relay, TLS interception, HTTP) and drives the shared [`Pipeline`].
pub mod counting;
pub mod dispatch;
pub mod forward;
pub mod hold;
pub mod http;
pub mod keepalive;
pub mod limits;
pub mod mcp;
pub mod passthrough;
pub mod relay;
pub mod sniff;
pub mod splice;
pub mod transparent;
pub mod upstream;
pub mod websocket;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{config::NonHttpAction, pipeline::Pipeline};

/// Which side of a proxied connection failed (pingora's `ErrorSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The client (pod) side.
    Downstream,
    /// The original destination.
    Upstream,
    /// The agent itself.
    Internal,
}

/// Errors while serving one connection. Never fatal for the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to upstream {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to upstream {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("refusing to proxy to the agent's own listener {0} (loop)")]
    SelfCall(SocketAddr),
    #[error("no original destination recorded for client {0} (not redirected by the kernel?)")]
    NoOrigDst(SocketAddr),
    #[error("relaying: {0}")]
    Relay(std::io::Error),
    #[error("{side:?} I/O: {source}")]
    Io { side: Side, source: std::io::Error },
    #[error("sniffing the client's first bytes: {0}")]
    Sniff(sniff::SniffError),
    #[error(
        "traffic is neither TLS nor HTTP (or the client stayed silent) and cannot be scanned; refused (interceptor.non_http)"
    )]
    NonHttpRefused,
    #[error(
        "passthrough refused: {orig_dst} did not prove to serve {sni} ({reason}); the SNI alone is not trusted"
    )]
    PassthroughUnverified {
        sni: String,
        orig_dst: SocketAddr,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Tls(crate::tls::Error),
    #[error("TLS handshake with the client for {sni} failed: {reason}")]
    DownstreamTls { sni: String, reason: String },
    #[error("TLS to upstream {addr} as {name}: {reason}")]
    UpstreamTls {
        addr: SocketAddr,
        name: String,
        reason: String,
    },
    #[error("HTTP with upstream {addr}: {reason}")]
    UpstreamHttp { addr: SocketAddr, reason: String },
    #[error("HTTP with the client: {0}")]
    DownstreamHttp(String),
    #[error("refused: the kill switch is on")]
    KillSwitch,
    #[error("TLS SNI {sni} differs from the CONNECT host {connect}: refused as domain fronting")]
    DomainFronting { connect: String, sni: String },
}

impl Error {
    /// Which side the error came from.
    pub fn side(&self) -> Side {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout(_)
            | Error::UpstreamTls { .. }
            | Error::UpstreamHttp { .. } => Side::Upstream,
            Error::SelfCall(_) | Error::NoOrigDst(_) | Error::Tls(_) | Error::KillSwitch => {
                Side::Internal
            }
            Error::Relay(_)
            | Error::Sniff(_)
            | Error::NonHttpRefused
            | Error::PassthroughUnverified { .. }
            | Error::DownstreamTls { .. }
            | Error::DownstreamHttp(_)
            | Error::DomainFronting { .. } => Side::Downstream,
            Error::Io { side, .. } => *side,
        }
    }
}

/// What happened on one connection, for the per-connection log line.
#[derive(Clone, Debug, Default)]
pub struct ConnSummary {
    /// How the connection was served: "relay", "tls", "http", "passthrough", …
    pub kind: &'static str,
    /// Bytes from client to upstream.
    pub bytes_up: u64,
    /// Bytes from upstream to client.
    pub bytes_down: u64,
}

/// Destinations where unscannable traffic is relayed in every mode.
#[derive(Clone, Debug, Default)]
pub struct NonHttpRelay {
    pub ports: Vec<u16>,
    pub cidrs: Vec<ipnet::IpNet>,
}

impl NonHttpRelay {
    pub fn allows(&self, dst: SocketAddr) -> bool {
        self.ports.contains(&dst.port()) || self.cidrs.iter().any(|n| n.contains(&dst.ip()))
    }
}

/// The context in force: swapped whole on a config reload; each connection
/// keeps the one it started with.
pub type LiveContext = arc_swap::ArcSwap<ProxyContext>;

/// Shared, read-only state every connection handler needs.
pub struct ProxyContext {
    /// The one request/response pipeline shared by all listeners.
    pub pipeline: Arc<dyn Pipeline>,
    /// Handling of redirected traffic that is neither TLS nor HTTP.
    pub non_http: NonHttpAction,
    /// Destinations where it is relayed in every mode.
    pub non_http_relay: NonHttpRelay,
    /// The agent's own listener addresses (loop guard).
    pub self_addrs: Vec<SocketAddr>,
    /// Upper bound for connecting to an upstream.
    pub connect_timeout: Duration,
    /// CA, leaf cache and rustls configs for TLS interception.
    pub tls: Arc<crate::tls::Tls>,
    /// Names relayed without decryption.
    pub passthrough: passthrough::PassthroughDomains,
    /// Which destinations proved to serve the passthrough name they were asked for.
    pub passthrough_verified: Arc<passthrough::VerifiedNames>,
    /// How long to wait for a client's first bytes before treating the
    /// connection as non-HTTP (server-speaks-first protocols).
    pub sniff_timeout: Duration,
    /// Log connections that ended without error (`logging.include_allowed`).
    pub log_allowed: bool,
    /// Client request-header (and HTTP/1.1 keep-alive idle) limit.
    pub header_read_timeout: Duration,
    /// Upstream response-header limit.
    pub upstream_response_timeout: Duration,
    /// A raw relay (passthrough, allowed non-HTTP) with no bytes moving for
    /// this long is closed.
    pub relay_idle: Duration,
    /// A raw relay is closed after this long, if set.
    pub relay_max: Option<Duration>,
    /// `websocket_proxy` limits for relayed WebSockets.
    pub websocket: Arc<websocket::WsSettings>,
    /// How request bodies are held until scanned (its budget is shared
    /// across reloads).
    pub body_hold: Arc<hold::BodyHold>,
    /// `forward_proxy` settings of the forward listener.
    pub forward: Arc<forward::ForwardSettings>,
    /// The MCP sections (`mcp_*`, `tool_chain_detection`), compiled, for
    /// the MCP listener.
    pub mcp: Arc<crate::mcp::McpSettings>,
    /// Idle upstream HTTP/1.1 connections shared across client connections
    /// (`interceptor.upstream_keepalive`); none: each client connection
    /// keeps its own.
    pub upstreams: Option<Arc<keepalive::IdleUpstreams>>,
}

impl ProxyContext {
    /// True when `dst` is one of the agent's own listeners.
    pub fn is_self(&self, dst: SocketAddr) -> bool {
        self.self_addrs
            .iter()
            .any(|l| transparent::is_addr(*l, dst))
    }

    /// The limits of raw relays and unscanned upgraded connections.
    pub fn relay_limits(&self) -> relay::RelayLimits {
        relay::RelayLimits {
            idle: self.relay_idle,
            max: self.relay_max,
        }
    }
}
