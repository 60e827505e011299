//! What the kernel redirect cannot carry to the scanner, tried as an
//! attacker in a covered pod would: UDP (QUIC/HTTP-3, a datagram with a
//! secret, a connected UDP socket, IPv6), raw and ICMP sockets and MPTCP.
//! In balanced the kernel refuses them (EPERM) and nothing arrives; UDP to
//! an allowed port (DNS, 53) still works. A reload to audit lets them
//! through and the agent logs and counts what strict would have refused.
//! A TCP connect to a denied destination (`interceptor.deny_cidrs`, the
//! metadata addresses by default) is refused by the kernel before any
//! byte; audit redirects it to the agent instead.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
};

/// A GitHub-token-shaped value (critical, high confidence); not a real one.
const SECRET: &str = "ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A UDP server recording every datagram it gets.
struct UdpSink {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
}

impl UdpSink {
    fn start(addr: &str) -> UdpSink {
        let sock = UdpSocket::bind(addr).expect("bind udp sink");
        let addr = sock.local_addr().expect("udp addr");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Bounded: at most ~5 minutes of polling.
            for _ in 0..1500 {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    g.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        UdpSink { addr, got }
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Waits up to 2 s for a datagram containing `needle`.
    fn wait_for(&self, needle: &str) -> bool {
        for _ in 0..20 {
            if self.got().iter().any(|d| d.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// Runs a Python script at `cg` (none: outside any test cgroup); its stdout.
fn python(cg: Option<&TestCgroup>, script: &str) -> String {
    let run = client::run(
        Place {
            cgroup: cg,
            netns: None,
        },
        "python3",
        &["-c", script],
        TIMEOUT,
    );
    assert!(run.ok(), "probe script failed: {run:?}");
    run.stdout
}

/// Runs a Python probe at `place`; prints one `name result` line per probe.
fn probes(cg: Option<&TestCgroup>, udp: SocketAddr, dns: SocketAddr, tag: &str) -> String {
    let script = format!(
        r#"
import socket
def probe(name, f):
    try:
        f()
        print(name, "ok")
    except PermissionError:
        print(name, "EPERM")
    except Exception as e:
        print(name, "ERR", type(e).__name__, e)
def sendto():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"{tag} sendto {SECRET}", ("{uh}", {up}))
def connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("{uh}", {up}))
    s.send(b"{tag} connected {SECRET}")
def v6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendto(b"{tag} v6 {SECRET}", ("::ffff:{uh}", {up}))
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"{tag} dns query", ("{dh}", {dp}))
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
def mptcp():
    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
for n, f in [("sendto", sendto), ("connected", connected), ("v6", v6), ("dns", dns), ("raw", raw), ("mptcp", mptcp)]:
    probe(n, f)
"#,
        uh = udp.ip(),
        up = udp.port(),
        dh = dns.ip(),
        dp = dns.port(),
    );
    python(cg, &script)
}

/// GET /metrics from the agent's forward listener.
fn scrape(proxy: SocketAddr) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{proxy}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pipelock_kernel_unscannable_total{kind,action}` in a scrape.
fn counter(metrics: &str, kind: &str, action: &str) -> Option<u64> {
    let a = format!("pipelock_kernel_unscannable_total{{kind=\"{kind}\",action=\"{action}\"}} ");
    let b = format!("pipelock_kernel_unscannable_total{{action=\"{action}\",kind=\"{kind}\"}} ");
    metrics.lines().find_map(|l| {
        l.strip_prefix(&a)
            .or_else(|| l.strip_prefix(&b))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The agent on `cg` with `cfg`, redirecting to and listening on free
/// loopback ports; returns it and its forward listener (for `/metrics`).
fn start_agent(cg: &TestCgroup, cfg: &std::path::Path) -> (Agent, SocketAddr) {
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = Agent::start(&[
        "--cgroup".into(),
        cg.rel().into(),
        "--redirect-addr".into(),
        redirect.to_string(),
        "--listen".into(),
        proxy.to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ]);
    (agent, proxy)
}

/// Waits (up to 6 s: the agent reads the kernel's counters every 2 s)
/// until `/metrics` shows each `(kind, action, count)`, then checks them.
fn assert_counters(proxy: SocketAddr, want: &[(&str, &str, u64)]) {
    let mut metrics = String::new();
    for _ in 0..30 {
        metrics = scrape(proxy);
        if want
            .iter()
            .all(|&(k, a, n)| counter(&metrics, k, a) == Some(n))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for &(kind, action, n) in want {
        assert_eq!(
            counter(&metrics, kind, action),
            Some(n),
            "{kind} {action}:\n{metrics}"
        );
    }
}

fn result<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} line in {out}"))
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn udp_raw_and_mptcp_are_refused_by_the_kernel_then_counted_in_audit() {
    require_root();
    let cg = TestCgroup::new("kernel-guard");
    let udp = UdpSink::start("127.0.0.1:0");
    // DNS: port 53 on an address of its own (root may bind it).
    let dns = UdpSink::start("127.0.0.77:53");

    // Outside the covered cgroup every probe works: what follows is the
    // agent's doing, not the machine's.
    let out = probes(None, udp.addr, dns.addr, "outside");
    for name in ["sendto", "connected", "v6", "dns", "raw", "mptcp"] {
        assert_eq!(result(&out, name), "ok", "outside the cgroup: {out}");
    }
    assert!(udp.wait_for("outside sendto"), "the sink works");

    let dir = std::env::temp_dir().join(format!("plk-kguard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("pipelock.yaml");
    std::fs::write(&cfg, "mode: balanced\n").unwrap();
    let (agent, proxy) = start_agent(&cg, &cfg);

    // Balanced: UDP to a port not allowed, raw and MPTCP sockets: EPERM.
    let out = probes(Some(&cg), udp.addr, dns.addr, "balanced");
    for name in ["sendto", "connected", "v6", "raw", "mptcp"] {
        assert_eq!(
            result(&out, name),
            "EPERM",
            "{name} not refused: {out}\n{}",
            agent.output()
        );
    }
    assert_eq!(result(&out, "dns"), "ok", "DNS refused: {out}");
    assert!(
        dns.wait_for("balanced dns"),
        "the DNS datagram did not arrive"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !udp.got().iter().any(|d| d.starts_with("balanced")),
        "a datagram left unscanned: {:?}",
        udp.got()
    );
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("unscannable udp refused")
        })
        .unwrap_or_else(|| panic!("no kernel log line; log:\n{}", agent.output()));

    // Reload to audit: the same probes pass, and the agent says what
    // strict and balanced would have refused.
    std::fs::write(&cfg, "mode: audit\n").unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent
        .wait_for_line(Duration::from_secs(10), |l| l.contains("config reloaded"))
        .unwrap_or_else(|| panic!("no reload; log:\n{}", agent.output()));
    let out = probes(Some(&cg), udp.addr, dns.addr, "audit");
    for name in ["sendto", "connected", "v6", "dns", "raw", "mptcp"] {
        assert_eq!(result(&out, name), "ok", "audit refused {name}: {out}");
    }
    assert!(
        udp.wait_for("audit sendto"),
        "audit did not let UDP through"
    );
    agent
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("let through by the kernel in audit mode")
        })
        .unwrap_or_else(|| panic!("no audit line; log:\n{}", agent.output()));
    // Refused in balanced and let through in audit, three UDP sends each
    // (sendto, the connect of a connected socket, v6) and two sockets
    // (raw, MPTCP); the agent reads the kernel's counters every 2 s.
    let want = [
        ("udp", "refused", 3),
        ("udp", "audited", 3),
        ("socket", "refused", 2),
        ("socket", "audited", 2),
    ];
    assert_counters(proxy, &want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python TCP connect from `place`: `connect ok`, `connect EPERM` or an error.
fn tcp_probe(cg: Option<&TestCgroup>, to: SocketAddr) -> String {
    let script = format!(
        r#"
import socket
try:
    socket.create_connection(("{h}", {p}), timeout=5).close()
    print("connect ok")
except PermissionError:
    print("connect EPERM")
except Exception as e:
    print("connect ERR", type(e).__name__, e)
"#,
        h = to.ip(),
        p = to.port(),
    );
    python(cg, &script).trim().to_owned()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn tcp_to_a_denied_destination_is_refused_by_the_kernel_then_redirected_in_audit() {
    require_root();
    let cg = TestCgroup::new("kernel-deny");
    // The denied destination: a listener on a loopback address of its own.
    let listener = std::net::TcpListener::bind("127.0.0.88:0").expect("bind");
    let target = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0u32));
    let a = accepted.clone();
    std::thread::spawn(move || {
        // Bounded: the probes make at most a few connections.
        for conn in listener.incoming().take(16) {
            if conn.is_ok() {
                *a.lock().unwrap() += 1;
            }
        }
    });
    assert_eq!(tcp_probe(None, target), "connect ok", "outside the cgroup");
    assert_eq!(*accepted.lock().unwrap(), 1);

    let dir = std::env::temp_dir().join(format!("plk-kdeny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("pipelock.yaml");
    let with_mode =
        |mode: &str| format!("mode: {mode}\ninterceptor:\n  deny_cidrs: [127.0.0.88/32]\n");
    std::fs::write(&cfg, with_mode("balanced")).unwrap();
    let (agent, proxy) = start_agent(&cg, &cfg);
    // Balanced: refused in the kernel, nothing reaches the destination.
    assert_eq!(
        tcp_probe(Some(&cg), target),
        "connect EPERM",
        "{}",
        agent.output()
    );
    assert_eq!(*accepted.lock().unwrap(), 1, "the destination was reached");
    agent
        .wait_for_line(TIMEOUT, |l| l.contains("denied destination refused"))
        .unwrap_or_else(|| panic!("no kernel log line; log:\n{}", agent.output()));
    // Other destinations are still redirected, not refused.
    assert_eq!(tcp_probe(Some(&cg), proxy), "connect ok");

    // Audit: redirected to the agent (which judges it), counted.
    std::fs::write(&cfg, with_mode("audit")).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent
        .wait_for_line(Duration::from_secs(10), |l| l.contains("config reloaded"))
        .unwrap_or_else(|| panic!("no reload; log:\n{}", agent.output()));
    assert_eq!(tcp_probe(Some(&cg), target), "connect ok");
    let want = [("destination", "refused", 1), ("destination", "audited", 1)];
    assert_counters(proxy, &want);
    let _ = std::fs::remove_dir_all(&dir);
}
