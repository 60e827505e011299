//! Kernel redirect: cgroup resolution, eBPF load/attach, bypass maps, and the
//! original-destination lookup for accepted connections.
mod cgroup;
mod loader;
mod origdst;
pub mod pin;
pub mod pods;

pub use cgroup::{cgroup2_mount, resolve_cgroup};
pub use loader::{
    FailMode, KernelGuard, RedirectConfig, Redirector, TargetCgroups, UnscannedCounts,
    check_privilege,
};
pub use origdst::{OrigDstTable, sock_key};

/// Errors of the redirect subsystem; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no cgroup v2 mount found in /proc/mounts: pipelock-agent needs the unified cgroup hierarchy"
    )]
    NoCgroup2,
    #[error("cgroup {path} not found at {full}: create it or check --cgroup")]
    CgroupMissing { path: String, full: String },
    #[error("cannot open cgroup {full}: {source}")]
    CgroupOpen {
        full: String,
        source: std::io::Error,
    },
    #[error(
        "kernel has no BTF (/sys/kernel/btf/vmlinux missing): a kernel built with CONFIG_DEBUG_INFO_BTF is required"
    )]
    NoBtf,
    #[error(
        "missing privilege: loading eBPF needs root or CAP_BPF + CAP_NET_ADMIN (+ CAP_PERFMON); effective capabilities are {0:#x}"
    )]
    NoPrivilege(u64),
    #[error(
        "this agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("{step}")]
    Ebpf {
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading /proc: {0}")]
    Proc(std::io::Error),
    #[error("pinned redirect state at {path}: {reason}")]
    Pin {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Error {
    pub(crate) fn ebpf(
        step: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Ebpf {
            step,
            source: Box::new(e),
        }
    }
}
