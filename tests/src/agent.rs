//! Runs the real `pipelock-agent` binary with `--log-format json`, collects
//! its log lines, and stops it with SIGTERM.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Path of the agent binary: `$PIPELOCK_AGENT_BIN`, else target/debug.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PIPELOCK_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/pipelock-agent")
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
    /// When the last line arrived.
    last: Option<Instant>,
}

/// How long the agent's output must stay quiet before [`Agent::output`] and
/// [`Agent::records`] read it: the agent writes its lines from a thread of
/// its own, so a line logged before a client returned may still be on its
/// way (and a line that must not appear would be looked for too early).
const SETTLE: Duration = Duration::from_millis(15);
/// The longest [`Agent::output`] waits for that quiet (an agent that logs
/// without pause is read as it is).
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    log: Arc<(Mutex<Log>, Condvar)>,
    state_dir: Option<PathBuf>,
}

impl Agent {
    /// Starts the agent with `args` (plus `--log-format json`) and waits until
    /// it reports that it is attached. Panics with its output if it exits first.
    pub fn start(args: &[String]) -> Agent {
        Agent::start_via(&[], args)
    }

    /// Like [`Agent::start`], with the agent run by `wrapper` (a program and
    /// its arguments, e.g. `unshare --pid --fork`), which gets the agent's
    /// path and arguments appended.
    pub fn start_via(wrapper: &[&str], args: &[String]) -> Agent {
        let mut agent = Agent::spawn_via(wrapper, args);
        let ready = agent.wait_for_line(Duration::from_secs(30), |l| {
            l.contains("pipelock-agent attached")
        });
        if ready.is_none() {
            let status = agent.stop();
            panic!(
                "agent did not attach ({status:?}); its output:\n{}",
                agent.output()
            );
        }
        agent
    }

    /// Spawns the agent without waiting for anything. Unless `args` name a
    /// `--state-dir`, the agent gets a fresh one of its own (never the
    /// system's /var/lib/pipelock), removed on drop.
    pub fn spawn(args: &[String]) -> Agent {
        Agent::spawn_via(&[], args)
    }

    /// Like [`Agent::spawn`], run by `wrapper` (see [`Agent::start_via`]).
    pub fn spawn_via(wrapper: &[&str], args: &[String]) -> Agent {
        let bin = agent_bin();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).args(["--log-format", "json"]);
        let state_dir = (!args.iter().any(|a| a == "--state-dir")).then(|| {
            let dir = std::env::temp_dir().join(format!(
                "plk-agent-state-{}-{}",
                std::process::id(),
                crate::unique_index()
            ));
            cmd.arg("--state-dir").arg(&dir);
            dir
        });
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawning {}: {e} (build it with cargo xtask test)",
                    bin.display()
                )
            });
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(BufReader::new(out), log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(BufReader::new(err), log.clone()));
        }
        let done = log.clone();
        std::thread::spawn(move || {
            for r in readers {
                let _ = r.join();
            }
            let (m, cv) = &*done;
            m.lock().expect("log lock").closed = true;
            cv.notify_all();
        });
        Agent {
            child: Some(child),
            log,
            state_dir,
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until no line has arrived for [`SETTLE`] (at most
    /// [`SETTLE_MAX`]), so lines the agent logged before now have been read.
    fn settled(&self) -> std::sync::MutexGuard<'_, Log> {
        let deadline = Instant::now() + SETTLE_MAX;
        let (m, cv) = &*self.log;
        let mut log = m.lock().expect("log lock");
        loop {
            let now = Instant::now();
            let quiet = log.last.map_or(SETTLE, |t| now.duration_since(t));
            if log.closed || quiet >= SETTLE || now >= deadline {
                return log;
            }
            let wait = (SETTLE - quiet).min(deadline - now);
            log = cv.wait_timeout(log, wait).expect("log lock").0;
        }
    }

    /// All output lines so far (once the output has settled).
    pub fn output(&self) -> String {
        self.settled().lines.join("\n")
    }

    /// Output lines parsed as JSON (non-JSON lines skipped), once the output
    /// has settled.
    pub fn records(&self) -> Vec<Value> {
        let log = self.settled();
        log.lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Per-connection records (`target == "pipelock::conn"`).
    pub fn conn_records(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["target"] == "pipelock::conn")
            .collect()
    }

    /// Waits until a line satisfies `pred`; returns it.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut log = m.lock().expect("log lock");
        loop {
            if let Some(l) = log.lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if log.closed || now >= deadline {
                return None;
            }
            log = cv.wait_timeout(log, deadline - now).expect("log lock").0;
        }
    }

    /// Waits for a connection record matching `pred`.
    pub fn wait_for_conn(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let line = self.wait_for_line(timeout, |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["target"] == "pipelock::conn" && pred(&v))
                .unwrap_or(false)
        })?;
        serde_json::from_str(&line).ok()
    }

    /// Sends SIGTERM and waits (up to 20 s, then SIGKILL) for the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.wait_closed();
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait().ok();
                self.wait_closed();
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own (e.g. a start-up error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.wait_closed();
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn wait_closed(&self) {
        let (m, cv) = &*self.log;
        let mut log = m.lock().expect("log lock");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log.closed && Instant::now() < deadline {
            log = cv
                .wait_timeout(log, Duration::from_millis(100))
                .expect("log lock")
                .0;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.state_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn collect<R: BufRead + Send + 'static>(
    reader: R,
    log: Arc<(Mutex<Log>, Condvar)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let (m, cv) = &*log;
            let mut log = m.lock().expect("log lock");
            log.lines.push(line);
            log.last = Some(Instant::now());
            drop(log);
            cv.notify_all();
        }
    })
}
