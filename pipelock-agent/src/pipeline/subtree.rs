//! Per-subtree modes (`interceptor.mode_overrides`): which override a
//! cgroup falls under, found by its id (the kernel's cgroup id is the
//! inode number of its cgroupfs directory). Kubernetes puts each container
//! in a leaf cgroup below the pod's, so an override names a subtree, not one
//! cgroup: the subtrees are walked for the id on first sight, and the answer
//! (including "none") is cached. The deepest override containing the cgroup wins.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::config::Mode;

/// Directories visited per walk at most (a node's pod cgroups are far fewer).
const MAX_WALK: usize = 50_000;
/// Cached answers kept at most; past it the cache starts over.
const MAX_CACHE: usize = 16_384;

/// Overrides by cgroup subtree.
#[derive(Debug, Default)]
pub struct SubtreeModes {
    /// (directory, mode), deepest first.
    overrides: Vec<(PathBuf, Mode)>,
    cache: Mutex<HashMap<u64, Option<Mode>>>,
}

impl SubtreeModes {
    /// `overrides`: resolved cgroup directories and their modes.
    pub fn new(mut overrides: Vec<(PathBuf, Mode)>) -> Self {
        overrides.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        SubtreeModes {
            overrides,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// True when there is no override at all.
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }

    /// The mode of the deepest override whose subtree holds cgroup `id`.
    pub fn mode_of(&self, id: u64) -> Option<Mode> {
        if self.overrides.is_empty() {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = cache.get(&id) {
            return *known;
        }
        let found = self
            .overrides
            .iter()
            .find(|(dir, _)| holds(dir, id))
            .map(|(_, m)| *m);
        if cache.len() >= MAX_CACHE {
            cache.clear();
        }
        cache.insert(id, found);
        found
    }
}

/// True when `dir` or a directory below it has inode `id`.
fn holds(dir: &Path, id: u64) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        seen += 1;
        if seen > MAX_WALK {
            tracing::warn!(dir = %dir.display(), "mode override subtree too large to walk");
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if meta.ino() == id {
            return true;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_below_an_override_takes_its_mode_the_deepest_wins() {
        let root = std::env::temp_dir().join(format!("plk-subtree-{}", std::process::id()));
        let leaf = root.join("sure/worker/pod1/ctr");
        let other = root.join("sure/web/ctr");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let modes = SubtreeModes::new(vec![
            (root.join("sure"), Mode::Audit),
            (root.join("sure/worker"), Mode::Strict),
        ]);
        assert_eq!(modes.mode_of(ino(&leaf)), Some(Mode::Strict));
        assert_eq!(modes.mode_of(ino(&other)), Some(Mode::Audit));
        assert_eq!(modes.mode_of(ino(&root)), None);
        // Cached: the answer stands without the directory.
        std::fs::remove_dir(&leaf).unwrap();
        assert_eq!(
            modes.mode_of(ino(&root.join("sure/worker/pod1"))),
            Some(Mode::Strict)
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
