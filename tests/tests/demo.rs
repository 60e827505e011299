//! `cargo xtask demo` in CI: runs the demo binary (real agent, throwaway
//! cgroup, Ruby Net::HTTP clients) and checks that its three outcomes
//! happened, that it exits 0, and that it removed its cgroup.
use std::process::Command;

use pipelock_tests::require_root;

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn demo_shows_block_pass_and_cut_and_cleans_up() {
    require_root();
    let out = Command::new("timeout")
        .arg("300")
        .arg(env!("CARGO_BIN_EXE_pipelock-demo"))
        .output()
        .expect("running pipelock-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("exit: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(out.status.success(), "{all}");
    for want in [
        "[ok] blocked by the agent with 403",
        "\"rule_id\":\"dlp.github_token\"",
        "[ok] passed with 200",
        "[ok] cut by the agent",
        "\"class\":\"injection\"",
        "All three outcomes as expected",
    ] {
        assert!(stdout.contains(want), "missing {want:?}\n{all}");
    }
    assert!(!stdout.contains("[FAIL]"), "{all}");
    // The demo prints the token it sends; the agent's finding lines must not.
    let token_finding = stdout
        .lines()
        .find(|l| l.contains("pipelock::finding") && l.contains("dlp.github_token"))
        .unwrap_or_else(|| panic!("no token finding line\n{all}"));
    assert!(
        token_finding.contains("ghp_[REDACTED") && !token_finding.contains("FakeDemoToken"),
        "finding not redacted: {token_finding}"
    );
    let cgroup = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("cgroup"))
        .and_then(|l| l.trim().strip_suffix("(throwaway)"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no cgroup line\n{all}"));
    assert!(
        !std::path::Path::new(cgroup).exists(),
        "the demo left its cgroup {cgroup} behind"
    );
}
