//! `pipelock-agent status`, read over a local admin socket: the running
//! agent listens on a unix socket in its state directory
//! (`<state_dir>/admin.sock`, mode 0600: root on the node only) and
//! answers every connection with one JSON document, then closes: what is
//! covered (cgroup, pods and their containers), the mode and where it came from,
//! the fail mode, connections, requests, findings by rule and the top
//! talkers (redirected connections by pod). The `status` command prints
//! it for a person, or as is with `--json`.
use std::{
    io::Read as _,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt as _, net::UnixListener};
use tokio_util::sync::CancellationToken;

use super::{Admin, STATS_TOP};
use crate::redirect::pods::PodIndex;

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// What the kernel redirect covers.
#[derive(Clone)]
pub struct Coverage {
    /// The cgroup the programs are attached to (relative to the cgroup2 mount).
    pub cgroup: String,
    /// `--pod-selector`, when only selected pods are covered.
    pub pod_selector: Option<String>,
    /// The covered containers (pod-selector mode).
    pub pods: Option<Arc<PodIndex>>,
    /// `open` or `closed`.
    pub fail_mode: &'static str,
}

impl std::fmt::Debug for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coverage")
            .field("cgroup", &self.cgroup)
            .field("pod_selector", &self.pod_selector)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The `status` document.
    pub fn status_doc(&self) -> Value {
        let health = self.health(&self.status.load());
        let m = &self.metrics;
        let coverage = (**self.coverage.load()).clone();
        // Pod cgroups (what the kernel covers) and their containers.
        let index = coverage
            .as_ref()
            .and_then(|c| c.pods.as_ref())
            .map(|p| p.snapshot());
        let listed = |containers: bool| -> Option<Vec<Value>> {
            let index = index.as_ref()?;
            Some(
                index
                    .iter()
                    .filter(|(_, p)| {
                        if containers {
                            !p.container.is_empty()
                        } else {
                            p.is_pod
                        }
                    })
                    .map(|(id, p)| {
                        let mut v =
                            json!({"namespace": p.namespace, "pod": p.pod, "cgroup_id": id});
                        if containers {
                            v["container"] = json!(p.container);
                        }
                        v
                    })
                    .collect(),
            )
        };
        let top = |t: &crate::telemetry::top::TopCounts| -> Value {
            t.top(STATS_TOP)
                .into_iter()
                .map(|(name, count)| json!({ "name": name, "count": count }))
                .collect()
        };
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": health["uptime_seconds"],
            "mode": health["mode"],
            "mode_source": health["mode_source"],
            "kill_switch_active": health["kill_switch_active"],
            "config_generation": health["config_generation"],
            "redirect": coverage.as_ref().map(|c| json!({
                "cgroup": c.cgroup,
                "pod_selector": c.pod_selector,
                "fail_mode": c.fail_mode,
                "covered_pods": listed(false),
                "covered_containers": listed(true),
            })),
            "connections": health["connections"],
            "requests": health["requests"],
            "findings_by_rule": top(&m.top_rules),
            "top_talkers": top(&m.top_talkers),
            "top_blocked_domains": top(&m.blocked_hosts),
        })
    }
}

/// Binds `<state_dir>/admin.sock` (a stale one is replaced), root only.
pub fn bind(state_dir: &Path) -> anyhow::Result<(UnixListener, PathBuf)> {
    let path = state_dir.join(SOCKET_NAME);
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("admin socket {}: cannot listen", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("admin socket {}: chmod", path.display()))?;
    Ok((listener, path))
}

/// Answers each connection with the status document until `shutdown`
/// (the caller removes the socket file when it stops).
pub async fn serve(listener: UnixListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(target: "pipelock::admin", error = %e, "admin socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut doc = admin.status_doc().to_string();
        doc.push('\n');
        tokio::spawn(async move {
            let write = async {
                stream.write_all(doc.as_bytes()).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
        });
    }
}

/// `pipelock-agent status`: reads the document from the agent whose state
/// directory is `state_dir` and prints it (as is with `json`).
pub fn run(state_dir: &Path, json: bool) -> anyhow::Result<()> {
    let doc = fetch(&state_dir.join(SOCKET_NAME), Duration::from_secs(5))?;
    if json {
        println!("{doc}");
    } else {
        print!("{}", render(&doc));
    }
    Ok(())
}

/// Reads the status document from the socket at `path`.
pub fn fetch(path: &Path, timeout: Duration) -> anyhow::Result<Value> {
    let s = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is it running, with this --state-dir?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    s.take(16 << 20)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a status document", path.display()))
}

/// The document for a person.
pub fn render(d: &Value) -> String {
    use std::fmt::Write as _;
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipelock-agent {}, up {:.0} s, config generation {}",
        s(&d["version"]),
        d["uptime_seconds"].as_f64().unwrap_or(0.0),
        s(&d["config_generation"])
    );
    let _ = writeln!(
        out,
        "mode:        {} (from {})",
        s(&d["mode"]),
        s(&d["mode_source"])
    );
    if d["kill_switch_active"] == true {
        let _ = writeln!(out, "kill switch: ACTIVE (every request refused)");
    }
    match d["redirect"].as_object() {
        None => {
            let _ = writeln!(out, "redirect:    none (plain proxy, no eBPF)");
        }
        Some(r) => {
            let _ = writeln!(out, "redirect:    attached at cgroup {}", s(&r["cgroup"]));
            let _ = writeln!(out, "fail mode:   {}", s(&r["fail_mode"]));
            if let Some(sel) = r["pod_selector"].as_str() {
                let pods = r["covered_pods"].as_array().cloned().unwrap_or_default();
                let containers = r["covered_containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "covered:     {} pod(s) selected by {sel}, {} container(s) started",
                    pods.len(),
                    containers.len()
                );
                for p in pods {
                    let _ = writeln!(
                        out,
                        "  {}/{}  (cgroup {})",
                        s(&p["namespace"]),
                        s(&p["pod"]),
                        s(&p["cgroup_id"])
                    );
                    for c in containers
                        .iter()
                        .filter(|c| c["namespace"] == p["namespace"] && c["pod"] == p["pod"])
                    {
                        let _ = writeln!(
                            out,
                            "    {}  (cgroup {})",
                            s(&c["container"]),
                            s(&c["cgroup_id"])
                        );
                    }
                }
            } else {
                let _ = writeln!(out, "covered:     every process in that cgroup's subtree");
            }
        }
    }
    let c = &d["connections"];
    let _ = writeln!(
        out,
        "connections: {} accepted, {} active, {} refused",
        s(&c["accepted"]),
        s(&c["active"]),
        s(&c["refused"])
    );
    let r = &d["requests"];
    let _ = writeln!(
        out,
        "requests:    {} total, {} allowed, {} blocked, {} errors",
        s(&r["total"]),
        s(&r["allowed"]),
        s(&r["blocked"]),
        s(&r["errors"])
    );
    for (title, key) in [
        ("findings by rule", "findings_by_rule"),
        ("top talkers (redirected connections)", "top_talkers"),
        ("top blocked domains", "top_blocked_domains"),
    ] {
        let list = d[key].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            let _ = writeln!(out, "{title}: none");
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for e in list {
            let _ = writeln!(out, "  {:>8}  {}", s(&e["count"]), s(&e["name"]));
        }
    }
    out
}
