//! Client processes placed in a test cgroup (and optionally a test network
//! namespace) before they exec, with a bounded run time.
use std::{
    ffi::CString,
    io::Read,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{cgroup::TestCgroup, netns::TestNetns};

/// What a client run produced.
#[derive(Debug)]
pub struct ClientRun {
    /// Exit code (None: killed by signal or timeout).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Pid of the process (the client itself: wrappers used here exec).
    pub pid: u32,
}

impl ClientRun {
    /// True when the client exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Where a client runs.
#[derive(Clone, Copy, Default)]
pub struct Place<'a> {
    /// Cgroup to join before exec (None: stay where the test runs).
    pub cgroup: Option<&'a TestCgroup>,
    /// Network namespace to run in.
    pub netns: Option<&'a TestNetns>,
}

/// Builds the command for `program args` at `place` (not started).
pub fn command(place: Place<'_>, program: &str, args: &[&str]) -> Command {
    let mut cmd = match place.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, program]).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    if let Some(cg) = place.cgroup {
        let procs = CString::new(cg.procs_file().as_os_str().as_bytes()).expect("no NUL in path");
        // SAFETY: the closure only calls async-signal-safe functions (open,
        // write, close) on data prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if r != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Runs `program args` at `place`, killing it after `timeout`.
pub fn run(place: Place<'_>, program: &str, args: &[&str], timeout: Duration) -> ClientRun {
    run_command(command(place, program, args), timeout)
}

/// Runs a command from [`command`] (e.g. with environment variables added),
/// killing it after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> ClientRun {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let pid = child.id();
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    ClientRun {
        code,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        pid,
    }
}

/// curl from the cgroup `cg` with `args`, the response body discarded:
/// `(Some(HTTP status), pid)` when it got an answer, `(None, pid)` when the
/// connection failed. `max_time` bounds curl itself (seconds).
pub fn curl_status(cg: &TestCgroup, max_time: u32, args: &[&str]) -> (Option<String>, u32) {
    let max_time = max_time.to_string();
    let mut all = vec![
        "-sS",
        "--max-time",
        &max_time,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    let place = Place {
        cgroup: Some(cg),
        netns: None,
    };
    let run = run(place, "curl", &all, Duration::from_secs(60));
    (run.ok().then(|| run.stdout.trim().to_owned()), run.pid)
}
