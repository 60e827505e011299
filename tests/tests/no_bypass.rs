//! Paths around the scanner, tried as an attacker in a covered pod would,
//! through the real agent under the real kernel redirect: a destination
//! with the agent's own port number on another host is still redirected and
//! scanned; the agent, run in its own pid namespace inside the covered
//! cgroup, never redirects its own upstream connects (it is exempted by its
//! socket mark, not by a namespaced pid).
use std::{net::SocketAddr, time::Duration};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
    upstream::Upstream,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";

/// curl from the cgroup; returns (status, pid).
fn curl(cg: &TestCgroup, args: &[&str]) -> (String, u32) {
    let mut all = vec![
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    let run = client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        "curl",
        &all,
        TIMEOUT,
    );
    assert!(run.ok(), "curl failed: {run:?}");
    (run.stdout.trim().to_owned(), run.pid)
}

#[test]
fn the_agents_port_number_on_another_host_is_redirected_and_scanned() {
    require_root();
    let cg = TestCgroup::new("agent-port");
    let port = free_port();
    // The upstream shares the agent's port number on another address.
    let up = Upstream::start(SocketAddr::from(([127, 0, 0, 3], port)));
    let redirect = SocketAddr::from(([127, 0, 0, 1], port));
    let agent = Agent::start(&[
        "--cgroup".into(),
        cg.rel().into(),
        "--redirect-addr".into(),
        redirect.to_string(),
    ]);
    let body = format!("{{\"token\":\"{SECRET}\"}}");
    let (code, _) = curl(&cg, &["--data-binary", &body, &up.url("/leak")]);
    assert_eq!(code, "403", "agent log:\n{}", agent.output());
    assert!(!up.seen().contains(&"/leak".to_string()), "the secret left");
    let (code, pid) = curl(&cg, &[&up.url("/clean")]);
    assert_eq!(code, "200");
    let rec = agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
        .unwrap_or_else(|| panic!("not through the agent; log:\n{}", agent.output()));
    assert_eq!(rec["orig_dst"], up.addr.to_string());
}

#[test]
fn agent_in_its_own_pid_namespace_inside_the_covered_cgroup_does_not_redirect_itself() {
    require_root();
    let cg = TestCgroup::new("agent-inside");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The shell joins the covered cgroup, then becomes `unshare`, whose
    // child (pid 1 of a new pid namespace) is the agent.
    let script = format!(
        "echo $$ > {} && exec unshare --pid --fork --kill-child=SIGTERM \"$@\"",
        cg.procs_file().display()
    );
    let agent = Agent::start_via(
        &["sh", "-c", &script, "sh"],
        &[
            "--cgroup".into(),
            cg.rel().into(),
            "--redirect-addr".into(),
            redirect.to_string(),
        ],
    );
    let (code, pid) = curl(&cg, &[&up.url("/through")]);
    assert_eq!(code, "200", "agent log:\n{}", agent.output());
    agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
        .unwrap_or_else(|| panic!("not through the agent; log:\n{}", agent.output()));
    std::thread::sleep(Duration::from_millis(200));
    // One connection through the agent: the client's. The agent's own
    // upstream connect (same cgroup) was not sent back to itself.
    let records = agent.conn_records();
    assert_eq!(records.len(), 1, "records: {records:#?}");
    assert_eq!(records[0]["orig_dst"], up.addr.to_string());
    assert_eq!(records[0]["message"], "connection closed");
    assert_eq!(up.seen(), vec!["/through".to_string()]);
}
