//! A plain-mode agent (no cgroup: no eBPF, no root) started as Sure's chart
//! starts Pipelock (`run --config … --listen … --mcp-listen …
//! --mcp-upstream … --state-dir …`) on free loopback ports, in a directory
//! of its own that is removed on drop: what the forward-proxy and MCP tests
//! share.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{agent::Agent, free_port, unique_index};

/// The `pipelock.yaml` Sure's chart renders.
pub const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../pipelock-agent/src/config/testdata/sure-chart.yaml"
);

/// How long the agent may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running plain-mode agent; stopped and its directory removed on drop.
pub struct PlainAgent {
    pub agent: Agent,
    /// The forward listener (`/health`, `/metrics`).
    pub fwd_port: u16,
    /// The MCP listener.
    pub mcp_port: u16,
    /// The agent's directory (its state in [`PlainAgent::state_dir`]).
    pub dir: PathBuf,
}

/// A fresh directory for one agent of a test; `prefix` names the test file.
pub fn test_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "plk-{prefix}-{}-{}",
        std::process::id(),
        unique_index()
    ));
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

impl PlainAgent {
    /// The state directory of an agent in `dir` (to prepare it, e.g. with
    /// `ca export`, before [`PlainAgent::start`]).
    pub fn state_dir(dir: &Path) -> PathBuf {
        dir.join("state")
    }

    /// Starts the agent in `dir` with `config`, its MCP listener in front
    /// of `mcp_upstream`, and `extra` arguments; waits until a log line
    /// contains `ready`, else panics with the agent's output.
    pub fn start(
        dir: PathBuf,
        config: &Path,
        mcp_upstream: &str,
        extra: &[&str],
        ready: &str,
    ) -> Self {
        let fwd_port = free_port();
        let mcp_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{fwd_port}"),
            "--mcp-listen".into(),
            format!("127.0.0.1:{mcp_port}"),
            "--mcp-upstream".into(),
            mcp_upstream.into(),
            "--state-dir".into(),
            Self::state_dir(&dir).to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let agent = Agent::spawn(&args);
        if agent
            .wait_for_line(START_TIMEOUT, |l| l.contains(ready))
            .is_none()
        {
            panic!(
                "agent did not log {ready:?}; its output:\n{}",
                agent.output()
            );
        }
        PlainAgent {
            agent,
            fwd_port,
            mcp_port,
            dir,
        }
    }
}

impl Drop for PlainAgent {
    fn drop(&mut self) {
        self.agent.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
