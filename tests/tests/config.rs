//! The config file through the real agent under the kernel redirect:
//! `mode: strict` from the file blocks a secret; SIGHUP with `mode: audit`
//! lets the same request through and logs the finding; a broken reload keeps
//! the running mode and says why (key and line); a ConfigMap-style `..data`
//! symlink swap is picked up by the directory watch; a start-only key is
//! reported as needing a restart; a bad file stops the agent at start.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use pipelock_tests::{
    agent::Agent, cgroup::TestCgroup, client, free_port, require_root, upstream::Upstream,
};
use serde_json::Value;

/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";

/// A directory laid out as the kubelet lays out a mounted ConfigMap:
/// `pipelock.yaml -> ..data/pipelock.yaml`, `..data -> ..<version>`.
struct ConfigMapDir {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "plk-configmap-{}-{}",
            std::process::id(),
            pipelock_tests::unique_index()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = ConfigMapDir { dir, version: 0 };
        d.publish(text);
        std::os::unix::fs::symlink("..data/pipelock.yaml", d.file()).unwrap();
        d
    }

    /// The path the agent is given.
    fn file(&self) -> PathBuf {
        self.dir.join("pipelock.yaml")
    }

    /// The file behind the symlinks (edited in place for the SIGHUP steps).
    fn current(&self) -> PathBuf {
        self.dir
            .join(format!("..v{}", self.version))
            .join("pipelock.yaml")
    }

    /// A new version directory, then an atomic rename of the `..data` link.
    fn publish(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("pipelock.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn yaml(mode: &str, cg: &TestCgroup, redirect: SocketAddr, extra: &str) -> String {
    format!(
        "version: 1\nmode: {mode}\nresponse_scanning:\n  enabled: true\ninterceptor:\n  cgroup: {}\n  redirect_addr: {redirect}\n{extra}",
        cg.rel()
    )
}

/// POSTs `body` with curl from the cgroup: the HTTP status.
fn post(cg: &TestCgroup, body: &str, url: &str) -> String {
    client::curl_status(cg, 20, &["--data-binary", body, url])
        .0
        .unwrap_or_else(|| panic!("curl {url} failed"))
}

fn hup(agent: &Agent) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
}

/// Waits for the `nth` (1-based) config log line whose message contains `what`.
fn wait_config(agent: &Agent, what: &str, nth: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| {
                r["target"] == "pipelock::config"
                    && r["message"].as_str().is_some_and(|m| m.contains(what))
            })
            .collect();
        if found.len() >= nth {
            return found[nth - 1].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} #{nth}; agent log:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn findings(agent: &Agent, action: &str) -> usize {
    agent
        .records()
        .into_iter()
        .filter(|r| {
            r["target"] == "pipelock::finding"
                && r["rule_id"] == "dlp.github_token"
                && r["action"] == action
        })
        .count()
}

fn wait_findings(agent: &Agent, action: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while findings(agent, action) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {action} finding #{n}; agent log:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn mode_from_the_file_then_sighup_then_broken_reload_then_configmap_swap() {
    require_root();
    let cg = TestCgroup::new("config-reload");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cm = ConfigMapDir::new(&yaml("strict", &cg, redirect, ""));
    let agent = Agent::start(&["--config".into(), arg(&cm.file())]);
    let body = format!("{{\"note\":\"token {SECRET}\"}}");

    // 1. strict from the file: blocked, nothing reaches the upstream.
    assert_eq!(post(&cg, &body, &up.url("/one")), "403");
    assert!(!up.seen().contains(&"/one".to_string()));
    wait_findings(&agent, "block", 1);

    // 2. A broken file and SIGHUP: refused with key and line, strict stays.
    std::fs::write(cm.current(), "version: 1\nmode: paranoid\n").unwrap();
    hup(&agent);
    let refused = wait_config(&agent, "reload refused", 1);
    assert_eq!(refused["key"], "mode", "{refused}");
    assert_eq!(refused["line"], 2, "{refused}");
    assert_eq!(refused["mode"], "strict", "{refused}");
    assert_eq!(post(&cg, &body, &up.url("/two")), "403");
    assert!(!up.seen().contains(&"/two".to_string()));

    // 3. audit in place and SIGHUP: the same request passes, the finding is logged.
    std::fs::write(cm.current(), yaml("audit", &cg, redirect, "")).unwrap();
    hup(&agent);
    let reloaded = wait_config(&agent, "config reloaded", 1);
    assert_eq!(reloaded["trigger"], "SIGHUP");
    assert_eq!(reloaded["mode"], "audit");
    assert_eq!(post(&cg, &body, &up.url("/three")), "200");
    assert!(up.seen().contains(&"/three".to_string()));
    wait_findings(&agent, "log", 1);

    // 4. A ConfigMap update (new version dir, `..data` renamed over) with no
    //    signal: picked up by the watch; a start-only key is reported, not applied.
    cm.publish(&yaml("strict", &cg, redirect, "  bypass_ports: [2222]\n"));
    let reloaded = wait_config(&agent, "config reloaded", 2);
    assert_eq!(reloaded["trigger"], "file change", "{reloaded}");
    assert_eq!(reloaded["mode"], "strict");
    let restart = wait_config(&agent, "needs restart", 1);
    assert_eq!(restart["key"], "interceptor.bypass_ports");
    assert_eq!(post(&cg, &body, &up.url("/four")), "403");
    assert!(!up.seen().contains(&"/four".to_string()));
    assert!(
        !agent.output().contains(SECRET),
        "the agent log holds the secret"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_bad_file_stops_the_agent_at_start_naming_key_and_line() {
    require_root();
    let cg = TestCgroup::new("config-bad");
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = yaml("strict", &cg, redirect, "")
        + "forward_proxy:\n  enabled: true\n  idle_timeout_secs: 60\n";
    let cm = ConfigMapDir::new(&text);
    let mut agent = Agent::spawn(&["--config".into(), arg(&cm.file())]);
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .expect("agent exits");
    assert!(!status.success());
    let out = agent.output();
    assert!(
        out.contains("forward_proxy.idle_timeout_secs: unknown key"),
        "{out}"
    );
    assert!(out.contains("at line 10"), "{out}");
    assert!(!out.contains("attached"), "{out}");
}
