//! Event export (`emit:`) through the real agent, as a plain forward proxy
//! (no cgroup: no eBPF, no root), to real receivers started here on
//! loopback: a webhook receiver (HTTP), syslog listeners (UDP datagrams;
//! TCP with RFC 6587 octet counting) and an OTLP collector stand-in that
//! decodes the HTTP/protobuf export with `opentelemetry-proto`. A blocked
//! request reaches each of them with its rule, action and attribution.
//! Then each receiver is stopped (or stalls) mid-run: requests through the
//! agent keep being answered at once, and the events that could not go out
//! are counted `failed` or `dropped` in `pipelock_export_events_total`.
use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest, common::v1::any_value::Value as AnyValue,
};
use pipelock_tests::{agent::Agent, free_port, unique_index, upstream::Upstream};
use prost::Message as _;
use serde_json::Value;

/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";
const TOKEN: &str = "export-test-token-51c2";

/// Requests received by an HTTP receiver: (path, headers, body).
type Received = Arc<Mutex<Vec<(String, BTreeMap<String, String>, Vec<u8>)>>>;

/// A tiny_http receiver answering 200 (`body` as the answer) until dropped.
struct HttpReceiver {
    server: Arc<tiny_http::Server>,
    worker: Option<JoinHandle<()>>,
    got: Received,
    addr: SocketAddr,
}

impl HttpReceiver {
    fn start(answer_type: &'static str) -> HttpReceiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let got: Received = Arc::default();
        let (s, g) = (server.clone(), got.clone());
        let worker = std::thread::spawn(move || {
            while let Ok(mut req) = s.recv() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let headers = req
                    .headers()
                    .iter()
                    .map(|h| {
                        (
                            h.field.to_string().to_ascii_lowercase(),
                            h.value.to_string(),
                        )
                    })
                    .collect();
                g.lock()
                    .unwrap()
                    .push((req.url().to_owned(), headers, body));
                let resp = tiny_http::Response::from_data(Vec::new()).with_header(
                    tiny_http::Header::from_bytes("Content-Type", answer_type).unwrap(),
                );
                let _ = req.respond(resp);
            }
        });
        HttpReceiver {
            server,
            worker: Some(worker),
            got,
            addr,
        }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Stops listening (the port then refuses connections).
    fn stop(&mut self) {
        self.server.unblock();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// UDP syslog listener collecting datagrams until stopped.
struct UdpSyslog {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl UdpSyslog {
    fn start() -> UdpSyslog {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let worker = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    g.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        UdpSyslog {
            addr,
            got,
            stop,
            worker: Some(worker),
        }
    }

    /// Closes the socket: later datagrams get ICMP port unreachable.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for UdpSyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TCP syslog listener reading RFC 6587 octet-counted frames (`LEN SP MSG`).
struct TcpSyslog {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl TcpSyslog {
    fn start() -> TcpSyslog {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let worker = std::thread::spawn(move || {
            let mut conns = Vec::new();
            let mut pending: Vec<Vec<u8>> = Vec::new();
            while !st.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    c.set_nonblocking(true).unwrap();
                    conns.push(c);
                    pending.push(Vec::new());
                }
                for (c, buf) in conns.iter_mut().zip(pending.iter_mut()) {
                    let mut chunk = [0u8; 4096];
                    if let Ok(n) = c.read(&mut chunk) {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    // Whole frames only.
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let Ok(len) = std::str::from_utf8(&buf[..sp]).unwrap().parse::<usize>()
                        else {
                            panic!("not octet counting: {:?}", String::from_utf8_lossy(buf));
                        };
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8_lossy(&buf[sp + 1..sp + 1 + len]).into_owned();
                        g.lock().unwrap().push(msg);
                        buf.drain(..sp + 1 + len);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        TcpSyslog {
            addr,
            got,
            stop,
            worker: Some(worker),
        }
    }

    /// Closes the listener and every connection.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for TcpSyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A webhook that accepts connections and never answers (a stalled sink).
struct Stalled {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Stalled {
    fn start() -> Stalled {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Stalled {
            addr,
            stop,
            worker: Some(worker),
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The agent as a plain forward proxy with `emit` as given.
struct Proxy {
    agent: Agent,
    port: u16,
    metrics: u16,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.agent.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_agent(emit: &str) -> Proxy {
    let dir = std::env::temp_dir().join(format!(
        "plk-export-{}-{}",
        std::process::id(),
        unique_index()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = free_port();
    let config = dir.join("pipelock.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nmode: strict\nforward_proxy:\n  enabled: true\n\
             metrics_listen: 127.0.0.1:{metrics}\nemit:\n{emit}"
        ),
    )
    .unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::spawn(&args);
    if agent
        .wait_for_line(Duration::from_secs(30), |l| {
            l.contains("forward proxy listening")
        })
        .is_none()
    {
        panic!("agent did not start; its output:\n{}", agent.output());
    }
    Proxy {
        agent,
        port,
        metrics,
        dir,
    }
}

/// A request with the secret in its query through the proxy: the status
/// and how long the answer took.
fn blocked_request(p: &Proxy, up: &Upstream, i: usize) -> (u16, Duration) {
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            "-x",
        ])
        .arg(format!("http://127.0.0.1:{}", p.port))
        .arg(up.url(&format!("/leak/{i}?key={SECRET}")))
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, started.elapsed())
}

/// `pipelock_export_events_total{sink,result}` and the blocked findings.
fn scrape(p: &Proxy) -> (BTreeMap<(String, String), u64>, u64) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/metrics", p.metrics))
        .output()
        .expect("curl /metrics");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut export = BTreeMap::new();
    let mut blocked = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("pipelock_export_events_total{") {
            let (labels, value) = rest.split_once("} ").unwrap();
            let get = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap()
            };
            export.insert((get("sink"), get("result")), value.trim().parse().unwrap());
        }
        if let Some(v) = line.strip_prefix("pipelock_findings_blocked_total ") {
            blocked = v.trim().parse().unwrap();
        }
    }
    (export, blocked)
}

fn n(m: &BTreeMap<(String, String), u64>, sink: &str, result: &str) -> u64 {
    m.get(&(sink.to_owned(), result.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Waits (bounded) until every event of `sink` is accounted for:
/// sent + failed + dropped = blocked findings.
fn settled(p: &Proxy, sink: &str, within: Duration) -> BTreeMap<(String, String), u64> {
    let deadline = Instant::now() + within;
    loop {
        let (m, blocked) = scrape(p);
        let total = n(&m, sink, "sent") + n(&m, sink, "failed") + n(&m, sink, "dropped");
        if total == blocked && blocked > 0 {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{sink}: {total} events accounted for, {blocked} findings: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every request answered 403, each well within the sinks' timeouts
/// (nothing waits for a sink; the stalled webhook below holds each of its
/// sends for 10 s).
fn burst(p: &Proxy, up: &Upstream, from: usize, count: usize) {
    for i in from..from + count {
        let (code, took) = blocked_request(p, up, i);
        assert_eq!(code, 403, "request {i}");
        assert!(
            took < Duration::from_secs(3),
            "request {i} took {took:?}: the agent waited for a sink"
        );
    }
}

/// One OTLP log record: severity text, body, attributes, resource attributes.
type Record = (
    String,
    String,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
);

/// The OTLP records received.
fn otlp_records(got: &Received) -> Vec<Record> {
    let mut out = Vec::new();
    for (path, headers, body) in got.lock().unwrap().iter() {
        assert_eq!(path, "/v1/logs");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut d = flate2::read::GzDecoder::new(&body[..]);
            let mut v = Vec::new();
            d.read_to_end(&mut v).unwrap();
            v
        } else {
            body.clone()
        };
        let req = ExportLogsServiceRequest::decode(&body[..]).expect("OTLP protobuf decodes");
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            other => format!("{other:?}"),
        };
        for rl in &req.resource_logs {
            let resource: BTreeMap<String, String> = rl
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect();
            for sl in &rl.scope_logs {
                for r in &sl.log_records {
                    let attrs = r
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect();
                    out.push((
                        r.severity_text.clone(),
                        text(&r.body),
                        attrs,
                        resource.clone(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn findings_reach_webhook_syslog_and_otlp_and_dead_sinks_never_stall_traffic() {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let mut hook = HttpReceiver::start("application/json");
    let mut syslog = UdpSyslog::start();
    let mut otlp = HttpReceiver::start("application/x-protobuf");
    let p = start_agent(&format!(
        "  instance_id: node-test-1\n\
         \x20 webhook:\n    url: http://{}/hook\n    auth_token: {TOKEN}\n    min_severity: warn\n    timeout_seconds: 1\n    queue_size: 4\n\
         \x20 syslog:\n    address: udp://{}\n    facility: local0\n    tag: pipelock\n\
         \x20 otlp:\n    endpoint: http://{}\n    timeout_seconds: 1\n    queue_size: 4\n    gzip: true\n    headers:\n      x-tenant: sure\n",
        hook.addr, syslog.addr, otlp.addr
    ));

    // One blocked request: every sink gets its event.
    let (code, _) = blocked_request(&p, &up, 0);
    assert_eq!(code, 403);
    assert!(
        up.seen().is_empty(),
        "the blocked request reached the upstream"
    );
    wait_for("the webhook", Duration::from_secs(10), || hook.count() >= 1);
    wait_for("syslog", Duration::from_secs(10), || {
        !syslog.got.lock().unwrap().is_empty()
    });
    wait_for("the collector", Duration::from_secs(10), || {
        otlp.count() >= 1
    });

    let (path, headers, body) = hook.got.lock().unwrap()[0].clone();
    assert_eq!(path, "/hook");
    assert_eq!(
        headers.get("authorization"),
        Some(&format!("Bearer {TOKEN}"))
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let ev: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ev["type"], "block");
    assert_eq!(ev["action"], "block");
    assert_eq!(ev["severity"], "critical");
    assert_eq!(ev["instance_id"], "node-test-1");
    assert_eq!(ev["listener"], "forward");
    assert_eq!(ev["mode"], "strict");
    assert_eq!(ev["path"], "/leak/0");
    let rule = ev["rule_id"].as_str().unwrap().to_owned();
    assert!(rule.starts_with("dlp."), "{ev}");
    assert!(
        !body.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret was exported"
    );

    // RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG; local0 (16)
    // and critical (2): PRI 130.
    let msg = syslog.got.lock().unwrap()[0].clone();
    assert!(msg.starts_with("<130>1 "), "{msg}");
    let fields: Vec<&str> = msg.splitn(7, ' ').collect();
    assert_eq!(fields[2], "node-test-1");
    assert_eq!(fields[3], "pipelock");
    assert_eq!(fields[5], "block");
    assert!(fields[6].starts_with("[pipelock@32473 "), "{msg}");
    assert!(msg.contains(&format!("rule_id=\"{rule}\"")), "{msg}");
    assert!(!msg.contains(SECRET));

    let records = otlp_records(&otlp.got);
    assert_eq!(records.len(), 1);
    let (sev, body, attrs, resource) = &records[0];
    assert_eq!(sev, "critical");
    assert!(body.contains(&rule), "{body}");
    assert_eq!(attrs.get("pipelock.rule_id"), Some(&rule));
    assert_eq!(
        attrs.get("pipelock.action").map(String::as_str),
        Some("block")
    );
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("pipelock-agent")
    );
    assert_eq!(
        resource.get("service.instance.id").map(String::as_str),
        Some("node-test-1")
    );
    assert_eq!(
        otlp.got.lock().unwrap()[0]
            .1
            .get("x-tenant")
            .map(String::as_str),
        Some("sure")
    );

    let m = settled(&p, "webhook", Duration::from_secs(10));
    assert_eq!(
        (
            n(&m, "webhook", "sent"),
            n(&m, "syslog", "sent"),
            n(&m, "otlp", "sent")
        ),
        (1, 1, 1)
    );

    // Each receiver stopped mid-run: traffic is answered at once throughout,
    // and what could not go out is counted.
    hook.stop();
    burst(&p, &up, 1, 10);
    syslog.stop();
    burst(&p, &up, 11, 10);
    otlp.stop();
    burst(&p, &up, 21, 10);
    for sink in ["webhook", "syslog", "otlp"] {
        let m = settled(&p, sink, Duration::from_secs(60));
        let lost = n(&m, sink, "failed") + n(&m, sink, "dropped");
        assert!(
            lost > 0,
            "{sink}: nothing failed or dropped after it stopped: {m:?}"
        );
    }
    let (m, blocked) = scrape(&p);
    eprintln!("export outcomes after the receivers stopped ({blocked} events): {m:?}");
    assert_eq!(blocked, 31);
    // The webhook stopped first: at most the one event before it went out.
    assert_eq!(n(&m, "webhook", "sent"), 1, "{m:?}");
    // The webhook's queue (4) and per-event retries cannot keep up with 30
    // events against a closed port within a burst: some were dropped.
    assert!(n(&m, "webhook", "failed") >= 1, "{m:?}");
    // Syslog kept sending until it stopped, and fails after.
    assert!(n(&m, "syslog", "sent") >= 11, "{m:?}");
    assert!(n(&m, "otlp", "sent") >= 1, "{m:?}");
    // The agent is still healthy.
    let (code, took) = blocked_request(&p, &up, 99);
    assert_eq!(code, 403);
    assert!(took < Duration::from_secs(3));
}

#[test]
fn syslog_over_tcp_frames_by_octet_count_and_survives_a_dead_receiver() {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let mut syslog = TcpSyslog::start();
    let p = start_agent(&format!(
        "  syslog:\n    address: tcp://{}\n    facility: auth\n    tag: plk-test\n    min_severity: info\n",
        syslog.addr
    ));
    burst(&p, &up, 0, 3);
    wait_for("3 syslog frames", Duration::from_secs(10), || {
        syslog.got.lock().unwrap().len() >= 3
    });
    for msg in syslog.got.lock().unwrap().iter() {
        // auth (4) and critical (2): PRI 34.
        assert!(msg.starts_with("<34>1 "), "{msg}");
        assert_eq!(msg.split(' ').nth(3), Some("plk-test"));
    }
    let m = settled(&p, "syslog", Duration::from_secs(10));
    assert_eq!(n(&m, "syslog", "sent"), 3);
    syslog.stop();
    burst(&p, &up, 3, 10);
    let m = settled(&p, "syslog", Duration::from_secs(30));
    assert!(n(&m, "syslog", "failed") >= 1, "{m:?}");
    assert_eq!(
        n(&m, "syslog", "sent") + n(&m, "syslog", "failed") + n(&m, "syslog", "dropped"),
        13
    );
}

#[test]
fn a_stalled_webhook_fills_its_queue_and_drops_without_holding_traffic() {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let stalled = Stalled::start();
    let p = start_agent(&format!(
        "  webhook:\n    url: http://{}/hook\n    timeout_seconds: 10\n    queue_size: 2\n",
        stalled.addr
    ));
    // 20 blocked requests while the webhook never answers.
    burst(&p, &up, 0, 20);
    let (m, blocked) = scrape(&p);
    assert_eq!(blocked, 20);
    assert_eq!(n(&m, "webhook", "sent"), 0);
    // One event in flight, two queued: the rest were dropped at once.
    assert!(n(&m, "webhook", "dropped") >= 20 - 3, "{m:?}");
    drop(stalled);
}
