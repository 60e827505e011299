//! `cargo xtask bench relay`: bulk throughput and connection rate, direct vs
//! through the kernel redirect + agent (raw TCP relay: `--non-http relay`),
//! and the new-connection rate of plain HTTP/1.1 with `Connection: close`
//! (through the agent: sniffed as HTTP, parsed by hyper and scanned), against
//! a server that keeps connections alive unless the request says `close` (as
//! nginx does: the agent, like any HTTP proxy, drops that hop-by-hop field
//! and keeps its upstream connection for the next client connection) and
//! against one that closes after every response. haproxy (TCP mode) and
//! socat run as plain TCP proxies on loopback for comparison, same client
//! and servers, one run. The machine is shared: compare the ratios of one run.
//!
//! The client is this binary re-executed (`--client …`) inside a throwaway
//! cgroup: "direct" runs it with no agent attached, "agent" with the agent
//! attached to that cgroup. haproxy and socat come from Debian's packages
//! (`cargo xtask bench` installs them); a missing one is skipped.
//! Loopback only; every loop is bounded.
//!
//! Knobs: `PIPELOCK_AGENT_BIN` (the agent under test: set it to the release
//! build), `PIPELOCK_BENCH_BASELINE_BIN` (a second agent binary measured in
//! the same rounds, for A/B ratios in one run), `PIPELOCK_BENCH_PARTS`
//! (`bulk,rate,http,http-server-close`, default all),
//! `PIPELOCK_BENCH_CONNS` (connections per rate and HTTP run) and
//! `PIPELOCK_BENCH_NO_OTHERS=1` (skip haproxy and socat).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    free_port, require_root,
};

const BULK_BYTES: u64 = 2 << 30; // 2 GiB per bulk run
const CONNS: u64 = 3_000; // connections per rate run
const PARALLEL: u64 = 4; // client threads for the rate run
const ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--client") {
        client_main(&args[i + 1..]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    require_root();
    let knobs = Knobs::from_env();
    let bulk = start_server(serve_bulk);
    let rate = start_server(serve_one_byte);
    let http = HttpServers {
        keep_alive: start_server(serve_http),
        closing: start_server(serve_http_close),
    };
    let cg = TestCgroup::new("bench");

    let mut direct = Runs::default();
    // The agent under test, then the baseline binary (if given) in the same round.
    let mut agents: Vec<AgentRuns> = std::iter::once(None)
        .chain(knobs.baseline.clone().map(Some))
        .map(|bin| AgentRuns {
            bin,
            ..AgentRuns::default()
        })
        .collect();
    for round in 0..ROUNDS {
        direct.run(&cg, &knobs, bulk, rate, http);
        for a in &mut agents {
            a.round(round, &cg, &knobs, bulk, rate, http);
        }
    }
    let mut others = Vec::new();
    for name in ["haproxy", "socat"] {
        if knobs.no_others {
            break;
        }
        let (Some(p_bulk), Some(p_rate), Some(p_http), Some(p_closing)) = (
            TcpProxy::start(name, bulk),
            TcpProxy::start(name, rate),
            TcpProxy::start(name, http.keep_alive),
            TcpProxy::start(name, http.closing),
        ) else {
            println!("{name}: not installed; skipped");
            continue;
        };
        let proxied = HttpServers {
            keep_alive: p_http.addr,
            closing: p_closing.addr,
        };
        let mut runs = Runs::default();
        for _ in 0..ROUNDS {
            runs.run(&cg, &knobs, p_bulk.addr, p_rate.addr, proxied);
        }
        others.push((name, runs.medians()));
    }
    let d = direct.medians();
    let conns = knobs.conns;
    println!("relay benchmark (median of {ROUNDS} rounds, loopback)");
    for a in &mut agents {
        let m = a.runs.medians();
        let label = match &a.bin {
            None => "agent".to_string(),
            Some(b) => format!("baseline agent {b}"),
        };
        println!("{label}:");
        if knobs.bulk {
            println!(
                "  bulk {} MiB:        direct {:8.0} MiB/s   agent {:8.0} MiB/s   ratio {:.2}  (target >= 0.80)",
                BULK_BYTES >> 20,
                d.0,
                m.0,
                m.0 / d.0
            );
            println!(
                "  agent CPU per GiB relayed (bulk, user + system): {:.3} s",
                median(&mut a.cpu_bulk)
            );
        }
        if knobs.rate {
            println!(
                "  connections {conns} x{PARALLEL}: direct {:8.0} conn/s  agent {:8.0} conn/s  ratio {:.2}  (target >= 0.50)",
                d.1,
                m.1,
                m.1 / d.1
            );
        }
        if knobs.http {
            println!(
                "  HTTP/1.1 Connection: close {conns} x{PARALLEL}: direct {:8.0} req/s  agent {:8.0} req/s  ratio {:.2}  (target >= 0.60; the agent parses and scans)",
                d.2,
                m.2,
                m.2 / d.2
            );
            println!(
                "  agent CPU per HTTP close connection (user + system): {:.1} µs",
                median(&mut a.cpu_http) * 1e6 / conns as f64
            );
        }
        if knobs.http_server_close {
            println!(
                "  the same, server closing too:    direct {:8.0} req/s  agent {:8.0} req/s  ratio {:.2}  (no upstream connection to keep)",
                d.3,
                m.3,
                m.3 / d.3
            );
        }
    }
    for (name, (bulk, rate, http, closing)) in others {
        println!(
            "  {name:<8} as a TCP proxy: bulk {bulk:8.0} MiB/s ratio {:.2}; connections {rate:8.0} conn/s ratio {:.2}; HTTP close {http:8.0} req/s ratio {:.2}; server closing too {closing:8.0} req/s ratio {:.2}",
            bulk / d.0,
            rate / d.1,
            http / d.2,
            closing / d.3
        );
    }
}

/// The bench's environment knobs (all optional).
#[derive(Clone)]
struct Knobs {
    /// `PIPELOCK_BENCH_PARTS=bulk,rate,http,http-server-close`: the parts
    /// to run (default all).
    bulk: bool,
    rate: bool,
    http: bool,
    http_server_close: bool,
    /// `PIPELOCK_BENCH_CONNS`: connections per rate and HTTP run.
    conns: u64,
    /// `PIPELOCK_BENCH_BASELINE_BIN`: a second agent binary (a baseline
    /// build) measured in the same rounds, for A/B figures in one run.
    baseline: Option<String>,
    /// `PIPELOCK_BENCH_NO_OTHERS=1`: skip haproxy and socat.
    no_others: bool,
}

impl Knobs {
    fn from_env() -> Knobs {
        let parts = std::env::var("PIPELOCK_BENCH_PARTS").ok();
        let wants = |p: &str| {
            parts
                .as_deref()
                .is_none_or(|s| s.split(',').any(|x| x == p))
        };
        Knobs {
            bulk: wants("bulk"),
            rate: wants("rate"),
            http: wants("http"),
            http_server_close: wants("http-server-close"),
            conns: std::env::var("PIPELOCK_BENCH_CONNS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n >= PARALLEL)
                .unwrap_or(CONNS),
            baseline: std::env::var("PIPELOCK_BENCH_BASELINE_BIN").ok(),
            no_others: std::env::var_os("PIPELOCK_BENCH_NO_OTHERS").is_some(),
        }
    }
}

/// Results of the parts, one entry per round (a part not run stays empty).
#[derive(Default)]
struct Runs {
    bulk: Vec<f64>,
    rate: Vec<f64>,
    http: Vec<f64>,
    http_server_close: Vec<f64>,
}

/// The two HTTP servers (or the proxies in front of them).
#[derive(Clone, Copy)]
struct HttpServers {
    /// Keeps a connection alive unless the request says `close`.
    keep_alive: SocketAddr,
    /// Closes after every response.
    closing: SocketAddr,
}

impl Runs {
    /// One round of every wanted part against these servers (or proxies).
    fn run(
        &mut self,
        cg: &TestCgroup,
        k: &Knobs,
        bulk: SocketAddr,
        rate: SocketAddr,
        http: HttpServers,
    ) {
        if k.bulk {
            self.bulk.push(run_client(cg, "bulk", bulk, k.conns));
        }
        if k.rate {
            self.rate.push(run_client(cg, "rate", rate, k.conns));
        }
        if k.http {
            self.http
                .push(run_client(cg, "http", http.keep_alive, k.conns));
        }
        if k.http_server_close {
            self.http_server_close
                .push(run_client(cg, "http", http.closing, k.conns));
        }
    }

    fn medians(&mut self) -> (f64, f64, f64, f64) {
        (
            median(&mut self.bulk),
            median(&mut self.rate),
            median(&mut self.http),
            median(&mut self.http_server_close),
        )
    }
}

/// One agent binary's rounds: throughput and its CPU time.
#[derive(Default)]
struct AgentRuns {
    /// `None`: the binary under test (`PIPELOCK_AGENT_BIN`).
    bin: Option<String>,
    runs: Runs,
    /// CPU seconds per GiB of bulk.
    cpu_bulk: Vec<f64>,
    /// CPU seconds of a whole HTTP run.
    cpu_http: Vec<f64>,
}

impl AgentRuns {
    /// Starts the agent on `cg`, runs the wanted parts through it, stops it.
    fn round(
        &mut self,
        round: usize,
        cg: &TestCgroup,
        k: &Knobs,
        bulk: SocketAddr,
        rate: SocketAddr,
        http: HttpServers,
    ) {
        let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args: Vec<String> = vec![
            "--cgroup".into(),
            cg.rel().into(),
            "--redirect-addr".into(),
            redirect.to_string(),
            // Raw TCP: unscannable, relayed only when the operator says so.
            "--non-http".into(),
            "relay".into(),
        ];
        let mut a = match &self.bin {
            // The wrapper drops the default binary's path and runs `bin`.
            Some(bin) => {
                let script = format!("shift; exec {bin} \"$@\"");
                Agent::start_via(&["sh", "-c", &script, "sh"], &args)
            }
            None => Agent::start(&args),
        };
        if k.bulk {
            let cpu0 = cpu_seconds(a.pid());
            self.runs.bulk.push(run_client(cg, "bulk", bulk, k.conns));
            self.cpu_bulk
                .push((cpu_seconds(a.pid()) - cpu0) / (BULK_BYTES as f64 / (1u64 << 30) as f64));
        }
        if k.rate {
            self.runs.rate.push(run_client(cg, "rate", rate, k.conns));
        }
        if k.http {
            let cpu0 = cpu_seconds(a.pid());
            self.runs
                .http
                .push(run_client(cg, "http", http.keep_alive, k.conns));
            self.cpu_http.push(cpu_seconds(a.pid()) - cpu0);
        }
        if k.http_server_close {
            self.runs
                .http_server_close
                .push(run_client(cg, "http", http.closing, k.conns));
        }
        // Records are logged when each connection closes: give the last ones a moment.
        let want = k.conns
            * (u64::from(k.rate) + u64::from(k.http) + u64::from(k.http_server_close))
            + u64::from(k.bulk);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut redirected = a.conn_records().len() as u64;
        while redirected < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            redirected = a.conn_records().len() as u64;
        }
        a.stop();
        assert!(
            redirected >= want,
            "round {round}: only {redirected} of {want} connections went through the agent"
        );
    }
}

/// CPU time (user + system) a process used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// haproxy (TCP mode) or socat forwarding a loopback port to `server`;
/// stopped on drop.
struct TcpProxy {
    child: Child,
    addr: SocketAddr,
    _dir: Option<std::path::PathBuf>,
}

impl TcpProxy {
    fn start(name: &str, server: SocketAddr) -> Option<TcpProxy> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (mut cmd, dir) = match name {
            "haproxy" => {
                let dir = std::env::temp_dir().join(format!(
                    "plk-relay-haproxy-{}-{}",
                    std::process::id(),
                    addr.port()
                ));
                std::fs::create_dir_all(&dir).ok()?;
                let cfg = dir.join("haproxy.cfg");
                std::fs::write(
                    &cfg,
                    format!(
                        "global\n  maxconn 4000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                         frontend f\n  bind {addr}\n  default_backend b\nbackend b\n  server s {server}\n"
                    ),
                )
                .ok()?;
                let mut c = Command::new("haproxy");
                c.arg("-db").arg("-f").arg(&cfg);
                (c, Some(dir))
            }
            _ => {
                let mut c = Command::new("socat");
                c.arg(format!(
                    "TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
                    addr.port()
                ))
                .arg(format!("TCP:{server}"));
                (c, None)
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let proxy = TcpProxy {
            child,
            addr,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if TcpStream::connect(addr).is_ok() {
                return Some(proxy);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The median, or NaN when the part did not run.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run_client(cg: &TestCgroup, mode: &str, server: SocketAddr, conns: u64) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_str().expect("utf-8 path");
    let addr = server.to_string();
    let run = client::run(
        Place {
            cgroup: Some(cg),
            netns: None,
        },
        exe,
        &["--client", mode, &addr, &conns.to_string()],
        Duration::from_secs(300),
    );
    assert!(run.ok(), "client {mode} failed: {run:?}");
    run.stdout.trim().parse().expect("client prints one number")
}

/// Client side: prints MiB/s (bulk) or connections/s (rate).
fn client_main(args: &[String]) {
    let (mode, addr) = (&args[0], args[1].parse::<SocketAddr>().expect("addr"));
    let conns: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(CONNS);
    match mode.as_str() {
        "bulk" => {
            let start = Instant::now();
            let mut s = TcpStream::connect(addr).expect("connect");
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert_eq!(got, BULK_BYTES);
            println!("{}", got as f64 / 1048576.0 / start.elapsed().as_secs_f64());
        }
        _ => {
            let http = mode == "http";
            let start = Instant::now();
            let threads: Vec<_> = (0..PARALLEL)
                .map(|_| {
                    std::thread::spawn(move || {
                        for _ in 0..conns / PARALLEL {
                            let mut s = TcpStream::connect(addr).expect("connect");
                            if http {
                                s.write_all(HTTP_REQUEST).expect("write");
                                let mut resp = Vec::new();
                                s.read_to_end(&mut resp).expect("read");
                                assert!(resp.starts_with(b"HTTP/1.1 200"), "not a 200");
                            } else {
                                let mut b = [0u8; 1];
                                s.read_exact(&mut b).expect("read");
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("client thread");
            }
            println!(
                "{}",
                (conns / PARALLEL * PARALLEL) as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
}

fn start_server(serve: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve_bulk(mut s: TcpStream) {
    let buf = vec![0x5au8; 256 * 1024];
    let mut left = BULK_BYTES;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

const HTTP_REQUEST: &[u8] =
    b"GET /rate HTTP/1.1\r\nHost: rate.test\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n";

/// HTTP/1.1 requests without bodies (headers read up to 8 KB), each
/// answered with a short 200; the connection is closed after a request
/// that says `Connection: close`, else kept for the next (as nginx does).
fn serve_http(mut s: TcpStream) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let end = loop {
            if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if req.len() >= 8192 {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
        let close = head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"));
        req.drain(..end);
        let answer: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
        };
        if s.write_all(answer).is_err() || close {
            return;
        }
    }
}

/// One HTTP/1.1 request (headers read up to 8 KB), a short 200, close.
fn serve_http_close(mut s: TcpStream) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
}

fn serve_one_byte(mut s: TcpStream) {
    let _ = s.write_all(b"x");
}
