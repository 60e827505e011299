//! The detection corpus through the real agent under the kernel redirect:
//! the agent binary attached to a throwaway cgroup, a [`RecordingUpstream`]
//! on loopback (HTTPS with a test CA the agent trusts, and plain HTTP), and
//! curl run inside the cgroup for each case, trusting the agent's CA. A
//! case passed when the upstream got the request and the client got
//! exactly what the upstream answered; anything else (a 403/429 from the
//! agent, a cut response) counts as blocked. Shared by `cargo xtask bench
//! detect` and `tests/tests/detection_e2e.rs` (root only).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    agent::Agent,
    cgroup::TestCgroup,
    client::{self, Place},
    corpus::{Case, CaseListener},
    free_port,
    recording_upstream::{Answer, Recorded, RecordingUpstream},
    tls_upstream::TestCa,
};

/// What happened to one case.
#[derive(Debug)]
pub struct CaseRun {
    /// Refused or cut: the client did not get the upstream's answer untouched.
    pub blocked: bool,
    /// The HTTP status the client got (None: no response).
    pub status: Option<u16>,
    /// What the upstream recorded for this case (None: nothing arrived).
    pub arrived: Option<Recorded>,
    /// curl's exit code and error text, for reports.
    pub curl_error: Option<String>,
}

/// A running agent, cgroup and upstream for corpus cases.
pub struct CorpusAgent {
    pub agent: Agent,
    pub cg: TestCgroup,
    pub up: RecordingUpstream,
    dir: PathBuf,
    agent_ca: PathBuf,
}

impl Drop for CorpusAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when the corpus case can be sent under the network rule: it
/// connects to loopback on the transparent listener (other cases are judged
/// in process only).
pub fn sendable(case: &Case) -> bool {
    case.request.listener == CaseListener::Transparent
        && case.request.connect_addr().ip().is_loopback()
}

impl CorpusAgent {
    /// Starts the agent in `mode` with a cgroup of its own and an upstream
    /// whose certificate covers `tls_hosts`.
    pub fn start(tag: &str, mode: &str, tls_hosts: &[&str]) -> CorpusAgent {
        let dir = std::env::temp_dir().join(format!(
            "plk-corpus-{tag}-{}-{}",
            std::process::id(),
            crate::unique_index()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = TestCa::new("pipelock corpus upstream CA");
        let up_ca = dir.join("upstream-ca.pem");
        ca.write_pem(&up_ca);
        let up = RecordingUpstream::start(&ca, tls_hosts);
        let cg = TestCgroup::new(&format!("corpus-{tag}"));
        let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let state = dir.join("state");
        let args: Vec<String> = [
            "--cgroup",
            cg.rel(),
            "--redirect-addr",
            &redirect.to_string(),
            "--mode",
            mode,
            "--upstream-ca",
            &up_ca.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = Agent::start(&args);
        CorpusAgent {
            agent,
            cg,
            up,
            agent_ca: state.join("ca.crt"),
            dir,
        }
    }

    /// Sends one case with curl from the cgroup and judges what came back.
    pub fn run(&self, case: &Case) -> anyhow::Result<CaseRun> {
        let r = &case.request;
        let answer = match &case.response {
            Some(resp) => Answer {
                status: resp.status,
                headers: resp.headers.clone(),
                body: resp.body(&case.id)?,
            },
            None => Answer::default(),
        };
        self.up.answer(answer.clone());
        let before = self.up.count();
        let (scheme, port, up) = if r.tls {
            ("https", 443, self.up.tls_addr)
        } else {
            ("http", 80, self.up.plain_addr)
        };
        let url = format!("{scheme}://{}{}", r.host, r.path);
        let connect_to = format!("{}:{port}:127.0.0.1:{}", r.host, up.port());
        let out_file = self.dir.join(format!("out-{}", crate::unique_index()));
        let body_file = self.dir.join(format!("body-{}", crate::unique_index()));
        let ca = self.agent_ca.display().to_string();
        let out = out_file.display().to_string();
        let mut args: Vec<String> = [
            "-sS",
            "--max-time",
            "15",
            "--path-as-is",
            "--globoff",
            "--cacert",
            &ca,
            "--connect-to",
            &connect_to,
            "-o",
            &out,
            "-w",
            "%{http_code}",
            "-X",
            &r.method,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in &r.headers {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        let body = r.body(&case.id)?;
        if !body.is_empty() {
            std::fs::write(&body_file, &body)?;
            args.push("--data-binary".into());
            args.push(format!("@{}", body_file.display()));
        }
        args.push(url);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = client::run(
            Place {
                cgroup: Some(&self.cg),
                netns: None,
            },
            "curl",
            &argv,
            Duration::from_secs(30),
        );
        let got = std::fs::read(&out_file).unwrap_or_default();
        let _ = std::fs::remove_file(&out_file);
        let _ = std::fs::remove_file(&body_file);
        let status = run.stdout.trim().parse::<u16>().ok().filter(|&s| s != 0);
        let seen = self.up.seen();
        let arrived = (seen.len() > before).then(|| seen[before].clone());
        let untouched =
            run.ok() && arrived.is_some() && status == Some(answer.status) && got == answer.body;
        Ok(CaseRun {
            blocked: !untouched,
            status,
            arrived,
            curl_error: (!run.ok()).then(|| format!("exit {:?}: {}", run.code, run.stderr.trim())),
        })
    }
}

impl CorpusAgent {
    /// The agent's CA certificate (clients trust it).
    pub fn agent_ca(&self) -> &std::path::Path {
        &self.agent_ca
    }
}
