//! The findings log and scan counters: one JSON line per finding (tracing
//! target `pipelock::finding`) with rule, severity, confidence, direction,
//! host, method, path, a redacted excerpt, the action taken and the
//! attribution of the connection; how a finding is counted in the
//! metrics (`crate::telemetry::metrics`); and its hand-off to the event
//! export (`crate::export`). [`report_finding`] does all three.
use serde::Serialize;

use crate::{
    config::Mode,
    export::Exporter,
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
    /// `Response` when `response`, else `Request`.
    pub fn of(response: bool) -> Self {
        if response {
            Direction::Response
        } else {
            Direction::Request
        }
    }

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
    /// Path without the query string (queries can hold secrets), with
    /// credential-like segments redacted ([`redact_path`]).
    pub path: String,
}

/// A URL path as log lines show it: a segment that may be a credential (16
/// or more characters mixing letters and digits, or any of 32 or more) keeps
/// its first 4 characters, the rest replaced by its length, the way
/// excerpts are redacted. `/v1/chat/completions` stays as it is.
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let n = seg.chars().count();
            let mixed = seg.chars().any(|c| c.is_ascii_digit())
                && seg.chars().any(|c| c.is_ascii_alphabetic());
            if n >= 32 || (n >= 16 && mixed) {
                let head: String = seg.chars().take(4).collect();
                format!("{head}[REDACTED {} chars]", n - 4)
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Logs, counts and exports one finding: the one place findings leave the pipeline.
pub fn report_finding(
    f: &Finding,
    mode: Mode,
    info: &ExchangeInfo,
    conn: &ConnMeta,
    metrics: &Metrics,
    exporter: &Exporter,
) {
    log_finding(f, mode, info, conn);
    f.count(metrics);
    exporter.emit(f, mode, info, conn);
}

/// Writes one finding as one log line (JSON when `--log-format json`).
pub fn log_finding(f: &Finding, mode: Mode, info: &ExchangeInfo, conn: &ConnMeta) {
    let attr = conn.attribution.as_ref();
    let pid = attr.map(|a| a.tgid);
    let comm = attr.map(|a| a.comm.as_str());
    let cgroup_id = attr.map(|a| a.cgroup_id);
    let pod = attr.and_then(|a| a.pod.as_deref());
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
                listener = conn.listener.as_str(),
                orig_dst = orig_dst.as_deref(),
                pid = pid,
                comm = comm,
                cgroup_id = cgroup_id,
                namespace = pod.map(|p| p.namespace.as_str()),
                pod = pod.map(|p| p.pod.as_str()),
                container = pod.map(|p| p.container.as_str()).filter(|c| !c.is_empty()),
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
        m.scanner_hit(self.rule_id.clone().into());
        match self.class {
            RuleClass::Dlp => m.dlp_hits.inc(),
            RuleClass::Injection => m.injection_hits.inc(),
            RuleClass::Scanner | RuleClass::Destination | RuleClass::Mcp => 0,
        };
        match self.action {
            Action::Block => m.findings_blocked.inc(),
            Action::Warn => m.findings_warned.inc(),
            Action::Log => m.findings_logged.inc(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::redact_path;

    #[test]
    fn credential_like_path_segments_are_redacted() {
        assert_eq!(redact_path("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(
            redact_path("/hook/ghp_Zq3xT7vLmN4pR8sK2wYbC6dF0hJ9gA1eUoVi/x"),
            "/hook/ghp_[REDACTED 36 chars]/x"
        );
        assert_eq!(redact_path("/users/2024-03-01"), "/users/2024-03-01");
        assert_eq!(
            redact_path(&format!("/{}", "a".repeat(40))),
            "/aaaa[REDACTED 36 chars]"
        );
    }
}
