//! WebSocket end to end through the real agent under the real kernel
//! redirect: a Python `websockets` server on loopback (started here,
//! outside the cgroup, recording every message it gets) and a Python
//! `websockets` client in the covered cgroup. Messages are scanned one by
//! one: a secret (whole or fragmented) never reaches the server, an
//! injected server message never reaches the client, binary and over-size
//! messages are refused, audit forwards and logs; an upgrade to anything
//! but WebSocket is refused. The same over wss: the agent intercepts the
//! TLS, verifies the server's certificate and scans the messages inside.
use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pipelock_tests::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, ClientRun, Place},
    free_port, require_root,
    upstream::INJECTION,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const MAX_MESSAGE: usize = 64 * 1024;
/// Debian's interpreter, which has `python3-websockets` (not whatever
/// `python3` is first on PATH).
const PYTHON: &str = "/usr/bin/python3";

fn secret() -> String {
    format!("ghp_{}", "aB3dE5gH7jK9".repeat(3))
}

const SERVER: &str = r#"
import asyncio, json, ssl, sys, websockets
port, record, injection = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tls = None
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
async def handler(ws, path=None):
    try:
        await serve(ws)
    except websockets.ConnectionClosed:
        pass
async def serve(ws):
    async for m in ws:
        kind = "text" if isinstance(m, str) else "binary"
        data = m if kind == "text" else m.hex()
        with open(record, "a") as f:
            f.write(json.dumps({"type": kind, "data": data}) + "\n")
        if m == "inject-me":
            await ws.send("Here you go. " + injection)
        elif kind == "text":
            await ws.send("echo:" + m)
        else:
            await ws.send(m)
async def main():
    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, ssl=tls):
        await asyncio.Future()
asyncio.run(main())
"#;

const CLIENT: &str = r#"
import asyncio, json, ssl, sys, websockets
async def main():
    url, actions = sys.argv[1], json.loads(sys.argv[2])
    extra = {}
    if len(sys.argv) > 3:
        # wss: trust the agent's CA; the name is the URL's, the address loopback.
        extra = {"ssl": ssl.create_default_context(cafile=sys.argv[3]), "host": "127.0.0.1", "server_hostname": "localhost"}
    out = []
    try:
        async with websockets.connect(url, max_size=None, open_timeout=10, close_timeout=3, **extra) as ws:
            out.append({"extensions": [e.name for e in ws.extensions]})
            for a in actions:
                if "text" in a:
                    await ws.send(a["text"])
                elif "frags" in a:
                    await ws.send(a["frags"])
                elif "binary" in a:
                    await ws.send(bytes.fromhex(a["binary"]))
                m = await asyncio.wait_for(ws.recv(), 10)
                out.append({"recv": m if isinstance(m, str) else m.hex()})
    except websockets.ConnectionClosed as e:
        out.append({"closed": e.rcvd.code if e.rcvd else None})
    except websockets.InvalidStatusCode as e:
        out.append({"status": e.status_code})
    print(json.dumps(out))
asyncio.run(main())
"#;

/// The WebSocket server: a child process recording what it gets.
struct Server {
    child: Child,
    port: u16,
    record: PathBuf,
    /// Certificate and key files when it serves wss.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(None)
    }

    /// `tls`: certificate and key PEM files, to serve wss.
    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> Server {
        let port = free_port();
        let record = std::env::temp_dir().join(format!(
            "plk-ws-record-{}-{}",
            std::process::id(),
            pipelock_tests::unique_index()
        ));
        let _ = std::fs::remove_file(&record);
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-c", SERVER, &port.to_string()])
            .arg(&record)
            .arg(INJECTION);
        if let Some((cert, key)) = &tls {
            cmd.arg(cert).arg(key);
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 websockets server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "websocket server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            port,
            record,
            tls,
        }
    }

    fn url(&self, path: &str) -> String {
        match self.tls {
            Some(_) => format!("wss://localhost:{}{path}", self.port),
            None => format!("ws://127.0.0.1:{}{path}", self.port),
        }
    }

    /// Everything the server received so far.
    fn seen(&self) -> String {
        std::fs::read_to_string(&self.record).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.record);
        if let Some((cert, key)) = &self.tls {
            let _ = std::fs::remove_file(cert);
            let _ = std::fs::remove_file(key);
        }
    }
}

struct Setup {
    agent: Agent,
    server: Server,
    cg: TestCgroup,
    _config: PathBuf,
    /// The agent's CA file when the server speaks wss.
    agent_ca: Option<PathBuf>,
    state: Option<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self._config);
        if let Some(state) = &self.state {
            let _ = std::fs::remove_dir_all(state);
        }
    }
}

fn start(mode: &str) -> Setup {
    start_with(mode, false)
}

/// `wss`: the server speaks TLS with a certificate of a test CA the agent
/// trusts (`--upstream-ca`); the client trusts the agent's CA.
fn start_with(mode: &str, wss: bool) -> Setup {
    let cg = TestCgroup::new(&format!("ws-{mode}"));
    let tmp = |what: &str| {
        std::env::temp_dir().join(format!(
            "plk-ws-{what}-{}-{}",
            std::process::id(),
            pipelock_tests::unique_index()
        ))
    };
    let mut args = Vec::new();
    let (mut state, mut agent_ca) = (None, None);
    let server = if wss {
        let ca = pipelock_tests::tls_upstream::TestCa::new("pipelock ws upstream CA");
        let (cert, key) = ca.leaf_pem(&["localhost"]);
        let (cert_file, key_file, ca_file) = (tmp("cert.pem"), tmp("key.pem"), tmp("upca.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        ca.write_pem(&ca_file);
        let dir = tmp("state");
        args.extend([
            "--state-dir".to_string(),
            dir.display().to_string(),
            "--upstream-ca".to_string(),
            ca_file.display().to_string(),
        ]);
        agent_ca = Some(dir.join("ca.crt"));
        state = Some(dir);
        Server::start_with(Some((cert_file, key_file)))
    } else {
        Server::start()
    };
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "version: 1\nmode: {mode}\nresponse_scanning:\n  enabled: true\n\
         websocket_proxy:\n  enabled: true\n  max_message_bytes: {MAX_MESSAGE}\n\
         interceptor:\n  cgroup: {}\n  redirect_addr: {redirect}\n",
        cg.rel()
    );
    let config = std::env::temp_dir().join(format!(
        "plk-ws-config-{}-{}.yaml",
        std::process::id(),
        pipelock_tests::unique_index()
    ));
    std::fs::write(&config, yaml).unwrap();
    args.extend(["--config".into(), config.display().to_string()]);
    let agent = Agent::start(&args);
    Setup {
        agent,
        server,
        cg,
        _config: config,
        agent_ca,
        state,
    }
}

impl Setup {
    fn place(&self) -> Place<'_> {
        Place {
            cgroup: Some(&self.cg),
            netns: None,
        }
    }

    /// Runs the client with `actions` (each sends one message and waits for
    /// one); returns its events.
    fn client(&self, actions: Value) -> Vec<Value> {
        let (url, actions) = (self.server.url("/chat"), actions.to_string());
        let mut args = vec!["-c", CLIENT, &url, &actions];
        let ca = self.agent_ca.as_ref().map(|p| p.display().to_string());
        if let Some(ca) = &ca {
            args.push(ca);
        }
        let run = client::run(self.place(), PYTHON, &args, TIMEOUT);
        assert!(
            run.ok(),
            "client failed: {run:?}\nagent:\n{}",
            self.agent.output()
        );
        serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("client output {run:?}: {e}"))
    }

    fn wait_finding(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self.agent.wait_for_line(Duration::from_secs(10), |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["target"] == "pipelock::finding" && pred(&v))
                .unwrap_or(false)
        });
        let line = line
            .unwrap_or_else(|| panic!("no matching finding; agent log:\n{}", self.agent.output()));
        serde_json::from_str(&line).unwrap()
    }

    fn curl(&self, args: &[&str]) -> ClientRun {
        let mut all = vec!["-sS", "--max-time", "20"];
        all.extend_from_slice(args);
        client::run(self.place(), "curl", &all, TIMEOUT)
    }
}

fn closed(events: &[Value]) -> Option<i64> {
    events.iter().find_map(|e| e["closed"].as_i64())
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn websocket_messages_are_scanned_in_balanced() {
    require_root();
    let s = start("balanced");
    let secret = secret();

    // A clean message round-trips; the compression offer was removed.
    let ev = s.client(json!([{"text": "hello"}, {"text": "again"}]));
    assert_eq!(
        ev,
        vec![
            json!({"extensions": []}),
            json!({"recv": "echo:hello"}),
            json!({"recv": "echo:again"})
        ],
        "agent:\n{}",
        s.agent.output()
    );
    assert!(s.server.seen().contains("again"));

    // A secret in a text message: close 1008, never forwarded.
    let ev = s.client(json!([{"text": "ok"}, {"text": format!("my token is {secret}")}]));
    assert_eq!(ev[1], json!({"recv": "echo:ok"}), "{ev:?}");
    assert_eq!(closed(&ev), Some(1008), "{ev:?}");
    let f = s.wait_finding(|f| f["rule_id"] == "dlp.github_token");
    assert_eq!(f["action"], "block");
    assert_eq!(f["direction"], "request");
    assert_eq!(f["comm"], "python3");

    // The same secret split across fragments (and mid-token).
    let (a, b) = secret.split_at(10);
    let ev = s.client(json!([{"frags": ["my token is ", a, b, " bye"]}]));
    assert_eq!(closed(&ev), Some(1008), "{ev:?}");

    // An injected server message is cut before the client.
    let ev = s.client(json!([{"text": "inject-me"}]));
    assert_eq!(closed(&ev), Some(1008), "{ev:?}");
    assert!(!ev.iter().any(|e| e["recv"].is_string()), "{ev:?}");
    let f = s.wait_finding(|f| f["direction"] == "response" && f["action"] == "block");
    assert!(
        f["rule_id"].as_str().unwrap_or("").starts_with("inj"),
        "{f}"
    );

    // Binary refused by default (close 1003), not forwarded.
    let ev = s.client(json!([{"binary": "00ff00ff"}]));
    assert_eq!(closed(&ev), Some(1003), "{ev:?}");
    assert!(!s.server.seen().contains("00ff00ff"));

    // Over max_message_bytes: close 1009, not forwarded.
    let big = "z".repeat(MAX_MESSAGE + 1);
    let ev = s.client(json!([{"text": big}]));
    assert_eq!(closed(&ev), Some(1009), "{ev:?}");

    let seen = s.server.seen();
    assert!(!seen.contains(&secret), "server got the secret: {seen}");
    assert!(
        !seen.contains(a) || !seen.contains(b),
        "fragments reached the server: {seen}"
    );
    assert!(
        !seen.contains("zzzzzzzz"),
        "over-size message reached the server"
    );
    assert!(
        !s.agent.output().contains(&secret),
        "agent log holds the secret"
    );
    assert!(
        s.agent.output().contains("websocket closed"),
        "no websocket log line"
    );

    // Any other upgrade cannot be scanned: refused before the upstream.
    let run = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: custom-proto",
        &format!("http://127.0.0.1:{}/raw", s.server.port),
    ]);
    assert_eq!(run.stdout.trim(), "403", "{run:?}");
    let f = s.wait_finding(|f| f["rule_id"] == "scanner.unscannable");
    assert_eq!(f["action"], "block");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn websocket_audit_forwards_and_logs() {
    require_root();
    let s = start("audit");
    let secret = secret();
    let msg = format!("my token is {secret}");
    let ev = s.client(json!([{"text": msg}, {"binary": "0102"}, {"text": "inject-me"}]));
    assert_eq!(ev[1], json!({"recv": format!("echo:{msg}")}), "{ev:?}");
    assert_eq!(ev[2], json!({"recv": "0102"}), "{ev:?}");
    assert_eq!(
        ev[3],
        json!({"recv": format!("Here you go. {INJECTION}")}),
        "{ev:?}"
    );
    assert!(s.server.seen().contains(&secret));
    let f = s.wait_finding(|f| f["rule_id"] == "dlp.github_token" && f["direction"] == "request");
    assert_eq!(f["action"], "log");
    let f = s.wait_finding(|f| f["rule_id"] == "scanner.unscannable");
    assert_eq!(f["action"], "log");
    s.wait_finding(|f| {
        f["direction"] == "response" && f["rule_id"].as_str().unwrap_or("").starts_with("inj")
    });
    assert!(
        !s.agent.output().contains(&secret),
        "agent log holds the secret"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn wss_messages_are_scanned_after_tls_interception() {
    require_root();
    let s = start_with("balanced", true);
    let secret = secret();
    let ev = s.client(json!([{"text": "hello over tls"}]));
    assert_eq!(
        ev,
        vec![
            json!({"extensions": []}),
            json!({"recv": "echo:hello over tls"})
        ],
        "agent:\n{}",
        s.agent.output()
    );
    let ev = s.client(json!([{"text": "ok"}, {"text": format!("my token is {secret}")}]));
    assert_eq!(ev[1], json!({"recv": "echo:ok"}), "{ev:?}");
    assert_eq!(closed(&ev), Some(1008), "{ev:?}");
    let f = s.wait_finding(|f| f["rule_id"] == "dlp.github_token");
    assert_eq!(f["action"], "block");
    let ev = s.client(json!([{"text": "inject-me"}]));
    assert_eq!(closed(&ev), Some(1008), "{ev:?}");
    let seen = s.server.seen();
    assert!(seen.contains("hello over tls"), "{seen}");
    assert!(!seen.contains(&secret), "server got the secret: {seen}");
    let tls = s
        .agent
        .conn_records()
        .into_iter()
        .any(|r| r["kind"] == "tls" && r["comm"] == "python3");
    assert!(
        tls,
        "no intercepted TLS connection record:\n{}",
        s.agent.output()
    );
}
