//! Per-session state of the MCP proxy: the tool baseline (pins) and the
//! recent calls for chain detection. A session is the upstream's
//! `Mcp-Session-Id` together with the client's `Authorization`, else (a
//! server without sessions, such as Sure) the `Authorization` and the
//! client address; the key is a SHA-256 of those, so neither a token nor a
//! session id is kept.
//!
//! Beside it, per client of the upstream (its `Authorization`, else its
//! address): the pins of every tool the upstream showed that client in any
//! session ([`Earlier`]), so a server that changes a tool between two
//! sessions (a rug pull across sessions) is caught. It is per client, not
//! shared by everyone behind the listener: state is never shared between
//! users, and a server may show each user tools of their own.
//!
//! Both live in a [`Store`]: never shared between keys, expired after
//! `ttl` without use, at most `max` entries (the least recently used goes
//! first).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::{chains::Call, tools::Pin};

/// Sessions kept at most, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Idle time after which a session is forgotten, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);
/// Clients whose earlier tool pins are kept at most.
pub const DEFAULT_MAX_CLIENTS: usize = 4096;
/// Idle time after which a client's earlier pins are forgotten.
pub const DEFAULT_CLIENT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Tools pinned at most per session or client (a server listing more is
/// not remembered beyond these: memory stays bounded whatever it sends).
pub const MAX_PINNED_TOOLS: usize = 4096;

/// A session key (a hash; never the token or the id).
pub type Key = [u8; 32];

/// What one session has seen.
#[derive(Debug, Default)]
pub struct Session {
    /// Tool pins from the first complete listing (and tools added since);
    /// `None` before any `tools/list`.
    pub tools: Option<BTreeMap<String, Pin>>,
    /// A listing without a further page was seen: from then on a tool
    /// missing from the baseline is an addition, not the next page.
    pub tools_complete: bool,
    /// Recent classified calls (chain detection).
    pub calls: VecDeque<Call>,
}

/// The pins of the tools an upstream showed one client, in any session:
/// the first pin of each tool stays.
pub type Earlier = BTreeMap<String, Pin>;

struct Entry<T> {
    state: T,
    used: Instant,
}

/// Bounded, expiring state by key.
pub struct Store<T> {
    map: Mutex<HashMap<Key, Entry<T>>>,
    max: usize,
    ttl: Duration,
}

/// The sessions of one MCP listener.
pub type Sessions = Store<Session>;
/// The earlier tool pins of each client of one MCP listener's upstream.
pub type Clients = Store<Earlier>;

impl Default for Sessions {
    fn default() -> Self {
        Store::new(DEFAULT_MAX_SESSIONS, DEFAULT_TTL)
    }
}

impl Default for Clients {
    fn default() -> Self {
        Store::new(DEFAULT_MAX_CLIENTS, DEFAULT_CLIENT_TTL)
    }
}

/// What one MCP listener remembers (kept across reloads).
#[derive(Default)]
pub struct State {
    pub sessions: Sessions,
    pub clients: Clients,
}

/// The key of a client of `upstream`: its `Authorization` (a token names a
/// user wherever they connect from), else its address.
pub fn client_key(upstream: &str, authorization: Option<&[u8]>, peer: IpAddr) -> Key {
    let mut h = Sha256::new();
    h.update(b"pipelock-mcp-client\0");
    h.update(upstream.as_bytes());
    h.update([0u8]);
    match authorization {
        Some(a) => {
            h.update(b"auth:");
            h.update(a);
        }
        None => {
            h.update(b"peer:");
            h.update(peer.to_string().as_bytes());
        }
    }
    h.finalize().into()
}

/// The key of a session: `Authorization` (or nothing) with the
/// `Mcp-Session-Id`, else with the client's address.
pub fn key(authorization: Option<&[u8]>, session_id: Option<&[u8]>, peer: IpAddr) -> Key {
    let mut h = Sha256::new();
    h.update(b"pipelock-mcp-session\0");
    match authorization {
        Some(a) => {
            h.update(b"auth:");
            h.update(a);
        }
        None => h.update(b"noauth"),
    }
    h.update([0u8]);
    match session_id {
        Some(s) => {
            h.update(b"session:");
            h.update(s);
        }
        None => {
            h.update(b"peer:");
            h.update(peer.to_string().as_bytes());
        }
    }
    h.finalize().into()
}

impl<T: Default> Store<T> {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Store {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
            ttl,
        }
    }

    /// Runs `f` on the state of `key` (created when new), at `now`.
    pub fn with<R>(&self, key: &Key, now: Instant, f: impl FnOnce(&mut T) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) {
            let ttl = self.ttl;
            map.retain(|_, e| now.saturating_duration_since(e.used) <= ttl);
            while map.len() >= self.max {
                let Some(oldest) = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k) else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        let entry = map.entry(*key).or_insert_with(|| Entry {
            state: T::default(),
            used: now,
        });
        if now.saturating_duration_since(entry.used) > self.ttl {
            entry.state = T::default();
        }
        entry.used = now;
        f(&mut entry.state)
    }

    /// Forgets a key (a session the client ended with DELETE).
    pub fn remove(&self, key: &Key) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Entries kept now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_users_and_sessions() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = key(Some(b"Bearer a"), Some(b"s1"), ip);
        assert_ne!(
            a,
            key(Some(b"Bearer b"), Some(b"s1"), ip),
            "another user, same id"
        );
        assert_ne!(a, key(Some(b"Bearer a"), Some(b"s2"), ip));
        assert_eq!(a, key(Some(b"Bearer a"), Some(b"s1"), [10, 0, 0, 2].into()));
        assert_ne!(
            key(Some(b"Bearer a"), None, ip),
            key(Some(b"Bearer a"), None, [10, 0, 0, 2].into())
        );
    }

    #[test]
    fn client_keys_follow_the_token_else_the_address() {
        let (ip, ip2): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let a = client_key("sure:3000", Some(b"Bearer a"), ip);
        assert_eq!(a, client_key("sure:3000", Some(b"Bearer a"), ip2));
        assert_ne!(a, client_key("sure:3000", Some(b"Bearer b"), ip));
        assert_ne!(a, client_key("other:3000", Some(b"Bearer a"), ip));
        assert_ne!(
            client_key("sure:3000", None, ip),
            client_key("sure:3000", None, ip2)
        );
        assert_ne!(a, key(Some(b"Bearer a"), None, ip), "not a session key");
    }

    #[test]
    fn bounded_and_expiring() {
        let s = Sessions::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let (k1, k2, k3) = (
            key(None, Some(b"1"), ip),
            key(None, Some(b"2"), ip),
            key(None, Some(b"3"), ip),
        );
        s.with(&k1, t0, |x| x.tools = Some(BTreeMap::new()));
        s.with(&k2, t0 + Duration::from_secs(1), |_| ());
        s.with(&k3, t0 + Duration::from_secs(2), |_| ());
        assert_eq!(s.len(), 2);
        assert!(
            s.with(&k1, t0 + Duration::from_secs(3), |x| x.tools.is_none()),
            "k1 was evicted"
        );
        let late = t0 + Duration::from_secs(60);
        assert!(s.with(&k2, late, |x| x.tools.is_none()));
        assert_eq!(s.len(), 1, "expired sessions dropped on insert");
        s.remove(&k2);
        assert!(s.is_empty());
    }
}
