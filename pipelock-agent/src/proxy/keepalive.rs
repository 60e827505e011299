//! Idle HTTP/1.1 upstream connections kept for reuse across client
//! connections (a reverse proxy's upstream keep-alive, as nginx's
//! `keepalive`): a client connection that ends leaves its upstream
//! connections here, and a new one takes one before dialling, so a client
//! that opens a connection per request (`Connection: close`, Net::HTTP
//! without a persistent session) costs the agent an accept, not also an
//! upstream connect and TLS handshake. While a client connection lives it
//! reuses its own (see [`UpstreamPool`]); once they have sat unused for
//! [`RELEASE_AFTER`] they come here too, so an idle keep-alive client
//! connection holds no upstream connection.
//!
//! A connection is reused only under the key it was opened for: the address
//! connected to, the TLS server name its certificate was verified for and the
//! ALPN offered (or plaintext), and the client it was opened for (its cgroup,
//! else its IP address), so connection-bound server state (NTLM, a session
//! pinned to a connection) never passes from one container or pod to another.
//! Only connections hyper reports ready are handed out (the last response
//! read to its end, nothing in flight); hyper closes one whose exchange was
//! cut (a request body refused mid-stream, a response abandoned unread) or
//! that holds bytes past its last response, so neither reaches the next
//! client. (Bytes an upstream sends later, unasked, would be read as the
//! answer to the next request, as on any HTTP/1.1 keep-alive connection:
//! the key keeps that within one pod.)
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;
use rustls_pki_types::ServerName;

use super::upstream::{UpBody, UpstreamPool};
use crate::{pipeline::ConnMeta, tls::AlpnOffer};

/// Idle connections kept across all keys, at most (about 35 KB each).
const MAX_IDLE_TOTAL: usize = 1024;
/// A client connection's own upstream connections unused this long (1 to 2
/// times this, as the sweep runs) are moved to the store.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Whom an upstream connection was opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The calling task's cgroup (redirected connections).
    Cgroup(u64),
    /// The client's address (forward-proxy connections).
    Peer(IpAddr),
}

impl Owner {
    /// The owner of a client connection: its cgroup when the kernel told
    /// it, else its address.
    pub fn of(meta: &ConnMeta) -> Self {
        match &meta.attribution {
            Some(a) => Owner::Cgroup(a.cgroup_id),
            None => Owner::Peer(meta.peer.ip()),
        }
    }
}

/// TLS towards the upstream as part of a key: the verified name and the ALPN
/// offer (none: plaintext).
pub type TlsKey = Option<(ServerName<'static>, AlpnOffer)>;

struct Idle {
    send: SendRequest<UpBody>,
    since: Instant,
}

/// One TLS variant of an (address, owner) pair.
struct Slot {
    tls: TlsKey,
    idle: Vec<Idle>,
}

#[derive(Default)]
struct Slots {
    by_dest: HashMap<(SocketAddr, Owner), Vec<Slot>>,
    total: usize,
}

/// Idle upstream connections by key, shared by the client connections of a
/// configuration.
pub struct IdleUpstreams {
    slots: Mutex<Slots>,
    per_key: usize,
    max_idle: Duration,
    /// The client connections' pools, for moving what they leave unused.
    pools: Mutex<Vec<Weak<UpstreamPool>>>,
}

impl IdleUpstreams {
    /// A store shared across client connections: `per_key` idle
    /// connections per key, each dropped after `max_idle` unused. A task
    /// runs every [`RELEASE_AFTER`] until the store is dropped: it moves
    /// the connections client connections left unused here and sweeps out
    /// expired and closed ones.
    pub fn shared(per_key: usize, max_idle: Duration) -> Arc<Self> {
        let store = Arc::new(Self {
            slots: Mutex::default(),
            per_key,
            max_idle,
            pools: Mutex::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_while_alive(Arc::downgrade(&store), RELEASE_AFTER));
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches a client connection's pool: what it leaves unused for
    /// [`RELEASE_AFTER`] is moved here.
    pub fn register(&self, pool: &Arc<UpstreamPool>) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(pool));
    }

    /// Moves the ready connections of pools unused for [`RELEASE_AFTER`]
    /// here (and forgets the pools of ended client connections).
    fn release_unused(&self) {
        let live: Vec<Arc<UpstreamPool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|w| w.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in live.iter().filter(|p| p.unused_for() >= RELEASE_AFTER) {
            pool.release_ready(self);
        }
        // `live` may hold the last reference of a pool whose client
        // connection just ended; its drop puts here too, with no lock held.
        drop(live);
    }

    fn usable(&self, i: &Idle, now: Instant) -> bool {
        !i.send.is_closed() && now.saturating_duration_since(i.since) < self.max_idle
    }

    /// True when a connection to `addr` opened for `owner` is ready: under
    /// exactly the TLS key `tls`, or under any (`None`: the client's next
    /// connection there likely needs none of its own).
    pub fn has_ready(&self, addr: SocketAddr, owner: Owner, tls: Option<&TlsKey>) -> bool {
        let now = Instant::now();
        self.lock().by_dest.get(&(addr, owner)).is_some_and(|v| {
            v.iter()
                .filter(|s| tls.is_none_or(|t| s.tls == *t))
                .any(|s| {
                    s.idle
                        .iter()
                        .any(|i| i.send.is_ready() && self.usable(i, now))
                })
        })
    }

    /// The most recently used ready connection under this key (closed and
    /// expired ones found on the way are dropped).
    pub fn take(
        &self,
        addr: SocketAddr,
        owner: Owner,
        tls: &TlsKey,
    ) -> Option<SendRequest<UpBody>> {
        let now = Instant::now();
        let mut guard = self.lock();
        let Slots { by_dest, total } = &mut *guard;
        let slot = by_dest
            .get_mut(&(addr, owner))?
            .iter_mut()
            .find(|s| s.tls == *tls)?;
        let before = slot.idle.len();
        slot.idle.retain(|i| self.usable(i, now));
        let taken = slot
            .idle
            .iter()
            .rposition(|i| i.send.is_ready())
            .map(|i| slot.idle.remove(i).send);
        *total -= before - slot.idle.len();
        taken
    }

    /// Keeps `send` for reuse under this key (it may still be busy with the
    /// response it just received; it is handed out once ready). The oldest
    /// goes when the key is full; nothing is kept past [`MAX_IDLE_TOTAL`].
    pub fn put(&self, addr: SocketAddr, owner: Owner, tls: TlsKey, send: SendRequest<UpBody>) {
        if self.per_key == 0 {
            return;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let Slots { by_dest, total } = &mut *guard;
        let dest = by_dest.entry((addr, owner)).or_default();
        let at = match dest.iter().position(|s| s.tls == tls) {
            Some(at) => at,
            None => {
                dest.push(Slot {
                    tls,
                    idle: Vec::new(),
                });
                dest.len() - 1
            }
        };
        let idle = &mut dest[at].idle;
        let before = idle.len();
        idle.retain(|i| self.usable(i, now));
        if idle.len() >= self.per_key {
            idle.remove(0);
        }
        *total -= before - idle.len();
        if *total < MAX_IDLE_TOTAL {
            idle.push(Idle { send, since: now });
            *total += 1;
        }
    }

    /// Drops expired and closed connections, and keys left empty.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut guard = self.lock();
        let slots = &mut *guard;
        let mut total = 0;
        slots.by_dest.retain(|_, dest| {
            dest.retain_mut(|s| {
                s.idle.retain(|i| self.usable(i, now));
                total += s.idle.len();
                !s.idle.is_empty()
            });
            !dest.is_empty()
        });
        slots.total = total;
    }

    /// Idle connections held (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn sweep_while_alive(store: Weak<IdleUpstreams>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.upgrade() {
            Some(s) => {
                s.release_unused();
                s.sweep();
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;
    use tokio::io::DuplexStream;

    use super::*;

    /// A ready HTTP/1.1 sender over an in-memory pipe (open while the
    /// returned far end lives).
    async fn sender() -> (SendRequest<UpBody>, DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(near))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        send.ready().await.expect("ready");
        (send, far)
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 443))
    }

    fn tls(name: &str) -> TlsKey {
        Some((
            ServerName::try_from(name.to_owned()).expect("name"),
            AlpnOffer::Http11,
        ))
    }

    #[tokio::test]
    async fn a_connection_is_handed_out_only_under_its_own_key() {
        let store = IdleUpstreams::shared(4, Duration::from_secs(30));
        let pod = Owner::Cgroup(1);
        let (send, _far) = sender().await;
        store.put(addr(), pod, tls("a.test"), send);
        assert!(store.has_ready(addr(), pod, None));
        assert!(!store.has_ready(addr(), Owner::Cgroup(2), None));
        assert!(
            store
                .take(addr(), Owner::Cgroup(2), &tls("a.test"))
                .is_none()
        );
        assert!(store.take(addr(), pod, &tls("b.test")).is_none());
        assert!(store.take(addr(), pod, &None).is_none());
        let other_offer = Some((
            ServerName::try_from("a.test").expect("name"),
            AlpnOffer::Both,
        ));
        assert!(store.take(addr(), pod, &other_offer).is_none());
        assert!(
            store
                .take(SocketAddr::from(([10, 0, 0, 2], 443)), pod, &tls("a.test"))
                .is_none()
        );
        assert!(store.has_ready(addr(), pod, Some(&tls("a.test"))));
        assert!(store.take(addr(), pod, &tls("a.test")).is_some());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_key_keeps_at_most_its_share() {
        let store = IdleUpstreams::shared(2, Duration::from_secs(30));
        let pod = Owner::Peer(std::net::Ipv4Addr::LOCALHOST.into());
        let mut far = Vec::new();
        for _ in 0..3 {
            let (send, f) = sender().await;
            far.push(f);
            store.put(addr(), pod, None, send);
        }
        assert_eq!(store.len(), 2);
        assert!(store.take(addr(), pod, &None).is_some());
        assert!(store.take(addr(), pod, &None).is_some());
        assert!(store.take(addr(), pod, &None).is_none());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_store_with_no_share_keeps_nothing() {
        let store = IdleUpstreams::shared(0, Duration::from_secs(30));
        let (send, _far) = sender().await;
        store.put(addr(), Owner::Cgroup(3), None, send);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn closed_and_expired_connections_are_never_handed_out() {
        let pod = Owner::Cgroup(7);
        let store = IdleUpstreams::shared(4, Duration::from_secs(30));
        let (send, far) = sender().await;
        store.put(addr(), pod, None, send);
        // The upstream closes it.
        drop(far);
        for _ in 0..100 {
            if !store.has_ready(addr(), pod, None) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(store.take(addr(), pod, &None).is_none());
        assert!(store.is_empty());

        let store = IdleUpstreams::shared(4, Duration::from_millis(20));
        let (send, _far) = sender().await;
        store.put(addr(), pod, None, send);
        assert!(store.has_ready(addr(), pod, Some(&None)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!store.has_ready(addr(), pod, Some(&None)));
        store.sweep();
        assert!(store.is_empty());
    }
}
