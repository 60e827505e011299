//! The in-process tier for TLS interception tests and benchmarks: a loopback
//! listener served by the agent's real accept loop (`proxy::transparent::
//! serve`: admission, loop guard, dispatch, the connection log line) with a
//! fixed original destination (what the kernel redirect would have
//! recorded), plus a [`TestPipeline`] that blocks on simple markers so the
//! pipeline hooks can be observed. Finished connections are read back from
//! the agent's own `pipelock::conn` log line.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use pipelock_agent::{
    config::NonHttpAction,
    pipeline::{AllowAll, Attribution, Block, ConnMeta, Decision, Exchange, Outcome, Pipeline},
    proxy::{
        ProxyContext,
        keepalive::IdleUpstreams,
        limits::ConnLimits,
        passthrough::PassthroughDomains,
        transparent::{self, OrigDsts},
    },
    telemetry::metrics::Metrics,
    tls::Tls,
};
use tracing_subscriber::layer::SubscriberExt as _;

/// What one served connection ended with.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// `ConnSummary::kind`.
    pub kind: &'static str,
    /// Client → upstream bytes.
    pub bytes_up: u64,
    /// Upstream → client bytes.
    pub bytes_down: u64,
    /// The error the connection failed with, as its log line shows it.
    pub error: Option<String>,
}

/// Options of an in-process agent.
pub struct AgentOptions {
    /// The "original destination" of every accepted connection.
    pub orig_dst: SocketAddr,
    /// Extra upstream trust anchors (PEM file).
    pub upstream_ca: Option<PathBuf>,
    /// Passthrough globs.
    pub passthrough: Vec<String>,
    /// Non-HTTP handling.
    pub non_http: NonHttpAction,
    /// Block on markers (see [`TestPipeline`]) instead of allowing all.
    pub test_pipeline: bool,
    /// Where the CA lives.
    pub state_dir: PathBuf,
    /// `interceptor.upstream_keepalive` (the agent's default; 0: each
    /// client connection keeps its own upstream connections).
    pub upstream_keepalive: usize,
}

impl AgentOptions {
    /// Defaults: relay non-HTTP, no passthrough, allow-all pipeline.
    pub fn new(orig_dst: SocketAddr, state_dir: &Path) -> Self {
        Self {
            orig_dst,
            upstream_ca: None,
            passthrough: vec![],
            non_http: NonHttpAction::Relay,
            test_pipeline: false,
            state_dir: state_dir.to_path_buf(),
            upstream_keepalive: pipelock_agent::config::Interceptor::default().upstream_keepalive,
        }
    }
}

/// A running in-process agent; stops when dropped.
pub struct InProcessAgent {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The TLS context (CA, leaf cache).
    pub tls: Arc<Tls>,
    /// PEM file of the agent's CA (what clients trust).
    pub ca_file: PathBuf,
    /// The cgroup id its connections are attributed to.
    tag: u64,
    shutdown: tokio_util::sync::CancellationToken,
    _rt: tokio::runtime::Runtime,
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(1_000_000);

/// Every original destination is `dst`, attributed to cgroup `tag`.
struct Fixed {
    dst: SocketAddr,
    tag: u64,
}

impl OrigDsts for Fixed {
    fn take(&self, _peer: SocketAddr) -> Option<(SocketAddr, Attribution)> {
        Some((
            self.dst,
            Attribution {
                pid: 0,
                tgid: 0,
                comm: "in-process".into(),
                cgroup_id: self.tag,
                pod: None,
            },
        ))
    }
}

/// `pipelock::conn` lines of every in-process agent: (cgroup id, record).
fn captured() -> &'static Mutex<Vec<(u64, ConnRecord)>> {
    static C: OnceLock<Mutex<Vec<(u64, ConnRecord)>>> = OnceLock::new();
    C.get_or_init(Mutex::default)
}

/// Installs (once per process) a tracing subscriber that keeps the
/// agent's connection lines.
fn install_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Capture);
        // Another subscriber already set (a bench's): records stay empty.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "pipelock::conn" {
            return;
        }
        let mut v = ConnLine::default();
        event.record(&mut v);
        if v.message.starts_with("connection ") {
            let rec = ConnRecord {
                kind: kind_name(&v.kind),
                bytes_up: v.bytes_up,
                bytes_down: v.bytes_down,
                error: v.error,
            };
            captured()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((v.cgroup_id, rec));
        }
    }
}

/// The fields of one connection line.
#[derive(Default)]
struct ConnLine {
    message: String,
    kind: String,
    cgroup_id: u64,
    bytes_up: u64,
    bytes_down: u64,
    error: Option<String>,
}

impl tracing::field::Visit for ConnLine {
    fn record_str(&mut self, f: &tracing::field::Field, value: &str) {
        match f.name() {
            "kind" => value.clone_into(&mut self.kind),
            "message" => value.clone_into(&mut self.message),
            _ => {}
        }
    }
    fn record_u64(&mut self, f: &tracing::field::Field, value: u64) {
        match f.name() {
            "cgroup_id" => self.cgroup_id = value,
            "bytes_up" => self.bytes_up = value,
            "bytes_down" => self.bytes_down = value,
            _ => {}
        }
    }
    fn record_debug(&mut self, f: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match f.name() {
            "error" => self.error = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

/// The agent's kinds are `&'static str`; the record keeps that type.
fn kind_name(kind: &str) -> &'static str {
    const KINDS: &[&str] = &[
        "tls",
        "http",
        "passthrough",
        "relay",
        "refused",
        "reset",
        "empty",
        "malformed",
        "kill_switch",
    ];
    KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

impl InProcessAgent {
    /// Starts the listener on 127.0.0.1.
    pub fn start(opts: AgentOptions) -> InProcessAgent {
        let mut cfg = pipelock_agent::config::Config::default();
        cfg.interceptor.state_dir = opts.state_dir.clone();
        cfg.interceptor.upstream_ca = opts.upstream_ca.clone();
        let tls = pipelock_agent::tls::load(&cfg).expect("loading TLS material");
        let ca_file = opts.state_dir.join(pipelock_agent::tls::ca::CA_CERT_FILE);
        let (rt, listener, addr) = crate::tls_upstream::listen_on_runtime(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            2,
        );
        let pipeline: Arc<dyn Pipeline> = if opts.test_pipeline {
            Arc::new(TestPipeline)
        } else {
            Arc::new(AllowAll)
        };
        let ctx = Arc::new(ProxyContext {
            pipeline,
            non_http: opts.non_http,
            non_http_relay: Default::default(),
            self_addrs: vec![addr],
            connect_timeout: Duration::from_secs(5),
            tls: tls.clone(),
            passthrough: PassthroughDomains::new(&opts.passthrough),
            passthrough_verified: Default::default(),
            sniff_timeout: Duration::from_millis(500),
            log_allowed: true,
            header_read_timeout: Duration::from_secs(30),
            upstream_response_timeout: Duration::from_secs(120),
            relay_idle: Duration::from_secs(300),
            relay_max: None,
            websocket: Default::default(),
            body_hold: Default::default(),
            forward: Default::default(),
            mcp: Default::default(),
            upstreams: (opts.upstream_keepalive > 0).then(|| {
                let _in_runtime = rt.enter();
                IdleUpstreams::shared(opts.upstream_keepalive, Duration::from_secs(30))
            }),
        });
        // Each agent's connections carry a cgroup id of their own, so its
        // log lines can be told from those of others in the process.
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
        install_capture();
        let shutdown = tokio_util::sync::CancellationToken::new();
        rt.spawn(transparent::serve(
            listener,
            Arc::new(Fixed {
                dst: opts.orig_dst,
                tag,
            }),
            Arc::new(arc_swap::ArcSwap::from(ctx)),
            ConnLimits::new(8192, 8192),
            Arc::new(Metrics::new()),
            shutdown.clone(),
            tokio_util::task::TaskTracker::new(),
            None,
        ));
        InProcessAgent {
            addr,
            tls,
            ca_file,
            tag,
            shutdown,
            _rt: rt,
        }
    }

    /// Connections finished so far (from the agent's connection lines).
    pub fn records(&self) -> Vec<ConnRecord> {
        captured()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(tag, _)| *tag == self.tag)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits (bounded) until a finished connection matches `pred`.
    pub fn wait_record(
        &self,
        timeout: Duration,
        pred: impl Fn(&ConnRecord) -> bool,
    ) -> Option<ConnRecord> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(r) = self.records().into_iter().find(&pred) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Blocks requests whose path contains `/blocked` (403), request bodies
/// containing `SECRET` (403) and response bodies containing `INJECT` (cut).
#[derive(Clone, Copy, Debug, Default)]
pub struct TestPipeline;

struct TestExchange;

fn block(rule: &str) -> Decision {
    Decision::Block(Block {
        status: http::StatusCode::FORBIDDEN,
        reason: format!("test rule {rule}"),
        rule_ids: vec![rule.to_owned()],
        kind: Default::default(),
    })
}

impl Pipeline for TestPipeline {
    fn exchange(&self, _conn: &Arc<ConnMeta>) -> Box<dyn Exchange> {
        Box::new(TestExchange)
    }
}

impl Exchange for TestExchange {
    fn request_filter(&mut self, req: &http::request::Parts) -> Decision {
        if req.uri.path().contains("/blocked") {
            return block("test.path");
        }
        Decision::Continue
    }
    fn request_body_filter(&mut self, chunk: &[u8], _eos: bool) -> Decision {
        if chunk.windows(6).any(|w| w == b"SECRET") {
            return block("test.body");
        }
        Decision::Continue
    }
    fn response_filter(&mut self, _resp: &http::response::Parts) -> Decision {
        Decision::Continue
    }
    fn response_body_filter(&mut self, chunk: &[u8], _eos: bool) -> Decision {
        if chunk.windows(6).any(|w| w == b"INJECT") {
            return block("test.response");
        }
        Decision::Continue
    }
    fn message_filter(&mut self, response: bool, message: &[u8]) -> Decision {
        if response {
            self.response_body_filter(message, true)
        } else {
            self.request_body_filter(message, true)
        }
    }
    fn trailers_filter(&mut self, response: bool, trailers: &http::HeaderMap) -> Decision {
        for v in trailers.values() {
            if self.message_filter(response, v.as_bytes()).is_block() {
                return block("test.trailer");
            }
        }
        Decision::Continue
    }
    fn unscannable(&mut self, _response: bool, what: &str) -> Decision {
        block(what)
    }
    fn logging(&mut self, _outcome: &Outcome) {}
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pipelock-tls-{tag}-{}-{}",
        std::process::id(),
        crate::unique_index()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Resident set size of `pid` in KiB (VmRSS). An error when
/// `/proc/<pid>/status` cannot be read or has no VmRSS line (e.g. the process
/// is gone), so a memory check can never pass on a reading of 0.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .with_context(|| format!("no VmRSS line in {path}"))?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unparsable VmRSS line in {path}: {line:?}"))
}

/// Samples the RSS of `pid` every 20 ms until `done` is set (at least once
/// after it is set), recording the peak; a failed reading stops the sampler
/// with that error.
pub fn sample_peak_rss(
    pid: u32,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            let finished = done.load(Ordering::Relaxed);
            peak = peak.max(rss_kib(pid)?);
            if finished {
                return Ok(peak);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}
