//! The admin endpoints and the kill switch through the real agent under the
//! kernel redirect, with `kill_switch.api_listen` on a loopback port:
//! `/health` answers Pipelock's JSON plus the eBPF attachment and the config
//! generation; `/metrics` parses as Prometheus text (and as OpenMetrics when
//! asked) with Python's `prometheus_client` and its counters move as
//! redirected requests flow; the kill switch goes on and off by SIGUSR1, by
//! the sentinel file and by the API (a wrong token is refused), and while it
//! is on a redirected request gets 503 with Pipelock's JSON and never reaches
//! the upstream; `pipelock-agent healthcheck --addr` exits 0, then 1 once the
//! agent is gone.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pipelock_tests::{
    agent::{Agent, agent_bin},
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
    upstream::Upstream,
};
use serde_json::Value;

const TOKEN: &str = "test-admin-token-7f3a";
const MESSAGE: &str = "test deny-all";
/// Debian's interpreter, which has `python3-prometheus-client`.
const PYTHON: &str = "/usr/bin/python3";

/// A request from the test process itself (not redirected): (status, body).
fn http(method: &str, url: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A redirected curl from the cgroup: (status, body).
fn redirected(cg: &TestCgroup, url: &str) -> (String, String) {
    let run = client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        "curl",
        &["-sS", "--max-time", "10", "-w", "\n%{http_code}", url],
        Duration::from_secs(30),
    );
    assert!(run.ok(), "curl {url} failed: {}", run.stderr);
    let (body, code) = run.stdout.rsplit_once('\n').unwrap_or(("", ""));
    (code.trim().to_owned(), body.to_owned())
}

/// `/metrics` parsed by `prometheus_client` (`parser`: `prometheus` for the
/// 0.0.4 text format, `openmetrics` for OpenMetrics): (name, labels, value).
fn scrape(admin: SocketAddr, parser: &str) -> Vec<(String, Value, f64)> {
    let accept = if parser == "openmetrics" {
        "Accept: application/openmetrics-text; version=1.0.0"
    } else {
        "Accept: text/plain"
    };
    let (code, text) = http("GET", &format!("http://{admin}/metrics"), &[accept], None);
    assert_eq!(code, 200, "{text}");
    let module = if parser == "openmetrics" {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys, json\nfrom {module} import text_string_to_metric_families as parse\n\
         print(json.dumps([[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]))"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (apt python3-prometheus-client; cargo xtask setup installs it)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client ({parser}) rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!parsed.is_empty(), "no samples in\n{text}");
    parsed
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| *v)
        .sum()
}

fn health(admin: SocketAddr) -> Value {
    let (code, body) = http("GET", &format!("http://{admin}/health"), &[], None);
    assert_eq!(code, 200, "{body}");
    json(&body)
}

/// Waits until `/health` says the kill switch is `on`.
fn wait_switch(admin: SocketAddr, on: bool, agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(admin)["kill_switch_active"] != on {
        assert!(
            Instant::now() < deadline,
            "kill switch never turned {on}; agent log:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn usr1(agent: &Agent) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGUSR1) };
}

fn healthcheck(addr: SocketAddr) -> (Option<i32>, String) {
    let out = Command::new(agent_bin())
        .args(["healthcheck", "--addr", &addr.to_string()])
        .output()
        .expect("running pipelock-agent healthcheck");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Asserts the kill switch's answer to a redirected request, and that the
/// upstream never saw it.
fn assert_refused(cg: &TestCgroup, up: &Upstream, path: &str) {
    let (code, body) = redirected(cg, &up.url(path));
    assert_eq!(code, "503", "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "kill_switch_active", "message": MESSAGE})
    );
    assert!(
        !up.seen().contains(&path.to_string()),
        "{path} reached the upstream"
    );
}

fn assert_passes(cg: &TestCgroup, up: &Upstream, path: &str) {
    let (code, body) = redirected(cg, &up.url(path));
    assert_eq!(code, "200", "{body}");
    assert!(up.seen().contains(&path.to_string()));
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(tag: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!(
        "plk-admin-{tag}-{}-{}",
        std::process::id(),
        pipelock_tests::unique_index()
    )))
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn health_metrics_and_the_kill_switch_by_signal_file_and_api() {
    require_root();
    let cg = TestCgroup::new("admin");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sentinel = temp("sentinel");
    let config = temp("config");
    std::fs::write(
        &config.0,
        format!(
            "version: 1\nmode: balanced\ninterceptor:\n  cgroup: {}\n  redirect_addr: {redirect}\n\
             kill_switch:\n  message: {MESSAGE}\n  api_token: {TOKEN}\n  api_listen: \"{admin}\"\n  sentinel_file: {}\n",
            cg.rel(),
            arg(&sentinel.0)
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&["--config".into(), arg(&config.0)]);
    let url = |p: &str| format!("http://{admin}{p}");
    let bearer = format!("Authorization: Bearer {TOKEN}");

    // /health: Pipelock's fields and ours.
    let h = health(admin);
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["mode"], "balanced");
    assert_eq!(h["kill_switch_active"], false);
    assert_eq!(h["ebpf"]["attached"], true, "{h}");
    assert_eq!(h["ebpf"]["cgroup"], cg.rel(), "{h}");
    assert_eq!(h["config_generation"], 1);
    for key in [
        "version",
        "uptime_seconds",
        "dlp_patterns",
        "response_scan_enabled",
        "forward_proxy_enabled",
        "websocket_proxy_enabled",
        "request_body_scan_enabled",
        "tls_interception_enabled",
    ] {
        assert!(h.get(key).is_some(), "no {key} in {h}");
    }
    let (code, out) = healthcheck(admin);
    assert_eq!(code, Some(0), "{out}");
    let (code, body) = http("GET", &url("/nope"), &[], None);
    assert_eq!(
        (code, json(&body)["error"].clone()),
        (404, "not_found".into())
    );

    // /metrics moves as requests flow (both exposition formats parse).
    let before = scrape(admin, "prometheus");
    assert!(sample(&before, "pipelock_info", &[]) == 1.0, "{before:?}");
    assert_passes(&cg, &up, "/m1");
    assert_passes(&cg, &up, "/m2");
    let after = scrape(admin, "prometheus");
    let allowed = |s: &[_]| sample(s, "pipelock_requests_total", &[("result", "allowed")]);
    assert_eq!(allowed(&after) - allowed(&before), 2.0, "{after:?}");
    let id = cg.id().to_string();
    assert!(
        sample(
            &after,
            "pipelock_redirected_connections_total",
            &[("cgroup_id", &id)]
        ) >= 2.0,
        "{after:?}"
    );
    assert!(sample(&after, "pipelock_request_duration_seconds_count", &[]) >= 2.0);
    assert!(sample(&after, "pipelock_scan_duration_seconds_count", &[]) >= 2.0);
    let om = scrape(admin, "openmetrics");
    assert!(allowed(&om) >= 2.0, "{om:?}");

    // Kill switch by SIGUSR1 (a toggle).
    usr1(&agent);
    wait_switch(admin, true, &agent);
    assert_refused(&cg, &up, "/signal-on");
    assert_eq!(healthcheck(admin).0, Some(0), "/health is exempt");
    let (_, st) = http("GET", &url("/api/v1/killswitch/status"), &[&bearer], None);
    let st = json(&st);
    assert_eq!(st["active"], true, "{st}");
    assert_eq!(st["sources"]["signal"], true, "{st}");
    assert_eq!(st["message"], MESSAGE);
    usr1(&agent);
    wait_switch(admin, false, &agent);
    assert_passes(&cg, &up, "/signal-off");

    // By the sentinel file: on while it exists.
    std::fs::write(&sentinel.0, b"").unwrap();
    wait_switch(admin, true, &agent);
    assert_refused(&cg, &up, "/sentinel-on");
    let (_, st) = http("GET", &url("/api/v1/killswitch/status"), &[&bearer], None);
    assert_eq!(json(&st)["sources"]["sentinel"], true, "{st}");
    std::fs::remove_file(&sentinel.0).unwrap();
    wait_switch(admin, false, &agent);
    assert_passes(&cg, &up, "/sentinel-off");

    // By the API; a wrong or missing token is refused and changes nothing.
    let on = Some(r#"{"active":true}"#);
    let (code, _) = http(
        "POST",
        &url("/api/v1/killswitch"),
        &["Authorization: Bearer wrong"],
        on,
    );
    assert_eq!(code, 401);
    let (code, _) = http("POST", &url("/api/v1/killswitch"), &[], on);
    assert_eq!(code, 401);
    let (code, _) = http("GET", &url("/api/v1/killswitch/status"), &[], None);
    assert_eq!(code, 401);
    assert_eq!(health(admin)["kill_switch_active"], false);
    let (code, body) = http("POST", &url("/api/v1/killswitch"), &[&bearer], on);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"active": true, "source": "api", "message": MESSAGE})
    );
    assert_eq!(health(admin)["kill_switch_active"], true);
    assert_refused(&cg, &up, "/api-on");
    let (code, body) = http(
        "POST",
        &url("/api/v1/killswitch"),
        &[&bearer],
        Some(r#"{"active":"yes"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        "POST",
        &url("/api/v1/killswitch"),
        &[&bearer],
        Some(r#"{"active":false}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["active"], false);
    assert_eq!(health(admin)["kill_switch_active"], false);
    assert_passes(&cg, &up, "/api-off");

    // Every denial was counted; the per-source gauges are back at 0.
    let m = scrape(admin, "prometheus");
    assert_eq!(
        sample(
            &m,
            "pipelock_kill_switch_denials_total",
            &[("transport", "transparent"), ("endpoint", "http")]
        ),
        3.0,
        "{m:?}"
    );
    for source in ["config", "api", "signal", "sentinel"] {
        assert_eq!(
            sample(&m, "pipelock_kill_switch_active", &[("source", source)]),
            0.0
        );
    }
    assert_eq!(
        sample(
            &m,
            "pipelock_blocks_total",
            &[("direction", "request"), ("reason", "kill_switch")]
        ),
        3.0
    );
    assert!(sample(&m, "pipelock_requests_total", &[("result", "blocked")]) >= 3.0);

    // No agent, no health.
    agent.stop();
    let (code, out) = healthcheck(admin);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot connect"), "{out}");
}
