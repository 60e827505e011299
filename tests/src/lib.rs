//! Helpers for pipelock-agent's integration tests and benchmarks: throwaway
//! cgroups and network namespaces (cleaned up on drop), the real agent binary
//! run against them, real upstream servers, and client processes placed in
//! the cgroup. Everything talks only to loopback or to addresses of the
//! namespaces created here (198.18.0.0/15, fd00::/8).
pub mod agent;
pub mod cgroup;
pub mod client;
pub mod corpus;
pub mod corpus_agent;
pub mod kube_api;
pub mod mcp;
pub mod netns;
pub mod plain_agent;
pub mod recording_upstream;
pub mod tls_client;
pub mod tls_harness;
pub mod tls_upstream;
pub mod upstream;

use std::sync::atomic::{AtomicU32, Ordering};

/// Panics with a clear message unless running as root: these tests attach
/// eBPF programs and create cgroups and namespaces, and must never be
/// skipped silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "pipelock-agent integration tests need root (eBPF, cgroups, netns): run `cargo xtask test` as root"
    );
}

/// A small number unique within this process, for naming test resources.
pub fn unique_index() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}
