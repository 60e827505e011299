//! Kernel side of pipelock-agent: redirect TCP connects of a cgroup subtree
//! to the agent and remember where they were going.
//!
//! - `pipelock_connect4` / `pipelock_connect6` (`cgroup/connect4|6`): for TCP
//!   connects that are not bypassed, record {original dst, pid, tgid, comm,
//!   cgroup id} under the socket cookie and rewrite the destination to the
//!   agent's redirect address.
//! - `pipelock_sockops` (`sock_ops`): on `TCP_CONNECT_CB` the source address is
//!   known; move the record to a key of (client source ip, source port), which
//!   the agent finds from the accepted socket's peer address, even when the
//!   client lives in another network namespace.
//! - `pipelock_sendmsg4` / `pipelock_sendmsg6` (`cgroup/sendmsg4|6`) and the
//!   UDP branch of the connect programs: UDP cannot be redirected and
//!   scanned, so a datagram to a destination the operator did not allow
//!   (`UDP_ALLOW`, default: port 53) or outside the bypass CIDRs is refused
//!   (EPERM) when `GUARD` says enforce, else counted (audit). QUIC/HTTP-3
//!   is refused this way.
//! - Which tasks are covered: the whole subtree the programs are attached
//!   to, or, when `TARGET_FILTER` is set (`--pod-selector`), only tasks
//!   whose cgroup is listed in `TARGET_CGROUPS` or lies below one listed
//!   (the selected pods' container cgroups, kept by the agent); every
//!   other task's calls pass untouched.
//! - Decisions that need no payload: a TCP connect to a destination in
//!   `DENY_CIDRS` (cloud metadata addresses by default) is refused (EPERM)
//!   when `GUARD` says enforce, else counted and redirected like any other
//!   (the agent judges and logs it).
//! - `pipelock_sock_create` (`cgroup/sock_create`): an inet socket that is
//!   neither TCP nor UDP (raw, ICMP ping, MPTCP, SCTP, UDP-Lite…) would
//!   leave unscanned: refused at creation when enforcing, else counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_socket_cookie,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::{debug, info};
use pipelock_common::{
    BYPASS_CIDR_ENTRIES, BYPASS_PORT_ENTRIES, COUNT_DENY_AUDITED, COUNT_DENY_REFUSED,
    COUNT_ENTRIES, COUNT_SOCKET_AUDITED, COUNT_SOCKET_REFUSED, COUNT_UDP_AUDITED,
    COUNT_UDP_REFUSED, DENY_CIDR_ENTRIES, FAMILY_V4, FAMILY_V6, GUARD_ENFORCE, GUARD_ENTRIES,
    MAX_CGROUP_LEVELS, ORIG_MAP_ENTRIES, OrigDst, SockKey, TARGET_CGROUP_ENTRIES,
    UDP_ALLOW_ENTRIES, udp_allow_key, v4_mapped,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// Return value of a cgroup program that lets the call proceed.
const ALLOW: i32 = 1;
/// Return value that fails the call with EPERM.
const DENY: i32 = 0;

// Load-time constants, set by the agent with `EbpfLoader::override_global`.
/// Redirect IPv4 address, network byte order as stored by the kernel.
#[unsafe(no_mangle)]
static REDIRECT_V4: u32 = 0;
/// Redirect IPv6 address; all zero means "use the IPv4-mapped form of REDIRECT_V4".
#[unsafe(no_mangle)]
static REDIRECT_V6: [u32; 4] = [0; 4];
/// Redirect port, host byte order. Zero disables redirection.
#[unsafe(no_mangle)]
static REDIRECT_PORT: u16 = 0;
/// The socket mark (SO_MARK) the agent puts on its own upstream sockets:
/// those are never redirected. A mark reads the same in every pid and
/// network namespace (a pid does not), and setting one needs CAP_NET_ADMIN,
/// which a covered pod's process does not have. Zero: no exemption.
#[unsafe(no_mangle)]
static AGENT_MARK: u32 = 0;

/// 1: only tasks in (or below) a cgroup of `TARGET_CGROUPS` are covered;
/// 0: every task of the attached subtree.
#[unsafe(no_mangle)]
static TARGET_FILTER: u32 = 0;

/// cgroup ids whose tasks (and their descendants' tasks) are covered when
/// `TARGET_FILTER` is set; written by the agent as pods come and go.
#[map]
static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(TARGET_CGROUP_ENTRIES, 0);

/// socket cookie -> original destination, between connect() and TCP_CONNECT_CB.
#[map]
static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(ORIG_MAP_ENTRIES, 0);

/// client (source ip, source port) -> original destination, read by the agent.
#[map]
static ORIG_BY_SRC: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(ORIG_MAP_ENTRIES, 0);

/// Destination CIDRs that are never redirected (IPv4 stored IPv4-mapped, prefix + 96).
#[map]
static BYPASS_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(BYPASS_CIDR_ENTRIES, 0);

/// Destinations TCP connects are refused to when enforcing (IPv4
/// IPv4-mapped, prefix + 96); the bypass CIDRs win over them.
#[map]
static DENY_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(DENY_CIDR_ENTRIES, 0);

/// Destination ports that are never redirected (host byte order); includes the agent's own.
#[map]
static BYPASS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(BYPASS_PORT_ENTRIES, 0);

/// `[GUARD_ENFORCE]`: 1 refuses what cannot be scanned, 0 counts it (audit).
/// A map rather than a load-time global, so a reload can change the mode.
#[map]
static GUARD: Array<u32> = Array::with_max_entries(GUARD_ENTRIES, 0);

/// UDP destinations a covered pod may send to, e.g. port 53 (anywhere or
/// at the cluster DNS address): key `udp_allow_key(port, addr)`.
#[map]
static UDP_ALLOW: LpmTrie<[u8; 18], u8> = LpmTrie::with_max_entries(UDP_ALLOW_ENTRIES, 0);

/// Per-CPU counters of unscannable traffic refused or let through (`COUNT_*`).
#[map]
static UNSCANNED: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_ENTRIES, 0);

#[inline(always)]
fn global<T: Copy>(value: &T) -> T {
    // SAFETY: globals are plain data in .rodata; volatile stops the compiler
    // from folding the zero initialiser the loader replaces.
    unsafe { core::ptr::read_volatile(value) }
}

/// Whether the calling task is covered: always without the filter, else
/// when its cgroup or one of its ancestors is a target (bounded walk from
/// the root down; an ancestor level past the task's own depth reads 0).
#[inline(always)]
fn covered() -> bool {
    if global(&TARGET_FILTER) == 0 {
        return true;
    }
    let mut level = 0u32;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: helper without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return false;
        }
        // SAFETY: the value is only tested for presence.
        if unsafe { TARGET_CGROUPS.get(id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

#[cgroup_sock_addr(connect4)]
pub fn pipelock_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    unsafe { on_connect(&ctx, false) }
}

#[cgroup_sock_addr(connect6)]
pub fn pipelock_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { on_connect(&ctx, true) }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pipelock_sendmsg4(ctx: SockAddrContext) -> i32 {
    if !covered() {
        return ALLOW;
    }
    // SAFETY: as above; sendmsg hooks run for UDP datagrams with an address.
    unsafe { udp_verdict(&ctx, false) }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pipelock_sendmsg6(ctx: SockAddrContext) -> i32 {
    if !covered() {
        return ALLOW;
    }
    // SAFETY: as above.
    unsafe { udp_verdict(&ctx, true) }
}

#[cgroup_sock(sock_create)]
pub fn pipelock_sock_create(ctx: SockContext) -> i32 {
    if !covered() {
        return ALLOW;
    }
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: the kernel hands us the new socket; the protocol is already
    // resolved (0 became TCP or UDP).
    let (kind, proto) = unsafe { ((*sk).type_, (*sk).protocol) };
    let scannable = (kind == SOCK_STREAM && proto == IPPROTO_TCP)
        || (kind == SOCK_DGRAM && proto == IPPROTO_UDP);
    if scannable {
        return ALLOW;
    }
    let verdict = unscannable(COUNT_SOCKET_REFUSED, COUNT_SOCKET_AUDITED);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    info!(
        &ctx,
        "unscannable socket type={} protocol={} tgid={} refused={}",
        kind,
        proto,
        tgid,
        u32::from(verdict == DENY)
    );
    verdict
}

/// True when the kernel must refuse what cannot be scanned (not audit mode).
#[inline(always)]
fn enforcing() -> bool {
    GUARD.get(GUARD_ENFORCE).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = UNSCANNED.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}

/// DENY and count as refused when enforcing, else ALLOW and count as audited.
#[inline(always)]
fn unscannable(refused: u32, audited: u32) -> i32 {
    if enforcing() {
        count(refused);
        DENY
    } else {
        count(audited);
        ALLOW
    }
}

/// connect(): TCP is redirected, UDP judged, anything else was judged at
/// socket creation.
#[inline(always)]
unsafe fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    if !covered() {
        return ALLOW;
    }
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: sa is the kernel's context.
    let (kind, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if kind == SOCK_DGRAM && (proto == IPPROTO_UDP || proto == 0) {
        // SAFETY: as above.
        return unsafe { udp_verdict(ctx, v6) };
    }
    // SAFETY: as above.
    unsafe { redirect(ctx, v6) }
}

/// A UDP datagram (or UDP connect) to an allowed port or a bypass CIDR
/// passes; anything else cannot be scanned.
#[inline(always)]
unsafe fn udp_verdict(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: sa is the kernel's context.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    let addr: [u8; 16] = if v6 {
        ip6_bytes(unsafe { (*sa).user_ip6 })
    } else {
        v4_mapped(unsafe { (*sa).user_ip4 }.to_ne_bytes())
    };
    if UDP_ALLOW
        .get(Key::new(144, udp_allow_key(port, addr)))
        .is_some()
    {
        return ALLOW;
    }
    if BYPASS_CIDRS.get(Key::new(128, addr)).is_some() {
        return ALLOW;
    }
    let verdict = unscannable(COUNT_UDP_REFUSED, COUNT_UDP_AUDITED);
    // Audit counts only: a log line per datagram of a QUIC stream would
    // flood the ring buffer. A refused send usually stops its sender.
    if verdict == DENY {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        info!(ctx, "unscannable udp refused port={} tgid={}", port, tgid);
    }
    verdict
}

/// Decides whether this connect is refused (a denied destination, when
/// enforcing) or redirected, records it and rewrites it. Fails the connect
/// only for a denied destination: on any problem it goes direct.
#[inline(always)]
unsafe fn redirect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let redirect_port = global(&REDIRECT_PORT);
    if redirect_port == 0 {
        return ALLOW;
    }
    // SAFETY (all reads/writes of *sa below): sa is the kernel's context.
    let (kind, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if kind != SOCK_STREAM || (proto != IPPROTO_TCP && proto != 0) {
        return ALLOW;
    }
    let agent_mark = global(&AGENT_MARK);
    // SAFETY: `sk` of a connect context is the kernel's socket of the call.
    let mark = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() { 0 } else { (*sk).mark }
    };
    if agent_mark != 0 && mark == agent_mark {
        return ALLOW;
    }
    let tgid_pid = bpf_get_current_pid_tgid();
    let tgid = (tgid_pid >> 32) as u32;
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    // Only ports the operator listed: the agent's own port number on
    // another host is an ordinary destination.
    if unsafe { BYPASS_PORTS.get(port) }.is_some() {
        return ALLOW;
    }
    let addr: [u8; 16] = if v6 {
        ip6_bytes(unsafe { (*sa).user_ip6 })
    } else {
        v4_mapped(unsafe { (*sa).user_ip4 }.to_ne_bytes())
    };
    if BYPASS_CIDRS.get(Key::new(128, addr)).is_some() {
        return ALLOW;
    }
    if DENY_CIDRS.get(Key::new(128, addr)).is_some() {
        if enforcing() {
            count(COUNT_DENY_REFUSED);
            // SAFETY: helper without pointer arguments.
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            info!(
                ctx,
                "denied destination refused port={} tgid={} cgroup={}", port, tgid, cgroup
            );
            return DENY;
        }
        count(COUNT_DENY_AUDITED);
    }
    let is_mapped = v6 && is_v4_mapped(&addr);
    let redirect_v4 = global(&REDIRECT_V4);
    // Connections already aimed at the agent's redirect address (exactly)
    // are left alone (loop guard); the agent refuses them as self-calls.
    if port == redirect_port {
        if (!v6 || is_mapped) && addr[12..] == redirect_v4.to_ne_bytes() {
            return ALLOW;
        }
        if v6 && !is_mapped && eq16(&ip6_bytes(global(&REDIRECT_V6)), &addr) {
            return ALLOW;
        }
    }

    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let record = OrigDst {
        addr,
        port,
        family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
        pid: tgid_pid as u32,
        tgid,
        _pad: 0,
        // SAFETY: helper without pointer arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    };
    // SAFETY: the context pointer is what the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if ORIG_BY_COOKIE.insert(cookie, record, 0).is_err() {
        return ALLOW;
    }

    unsafe {
        if !v6 {
            (*sa).user_ip4 = redirect_v4;
        } else {
            let r6 = global(&REDIRECT_V6);
            if is_mapped || (r6[0] | r6[1] | r6[2] | r6[3]) == 0 {
                // IPv4-mapped target, or no IPv6 redirect address: use ::ffff:<v4>.
                (*sa).user_ip6[0] = 0;
                (*sa).user_ip6[1] = 0;
                (*sa).user_ip6[2] = 0xffff_u32.to_be();
                (*sa).user_ip6[3] = redirect_v4;
            } else {
                (*sa).user_ip6[0] = r6[0];
                (*sa).user_ip6[1] = r6[1];
                (*sa).user_ip6[2] = r6[2];
                (*sa).user_ip6[3] = r6[3];
            }
        }
        (*sa).user_port = u32::from(redirect_port.to_be());
    }
    debug!(ctx, "redirect tgid={} port={}", tgid, port);
    ALLOW
}

/// The kernel's IPv6 words (network byte order in memory) as 16 bytes.
#[inline(always)]
fn ip6_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        a[i * 4] = b[0];
        a[i * 4 + 1] = b[1];
        a[i * 4 + 2] = b[2];
        a[i * 4 + 3] = b[3];
        i += 1;
    }
    a
}

/// Byte-wise comparison in a bounded loop (a slice `==` may not verify).
#[inline(always)]
fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[10] == 0xff && a[11] == 0xff
}

#[sock_ops]
pub fn pipelock_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        rekey(&ctx);
    }
    0
}

/// Moves a record from the socket cookie to the client's (source ip, port).
#[inline(always)]
fn rekey(ctx: &SockOpsContext) {
    // Read every context field first, in straight-line code: the verifier
    // rejects loads through a context pointer the compiler has offset and
    // carried across branches.
    let family = ctx.family();
    let local4 = ctx.local_ip4();
    let local6 = ctx.local_ip6();
    let local_port = ctx.local_port();
    // SAFETY: the context pointer is what the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is copied out at once; only this socket's own
    // callbacks touch its cookie entry.
    let Some(record) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
        return;
    };
    let addr = if family == u32::from(FAMILY_V4) {
        v4_mapped(local4.to_ne_bytes())
    } else {
        ip6_bytes(local6)
    };
    let key = SockKey::new(addr, local_port as u16);
    let _ = ORIG_BY_SRC.insert(key, record, 0);
    let _ = ORIG_BY_COOKIE.remove(cookie);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
