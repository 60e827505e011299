//! Loading the embedded eBPF object, setting its load-time globals, filling
//! the bypass maps and attaching the programs to the target cgroup.
//! Dropping the [`Redirector`] detaches everything (fail-open).
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
};
use ipnet::IpNet;
use pipelock_common::v4_mapped;
use sha2::{Digest, Sha256};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use super::{Error, OrigDstTable};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pipelock-ebpf"));

/// What the kernel side needs to know.
#[derive(Clone, Debug)]
pub struct RedirectConfig {
    /// Resolved cgroup directory to attach to.
    pub cgroup_dir: PathBuf,
    /// Address IPv4 connects are rewritten to.
    pub redirect_v4: Ipv4Addr,
    /// Address IPv6 connects are rewritten to (None: IPv4-mapped `redirect_v4`).
    pub redirect_v6: Option<Ipv6Addr>,
    /// Port connects are rewritten to.
    pub port: u16,
    /// Destinations never redirected.
    pub bypass_cidrs: Vec<IpNet>,
    /// Destination ports never redirected (only those the operator listed).
    pub bypass_ports: Vec<u16>,
    /// SO_MARK of the agent's own upstream sockets, never redirected (0: none).
    pub agent_mark: u32,
}

/// Loaded and attached programs. Drop to detach.
pub struct Redirector {
    _ebpf: Ebpf,
    logger: Option<JoinHandle<()>>,
}

impl Drop for Redirector {
    fn drop(&mut self) {
        if let Some(task) = self.logger.take() {
            task.abort();
        }
    }
}

impl Redirector {
    /// Checks prerequisites, loads the object and attaches to `cfg.cgroup_dir`.
    /// Must be called inside a tokio runtime (kernel log forwarding).
    pub fn attach(cfg: &RedirectConfig) -> Result<(Self, OrigDstTable), Error> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        check_privilege()?;
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(Error::NoBtf);
        }
        bump_memlock_rlimit();
        tracing::debug!(
            sha256 = %hex(&Sha256::digest(EBPF_OBJECT)),
            bytes = EBPF_OBJECT.len(),
            "loading eBPF object"
        );

        let v6 = cfg.redirect_v6.map(|a| a.octets()).unwrap_or([0; 16]);
        let v6_words: [u32; 4] = std::array::from_fn(|i| {
            u32::from_ne_bytes([v6[4 * i], v6[4 * i + 1], v6[4 * i + 2], v6[4 * i + 3]])
        });
        let v4_word = u32::from_ne_bytes(cfg.redirect_v4.octets());
        let mut ebpf = EbpfLoader::new()
            .override_global("REDIRECT_V4", &v4_word, true)
            .override_global("REDIRECT_V6", &v6_words, true)
            .override_global("REDIRECT_PORT", &cfg.port, true)
            .override_global("AGENT_MARK", &cfg.agent_mark, true)
            .load(EBPF_OBJECT)
            .map_err(|e| Error::ebpf("loading the eBPF object into the kernel", e))?;

        let logger = start_kernel_log(&mut ebpf);
        fill_bypass(&mut ebpf, cfg)?;

        let cgroup = File::open(&cfg.cgroup_dir).map_err(|source| Error::CgroupOpen {
            full: cfg.cgroup_dir.display().to_string(),
            source,
        })?;
        // sock_ops first: a connect rewritten before its re-keying program
        // is in place would reach the agent with no record to find.
        let prog: &mut SockOps = ebpf
            .program_mut("pipelock_sockops")
            .ok_or(Error::ebpf("finding program", missing("pipelock_sockops")))?
            .try_into()
            .map_err(|e| Error::ebpf("program type", e))?;
        prog.load()
            .map_err(|e| Error::ebpf("verifying sock_ops program", e))?;
        prog.attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| Error::ebpf("attaching sock_ops program to the cgroup", e))?;

        for name in ["pipelock_connect4", "pipelock_connect6"] {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::ebpf("finding program", missing(name)))?
                .try_into()
                .map_err(|e| Error::ebpf("program type", e))?;
            prog.load()
                .map_err(|e| Error::ebpf("verifying connect program", e))?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| Error::ebpf("attaching connect program to the cgroup", e))?;
        }
        let table = OrigDstTable::new(
            ebpf.take_map("ORIG_BY_SRC")
                .ok_or(Error::ebpf("finding map", missing("ORIG_BY_SRC")))?,
        )?;
        Ok((
            Redirector {
                _ebpf: ebpf,
                logger,
            },
            table,
        ))
    }
}

fn missing(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name} not in eBPF object"),
    )
}

fn fill_bypass(ebpf: &mut Ebpf, cfg: &RedirectConfig) -> Result<(), Error> {
    let mut ports: HashMap<_, u16, u8> = ebpf
        .map_mut("BYPASS_PORTS")
        .ok_or(Error::ebpf("finding map", missing("BYPASS_PORTS")))?
        .try_into()
        .map_err(|e| Error::ebpf("map type", e))?;
    for port in &cfg.bypass_ports {
        ports
            .insert(port, 1, 0)
            .map_err(|e| Error::ebpf("filling bypass ports", e))?;
    }
    let mut cidrs: LpmTrie<_, [u8; 16], u8> = ebpf
        .map_mut("BYPASS_CIDRS")
        .ok_or(Error::ebpf("finding map", missing("BYPASS_CIDRS")))?
        .try_into()
        .map_err(|e| Error::ebpf("map type", e))?;
    for net in &cfg.bypass_cidrs {
        let (addr, prefix) = match net.network() {
            IpAddr::V4(a) => (v4_mapped(a.octets()), u32::from(net.prefix_len()) + 96),
            IpAddr::V6(a) => (a.octets(), u32::from(net.prefix_len())),
        };
        cidrs
            .insert(&Key::new(prefix, addr), 1, 0)
            .map_err(|e| Error::ebpf("filling bypass CIDRs", e))?;
    }
    Ok(())
}

/// Forwards aya-log records from the kernel to `log` (bridged into tracing).
/// A failure is only a warning: redirection works without kernel logs.
fn start_kernel_log(ebpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side logging unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd and keeps it open, unchanged,
    // for as long as it lives; the AsyncFd owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side logging unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Kernels before 5.11 account eBPF memory to RLIMIT_MEMLOCK.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

const CAP_NET_ADMIN: u64 = 12;
const CAP_SYS_ADMIN: u64 = 21;
const CAP_BPF: u64 = 39;

/// Fails early, with a readable message, when the process cannot load eBPF.
pub fn check_privilege() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(Error::Proc)?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u64| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        Ok(())
    } else {
        Err(Error::NoPrivilege(caps))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
