//! Resource bounds through the real agent under the kernel redirect: a
//! client that sends half a request head is cut at the header timeout; at
//! the per-pod cap a pod's further connections are reset while its open
//! ones keep working and another pod's requests still go through; a raw
//! relay with no bytes moving is closed at its idle limit.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
    upstream::Upstream,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn start(cg: &TestCgroup, yaml: &str) -> (Agent, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "plk-limits-{}-{}",
        std::process::id(),
        pipelock_tests::unique_index()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pipelock.yaml");
    std::fs::write(&file, yaml).unwrap();
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = Agent::start(&[
        "--config".into(),
        file.display().to_string(),
        "--cgroup".into(),
        cg.rel().into(),
        "--redirect-addr".into(),
        redirect.to_string(),
    ]);
    (agent, dir)
}

/// Runs a Python script as a process placed in `procs` (a cgroup.procs file).
fn python_in(procs: &Path, script: &str) -> String {
    let wrapper = format!("echo $$ > {} && exec python3 -c \"$0\"", procs.display());
    let run = client::run(Place::default(), "sh", &["-c", &wrapper, script], TIMEOUT);
    format!("{}{}", run.stdout, run.stderr)
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn a_half_sent_request_head_is_cut_at_the_header_timeout() {
    require_root();
    let cg = TestCgroup::new("slow-head");
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let (agent, dir) = start(&cg, "interceptor:\n  header_read_timeout_seconds: 2\n");
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',{}),timeout=20)\n\
s.sendall(b'GET /slow HTTP/1.1\\r\\nHost: x\\r\\n')\nt=time.time()\nd=s.recv(100)\n\
print('closed after', round(time.time()-t,1), repr(d[:12]))\n",
        up.addr.ip(),
        up.addr.port()
    );
    let started = Instant::now();
    let out = python_in(&cg.procs_file(), &script);
    assert!(out.contains("closed after"), "{out}\n{}", agent.output());
    assert!(started.elapsed() < Duration::from_secs(15), "{out}");
    assert!(!up.seen().contains(&"/slow".to_string()));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn at_the_per_pod_cap_new_connections_are_refused_and_other_pods_go_on() {
    require_root();
    let cg = TestCgroup::new("pod-cap");
    let pod_a = cg.dir().join("pod-a");
    let pod_b = cg.dir().join("pod-b");
    std::fs::create_dir_all(&pod_a).unwrap();
    std::fs::create_dir_all(&pod_b).unwrap();
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let (agent, dir) = start(&cg, "interceptor:\n  max_connections_per_pod: 3\n");
    // Pod A opens 3 keep-alive connections (each answers one request and
    // stays open), then a 4th; then uses the first again.
    let script = format!(
        "import socket,time\naddr=('{ip}',{port})\n\
def req(s,p):\n s.sendall(('GET '+p+' HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n').encode())\n return s.recv(4096)[:12]\n\
held=[socket.create_connection(addr,timeout=10) for _ in range(3)]\n\
print('held', [req(s,'/held') for s in held])\n\
try:\n x=socket.create_connection(addr,timeout=10)\n print('fourth', req(x,'/fourth'))\nexcept Exception as e:\n print('fourth refused', type(e).__name__)\n\
print('again', req(held[0],'/again'))\ntime.sleep(3)\n",
        ip = up.addr.ip(),
        port = up.addr.port()
    );
    let a = std::thread::spawn({
        let procs = pod_a.join("cgroup.procs");
        move || python_in(&procs, &script)
    });
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile pod B is served.
    let b_script = format!(
        "import socket\ns=socket.create_connection(('{}',{}),timeout=10)\n\
s.sendall(b'GET /pod-b HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\nprint('b', s.recv(12))\n",
        up.addr.ip(),
        up.addr.port()
    );
    let b = python_in(&pod_b.join("cgroup.procs"), &b_script);
    let a = a.join().unwrap();
    assert!(
        a.contains("held [b'HTTP/1.1 200', b'HTTP/1.1 200', b'HTTP/1.1 200']"),
        "{a}"
    );
    assert!(
        a.contains("fourth refused") || a.contains("fourth b''"),
        "{a}\n{}",
        agent.output()
    );
    assert!(a.contains("again b'HTTP/1.1 200'"), "{a}");
    assert!(b.contains("b b'HTTP/1.1 200'"), "{b}");
    assert!(!up.seen().contains(&"/fourth".to_string()));
    agent
        .wait_for_line(Duration::from_secs(5), |l| l.contains("limit reached"))
        .unwrap_or_else(|| panic!("no refusal line:\n{}", agent.output()));
    drop(agent);
    let _ = std::fs::remove_dir(&pod_a);
    let _ = std::fs::remove_dir(&pod_b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn an_idle_raw_relay_is_closed_at_its_idle_limit() {
    require_root();
    let cg = TestCgroup::new("relay-idle");
    // A raw echo server: each line comes back.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (agent, dir) = start(
        &cg,
        &format!(
            "interceptor:\n  non_http_relay_ports: [{}]\n  relay_idle_timeout_seconds: 2\n",
            addr.port()
        ),
    );
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',{}),timeout=20)\n\
s.sendall(b'RAW hello')\nprint('echo', s.recv(100))\nt=time.time()\nd=s.recv(100)\n\
print('closed after', round(time.time()-t,1), repr(d))\n",
        addr.ip(),
        addr.port()
    );
    let started = Instant::now();
    let out = python_in(&cg.procs_file(), &script);
    assert!(
        out.contains("echo b'RAW hello'"),
        "{out}\n{}",
        agent.output()
    );
    assert!(out.contains("closed after"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(15), "{out}");
    agent
        .wait_for_line(Duration::from_secs(5), |l| l.contains("relay idle limit"))
        .unwrap_or_else(|| panic!("no idle line:\n{}", agent.output()));
    let _ = std::fs::remove_dir_all(dir);
}
