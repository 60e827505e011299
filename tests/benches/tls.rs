//! `cargo xtask bench tls` (= `cargo bench -p pipelock-tests --bench tls`):
//! keep-alive HTTPS requests/s and latency p50/p99 at concurrency 1 and 50
//! for (a) the upstream directly, (b) through pipelock-agent's interception
//! path (in-process: the real `dispatch::serve`, fixed original
//! destination), (c) the agent's forward proxy (the release binary in plain
//! mode, `--listen`: CONNECT, then TLS interception, as Faraday with
//! `HTTPS_PROXY` reaches it), (d) mitmproxy and (e) squid-openssl with
//! ssl-bump (both as CONNECT proxies that bump TLS), with the same Rust
//! client (HTTP/1.1 over
//! rustls) and the same HTTPS upstream, all on loopback. Also the cost of
//! minting a leaf (cache miss) and of a full handshake. mitmproxy and squid
//! are installed on first use (pip, apt-get); a missing one is reported and
//! skipped. Every loop is bounded in time.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use pipelock_agent::tls::LeafName;
use pipelock_tests::{
    agent::{Agent, agent_bin},
    free_port,
    tls_client::{Client, client_config},
    tls_harness::{AgentOptions, InProcessAgent, temp_dir},
    tls_upstream::{HttpsUpstream, TestCa},
};

const NAMES: &[&str] = &["upstream.test", "localhost", "127.0.0.1"];
const RUN_FOR: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

struct Target {
    name: &'static str,
    /// Host header: the upstream's name and port, as a redirected client sends it.
    authority: String,
    connect_to: SocketAddr,
    proxy: Option<SocketAddr>,
    /// CONNECT by this name (the agent's forward proxy wants the SNI's host).
    connect_host: Option<String>,
    /// TLS server name.
    sni: &'static str,
    cfg: Arc<rustls::ClientConfig>,
}

impl Target {
    async fn client(&self) -> Result<Client, String> {
        Client::connect_as(
            self.connect_to,
            self.proxy,
            self.connect_host.as_deref(),
            self.sni,
            self.cfg.clone(),
        )
        .await
    }
}

async fn load(t: &Target, concurrency: usize) -> Stats {
    let mut tasks = Vec::new();
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let stop = measure_from + RUN_FOR;
    for _ in 0..concurrency {
        let (addr, proxy, cfg, sni) = (t.connect_to, t.proxy, t.cfg.clone(), t.sni);
        let (authority, connect_host) = (t.authority.clone(), t.connect_host.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut client: Option<Client> = None;
            while Instant::now() < stop {
                if client.is_none() {
                    match Client::connect_as(addr, proxy, connect_host.as_deref(), sni, cfg.clone())
                        .await
                    {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                let t0 = Instant::now();
                match c.get(&authority, "/hello").await {
                    Ok(r) if r.status() == 200 => {
                        if t0 >= measure_from {
                            lat.push(t0.elapsed());
                        }
                    }
                    _ => {
                        errors += 1;
                        client = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Stats {
        rps: all.len() as f64 / RUN_FOR.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

/// Average time of a fresh connection (TCP + TLS handshake) plus one request.
async fn handshake_cost(t: &Target, n: usize) -> Option<Duration> {
    let authority = t.authority.clone();
    let start = Instant::now();
    for _ in 0..n {
        let mut c = t.client().await.ok()?;
        c.get(&authority, "/hello").await.ok()?;
    }
    Some(start.elapsed() / n as u32)
}

fn wait_port(addr: SocketAddr, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of a child this bench started.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mitmdump() -> Option<PathBuf> {
    let find = || {
        let out = Command::new("sh")
            .args(["-c", "command -v mitmdump || ls $(python3 -m site --user-base 2>/dev/null)/bin/mitmdump 2>/dev/null"])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .to_owned();
        (!p.is_empty()).then(|| PathBuf::from(p))
    };
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("installing mitmproxy (pip install mitmproxy) ...");
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "mitmproxy"])
        .status();
    let _ = Command::new("sh")
        .args(["-c", "pyenv rehash 2>/dev/null"])
        .status();
    find()
}

/// mitmproxy in regular (CONNECT) mode, verifying the upstream with `up_ca`.
fn start_mitmproxy(dir: &Path, up_ca: &Path) -> Result<(Proc, SocketAddr, PathBuf), String> {
    let bin = mitmdump().ok_or("mitmdump not found and pip install mitmproxy failed")?;
    let port = pipelock_tests::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let conf = dir.join("mitm");
    std::fs::create_dir_all(&conf).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args([
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
            "-q",
        ])
        .args(["--set", &format!("confdir={}", conf.display())])
        .args([
            "--set",
            &format!("ssl_verify_upstream_trusted_ca={}", up_ca.display()),
        ])
        .args(["--set", "connection_strategy=lazy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning mitmdump: {e}"))?;
    let p = Proc(child);
    if !wait_port(addr, Duration::from_secs(30)) {
        return Err("mitmdump did not listen within 30 s".into());
    }
    let ca = conf.join("mitmproxy-ca-cert.pem");
    if !ca.exists() {
        return Err(format!("mitmproxy CA {} missing", ca.display()));
    }
    Ok((p, addr, ca))
}

fn squid_bin() -> Option<PathBuf> {
    let found = || {
        ["/usr/sbin/squid", "/usr/bin/squid"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    let certgen = Path::new("/usr/lib/squid/security_file_certgen");
    if let Some(p) = found().filter(|_| certgen.exists()) {
        return Some(p);
    }
    eprintln!("installing squid-openssl (apt-get) ...");
    let _ = Command::new("sh")
        .args(["-c", "apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid-openssl >/dev/null 2>&1; systemctl stop squid 2>/dev/null; service squid stop 2>/dev/null; true"])
        .status();
    found().filter(|_| certgen.exists())
}

/// squid-openssl as a CONNECT proxy bumping TLS (peek at step 1 for the SNI, then bump).
fn start_squid(dir: &Path, up_ca: &Path) -> Result<(Proc, SocketAddr, PathBuf), String> {
    let bin = squid_bin().ok_or("squid-openssl not installable")?;
    let sq = dir.join("squid");
    std::fs::create_dir_all(&sq).map_err(|e| e.to_string())?;
    let ca = TestCa::new("squid bench CA");
    let (ca_cert, ca_key) = ca.ca_pem_and_key();
    let ca_file = sq.join("ca.pem");
    std::fs::write(&ca_file, format!("{ca_cert}{ca_key}")).map_err(|e| e.to_string())?;
    std::fs::write(sq.join("ca.crt"), &ca_cert).map_err(|e| e.to_string())?;
    let db = sq.join("ssl_db");
    let _ = std::fs::remove_dir_all(&db);
    let out = Command::new("/usr/lib/squid/security_file_certgen")
        .args(["-c", "-s", &db.display().to_string(), "-M", "16MB"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "certgen init: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = pipelock_tests::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let conf = format!(
        "http_port 127.0.0.1:{port} ssl-bump tls-cert={ca} generate-host-certificates=on dynamic_cert_mem_cache_size=16MB\n\
         sslcrtd_program /usr/lib/squid/security_file_certgen -s {db} -M 16MB\n\
         sslcrtd_children 4\n\
         acl step1 at_step SslBump1\n\
         ssl_bump peek step1\n\
         ssl_bump bump all\n\
         tls_outgoing_options cafile={up_ca}\n\
         http_access allow all\n\
         cache deny all\n\
         access_log none\n\
         cache_log {dir}/cache.log\n\
         pid_filename {dir}/squid.pid\n\
         coredump_dir {dir}\n\
         cache_effective_user proxy\n\
         hosts_file {dir}/hosts\n\
         shutdown_lifetime 1 seconds\n",
        ca = ca_file.display(),
        db = db.display(),
        up_ca = up_ca.display(),
        dir = sq.display(),
    );
    std::fs::write(sq.join("hosts"), "127.0.0.1 upstream.test\n").map_err(|e| e.to_string())?;
    let conf_file = sq.join("squid.conf");
    std::fs::write(&conf_file, conf).map_err(|e| e.to_string())?;
    // squid refuses to run as root: it drops to `proxy`, which must own its files.
    let _ = Command::new("chown")
        .args(["-R", "proxy:proxy", &sq.display().to_string()])
        .status();
    let service = format!("plkbench{}", std::process::id());
    let child = Command::new(bin)
        .args(["-N", "-n", &service, "-f", &conf_file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning squid: {e}"))?;
    let p = Proc(child);
    if !wait_port(addr, Duration::from_secs(30)) {
        let log = std::fs::read_to_string(sq.join("cache.log")).unwrap_or_default();
        return Err(format!("squid did not listen within 30 s: {log}"));
    }
    Ok((p, addr, sq.join("ca.crt")))
}

/// The real agent binary as a plain forward proxy (no cgroup): its
/// address and the CA file clients trust.
fn start_forward(dir: &Path, up_ca: &Path) -> Result<(Agent, SocketAddr, PathBuf), String> {
    let state = dir.join("forward-state");
    let out = Command::new(agent_bin())
        .args(["ca", "export", "--state-dir"])
        .arg(&state)
        .output()
        .map_err(|e| format!("running {}: {e}", agent_bin().display()))?;
    if !out.status.success() {
        return Err(format!("ca export: {out:?}"));
    }
    let ca = dir.join("forward-ca.pem");
    std::fs::write(&ca, &out.stdout).map_err(|e| e.to_string())?;
    let cfg = dir.join("forward.yaml");
    // Request logging off, as the in-process row has it.
    std::fs::write(
        &cfg,
        "forward_proxy:\n  enabled: true\nlogging:\n  include_allowed: false\n",
    )
    .map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args: Vec<String> = [
        "run",
        "--config",
        cfg.to_str().unwrap_or_default(),
        "--listen",
        &addr.to_string(),
        "--state-dir",
        state.to_str().unwrap_or_default(),
        "--upstream-ca",
        up_ca.to_str().unwrap_or_default(),
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
        return Err(format!("did not start: {}", agent.output()));
    }
    Ok((agent, addr, ca))
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let dir = temp_dir("bench");
    let up_ca = TestCa::new("bench upstream CA");
    let up_ca_file = dir.join("upstream-ca.pem");
    up_ca.write_pem(&up_ca_file);
    let up = HttpsUpstream::start(
        &up_ca,
        NAMES,
        &[b"http/1.1"],
        "127.0.0.1:0".parse().expect("addr"),
    );
    let mut opts = AgentOptions::new(up.addr, &dir.join("state"));
    opts.upstream_ca = Some(up_ca_file.clone());
    let agent = InProcessAgent::start(opts);
    let h1: &[&[u8]] = &[b"http/1.1"];
    let authority = format!("upstream.test:{}", up.addr.port());

    let mut targets = vec![
        Target {
            authority: authority.clone(),
            name: "direct",
            connect_to: up.addr,
            proxy: None,
            connect_host: None,
            sni: "upstream.test",
            cfg: client_config(&[&up_ca_file], h1),
        },
        Target {
            authority: authority.clone(),
            name: "pipelock-agent",
            connect_to: agent.addr,
            proxy: None,
            connect_host: None,
            sni: "upstream.test",
            cfg: client_config(&[&agent.ca_file], h1),
        },
    ];
    let mut keep = Vec::new();
    let mut forward = None;
    match start_forward(&dir, &up_ca_file) {
        Ok((a, addr, ca)) => {
            forward = Some(a);
            // A ClientHello must name the CONNECT host: CONNECT and TLS
            // both as localhost (a name of the upstream's certificate).
            let local = format!("localhost:{}", up.addr.port());
            targets.push(Target {
                authority: local.clone(),
                name: "agent-forward",
                connect_to: up.addr,
                proxy: Some(addr),
                connect_host: Some(local),
                sni: "localhost",
                cfg: client_config(&[&ca], h1),
            });
        }
        Err(e) => println!("agent forward proxy: skipped: {e}"),
    }
    match start_mitmproxy(&dir, &up_ca_file) {
        Ok((p, addr, ca)) => {
            keep.push(p);
            targets.push(Target {
                authority: authority.clone(),
                name: "mitmproxy",
                connect_to: up.addr,
                proxy: Some(addr),
                connect_host: None,
                sni: "upstream.test",
                cfg: client_config(&[&ca], h1),
            });
        }
        Err(e) => println!("mitmproxy: skipped: {e}"),
    }
    match start_squid(&dir, &up_ca_file) {
        Ok((p, addr, ca)) => {
            keep.push(p);
            targets.push(Target {
                authority: authority.clone(),
                name: "squid-ssl-bump",
                connect_to: up.addr,
                proxy: Some(addr),
                connect_host: None,
                sni: "upstream.test",
                cfg: client_config(&[&ca], h1),
            });
        }
        Err(e) => println!("squid: skipped: {e}"),
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "keep-alive HTTPS GET /hello (HTTP/1.1), {RUN_FOR:?} per cell, loopback, 2 cores shared by client, proxy and upstream"
    );
    println!(
        "{:<16} {:>5} {:>10} {:>9} {:>9} {:>7}",
        "target", "conc", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results: Vec<(&str, usize, Stats)> = Vec::new();
    for t in &targets {
        // Sanity first: one request must work.
        let authority = t.authority.clone();
        let ok = rt.block_on(async {
            let mut c = t.client().await?;
            c.get(&authority, "/hello").await
        });
        match ok {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => {
                let body = String::from_utf8_lossy(r.body());
                // Squid's error pages: keep the error id and message lines.
                let excerpt: String = body
                    .lines()
                    .filter(|l| l.contains("ERR_") || l.contains("<p>") || l.contains("<b>"))
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" ");
                println!("{:<16} unusable: HTTP {}: {excerpt}", t.name, r.status());
                continue;
            }
            Err(e) => {
                println!("{:<16} unusable: {e}", t.name);
                continue;
            }
        }
        if let Ok(only) = std::env::var("PIPELOCK_BENCH_TARGETS")
            && !only.split(',').any(|n| n == t.name)
        {
            continue;
        }
        for conc in [1usize, 50] {
            let s = rt.block_on(load(t, conc));
            println!(
                "{:<16} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>7}",
                t.name, conc, s.rps, s.p50_ms, s.p99_ms, s.errors
            );
            results.push((t.name, conc, s));
        }
    }
    let get = |name: &str, conc: usize| {
        results
            .iter()
            .find(|r| r.0 == name && r.1 == conc)
            .map(|r| r.2)
    };
    println!(
        "\nratios (pipelock-agent vs other; throughput: higher is better for the agent; p99: lower is better)"
    );
    for (ours, label) in [("pipelock-agent", "agent"), ("agent-forward", "forward")] {
        for conc in [1usize, 50] {
            let Some(a) = get(ours, conc) else {
                continue;
            };
            for other in ["direct", "mitmproxy", "squid-ssl-bump"] {
                if let Some(o) = get(other, conc) {
                    println!(
                        "  c={conc:<3} {label}/{other:<15} throughput x{:.2}   p99 x{:.2}",
                        a.rps / o.rps,
                        a.p99_ms / o.p99_ms
                    );
                }
            }
        }
    }

    // Leaf minting (cache miss) and cache hit.
    let n = 2000;
    let t0 = Instant::now();
    for i in 0..n {
        let _ = agent.tls.mint(&LeafName::dns(&format!("h{i}.mint.bench")));
    }
    let mint = t0.elapsed() / n;
    let _ = agent.tls.leaf(&LeafName::dns("hit.bench"));
    let t0 = Instant::now();
    for _ in 0..n {
        let _ = agent.tls.leaf(&LeafName::dns("hit.bench"));
    }
    let hit = t0.elapsed() / n;
    println!(
        "\nleaf certificate: mint (cache miss) {:.1} µs, cache hit {:.2} µs",
        mint.as_secs_f64() * 1e6,
        hit.as_secs_f64() * 1e6
    );
    for t in &targets {
        if let Some(d) = rt.block_on(handshake_cost(t, 100)) {
            println!(
                "full handshake + 1 request, new connection each time: {:<16} {:.3} ms",
                t.name,
                d.as_secs_f64() * 1e3
            );
        }
    }
    drop(keep);
    drop(forward);
    drop(agent);
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
