//! Finding the cgroup v2 mount and resolving `--cgroup` paths under it.
use std::path::{Path, PathBuf};

use super::Error;

/// The cgroup2 mount point: `/sys/fs/cgroup` on pure v2 hosts,
/// e.g. `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf, Error> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(Error::Proc)?;
    parse_cgroup2_mount(&mounts).ok_or(Error::NoCgroup2)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Resolves `path` (relative to the cgroup2 mount; a leading `/` is allowed)
/// to a directory that exists.
pub fn resolve_cgroup(mount: &Path, path: &str) -> Result<PathBuf, Error> {
    let rel = path.trim_start_matches('/');
    let full = if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    };
    if rel.split('/').any(|c| c == "..") || !full.join("cgroup.procs").exists() {
        return Err(Error::CgroupMissing {
            path: path.to_string(),
            full: full.display().to_string(),
        });
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_unified_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn missing_cgroup_names_the_path() {
        let err = resolve_cgroup(Path::new("/nonexistent-mount"), "/sure").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-mount/sure"), "{err}");
        let err = resolve_cgroup(Path::new("/tmp"), "/../etc").unwrap_err();
        assert!(matches!(err, Error::CgroupMissing { .. }));
    }
}
