//! The `interceptor:` section: what is pipelock-agent's own and has no
//! Pipelock counterpart (the kernel redirect, its listeners, the state
//! directory and CA files, known secrets, per-cgroup modes, non-HTTP
//! handling and the agent's own timings).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::types::{FailMode, Mode, NonHttpAction};
pub use crate::pipeline::rate::RateLimitConfig;

/// 0x504c ("PL"): clear of the 0xffff0000 and 0x0f00 bits Calico and
/// Cilium use for their own marks.
pub const DEFAULT_SOCKET_MARK: u32 = 0x504c;

/// `interceptor:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Interceptor {
    /// cgroup v2 path (relative to the cgroup2 mount) whose subtree is redirected.
    pub cgroup: Option<String>,
    /// Kubernetes label selector (`app.kubernetes.io/name=sure`): cover
    /// only the containers of this node's pods it selects, watched through
    /// the API; `cgroup` is then the kubelet's cgroup root (default `/`).
    pub pod_selector: Option<String>,
    /// This node's name, for the pod and node watches (`NODE_NAME` from
    /// the downward API).
    pub node_name: Option<String>,
    /// Node label (or annotation) key whose value (`audit`, `balanced`,
    /// `strict`) sets this node's mode live, over the config's; none: the
    /// config alone decides.
    pub node_mode_label: Option<String>,
    /// Where the kernel rewrites IPv4 connects to.
    pub redirect_addr: SocketAddr,
    /// Where IPv6 connects go (same port); none: the IPv4-mapped redirect address.
    pub redirect_addr6: Option<Ipv6Addr>,
    /// Listen addresses for redirected connections (empty: the redirect addresses).
    pub redirect_listen: Vec<SocketAddr>,
    /// Forward proxy listener (CONNECT, absolute-form HTTP, /health); Pipelock's
    /// `--listen`. None: 127.0.0.1:8888 without a cgroup, no listener with one.
    pub forward_listen: Option<SocketAddr>,
    /// MCP reverse proxy listener (Pipelock's `--mcp-listen`; 127.0.0.1:8889
    /// when only the upstream is given).
    pub mcp_listen: Option<SocketAddr>,
    /// MCP upstream URL (Pipelock's `--mcp-upstream`), http or https.
    pub mcp_upstream: Option<String>,
    /// File holding the token MCP clients must send as
    /// `Proxy-Authorization: Bearer <token>` (Pipelock's `--mcp-auth-token-file`).
    pub mcp_auth_token_file: Option<PathBuf>,
    /// Destinations never redirected.
    pub bypass_cidrs: Vec<IpNet>,
    /// Destination ports never redirected.
    pub bypass_ports: Vec<u16>,
    /// Destinations TCP connects from covered pods are refused to by the
    /// kernel in strict and balanced, before any byte (audit redirects and
    /// counts them, and the agent judges them): the cloud metadata
    /// addresses by default. The bypass CIDRs win over these.
    pub deny_cidrs: Vec<IpNet>,
    /// UDP destinations covered pods may send to (port 53 anywhere by
    /// default; narrow it to the cluster DNS address). UDP cannot be
    /// redirected and scanned: any other UDP datagram (QUIC among them),
    /// and any inet socket that is neither TCP nor UDP (raw, ICMP, MPTCP,
    /// SCTP), is refused by the kernel in strict and balanced and counted
    /// in audit. The bypass CIDRs are allowed too.
    pub udp_allow: Vec<UdpAllow>,
    /// Mode per cgroup subtree, e.g. `/sure/worker: strict`.
    pub mode_overrides: BTreeMap<String, Mode>,
    /// Persistent state (the generated CA).
    pub state_dir: PathBuf,
    /// CA certificate (PEM) to use instead of the generated one; needs `ca_key`.
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Extra CA bundle trusted for upstream servers, besides the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// Environment variables whose values must never leave (`NAME` or `NAME@host,host`).
    pub known_secret_env: Vec<String>,
    /// Files or directories of values that must never leave (`PATH` or `PATH@host,host`).
    pub known_secret_files: Vec<String>,
    /// Domains (globs) relayed without decryption.
    pub passthrough_domains: Vec<String>,
    /// What to do with redirected traffic that is neither TLS nor HTTP.
    pub non_http: NonHttpAction,
    /// Destination ports where such traffic is relayed (logged) in every mode.
    pub non_http_relay_ports: Vec<u16>,
    /// Destination CIDRs where such traffic is relayed (logged) in every mode.
    pub non_http_relay_cidrs: Vec<IpNet>,
    /// Seconds open connections get to finish after SIGTERM/SIGINT.
    pub drain_seconds: u64,
    /// Milliseconds to wait for a client's first bytes before calling it non-HTTP.
    pub sniff_timeout_ms: u64,
    /// Seconds to connect to an upstream.
    pub connect_timeout_seconds: u64,
    /// SO_MARK on the agent's own upstream sockets; the kernel never
    /// redirects a socket carrying it. Pick a bit your CNI does not use.
    pub socket_mark: u32,
    /// `open`: the redirect goes with the agent; `closed`: it stays pinned
    /// on bpffs so covered connects fail while the agent is down.
    pub fail_mode: FailMode,
    /// bpffs directory of the pinned state (`fail_mode: closed`).
    pub pin_dir: PathBuf,
    /// Redirected connections open at once, at most; more are reset.
    pub max_connections: usize,
    /// Redirected connections open at once from one pod (cgroup), at most.
    pub max_connections_per_pod: usize,
    /// Seconds a client may take to send a request's headers (also the idle
    /// limit between keep-alive requests on HTTP/1.1).
    pub header_read_timeout_seconds: u64,
    /// Seconds the upstream may take to answer a request with its headers.
    pub upstream_response_timeout_seconds: u64,
    /// Idle HTTP/1.1 upstream connections kept per destination (address,
    /// verified TLS name, ALPN offer) and pod for the pod's next client
    /// connections; 0: none shared, each client connection keeps its own
    /// while it lasts.
    pub upstream_keepalive: usize,
    /// Seconds a kept upstream connection may stay unused.
    pub upstream_keepalive_seconds: u64,
    /// Seconds a raw relay (passthrough, allowed non-HTTP) may go without a byte.
    pub relay_idle_timeout_seconds: u64,
    /// Seconds a raw relay may last at most (0: no limit).
    pub relay_max_seconds: u64,
    /// Bytes of request bodies held for scanning at once, across all
    /// connections (each body up to `request_body_scanning.max_body_bytes`).
    pub body_hold_budget_bytes: u64,
    /// Milliseconds a body waits for that budget before it is refused (503).
    pub body_hold_wait_ms: u64,
    /// Seconds a client may leave a request body without a byte (408).
    pub body_idle_timeout_seconds: u64,
    /// Requests a minute per destination host and per client (pod); over
    /// it, a `dest.rate_limit` finding (429 when it blocks). Off by default.
    pub rate_limit: RateLimitConfig,
}

impl Default for Interceptor {
    fn default() -> Self {
        Interceptor {
            cgroup: None,
            pod_selector: None,
            node_name: None,
            node_mode_label: None,
            redirect_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001),
            redirect_addr6: None,
            redirect_listen: Vec::new(),
            forward_listen: None,
            mcp_listen: None,
            mcp_upstream: None,
            mcp_auth_token_file: None,
            bypass_cidrs: Vec::new(),
            bypass_ports: Vec::new(),
            deny_cidrs: crate::pipeline::destination::metadata_nets(),
            udp_allow: vec![UdpAllow {
                port: 53,
                cidr: None,
            }],
            mode_overrides: BTreeMap::new(),
            state_dir: PathBuf::from("/var/lib/pipelock"),
            ca_cert: None,
            ca_key: None,
            upstream_ca: None,
            known_secret_env: Vec::new(),
            known_secret_files: Vec::new(),
            passthrough_domains: Vec::new(),
            non_http: NonHttpAction::Refuse,
            non_http_relay_ports: Vec::new(),
            non_http_relay_cidrs: Vec::new(),
            drain_seconds: 5,
            sniff_timeout_ms: 500,
            connect_timeout_seconds: 10,
            socket_mark: DEFAULT_SOCKET_MARK,
            fail_mode: FailMode::Open,
            pin_dir: PathBuf::from("/sys/fs/bpf/pipelock"),
            max_connections: 8192,
            max_connections_per_pod: 2048,
            header_read_timeout_seconds: 30,
            upstream_response_timeout_seconds: 120,
            upstream_keepalive: 32,
            upstream_keepalive_seconds: 30,
            relay_idle_timeout_seconds: 300,
            relay_max_seconds: 0,
            body_hold_budget_bytes: 256 << 20,
            body_hold_wait_ms: 5000,
            body_idle_timeout_seconds: 60,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// One UDP destination covered pods may send to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdpAllow {
    /// Destination port.
    pub port: u16,
    /// Destination network (none: any address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNet>,
}

impl Interceptor {
    /// The addresses to listen on: `listen`, else the redirect addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if !self.redirect_listen.is_empty() {
            return self.redirect_listen.clone();
        }
        let mut addrs = vec![self.redirect_addr];
        if let Some(v6) = self.redirect_addr6 {
            addrs.push(SocketAddr::new(IpAddr::V6(v6), self.redirect_addr.port()));
        }
        addrs
    }
}
