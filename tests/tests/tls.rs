//! TLS interception end to end with real clients (curl, python, Ruby
//! Net::HTTP, HTTParty, Faraday) on loopback: the in-process tier hands each
//! accepted connection to the agent's real `dispatch::serve` with a fixed
//! original destination (an HTTPS upstream with its own test CA, trusted via
//! `--upstream-ca`); clients trust the agent's exported CA.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use pipelock_agent::config::NonHttpAction;
use pipelock_tests::{
    tls_client::{Client, client_config},
    tls_harness::{AgentOptions, InProcessAgent, rss_kib, sample_peak_rss, temp_dir},
    tls_upstream::{HttpsUpstream, TcpEcho, TestCa, pattern_sha256},
};

const NAMES: &[&str] = &["upstream.test", "www.pass.test", "localhost", "127.0.0.1"];
const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a client with a hard time limit.
fn run(program: &str, args: &[&str]) -> Out {
    let out = Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sh(script: &str) -> Out {
    run("sh", &["-c", script])
}

struct Setup {
    dir: PathBuf,
    upstream_ca: TestCa,
    upstream_ca_file: PathBuf,
    up: HttpsUpstream,
    agent: InProcessAgent,
}

impl Setup {
    fn new(tag: &str, alpn: &[&[u8]], tweak: impl FnOnce(&mut AgentOptions)) -> Setup {
        let dir = temp_dir(tag);
        let upstream_ca = TestCa::new("pipelock test upstream CA");
        let upstream_ca_file = dir.join("upstream-ca.pem");
        upstream_ca.write_pem(&upstream_ca_file);
        let up = HttpsUpstream::start(&upstream_ca, NAMES, alpn, lo());
        let mut opts = AgentOptions::new(up.addr, &dir.join("state"));
        opts.upstream_ca = Some(upstream_ca_file.clone());
        tweak(&mut opts);
        let agent = InProcessAgent::start(opts);
        Setup {
            dir,
            upstream_ca,
            upstream_ca_file,
            up,
            agent,
        }
    }

    fn port(&self) -> u16 {
        self.agent.addr.port()
    }

    fn ca(&self) -> String {
        self.agent.ca_file.display().to_string()
    }

    /// `https://upstream.test:<agent port><path>` resolved to the agent.
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port())
    }

    fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.port())
    }

    fn curl(&self, extra: &[&str], path: &str) -> Out {
        let ca = self.ca();
        let resolve = self.resolve("upstream.test");
        let url = self.url("upstream.test", path);
        let mut args = vec![
            "-sS",
            "--max-time",
            "90",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        run("curl", &args)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn curl_h1_and_h2_status_headers_and_bodies() {
    let s = Setup::new("curl", BOTH, |_| {});
    for (flag, want_version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let out = s.curl(&[flag, "-D", "-"], "/hello");
        assert!(out.ok(), "{flag}: {out:?}");
        assert!(out.stdout.contains("hello from upstream"), "{out:?}");
        assert_eq!(
            header(&out.stdout, "x-upstream-version"),
            Some(want_version),
            "{out:?}"
        );
        assert_eq!(
            header(&out.stdout, "x-upstream-sni"),
            Some("upstream.test"),
            "{out:?}"
        );
        assert_eq!(
            header(&out.stdout, "x-custom-response"),
            Some("kept"),
            "{out:?}"
        );
        for code in ["201", "404", "503"] {
            let out = s.curl(
                &[flag, "-o", "/dev/null", "-w", "%{http_code}"],
                &format!("/status/{code}"),
            );
            assert_eq!(out.stdout, code, "{flag}: {out:?}");
        }
        // Request headers arrive; hop-by-hop ones do not.
        let out = s.curl(
            &[
                flag,
                "-H",
                "X-Custom-Request: abc",
                "-H",
                "Connection: keep-alive, X-Hop",
                "-H",
                "X-Hop: private",
            ],
            "/headers",
        );
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(v["x-custom-request"], "abc", "{out:?}");
        if flag == "--http1.1" {
            // (curl itself drops Connection for HTTP/2 and sends X-Hop as a plain field.)
            assert!(
                v.get("x-hop").is_none(),
                "hop-by-hop header forwarded: {out:?}"
            );
        }
        assert!(v.get("connection").is_none(), "{out:?}");
        // Small, sized and chunked bodies are byte-identical.
        for path in ["/bytes/1", "/bytes/100000", "/chunked/3000001"] {
            let n: u64 = path
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("n");
            let out = sh(&format!(
                "curl -sS {flag} --cacert {} --resolve {} {} | sha256sum",
                s.ca(),
                s.resolve("upstream.test"),
                s.url("upstream.test", path)
            ));
            assert!(
                out.stdout.starts_with(&pattern_sha256(n)),
                "{flag} {path}: {out:?}"
            );
        }
    }
    let rec = s
        .agent
        .wait_record(Duration::from_secs(5), |r| r.kind == "tls")
        .expect("a tls record");
    assert!(rec.bytes_up > 0 && rec.bytes_down > 0, "{rec:?}");
}

#[test]
fn uploads_expect_continue_and_echo() {
    let s = Setup::new("upload", BOTH, |_| {});
    let file = s.dir.join("upload.bin");
    let data: Vec<u8> = (0..5_000_000u64)
        .map(pipelock_tests::tls_upstream::pattern_byte)
        .collect();
    std::fs::write(&file, &data).expect("write");
    let at = format!("@{}", file.display());
    for flag in ["--http1.1", "--http2"] {
        let out = s.curl(
            &[flag, "-H", "Expect: 100-continue", "--data-binary", &at],
            "/sha",
        );
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(v["len"], 5_000_000, "{out:?}");
        assert_eq!(v["sha256"], pattern_sha256(5_000_000), "{out:?}");
        // Chunked upload streamed back.
        let out = sh(&format!(
            "curl -sS {flag} --cacert {} --resolve {} -H 'Transfer-Encoding: chunked' --data-binary {at} {} | sha256sum",
            s.ca(),
            s.resolve("upstream.test"),
            s.url("upstream.test", "/echo")
        ));
        assert!(
            out.stdout.starts_with(&pattern_sha256(5_000_000)),
            "{flag}: {out:?}"
        );
    }
}

#[test]
fn hundred_megabytes_stream_with_flat_rss() {
    let s = Setup::new("bulk", BOTH, |_| {});
    const N: u64 = 100 * 1024 * 1024;
    let pid = std::process::id();
    for flag in ["--http1.1", "--http2"] {
        let base = rss_kib(pid).unwrap_or_else(|e| panic!("sampling this process's RSS: {e:#}"));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = sample_peak_rss(pid, done.clone());
        let out = sh(&format!(
            "curl -sS {flag} --limit-rate 200M --cacert {} --resolve {} {} | sha256sum",
            s.ca(),
            s.resolve("upstream.test"),
            s.url("upstream.test", &format!("/bytes/{N}"))
        ));
        done.store(true, Ordering::Relaxed);
        let peak = sampler
            .join()
            .expect("sampler thread")
            .unwrap_or_else(|e| panic!("sampling this process's RSS: {e:#}"));
        assert!(
            out.stdout.starts_with(&pattern_sha256(N)),
            "{flag}: {out:?}"
        );
        let grew_mib = peak.saturating_sub(base) / 1024;
        // Upstream and agent share this process: whole-body buffering would add ≥ 100 MiB.
        assert!(
            grew_mib < 40,
            "{flag}: RSS grew by {grew_mib} MiB while streaming 100 MiB"
        );
    }
}

#[test]
fn alpn_follows_upstream_and_h2_only_clients_are_translated() {
    let s = Setup::new("alpn", H1_ONLY, |_| {});
    let out = s.curl(
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
        "/hello",
    );
    assert_eq!(
        out.stdout, "1.1",
        "client offered h2+h1, upstream only h1: {out:?}"
    );
    // A client offering only h2 speaks HTTP/2 to the agent, which speaks
    // HTTP/1.1 upstream, with several requests on the one connection.
    let cfg = client_config(&[Path::new(&s.ca())], &[b"h2"]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let mut c = Client::connect(s.agent.addr, None, "upstream.test", cfg)
            .await
            .expect("connect");
        assert!(c.is_h2());
        for _ in 0..3 {
            let r = c.get("upstream.test", "/hello").await.expect("get");
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-upstream-version"], "HTTP/1.1");
            assert_eq!(&r.body()[..], b"hello from upstream\n");
        }
    });
}

#[test]
fn sni_less_client_gets_an_ip_certificate() {
    let s = Setup::new("nosni", BOTH, |_| {});
    let url = format!("https://127.0.0.1:{}/hello", s.port());
    let out = run("curl", &["-sS", "-D", "-", "--cacert", &s.ca(), &url]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("hello from upstream"), "{out:?}");
    assert_eq!(header(&out.stdout, "x-upstream-sni"), Some(""), "{out:?}");
    let leaf = run(
        "sh",
        &[
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{} -noservername </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName",
                s.port()
            ),
        ],
    );
    assert!(leaf.stdout.contains("IP Address:127.0.0.1"), "{leaf:?}");
}

#[test]
fn passthrough_domain_is_not_decrypted() {
    let s = Setup::new("pass", BOTH, |o| o.passthrough = vec!["*.pass.test".into()]);
    let resolve = s.resolve("www.pass.test");
    let url = s.url("www.pass.test", "/hello");
    // Trusting only the upstream's CA works: the client sees the upstream's own certificate.
    let ca = s.upstream_ca_file.display().to_string();
    let out = run(
        "curl",
        &["-sS", "--cacert", &ca, "--resolve", &resolve, &url],
    );
    assert!(
        out.ok() && out.stdout.contains("hello from upstream"),
        "{out:?}"
    );
    // Trusting only the agent's CA fails.
    let out = run(
        "curl",
        &["-sS", "--cacert", &s.ca(), "--resolve", &resolve, &url],
    );
    assert_eq!(out.code, Some(60), "{out:?}");
    let rec = s
        .agent
        .wait_record(Duration::from_secs(5), |r| r.kind == "passthrough")
        .expect("record");
    assert!(rec.bytes_down > 0, "{rec:?}");
    // Other names are still intercepted.
    let out = s.curl(&["-o", "/dev/null", "-w", "%{http_code}"], "/hello");
    assert_eq!(out.stdout, "200", "{out:?}");
    let _ = &s.upstream_ca;
}

#[test]
fn passthrough_name_the_destination_does_not_prove_is_refused() {
    // A client in a covered pod names a passthrough domain in its SNI to
    // get an undecrypted relay to an address that does not serve it.
    let s = Setup::new("pass-lie", BOTH, |o| {
        o.passthrough = vec!["*.pass.test".into()]
    });
    let ca = s.upstream_ca_file.display().to_string();
    // The upstream's certificate covers www.pass.test, not evil.pass.test.
    let resolve = s.resolve("evil.pass.test");
    let url = s.url("evil.pass.test", "/hello");
    let out = run(
        "curl",
        &["-sS", "-k", "--cacert", &ca, "--resolve", &resolve, &url],
    );
    assert!(!out.ok(), "relayed: {out:?}");
    assert!(!out.stdout.contains("hello from upstream"), "{out:?}");
    let rec = s
        .agent
        .wait_record(Duration::from_secs(5), |r| r.kind == "refused")
        .expect("refused record");
    let err = rec.error.as_deref().unwrap_or("");
    assert!(
        err.contains("did not prove to serve evil.pass.test"),
        "{rec:?}"
    );
    // The name the destination does serve is relayed (and the proof cached).
    let resolve = s.resolve("www.pass.test");
    let url = s.url("www.pass.test", "/hello");
    for _ in 0..2 {
        let out = run(
            "curl",
            &["-sS", "--cacert", &ca, "--resolve", &resolve, &url],
        );
        assert!(out.stdout.contains("hello from upstream"), "{out:?}");
    }
}

#[test]
fn untrusted_or_wrong_name_upstream_gets_502() {
    // An upstream whose CA the agent does not trust.
    let s = Setup::new("untrusted", BOTH, |_| {});
    let rogue_ca = TestCa::new("rogue CA");
    let rogue = HttpsUpstream::start(&rogue_ca, NAMES, BOTH, lo());
    let mut opts = AgentOptions::new(rogue.addr, &s.dir.join("state2"));
    opts.upstream_ca = Some(s.upstream_ca_file.clone());
    let agent = InProcessAgent::start(opts);
    let ca = agent.ca_file.display().to_string();
    let resolve = format!("upstream.test:{}:127.0.0.1", agent.addr.port());
    let url = format!("https://upstream.test:{}/hello", agent.addr.port());
    for flag in ["--http1.1", "--http2"] {
        let out = run(
            "curl",
            &[
                "-sS",
                flag,
                "-w",
                "\n%{http_code}",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                &url,
            ],
        );
        assert!(out.stdout.ends_with("502"), "{flag}: {out:?}");
        assert!(
            out.stdout.contains("certificate verification failed"),
            "{out:?}"
        );
        assert!(!out.stdout.contains("hello from upstream"), "{out:?}");
    }
    let rec = agent
        .wait_record(Duration::from_secs(5), |r| r.error.is_some())
        .expect("record");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("UnknownIssuer"),
        "{rec:?}"
    );

    // The right CA but a name the upstream's certificate does not cover.
    let resolve = s.resolve("wrong.test");
    let url = s.url("wrong.test", "/hello");
    let out = run(
        "curl",
        &[
            "-sS",
            "-w",
            "\n%{http_code}",
            "--cacert",
            &s.ca(),
            "--resolve",
            &resolve,
            &url,
        ],
    );
    assert!(out.stdout.ends_with("502"), "{out:?}");
    assert!(out.stdout.contains("NotValidForName"), "{out:?}");
}

#[test]
fn client_that_does_not_trust_the_ca_fails_and_is_logged() {
    let s = Setup::new("distrust", BOTH, |_| {});
    let out = run(
        "curl",
        &[
            "-sS",
            "--resolve",
            &s.resolve("upstream.test"),
            &s.url("upstream.test", "/hello"),
        ],
    );
    assert_eq!(out.code, Some(60), "{out:?}");
    let rec = s
        .agent
        .wait_record(Duration::from_secs(5), |r| r.error.is_some())
        .expect("record");
    assert!(
        rec.error
            .as_deref()
            .unwrap_or("")
            .contains("does not trust the pipelock CA"),
        "{rec:?}"
    );
}

fn raw_exchange(addr: SocketAddr, send: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(send)?;
    let mut buf = vec![0u8; send.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn non_http_traffic_is_relayed_or_reset_per_config() {
    let echo = TcpEcho::start(lo());
    let dir = temp_dir("nonhttp");
    let relay = InProcessAgent::start(AgentOptions::new(echo.addr, &dir.join("a")));
    let msg = b"\x00\x01\x02 not http, not tls \xff";
    assert_eq!(
        raw_exchange(relay.addr, msg).expect("relayed"),
        msg.to_vec()
    );
    let rec = relay.wait_record(Duration::from_secs(5), |r| r.kind == "relay");
    let mut opts = AgentOptions::new(echo.addr, &dir.join("b"));
    opts.non_http = NonHttpAction::Reset;
    let reset = InProcessAgent::start(opts);
    assert!(
        raw_exchange(reset.addr, msg).is_err(),
        "reset mode must not relay"
    );
    let rec2 = reset
        .wait_record(Duration::from_secs(5), |r| r.kind == "reset")
        .expect("reset record");
    assert!(
        rec2.error
            .as_deref()
            .unwrap_or("")
            .contains("neither TLS nor HTTP"),
        "{rec2:?}"
    );
    let _ = rec;

    // A server-speaks-first protocol: the greeting arrives well before the
    // 500 ms sniff timeout (the agent notices the server talking first).
    let greeter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let greeter_addr = greeter.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::Write as _;
        if let Ok((mut s, _)) = greeter.accept() {
            let _ = s.write_all(b"220 greeter ready\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let agent = InProcessAgent::start(AgentOptions::new(greeter_addr, &dir.join("c")));
    let started = std::time::Instant::now();
    let mut c = std::net::TcpStream::connect(agent.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 19];
    std::io::Read::read_exact(&mut c, &mut buf).expect("greeting");
    assert_eq!(&buf, b"220 greeter ready\r\n");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "server-first greeting took {took:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plaintext_http_is_proxied() {
    let up = pipelock_tests::upstream::Upstream::start(lo());
    let dir = temp_dir("plain");
    let agent = InProcessAgent::start(AgentOptions::new(up.addr, &dir));
    let url = format!("http://127.0.0.1:{}/bytes/200000", agent.addr.port());
    let out = sh(&format!("curl -sS {url} | sha256sum"));
    assert!(
        out.stdout.starts_with(&pattern_sha256_upstream(200000)),
        "{out:?}"
    );
    agent
        .wait_record(Duration::from_secs(5), |r| r.kind == "http")
        .expect("http record");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SHA-256 of the plaintext upstream's `/bytes/<n>` body, computed from a
/// direct fetch (its pattern is its own).
fn pattern_sha256_upstream(n: u64) -> String {
    let up = pipelock_tests::upstream::Upstream::start(lo());
    let out = sh(&format!(
        "curl -sS {} | sha256sum",
        up.url(&format!("/bytes/{n}"))
    ));
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn pipeline_blocks_requests_bodies_and_cuts_responses() {
    let s = Setup::new("pipeline", BOTH, |o| o.test_pipeline = true);
    for flag in ["--http1.1", "--http2"] {
        let out = s.curl(&[flag, "-w", "\n%{http_code}"], "/blocked/thing");
        assert!(out.stdout.ends_with("403"), "{flag}: {out:?}");
        let body = out.stdout.lines().next().unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        assert_eq!(v["error"], "blocked");
        assert_eq!(v["rule_ids"][0], "test.path");
        let out = s.curl(
            &[
                flag,
                "-w",
                "\n%{http_code}",
                "--data-binary",
                "token=SECRET",
            ],
            "/sha",
        );
        assert!(out.stdout.ends_with("403"), "{flag}: {out:?}");
        assert!(out.stdout.contains("test.body"), "{out:?}");
        // A response blocked mid-body is cut: the client never gets it whole.
        let out = s.curl(
            &[flag, "-o", "/dev/null", "-w", "%{size_download}"],
            "/inject",
        );
        assert!(!out.ok(), "{flag}: cut response must fail: {out:?}");
        let got: u64 = out.stdout.trim().parse().unwrap_or(0);
        assert!(got < 64 * 1024 + 6, "{flag}: {got} bytes passed the marker");
        // The connection still serves a clean request afterwards (new one for h1).
        let out = s.curl(&[flag, "-o", "/dev/null", "-w", "%{http_code}"], "/hello");
        assert_eq!(out.stdout, "200", "{out:?}");
    }
}

/// The upstream's view of which connection a request came on (`peer <addr>`).
fn upstream_peer(s: &Setup) -> String {
    let out = s.curl(&["--http1.1"], "/peer");
    assert!(out.ok() && out.stdout.starts_with("peer "), "{out:?}");
    out.stdout
}

#[test]
fn client_connections_share_a_kept_upstream_connection_only_under_its_verified_name() {
    // Every curl run is a client connection of its own.
    let s = Setup::new("keepalive", BOTH, |o| {
        o.upstream_keepalive = 8;
        o.test_pipeline = true;
    });
    let first = upstream_peer(&s);
    // A connection is kept once its client connection has ended, which the
    // agent may learn just after the next client connected: a few tries.
    assert!(
        (0..5).any(|_| upstream_peer(&s) == first),
        "no later client connection reused the kept upstream connection"
    );
    // A name the upstream's certificate does not cover is verified on a
    // connection of its own, and refused, though one to the same address is
    // idle.
    let out = run(
        "curl",
        &[
            "-sS",
            "--http1.1",
            "-w",
            "\n%{http_code}",
            "--cacert",
            &s.ca(),
            "--resolve",
            &s.resolve("wrong.test"),
            &s.url("wrong.test", "/peer"),
        ],
    );
    assert!(out.stdout.ends_with("502"), "{out:?}");
    assert!(out.stdout.contains("NotValidForName"), "{out:?}");
    assert!(!out.stdout.contains("peer "), "{out:?}");
    // An HTTP/2 client gets an HTTP/2 upstream connection of its own (those
    // are not kept across client connections), never the HTTP/1.1 one.
    let out = s.curl(&["--http2"], "/peer");
    assert!(out.ok() && out.stdout.starts_with("peer "), "{out:?}");
    assert_ne!(
        out.stdout, first,
        "an h2 client was served on the kept HTTP/1.1 connection"
    );
    // A response cut mid-body (the test pipeline's marker) leaves nothing
    // on a kept connection: the next client gets its own answer.
    let out = s.curl(&["--http1.1", "-o", "/dev/null"], "/inject");
    assert!(!out.ok(), "cut response must fail: {out:?}");
    for _ in 0..3 {
        let out = s.curl(&["--http1.1"], "/hello");
        assert_eq!(out.stdout, "hello from upstream\n", "{out:?}");
    }
    assert!(upstream_peer(&s).starts_with("peer "));
}

#[test]
fn an_idle_keep_alive_client_connection_leaves_its_upstream_connection_to_others() {
    let s = Setup::new("idle-release", BOTH, |o| o.upstream_keepalive = 8);
    let cfg = client_config(&[Path::new(&s.ca())], &[b"http/1.1"]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut c = rt
        .block_on(Client::connect(s.agent.addr, None, "upstream.test", cfg))
        .expect("connect");
    let mut peer = || {
        let r = rt.block_on(c.get("upstream.test", "/peer")).expect("get");
        String::from_utf8_lossy(r.body()).into_owned()
    };
    let first = peer();
    assert!(first.starts_with("peer "), "{first}");
    assert_eq!(peer(), first, "a keep-alive connection keeps its upstream");
    // In use, it is its own: another client connection gets another.
    assert_ne!(upstream_peer(&s), first);
    // Unused for a while (1 to 2 s), it is left to the next client
    // connection (the most recently kept is handed out first).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        upstream_peer(&s),
        first,
        "the idle client connection's upstream connection was not released"
    );
    // The idle client connection still works (on a kept or new upstream).
    assert!(peer().starts_with("peer "));
}

/// An upstream that answers the first request of its first connection twice
/// (a second, unasked-for response right behind the first) and every other
/// request once (`fresh c<connection>r<request>`), keeping connections open.
fn double_answering_upstream() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind(lo()).expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (conn, s) in l.incoming().take(64).enumerate() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for n in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.clear();
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nfresh c{conn:02}r{n:02}"
                    );
                    if conn == 0 && n == 0 {
                        out.push_str("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled");
                    }
                    if s.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_unasked_for_response_never_reaches_the_next_client_connection() {
    let up = double_answering_upstream();
    let dir = temp_dir("smuggle");
    let mut opts = AgentOptions::new(up, &dir);
    opts.upstream_keepalive = 8;
    let agent = InProcessAgent::start(opts);
    let url = format!("http://127.0.0.1:{}/x", agent.addr.port());
    let mut reused = false;
    for i in 0..12 {
        // Each curl run is a client connection of its own, right after the last.
        let out = run("curl", &["-sS", "--max-time", "20", &url]);
        assert!(!out.stdout.contains("smuggled"), "request {i}: {out:?}");
        assert!(out.stdout.starts_with("fresh c"), "request {i}: {out:?}");
        reused |= !out.stdout.ends_with("r00");
    }
    // Clean connections were reused: the check above ran on that path.
    assert!(reused, "no upstream connection was reused");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_upstream_keepalive_each_client_connection_dials_its_own() {
    let s = Setup::new("no-keepalive", BOTH, |o| o.upstream_keepalive = 0);
    assert_ne!(upstream_peer(&s), upstream_peer(&s));
}

#[test]
fn trailers_and_upgrade_are_relayed() {
    let s = Setup::new("trailers", BOTH, |_| {});
    for extra in [&["--http2"][..], &["--http1.1", "-H", "TE: trailers"][..]] {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["-D", "-", "-o", "/dev/null"]);
        let out = s.curl(&args, "/trailers");
        assert!(out.ok(), "{extra:?}: {out:?}");
        assert_eq!(
            header(&out.stdout, "x-trailer"),
            Some("done"),
            "{extra:?}: {out:?}"
        );
    }
    // Upgrade over HTTP/1.1 through the intercepted TLS connection (python ssl socket).
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{ca}")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="upstream.test")
s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: upstream.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk: break
    head += chunk
assert head.startswith(b"HTTP/1.1 101"), head
s.sendall(b"ping")
got = b""
while len(got) < 9:
    chunk = s.recv(4096)
    if not chunk: break
    got += chunk
print(got.decode())
"#,
        ca = s.ca(),
        port = s.port()
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "echo:ping", "{out:?}");
}

#[test]
fn python_and_ruby_clients() {
    let s = Setup::new("langs", BOTH, |_| {});
    let ca = s.ca();
    let base = format!("https://127.0.0.1:{}", s.port());
    let named = s.url("upstream.test", "");
    let want_sha = pattern_sha256(300_000);
    let py = format!(
        r#"
import ssl, urllib.request, hashlib, json
ctx = ssl.create_default_context(cafile="{ca}")
r = urllib.request.urlopen("{base}/bytes/300000", context=ctx)
assert r.status == 200
print(hashlib.sha256(r.read()).hexdigest())
req = urllib.request.Request("{base}/sha", data=b"x" * 100000, method="POST")
print(json.load(urllib.request.urlopen(req, context=ctx))["len"])
"#
    );
    let out = run("python3", &["-c", &py]);
    assert!(out.ok(), "python: {out:?}");
    assert_eq!(
        out.stdout,
        format!("{want_sha}\n100000\n"),
        "python: {out:?}"
    );

    let net_http = format!(
        r#"
require "net/http"; require "digest"; require "json"; require "uri"
u = URI("{named}/bytes/300000")
h = Net::HTTP.new(u.host, u.port)
h.ipaddr = "127.0.0.1"
h.use_ssl = true
h.ca_file = "{ca}"
h.start do |c|
  r = c.get(u.path)
  raise r.code unless r.code == "200"
  puts Digest::SHA256.hexdigest(r.body)
  p = Net::HTTP::Post.new("/sha"); p.body = "y" * 100000
  puts JSON.parse(c.request(p).body)["len"]
end
"#
    );
    let out = run("ruby", &["-e", &net_http]);
    assert!(out.ok(), "Net::HTTP: {out:?}");
    assert_eq!(
        out.stdout,
        format!("{want_sha}\n100000\n"),
        "Net::HTTP: {out:?}"
    );

    let httparty = format!(
        r#"
require "httparty"; require "digest"
r = HTTParty.get("{base}/bytes/300000", ssl_ca_file: "{ca}")
raise r.code.to_s unless r.code == 200
puts Digest::SHA256.hexdigest(r.body)
puts HTTParty.post("{base}/sha", body: "z" * 100000, ssl_ca_file: "{ca}").parsed_response.then {{ |b| b.is_a?(String) ? JSON.parse(b) : b }}["len"]
"#
    );
    let out = run("ruby", &["-rjson", "-e", &httparty]);
    assert!(out.ok(), "HTTParty: {out:?}");
    assert_eq!(
        out.stdout,
        format!("{want_sha}\n100000\n"),
        "HTTParty: {out:?}"
    );

    let faraday = format!(
        r#"
require "faraday"; require "digest"; require "json"
f = Faraday.new(url: "{base}", ssl: {{ ca_file: "{ca}" }})
r = f.get("/bytes/300000")
raise r.status.to_s unless r.status == 200
puts Digest::SHA256.hexdigest(r.body)
puts JSON.parse(f.post("/sha", "w" * 100000).body)["len"]
"#
    );
    let out = run("ruby", &["-e", &faraday]);
    assert!(out.ok(), "Faraday: {out:?}");
    assert_eq!(
        out.stdout,
        format!("{want_sha}\n100000\n"),
        "Faraday: {out:?}"
    );
}

#[test]
fn ca_is_persisted_across_restart_with_key_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::new("restart", BOTH, |_| {});
    let state = s.dir.join("state");
    let first = std::fs::read_to_string(state.join("ca.crt")).expect("ca.crt");
    let mode = std::fs::metadata(state.join("ca.key"))
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second agent on the same state dir reuses the CA: a client trusting the
    // first agent's CA talks to the second.
    let mut opts = AgentOptions::new(s.up.addr, &state);
    opts.upstream_ca = Some(s.upstream_ca_file.clone());
    let again = InProcessAgent::start(opts);
    assert_eq!(
        std::fs::read_to_string(&again.ca_file).expect("ca.crt"),
        first
    );
    let url = format!("https://upstream.test:{}/hello", again.addr.port());
    let resolve = format!("upstream.test:{}:127.0.0.1", again.addr.port());
    let out = run(
        "curl",
        &["-sS", "--cacert", &s.ca(), "--resolve", &resolve, &url],
    );
    assert!(
        out.ok() && out.stdout.contains("hello from upstream"),
        "{out:?}"
    );
    // `ca export` (the real binary) prints the same CA and creates one when missing.
    let bin = pipelock_tests::agent::agent_bin();
    if bin.exists() {
        let st = state.display().to_string();
        let out = run(
            &bin.display().to_string(),
            &["ca", "export", "--state-dir", &st],
        );
        assert!(out.ok(), "{out:?}");
        assert_eq!(out.stdout, first);
        let fresh = s.dir.join("fresh");
        let fr = fresh.display().to_string();
        let out = run(
            &bin.display().to_string(),
            &["ca", "export", "--state-dir", &fr],
        );
        assert!(
            out.ok() && out.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
            "{out:?}"
        );
        let text = sh(&format!("openssl x509 -noout -text -in {}/ca.crt", fr));
        assert!(text.stdout.contains("CA:TRUE"), "{text:?}");
        assert!(text.stdout.contains("Certificate Sign"), "{text:?}");
        assert!(text.stdout.contains("prime256v1"), "{text:?}");
        let mode = std::fs::metadata(fresh.join("ca.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    } else {
        panic!(
            "agent binary {} missing: build it first (cargo build -p pipelock-agent)",
            bin.display()
        );
    }
    let _ = Path::new("");
}

/// The real agent binary under the real kernel redirect: clients in a test
/// cgroup reach an HTTPS upstream on loopback through the agent, which
/// intercepts (and logs with attribution), streams 100 MiB with flat RSS, and
/// relays passthrough domains undecrypted.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn e2e_kernel_redirected_https_through_the_agent_binary() {
    use pipelock_tests::{
        agent::Agent,
        cgroup::TestCgroup,
        client::{self, Place},
        free_port, require_root,
    };
    require_root();
    let dir = temp_dir("e2e");
    let upstream_ca = TestCa::new("pipelock e2e upstream CA");
    let upstream_ca_file = dir.join("upstream-ca.pem");
    upstream_ca.write_pem(&upstream_ca_file);
    let up = HttpsUpstream::start(&upstream_ca, NAMES, BOTH, lo());
    let cg = TestCgroup::new("tls");
    let state = dir.join("state");
    let redirect = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--redirect-addr",
        &redirect,
        "--state-dir",
        &state.display().to_string(),
        "--upstream-ca",
        &upstream_ca_file.display().to_string(),
        "--passthrough-domain",
        "*.pass.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start(&args);
    let place = Place {
        cgroup: Some(&cg),
        netns: None,
    };
    let ca = state.join("ca.crt").display().to_string();
    let port = up.addr.port();
    let resolve = format!("upstream.test:{port}:127.0.0.1");
    let url = format!("https://upstream.test:{port}/hello");
    let limit = Duration::from_secs(120);

    for flag in ["--http1.1", "--http2"] {
        let run = client::run(
            place,
            "curl",
            &[
                "-sS",
                flag,
                "-D",
                "-",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                &url,
            ],
            limit,
        );
        assert!(run.ok(), "{flag}: {run:?}\nagent:\n{}", agent.output());
        assert!(run.stdout.contains("hello from upstream"), "{run:?}");
        let rec = agent
            .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == run.pid)
            .unwrap_or_else(|| panic!("no conn record; agent:\n{}", agent.output()));
        assert_eq!(rec["kind"], "tls", "{rec}");
        assert!(rec["error"].is_null(), "{rec}");
        assert_eq!(rec["orig_dst"], up.addr.to_string(), "{rec}");
        assert_eq!(rec["comm"], "curl", "{rec}");
    }
    let http = agent
        .records()
        .into_iter()
        .find(|r| r["target"] == "pipelock::http")
        .unwrap_or_else(|| panic!("no per-request record; agent:\n{}", agent.output()));
    assert_eq!(
        http["fields"]["host"].as_str().or(http["host"].as_str()),
        Some(&*format!("upstream.test:{port}")),
        "{http}"
    );

    // 100 MiB through the agent process, sampling its RSS.
    const N: u64 = 100 * 1024 * 1024;
    let pid = agent.pid();
    let base = rss_kib(pid).unwrap_or_else(|e| panic!("sampling the agent's RSS: {e:#}"));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak_rss(pid, done.clone());
    let script = format!(
        "curl -sS --cacert {ca} --resolve {resolve} https://upstream.test:{port}/bytes/{N} | sha256sum"
    );
    let run = client::run(place, "sh", &["-c", &script], limit);
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler thread").unwrap_or_else(|e| {
        panic!(
            "sampling the agent's RSS (did it exit?): {e:#}\nagent:\n{}",
            agent.output()
        )
    });
    assert!(run.stdout.starts_with(&pattern_sha256(N)), "{run:?}");
    let grew_mib = peak.saturating_sub(base) / 1024;
    assert!(
        grew_mib < 32,
        "agent RSS grew by {grew_mib} MiB (base {base} KiB) streaming 100 MiB"
    );

    // Passthrough: the client sees the upstream's own certificate.
    let pass_resolve = format!("www.pass.test:{port}:127.0.0.1");
    let pass_url = format!("https://www.pass.test:{port}/hello");
    let up_ca = upstream_ca_file.display().to_string();
    let run = client::run(
        place,
        "curl",
        &[
            "-sS",
            "--cacert",
            &up_ca,
            "--resolve",
            &pass_resolve,
            &pass_url,
        ],
        limit,
    );
    assert!(
        run.ok() && run.stdout.contains("hello from upstream"),
        "{run:?}"
    );
    let rec = agent
        .wait_for_conn(Duration::from_secs(10), |r| r["tgid"] == run.pid)
        .unwrap_or_else(|| panic!("no conn record; agent:\n{}", agent.output()));
    assert_eq!(rec["kind"], "passthrough", "{rec}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
