//! Fail-closed state on bpffs: with `fail_mode: closed` the programs' links
//! and the maps are pinned under `<pin_dir>/<fingerprint>/`, so they outlive
//! the agent: while it is down, covered pods' connects are still rewritten
//! to the redirect address, where nothing listens, and fail instead of going
//! out unscanned. The fingerprint (eBPF object, cgroup, redirect address,
//! socket mark) names what was pinned: a restarted agent with the same one
//! adopts the pins without a gap; any other is removed before a fresh
//! attach. `pipelock-agent detach` removes everything.
use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::Error;

/// The links, under their file names.
pub const LINKS: [&str; 6] = [
    "sockops",
    "sock_create",
    "sendmsg4",
    "sendmsg6",
    "connect4",
    "connect6",
];
/// The maps, under their file names (the object's map names).
pub const MAPS: [&str; 9] = [
    "ORIG_BY_SRC",
    "ORIG_BY_COOKIE",
    "BYPASS_PORTS",
    "BYPASS_CIDRS",
    "DENY_CIDRS",
    "UDP_ALLOW",
    "GUARD",
    "UNSCANNED",
    "TARGET_CGROUPS",
];

/// Names what a pin set was made from.
pub fn fingerprint(object: &[u8], parts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(object);
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The directory of one pin set.
pub fn set_dir(pin_dir: &Path, fingerprint: &str) -> PathBuf {
    pin_dir.join(fingerprint)
}

/// True when every link and map of the set is pinned.
pub fn complete(dir: &Path) -> bool {
    LINKS
        .iter()
        .chain(MAPS.iter())
        .all(|n| dir.join(n).exists())
}

/// Makes sure `pin_dir` lies on a bpf filesystem, mounting one at
/// /sys/fs/bpf when that is where it should be and nothing is mounted.
pub fn prepare(pin_dir: &Path) -> Result<(), Error> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::Pin {
            path: bpffs.to_path_buf(),
            reason: format!("mounting bpffs: {e}"),
        })?;
        tracing::info!(path = %bpffs.display(), "mounted bpffs for fail_mode: closed");
    }
    fs::create_dir_all(pin_dir).map_err(|e| Error::Pin {
        path: pin_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !is_bpffs(pin_dir) {
        return Err(Error::Pin {
            path: pin_dir.to_path_buf(),
            reason: "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Removes every pin set under `pin_dir` except `keep`; unpinning a link
/// detaches its program. Returns the sets removed.
pub fn remove_all_but(pin_dir: &Path, keep: Option<&str>) -> Result<Vec<String>, Error> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if Some(name.as_str()) == keep || !entry.path().is_dir() {
            continue;
        }
        // Links first, so nothing is redirected into maps being removed.
        for n in LINKS.iter().chain(MAPS.iter()) {
            let p = entry.path().join(n);
            if p.exists() {
                fs::remove_file(&p).map_err(|e| Error::Pin {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        fs::remove_dir(entry.path()).map_err(|e| Error::Pin {
            path: entry.path(),
            reason: e.to_string(),
        })?;
        removed.push(name);
    }
    Ok(removed)
}

/// `pipelock-agent detach`: removes every pin set (and `pin_dir` itself
/// when it ends up empty). Returns the sets removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>, Error> {
    let removed = remove_all_but(pin_dir, None)?;
    let _ = fs::remove_dir(pin_dir);
    Ok(removed)
}
