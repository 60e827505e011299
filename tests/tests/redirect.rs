//! Foundation, end to end and for real: the kernel redirects connections of
//! processes in a throwaway cgroup to the agent binary, which recovers the
//! original destination and attribution and relays the bytes.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, ClientRun, Place},
    free_port,
    netns::TestNetns,
    require_root, unique_index,
    upstream::{Upstream, pattern_sha256},
};
use serde_json::Value;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_WAIT: Duration = Duration::from_secs(10);

fn agent_args(cg: &TestCgroup, redirect: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--cgroup".to_string(),
        cg.rel().to_string(),
        "--redirect-addr".to_string(),
        redirect.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn loopback_redirect() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Splits a scripted client's output: first line its pid, then the upstream's JSON.
fn pid_and_body(run: &ClientRun) -> (u32, Value) {
    let mut lines = run.stdout.lines();
    let pid = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid line in {run:?}"));
    let body = lines.collect::<Vec<_>>().join("\n");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad body {body:?}: {e}"));
    (pid, json)
}

fn curl(place: Place<'_>, url: &str) -> (u32, Value) {
    let run = client::run(
        place,
        "curl",
        &["-sS", "-g", "--max-time", "20", url],
        CLIENT_TIMEOUT,
    );
    assert!(run.ok(), "curl {url} failed: {run:?}");
    let json = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("bad body {:?}: {e}", run.stdout));
    (run.pid, json)
}

fn conn_for(agent: &Agent, tgid: u32) -> Value {
    agent
        .wait_for_conn(LOG_WAIT, |r| r["tgid"] == tgid)
        .unwrap_or_else(|| {
            panic!(
                "no connection record for tgid {tgid}; agent log:\n{}",
                agent.output()
            )
        })
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn clients_in_the_cgroup_are_redirected_with_attribution() {
    require_root();
    let cg = TestCgroup::new("attr");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let place = Place {
        cgroup: Some(&cg),
        netns: None,
    };

    // (name, program, args, expected comm prefix, prints its own pid)
    let py = "import os,sys,urllib.request\nprint(os.getpid())\nprint(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())";
    let clients: [(&str, &str, Vec<&str>, &str); 4] = [
        ("python", "python3", vec!["-c", py], "python"),
        (
            "net_http",
            "ruby",
            vec![
                "-rnet/http",
                "-e",
                "puts Process.pid; puts Net::HTTP.get(URI(ARGV[0]))",
            ],
            "ruby",
        ),
        (
            "httparty",
            "ruby",
            vec![
                "-rhttparty",
                "-e",
                "puts Process.pid; puts HTTParty.get(ARGV[0]).body",
            ],
            "ruby",
        ),
        (
            "faraday",
            "ruby",
            vec![
                "-rfaraday",
                "-e",
                "puts Process.pid; puts Faraday.get(ARGV[0]).body",
            ],
            "ruby",
        ),
    ];
    for (name, program, mut args, comm) in clients {
        let url = up.url(&format!("/client/{name}"));
        args.push(&url);
        let run = client::run(place, program, &args, CLIENT_TIMEOUT);
        assert!(run.ok(), "{name} failed: {run:?}");
        let (pid, body) = pid_and_body(&run);
        assert_eq!(body["path"], format!("/client/{name}"));
        let rec = conn_for(&agent, pid);
        assert_eq!(rec["orig_dst"], up.addr.to_string(), "{name}: {rec}");
        assert_eq!(rec["cgroup_id"], cg.id(), "{name}: {rec}");
        let got_comm = rec["comm"].as_str().unwrap_or_default();
        assert!(got_comm.starts_with(comm), "{name}: comm {got_comm:?}");
        assert!(rec["bytes_up"].as_u64().unwrap_or(0) > 0, "{rec}");
        assert!(rec["bytes_down"].as_u64().unwrap_or(0) > 0, "{rec}");
    }

    let (pid, body) = curl(place, &up.url("/client/curl"));
    assert_eq!(body["path"], "/client/curl");
    let rec = conn_for(&agent, pid);
    assert_eq!(rec["comm"], "curl");
    assert_eq!(rec["pid"], pid, "single-threaded curl: pid == tgid");
    assert_eq!(rec["orig_dst"], up.addr.to_string());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn pod_namespace_client_is_redirected_over_ipv4_and_ipv6() {
    require_root();
    let cg = TestCgroup::new("pod");
    let ns = TestNetns::new(40 + unique_index() as u8);
    let up4 = Upstream::start(SocketAddr::new(IpAddr::V4(ns.host_v4), 0));
    let up6 = Upstream::start(SocketAddr::new(IpAddr::V6(ns.host_v6), 0));
    let redirect = SocketAddr::new(IpAddr::V4(ns.host_v4), free_port());
    let v6 = ns.host_v6.to_string();
    let agent = Agent::start(&agent_args(&cg, redirect, &["--redirect-addr6", &v6]));
    let place = Place {
        cgroup: Some(&cg),
        netns: Some(&ns),
    };

    for up in [&up4, &up6] {
        let (pid, body) = curl(place, &up.url("/pod"));
        // The upstream sees the agent (host side), not the pod.
        let peer: SocketAddr = body["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(peer.ip(), up.addr.ip(), "upstream peer {peer}");
        let rec = conn_for(&agent, pid);
        assert_eq!(rec["orig_dst"], up.addr.to_string(), "{rec}");
        let client_peer: SocketAddr = rec["peer"].as_str().unwrap().parse().unwrap();
        let pod_ip = if up.addr.is_ipv4() {
            IpAddr::V4(ns.pod_v4)
        } else {
            IpAddr::V6(ns.pod_v6)
        };
        assert_eq!(client_peer.ip(), pod_ip, "{rec}");
        assert_eq!(rec["cgroup_id"], cg.id());
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn ipv6_loopback_is_redirected() {
    require_root();
    let cg = TestCgroup::new("v6lo");
    let up = Upstream::start("[::1]:0".parse().unwrap());
    // No --redirect-addr6: IPv6 connects go to the IPv4-mapped redirect address.
    let agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let (pid, body) = curl(
        Place {
            cgroup: Some(&cg),
            netns: None,
        },
        &up.url("/v6"),
    );
    assert_eq!(body["path"], "/v6");
    let rec = conn_for(&agent, pid);
    assert_eq!(rec["orig_dst"], up.addr.to_string(), "{rec}");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn outside_cgroup_bypassed_and_agent_traffic_are_not_redirected() {
    require_root();
    let cg = TestCgroup::new("skip");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let up_cidr = Upstream::start("127.0.0.2:0".parse().unwrap());
    let up_port = Upstream::start("127.0.0.1:0".parse().unwrap());
    let bypass_port = up_port.addr.port().to_string();
    let agent = Agent::start(&agent_args(
        &cg,
        loopback_redirect(),
        &[
            "--bypass-cidr",
            "127.0.0.2/32",
            "--bypass-port",
            &bypass_port,
        ],
    ));
    let inside = Place {
        cgroup: Some(&cg),
        netns: None,
    };

    curl(Place::default(), &up.url("/outside"));
    curl(inside, &up_cidr.url("/bypass-cidr"));
    curl(inside, &up_port.url("/bypass-port"));
    let (pid, _) = curl(inside, &up.url("/marker"));
    conn_for(&agent, pid);
    std::thread::sleep(Duration::from_millis(200));

    // Exactly one connection went through the agent: the marker. The
    // agent's own upstream connection was not redirected back to itself.
    let records = agent.conn_records();
    assert_eq!(records.len(), 1, "records: {records:#?}");
    assert_eq!(records[0]["orig_dst"], up.addr.to_string());
    assert_eq!(records[0]["message"], "connection closed");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn after_the_agent_stops_connections_go_direct() {
    require_root();
    let cg = TestCgroup::new("detach");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let mut agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let inside = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    let (pid, _) = curl(inside, &up.url("/before"));
    conn_for(&agent, pid);

    let status = agent.stop().expect("agent exit status");
    assert!(
        status.success(),
        "agent exit {status:?}:\n{}",
        agent.output()
    );
    assert!(agent.output().contains("detached"), "{}", agent.output());
    // If the programs were still attached this would hit the dead redirect port.
    let (_, body) = curl(inside, &up.url("/after"));
    assert_eq!(body["path"], "/after");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn hundred_megabytes_arrive_byte_identical_both_ways() {
    require_root();
    const LEN: u64 = 100 * 1024 * 1024;
    let cg = TestCgroup::new("bulk");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let inside = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    let dir = TempDir::new("plk-bulk");
    let file = dir.0.join("payload");
    let expected = pattern_sha256(LEN);

    // Download through the agent.
    let url = up.url(&format!("/bytes/{LEN}"));
    let path = file.to_str().unwrap();
    let run = client::run(
        inside,
        "curl",
        &["-sS", "--max-time", "120", "-o", path, &url],
        CLIENT_TIMEOUT * 3,
    );
    assert!(run.ok(), "download failed: {run:?}");
    let got = pipelock_tests::upstream::hex(&sha2_file(&file));
    assert_eq!(got, expected, "downloaded bytes differ");
    let rec = conn_for(&agent, run.pid);
    assert!(rec["bytes_down"].as_u64().unwrap() >= LEN, "{rec}");

    // Upload the same bytes through the agent; the upstream hashes what it got.
    let data_arg = format!("@{path}");
    let run = client::run(
        inside,
        "curl",
        &[
            "-sS",
            "--max-time",
            "120",
            "--data-binary",
            &data_arg,
            &up.url("/upload"),
        ],
        CLIENT_TIMEOUT * 3,
    );
    assert!(run.ok(), "upload failed: {run:?}");
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["body_len"], LEN);
    assert_eq!(body["body_sha256"], expected, "uploaded bytes differ");
    let rec = conn_for(&agent, run.pid);
    assert!(rec["bytes_up"].as_u64().unwrap() >= LEN, "{rec}");
}

/// A directory under the system temp dir, removed on drop (even when the test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("{tag}-{}-{}", std::process::id(), unique_index()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha2_file(path: &std::path::Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_vec()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn unreachable_destination_is_reset_and_logged() {
    require_root();
    let cg = TestCgroup::new("unreach");
    let agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let closed = free_port(); // nothing listens there
    let url = format!("http://127.0.0.1:{closed}/");
    let run = client::run(
        Place {
            cgroup: Some(&cg),
            netns: None,
        },
        "curl",
        &["-sS", "--max-time", "20", &url],
        CLIENT_TIMEOUT,
    );
    assert!(!run.ok(), "curl should fail: {run:?}");
    let rec = conn_for(&agent, run.pid);
    assert_eq!(rec["message"], "connection failed", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("connecting to upstream 127.0.0.1"), "{rec}");
    assert_eq!(rec["side"], "Upstream");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn direct_connection_to_the_agent_port_is_refused_and_logged() {
    require_root();
    let cg = TestCgroup::new("self");
    let redirect = loopback_redirect();
    let agent = Agent::start(&agent_args(&cg, redirect, &[]));
    let url = format!("http://{redirect}/");
    let run = client::run(
        Place::default(),
        "curl",
        &["-sS", "--max-time", "10", &url],
        CLIENT_TIMEOUT,
    );
    assert!(
        !run.ok(),
        "a connection the kernel did not redirect must not be proxied: {run:?}"
    );
    let rec = agent
        .wait_for_conn(LOG_WAIT, |r| r["message"] == "connection failed")
        .unwrap_or_else(|| panic!("no failure record:\n{}", agent.output()));
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("no original destination"),
        "{rec}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn kept_upstream_connections_are_reused_within_one_cgroup_only() {
    require_root();
    let cg = TestCgroup::new("keepalive");
    // A child cgroup: a container of its own, covered by the same redirect.
    let other = cg.dir().join("other");
    std::fs::create_dir(&other).expect("child cgroup");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start(&agent_args(&cg, loopback_redirect(), &[]));
    let place = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    // Each run is a new client connection (curl, then Ruby's Net::HTTP,
    // which closes after its request); the upstream sees one connection. A
    // connection is kept once its client connection has ended, which the
    // agent may learn just after the next client connected: a few tries.
    let (_, a) = curl(place, &up.url("/a"));
    assert_eq!(a["path"], "/a");
    // Every upstream connection this cgroup's requests came on.
    let mine = std::cell::RefCell::new(vec![a["peer"].clone()]);
    let reused = (0..5).any(|i| {
        let path = format!("/b/{i}");
        let (_, b) = curl(place, &up.url(&path));
        assert_eq!(b["path"], path);
        mine.borrow_mut().push(b["peer"].clone());
        b["peer"] == a["peer"]
    });
    assert!(reused, "no later curl reused the kept upstream connection");
    let url = up.url("/net_http");
    let net_http = || {
        let run = client::run(
            place,
            "ruby",
            &[
                "-rnet/http",
                "-e",
                "puts Process.pid; puts Net::HTTP.get(URI(ARGV[0]))",
                &url,
            ],
            CLIENT_TIMEOUT,
        );
        assert!(run.ok(), "{run:?}");
        let (_, body) = pid_and_body(&run);
        assert_eq!(body["path"], "/net_http");
        mine.borrow_mut().push(body["peer"].clone());
        body["peer"] == a["peer"]
    };
    assert!((0..5).any(|_| net_http()), "Net::HTTP did not reuse it");

    // The other cgroup's request goes on a connection of its own.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -sS --max-time 20 '{}'",
        other.display(),
        up.url("/other")
    );
    let run = client::run(place, "sh", &["-c", &script], CLIENT_TIMEOUT);
    assert!(run.ok(), "{run:?}");
    let c: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    assert_eq!(c["path"], "/other");
    assert!(
        !mine.borrow().contains(&c["peer"]),
        "another cgroup was given this cgroup's connection"
    );

    // A response the agent refuses (a prompt injection) leaves nothing on
    // a kept connection: the next requests get their own answers, whole.
    let run = client::run(
        place,
        "curl",
        &["-sS", "--max-time", "20", &up.url("/inject")],
        CLIENT_TIMEOUT,
    );
    assert!(!run.stdout.contains("Ignore all previous"), "{run:?}");
    for i in 0..3 {
        let path = format!("/after/{i}");
        let (_, body) = curl(place, &up.url(&path));
        assert_eq!(body["path"], path, "{body}");
    }
    drop(agent);
}

fn expect_startup_error(args: &[String], needle: &str) {
    let mut agent = Agent::spawn(args);
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("agent kept running with {args:?}"));
    assert!(!status.success(), "agent should fail with {args:?}");
    let out = agent.output();
    assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
    assert!(!out.contains("panicked"), "agent panicked:\n{out}");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn missing_cgroup_is_a_clear_error() {
    require_root();
    let args: Vec<String> = ["--cgroup", "/plk-no-such-cgroup", "--redirect-addr"]
        .iter()
        .map(|s| s.to_string())
        .chain([loopback_redirect().to_string()])
        .collect();
    expect_startup_error(&args, "cgroup /plk-no-such-cgroup not found");
    // Without a cgroup the agent is a plain forward proxy (Pipelock's
    // mode); its busy listen port is a clear error too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    expect_startup_error(
        &["--listen".to_string(), addr.to_string()],
        &format!("cannot listen on {addr}"),
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn busy_redirect_port_is_a_clear_error() {
    require_root();
    let cg = TestCgroup::new("busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    expect_startup_error(
        &agent_args(&cg, addr, &[]),
        &format!("cannot listen on {addr}"),
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn missing_privilege_is_a_clear_error() {
    require_root();
    let cg = TestCgroup::new("priv");
    let bin = pipelock_tests::agent::agent_bin();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(agent_args(&cg, loopback_redirect(), &[]))
        .output()
        .expect("running setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "unprivileged agent must fail: {stderr}"
    );
    assert!(stderr.contains("missing privilege"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
