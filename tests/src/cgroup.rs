//! A throwaway cgroup v2 directory under the cgroup2 mount, removed on drop
//! (its processes are moved back to the mount's root first).
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// A cgroup created for one test.
pub struct TestCgroup {
    rel: String,
    dir: PathBuf,
    mount: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/plk-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let mount = pipelock_agent::redirect::cgroup2_mount().expect("cgroup2 mount");
        let rel = format!(
            "/plk-{tag}-{}-{}",
            std::process::id(),
            crate::unique_index()
        );
        let dir = mount.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("creating test cgroup");
        TestCgroup { rel, dir, mount }
    }

    /// Path relative to the cgroup2 mount, as `--cgroup` takes it.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Absolute directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup id the kernel reports (the directory's inode number).
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).expect("cgroup metadata").ino()
    }

    /// `cgroup.procs` of this cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let root_procs = self.mount.join("cgroup.procs");
        if let Ok(procs) = std::fs::read_to_string(self.procs_file()) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&root_procs, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
