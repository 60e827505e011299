//! The findings log and scan counters: one JSON line per finding (tracing
//! target `pipelock::finding`) with rule, severity, confidence, direction,
//! host, method, path, a redacted excerpt, the action taken and the
//! attribution of the connection; and how a finding is counted in the
//! metrics (`crate::telemetry::metrics`).
use serde::Serialize;

use crate::{
    config::Mode,
    pipeline::{ConnMeta, verdict::Action},
    scan::engine::patterns::{Confidence, RuleClass, Severity},
    telemetry::metrics::Metrics,
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

impl Finding {
    /// Counts the finding and the action it got.
    pub fn count(&self, m: &Metrics) {
        m.scanner_hits.inc();
        match self.class {
            RuleClass::Dlp => m.dlp_hits.inc(),
            RuleClass::Injection => m.injection_hits.inc(),
            RuleClass::Scanner => 0,
        };
        match self.action {
            Action::Block => m.findings_blocked.inc(),
            Action::Warn => m.findings_warned.inc(),
            Action::Log => m.findings_logged.inc(),
        };
    }
}
