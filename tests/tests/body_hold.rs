//! Request bodies are held until scanned, through the real agent under the
//! real kernel redirect: a secret in a later chunk of a chunked upload, or
//! in its trailers, is blocked before the upstream sees even the request
//! head; a client that stalls mid-body is cut at the body idle limit, and
//! nothing reaches the upstream either. A clean chunked upload arrives whole.
use std::{net::SocketAddr, time::Duration};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
    tls_harness::temp_dir,
    upstream::Upstream,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";

/// A raw HTTP/1.1 client: sends the head and each chunk of a chunked body
/// (pausing `pause` seconds between chunks, and `stall` seconds before the
/// end), then the trailer lines, and prints the status code it got back
/// (or `closed`).
const CHUNKED_CLIENT: &str = r#"
import socket, sys, time, json, select
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
chunks = json.loads(sys.argv[4]); trailers = json.loads(sys.argv[5])
pause, stall = float(sys.argv[6]), float(sys.argv[7])
s = socket.create_connection((host, port), timeout=30)

def answered(wait):
    # The status line, if the agent answered within `wait` seconds.
    if not select.select([s], [], [], wait)[0]:
        return None
    data = b""
    try:
        while b"\r\n" not in data:
            d = s.recv(4096)
            if not d:
                break
            data += d
    except OSError:
        pass
    line = data.split(b"\r\n", 1)[0].split()
    return line[1].decode() if len(line) > 1 else "closed"

def done(status):
    print(status)
    sys.exit(0)

s.sendall(("POST %s HTTP/1.1\r\nHost: %s:%d\r\nTransfer-Encoding: chunked\r\n"
           "Trailer: %s\r\nContent-Type: application/json\r\n\r\n"
           % (path, host, port, ", ".join(k for k, _ in trailers) or "x-none")).encode())
try:
    for c in chunks:
        b = c.encode()
        s.sendall(b"%x\r\n%s\r\n" % (len(b), b))
        r = answered(pause)
        if r:
            done(r)
    r = answered(stall)
    if r:
        done(r)
    s.sendall(b"0\r\n" + b"".join(("%s: %s\r\n" % (k, v)).encode() for k, v in trailers) + b"\r\n")
except OSError:
    pass
done(answered(30) or "none")
"#;

struct Upload<'a> {
    chunks: &'a [&'a str],
    trailers: &'a [(&'a str, &'a str)],
    pause: f64,
    stall: f64,
}

fn upload(cg: &TestCgroup, up: &Upstream, path: &str, u: &Upload<'_>) -> String {
    let chunks = serde_json::to_string(u.chunks).unwrap();
    let trailers = serde_json::to_string(u.trailers).unwrap();
    let (host, port) = (up.addr.ip().to_string(), up.addr.port().to_string());
    let (pause, stall) = (u.pause.to_string(), u.stall.to_string());
    let run = client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        "python3",
        &[
            "-c",
            CHUNKED_CLIENT,
            &host,
            &port,
            path,
            &chunks,
            &trailers,
            &pause,
            &stall,
        ],
        TIMEOUT,
    );
    assert!(run.ok(), "client failed: {run:?}");
    run.stdout.trim().to_owned()
}

fn agent(cg: &TestCgroup, extra_yaml: &str) -> Agent {
    let dir = temp_dir("body-hold");
    let file = dir.join("pipelock.yaml");
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        &file,
        format!(
            "version: 1\nmode: balanced\ninterceptor:\n  cgroup: {}\n  redirect_addr: \"{redirect}\"\n{extra_yaml}",
            cg.rel()
        ),
    )
    .unwrap();
    Agent::start(&["--config".into(), file.display().to_string()])
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_blocked_body_sends_nothing_upstream_not_even_the_head() {
    require_root();
    let cg = TestCgroup::new("hold-block");
    let up = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let agent = agent(&cg, "");
    let log = || agent.output();

    // The secret comes in the third chunk, well after the head.
    let secret_chunk = format!("\"token\":\"{SECRET}\"}}");
    let chunks = [
        "{\"note\":\"clean start\",",
        "\"more\":\"clean\",",
        &secret_chunk,
    ];
    let status = upload(
        &cg,
        &up,
        "/late-secret",
        &Upload {
            chunks: &chunks,
            trailers: &[],
            pause: 0.3,
            stall: 0.0,
        },
    );
    assert_eq!(status, "403", "log:\n{}", log());
    assert!(
        !up.seen().iter().any(|p| p == "/late-secret"),
        "the upstream saw the request head: {:?}",
        up.seen()
    );

    // The secret in a trailer field: scanned like a header, refused.
    let status = upload(
        &cg,
        &up,
        "/trailer-secret",
        &Upload {
            chunks: &["{\"clean\":true}"],
            trailers: &[("x-token", SECRET)],
            pause: 0.0,
            stall: 0.0,
        },
    );
    assert_eq!(status, "403", "log:\n{}", log());
    assert!(!up.seen().iter().any(|p| p == "/trailer-secret"));

    // A clean chunked upload arrives whole.
    let status = upload(
        &cg,
        &up,
        "/clean",
        &Upload {
            chunks: &["{\"a\":1,", "\"b\":2}"],
            trailers: &[],
            pause: 0.1,
            stall: 0.0,
        },
    );
    assert_eq!(status, "200", "log:\n{}", log());
    assert!(up.body_seen_containing(b"{\"a\":1,\"b\":2}"));
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_client_stalling_mid_body_is_cut_and_nothing_leaves() {
    require_root();
    let cg = TestCgroup::new("hold-idle");
    let up = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let agent = agent(&cg, "  body_idle_timeout_seconds: 1\n");
    let status = upload(
        &cg,
        &up,
        "/stalled",
        &Upload {
            chunks: &["{\"partial\":"],
            trailers: &[],
            pause: 0.0,
            stall: 4.0,
        },
    );
    assert_eq!(status, "408", "log:\n{}", agent.output());
    assert!(!up.seen().iter().any(|p| p == "/stalled"));
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_client_stalling_mid_streamed_body_is_cut() {
    require_root();
    let cg = TestCgroup::new("stream-idle");
    let up = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Past max_body_bytes the body streams (scanned chunk by chunk); the
    // client then stalls longer than body_idle_timeout_seconds.
    let agent = agent(
        &cg,
        "  body_idle_timeout_seconds: 1\nrequest_body_scanning:\n  max_body_bytes: 16\n",
    );
    let status = upload(
        &cg,
        &up,
        "/stalled-stream",
        &Upload {
            chunks: &["{\"partial\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
            trailers: &[],
            pause: 0.0,
            stall: 4.0,
        },
    );
    assert_ne!(status, "200", "log:\n{}", agent.output());
    agent
        .wait_for_line(Duration::from_secs(5), |l| {
            l.contains("body idle limit reached")
        })
        .unwrap_or_else(|| panic!("no idle cut; log:\n{}", agent.output()));
}
