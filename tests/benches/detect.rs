//! `cargo xtask bench detect` (= `cargo bench -p pipelock-tests --bench
//! detect`, root): every case of the detection corpus (`tests/corpus/`)
//! through the real agent in strict mode on the transparent path (a real
//! cgroup and eBPF redirect, curl inside the cgroup, a real TLS upstream on
//! loopback that records what arrives); prints recall and false-positive
//! rate per class and in total, then the cases that went wrong. Cases that
//! do not connect to loopback (metadata addresses, the forward listener's
//! DNS) are not sent, by the network rule; `tests/tests/detection.rs`
//! judges them in process.
use std::{collections::BTreeMap, time::Instant};

use pipelock_tests::{
    corpus::{self, Expect, Score},
    corpus_agent::{CorpusAgent, sendable},
};

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "bench detect needs root (cgroup, eBPF redirect): run `cargo xtask bench detect` as root"
        );
        std::process::exit(2);
    }
    let cases = corpus::load_all(&corpus::corpus_dir()).expect("the corpus loads");
    let (sent, local): (Vec<_>, Vec<_>) = cases.iter().partition(|c| sendable(c));
    let mut hosts: Vec<&str> = sent
        .iter()
        .filter(|c| c.request.tls)
        .map(|c| c.request.host.as_str())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let run = CorpusAgent::start("bench", "strict", &hosts);
    let started = Instant::now();
    let mut by_class: BTreeMap<String, Score> = BTreeMap::new();
    let mut wrong = Vec::new();
    for case in &sent {
        let got = match run.run(case) {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{}: not run: {e:#}", case.id));
                continue;
            }
        };
        by_class
            .entry(case.class.clone())
            .or_default()
            .add(case.expect, got.blocked);
        if got.blocked != (case.expect == Expect::Block) {
            wrong.push(format!(
                "{} [{}] expected {:?}, got {} (status {:?}{})",
                case.id,
                case.class,
                case.expect,
                if got.blocked { "block" } else { "pass" },
                got.status,
                got.curl_error
                    .map(|e| format!(", curl {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    println!(
        "detection corpus through the real agent (strict, transparent path, curl in the cgroup, TLS upstream on loopback): {} cases sent in {:.1} s, {} judged in process only",
        sent.len(),
        started.elapsed().as_secs_f64(),
        local.len()
    );
    println!("{}", corpus::score_table(&by_class));
    if !wrong.is_empty() {
        println!("not as labelled ({}):", wrong.len());
        for w in &wrong {
            println!("  {w}");
        }
    }
}
