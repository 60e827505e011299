//! Connection admission on every listener: at most
//! `interceptor.max_connections` open at once, and at most
//! `max_connections_per_pod` from one cgroup, so one pod cannot take the
//! agent's descriptors from every other pod on the node. Past a cap the new
//! connection is reset at once, counted, and logged (at most once a second).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// All `max_connections` slots are taken.
    Total(usize),
    /// The pod (cgroup id) has `max_connections_per_pod` open.
    Pod(u64, usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "{n} connections open (interceptor.max_connections)"),
            Refusal::Pod(id, n) => write!(
                f,
                "cgroup {id} has {n} connections open (interceptor.max_connections_per_pod)"
            ),
        }
    }
}

/// The caps and what is open now.
#[derive(Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_pod: usize,
    per_pod: Mutex<HashMap<u64, usize>>,
    last_log: Mutex<Option<Instant>>,
}

/// An admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    pod: Option<(Arc<ConnLimits>, u64)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((limits, id)) = self.pod.take() {
            let mut pods = limits.per_pod.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = pods.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    pods.remove(&id);
                }
            }
        }
    }
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_pod: usize) -> Arc<Self> {
        let max_total = max_total.max(1);
        Arc::new(ConnLimits {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_pod: max_per_pod.max(1),
            per_pod: Mutex::new(HashMap::new()),
            last_log: Mutex::new(None),
        })
    }

    /// Admits a connection from `cgroup` (`None`: not attributed), or says why not.
    pub fn admit(self: &Arc<Self>, cgroup: Option<u64>) -> Result<Admission, Refusal> {
        let slot = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::Total(self.max_total))?;
        let pod = match cgroup {
            Some(id) => {
                let mut pods = self.per_pod.lock().unwrap_or_else(|p| p.into_inner());
                let n = pods.entry(id).or_insert(0);
                if *n >= self.max_per_pod {
                    return Err(Refusal::Pod(id, *n));
                }
                *n += 1;
                Some((Arc::clone(self), id))
            }
            None => None,
        };
        Ok(Admission { _slot: slot, pod })
    }

    /// Admits a newly accepted connection of `listener`, or resets it at
    /// once: counted (`connections_refused`, `connections_total{kind=limit}`)
    /// and logged at most once a second. `orig`: the destination and caller
    /// the kernel recorded, when it was redirected.
    pub fn admit_or_reset(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        listener: &'static str,
        orig: Option<&(std::net::SocketAddr, crate::pipeline::Attribution)>,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Option<(tokio::net::TcpStream, Admission)> {
        metrics.connections_accepted.inc();
        match self.admit(orig.map(|(_, who)| who.cgroup_id)) {
            Ok(admission) => Some((stream, admission)),
            Err(refusal) => {
                metrics.connections_refused.inc();
                if self.should_log() {
                    tracing::warn!(
                        target: "pipelock::conn",
                        peer = %peer,
                        listener,
                        orig_dst = orig.map(|(d, _)| d.to_string()),
                        comm = orig.map(|(_, w)| w.comm.clone()),
                        reason = %refusal,
                        "connection refused: limit reached"
                    );
                }
                metrics.connection(listener, "limit");
                super::relay::reset(stream);
                None
            }
        }
    }

    /// True when a refusal should be logged now (at most once a second).
    pub fn should_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Raises the soft descriptor limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    rl.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_pod_and_frees_on_drop() {
        let l = ConnLimits::new(3, 2);
        let a = l.admit(Some(1)).unwrap();
        let b = l.admit(Some(1)).unwrap();
        assert_eq!(l.admit(Some(1)).unwrap_err(), Refusal::Pod(1, 2));
        let c = l.admit(Some(2)).unwrap();
        assert_eq!(l.admit(Some(3)).unwrap_err(), Refusal::Total(3));
        drop(a);
        let _d = l.admit(Some(1)).unwrap();
        drop((b, c));
        assert!(l.admit(None).is_ok());
    }
}
