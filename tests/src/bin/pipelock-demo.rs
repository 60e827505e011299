//! `cargo xtask demo`: a first run of pipelock-agent on a fresh machine (as
//! root). Creates a throwaway cgroup and an HTTPS upstream on loopback (with
//! its own test CA), starts the real agent attached to that cgroup, and runs
//! Ruby `Net::HTTP` clients inside the cgroup (trusting the agent's CA via
//! `SSL_CERT_FILE`) to show:
//!   (a) a POST carrying a (fake) GitHub token blocked with 403, and the
//!       agent's finding log line, redacted as logged;
//!   (b) a clean POST passing with 200;
//!   (c) a response carrying a prompt injection cut by the agent.
//! Everything is removed at the end, also on failure or Ctrl-C; the exit
//! status is non-zero unless all three happened as expected.
//!
//! Usage: `pipelock-demo [--mode strict|balanced]`; the agent binary is
//! `$PIPELOCK_AGENT_BIN`, else `target/debug/pipelock-agent`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use pipelock_tests::{
    agent::{Agent, agent_bin},
    cgroup::TestCgroup,
    client::{self, ClientRun, Place},
    free_port,
    tls_harness::temp_dir,
    tls_upstream::{HttpsUpstream, INJECTION, TestCa},
};
use serde_json::Value;

/// The name the clients call; the upstream's certificate is issued for it.
const HOST: &str = "api.demo.test";
/// A GitHub-token-shaped string (`ghp_` + 36 characters); not a real token.
const FAKE_TOKEN: &str = concat!("ghp_", "FakeDemoTokenForPipelock", "0123456789ab");
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One Ruby Net::HTTP call: `ruby -e NET_HTTP <url> [<POST body>]`. Prints
/// `HTTP <code>` and the body, or `ERROR <class>: <message>` when the call
/// fails (a cut response ends that way).
const NET_HTTP: &str = r#"
require "net/http"; require "uri"
u = URI(ARGV[0])
h = Net::HTTP.new(u.host, u.port)
h.ipaddr = "127.0.0.1"   # no DNS: the name is only for SNI and the certificate
h.use_ssl = true          # trusts SSL_CERT_FILE (the agent's CA)
h.open_timeout = 10
h.read_timeout = 20
begin
  r = h.start do |c|
    if ARGV[1]
      req = Net::HTTP::Post.new(u.path, "Content-Type" => "application/json")
      req.body = ARGV[1]
      c.request(req)
    else
      c.get(u.path)
    end
  end
  puts "HTTP #{r.code}"
  print r.body
rescue => e
  puts "ERROR #{e.class}: #{e.message}"
end
"#;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let mode = match parse_mode() {
        Ok(m) => m,
        Err(msg) => {
            eprintln!("pipelock-demo: {msg}\nusage: pipelock-demo [--mode strict|balanced]");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "pipelock-demo: needs root: it creates a cgroup and attaches the agent's eBPF \
             programs to it. Run `cargo xtask demo` as root."
        );
        return ExitCode::from(2);
    }
    // Ctrl-C / SIGTERM: finish the current step and clean up rather than
    // leaving the cgroup behind (the handler is reset in the children on exec).
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.expect("installing a signal handler");
    }
    match std::panic::catch_unwind(|| run(mode)) {
        Ok(0) => {
            println!("\nAll three outcomes as expected; everything the demo created is removed.");
            ExitCode::SUCCESS
        }
        Ok(failed) => {
            println!(
                "\nDEMO FAILED: {failed} of 3 outcomes not as expected (see above); \
                 everything the demo created is removed."
            );
            ExitCode::FAILURE
        }
        Err(_) => {
            println!(
                "\nDEMO FAILED: it stopped on the error above; everything it created is removed."
            );
            ExitCode::FAILURE
        }
    }
}

fn parse_mode() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok("strict".into()),
        [flag, mode] if flag == "--mode" && (mode == "strict" || mode == "balanced") => {
            Ok(mode.clone())
        }
        _ => Err(format!("unexpected arguments {args:?}")),
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the three steps; returns how many did not go as expected. Panics
/// (after printing why) when the set-up itself fails; what was created is
/// dropped, hence removed, on the way out. Declaration order makes the
/// agent stop first (its programs detach), then the cgroup, the upstream
/// and the files go.
fn run(mode: String) -> usize {
    let dir = TempDir(temp_dir("demo"));
    let bin = agent_bin();
    let bin = bin.canonicalize().unwrap_or(bin);
    assert!(
        bin.exists(),
        "agent binary {} missing: build it with `cargo build -p pipelock-agent` (cargo xtask demo does)",
        bin.display()
    );

    // The upstream: an HTTPS server on loopback whose certificate (for
    // api.demo.test) comes from a test CA the agent is told to trust.
    let upstream_ca = TestCa::new("pipelock demo upstream CA");
    let upstream_ca_file = dir.0.join("upstream-ca.pem");
    upstream_ca.write_pem(&upstream_ca_file);
    let up = HttpsUpstream::start(
        &upstream_ca,
        &[HOST],
        &[b"h2", b"http/1.1"],
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    let cg = TestCgroup::new("demo");

    // The agent's CA: created in the state dir by `ca export` and reused by
    // the agent; the clients trust it through SSL_CERT_FILE.
    let state = dir.0.join("state");
    let agent_ca = dir.0.join("pipelock-ca.pem");
    export_ca(&bin, &state, &agent_ca);

    let redirect = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect,
        "--mode",
        &mode,
        "--upstream-ca",
        &upstream_ca_file.display().to_string(),
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    println!("pipelock-agent demo");
    println!("  cgroup    {} (throwaway)", cg.dir().display());
    println!(
        "  upstream  https://{HOST}:{} on 127.0.0.1 (certificate from a test CA)",
        up.addr.port()
    );
    println!("  agent     {} {}", bin.display(), args.join(" "));
    println!(
        "  clients   ruby Net::HTTP inside the cgroup, SSL_CERT_FILE={}",
        agent_ca.display()
    );
    let mut agent = Agent::start(&args);
    println!(
        "  agent attached (pid {}): connections from the cgroup now go through it\n",
        agent.pid()
    );

    let place = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    let url = |path: &str| format!("https://{HOST}:{}{path}", up.addr.port());
    let ruby = |args: &[&str]| {
        let mut all = vec!["-e", NET_HTTP];
        all.extend_from_slice(args);
        let mut cmd = client::command(place, "ruby", &all);
        cmd.env("SSL_CERT_FILE", &agent_ca);
        client::run_command(cmd, CLIENT_TIMEOUT)
    };

    let mut failed = 0;
    let steps: [(&str, &dyn Fn() -> bool); 3] = [
        (
            "(a) Ruby Net::HTTP POST carrying a GitHub token (a fake one)",
            &|| step_secret(&agent, &ruby, &url),
        ),
        ("(b) Ruby Net::HTTP clean POST", &|| step_clean(&ruby, &url)),
        ("(c) a response carrying a prompt injection", &|| {
            step_injection(&agent, &ruby, &url)
        }),
    ];
    let total = steps.len();
    for (done, (title, step)) in steps.into_iter().enumerate() {
        if INTERRUPTED.load(Ordering::Relaxed) {
            println!("interrupted: skipping the remaining steps and cleaning up");
            failed += total - done;
            break;
        }
        println!("{title}");
        if !step() {
            failed += 1;
        }
        println!();
    }
    if agent.output().contains(FAKE_TOKEN) {
        println!(
            "[FAIL] the agent's log holds the token itself (it must only log a redacted excerpt)"
        );
        failed += 1;
    }
    if failed > 0 {
        println!("agent log:\n{}", agent.output());
    }
    let status = agent.stop();
    println!(
        "agent stopped ({})",
        status.map_or("killed".into(), |s| s.to_string())
    );
    failed
}

/// Writes the agent's CA certificate (`pipelock-agent ca export`) to `out`.
fn export_ca(bin: &Path, state: &Path, out: &Path) {
    let res = Command::new(bin)
        .args(["ca", "export", "--state-dir"])
        .arg(state)
        .output()
        .unwrap_or_else(|e| panic!("running {} ca export: {e}", bin.display()));
    assert!(
        res.status.success() && res.stdout.starts_with(b"-----BEGIN CERTIFICATE-----"),
        "{} ca export failed ({}): {}",
        bin.display(),
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::write(out, &res.stdout).expect("writing the agent CA");
}

/// Prints what the client printed, indented.
fn show(run: &ClientRun) {
    for l in run.stdout.lines() {
        println!("    ruby> {l}");
    }
    for l in run.stderr.lines() {
        println!("    ruby stderr> {l}");
    }
    if run.code != Some(0) {
        println!("    ruby exit: {:?}", run.code);
    }
}

fn verdict(ok: bool, good: &str, bad: &str) -> bool {
    if ok {
        println!("  [ok] {good}");
    } else {
        println!("  [FAIL] {bad}");
    }
    ok
}

/// The first finding log line matching `pred` (waits up to 10 s).
fn finding(agent: &Agent, pred: impl Fn(&Value) -> bool) -> Option<String> {
    agent.wait_for_line(Duration::from_secs(10), |l| {
        serde_json::from_str::<Value>(l)
            .map(|v| v["target"] == "pipelock::finding" && pred(&v))
            .unwrap_or(false)
    })
}

fn step_secret(
    agent: &Agent,
    ruby: &dyn Fn(&[&str]) -> ClientRun,
    url: &dyn Fn(&str) -> String,
) -> bool {
    // `/sha` answers only once it has the whole body, so the agent's 403 is
    // always first (an upstream that streams its answer while the body is
    // still coming, like `/echo`, gets the exchange cut instead).
    let body = format!(r#"{{"repo":"sure","ci_token":"{FAKE_TOKEN}"}}"#);
    println!("  POST {} {body}", url("/sha"));
    let run = ruby(&[&url("/sha"), &body]);
    show(&run);
    let blocked = run.stdout.starts_with("HTTP 403")
        && run.stdout.contains("dlp.github_token")
        && !run.stdout.contains(FAKE_TOKEN);
    let line = finding(agent, |f| {
        f["rule_id"] == "dlp.github_token" && f["direction"] == "request" && f["action"] == "block"
    });
    if let Some(l) = &line {
        println!("  agent finding (as logged, redacted):\n    {l}");
    }
    verdict(
        blocked && line.is_some(),
        "blocked by the agent with 403; its finding log line shows the token redacted",
        "expected a 403 naming dlp.github_token and a blocking finding in the agent log",
    )
}

fn step_clean(ruby: &dyn Fn(&[&str]) -> ClientRun, url: &dyn Fn(&str) -> String) -> bool {
    let body = r#"{"repo":"sure","status":"deploy finished"}"#;
    println!("  POST {} {body}", url("/echo"));
    let run = ruby(&[&url("/echo"), body]);
    show(&run);
    verdict(
        run.stdout == format!("HTTP 200\n{body}"),
        "passed with 200, body echoed unchanged by the upstream",
        "expected HTTP 200 with the body echoed back",
    )
}

fn step_injection(
    agent: &Agent,
    ruby: &dyn Fn(&[&str]) -> ClientRun,
    url: &dyn Fn(&str) -> String,
) -> bool {
    println!(
        "  GET {} (the upstream answers with \"{INJECTION}\")",
        url("/injection")
    );
    let run = ruby(&[&url("/injection")]);
    show(&run);
    let kept_out =
        !run.stdout.contains("Ignore all previous instructions") && !run.stdout.is_empty();
    let line = finding(agent, |f| {
        f["direction"] == "response" && f["class"] == "injection" && f["action"] == "block"
    });
    if let Some(l) = &line {
        println!("  agent finding (as logged):\n    {l}");
    }
    verdict(
        kept_out && line.is_some(),
        "cut by the agent mid-response: the injected text never reached the client",
        "expected the response cut (no injected text at the client) and a blocking injection finding",
    )
}
