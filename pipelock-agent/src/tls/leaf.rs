//! Leaf certificates per name: a bounded cache with a TTL, where concurrent
//! handshakes for the same name mint once (the first caller mints, the
//! others wait on the same slot).
use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::sign::CertifiedKey;

use super::Error;

/// What a leaf certificate is for: the client's SNI, or the original
/// destination IP when the client sent none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeafName {
    /// A DNS name (lower-cased).
    Dns(String),
    /// An IP address (IP SAN).
    Ip(IpAddr),
}

impl LeafName {
    /// From an SNI value (rustls only passes syntactically valid DNS names).
    pub fn dns(name: &str) -> Self {
        LeafName::Dns(name.trim_end_matches('.').to_ascii_lowercase())
    }
}

impl fmt::Display for LeafName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafName::Dns(d) => f.write_str(d),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

type SlotResult = Result<Arc<CertifiedKey>, String>;

struct Slot {
    born: Instant,
    value: OnceLock<SlotResult>,
}

/// Bounded, expiring, single-flight cache of minted leaves.
pub struct LeafCache {
    slots: Mutex<HashMap<LeafName, Arc<Slot>>>,
    capacity: usize,
    ttl: Duration,
    mints: AtomicU64,
}

impl LeafCache {
    /// A cache holding at most `capacity` names, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
            mints: AtomicU64::new(0),
        }
    }

    /// How many leaves were minted so far (cache misses).
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// Number of cached names.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeafName, Arc<Slot>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached leaf for `name`, or the one `mint` makes. Concurrent callers
    /// for the same name share a single `mint` call; a failed mint is not cached.
    pub fn get_or_mint(
        &self,
        name: &LeafName,
        mint: impl FnOnce() -> Result<Arc<CertifiedKey>, Error>,
    ) -> Result<Arc<CertifiedKey>, Error> {
        let now = Instant::now();
        let slot = {
            let mut slots = self.lock();
            match slots.get(name) {
                Some(s) if now.duration_since(s.born) < self.ttl => s.clone(),
                _ => {
                    if slots.len() >= self.capacity {
                        self.evict(&mut slots, now);
                    }
                    let s = Arc::new(Slot {
                        born: now,
                        value: OnceLock::new(),
                    });
                    slots.insert(name.clone(), s.clone());
                    s
                }
            }
        };
        let result = slot.value.get_or_init(|| {
            self.mints.fetch_add(1, Ordering::Relaxed);
            mint().map_err(|e| e.to_string())
        });
        match result {
            Ok(key) => Ok(key.clone()),
            Err(reason) => {
                let mut slots = self.lock();
                if slots.get(name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    slots.remove(name);
                }
                Err(Error::Mint {
                    name: name.to_string(),
                    reason: reason.clone(),
                })
            }
        }
    }

    /// Drops expired entries; if none were, the oldest tenth.
    fn evict(&self, slots: &mut HashMap<LeafName, Arc<Slot>>, now: Instant) {
        slots.retain(|_, s| now.duration_since(s.born) < self.ttl);
        if slots.len() < self.capacity {
            return;
        }
        let mut ages: Vec<(Instant, LeafName)> =
            slots.iter().map(|(k, s)| (s.born, k.clone())).collect();
        ages.sort_unstable_by_key(|(born, _)| *born);
        let drop_n = (self.capacity / 10).max(1);
        for (_, k) in ages.into_iter().take(drop_n) {
            slots.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn dummy() -> Result<Arc<CertifiedKey>, Error> {
        let provider = super::super::config::provider();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(kp.serialize_der().into());
        let key = provider.key_provider.load_private_key(der).expect("load");
        Ok(Arc::new(CertifiedKey::new(vec![], key)))
    }

    #[test]
    fn concurrent_requests_mint_once() {
        let cache = Arc::new(LeafCache::new(10, Duration::from_secs(60)));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (c, b) = (cache.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    c.get_or_mint(&LeafName::dns("a.example"), || {
                        std::thread::sleep(Duration::from_millis(50));
                        dummy()
                    })
                    .map(|_| ())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join").expect("mint");
        }
        assert_eq!(cache.mints(), 1);
    }

    #[test]
    fn bounded_and_expiring() {
        let cache = LeafCache::new(10, Duration::from_millis(100));
        for i in 0..25 {
            cache
                .get_or_mint(&LeafName::dns(&format!("h{i}.example")), dummy)
                .expect("mint");
            assert!(cache.len() <= 10, "len {}", cache.len());
        }
        let before = cache.mints();
        cache
            .get_or_mint(&LeafName::dns("h24.example"), dummy)
            .expect("hit");
        assert_eq!(cache.mints(), before, "fresh entry is a hit");
        std::thread::sleep(Duration::from_millis(150));
        cache
            .get_or_mint(&LeafName::dns("h24.example"), dummy)
            .expect("miss");
        assert_eq!(cache.mints(), before + 1, "expired entry is minted again");
    }

    #[test]
    fn failures_are_not_cached() {
        let cache = LeafCache::new(10, Duration::from_secs(60));
        let name = LeafName::dns("bad.example");
        let err = cache.get_or_mint(&name, || {
            Err(Error::Mint {
                name: "bad.example".into(),
                reason: "boom".into(),
            })
        });
        assert!(err.is_err());
        cache.get_or_mint(&name, dummy).expect("retry mints");
        assert_eq!(cache.mints(), 2);
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            LeafName::dns("API.Example.COM."),
            LeafName::dns("api.example.com")
        );
    }
}
