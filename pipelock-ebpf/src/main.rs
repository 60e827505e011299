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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use pipelock_common::{
    BYPASS_CIDR_ENTRIES, BYPASS_PORT_ENTRIES, FAMILY_V4, FAMILY_V6, ORIG_MAP_ENTRIES, OrigDst,
    SockKey, v4_mapped,
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// Return value of a cgroup sock_addr program that lets the call proceed.
const ALLOW: i32 = 1;

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

/// Destination ports that are never redirected (host byte order); includes the agent's own.
#[map]
static BYPASS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(BYPASS_PORT_ENTRIES, 0);

#[inline(always)]
fn global<T: Copy>(value: &T) -> T {
    // SAFETY: globals are plain data in .rodata; volatile stops the compiler
    // from folding the zero initialiser the loader replaces.
    unsafe { core::ptr::read_volatile(value) }
}

#[cgroup_sock_addr(connect4)]
pub fn pipelock_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's lifetime.
    unsafe { redirect(&ctx, false) };
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn pipelock_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { redirect(&ctx, true) };
    ALLOW
}

/// Decides whether this connect is redirected, records it and rewrites it.
/// Never fails the connect: on any problem the connection goes direct.
#[inline(always)]
unsafe fn redirect(ctx: &SockAddrContext, v6: bool) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let redirect_port = global(&REDIRECT_PORT);
    if redirect_port == 0 {
        return;
    }
    // SAFETY (all reads/writes of *sa below): sa is the kernel's context.
    let (kind, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if kind != SOCK_STREAM || (proto != IPPROTO_TCP && proto != 0) {
        return;
    }
    let agent_mark = global(&AGENT_MARK);
    // SAFETY: `sk` of a connect context is the kernel's socket of the call.
    let mark = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() { 0 } else { (*sk).mark }
    };
    if agent_mark != 0 && mark == agent_mark {
        return;
    }
    let tgid_pid = bpf_get_current_pid_tgid();
    let tgid = (tgid_pid >> 32) as u32;
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    // Only ports the operator listed: the agent's own port number on
    // another host is an ordinary destination.
    if unsafe { BYPASS_PORTS.get(port) }.is_some() {
        return;
    }
    let addr: [u8; 16] = if v6 {
        ip6_bytes(unsafe { (*sa).user_ip6 })
    } else {
        v4_mapped(unsafe { (*sa).user_ip4 }.to_ne_bytes())
    };
    if BYPASS_CIDRS.get(Key::new(128, addr)).is_some() {
        return;
    }
    let is_mapped = v6 && is_v4_mapped(&addr);
    let redirect_v4 = global(&REDIRECT_V4);
    // Connections already aimed at the agent's redirect address (exactly)
    // are left alone (loop guard); the agent refuses them as self-calls.
    if port == redirect_port {
        if (!v6 || is_mapped) && addr[12..] == redirect_v4.to_ne_bytes() {
            return;
        }
        if v6 && !is_mapped && eq16(&ip6_bytes(global(&REDIRECT_V6)), &addr) {
            return;
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
        return;
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
