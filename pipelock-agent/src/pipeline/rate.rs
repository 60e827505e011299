//! Request-rate limits per destination host and per client, over a sliding
//! minute (`interceptor.rate_limit`). The host is the name the upstream's
//! certificate was verified for, else the address connected to (never a
//! Host header a client could vary to spread its requests); the client is
//! the pod (namespace/pod), else the cgroup,
//! else the client address. A request over either limit is a
//! `dest.rate_limit` finding that follows the mode; a block answers 429.
//!
//! Each key holds two per-minute counters (this minute and the last) and
//! is judged on their weighted sum, the usual sliding-window estimate:
//! constant memory per key and no timer. Keys are bounded: when a table is
//! full, keys idle for two minutes are dropped, and a key that still finds
//! no room is not limited (counted in `pipelock_rate_limit_untracked_total`).
//! Off (both limits 0) by default: the limiter then takes no lock.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Keys one table holds at most.
pub const MAX_KEYS: usize = 10_000;

const MINUTE: Duration = Duration::from_secs(60);

/// `interceptor.rate_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests a minute to one destination host, from all clients (0: no limit).
    pub per_host_per_minute: u32,
    /// Requests a minute from one client (pod), to all hosts (0: no limit).
    pub per_client_per_minute: u32,
}

impl RateLimitConfig {
    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.per_host_per_minute > 0 || self.per_client_per_minute > 0
    }
}

/// Which limit a request went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Host,
    Client,
}

impl Exceeded {
    /// Where the finding is reported.
    pub fn location(self) -> &'static str {
        match self {
            Exceeded::Host => "rate:host",
            Exceeded::Client => "rate:client",
        }
    }
}

/// The two counters of one key.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Start of the current minute.
    start: Instant,
    current: u32,
    previous: u32,
}

impl Counter {
    /// Counts one request at `now`; returns the sliding-window estimate of
    /// the requests in the minute before it, this one included.
    fn hit(&mut self, now: Instant) -> f64 {
        let since = now.saturating_duration_since(self.start);
        if since >= 2 * MINUTE {
            *self = Counter {
                start: now,
                current: 0,
                previous: 0,
            };
        } else if since >= MINUTE {
            self.previous = self.current;
            self.current = 0;
            self.start += MINUTE;
        }
        self.current = self.current.saturating_add(1);
        let into = now.saturating_duration_since(self.start).as_secs_f64() / 60.0;
        f64::from(self.previous) * (1.0 - into).max(0.0) + f64::from(self.current)
    }

    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.start) >= 2 * MINUTE
    }
}

/// One table of counters.
#[derive(Debug, Default)]
struct Table {
    counters: HashMap<String, Counter>,
}

impl Table {
    /// Counts a request for `key`; `None` when the table has no room.
    fn hit(&mut self, key: &str, now: Instant) -> Option<f64> {
        if let Some(c) = self.counters.get_mut(key) {
            return Some(c.hit(now));
        }
        if self.counters.len() >= MAX_KEYS {
            self.counters.retain(|_, c| !c.idle(now));
            if self.counters.len() >= MAX_KEYS {
                return None;
            }
        }
        let mut c = Counter {
            start: now,
            current: 0,
            previous: 0,
        };
        let n = c.hit(now);
        self.counters.insert(key.to_owned(), c);
        Some(n)
    }
}

/// The limiter one pipeline shares across its connections.
#[derive(Debug, Default)]
pub struct RateLimiter {
    cfg: RateLimitConfig,
    hosts: Mutex<Table>,
    clients: Mutex<Table>,
}

/// What one request's check found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    pub exceeded: Option<Exceeded>,
    /// Keys that found no room in a full table (not limited).
    pub untracked: u32,
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig) -> Self {
        RateLimiter {
            cfg,
            ..Default::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    /// Counts one request from `client` to `host` now.
    pub fn check(&self, host: &str, client: &str) -> RateCheck {
        self.check_at(host, client, Instant::now())
    }

    /// [`Self::check`] at a given time.
    pub fn check_at(&self, host: &str, client: &str, now: Instant) -> RateCheck {
        let mut out = RateCheck::default();
        let mut judge = |table: &Mutex<Table>, key: &str, limit: u32, which: Exceeded| {
            if limit == 0 {
                return;
            }
            // A poisoned lock only means another request panicked mid-count;
            // the counters are still usable.
            let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
            match t.hit(key, now) {
                Some(n) if n > f64::from(limit) => {
                    out.exceeded.get_or_insert(which);
                }
                Some(_) => {}
                None => out.untracked += 1,
            }
        };
        judge(
            &self.hosts,
            host,
            self.cfg.per_host_per_minute,
            Exceeded::Host,
        );
        judge(
            &self.clients,
            client,
            self.cfg.per_client_per_minute,
            Exceeded::Client,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(host: u32, client: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            per_host_per_minute: host,
            per_client_per_minute: client,
        })
    }

    #[test]
    fn off_by_default() {
        let l = RateLimiter::default();
        assert!(!l.enabled());
        let t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.check_at("h", "c", t), RateCheck::default());
        }
    }

    #[test]
    fn the_request_over_the_host_limit_is_flagged_and_others_hosts_are_not() {
        let l = limiter(3, 0);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at("api.example", "pod-a", t).exceeded, None);
        }
        assert_eq!(
            l.check_at("api.example", "pod-b", t).exceeded,
            Some(Exceeded::Host)
        );
        assert_eq!(l.check_at("other.example", "pod-a", t).exceeded, None);
    }

    #[test]
    fn the_client_limit_counts_across_hosts() {
        let l = limiter(0, 2);
        let t = Instant::now();
        assert_eq!(l.check_at("a", "pod-a", t).exceeded, None);
        assert_eq!(l.check_at("b", "pod-a", t).exceeded, None);
        assert_eq!(l.check_at("c", "pod-a", t).exceeded, Some(Exceeded::Client));
        assert_eq!(l.check_at("c", "pod-b", t).exceeded, None);
    }

    #[test]
    fn the_window_slides() {
        let l = limiter(10, 0);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.check_at("h", "c", t).exceeded, None);
        }
        assert!(l.check_at("h", "c", t).exceeded.is_some());
        // Half a minute into the next minute, half of the last one still
        // counts: 11 * 0.5 = 5.5, so four more fit, the fifth does not.
        let half = t + MINUTE + MINUTE / 2;
        for _ in 0..4 {
            assert_eq!(l.check_at("h", "c", half).exceeded, None);
        }
        assert!(l.check_at("h", "c", half).exceeded.is_some());
        // Two idle minutes forget everything.
        let later = t + 5 * MINUTE;
        for _ in 0..10 {
            assert_eq!(l.check_at("h", "c", later).exceeded, None);
        }
    }

    #[test]
    fn a_full_table_drops_idle_keys_and_does_not_track_the_rest() {
        let l = limiter(1, 0);
        let t = Instant::now();
        for i in 0..MAX_KEYS {
            l.check_at(&format!("h{i}"), "c", t);
        }
        let r = l.check_at("new", "c", t);
        assert_eq!(r.untracked, 1);
        assert_eq!(r.exceeded, None);
        // Known keys are still limited.
        assert!(l.check_at("h0", "c", t).exceeded.is_some());
        // Once the others are idle, the new key gets room.
        let later = t + 3 * MINUTE;
        assert_eq!(l.check_at("new", "c", later).untracked, 0);
    }
}
