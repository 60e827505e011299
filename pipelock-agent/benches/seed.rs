//! Seed-phrase pass benchmark (not a test): single-thread throughput of
//! `SeedScanner` on 8 MB fed in 4 KB chunks: real English text, the same
//! text with a 24-word BIP-39 phrase every 10 KB, and random bytes.
//! Run: `cargo bench -p pipelock-agent --bench seed`.
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

#[path = "common/mod.rs"]
mod common;

use pipelock_agent::scan::passes::seed::{SeedHit, SeedScanner};

/// Time spent measuring each configuration.
const MEASURE: Duration = Duration::from_millis(1500);
/// Stream-mode chunk size (a typical HTTP body read).
const CHUNK: usize = 4096;
/// Bytes per input.
const SIZE: usize = 8 << 20;

const PHRASE: &str = "void come effort suffer camp survey warrior heavy shoot primary clutch \
                      crush open amazing screen patrol group space point ten exist slush involve \
                      unfold";

/// Real English text from the machine (licenses, copyright files), in a
/// stable order, repeated up to `target` bytes.
fn corpus(target: usize) -> Vec<u8> {
    let mut text = common::real_text(target);
    if text.is_empty() {
        text.extend_from_slice(b"The software is provided as is, without warranty of any kind.\n");
    }
    let real = text.len();
    while text.len() < target {
        text.extend_from_within(..real.min(target - text.len()));
    }
    text.truncate(target);
    eprintln!(
        "corpus: {} distinct bytes of real text, repeated to {target}",
        real.min(target)
    );
    text
}

fn scan(body: &[u8], out: &mut Vec<SeedHit>) -> usize {
    let mut s = SeedScanner::default();
    out.clear();
    for c in body.chunks(CHUNK) {
        s.feed(c, out);
    }
    s.finish(out);
    out.len()
}

/// This thread's CPU time in seconds.
fn cpu_time() -> f64 {
    common::thread_cpu().as_secs_f64()
}

/// MB/s (wall clock, thread CPU time) over repeated full passes of `body` through `f`.
fn throughput(body: &[u8], mut f: impl FnMut(&[u8]) -> usize) -> (f64, f64) {
    let mut bytes = 0usize;
    let mut sink = 0usize;
    let start = Instant::now();
    let cpu = cpu_time();
    while start.elapsed() < MEASURE {
        sink += f(black_box(body));
        bytes += body.len();
    }
    black_box(sink);
    let mb = bytes as f64 / 1e6;
    (mb / start.elapsed().as_secs_f64(), mb / (cpu_time() - cpu))
}

fn main() {
    let text = corpus(SIZE);
    let mut seeded = Vec::with_capacity(SIZE + SIZE / 100);
    for piece in text.chunks(10 * 1024) {
        seeded.extend_from_slice(piece);
        seeded.extend_from_slice(b"\nmnemonic: ");
        seeded.extend_from_slice(PHRASE.as_bytes());
        seeded.push(b'\n');
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let random: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    println!(
        "seed-phrase pass, {} MB in {CHUNK}-byte chunks, single thread",
        SIZE >> 20
    );
    let mut out = Vec::new();
    for (name, body) in [
        ("english text", &text),
        ("text + phrase every 10 KB", &seeded),
        ("random bytes", &random),
    ] {
        let hits = scan(body, &mut out);
        let (wall, cpu) = throughput(body, |b| scan(b, &mut out));
        println!("{name:<28} {wall:>7.0} MB/s wall {cpu:>7.0} MB/s cpu   {hits} hits");
    }
    // Yardstick for this machine's load: one vectorised compare-and-count.
    let (wall, cpu) = throughput(&text, |b| b.iter().filter(|&&c| c == b'\n').count());
    println!(
        "{:<28} {wall:>7.0} MB/s wall {cpu:>7.0} MB/s cpu",
        "(count of '\\n', yardstick)"
    );
}
