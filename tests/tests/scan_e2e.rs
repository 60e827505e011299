//! Scanning end to end through the real agent under the real kernel
//! redirect: secrets in request bodies are blocked (strict, balanced) or only
//! logged (audit); injected responses are cut; clean traffic is untouched.
//! A request caught by the redirect, one sent through the forward proxy and
//! one from a covered pod to the forward proxy get the same findings (the
//! last scanned once). Plaintext HTTP upstream here; the HTTPS variants
//! live in tls.rs.
use std::{net::SocketAddr, time::Duration};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, ClientRun, Place},
    free_port, require_root,
    upstream::{INJECTION, Upstream, hex, pattern_sha256},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(60);
/// An Anthropic-shaped key (critical, high confidence); not a real one.
const SECRET: &str = "sk-ant-api03-Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoViXnMtQrSy";

fn start(mode: &str) -> (Agent, Upstream, TestCgroup) {
    let cg = TestCgroup::new(&format!("scan-{mode}"));
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect.to_string(),
        "--mode",
        mode,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (Agent::start(&args), up, cg)
}

fn curl(cg: &TestCgroup, args: &[&str]) -> ClientRun {
    let mut all = vec!["-sS", "--max-time", "20"];
    all.extend_from_slice(args);
    client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        "curl",
        &all,
        TIMEOUT,
    )
}

/// POSTs `body` with curl from the cgroup: (response body, status code).
fn post(cg: &TestCgroup, body: &str, url: &str) -> (String, String) {
    let run = curl(cg, &["-w", "\n%{http_code}", "--data-binary", body, url]);
    assert!(run.ok(), "curl failed: {run:?}");
    let (resp, code) = run
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status line: {run:?}"));
    (resp.to_owned(), code.to_owned())
}

fn findings(agent: &Agent) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["target"] == "pipelock::finding")
        .collect()
}

fn wait_finding(agent: &Agent, pred: impl Fn(&Value) -> bool) -> Value {
    let line = agent.wait_for_line(Duration::from_secs(10), |l| {
        serde_json::from_str::<Value>(l)
            .map(|v| v["target"] == "pipelock::finding" && pred(&v))
            .unwrap_or(false)
    });
    let line =
        line.unwrap_or_else(|| panic!("no matching finding; agent log:\n{}", agent.output()));
    serde_json::from_str(&line).unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn secret_in_request_body_is_blocked_in_strict_and_balanced() {
    require_root();
    for mode in ["strict", "balanced"] {
        let (agent, up, cg) = start(mode);
        let body = format!("{{\"note\":\"my key is {SECRET}\"}}");
        let (resp, code) = post(&cg, &body, &up.url("/leak"));
        assert_eq!(code, "403", "{mode}: {resp}");
        let json: Value =
            serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{mode}: {resp:?}: {e}"));
        assert!(
            json["rule_ids"]
                .to_string()
                .contains("dlp.anthropic_api_key"),
            "{mode}: {json}"
        );
        assert!(
            !resp.contains(SECRET),
            "{mode}: block answer leaks the secret"
        );
        assert!(
            !up.seen().contains(&"/leak".to_string()),
            "{mode}: upstream got the request"
        );
        let f = wait_finding(&agent, |f| f["rule_id"] == "dlp.anthropic_api_key");
        assert_eq!(f["direction"], "request");
        assert_eq!(f["action"], "block");
        assert_eq!(f["comm"], "curl");
        assert_eq!(f["cgroup_id"], cg.id());
        assert!(
            !agent.output().contains(SECRET),
            "{mode}: the agent log holds the secret"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn secrets_deep_inside_large_bodies_are_blocked() {
    // Tens of KB of prose around each secret, so the scan crosses many
    // chunks and its block classifier skips most of the text.
    require_root();
    let (agent, up, cg) = start("strict");
    let prose = "Version 2 of the licence, see section 7 for the terms and the \
                 conditions that apply to copies made before 2019-03-14. "
        .repeat(200);
    let b64_key = "c2stYW50LWFwaTAzLVpxM3hUN3ZMbU40cFI4c0syd1liQzZkRjBoSjlnQTFlVW9WaVhuTXRRclN5";
    for (i, (secret, rule)) in [
        (
            "scheme spot photo card baby mountain device kick cradle pact join borrow",
            "dlp.crypto_seed_phrase",
        ),
        ("4111 1111 1111 1111", "dlp.credit_card"),
        (b64_key, "dlp.anthropic_api_key"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = format!("{prose}\n{secret}\n{prose}");
        let path = format!("/deep{i}");
        let (resp, code) = post(&cg, &body, &up.url(&path));
        assert_eq!(code, "403", "{rule}: {resp}");
        assert!(resp.contains(rule), "{rule}: {resp}");
        // The head may have gone ahead (bodies stream), the secret not.
        wait_finding(&agent, |f| f["rule_id"] == rule);
        assert!(
            !up.body_seen_containing(secret.as_bytes()),
            "{rule}: the secret reached the upstream"
        );
    }
    // The phrase one word per line in a JSON chat request, as an LLM client
    // sends it: the line breaks arrive as `\n` escapes.
    let phrase =
        "scheme\nspot\nphoto\ncard\nbaby\nmountain\ndevice\nkick\ncradle\npact\njoin\nborrow";
    let content = format!("{prose}\nmy wallet words:\n{phrase}\n{prose}");
    let body =
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]})
            .to_string();
    let escaped = phrase.replace('\n', "\\n");
    assert!(body.contains(&escaped), "the JSON escapes the line breaks");
    let (resp, code) = post(&cg, &body, &up.url("/deep-json"));
    assert_eq!(code, "403", "JSON seed phrase: {resp}");
    assert!(resp.contains("dlp.crypto_seed_phrase"), "{resp}");
    assert!(
        !up.body_seen_containing(escaped.as_bytes()),
        "the JSON seed phrase reached the upstream"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn secret_in_request_body_passes_but_is_logged_in_audit() {
    require_root();
    let (agent, up, cg) = start("audit");
    let body = format!("token={SECRET}&x=1");
    let run = curl(&cg, &["--data-binary", &body, &up.url("/audit")]);
    assert!(run.ok(), "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        json["body_sha256"],
        hex(&Sha256::digest(body.as_bytes())),
        "body altered"
    );
    let f = wait_finding(&agent, |f| f["rule_id"] == "dlp.anthropic_api_key");
    assert_eq!(f["action"], "log");
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
fn injected_responses_are_cut_in_strict_mode() {
    require_root();
    let (agent, up, cg) = start("strict");
    for path in ["/inject", "/inject-gzip", "/sse-inject", "/inject-json"] {
        let run = curl(&cg, &["--compressed", &up.url(path)]);
        assert!(
            !run.stdout.contains("API keys"),
            "{path}: injected text reached the client: {run:?}"
        );
        let f = wait_finding(&agent, |f| {
            f["direction"] == "response" && f["path"] == path
        });
        assert_eq!(f["action"], "block", "{f}");
        assert_eq!(f["class"], "injection", "{f}");
    }
    // Clean traffic through the same agent is untouched, byte for byte.
    let n: u64 = 1 << 20;
    let out = std::env::temp_dir().join(format!("plk-clean-{}", std::process::id()));
    let path = out.to_str().unwrap();
    let run = curl(&cg, &["-o", path, &up.url(&format!("/bytes/{n}"))]);
    assert!(run.ok(), "{run:?}");
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(hex(&Sha256::digest(&bytes)), pattern_sha256(n));
    assert!(
        !findings(&agent)
            .iter()
            .any(|f| f["path"] == format!("/bytes/{n}")),
        "false positive on clean bytes"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn injected_responses_pass_in_audit_mode_but_are_logged() {
    require_root();
    let (agent, up, cg) = start("audit");
    let run = curl(&cg, &["--compressed", &up.url("/inject-gzip")]);
    assert!(run.ok(), "{run:?}");
    assert!(
        run.stdout.contains(INJECTION),
        "audit must not alter: {run:?}"
    );
    let f = wait_finding(&agent, |f| f["direction"] == "response");
    assert_eq!(f["action"], "log");
}

/// What a finding says about the traffic (not where it came in).
fn verdict_of(f: &Value) -> String {
    [
        "rule_id",
        "class",
        "severity",
        "confidence",
        "direction",
        "location",
        "action",
    ]
    .iter()
    .map(|k| f[*k].as_str().unwrap_or("?").to_owned())
    .collect::<Vec<_>>()
    .join(" ")
}

fn verdicts_for(agent: &Agent, path: &str) -> Vec<String> {
    let mut v: Vec<String> = findings(agent)
        .iter()
        .filter(|f| f["path"] == path)
        .map(verdict_of)
        .collect();
    v.sort();
    v
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn redirected_and_forward_proxied_requests_find_the_same() {
    require_root();
    let cg = TestCgroup::new("scan-same");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let forward = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Pipelock's default leaves the forward proxy off; Sure's chart turns it on.
    let config = std::env::temp_dir().join(format!(
        "plk-same-{}-{}.yaml",
        std::process::id(),
        pipelock_tests::unique_index()
    ));
    std::fs::write(&config, "forward_proxy:\n  enabled: true\n").unwrap();
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect.to_string(),
        "--listen",
        &forward.to_string(),
        "--mode",
        "strict",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start(&args);
    let body = format!("{{\"note\":\"key {SECRET} and card 4111 1111 1111 1111\"}}");
    let proxy = format!("http://{forward}");

    // 1. Caught by the kernel redirect.
    let (_, code) = post(&cg, &body, &up.url("/same-redirected"));
    assert_eq!(code, "403");
    // 2. Through the forward proxy from outside the covered cgroup.
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(["-x", &proxy, "--data-binary", &body])
    .arg(up.url("/same-forward"));
    let run = client::run_command(cmd, TIMEOUT);
    assert_eq!(run.stdout.trim(), "403", "{run:?}");
    // 3. A covered pod that uses the forward proxy: redirected to it, served
    //    by it, scanned once.
    let run = curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &proxy,
            "--data-binary",
            &body,
            &up.url("/same-both"),
        ],
    );
    assert_eq!(run.stdout.trim(), "403", "{run:?}");

    wait_finding(&agent, |f| f["path"] == "/same-both");
    let redirected = verdicts_for(&agent, "/same-redirected");
    assert!(
        redirected.len() >= 2,
        "expected the key and the card: {redirected:?}\n{}",
        agent.output()
    );
    assert_eq!(verdicts_for(&agent, "/same-forward"), redirected);
    assert_eq!(
        verdicts_for(&agent, "/same-both"),
        redirected,
        "scanned once"
    );
    let both: Vec<Value> = findings(&agent)
        .into_iter()
        .filter(|f| f["path"] == "/same-both")
        .collect();
    assert!(
        both.iter()
            .all(|f| f["listener"] == "forward" && f["comm"] == "curl"),
        "the covered pod keeps its attribution on the forward listener: {both:?}"
    );
    assert!(
        up.seen().iter().all(|p| !p.starts_with("/same-")),
        "{:?}",
        up.seen()
    );
}
