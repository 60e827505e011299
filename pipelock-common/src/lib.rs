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
/// Capacity of the bypass-port map.
pub const BYPASS_PORT_ENTRIES: u32 = 256;

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
