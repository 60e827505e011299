//! Fail modes through the real kernel: with `--fail-mode closed` the
//! redirect is pinned on bpffs, so after SIGKILL (or a graceful stop) no
//! connection from the covered cgroup reaches any upstream; a restarted
//! agent adopts the pins and traffic flows through it again; `detach` puts
//! connections back on the direct path. With `--fail-mode open` a killed
//! agent's programs go with it and connections go direct.
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use pipelock_tests::{
    agent::{Agent, agent_bin},
    cgroup::TestCgroup,
    client, free_port, require_root,
    upstream::Upstream,
};

/// curl from the cgroup: Some(status) when it got an answer, None when the
/// connection failed.
fn curl(cg: &TestCgroup, url: &str) -> (Option<String>, u32) {
    client::curl_status(cg, 5, &[url])
}

fn kill9(agent: &mut Agent) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "agent did not die"
    );
}

fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/plk-test-{}-{}",
        std::process::id(),
        pipelock_tests::unique_index()
    ))
}

/// Removes the test's pins even when it fails half-way.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(agent_bin())
            .arg("detach")
            .arg("--pin-dir")
            .arg(&self.0)
            .output();
    }
}

fn args(
    cg: &TestCgroup,
    redirect: SocketAddr,
    state: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect.to_string(),
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn fail_closed_survives_kill_restart_adopts_detach_opens() {
    require_root();
    let cg = TestCgroup::new("fail-closed");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pins = Pins(pin_dir());
    let pin_arg = pins.0.display().to_string();
    let state = std::env::temp_dir().join(format!("plk-failclosed-{}", std::process::id()));
    let a = args(
        &cg,
        redirect,
        &state,
        &["--fail-mode", "closed", "--pin-dir", &pin_arg],
    );

    let mut agent = Agent::start(&a);
    let (code, _) = curl(&cg, &up.url("/before"));
    assert_eq!(code.as_deref(), Some("200"), "{}", agent.output());

    // SIGKILL: the pinned programs keep redirecting to a port nobody
    // listens on, so every connect fails and nothing reaches the upstream.
    kill9(&mut agent);
    for i in 0..10 {
        let (code, _) = curl(&cg, &up.url(&format!("/down-{i}")));
        assert_eq!(code, None, "connection {i} got through with the agent dead");
    }
    assert!(
        !up.seen().iter().any(|p| p.starts_with("/down")),
        "an upstream got traffic while the agent was down: {:?}",
        up.seen()
    );

    // Restart: the pins are adopted, the stale records of refused connects
    // are dropped, and traffic flows through the agent again.
    let agent = Agent::start(&a);
    let adopted = agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("adopted the pinned redirect")
        })
        .unwrap_or_else(|| panic!("not adopted:\n{}", agent.output()));
    let adopted: serde_json::Value = serde_json::from_str(&adopted).unwrap();
    assert!(adopted["stale_records"].as_u64().unwrap() >= 1, "{adopted}");
    let (code, pid) = curl(&cg, &up.url("/after"));
    assert_eq!(code.as_deref(), Some("200"), "{}", agent.output());
    let rec = agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
        .unwrap_or_else(|| panic!("not through the agent:\n{}", agent.output()));
    assert_eq!(rec["orig_dst"], up.addr.to_string());

    // A graceful stop keeps the pins too.
    let mut agent = agent;
    agent.stop();
    let (code, _) = curl(&cg, &up.url("/stopped"));
    assert_eq!(code, None, "a stopped agent let a connection out");

    // detach: direct again.
    let out = Command::new(agent_bin())
        .args(["detach", "--pin-dir", &pin_arg])
        .output()
        .expect("running detach");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached"),
        "{out:?}"
    );
    let (code, _) = curl(&cg, &up.url("/direct"));
    assert_eq!(code.as_deref(), Some("200"));
    assert!(up.seen().contains(&"/direct".to_string()));
    assert!(!pins.0.exists());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn fail_open_killed_agent_lets_connections_go_direct() {
    require_root();
    let cg = TestCgroup::new("fail-open");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pins = Pins(pin_dir());
    let state = std::env::temp_dir().join(format!("plk-failopen-{}", std::process::id()));
    let mut agent = Agent::start(&args(
        &cg,
        redirect,
        &state,
        &["--pin-dir", &pins.0.display().to_string()],
    ));
    let (code, pid) = curl(&cg, &up.url("/before"));
    assert_eq!(code.as_deref(), Some("200"));
    assert!(
        agent
            .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
            .is_some()
    );
    kill9(&mut agent);
    let (code, _) = curl(&cg, &up.url("/after-kill"));
    assert_eq!(code.as_deref(), Some("200"));
    assert!(up.seen().contains(&"/after-kill".to_string()));
    assert!(!pins.0.exists(), "fail_mode open pinned something");
    let _ = std::fs::remove_dir_all(&state);
}
