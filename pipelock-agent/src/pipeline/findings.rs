//! The findings log and scan counters: one JSON line per finding (tracing
//! target `pipelock::finding`) with rule, severity, confidence, direction,
//! host, method, path, a redacted excerpt, the action taken and the
//! attribution of the connection; and [`ScanMetrics`], atomics exported
//! later under `pipelock_` names.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::{
    config::Mode,
    pipeline::{ConnMeta, verdict::Action},
    scan::engine::patterns::{Confidence, RuleClass, Severity},
};

/// Which way the data was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// A finding after policy, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub rule_id: String,
    pub rule_name: String,
    pub class: RuleClass,
    pub severity: Severity,
    pub confidence: Confidence,
    pub direction: Direction,
    /// `url`, `header:<name>`, `request_body`, `response_body+base64`, `sse_content`, …
    pub location: String,
    /// Redacted excerpt (never the secret).
    pub excerpt: String,
    pub action: Action,
}

/// Request context of an exchange, for log lines.
#[derive(Clone, Debug, Default)]
pub struct ExchangeInfo {
    pub host: String,
    pub method: String,
    /// Path without the query string (queries can hold secrets).
    pub path: String,
}

/// Writes one finding as one log line (JSON when `--log-format json`).
pub fn log_finding(f: &Finding, mode: Mode, info: &ExchangeInfo, conn: &ConnMeta) {
    let attr = conn.attribution.as_ref();
    let pid = attr.map(|a| a.tgid);
    let comm = attr.map(|a| a.comm.as_str());
    let cgroup_id = attr.map(|a| a.cgroup_id);
    let orig_dst = conn.orig_dst.map(|a| a.to_string());
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                target: "pipelock::finding",
                rule_id = %f.rule_id,
                rule_name = %f.rule_name,
                class = f.class.as_str(),
                severity = f.severity.as_str(),
                confidence = f.confidence.as_str(),
                direction = f.direction.as_str(),
                location = %f.location,
                excerpt = %f.excerpt,
                action = f.action.as_str(),
                mode = ?mode,
                host = %info.host,
                method = %info.method,
                path = %info.path,
                conn_id = conn.id,
                orig_dst = orig_dst.as_deref(),
                pid = pid,
                comm = comm,
                cgroup_id = cgroup_id,
                "finding"
            )
        };
    }
    match f.action {
        Action::Block | Action::Warn => emit!(warn),
        Action::Log => emit!(info),
    }
}

/// Scan counters (monotonic). Names follow the future `/metrics` export.
#[derive(Debug, Default)]
pub struct ScanMetrics {
    /// Findings of any rule (after home-host exemptions and de-duplication).
    pub scanner_hits: AtomicU64,
    pub dlp_hits: AtomicU64,
    pub injection_hits: AtomicU64,
    pub findings_blocked: AtomicU64,
    pub findings_warned: AtomicU64,
    pub findings_logged: AtomicU64,
    pub requests_blocked: AtomicU64,
    pub responses_cut: AtomicU64,
    pub decompression_bombs: AtomicU64,
    pub scan_errors: AtomicU64,
    pub request_bytes_scanned: AtomicU64,
    pub response_bytes_scanned: AtomicU64,
    pub exchanges: AtomicU64,
}

impl ScanMetrics {
    /// Counts a finding and the action it got.
    pub fn count_finding(&self, f: &Finding) {
        self.scanner_hits.fetch_add(1, Relaxed);
        match f.class {
            RuleClass::Dlp => self.dlp_hits.fetch_add(1, Relaxed),
            RuleClass::Injection => self.injection_hits.fetch_add(1, Relaxed),
            RuleClass::Scanner => 0,
        };
        match f.action {
            Action::Block => self.findings_blocked.fetch_add(1, Relaxed),
            Action::Warn => self.findings_warned.fetch_add(1, Relaxed),
            Action::Log => self.findings_logged.fetch_add(1, Relaxed),
        };
    }

    /// `(metric name, value)` pairs, for the `/metrics` exporter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "pipelock_scanner_hits_total",
                self.scanner_hits.load(Relaxed),
            ),
            ("pipelock_dlp_hits_total", self.dlp_hits.load(Relaxed)),
            (
                "pipelock_injection_hits_total",
                self.injection_hits.load(Relaxed),
            ),
            (
                "pipelock_findings_blocked_total",
                self.findings_blocked.load(Relaxed),
            ),
            (
                "pipelock_findings_warned_total",
                self.findings_warned.load(Relaxed),
            ),
            (
                "pipelock_findings_logged_total",
                self.findings_logged.load(Relaxed),
            ),
            (
                "pipelock_requests_blocked_total",
                self.requests_blocked.load(Relaxed),
            ),
            (
                "pipelock_responses_cut_total",
                self.responses_cut.load(Relaxed),
            ),
            (
                "pipelock_decompression_bombs_total",
                self.decompression_bombs.load(Relaxed),
            ),
            ("pipelock_scan_errors_total", self.scan_errors.load(Relaxed)),
            (
                "pipelock_request_bytes_scanned_total",
                self.request_bytes_scanned.load(Relaxed),
            ),
            (
                "pipelock_response_bytes_scanned_total",
                self.response_bytes_scanned.load(Relaxed),
            ),
            (
                "pipelock_scanned_exchanges_total",
                self.exchanges.load(Relaxed),
            ),
        ]
    }
}
