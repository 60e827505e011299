//! Node-level mode and `pipelock-agent status` through the real agent:
//! the node's `pipelock.sure.am/mode` label, served by a fake Kubernetes
//! API server on loopback, sets the mode over `--mode strict` and is
//! applied live as the label changes: audit lets a secret through, logs
//! it and counts what balanced and strict would have blocked; strict
//! blocks it; an annotation of the same key counts when there is no
//! label; a value that is not a mode falls back to the configured mode.
//! `status` (over the admin socket in the state directory) says which
//! mode is in force and where it came from, the fail mode, the cgroup, the
//! findings by rule and the top talkers.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use pipelock_tests::{
    agent::{Agent, agent_bin},
    cgroup::TestCgroup,
    client, free_port,
    kube_api::FakeKubeApi,
    require_root,
    upstream::Upstream,
};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const KEY: &str = "pipelock.sure.am/mode";
/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";
const TIMEOUT: Duration = Duration::from_secs(20);

fn node(labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": NODE, "labels": labels, "annotations": annotations}})
}

/// POSTs `body` with curl from the cgroup: the HTTP status.
fn post(cg: &TestCgroup, body: &str, url: &str) -> String {
    client::curl_status(cg, 20, &["--data-binary", body, url])
        .0
        .unwrap_or_else(|| panic!("curl {url} failed"))
}

/// Waits for the `nth` "node mode changed" line; returns it.
fn wait_node_mode(agent: &Agent, nth: usize) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["message"] == "node mode changed")
            .collect();
        if found.len() >= nth {
            return found[nth - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no node mode change #{nth}; agent log:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pipelock-agent status --state-dir DIR [--json]`: its stdout.
fn status(state: &Path, json: bool) -> String {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("status").arg("--state-dir").arg(state);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("running pipelock-agent status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(state: &Path) -> Value {
    serde_json::from_str(&status(state, true)).expect("status --json is JSON")
}

/// The status document once its `mode_source` is `source` (the admin
/// state follows the mode line by a moment).
fn status_from(state: &Path, source: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let st = status_json(state);
        if st["mode_source"] == source || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` on the forward listener.
fn metrics(listen: SocketAddr) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{listen}/metrics"),
        ])
        .output()
        .expect("curl /metrics");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn node_label_sets_the_mode_live_and_status_reports_it() {
    require_root();
    let api = FakeKubeApi::start();
    api.put("nodes", node(json!({KEY: "audit"}), json!({})));
    let cg = TestCgroup::new("nodemode");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state = std::env::temp_dir().join(format!(
        "plk-nodemode-{}-{}",
        std::process::id(),
        pipelock_tests::unique_index()
    ));
    let args: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect.to_string(),
        "--listen",
        &listen.to_string(),
        "--mode",
        "strict",
        "--node-name",
        NODE,
        "--node-mode-label",
        KEY,
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let kubeconfig = format!("KUBECONFIG={}", api.kubeconfig().display());
    let mut agent = Agent::start_via(&["env", &kubeconfig], &args);

    // The label says audit: over --mode strict, the secret goes through.
    let change = wait_node_mode(&agent, 1);
    assert_eq!(change["mode"], "audit", "{change}");
    assert_eq!(post(&cg, SECRET, &up.url("/audit")), "200");
    assert!(up.body_seen_containing(SECRET.as_bytes()));
    // Would-block counted: balanced and strict would both have blocked it.
    let deadline = Instant::now() + TIMEOUT;
    let text = loop {
        let t = metrics(listen);
        if metric_value(
            &t,
            "pipelock_audit_would_block_total{enforcing_mode=\"strict\",direction=\"request\"}",
        ) >= 1
            || Instant::now() > deadline
        {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for mode in ["strict", "balanced"] {
        let series = format!(
            "pipelock_audit_would_block_total{{enforcing_mode=\"{mode}\",direction=\"request\"}}"
        );
        assert_eq!(metric_value(&text, &series), 1, "{series} in:\n{text}");
    }

    // status, over the admin socket.
    let st = status_from(&state, &format!("label {KEY} on node {NODE}"));
    assert_eq!(st["mode"], "audit", "{st}");
    assert_eq!(
        st["mode_source"],
        format!("label {KEY} on node {NODE}"),
        "{st}"
    );
    assert_eq!(st["redirect"]["fail_mode"], "open", "{st}");
    assert_eq!(st["redirect"]["cgroup"], cg.rel(), "{st}");
    assert!(
        st["findings_by_rule"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == "dlp.github_token")),
        "{st}"
    );
    let talker = format!("cgroup {}", cg.id());
    assert!(
        st["top_talkers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == talker.as_str())),
        "{talker} not in {st}"
    );
    assert!(st["connections"]["accepted"].as_u64() >= Some(1), "{st}");
    let text = status(&state, false);
    assert!(text.contains("mode:        audit (from label"), "{text}");
    assert!(text.contains("fail mode:   open"), "{text}");
    assert!(text.contains("dlp.github_token"), "{text}");

    // The label turns strict: blocked, live.
    api.put("nodes", node(json!({KEY: "strict"}), json!({})));
    let change = wait_node_mode(&agent, 2);
    assert_eq!(change["mode"], "strict", "{change}");
    assert_eq!(post(&cg, SECRET, &up.url("/strict")), "403");

    // No label, an annotation of the key: it counts.
    api.put("nodes", node(json!({}), json!({KEY: "audit"})));
    let change = wait_node_mode(&agent, 3);
    assert_eq!(change["mode"], "audit", "{change}");
    let annotation = format!("annotation {KEY} on node {NODE}");
    assert_eq!(status_from(&state, &annotation)["mode_source"], annotation);
    assert_eq!(post(&cg, SECRET, &up.url("/annotation")), "200");

    // Not a mode: the configured one (--mode strict) applies again.
    api.put("nodes", node(json!({KEY: "enforce"}), json!({})));
    let change = wait_node_mode(&agent, 4);
    assert_eq!(change["mode"], "strict", "{change}");
    let st = status_from(&state, "flag --mode");
    assert_eq!(
        (&st["mode"], &st["mode_source"]),
        (&json!("strict"), &json!("flag --mode"))
    );
    assert_eq!(post(&cg, SECRET, &up.url("/fallback")), "403");
    assert!(
        agent.output().contains("is not audit, balanced or strict"),
        "the bad value was not reported"
    );

    // The watch asked for this node only.
    let requests = api.requests().join("\n");
    assert!(
        requests.contains("fieldSelector=metadata.name%3Dnode-1"),
        "{requests}"
    );
    agent.stop();
    // The socket goes with the agent.
    assert!(
        !state.join("admin.sock").exists(),
        "admin socket left behind"
    );
    let _ = std::fs::remove_dir_all(&state);
}
