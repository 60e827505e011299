//! `cargo xtask bench tls` (= `cargo bench -p pipelock-tests --bench tls`):
//! keep-alive HTTPS requests/s and latency p50/p99 at 1, 50 and 500 clients
//! for (a) the upstream directly, (b) through pipelock-agent's interception
//! path (in-process: the real `dispatch::serve`, fixed original
//! destination, no scanning), (c) the agent's forward proxy (the release
//! binary in plain mode, `--listen`: CONNECT, then TLS interception and
//! full scanning, as Faraday with `HTTPS_PROXY` reaches it), with request
//! logging off and on, (d) mitmproxy and (e) squid-openssl with ssl-bump
//! (both as CONNECT proxies that bump TLS), with the same Rust client
//! (HTTP/1.1 over rustls) and the same HTTPS upstream, all on loopback.
//! As root, also (f) the deployed interception path: the release binary
//! attached to a throwaway cgroup (`--cgroup`, kernel redirect, default
//! scanning, request logging off), the client re-executed inside that
//! cgroup, over HTTP/1.1 and HTTP/2 (the latter against an upstream that
//! speaks h2, beside a direct h2 row).
//! Also the cost of minting a leaf (cache miss) and of a full handshake,
//! and the agent's RSS idle and holding 100, 1,000 and 10,000 idle
//! keep-alive connections (`PIPELOCK_BENCH_NO_RSS=1` skips that part;
//! `PIPELOCK_BENCH_TARGETS=a,b` measures only those rows). mitmproxy (in a
//! venv of its own under ~/.cache/pipelock-agent) and squid are installed
//! on first use; a missing one is reported and skipped. Every loop is
//! bounded in time. The machine is shared: compare ratios within one run.
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
    cgroup::TestCgroup,
    client::{self as child, Place},
    free_port,
    tls_client::{Client, client_config},
    tls_harness::{AgentOptions, InProcessAgent, temp_dir},
    tls_upstream::{HttpsUpstream, TestCa},
};

const NAMES: &[&str] = &["upstream.test", "localhost", "127.0.0.1"];
const RUN_FOR: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(500);
/// Client counts of the keep-alive rows (the cost must grow linearly).
const CONCURRENCY: [usize; 3] = [1, 50, 500];

#[derive(Clone, Copy)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests answered, warm-up included (for CPU time per request).
    total: u64,
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
    sni: String,
    cfg: Arc<rustls::ClientConfig>,
}

impl Target {
    async fn client(&self) -> Result<Client, String> {
        Client::connect_as(
            self.connect_to,
            self.proxy,
            self.connect_host.as_deref(),
            &self.sni,
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
        let (addr, proxy, cfg, sni) = (t.connect_to, t.proxy, t.cfg.clone(), t.sni.clone());
        let (authority, connect_host) = (t.authority.clone(), t.connect_host.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut total = 0u64;
            let mut client: Option<Client> = None;
            while Instant::now() < stop {
                if client.is_none() {
                    match Client::connect_as(
                        addr,
                        proxy,
                        connect_host.as_deref(),
                        &sni,
                        cfg.clone(),
                    )
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
                        total += 1;
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
            (lat, errors, total)
        }));
    }
    let mut all = Vec::new();
    let (mut errors, mut total) = (0, 0);
    for t in tasks {
        if let Ok((l, e, n)) = t.await {
            all.extend(l);
            errors += e;
            total += n;
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
        total,
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

/// mitmdump from a venv of its own under the cache dir
/// (`~/.cache/pipelock-agent/mitmproxy-venv`, created on first use), so
/// installing it never changes the system's Python packages.
fn mitmdump() -> Option<PathBuf> {
    let cache = std::env::var_os("PIPELOCK_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pipelock-agent"))
        })?;
    let venv = cache.join("mitmproxy-venv");
    let bin = venv.join("bin/mitmdump");
    if bin.exists() {
        return Some(bin);
    }
    eprintln!("installing mitmproxy into {} ...", venv.display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "mitmproxy"])
            .status()
            .is_ok_and(|s| s.success());
    (ok && bin.exists()).then_some(bin)
}

/// mitmproxy in regular (CONNECT) mode, verifying the upstream with `up_ca`.
fn start_mitmproxy(dir: &Path, up_ca: &Path) -> Result<(Proc, SocketAddr, PathBuf), String> {
    let bin = mitmdump().ok_or("mitmproxy could not be installed into its venv")?;
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

/// nginx as a re-encrypting TLS reverse proxy to `upstream` (TLS both
/// sides, keep-alive upstream connections, no scanning): the reference the
/// issue sets. Its address and the CA file clients trust.
fn start_nginx(
    dir: &Path,
    up_ca: &Path,
    upstream: SocketAddr,
) -> Result<(Proc, SocketAddr, PathBuf), String> {
    let bin = Path::new("/usr/sbin/nginx");
    if !bin.exists() {
        return Err("nginx not installed (apt-get install nginx-light)".into());
    }
    let nd = dir.join("nginx");
    std::fs::create_dir_all(&nd).map_err(|e| e.to_string())?;
    let ca = TestCa::new("nginx bench CA");
    let ca_file = nd.join("ca.pem");
    ca.write_pem(&ca_file);
    let (cert, key) = ca.leaf_pem(NAMES);
    std::fs::write(nd.join("leaf.pem"), cert).map_err(|e| e.to_string())?;
    std::fs::write(nd.join("leaf.key"), key).map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let conf = format!(
        "daemon off;\nmaster_process on;\nuser root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
          fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
          upstream up {{ server {upstream}; keepalive 256; }}\n\
          server {{\n  listen {addr} ssl;\n  ssl_certificate {d}/leaf.pem;\n  ssl_certificate_key {d}/leaf.key;\n\
           keepalive_requests 1000000;\n\
           location / {{\n   proxy_pass https://up;\n   proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n\
            proxy_set_header Host $http_host;\n   proxy_ssl_server_name on;\n   proxy_ssl_name upstream.test;\n\
            proxy_ssl_verify on;\n   proxy_ssl_trusted_certificate {up_ca};\n   proxy_ssl_session_reuse on;\n  }}\n }}\n}}\n",
        d = nd.display(),
        up_ca = up_ca.display(),
    );
    let conf_file = nd.join("nginx.conf");
    std::fs::write(&conf_file, conf).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&nd)
        .arg("-c")
        .arg(&conf_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning nginx: {e}"))?;
    let p = Proc(child);
    if !wait_port(addr, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(nd.join("error.log")).unwrap_or_default();
        return Err(format!("nginx did not listen within 10 s: {log}"));
    }
    Ok((p, addr, ca_file))
}

/// The real agent binary as a plain forward proxy (no cgroup): its
/// address and the CA file clients trust.
fn start_forward(
    dir: &Path,
    up_ca: &Path,
    name: &str,
    yaml: &str,
) -> Result<(Agent, SocketAddr, PathBuf), String> {
    let state = dir.join(format!("{name}-state"));
    let out = Command::new(agent_bin())
        .args(["ca", "export", "--state-dir"])
        .arg(&state)
        .output()
        .map_err(|e| format!("running {}: {e}", agent_bin().display()))?;
    if !out.status.success() {
        return Err(format!("ca export: {out:?}"));
    }
    let ca = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca, &out.stdout).map_err(|e| e.to_string())?;
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, format!("forward_proxy:\n  enabled: true\n{yaml}"))
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

/// The agent's forward proxy at `proxy` as a target: a ClientHello must
/// name the CONNECT host, so CONNECT and TLS both as localhost (a name of
/// the upstream's certificate).
fn forward_target(
    name: &'static str,
    upstream: SocketAddr,
    proxy: SocketAddr,
    ca: &Path,
) -> Target {
    let local = format!("localhost:{}", upstream.port());
    Target {
        authority: local.clone(),
        name,
        connect_to: upstream,
        proxy: Some(proxy),
        connect_host: Some(local),
        sni: "localhost".into(),
        cfg: client_config(&[ca], &[b"http/1.1"]),
    }
}

/// CPU time (user + system) a process used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Resident memory of a process, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raises this process's open-file limit (children inherit it): the idle
/// connection rows hold two sockets per connection here (client and
/// upstream server) and two in the agent.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let new = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
            return new.rlim_cur;
        }
        lim.rlim_cur
    }
}

/// Memory of the agent's forward proxy (scanning on, request logging off)
/// holding idle keep-alive TLS connections: each CONNECT + TLS + one GET,
/// then left open. RSS idle first, then at each step of `steps`.
fn idle_rss(rt: &tokio::runtime::Runtime, dir: &Path, up_ca: &Path, upstream: SocketAddr) {
    const STEPS: [usize; 3] = [100, 1000, 10_000];
    let limit = raise_nofile(4 * 10_000 + 2000);
    // Each held connection is a descriptor here and one in the agent; the
    // upstream connections they used (in the agent, and the upstream's side
    // in this process) are moved, once 1 to 2 s idle, to the agent's
    // keep-alive store, which keeps 32: only those of the last moments of
    // the ramp are open at once (4,000 descriptors of room). Where the hard
    // limit cannot be raised (a container without CAP_SYS_RESOURCE), the
    // last step is the most thousands that fit, and says so.
    let fits = |n: usize| (n + 4000) as u64 <= limit;
    let last = if fits(10_000) {
        10_000
    } else {
        let n = (limit.saturating_sub(4000) as usize / 1000) * 1000;
        println!("open-file limit {limit}: the last step holds {n} connections, not 10,000");
        n
    };
    let steps = [STEPS[0], STEPS[1], last];
    let max = steps
        .iter()
        .copied()
        .filter(|&n| fits(n))
        .max()
        .unwrap_or(0);
    let yaml = format!(
        "logging:\n  include_allowed: false\ninterceptor:\n  max_connections: {}\n",
        max + 100
    );
    let (agent, addr, ca) = match start_forward(dir, up_ca, "agent-rss", &yaml) {
        Ok(v) => v,
        Err(e) => {
            println!("idle connections: skipped: {e}");
            return;
        }
    };
    let t = forward_target("agent-rss", upstream, addr, &ca);
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_kib(agent.pid()).unwrap_or(0);
    println!(
        "\nidle keep-alive TLS connections held by the agent's forward proxy (scanning on); open-file limit {limit}"
    );
    println!("  idle, no connection: RSS {:.1} MB", base as f64 / 1024.0);
    let mut held = Vec::new();
    for n in steps.into_iter().filter(|&n| n <= max) {
        let end = Instant::now() + Duration::from_secs(120);
        let mut errors = 0usize;
        while held.len() < n && Instant::now() < end {
            let batch = (n - held.len()).min(200);
            let got: Vec<Result<Client, String>> = rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..batch {
                    let (addr, proxy, host, cfg, authority) = (
                        t.connect_to,
                        t.proxy,
                        t.connect_host.clone(),
                        t.cfg.clone(),
                        t.authority.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let mut c =
                            Client::connect_as(addr, proxy, host.as_deref(), "localhost", cfg)
                                .await?;
                        c.get(&authority, "/hello").await?;
                        Ok::<_, String>(c)
                    }));
                }
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await.map_err(|e| e.to_string()).and_then(|r| r));
                }
                out
            });
            for r in got {
                match r {
                    Ok(c) => held.push(c),
                    Err(_) => errors += 1,
                }
            }
            if errors > n / 10 + 10 {
                break;
            }
        }
        // Idle: the agent moves a client connection's upstream connection
        // to its shared keep-alive store after 1 to 2 s unused (keeping 32).
        std::thread::sleep(Duration::from_secs(3));
        let rss = rss_kib(agent.pid()).unwrap_or(0);
        println!(
            "  {:>6} connections held ({errors} failed to open): RSS {:.1} MB, {:.1} KB per connection above idle",
            held.len(),
            rss as f64 / 1024.0,
            rss.saturating_sub(base) as f64 / held.len().max(1) as f64
        );
    }
    drop(held);
    drop(agent);
}

/// The release agent attached to a throwaway cgroup (kernel redirect,
/// default scanning, request logging off): clients of that cgroup reach
/// any upstream through it. Root only.
struct Transparent {
    agent: Agent,
    cg: TestCgroup,
    ca: PathBuf,
}

impl Transparent {
    /// `bin`: another agent binary than the one under test (a baseline
    /// build, `PIPELOCK_BENCH_BASELINE_BIN`), for A/B rows in one run.
    fn start(dir: &Path, up_ca: &Path, bin: Option<&str>) -> Result<Transparent, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (eBPF, cgroups)".into());
        }
        let cg = TestCgroup::new("bench-tls");
        let state = dir.join(format!("transparent-state-{}", free_port()));
        let cfg = dir.join("transparent.yaml");
        std::fs::write(
            &cfg,
            "logging:\n  include_allowed: false\ninterceptor:\n  max_connections: 20000\n",
        )
        .map_err(|e| e.to_string())?;
        let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args: Vec<String> = [
            "--config",
            cfg.to_str().unwrap_or_default(),
            "--cgroup",
            cg.rel(),
            "--redirect-addr",
            &redirect.to_string(),
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--upstream-ca",
            up_ca.to_str().unwrap_or_default(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = match bin {
            // The wrapper drops the default binary's path and runs `bin`.
            Some(bin) => {
                let script = format!("shift; exec {bin} \"$@\"");
                Agent::spawn_via(&["sh", "-c", &script, "sh"], &args)
            }
            None => Agent::spawn(&args),
        };
        if agent
            .wait_for_line(Duration::from_secs(30), |l| {
                l.contains("pipelock-agent attached")
            })
            .is_none()
        {
            return Err(format!("did not attach: {}", agent.output()));
        }
        Ok(Transparent {
            agent,
            cg,
            ca: state.join("ca.crt"),
        })
    }

    /// One load cell: this bench re-executed as a client inside the cgroup,
    /// connecting to `upstream` (redirected to the agent by the kernel).
    fn load(
        &self,
        upstream: SocketAddr,
        authority: &str,
        alpn: &str,
        conc: usize,
    ) -> Option<Stats> {
        let exe = std::env::current_exe().ok()?;
        let run = child::run(
            Place {
                cgroup: Some(&self.cg),
                netns: None,
            },
            exe.to_str()?,
            &[
                "--client",
                &upstream.to_string(),
                "upstream.test",
                self.ca.to_str()?,
                authority,
                alpn,
                &conc.to_string(),
            ],
            RUN_FOR + WARMUP + Duration::from_secs(60),
        );
        if !run.ok() {
            println!("transparent client failed: {run:?}");
            return None;
        }
        let f: Vec<f64> = run
            .stdout
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        match f[..] {
            [rps, p50_ms, p99_ms, errors, total] => Some(Stats {
                rps,
                p50_ms,
                p99_ms,
                errors: errors as u64,
                total: total as u64,
            }),
            _ => None,
        }
    }
}

/// Client side of a transparent row (`--client ADDR SNI CA AUTHORITY ALPN
/// CONCURRENCY`): one load cell, printed as `rps p50 p99 errors`.
fn client_main(args: &[String]) {
    let [addr, sni, ca, authority, alpn, conc] = args else {
        eprintln!("--client ADDR SNI CA AUTHORITY ALPN CONCURRENCY");
        std::process::exit(2);
    };
    let (Ok(addr), Ok(conc)) = (addr.parse::<SocketAddr>(), conc.parse::<usize>()) else {
        eprintln!("bad address or concurrency");
        std::process::exit(2);
    };
    let t = Target {
        name: "client",
        authority: authority.clone(),
        connect_to: addr,
        proxy: None,
        connect_host: None,
        sni: sni.clone(),
        cfg: client_config(&[Path::new(ca)], &[alpn.as_bytes()]),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(load(&t, conc));
    println!(
        "{} {} {} {} {}",
        s.rps, s.p50_ms, s.p99_ms, s.errors, s.total
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        client_main(&args[i + 1..]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // cargo bench --list
    }
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

    // An upstream that speaks HTTP/2 too, for the h2 rows.
    let up2 = HttpsUpstream::start(
        &up_ca,
        NAMES,
        &[b"h2", b"http/1.1"],
        "127.0.0.1:0".parse().expect("addr"),
    );
    let mut targets = vec![
        Target {
            authority: authority.clone(),
            name: "direct",
            connect_to: up.addr,
            proxy: None,
            connect_host: None,
            sni: "upstream.test".into(),
            cfg: client_config(&[&up_ca_file], h1),
        },
        Target {
            authority: format!("upstream.test:{}", up2.addr.port()),
            name: "direct-h2",
            connect_to: up2.addr,
            proxy: None,
            connect_host: None,
            sni: "upstream.test".into(),
            cfg: client_config(&[&up_ca_file], &[b"h2"]),
        },
        Target {
            authority: authority.clone(),
            name: "pipelock-agent",
            connect_to: agent.addr,
            proxy: None,
            connect_host: None,
            sni: "upstream.test".into(),
            cfg: client_config(&[&agent.ca_file], h1),
        },
    ];
    let mut keep = Vec::new();
    let mut forward = Vec::new();
    // Request logging off (as the in-process row has it), then on (the
    // default: one JSON line per request on stdout).
    for (name, yaml) in [
        ("agent-forward", "logging:\n  include_allowed: false\n"),
        ("agent-fwd-log", ""),
    ] {
        match start_forward(&dir, &up_ca_file, name, yaml) {
            Ok((a, addr, ca)) => {
                forward.push(a);
                targets.push(forward_target(name, up.addr, addr, &ca));
            }
            Err(e) => println!("{name}: skipped: {e}"),
        }
    }
    match start_nginx(&dir, &up_ca_file, up.addr) {
        Ok((p, addr, ca)) => {
            keep.push(p);
            targets.push(Target {
                authority: authority.clone(),
                name: "nginx-reencrypt",
                connect_to: addr,
                proxy: None,
                connect_host: None,
                sni: "upstream.test".into(),
                cfg: client_config(&[&ca], h1),
            });
        }
        Err(e) => println!("nginx: skipped: {e}"),
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
                sni: "upstream.test".into(),
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
                sni: "upstream.test".into(),
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
        for conc in CONCURRENCY {
            let s = rt.block_on(load(t, conc));
            println!(
                "{:<16} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>7}",
                t.name, conc, s.rps, s.p50_ms, s.p99_ms, s.errors
            );
            results.push((t.name, conc, s));
        }
    }
    // The deployed path: kernel redirect, real scanning pipeline.
    let wanted = |name: &str| {
        std::env::var("PIPELOCK_BENCH_TARGETS").map_or(true, |o| o.split(',').any(|n| n == name))
    };
    let baseline = std::env::var("PIPELOCK_BENCH_BASELINE_BIN").ok();
    let agents: Vec<(Option<&str>, [&'static str; 2])> =
        std::iter::once((None, ["transparent", "transparent-h2"]))
            .chain(
                baseline
                    .as_deref()
                    .map(|b| (Some(b), ["transp-base", "transp-h2-base"])),
            )
            .collect();
    for (bin, names) in agents {
        if !names.iter().any(|n| wanted(n)) {
            continue;
        }
        let tp = match Transparent::start(&dir, &up_ca_file, bin) {
            Ok(tp) => tp,
            Err(e) => {
                println!("{}: skipped: {e}", names[0]);
                continue;
            }
        };
        for (name, upstream, alpn) in [(names[0], up.addr, "http/1.1"), (names[1], up2.addr, "h2")]
        {
            if !wanted(name) {
                continue;
            }
            let authority = format!("upstream.test:{}", upstream.port());
            for conc in CONCURRENCY {
                let cpu0 = cpu_seconds(tp.agent.pid());
                let Some(s) = tp.load(upstream, &authority, alpn, conc) else {
                    println!("{name:<16} {conc:>5} failed");
                    continue;
                };
                let cpu = cpu_seconds(tp.agent.pid()) - cpu0;
                println!(
                    "{:<16} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>7}   agent CPU {:.1} µs/request",
                    name,
                    conc,
                    s.rps,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors,
                    cpu * 1e6 / s.total.max(1) as f64
                );
                results.push((name, conc, s));
            }
        }
        println!(
            "{} agent RSS after the load: {:.1} MB",
            names[0],
            rss_kib(tp.agent.pid()).unwrap_or(0) as f64 / 1024.0
        );
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
    for (ours, label, direct) in [
        ("pipelock-agent", "agent", "direct"),
        ("transparent", "transp", "direct"),
        ("transparent-h2", "transp-h2", "direct-h2"),
        ("transp-base", "base", "direct"),
        ("transp-h2-base", "base-h2", "direct-h2"),
        ("agent-forward", "forward", "direct"),
        ("agent-fwd-log", "fwd+log", "direct"),
    ] {
        for conc in CONCURRENCY {
            let Some(a) = get(ours, conc) else {
                continue;
            };
            for other in [direct, "nginx-reencrypt", "mitmproxy", "squid-ssl-bump"] {
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
    if std::env::var_os("PIPELOCK_BENCH_NO_RSS").is_none() {
        idle_rss(&rt, &dir, &up_ca_file, up.addr);
    }
    drop(keep);
    drop(forward);
    drop(agent);
    drop(up);
    drop(up2);
    let _ = std::fs::remove_dir_all(&dir);
}
