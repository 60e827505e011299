//! What the benchmarks share: the real text they scan and a CPU clock that
//! is immune to other load on a shared machine.
use std::{path::PathBuf, time::Duration};

/// The files of [`real_text_files`] concatenated (one newline after each),
/// stopping once at least `limit` bytes are read; may be shorter.
pub fn real_text(limit: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for f in real_text_files() {
        if text.len() >= limit {
            break;
        }
        if let Ok(b) = std::fs::read(&f) {
            text.extend_from_slice(&b);
            text.push(b'\n');
        }
    }
    text
}

/// Real English text on the machine: the common licenses and every package's
/// copyright file, in a stable order.
fn real_text_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/usr/share/common-licenses") {
        files.extend(rd.filter_map(Result::ok).map(|e| e.path()));
    }
    if let Ok(rd) = std::fs::read_dir("/usr/share/doc") {
        files.extend(
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("copyright")),
        );
    }
    files.sort();
    files
}

/// CPU time of this thread: unlike wall time it does not count the time
/// other processes hold the core.
pub fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
