//! The forward proxy (:8888) of the real binary, started with Sure's chart
//! arguments and config and no cgroup (a plain proxy: no eBPF, no root
//! needed): `/health`, `curl -x` over HTTP (absolute-form) and HTTPS
//! (CONNECT, intercepted with the exported CA; absolute-form requests of
//! one client connection share a kept-alive upstream connection), Python
//! `requests` and Ruby
//! Faraday through `HTTPS_PROXY`; a bad upstream certificate gives 502, a
//! passthrough domain shows the upstream's own certificate, an SNI other
//! than the CONNECT host is refused, bytes that are neither TLS nor HTTP
//! inside a tunnel never reach the upstream; a reload applies the
//! `forward_proxy` settings; `metrics_listen` moves `/metrics` and `/stats`.
//! Upstreams are on loopback.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pipelock_tests::{
    agent::agent_bin,
    client::{ClientRun, run_command},
    free_port,
    plain_agent::{CHART, PlainAgent, test_dir},
    tls_upstream::{HttpsUpstream, TestCa},
    upstream::{Upstream, hex, pattern_sha256},
};
use sha2::{Digest, Sha256};

const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A plain-mode agent started with the chart's arguments.
struct Fwd {
    plain: PlainAgent,
    /// The agent's CA (what clients trust).
    ca: PathBuf,
    /// The test CA of the HTTPS upstreams (trusted by the agent).
    upstream_ca: TestCa,
}

impl std::ops::Deref for Fwd {
    type Target = PlainAgent;
    fn deref(&self) -> &PlainAgent {
        &self.plain
    }
}

impl Fwd {
    fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.fwd_port)
    }

    fn ca(&self) -> &str {
        self.ca.to_str().unwrap()
    }
}

fn start(extra: &[&str]) -> Fwd {
    start_with(Path::new(CHART), extra)
}

/// The agent with `config` instead of the chart's file.
fn start_with(config: &Path, extra: &[&str]) -> Fwd {
    let dir = test_dir("fwd");
    let out = Command::new(agent_bin())
        .args(["ca", "export", "--state-dir"])
        .arg(PlainAgent::state_dir(&dir))
        .output()
        .expect("ca export");
    assert!(out.status.success(), "ca export: {out:?}");
    let ca = dir.join("agent-ca.pem");
    std::fs::write(&ca, &out.stdout).unwrap();
    let upstream_ca = TestCa::new("forward-test upstream CA");
    let up_ca = dir.join("upstream-ca.pem");
    upstream_ca.write_pem(&up_ca);
    let mut args = vec!["--upstream-ca", up_ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    let plain = PlainAgent::start(
        dir.clone(),
        config,
        "http://127.0.0.1:9/mcp",
        &args,
        "forward proxy listening",
    );
    Fwd {
        plain,
        ca,
        upstream_ca,
    }
}

fn curl(args: &[&str]) -> ClientRun {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    run_command(cmd, TIMEOUT)
}

/// (body, status code) of a `curl -w '\n%{http_code}'` run.
fn split(run: &ClientRun) -> (String, String) {
    let s = run.stdout.trim_end();
    match s.rsplit_once('\n') {
        Some((body, code)) => (body.to_owned(), code.to_owned()),
        None => (String::new(), s.to_owned()),
    }
}

fn https_upstream(f: &Fwd, names: &[&str]) -> HttpsUpstream {
    HttpsUpstream::start(
        &f.upstream_ca,
        names,
        &[b"http/1.1"],
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    )
}

fn download_sha(args: &[&str], out: &Path) -> String {
    let mut a = vec!["-o", out.to_str().unwrap()];
    a.extend_from_slice(args);
    let run = curl(&a);
    assert!(run.ok(), "{run:?}");
    let bytes = std::fs::read(out).unwrap();
    hex(&Sha256::digest(&bytes))
}

#[test]
fn chart_arguments_start_a_plain_proxy_and_health_answers() {
    let f = start(&[]);
    // Said once the listeners are up (the start line may follow the probe).
    assert!(
        f.agent
            .wait_for_line(Duration::from_secs(10), |l| l
                .contains("plain forward proxy, no eBPF redirect loaded"))
            .is_some(),
        "{}",
        f.agent.output()
    );
    let run = curl(&[&format!("http://127.0.0.1:{}/health", f.fwd_port)]);
    let (body, code) = split(&run);
    assert_eq!(code, "200", "{run:?}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(json["status"], "healthy", "{json}");
    let (_, code) = split(&curl(&[&format!("http://127.0.0.1:{}/nope", f.fwd_port)]));
    assert_eq!(code, "404");
}

#[test]
fn curl_http_absolute_form_is_scanned() {
    let f = start(&["--mode", "strict"]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let n: u64 = 1 << 20;
    let sha = download_sha(
        &["-x", &f.proxy(), &up.url(&format!("/bytes/{n}"))],
        &f.dir.join("clean"),
    );
    assert_eq!(sha, pattern_sha256(n), "clean bytes changed");

    let body = format!("{{\"note\":\"my key is {SECRET}\"}}");
    let run = curl(&["-x", &f.proxy(), "--data-binary", &body, &up.url("/leak")]);
    let (resp, code) = split(&run);
    assert_eq!(code, "403", "{run:?}");
    assert!(!resp.contains(SECRET));
    assert!(!up.seen().contains(&"/leak".to_string()), "upstream got it");

    let run = curl(&["-x", &f.proxy(), &up.url("/inject")]);
    assert!(!run.stdout.contains("API keys"), "{run:?}");
    // Proxy-Authorization goes neither upstream nor into the log.
    let run = curl(&[
        "-x",
        &f.proxy(),
        "--proxy-user",
        "sure:hunter2-proxy-pass",
        &up.url("/bytes/10"),
    ]);
    assert!(run.ok(), "{run:?}");
    assert!(!f.agent.output().contains("hunter2"));
    let records = f.agent.records();
    assert!(
        records.iter().any(|r| r["listener"]
            .as_str()
            .is_some_and(|l| l.contains("forward"))
            || r.to_string().contains("Forward")),
        "no record names the forward listener: {}",
        f.agent.output()
    );
}

/// Absolute-form requests on one client connection reuse one kept-alive
/// upstream connection: the upstream sees both from the same peer port.
#[test]
fn absolute_form_requests_reuse_the_upstream_connection() {
    let f = start(&[]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    // One curl run, two URLs: curl keeps its proxy connection for both.
    let run = curl(&[
        "-x",
        &f.proxy(),
        &up.url("/first"),
        "-w",
        "\n",
        &up.url("/second"),
    ]);
    assert!(run.ok(), "{run:?}");
    let peers: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| v["peer"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(peers.len(), 2, "two JSON answers expected: {run:?}");
    assert_eq!(
        peers[0], peers[1],
        "second request opened a new upstream connection"
    );
    assert_eq!(up.seen(), vec!["/first".to_string(), "/second".to_string()]);
}

#[test]
fn curl_https_connect_is_intercepted_and_scanned() {
    let f = start(&["--mode", "strict"]);
    let up = https_upstream(&f, &["localhost"]);
    let url = |p: &str| format!("https://localhost:{}{p}", up.addr.port());
    let n: u64 = 1 << 20;
    let sha = download_sha(
        &[
            "-x",
            &f.proxy(),
            "--cacert",
            f.ca(),
            &url(&format!("/bytes/{n}")),
        ],
        &f.dir.join("clean-tls"),
    );
    assert_eq!(sha, pattern_sha256(n));

    let body = format!("{{\"note\":\"my key is {SECRET}\"}}");
    let run = curl(&[
        "-x",
        &f.proxy(),
        "--cacert",
        f.ca(),
        "--data-binary",
        &body,
        &url("/echo"),
    ]);
    let (resp, code) = split(&run);
    assert_eq!(code, "403", "{run:?}");
    assert!(!resp.contains(SECRET));

    let run = curl(&["-x", &f.proxy(), "--cacert", f.ca(), &url("/inject")]);
    assert!(
        !run.stdout.to_lowercase().contains("ignore all previous"),
        "{run:?}"
    );
    // The three tunnels are counted once they close.
    let metrics = || {
        let run = curl(&[&format!("http://127.0.0.1:{}/metrics", f.fwd_port)]);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("pipelock_tunnels_total{result=\"completed\"}"))
            .map(str::to_owned);
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics() != Some(3.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metrics(), Some(3.0), "{}", f.agent.output());
}

#[test]
fn bad_upstream_certificate_through_connect_is_502() {
    let f = start(&[]);
    // Signed by a CA the agent does not trust.
    let other = TestCa::new("untrusted");
    let up = HttpsUpstream::start(
        &other,
        &["localhost"],
        &[b"http/1.1"],
        "127.0.0.1:0".parse().unwrap(),
    );
    let run = curl(&[
        "-x",
        &f.proxy(),
        "--cacert",
        f.ca(),
        &format!("https://localhost:{}/hello", up.addr.port()),
    ]);
    let (_, code) = split(&run);
    assert_eq!(code, "502", "{run:?}");
    assert!(!run.stdout.contains("hello from upstream"));
}

#[test]
fn passthrough_domain_tunnel_shows_the_upstreams_certificate() {
    let f = start(&["--passthrough-domain", "localhost"]);
    let up = https_upstream(&f, &["localhost"]);
    let up_ca = f.dir.join("upstream-ca.pem");
    let run = curl(&[
        "-x",
        &f.proxy(),
        "--cacert",
        up_ca.to_str().unwrap(),
        &format!("https://localhost:{}/hello", up.addr.port()),
    ]);
    let (body, code) = split(&run);
    assert_eq!(code, "200", "{run:?}");
    assert!(body.contains("hello from upstream"));
}

#[test]
fn sni_other_than_the_connect_host_is_refused() {
    let f = start(&[]);
    let up = https_upstream(&f, &["localhost", "evil.example"]);
    let mut cmd = s_client(&f, &format!("localhost:{}", up.addr.port()), "evil.example");
    cmd.arg("-brief").stdin(std::process::Stdio::null());
    let run = run_command(cmd, TIMEOUT);
    assert!(!run.ok(), "handshake succeeded: {run:?}");
    assert!(
        f.agent
            .wait_for_line(Duration::from_secs(5), |l| l.contains("domain fronting"))
            .is_some(),
        "{}",
        f.agent.output()
    );
}

/// `openssl s_client` through the proxy: CONNECT `connect`, SNI `sni`,
/// trusting the agent's CA and failing on a certificate it cannot verify.
fn s_client(f: &Fwd, connect: &str, sni: &str) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-proxy",
        &format!("127.0.0.1:{}", f.fwd_port),
        "-connect",
        connect,
        "-servername",
        sni,
        "-CAfile",
        f.ca(),
        "-verify_return_error",
    ]);
    cmd
}

/// [`s_client`] sending one `GET /hello` for `sni`; returns what came back.
fn s_client_get(f: &Fwd, connect: &str, sni: &str) -> ClientRun {
    use std::io::Write as _;
    let mut cmd = s_client(f, connect, sni);
    cmd.args(["-quiet", "-ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("openssl");
    let request = format!("GET /hello HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(request.as_bytes());
    }
    let pid = child.id();
    // Bounded: the request closes the connection; kill after the timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("openssl output");
    ClientRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    }
}

#[test]
fn sni_verification_off_allows_another_sni_only_when_the_upstream_proves_it() {
    let dir = std::env::temp_dir().join(format!("plk-fwd-sni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("pipelock.yaml");
    std::fs::write(
        &cfg,
        "forward_proxy:\n  enabled: true\n  sni_verification: false\n",
    )
    .unwrap();
    let f = start_with(&cfg, &[]);
    // The upstream serves both names: the other SNI is allowed, logged.
    let both = https_upstream(&f, &["localhost", "other.example"]);
    let run = s_client_get(
        &f,
        &format!("localhost:{}", both.addr.port()),
        "other.example",
    );
    assert!(
        run.stdout.starts_with("HTTP/1.1 200"),
        "{run:?}\n{}",
        f.agent.output()
    );
    f.agent
        .wait_for_line(Duration::from_secs(5), |l| {
            l.contains("sni_verification: false")
        })
        .unwrap_or_else(|| panic!("no warning:\n{}", f.agent.output()));
    // An upstream that does not prove the SNI name: 502, nothing relayed.
    let one = https_upstream(&f, &["localhost"]);
    let run = s_client_get(
        &f,
        &format!("localhost:{}", one.addr.port()),
        "other.example",
    );
    assert!(run.stdout.starts_with("HTTP/1.1 502"), "{run:?}");
    assert!(!run.stdout.contains("hello from upstream"), "{run:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_requests_with_https_proxy() {
    let ok = Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!("python3 lacks requests: run `cargo xtask setup` (python3-requests)");
    }
    let f = start(&["--mode", "strict"]);
    let up = https_upstream(&f, &["localhost"]);
    let script = r#"
import os, sys, requests
url = sys.argv[1]
r = requests.get(url + "/hello", timeout=20)
print(r.status_code, r.text.strip())
r = requests.post(url + "/echo", data=sys.argv[2], timeout=20)
print(r.status_code)
"#;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        script,
        &format!("https://localhost:{}", up.addr.port()),
        &format!("key={SECRET}"),
    ])
    .env("HTTPS_PROXY", f.proxy())
    .env("REQUESTS_CA_BUNDLE", f.ca())
    .env("NO_PROXY", "")
    .env_remove("no_proxy");
    let run = run_command(cmd, TIMEOUT);
    assert!(run.ok(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"200 hello from upstream"), "{run:?}");
    assert_eq!(lines.get(1), Some(&"403"), "{run:?}");
}

#[test]
fn ruby_faraday_with_https_proxy() {
    let ok = Command::new("ruby")
        .args(["-e", "require 'faraday'"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!("ruby lacks faraday: run `cargo xtask setup` (ruby-faraday)");
    }
    let f = start(&["--mode", "strict"]);
    let up = https_upstream(&f, &["localhost"]);
    // Ruby skips env proxies for loopback destinations, so the proxy is
    // given from HTTPS_PROXY explicitly (as ruby-openai's Faraday does with
    // a configured proxy).
    let script = r##"
require "faraday"
c = Faraday.new(url: ARGV[0], proxy: ENV["HTTPS_PROXY"], ssl: { ca_file: ENV["SSL_CERT_FILE"] })
r = c.get("/hello")
puts "#{r.status} #{r.body.strip}"
r = c.post("/echo", ARGV[1])
puts r.status
"##;
    let mut cmd = Command::new("ruby");
    cmd.args([
        "-e",
        script,
        &format!("https://localhost:{}", up.addr.port()),
        &format!("key={SECRET}"),
    ])
    .env("HTTPS_PROXY", f.proxy())
    .env("SSL_CERT_FILE", f.ca());
    let run = run_command(cmd, TIMEOUT);
    assert!(run.ok(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"200 hello from upstream"), "{run:?}");
    assert_eq!(lines.get(1), Some(&"403"), "{run:?}");
}

#[test]
fn forward_proxy_settings_follow_a_reload() {
    let dir = test_dir("fwd-reload");
    let config = dir.join("pipelock.yaml");
    let chart = std::fs::read_to_string(CHART).unwrap();
    std::fs::write(&config, &chart).unwrap();
    let f = start_with(&config, &[]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let run = curl(&["-x", &f.proxy(), &up.url("/hello")]);
    assert_eq!(split(&run).1, "200", "{run:?}\n{}", f.agent.output());

    let off = chart.replace(
        "forward_proxy:\n  enabled: true",
        "forward_proxy:\n  enabled: false",
    );
    assert_ne!(off, chart, "the chart's forward_proxy section moved");
    std::fs::write(&config, off).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(f.agent.pid() as i32, libc::SIGHUP) };
    assert!(
        f.agent
            .wait_for_line(TIMEOUT, |l| l.contains("config reloaded"))
            .is_some(),
        "no reload: {}",
        f.agent.output()
    );
    // A new connection gets the new settings: proxying is off (405), the
    // admin routes stay.
    let (body, code) = split(&curl(&["-x", &f.proxy(), &up.url("/hello")]));
    assert_eq!(code, "405", "{body}");
    assert!(body.contains("forward_proxy_disabled"), "{body}");
    let (_, code) = split(&curl(&[&format!("{}/health", f.proxy())]));
    assert_eq!(code, "200");
    drop(f);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_listen_serves_metrics_and_stats_off_the_proxy_port() {
    let dir = test_dir("fwd-stats");
    let config = dir.join("pipelock.yaml");
    let metrics_port = free_port();
    let chart = std::fs::read_to_string(CHART).unwrap();
    std::fs::write(
        &config,
        format!("{chart}\nmetrics_listen: 127.0.0.1:{metrics_port}\n"),
    )
    .unwrap();
    let f = start_with(&config, &["--mode", "strict"]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let body = format!("{{\"note\":\"my key is {SECRET}\"}}");
    for _ in 0..2 {
        let run = curl(&["-x", &f.proxy(), "--data-binary", &body, &up.url("/leak")]);
        assert_eq!(split(&run).1, "403", "{run:?}");
    }
    let (_, code) = split(&curl(&["-x", &f.proxy(), &up.url("/hello")]));
    assert_eq!(code, "200");

    // Moved: the proxy port no longer serves them; /health stays there.
    let (_, code) = split(&curl(&[&format!("{}/metrics", f.proxy())]));
    assert_eq!(code, "404");
    let (_, code) = split(&curl(&[&format!("{}/stats", f.proxy())]));
    assert_eq!(code, "404");
    let (_, code) = split(&curl(&[&format!("{}/health", f.proxy())]));
    assert_eq!(code, "200");

    let m = format!("http://127.0.0.1:{metrics_port}");
    let (text, code) = split(&curl(&[&format!("{m}/metrics")]));
    assert_eq!(code, "200");
    assert!(text.contains("pipelock_requests_blocked_total 2"), "{text}");
    let (stats, code) = split(&curl(&[&format!("{m}/stats")]));
    assert_eq!(code, "200", "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["requests"]["blocked"], 2, "{stats}");
    assert_eq!(stats["requests"]["allowed"], 1, "{stats}");
    let domains = stats["top_blocked_domains"].as_array().expect("list");
    assert_eq!(
        domains.first(),
        Some(&serde_json::json!({"name": "127.0.0.1", "count": 2})),
        "{stats}"
    );
    assert!(
        stats["top_scanners"]
            .as_array()
            .expect("list")
            .iter()
            .any(|s| s["name"] == "dlp.github_token"),
        "{stats}"
    );
    // Only the metrics endpoints there.
    let (_, code) = split(&curl(&[&format!("{m}/api/v1/killswitch/status")]));
    assert_eq!(code, "404");
    drop(f);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw TCP upstream on loopback that records every byte it receives in
/// its first second on each connection.
fn raw_upstream() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

#[test]
fn non_http_inside_a_connect_tunnel_is_refused() {
    use std::io::{Read as _, Write as _};
    let f = start(&[]);
    let (up, received) = raw_upstream();
    for (what, first) in [
        (
            "ssh banner",
            &b"SSH-2.0-OpenSSH_9.6 ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi\r\n"[..],
        ),
        ("binary", &[0x00u8, 0x01, 0xfe, 0xff, 0x10, 0x20][..]),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", f.fwd_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "CONNECT {up} HTTP/1.1\r\nHost: {up}\r\n\r\n").unwrap();
        let mut head = [0u8; 256];
        let n = s.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{what}: {head}");
        s.write_all(first).unwrap();
        // The agent closes the tunnel (the client sees EOF or a reset) ...
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{what}: bytes came back: {rest:?}");
    }
    // ... and none of it reached the upstream (it may not even be dialled).
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(got) = received.try_recv() {
        assert!(got.is_empty(), "the upstream received {got:?}");
    }
    let out = f.agent.output();
    assert!(
        out.contains("non-HTTP") || out.contains("non_http"),
        "no refusal logged: {out}"
    );
}

/// `interceptor.rate_limit`: the request over the per-host limit is answered
/// 429 and never reaches the upstream; the finding is logged and `/health`
/// says the limit is on.
#[test]
fn requests_over_the_host_rate_limit_get_429() {
    let dir = test_dir("fwd-rate");
    let config = dir.join("pipelock.yaml");
    let chart = std::fs::read_to_string(CHART).unwrap();
    std::fs::write(
        &config,
        format!("{chart}\ninterceptor:\n  rate_limit:\n    per_host_per_minute: 3\n"),
    )
    .unwrap();
    let f = start_with(&config, &["--mode", "strict"]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let mut codes = Vec::new();
    for i in 0..5 {
        let run = curl(&[
            "-o",
            "/dev/null",
            "-x",
            &f.proxy(),
            &up.url(&format!("/bytes/{}", 10 + i)),
        ]);
        codes.push(split(&run).1);
    }
    assert_eq!(
        codes,
        ["200", "200", "200", "429", "429"],
        "{}",
        f.agent.output()
    );
    let seen = up.seen();
    assert!(seen.contains(&"/bytes/12".to_string()), "{seen:?}");
    assert!(!seen.contains(&"/bytes/13".to_string()), "{seen:?}");
    assert!(
        f.agent
            .wait_for_line(TIMEOUT, |l| l.contains("\"rule_id\":\"dest.rate_limit\""))
            .is_some(),
        "{}",
        f.agent.output()
    );
    let (body, code) = split(&curl(&[&format!("http://127.0.0.1:{}/health", f.fwd_port)]));
    assert_eq!(code, "200");
    let json: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(json["rate_limit_enabled"], true, "{json}");
}
