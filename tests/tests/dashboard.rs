//! The Grafana dashboard (`deploy/grafana/pipelock-agent.json`) against
//! what a real agent exports: every metric a panel queries is on the
//! agent's `/metrics`, every label a selector or a `by (…)` names is one
//! that metric carries (or `node`, which the ServiceMonitor adds), and the
//! dashboard covers what operators need (redirected connections per pod,
//! findings by rule and action, would-block in audit, latency, limits).
//! The agent redirects a throwaway cgroup (root) and serves one blocked
//! and one clean request first, so the labelled series exist.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root, unique_index,
    upstream::Upstream,
};
use serde_json::Value;

const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";
/// Labels the scrape adds (ServiceMonitor relabelling), not the agent.
const SCRAPE_LABELS: &[&str] = &["node"];

fn dashboard() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/pipelock-agent.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard is JSON")
}

/// What /metrics exports: sample name -> label names seen, and the names
/// declared by `# TYPE` lines (with the suffixes their type implies). The
/// agent redirects a throwaway cgroup; curl in it makes a blocked and a
/// clean request, so the labelled series exist (families without a sample
/// are not written).
fn exported() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let cg = TestCgroup::new("dashboard");
    let dir = std::env::temp_dir().join(format!(
        "plk-dash-{}-{}",
        std::process::id(),
        unique_index()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = free_port();
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A child cgroup in audit: its findings count as would-block.
    let audited = cg.dir().join("audited");
    std::fs::create_dir(&audited).unwrap();
    let config = dir.join("pipelock.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nmode: strict\nmetrics_listen: 127.0.0.1:{metrics}\n\
             interceptor:\n  cgroup: {}\n  redirect_addr: {redirect}\n\
             \x20 mode_overrides:\n    {}/audited: audit\n\
             emit:\n  syslog:\n    address: udp://{}\n",
            cg.rel(),
            cg.rel(),
            syslog.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&["--config".into(), config.display().to_string()]);
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    for (path, want) in [
        (format!("/x?k={SECRET}"), "403"),
        ("/clean".to_owned(), "200"),
    ] {
        let run = client::run(
            Place {
                cgroup: Some(&cg),
                netns: None,
            },
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "-w",
                "%{http_code}",
                &up.url(&path),
            ],
            Duration::from_secs(30),
        );
        assert_eq!(run.stdout.trim(), want, "{path}: {}", run.stderr);
    }
    // The secret from the audited cgroup: let through, counted as what
    // balanced and strict would have blocked.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -sS -o /dev/null --max-time 10 -w '%{{http_code}}' '{}'",
        audited.display(),
        up.url(&format!("/audited?k={SECRET}"))
    );
    let run = client::run_command(
        {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(run.stdout.trim(), "200", "audited: {}", run.stderr);
    // A TLS connection (intercepted; whatever its outcome, it is counted)
    // and a reload (counted by result).
    let _ = client::run(
        Place {
            cgroup: Some(&cg),
            netns: None,
        },
        "curl",
        &[
            "-sk",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            &format!("https://{}/tls", up.addr),
        ],
        Duration::from_secs(30),
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(
        agent
            .wait_for_line(Duration::from_secs(30), |l| l.contains("config reloaded"))
            .is_some(),
        "no reload: {}",
        agent.output()
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{metrics}/metrics"))
        .output()
        .unwrap();
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    // The curl in it has exited: the child cgroup goes before its parent.
    let _ = std::fs::remove_dir(&audited);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut declared = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            let base = name.trim_end_matches("_total");
            match kind {
                "counter" => {
                    declared.insert(format!("{base}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        declared.insert(format!("{base}{s}"));
                    }
                }
                _ => {
                    declared.insert(name.to_owned());
                }
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.split_once('}').unwrap().0),
            None => (line.split_whitespace().next().unwrap(), ""),
        };
        let keys = samples.entry(name.to_owned()).or_default();
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            keys.insert(kv.split_once('=').unwrap().0.to_owned());
        }
    }
    assert!(!samples.is_empty(), "no samples in:\n{text}");
    (samples, declared)
}

/// Every PromQL expression of the dashboard's panels, with the panel title.
fn exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn dashboard_queries_only_what_the_agent_exports() {
    require_root();
    let d = dashboard();
    let (samples, declared) = exported();
    let metric = regex::Regex::new(r"(pipelock_[a-zA-Z0-9_]+)(\{([^}]*)\})?").unwrap();
    let by = regex::Regex::new(r"by \(([^)]*)\)").unwrap();
    let mut used = BTreeSet::new();
    for (title, expr) in exprs(&d) {
        let mut labels_here = BTreeSet::new();
        for c in metric.captures_iter(&expr) {
            let name = c[1].to_owned();
            assert!(
                declared.contains(&name) || samples.contains_key(&name),
                "panel {title:?}: {name} is not exported by the agent"
            );
            let known = samples.get(&name).cloned().unwrap_or_default();
            labels_here.extend(known.iter().cloned());
            if let Some(sel) = c.get(3) {
                for m in sel.as_str().split(',').filter(|s| !s.trim().is_empty()) {
                    let key = m.split(['=', '!', '~']).next().unwrap().trim();
                    assert!(
                        SCRAPE_LABELS.contains(&key)
                            || known.contains(key)
                            || !samples.contains_key(&name),
                        "panel {title:?}: {name} has no label {key} (has {known:?})"
                    );
                }
            }
            used.insert(name);
        }
        for c in by.captures_iter(&expr) {
            for key in c[1].split(',').map(str::trim) {
                assert!(
                    key == "le" || SCRAPE_LABELS.contains(&key) || labels_here.contains(key),
                    "panel {title:?}: by ({key}) is not a label of its metrics {labels_here:?}"
                );
            }
        }
    }
    for needed in [
        "pipelock_redirected_connections_total",
        "pipelock_scanner_hits_total",
        "pipelock_findings_blocked_total",
        "pipelock_findings_warned_total",
        "pipelock_findings_logged_total",
        "pipelock_audit_would_block_total",
        "pipelock_request_duration_seconds_bucket",
        "pipelock_connections_refused_total",
        "pipelock_export_events_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn dashboard_is_importable_grafana_json() {
    let d = dashboard();
    assert_eq!(d["uid"], "pipelock-agent");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "node"]);
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}");
            assert!(!p["targets"].as_array().unwrap().is_empty());
        }
    }
}
