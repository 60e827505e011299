//! Looking up (and consuming) the kernel's record for an accepted connection,
//! keyed by the client's source address.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

use aya::maps::{HashMap, Map, MapData};
use pipelock_common::{OrigDst, SockKey, v4_mapped};

use super::Error;
use crate::pipeline::Attribution;

/// The `ORIG_BY_SRC` map, owned by the agent.
pub struct OrigDstTable {
    map: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    cleared: usize,
}

/// The map key for a client address, as the kernel stores it (IPv4 mapped).
pub fn sock_key(peer: SocketAddr) -> SockKey {
    let addr = match peer.ip() {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    };
    SockKey::new(addr, peer.port())
}

impl OrigDstTable {
    pub(super) fn new(map: Map) -> Result<Self, Error> {
        let map = HashMap::try_from(map).map_err(|e| Error::ebpf("ORIG_BY_SRC map type", e))?;
        Ok(Self {
            map: Mutex::new(map),
            cleared: 0,
        })
    }

    /// The table of a pinned map taken over from an earlier agent, emptied
    /// of what that one left (records of connects no agent accepted).
    pub(super) fn adopt(map: Map) -> Result<Self, Error> {
        let mut map: HashMap<MapData, SockKey, OrigDst> =
            HashMap::try_from(map).map_err(|e| Error::ebpf("ORIG_BY_SRC map type", e))?;
        let stale: Vec<SockKey> = map.keys().filter_map(Result::ok).collect();
        for k in &stale {
            let _ = map.remove(k);
        }
        Ok(Self {
            map: Mutex::new(map),
            cleared: stale.len(),
        })
    }

    /// Stale records removed when the table was adopted.
    pub fn cleared(&self) -> usize {
        self.cleared
    }

    /// Removes and returns the record for the client at `peer`, if the kernel
    /// redirected it.
    pub fn take(&self, peer: SocketAddr) -> Option<(SocketAddr, Attribution)> {
        let key = sock_key(peer);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let record = map.get(&key, 0).ok()?;
        if let Err(e) = map.remove(&key) {
            tracing::debug!(error = %e, "removing orig-dst record");
        }
        Some(decode(&record))
    }
}

/// Turns a kernel record into the destination and the attribution.
pub(crate) fn decode(r: &OrigDst) -> (SocketAddr, Attribution) {
    let v6 = Ipv6Addr::from(r.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    let comm_len = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
    (
        SocketAddr::new(ip, r.port),
        Attribution {
            pid: r.pid,
            tgid: r.tgid,
            comm: String::from_utf8_lossy(&r.comm[..comm_len]).into_owned(),
            cgroup_id: r.cgroup_id,
            pod: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelock_common::FAMILY_V4;
    use std::net::Ipv4Addr;

    #[test]
    fn decodes_v4_mapped_record() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let r = OrigDst {
            addr: v4_mapped([198, 18, 0, 1]),
            port: 8080,
            family: FAMILY_V4,
            pid: 7,
            tgid: 6,
            _pad: 0,
            cgroup_id: 99,
            comm,
        };
        let (dst, who) = decode(&r);
        assert_eq!(
            dst,
            SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), 8080)
        );
        assert_eq!(who.comm, "curl");
        assert_eq!((who.pid, who.tgid, who.cgroup_id), (7, 6, 99));
    }

    #[test]
    fn key_maps_v4_peers() {
        let k = sock_key("198.18.0.2:40000".parse().unwrap());
        assert_eq!(k.addr, v4_mapped([198, 18, 0, 2]));
        assert_eq!(k.port, 40000);
        let k6 = sock_key("[fd00::2]:1".parse().unwrap());
        assert_eq!(k6.addr, "fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    }
}
