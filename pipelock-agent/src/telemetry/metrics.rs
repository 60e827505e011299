//! The agent's metrics: one registry ([`Metrics`], on `prometheus-client`)
//! holding every metric under its `pipelock_` name, shared by whatever
//! counts (the scan pipeline, the listeners, the kill switch, reloads) and
//! encoded by the `/metrics` endpoint (`crate::admin`). A pipeline rebuilt
//! on a config reload is handed the same `Arc<Metrics>`, so counters never go
//! back to zero while the process lives.
//!
//! Pipelock's names are used where the meaning is the same
//! (`pipelock_info`, `pipelock_requests_total{result}`,
//! `pipelock_scanner_hits_total{scanner}`, `pipelock_tunnels_total{result}`,
//! `pipelock_tls_intercept_total{outcome}`, `pipelock_kill_switch_active{source}`,
//! `pipelock_kill_switch_denials_total{transport,endpoint}`,
//! `pipelock_chain_detections_total{pattern,severity,action}`,
//! `pipelock_request_duration_seconds`); the rest are the agent's own.
//! Label values are `&'static str` or integers wherever possible, so counting
//! allocates nothing; the label sets that grow with traffic (cgroups) are capped.
use std::{
    borrow::Cow,
    sync::atomic::{AtomicUsize, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// At most this many cgroups get a series of their own in
/// `pipelock_redirected_connections_total`; later ones count under `cgroup_id="0"`.
pub const MAX_CGROUP_SERIES: usize = 512;

/// `{result}`: allowed, blocked, error (requests); completed, blocked (tunnels);
/// success, failure (config reloads).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// `{scanner}`: the rule id of a finding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScannerLabel {
    pub scanner: Cow<'static, str>,
}

/// `{direction, reason}` of a block: reason is the rule class of the first
/// blocking finding (dlp, injection, scanner) or `kill_switch`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// `{outcome}` of a TLS interception: success, handshake_error, upstream_error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// `{source}` of the kill switch: config, api, signal, sentinel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// `{transport, endpoint}` of a kill-switch denial: transport is the
/// listener (transparent, forward, mcp, admin); endpoint what was refused
/// (`http` for a request, `connection` for a raw relay or tunnel, or the
/// admin path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub transport: &'static str,
    pub endpoint: &'static str,
}

/// `{listener, kind}` of a connection: kind is how it was served (http, tls,
/// passthrough, relay, refused, reset, empty, malformed, kill_switch, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub listener: &'static str,
    pub kind: &'static str,
}

/// `{sink, result}` of an exported event: sink is webhook, syslog or otlp;
/// result sent, failed (refused, or unreachable after retries) or dropped
/// (the sink's queue was full).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub sink: &'static str,
    pub result: &'static str,
}

/// `{pattern, severity, action}` of a tool-call chain the MCP proxy detected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabels {
    pub pattern: String,
    pub severity: &'static str,
    pub action: &'static str,
}

/// `{cgroup_id}`: the cgroup v2 id of the process that connected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupLabel {
    pub cgroup_id: u64,
}

/// `{kind, action}` of unscannable traffic seen by the kernel programs:
/// kind `udp` (a datagram to a port not allowed) or `socket` (raw, ICMP,
/// MPTCP, SCTP…); action `refused` (strict, balanced) or `audited`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    pub kind: &'static str,
    pub action: &'static str,
}

/// `pipelock_audit_would_block_total`: findings audit mode only logged
/// that `enforcing_mode` (balanced, strict) would have blocked, by
/// direction (request, response).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WouldBlockLabels {
    pub enforcing_mode: &'static str,
    pub direction: &'static str,
}

/// Declares the plain counters once: the fields, their registration (name
/// without the `pipelock_` prefix and the `_total` suffix the encoder adds)
/// and a `u64` reader per counter.
macro_rules! counters {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// Every metric of the agent (process lifetime). Count plain
        /// counters with `metrics.<name>.inc()`, read them with
        /// `metrics.<name>()`; labelled ones through the methods below.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $(#[doc = $help] pub $field: Counter,)*
            /// `pipelock_requests_total{result}`.
            pub requests: Family<ResultLabel, Counter>,
            /// `pipelock_scanner_hits_total{scanner}`.
            pub scanner_hits: Family<ScannerLabel, Counter>,
            /// `pipelock_blocks_total{direction,reason}`.
            pub blocks: Family<BlockLabels, Counter>,
            /// `pipelock_tunnels_total{result}` (CONNECT tunnels of the forward proxy).
            pub tunnels: Family<ResultLabel, Counter>,
            /// `pipelock_tls_intercept_total{outcome}`.
            pub tls_intercepts: Family<OutcomeLabel, Counter>,
            /// `pipelock_kill_switch_active{source}` (0 or 1).
            pub kill_switch_active: Family<SourceLabel, Gauge>,
            /// `pipelock_kill_switch_denials_total{transport,endpoint}`.
            pub kill_switch_denials: Family<DenialLabels, Counter>,
            /// `pipelock_connections_total{listener,kind}`.
            pub connections: Family<ConnLabels, Counter>,
            /// `pipelock_redirected_connections_total{cgroup_id}`.
            pub redirected: Family<CgroupLabel, Counter>,
            /// `pipelock_active_connections`.
            pub active_connections: Gauge,
            /// `pipelock_kernel_unscannable_total{kind,action}`.
            pub kernel_unscannable: Family<KernelLabels, Counter>,
            /// `pipelock_audit_would_block_total{enforcing_mode,direction}`.
            pub audit_would_block: Family<WouldBlockLabels, Counter>,
            /// `pipelock_export_events_total{sink,result}`.
            pub export_events: Family<ExportLabels, Counter>,
            /// `pipelock_config_reloads_total{result}`.
            pub config_reloads: Family<ResultLabel, Counter>,
            /// `pipelock_chain_detections_total{pattern,severity,action}`.
            pub chain_detections: Family<ChainLabels, Counter>,
            /// `pipelock_request_duration_seconds`: request headers to the
            /// end of the response, per exchange.
            pub request_duration: Histogram,
            /// `pipelock_scan_duration_seconds`: time spent scanning, per exchange.
            pub scan_duration: Histogram,
            /// Blocked exchanges by host (not exported; for `/stats`).
            pub blocked_hosts: super::top::TopCounts,
            /// Findings by rule (not exported; for `/stats`).
            pub top_rules: super::top::TopCounts,
            /// Redirected connections by pod and container, else cgroup
            /// (not exported; for `status`).
            pub top_talkers: super::top::TopCounts,
            /// Sum of the kill-switch denials (not exported; for `/health`).
            denied: Counter,
            /// Series in `redirected` (about: two first connections of one
            /// cgroup at once may count it twice).
            cgroup_series: AtomicUsize,
        }

        impl Metrics {
            /// A registry with every metric at zero.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("pipelock");
                $(
                    let $field = Counter::default();
                    registry.register($name, $help, $field.clone());
                )*
                let m = Metrics {
                    $($field,)*
                    requests: Family::default(),
                    scanner_hits: Family::default(),
                    blocks: Family::default(),
                    tunnels: Family::default(),
                    tls_intercepts: Family::default(),
                    kill_switch_active: Family::default(),
                    kill_switch_denials: Family::default(),
                    connections: Family::default(),
                    redirected: Family::default(),
                    active_connections: Gauge::default(),
                    kernel_unscannable: Family::default(),
                    audit_would_block: Family::default(),
                    export_events: Family::default(),
                    config_reloads: Family::default(),
                    chain_detections: Family::default(),
                    // Pipelock's buckets.
                    request_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                    // 10 µs to ~10 s.
                    scan_duration: Histogram::new(exponential_buckets(0.000_01, 4.0, 11)),
                    blocked_hosts: Default::default(),
                    top_rules: Default::default(),
                    top_talkers: Default::default(),
                    denied: Counter::default(),
                    cgroup_series: AtomicUsize::new(0),
                    registry: Registry::default(),
                };
                m.register_labelled(registry)
            }

            $(
                #[doc = concat!("Current value of `pipelock_", $name, "_total`.")]
                pub fn $field(&self) -> u64 {
                    self.$field.get()
                }
            )*
        }
    };
}

counters! {
    dlp_hits => "dlp_hits", "Findings of DLP rules.";
    injection_hits => "injection_hits", "Findings of prompt-injection rules.";
    findings_blocked => "findings_blocked", "Findings whose action was block.";
    findings_warned => "findings_warned", "Findings whose action was warn.";
    findings_logged => "findings_logged", "Findings whose action was log.";
    requests_blocked => "requests_blocked", "Requests refused with a block.";
    responses_cut => "responses_cut", "Responses blocked or cut mid-stream.";
    decompression_bombs => "decompression_bombs", "Bodies whose decoding hit the size or ratio limit.";
    scan_errors => "scan_errors", "Internal scan errors (the exchange fails closed).";
    rate_limit_untracked => "rate_limit_untracked", "Requests not rate-limited because the limiter's key table was full.";
    request_bytes_scanned => "request_bytes_scanned", "Request body bytes scanned (as sent, before decoding).";
    response_bytes_scanned => "response_bytes_scanned", "Response body bytes scanned (as received, before decoding).";
    request_bytes_decoded => "request_bytes_decoded", "Request body bytes scanned after content decoding (gzip, br, zstd, deflate).";
    response_bytes_decoded => "response_bytes_decoded", "Response body bytes scanned after content decoding (gzip, br, zstd, deflate).";
    exchanges => "scanned_exchanges", "HTTP exchanges passed through the scan pipeline.";
    connections_refused => "connections_refused", "Connections reset because a connection limit was reached.";
    connections_accepted => "accepted_connections", "Connections accepted by any listener (including refused ones).";
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Content type of [`Metrics::encode`]'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
    /// Content type of [`Metrics::encode_prometheus`]'s output.
    pub const PROMETHEUS_CONTENT_TYPE: &'static str = prometheus_text::CONTENT_TYPE;

    fn register_labelled(mut self, mut registry: Registry) -> Self {
        let r = &mut registry;
        r.register(
            "requests",
            "HTTP requests through the pipeline by result (allowed, blocked, error).",
            self.requests.clone(),
        );
        r.register(
            "scanner_hits",
            "Findings by rule (after home-host exemptions and de-duplication).",
            self.scanner_hits.clone(),
        );
        r.register(
            "blocks",
            "Requests refused and responses cut, by direction and reason (dlp, injection, scanner, kill_switch).",
            self.blocks.clone(),
        );
        r.register(
            "tunnels",
            "CONNECT tunnels of the forward proxy by result.",
            self.tunnels.clone(),
        );
        r.register(
            "tls_intercept",
            "TLS interceptions by outcome (success, handshake_error, upstream_error).",
            self.tls_intercepts.clone(),
        );
        r.register(
            "kill_switch_active",
            "Whether a kill switch source is active (1) or not (0).",
            self.kill_switch_active.clone(),
        );
        r.register(
            "kill_switch_denials",
            "Requests and connections refused by the kill switch.",
            self.kill_switch_denials.clone(),
        );
        r.register(
            "connections",
            "Connections accepted, by listener and how they were served.",
            self.connections.clone(),
        );
        r.register(
            "redirected_connections",
            "Kernel-redirected connections by cgroup v2 id (0: past the series cap, or not attributed).",
            self.redirected.clone(),
        );
        r.register(
            "active_connections",
            "Connections open now (all listeners).",
            self.active_connections.clone(),
        );
        r.register(
            "kernel_unscannable",
            "UDP datagrams to ports not allowed and non-TCP/UDP sockets of covered pods, refused by the kernel (strict, balanced) or let through and counted (audit).",
            self.kernel_unscannable.clone(),
        );
        r.register(
            "audit_would_block",
            "Findings audit mode only logged that an enforcing mode (balanced, strict) would have blocked: what enforcing this node would do.",
            self.audit_would_block.clone(),
        );
        r.register(
            "export_events",
            "Findings and blocks exported, by sink (webhook, syslog, otlp) and result (sent, failed, dropped).",
            self.export_events.clone(),
        );
        r.register(
            "config_reloads",
            "Config reload attempts by result (success, failure).",
            self.config_reloads.clone(),
        );
        r.register(
            "chain_detections",
            "Tool-call chains the MCP proxy detected, by pattern, severity and action.",
            self.chain_detections.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request latency in seconds: request headers to the end of the response.",
            self.request_duration.clone(),
        );
        r.register(
            "scan_duration_seconds",
            "Time spent scanning one exchange (URL, headers, bodies) in seconds.",
            self.scan_duration.clone(),
        );
        let info = Gauge::<i64>::default();
        info.set(1);
        registry
            .sub_registry_with_label((
                Cow::Borrowed("version"),
                Cow::Borrowed(env!("CARGO_PKG_VERSION")),
            ))
            .register("info", "Build information.", info);
        // Every source shows, at 0, before the switch is ever used.
        for source in ["config", "api", "signal", "sentinel"] {
            self.kill_switch_active
                .get_or_create(&SourceLabel { source })
                .set(0);
        }
        self.registry = registry;
        self
    }

    /// Every metric in the OpenMetrics text exposition format (the
    /// Prometheus text format with `# EOF`), for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Every metric in the Prometheus text format 0.0.4 (what Pipelock
    /// serves, and what a scraper gets unless it asks for OpenMetrics).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Findings of any rule (the sum of `pipelock_scanner_hits_total`).
    pub fn scanner_hits(&self) -> u64 {
        self.findings_blocked() + self.findings_warned() + self.findings_logged()
    }

    /// Counts one finding of `rule`.
    pub fn scanner_hit(&self, rule: Cow<'static, str>) {
        self.top_rules.inc(&rule);
        self.scanner_hits
            .get_or_create(&ScannerLabel { scanner: rule })
            .inc();
    }

    /// Counts one exported event at `sink` with `result`.
    pub fn export_event(&self, sink: &'static str, result: &'static str) {
        self.export_events
            .get_or_create(&ExportLabels { sink, result })
            .inc();
    }

    /// Makes the series of `sink`/`result` appear (at 0).
    pub fn export_event_series(&self, sink: &'static str, result: &'static str) {
        let _ = self
            .export_events
            .get_or_create(&ExportLabels { sink, result });
    }

    /// Current value of `pipelock_export_events_total{sink,result}`.
    pub fn export_events_count(&self, sink: &'static str, result: &'static str) -> u64 {
        self.export_events
            .get_or_create(&ExportLabels { sink, result })
            .get()
    }

    /// Counts the end of one HTTP exchange.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }

    /// Value of `pipelock_requests_total{result}`.
    pub fn requests(&self, result: &'static str) -> u64 {
        self.requests
            .get(&ResultLabel { result })
            .map_or(0, |c| c.get())
    }

    /// Counts a block.
    pub fn block(&self, direction: &'static str, reason: &'static str) {
        self.blocks
            .get_or_create(&BlockLabels { direction, reason })
            .inc();
    }

    /// Value of `pipelock_tunnels_total{result}`.
    pub fn tunnels(&self, result: &'static str) -> u64 {
        self.tunnels
            .get(&ResultLabel { result })
            .map_or(0, |c| c.get())
    }

    /// Counts a CONNECT tunnel (`completed`, `blocked`).
    pub fn tunnel(&self, result: &'static str) {
        self.tunnels.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a TLS interception.
    pub fn tls_intercept(&self, outcome: &'static str) {
        self.tls_intercepts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a kill-switch denial.
    pub fn kill_switch_denial(&self, transport: &'static str, endpoint: &'static str) {
        self.kill_switch_denials
            .get_or_create(&DenialLabels {
                transport,
                endpoint,
            })
            .inc();
        self.denied.inc();
    }

    /// Kill-switch denials so far (all transports and endpoints).
    pub fn kill_switch_denials_total(&self) -> u64 {
        self.denied.get()
    }

    /// Sets `pipelock_kill_switch_active{source}`.
    pub fn set_kill_switch_source(&self, source: &'static str, active: bool) {
        self.kill_switch_active
            .get_or_create(&SourceLabel { source })
            .set(i64::from(active));
    }

    /// Counts a finding audit logged that `enforcing_mode` would block.
    pub fn audit_would_block(&self, enforcing_mode: &'static str, direction: &'static str) {
        self.audit_would_block
            .get_or_create(&WouldBlockLabels {
                enforcing_mode,
                direction,
            })
            .inc();
    }

    /// Adds `delta` to `pipelock_kernel_unscannable_total{kind,action}`.
    pub fn kernel_unscannable(&self, kind: &'static str, action: &'static str, delta: u64) {
        self.kernel_unscannable
            .get_or_create(&KernelLabels { kind, action })
            .inc_by(delta);
    }

    /// Current `pipelock_kernel_unscannable_total{kind,action}`.
    pub fn kernel_unscannable_total(&self, kind: &'static str, action: &'static str) -> u64 {
        self.kernel_unscannable
            .get_or_create(&KernelLabels { kind, action })
            .get()
    }

    /// Counts a connection that ended, by listener and how it was served.
    pub fn connection(&self, listener: &'static str, kind: &'static str) {
        self.connections
            .get_or_create(&ConnLabels { listener, kind })
            .inc();
    }

    /// Counts a detected tool-call chain.
    pub fn chain_detected(&self, pattern: &str, severity: &'static str, action: &'static str) {
        self.chain_detections
            .get_or_create(&ChainLabels {
                pattern: pattern.to_owned(),
                severity,
                action,
            })
            .inc();
    }

    /// Counts a kernel-redirected connection from `cgroup_id` (0: unknown).
    pub fn redirected_from(&self, cgroup_id: u64) {
        let mut label = CgroupLabel { cgroup_id };
        if self.redirected.get(&label).is_none()
            && self.cgroup_series.fetch_add(1, Ordering::Relaxed) >= MAX_CGROUP_SERIES
        {
            self.cgroup_series.fetch_sub(1, Ordering::Relaxed);
            label.cgroup_id = 0;
        }
        self.redirected.get_or_create(&label).inc();
    }

    /// Counts a config reload attempt.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_pipelock_names() {
        let m = Metrics::new();
        m.requests_blocked.inc();
        m.request_bytes_scanned.inc_by(1234);
        m.request("allowed");
        m.scanner_hit("dlp.github_token".into());
        m.tls_intercept("success");
        m.kill_switch_denial("transparent", "http");
        m.set_kill_switch_source("signal", true);
        m.redirected_from(42);
        m.request_duration.observe(0.02);
        assert_eq!(m.requests_blocked(), 1);
        assert_eq!(m.request_bytes_scanned(), 1234);
        assert_eq!(m.requests("allowed"), 1);
        assert_eq!(m.kill_switch_denials_total(), 1);
        assert_eq!(m.scanner_hits(), 0);
        let text = m.encode();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "# TYPE pipelock_requests_blocked counter",
            "pipelock_requests_blocked_total 1",
            "pipelock_request_bytes_scanned_total 1234",
            "pipelock_scanned_exchanges_total 0",
            "pipelock_requests_total{result=\"allowed\"} 1",
            "pipelock_scanner_hits_total{scanner=\"dlp.github_token\"} 1",
            "pipelock_tls_intercept_total{outcome=\"success\"} 1",
            "pipelock_kill_switch_denials_total{transport=\"transparent\",endpoint=\"http\"} 1",
            "pipelock_kill_switch_active{source=\"signal\"} 1",
            "pipelock_kill_switch_active{source=\"api\"} 0",
            "pipelock_redirected_connections_total{cgroup_id=\"42\"} 1",
            "pipelock_request_duration_seconds_count 1",
            "pipelock_info{version=\"0.1.0\"} 1",
            "# EOF",
        ] {
            assert!(lines.contains(&want), "no {want:?} in\n{text}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("# HELP pipelock_scan_errors ")),
            "{text}"
        );
        let prom = m.encode_prometheus();
        assert!(
            prom.contains("# TYPE pipelock_requests_total counter\n"),
            "{prom}"
        );
        assert!(!prom.contains("# EOF"), "{prom}");
    }

    #[test]
    fn cgroup_series_are_capped() {
        let m = Metrics::new();
        for id in 1..=(MAX_CGROUP_SERIES as u64 + 10) {
            m.redirected_from(id);
        }
        m.redirected_from(1);
        let series = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("pipelock_redirected_connections_total{"))
            .count();
        assert_eq!(series, MAX_CGROUP_SERIES + 1);
        assert_eq!(
            m.redirected
                .get(&CgroupLabel { cgroup_id: 0 })
                .unwrap()
                .get(),
            10
        );
        assert_eq!(
            m.redirected
                .get(&CgroupLabel { cgroup_id: 1 })
                .unwrap()
                .get(),
            2
        );
    }
}
