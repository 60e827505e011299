//! Loading the embedded eBPF object, setting its load-time globals, filling
//! the bypass and UDP-allow maps and attaching the programs to the target
//! cgroup: sock_ops, connect4/6, sendmsg4/6 and sock_create. With a target
//! filter (pod-selector mode) the programs cover only the cgroups written
//! into [`TargetCgroups`].
//! Dropping the [`Redirector`] detaches everything (fail-open).
use std::{
    borrow::BorrowMut,
    fs::{self, File},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, links::FdLink},
};
use ipnet::IpNet;
use pipelock_common::{
    COUNT_DENY_AUDITED, COUNT_DENY_REFUSED, COUNT_SOCKET_AUDITED, COUNT_SOCKET_REFUSED,
    COUNT_UDP_AUDITED, COUNT_UDP_REFUSED, GUARD_ENFORCE, udp_allow_key, v4_mapped,
};
use sha2::{Digest, Sha256};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use super::{Error, OrigDstTable, pin};
pub use crate::config::FailMode;

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
    /// Destinations TCP connects are refused to (when `enforce`) in the
    /// kernel; the bypass CIDRs win over them.
    pub deny_cidrs: Vec<IpNet>,
    /// Destination ports never redirected (only those the operator listed).
    pub bypass_ports: Vec<u16>,
    /// UDP destinations (port, network; none: anywhere) covered pods may
    /// send to; any other UDP, and non-TCP/UDP sockets, are refused or
    /// counted per `enforce`.
    pub udp_allow: Vec<(u16, Option<IpNet>)>,
    /// Refuse unscannable traffic in the kernel (strict, balanced) rather
    /// than only count it (audit).
    pub enforce: bool,
    /// SO_MARK of the agent's own upstream sockets, never redirected (0: none).
    pub agent_mark: u32,
    /// What happens to the redirect when the agent dies.
    pub fail_mode: FailMode,
    /// bpffs directory for the pinned state of `FailMode::Closed`.
    pub pin_dir: PathBuf,
    /// Cover only the cgroups in [`TargetCgroups`] (and below them), not
    /// the whole subtree of `cgroup_dir` (pod-selector mode).
    pub target_filter: bool,
}

impl RedirectConfig {
    /// What a pin set depends on besides the object itself.
    fn identity(&self) -> Vec<String> {
        vec![
            self.cgroup_dir.display().to_string(),
            self.redirect_v4.to_string(),
            format!("{:?}", self.redirect_v6),
            self.port.to_string(),
            self.agent_mark.to_string(),
            format!("target_filter={}", self.target_filter),
        ]
    }
}

/// Loaded and attached programs. Drop to detach (fail-open); pinned ones
/// (fail-closed) stay attached until `pipelock-agent detach`.
pub struct Redirector {
    _ebpf: Option<Ebpf>,
    logger: Option<JoinHandle<()>>,
    /// Where the pinned state is, when fail-closed.
    pinned: Option<PathBuf>,
    /// The kernel's refuse-or-count switch and its counters.
    guard: KernelGuard,
    /// The covered cgroups, when the target filter is on (until taken).
    targets: Option<TargetCgroups>,
}

impl Redirector {
    /// The pin set this redirect lives in, when fail-closed.
    pub fn pinned(&self) -> Option<&Path> {
        self.pinned.as_deref()
    }

    /// The kernel's guard for what cannot be redirected (UDP, raw sockets).
    pub fn guard(&mut self) -> &mut KernelGuard {
        &mut self.guard
    }

    /// The covered-cgroup map of the target filter, for whoever keeps it
    /// (the pod watcher); None without the filter or once taken.
    pub fn take_targets(&mut self) -> Option<TargetCgroups> {
        self.targets.take()
    }
}

/// The `TARGET_CGROUPS` map: ids of the cgroups covered in pod-selector
/// mode (a task in one, or in a cgroup below one, is redirected).
pub struct TargetCgroups {
    map: HashMap<MapData, u64, u8>,
}

impl TargetCgroups {
    fn new(map: Map) -> Result<Self, Error> {
        Ok(TargetCgroups {
            map: HashMap::try_from(map).map_err(|e| Error::ebpf("TARGET_CGROUPS map type", e))?,
        })
    }

    /// The ids in the kernel map now.
    pub fn ids(&self) -> std::collections::BTreeSet<u64> {
        self.map.keys().filter_map(Result::ok).collect()
    }

    /// Makes the kernel map hold exactly `wanted`: new ids first (a pod
    /// is covered before anything is dropped), then the ones gone.
    /// Returns (added, removed).
    pub fn set(
        &mut self,
        wanted: &std::collections::BTreeSet<u64>,
    ) -> Result<(usize, usize), Error> {
        let have = self.ids();
        let mut added = 0;
        for id in wanted.difference(&have) {
            self.map
                .insert(id, 1, 0)
                .map_err(|e| Error::ebpf("adding a covered cgroup", e))?;
            added += 1;
        }
        let mut removed = 0;
        for id in have.difference(wanted) {
            self.map
                .remove(id)
                .map_err(|e| Error::ebpf("removing a covered cgroup", e))?;
            removed += 1;
        }
        Ok((added, removed))
    }
}

/// How many unscannable things the kernel programs refused or let through
/// (audit) since they were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnscannedCounts {
    pub udp_refused: u64,
    pub udp_audited: u64,
    pub socket_refused: u64,
    pub socket_audited: u64,
    pub deny_refused: u64,
    pub deny_audited: u64,
}

/// The `GUARD` switch (refuse or count) and the `UNSCANNED` counters.
pub struct KernelGuard {
    guard: Array<MapData, u32>,
    counts: PerCpuArray<MapData, u64>,
}

impl KernelGuard {
    fn new(guard: Map, counts: Map) -> Result<Self, Error> {
        Ok(KernelGuard {
            guard: Array::try_from(guard).map_err(|e| Error::ebpf("GUARD map type", e))?,
            counts: PerCpuArray::try_from(counts)
                .map_err(|e| Error::ebpf("UNSCANNED map type", e))?,
        })
    }

    /// Refuse (true: strict, balanced) or only count (false: audit) UDP
    /// and non-TCP/UDP sockets from now on.
    pub fn set_enforce(&mut self, enforce: bool) -> Result<(), Error> {
        self.guard
            .set(GUARD_ENFORCE, u32::from(enforce), 0)
            .map_err(|e| Error::ebpf("setting the kernel guard", e))
    }

    /// The counters summed over CPUs.
    pub fn counts(&self) -> UnscannedCounts {
        let read = |i: u32| -> u64 {
            self.counts
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().copied().sum())
                .unwrap_or(0)
        };
        UnscannedCounts {
            udp_refused: read(COUNT_UDP_REFUSED),
            udp_audited: read(COUNT_UDP_AUDITED),
            socket_refused: read(COUNT_SOCKET_REFUSED),
            socket_audited: read(COUNT_SOCKET_AUDITED),
            deny_refused: read(COUNT_DENY_REFUSED),
            deny_audited: read(COUNT_DENY_AUDITED),
        }
    }
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

        let fingerprint = pin::fingerprint(EBPF_OBJECT, &cfg.identity());
        let pin_set = match cfg.fail_mode {
            FailMode::Closed => {
                pin::prepare(&cfg.pin_dir)?;
                let dir = pin::set_dir(&cfg.pin_dir, &fingerprint);
                if pin::complete(&dir) {
                    return adopt(cfg, dir);
                }
                for old in pin::remove_all_but(&cfg.pin_dir, None)? {
                    tracing::warn!(
                        pins = %cfg.pin_dir.join(&old).display(),
                        "removed a pinned redirect of another configuration; attaching anew"
                    );
                }
                Some(dir)
            }
            FailMode::Open => {
                for old in pin::remove_all_but(&cfg.pin_dir, None).unwrap_or_default() {
                    tracing::warn!(
                        pins = %cfg.pin_dir.join(&old).display(),
                        "fail_mode is open: removed the pinned redirect of an earlier fail_mode: closed run"
                    );
                }
                None
            }
        };

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
            .override_global("TARGET_FILTER", &u32::from(cfg.target_filter), true)
            .load(EBPF_OBJECT)
            .map_err(|e| Error::ebpf("loading the eBPF object into the kernel", e))?;

        let logger = start_kernel_log(&mut ebpf);
        let mut ports: HashMap<_, u16, u8> = map_of(ebpf.map_mut("BYPASS_PORTS"), "BYPASS_PORTS")?
            .try_into()
            .map_err(|e| Error::ebpf("map type", e))?;
        fill_ports(&mut ports, cfg)?;
        let mut cidrs: LpmTrie<_, [u8; 16], u8> =
            map_of(ebpf.map_mut("BYPASS_CIDRS"), "BYPASS_CIDRS")?
                .try_into()
                .map_err(|e| Error::ebpf("map type", e))?;
        fill_cidrs(&mut cidrs, &cfg.bypass_cidrs, "filling bypass CIDRs")?;
        let mut deny: LpmTrie<_, [u8; 16], u8> = map_of(ebpf.map_mut("DENY_CIDRS"), "DENY_CIDRS")?
            .try_into()
            .map_err(|e| Error::ebpf("map type", e))?;
        fill_cidrs(&mut deny, &cfg.deny_cidrs, "filling denied CIDRs")?;
        let mut udp: LpmTrie<_, [u8; 18], u8> = map_of(ebpf.map_mut("UDP_ALLOW"), "UDP_ALLOW")?
            .try_into()
            .map_err(|e| Error::ebpf("map type", e))?;
        fill_udp_allow(&mut udp, cfg)?;
        if let Some(dir) = &pin_set {
            // Maps first: a pinned link must never point at unpinned maps.
            fs::create_dir_all(dir).map_err(|e| Error::Pin {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            for name in pin::MAPS {
                let map = ebpf
                    .map(name)
                    .ok_or(Error::ebpf("finding map", missing(name)))?;
                map.pin(dir.join(name)).map_err(|e| Error::Pin {
                    path: dir.join(name),
                    reason: e.to_string(),
                })?;
            }
        }

        let mut guard = KernelGuard::new(
            ebpf.take_map("GUARD")
                .ok_or(Error::ebpf("finding map", missing("GUARD")))?,
            ebpf.take_map("UNSCANNED")
                .ok_or(Error::ebpf("finding map", missing("UNSCANNED")))?,
        )?;
        guard.set_enforce(cfg.enforce)?;
        let targets = match cfg.target_filter {
            true => Some(TargetCgroups::new(
                ebpf.take_map("TARGET_CGROUPS")
                    .ok_or(Error::ebpf("finding map", missing("TARGET_CGROUPS")))?,
            )?),
            false => None,
        };

        let cgroup = File::open(&cfg.cgroup_dir).map_err(|source| Error::CgroupOpen {
            full: cfg.cgroup_dir.display().to_string(),
            source,
        })?;
        // Loads program `$name` as `$ty`, attaches it to the cgroup and, when
        // fail-closed, pins its link as `$file`.
        macro_rules! attach {
            ($ty:ty, $name:expr, $file:expr, $what:literal) => {{
                let prog: &mut $ty = ebpf
                    .program_mut($name)
                    .ok_or(Error::ebpf("finding program", missing($name)))?
                    .try_into()
                    .map_err(|e| Error::ebpf("program type", e))?;
                prog.load()
                    .map_err(|e| Error::ebpf(concat!("verifying ", $what, " program"), e))?;
                let id = prog
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| {
                        Error::ebpf(concat!("attaching ", $what, " program to the cgroup"), e)
                    })?;
                if let Some(dir) = &pin_set {
                    let link = prog
                        .take_link(id)
                        .map_err(|e| Error::ebpf(concat!("taking the ", $what, " link"), e))?;
                    let link = FdLink::try_from(link).map_err(|e| {
                        Error::ebpf(concat!("the ", $what, " link is not a bpf_link"), e)
                    })?;
                    pin_link(link, &dir.join($file))?;
                }
            }};
        }
        // sock_ops first: a connect rewritten before its re-keying program
        // is in place would reach the agent with no record to find.
        attach!(SockOps, "pipelock_sockops", "sockops", "sock_ops");
        // sock_create and sendmsg before connect: UDP and raw sockets are
        // guarded from the first redirected connect on.
        attach!(
            CgroupSock,
            "pipelock_sock_create",
            "sock_create",
            "sock_create"
        );
        for (name, file) in [
            ("pipelock_sendmsg4", "sendmsg4"),
            ("pipelock_sendmsg6", "sendmsg6"),
            ("pipelock_connect4", "connect4"),
            ("pipelock_connect6", "connect6"),
        ] {
            attach!(CgroupSockAddr, name, file, "sendmsg/connect");
        }
        let table = OrigDstTable::new(
            ebpf.take_map("ORIG_BY_SRC")
                .ok_or(Error::ebpf("finding map", missing("ORIG_BY_SRC")))?,
        )?;
        Ok((
            Redirector {
                _ebpf: Some(ebpf),
                logger,
                pinned: pin_set,
                guard,
                targets,
            },
            table,
        ))
    }
}

/// Takes over a pin set left by an earlier agent of the same configuration:
/// the programs never stopped redirecting. Records of connects made while no
/// agent listened (refused, so stale) are dropped; the bypass lists are
/// written anew from this configuration.
fn adopt(cfg: &RedirectConfig, dir: PathBuf) -> Result<(Redirector, OrigDstTable), Error> {
    let open = |name: &str| {
        MapData::from_pin(dir.join(name)).map_err(|e| Error::Pin {
            path: dir.join(name),
            reason: e.to_string(),
        })
    };
    let mut ports: HashMap<MapData, u16, u8> =
        HashMap::try_from(Map::HashMap(open("BYPASS_PORTS")?))
            .map_err(|e| Error::ebpf("BYPASS_PORTS map type", e))?;
    let old_ports: Vec<u16> = ports.keys().filter_map(Result::ok).collect();
    for p in old_ports {
        let _ = ports.remove(&p);
    }
    fill_ports(&mut ports, cfg)?;
    for (name, nets, what) in [
        ("BYPASS_CIDRS", &cfg.bypass_cidrs, "filling bypass CIDRs"),
        ("DENY_CIDRS", &cfg.deny_cidrs, "filling denied CIDRs"),
    ] {
        let mut trie: LpmTrie<MapData, [u8; 16], u8> = LpmTrie::try_from(Map::LpmTrie(open(name)?))
            .map_err(|e| Error::ebpf("CIDR map type", e))?;
        let old: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = trie.remove(&k);
        }
        fill_cidrs(&mut trie, nets, what)?;
    }
    let mut udp: LpmTrie<MapData, [u8; 18], u8> =
        LpmTrie::try_from(Map::LpmTrie(open("UDP_ALLOW")?))
            .map_err(|e| Error::ebpf("UDP_ALLOW map type", e))?;
    let old_udp: Vec<Key<[u8; 18]>> = udp.keys().filter_map(Result::ok).collect();
    for k in old_udp {
        let _ = udp.remove(&k);
    }
    fill_udp_allow(&mut udp, cfg)?;
    let mut guard = KernelGuard::new(
        Map::Array(open("GUARD")?),
        Map::PerCpuArray(open("UNSCANNED")?),
    )?;
    guard.set_enforce(cfg.enforce)?;
    let mut by_cookie: HashMap<MapData, u64, pipelock_common::OrigDst> =
        HashMap::try_from(Map::LruHashMap(open("ORIG_BY_COOKIE")?))
            .map_err(|e| Error::ebpf("ORIG_BY_COOKIE map type", e))?;
    let stale: Vec<u64> = by_cookie.keys().filter_map(Result::ok).collect();
    for k in &stale {
        let _ = by_cookie.remove(k);
    }
    // The covered cgroups stay as the last agent left them (no gap): the
    // pod watcher sets them anew once it has listed the pods.
    let targets = match cfg.target_filter {
        true => Some(TargetCgroups::new(Map::HashMap(open("TARGET_CGROUPS")?))?),
        false => None,
    };
    let table = OrigDstTable::adopt(Map::LruHashMap(open("ORIG_BY_SRC")?))?;
    tracing::info!(
        pins = %dir.display(),
        stale_records = stale.len() + table.cleared(),
        "adopted the pinned redirect (fail_mode: closed); it never stopped"
    );
    Ok((
        Redirector {
            _ebpf: None,
            logger: None,
            pinned: Some(dir),
            guard,
            targets,
        },
        table,
    ))
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), Error> {
    link.pin(path).map(drop).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn map_of<'a>(map: Option<&'a mut Map>, name: &str) -> Result<&'a mut Map, Error> {
    map.ok_or(Error::ebpf("finding map", missing(name)))
}

fn missing(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{name} not in eBPF object"),
    )
}

fn fill_ports<T: BorrowMut<MapData>>(
    ports: &mut HashMap<T, u16, u8>,
    cfg: &RedirectConfig,
) -> Result<(), Error> {
    for port in &cfg.bypass_ports {
        ports
            .insert(port, 1, 0)
            .map_err(|e| Error::ebpf("filling bypass ports", e))?;
    }
    Ok(())
}

fn fill_udp_allow<T: BorrowMut<MapData>>(
    trie: &mut LpmTrie<T, [u8; 18], u8>,
    cfg: &RedirectConfig,
) -> Result<(), Error> {
    for &(port, net) in &cfg.udp_allow {
        // 16 bits of port, then the network's bits (IPv4 IPv4-mapped).
        let (addr, bits) = match net.map(|n| (n.network(), n.prefix_len())) {
            None => ([0; 16], 0),
            Some((IpAddr::V4(a), len)) => (v4_mapped(a.octets()), 96 + u32::from(len)),
            Some((IpAddr::V6(a), len)) => (a.octets(), u32::from(len)),
        };
        trie.insert(&Key::new(16 + bits, udp_allow_key(port, addr)), 1, 0)
            .map_err(|e| Error::ebpf("filling the UDP allow list", e))?;
    }
    Ok(())
}

fn fill_cidrs<T: BorrowMut<MapData>>(
    cidrs: &mut LpmTrie<T, [u8; 16], u8>,
    nets: &[IpNet],
    what: &'static str,
) -> Result<(), Error> {
    for net in nets {
        let (addr, prefix) = match net.network() {
            IpAddr::V4(a) => (v4_mapped(a.octets()), u32::from(net.prefix_len()) + 96),
            IpAddr::V6(a) => (a.octets(), u32::from(net.prefix_len())),
        };
        cidrs
            .insert(&Key::new(prefix, addr), 1, 0)
            .map_err(|e| Error::ebpf(what, e))?;
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
