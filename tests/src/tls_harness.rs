//! The in-process tier for TLS interception tests and benchmarks: a loopback
//! listener whose connections are handed to the agent's real
//! `proxy::dispatch::serve` with a fixed original destination (what the
//! kernel redirect would have recorded), plus a [`TestPipeline`] that blocks
//! on simple markers so the pipeline hooks can be observed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use pipelock_agent::{
    config::NonHttpAction,
    pipeline::{AllowAll, Block, ConnMeta, Decision, Exchange, Listener, Outcome, Pipeline},
    proxy::{ConnSummary, ProxyContext, dispatch, passthrough::PassthroughDomains, transparent},
    tls::Tls,
};

/// What one served connection ended with.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// `ConnSummary::kind`.
    pub kind: &'static str,
    /// Client → upstream bytes.
    pub bytes_up: u64,
    /// Upstream → client bytes.
    pub bytes_down: u64,
    /// The error `dispatch::serve` returned, as text.
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
    records: Arc<Mutex<Vec<ConnRecord>>>,
    _rt: tokio::runtime::Runtime,
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
        });
        let records = Arc::new(Mutex::new(Vec::new()));
        let recs = records.clone();
        let orig_dst = opts.orig_dst;
        rt.spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (ctx, recs) = (ctx.clone(), recs.clone());
                tokio::spawn(async move {
                    let meta = Arc::new(ConnMeta {
                        id: transparent::next_conn_id(),
                        listener: Listener::Transparent,
                        peer,
                        orig_dst: Some(orig_dst),
                        attribution: None,
                        verified_name: None,
                    });
                    let mut summary = ConnSummary::default();
                    let r = dispatch::serve(stream, meta, ctx, &mut summary).await;
                    recs.lock().expect("records").push(ConnRecord {
                        kind: summary.kind,
                        bytes_up: summary.bytes_up,
                        bytes_down: summary.bytes_down,
                        error: r.err().map(|e| e.to_string()),
                    });
                });
            }
        });
        InProcessAgent {
            addr,
            tls,
            ca_file,
            records,
            _rt: rt,
        }
    }

    /// Connections finished so far.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.records.lock().expect("records").clone()
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
