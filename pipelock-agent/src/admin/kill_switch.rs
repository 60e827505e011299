//! The kill switch (Pipelock's `kill_switch` section): an emergency
//! deny-all. Four sources, OR-combined: the config (`kill_switch.enabled`),
//! the API (`POST /api/v1/killswitch`), SIGUSR1 (each signal toggles) and a
//! sentinel file (`kill_switch.sentinel_file`: on while the file exists,
//! polled every second). While any is on, the shared pipeline refuses every
//! request with 503 `{"error":"kill_switch_active","message":…}` and every
//! raw relay is reset; client addresses in `allowlist_ips` are exempt.
//! The process keeps one [`KillSwitch`] for its life: a reload re-reads the
//! config source, the message and the exemptions, and keeps the API and
//! signal states.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::{
    config::pipelock::KillSwitch as KillSwitchConfig,
    pipeline::{Block, BlockKind},
    telemetry::metrics::Metrics,
};

/// How often the sentinel file is looked for.
pub const SENTINEL_POLL: Duration = Duration::from_secs(1);

/// What the config says, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub message: String,
    pub sentinel_file: Option<PathBuf>,
    pub health_exempt: bool,
    pub metrics_exempt: bool,
    pub api_exempt: bool,
    pub allowlist: Vec<IpNet>,
}

impl Settings {
    /// The settings of a `kill_switch` section; entries of `allowlist_ips`
    /// that are neither an address nor a CIDR are reported and skipped.
    pub fn from_config(c: &KillSwitchConfig) -> Self {
        let mut allowlist = Vec::new();
        for entry in &c.allowlist_ips {
            let entry = entry.trim();
            match entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => allowlist.push(n),
                Err(_) => tracing::warn!(
                    target: "pipelock::config",
                    key = "kill_switch.allowlist_ips",
                    entry,
                    "not an IP address or CIDR; ignored"
                ),
            }
        }
        Settings {
            message: c.message.clone(),
            sentinel_file: c
                .sentinel_file
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            health_exempt: c.health_exempt,
            metrics_exempt: c.metrics_exempt,
            api_exempt: c.api_exempt,
            allowlist,
        }
    }
}

/// Which sources are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sources {
    pub config: bool,
    pub api: bool,
    pub signal: bool,
    pub sentinel: bool,
}

impl Sources {
    /// True when any source is on.
    pub fn any(&self) -> bool {
        self.config || self.api || self.signal || self.sentinel
    }

    /// The first source that is on, in Pipelock's order (config, api, signal, sentinel).
    pub fn first(&self) -> Option<&'static str> {
        [
            (self.config, "config"),
            (self.api, "api"),
            (self.signal, "signal"),
            (self.sentinel, "sentinel"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }
}

/// The process's kill switch.
#[derive(Debug)]
pub struct KillSwitch {
    config: AtomicBool,
    api: AtomicBool,
    signal: AtomicBool,
    sentinel: AtomicBool,
    settings: ArcSwap<Settings>,
    metrics: Option<Arc<Metrics>>,
    /// Serialises state changes, so the log line and the gauges follow the
    /// order of the changes.
    changes: Mutex<bool>,
}

impl Default for KillSwitch {
    /// A switch that is off, with the default settings, counting nowhere.
    fn default() -> Self {
        KillSwitch::new(&KillSwitchConfig::default(), None)
    }
}

impl KillSwitch {
    /// A switch configured by `cfg`, reporting its state in `metrics`.
    pub fn new(cfg: &KillSwitchConfig, metrics: Option<Arc<Metrics>>) -> Self {
        let ks = KillSwitch {
            config: AtomicBool::new(false),
            api: AtomicBool::new(false),
            signal: AtomicBool::new(false),
            sentinel: AtomicBool::new(false),
            settings: ArcSwap::from_pointee(Settings::from_config(cfg)),
            metrics,
            changes: Mutex::new(false),
        };
        ks.configure(cfg);
        ks
    }

    /// Applies a (re)loaded `kill_switch` section: the config source, the
    /// message and the exemptions. The API and signal states are kept.
    pub fn configure(&self, cfg: &KillSwitchConfig) {
        self.settings.store(Arc::new(Settings::from_config(cfg)));
        self.set(&self.config, cfg.enabled, "config");
        self.poll_sentinel();
    }

    /// True when any source is on. Four relaxed loads: cheap enough for
    /// every request.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.config.load(Ordering::Relaxed)
            || self.api.load(Ordering::Relaxed)
            || self.signal.load(Ordering::Relaxed)
            || self.sentinel.load(Ordering::Relaxed)
    }

    /// True when traffic from `client` must be refused now (on, and the
    /// client not in `allowlist_ips`).
    #[inline]
    pub fn refuses(&self, client: IpAddr) -> bool {
        self.is_active() && !self.exempt(client)
    }

    fn exempt(&self, client: IpAddr) -> bool {
        let s = self.settings.load();
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        s.allowlist.iter().any(|n| n.contains(&client))
    }

    /// Each source's state.
    pub fn sources(&self) -> Sources {
        Sources {
            config: self.config.load(Ordering::Relaxed),
            api: self.api.load(Ordering::Relaxed),
            signal: self.signal.load(Ordering::Relaxed),
            sentinel: self.sentinel.load(Ordering::Relaxed),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The operator's message (`kill_switch.message`).
    pub fn message(&self) -> String {
        self.settings.load().message.clone()
    }

    /// The block a refused request gets: 503 with the message.
    pub fn block(&self) -> Block {
        Block {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            reason: self.message(),
            rule_ids: Vec::new(),
            kind: BlockKind::KillSwitch,
        }
    }

    /// Sets the API source.
    pub fn set_api(&self, on: bool) {
        self.set(&self.api, on, "api");
    }

    /// Flips the signal source (SIGUSR1); returns its new state.
    pub fn toggle_signal(&self) -> bool {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let on = !self.signal.load(Ordering::Relaxed);
        self.signal.store(on, Ordering::Relaxed);
        self.changed(&mut changes, "signal", on);
        on
    }

    /// Looks for the sentinel file once and updates the sentinel source.
    pub fn poll_sentinel(&self) {
        let exists = self
            .settings
            .load()
            .sentinel_file
            .as_ref()
            .is_some_and(|p| p.exists());
        self.set(&self.sentinel, exists, "sentinel");
    }

    /// Polls the sentinel file every [`SENTINEL_POLL`] until `stop`.
    pub async fn watch_sentinel(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SENTINEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.poll_sentinel(),
            }
        }
    }

    fn set(&self, source: &AtomicBool, on: bool, name: &'static str) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if source.swap(on, Ordering::Relaxed) == on {
            if let Some(m) = &self.metrics {
                m.set_kill_switch_source(name, on);
            }
            return;
        }
        self.changed(&mut changes, name, on);
    }

    /// Reports a change of `name` to `on` (caller holds `changes`, which
    /// holds whether the switch was active).
    fn changed(&self, was_active: &mut bool, name: &'static str, on: bool) {
        if let Some(m) = &self.metrics {
            m.set_kill_switch_source(name, on);
        }
        let active = self.is_active();
        let sources = self.sources();
        if active != *was_active {
            if active {
                tracing::warn!(
                    target: "pipelock::kill_switch",
                    source = name,
                    ?sources,
                    "kill switch ON: every request is refused"
                );
            } else {
                tracing::warn!(
                    target: "pipelock::kill_switch",
                    source = name,
                    "kill switch OFF: traffic flows again"
                );
            }
        } else {
            tracing::info!(
                target: "pipelock::kill_switch",
                source = name,
                on,
                active,
                ?sources,
                "kill switch source changed"
            );
        }
        *was_active = active;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut KillSwitchConfig)) -> KillSwitchConfig {
        let mut c = KillSwitchConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn sources_or_combine() {
        let m = Arc::new(Metrics::new());
        let ks = KillSwitch::new(&KillSwitchConfig::default(), Some(m.clone()));
        assert!(!ks.is_active());
        ks.set_api(true);
        assert!(ks.is_active());
        assert!(ks.toggle_signal());
        ks.set_api(false);
        assert!(ks.is_active(), "signal still on");
        assert_eq!(ks.sources().first(), Some("signal"));
        assert!(!ks.toggle_signal());
        assert!(!ks.is_active());
        // The config source follows reloads; API and signal survive them.
        ks.set_api(true);
        ks.configure(&cfg(|c| c.enabled = true));
        assert_eq!(
            ks.sources(),
            Sources {
                config: true,
                api: true,
                signal: false,
                sentinel: false
            }
        );
        ks.set_api(false);
        assert!(ks.is_active());
        ks.configure(&KillSwitchConfig::default());
        assert!(!ks.is_active());
        assert!(
            m.encode()
                .contains("pipelock_kill_switch_active{source=\"config\"} 0")
        );
    }

    #[test]
    fn the_pipeline_refuses_requests_and_connections_while_on() {
        use crate::pipeline::{ConnMeta, Decision, Listener, Pipeline, ScanConfig, ScanPipeline};
        let m = Arc::new(Metrics::new());
        let ks = Arc::new(KillSwitch::new(
            &cfg(|c| c.message = "stop".into()),
            Some(m.clone()),
        ));
        let p = ScanPipeline::with_metrics(ScanConfig::default(), m.clone())
            .unwrap()
            .with_kill_switch(ks.clone());
        let conn = Arc::new(ConnMeta {
            id: 1,
            listener: Listener::Transparent,
            peer: "10.0.0.2:40000".parse().unwrap(),
            orig_dst: Some("203.0.113.9:80".parse().unwrap()),
            attribution: None,
            verified_name: None,
        });
        let req = http::Request::get("http://example.com/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(p.exchange(&conn).request_filter(&req), Decision::Continue);
        assert!(!p.refuse_connection(&conn));
        ks.set_api(true);
        let Decision::Block(b) = p.exchange(&conn).request_filter(&req) else {
            panic!("not refused");
        };
        assert_eq!(b.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b.kind, BlockKind::KillSwitch);
        assert_eq!(b.json_body()["message"], "stop");
        assert!(p.refuse_connection(&conn));
        assert_eq!(m.kill_switch_denials_total(), 2);
        ks.set_api(false);
        assert_eq!(p.exchange(&conn).request_filter(&req), Decision::Continue);
    }

    #[test]
    fn sentinel_file_is_on_while_it_exists() {
        let path = std::env::temp_dir().join(format!("plk-ks-sentinel-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ks = KillSwitch::new(
            &cfg(|c| c.sentinel_file = Some(path.display().to_string())),
            None,
        );
        assert!(!ks.is_active());
        std::fs::write(&path, b"").unwrap();
        ks.poll_sentinel();
        assert!(ks.is_active());
        assert!(ks.sources().sentinel);
        std::fs::remove_file(&path).unwrap();
        ks.poll_sentinel();
        assert!(!ks.is_active());
    }

    #[test]
    fn allowlisted_clients_are_exempt_and_the_block_carries_the_message() {
        let ks = KillSwitch::new(
            &cfg(|c| {
                c.enabled = true;
                c.message = "maintenance".into();
                c.allowlist_ips = vec!["10.1.0.0/16".into(), "192.0.2.7".into(), "bogus".into()];
            }),
            None,
        );
        assert!(ks.refuses("10.2.0.1".parse().unwrap()));
        assert!(!ks.refuses("10.1.9.9".parse().unwrap()));
        assert!(!ks.refuses("192.0.2.7".parse().unwrap()));
        assert!(!ks.refuses("::ffff:192.0.2.7".parse().unwrap()));
        let b = ks.block();
        assert_eq!(b.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            b.json_body(),
            serde_json::json!({"error": "kill_switch_active", "message": "maintenance"})
        );
    }
}
