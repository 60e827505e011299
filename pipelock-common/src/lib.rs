//! Map key and value types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, with explicit padding, so both
//! sides agree on the byte layout. Addresses are always stored as 16 bytes:
//! IPv4 addresses in their IPv4-mapped IPv6 form (`::ffff:a.b.c.d`).
#![no_std]

/// Address family tag stored in [`OrigDst::family`]: the client used IPv4 (`connect4`).
pub const FAMILY_V4: u16 = 2;
/// Address family tag: the client used IPv6 (`connect6`), possibly IPv4-mapped.
pub const FAMILY_V6: u16 = 10;

/// Capacity of the socket-cookie and source-address maps (LRU, so churn evicts).
pub const ORIG_MAP_ENTRIES: u32 = 65_536;
/// Capacity of each bypass LPM trie.
pub const BYPASS_CIDR_ENTRIES: u32 = 1_024;
/// Capacity of the LPM trie of destinations TCP connects are refused to.
pub const DENY_CIDR_ENTRIES: u32 = 1_024;
/// Capacity of the bypass-port map.
pub const BYPASS_PORT_ENTRIES: u32 = 256;

/// Capacity of the map of covered cgroup ids (pod-selector mode: the
/// selected pods' container cgroups on one node).
pub const TARGET_CGROUP_ENTRIES: u32 = 4_096;
/// How many cgroup levels (from the root) the kernel looks through for a
/// covered ancestor of the calling task's cgroup.
pub const MAX_CGROUP_LEVELS: u32 = 32;

/// Capacity of the LPM trie of UDP destinations a covered pod may send to.
pub const UDP_ALLOW_ENTRIES: u32 = 256;

/// Key data of the UDP allow trie: destination port (big endian) then the
/// 16-byte address; an entry's prefix covers the port (16 bits) plus the
/// CIDR's bits, so "port 53 anywhere" is a 16-bit prefix.
pub const fn udp_allow_key(port: u16, addr: [u8; 16]) -> [u8; 18] {
    let p = port.to_be_bytes();
    [
        p[0], p[1], addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]
}

/// Index in the `GUARD` array: 1 refuses what cannot be scanned (UDP to a
/// port not allowed, raw/ICMP/MPTCP/SCTP sockets), 0 only counts it (audit).
pub const GUARD_ENFORCE: u32 = 0;
/// Entries of the `GUARD` array.
pub const GUARD_ENTRIES: u32 = 1;

/// Indexes of the per-CPU `UNSCANNED` counters kept by the kernel programs.
pub const COUNT_UDP_REFUSED: u32 = 0;
/// A UDP send or connect that audit mode let through (strict would refuse it).
pub const COUNT_UDP_AUDITED: u32 = 1;
/// A socket of a kind that cannot be redirected (raw, ICMP, MPTCP, SCTP…) refused at creation.
pub const COUNT_SOCKET_REFUSED: u32 = 2;
/// Such a socket that audit mode let be created.
pub const COUNT_SOCKET_AUDITED: u32 = 3;
/// A TCP connect to a denied destination (`DENY_CIDRS`) refused.
pub const COUNT_DENY_REFUSED: u32 = 4;
/// Such a connect that audit mode let through (redirected and judged by the agent).
pub const COUNT_DENY_AUDITED: u32 = 5;
/// Entries of the `UNSCANNED` counter array.
pub const COUNT_ENTRIES: u32 = 6;

/// Where a redirected connection was going, and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Original destination address, network byte order, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Original destination port, host byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]: which connect hook saw the call.
    pub family: u16,
    /// Thread id (kernel pid) of the caller, in the initial pid namespace.
    pub pid: u32,
    /// Process id (kernel tgid) of the caller, in the initial pid namespace.
    pub tgid: u32,
    /// Explicit padding so `cgroup_id` is 8-aligned on both sides.
    pub _pad: u32,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// `comm` of the calling task, NUL padded.
    pub comm: [u8; 16],
}

/// Key of the source-address map: the client's local address once it is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Client source address, network byte order, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Client source port, host byte order.
    pub port: u16,
    /// Explicit padding (always zero).
    pub _pad: [u8; 6],
}

impl SockKey {
    /// Builds a key from a 16-byte address and a host-order port.
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            _pad: [0; 6],
        }
    }
}

/// Maps an IPv4 address (network byte order octets) to its IPv4-mapped IPv6 form.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), Copy, contain only integers and have
    // explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::SockKey {}
}
