//! One exported event: a finding (with the action it got, so a block is
//! an event whose action is `block`), the exchange and the connection it
//! came from, and the agent that saw it. The same JSON object goes to the
//! webhook, into the syslog message and into the OTLP log body.
use serde::Serialize;

use crate::{
    config::{Mode, emit::EventSeverity},
    pipeline::{
        ConnMeta,
        findings::{ExchangeInfo, Finding},
        verdict::Action,
    },
    scan::engine::patterns::Severity,
};

/// A finding as sinks receive it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// `block` when the finding blocked the exchange, else `finding`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339, UTC.
    pub time: String,
    /// Unix time in nanoseconds (OTLP's timestamp).
    #[serde(skip)]
    pub time_unix_nanos: u128,
    pub instance_id: String,
    pub severity: EventSeverity,
    pub rule_id: String,
    pub rule_name: String,
    pub class: &'static str,
    pub rule_severity: &'static str,
    pub confidence: &'static str,
    pub direction: &'static str,
    pub location: String,
    /// Redacted excerpt (never the secret).
    pub excerpt: String,
    pub action: &'static str,
    pub mode: &'static str,
    pub host: String,
    pub method: String,
    pub path: String,
    pub listener: &'static str,
    pub conn_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The event severity of a finding: critical for a block or a critical
/// rule, warn for a warning or a high or medium rule, info otherwise.
pub fn severity_of(f: &Finding) -> EventSeverity {
    match (f.action, f.severity) {
        (Action::Block, _) | (_, Severity::Critical) => EventSeverity::Critical,
        (Action::Warn, _) | (_, Severity::High | Severity::Medium) => EventSeverity::Warn,
        _ => EventSeverity::Info,
    }
}

impl Event {
    pub fn new(
        instance_id: &str,
        f: &Finding,
        mode: Mode,
        info: &ExchangeInfo,
        conn: &ConnMeta,
    ) -> Event {
        let now = time::OffsetDateTime::now_utc();
        let attr = conn.attribution.as_ref();
        let pod = attr.and_then(|a| a.pod.as_deref());
        Event {
            kind: if f.action == Action::Block {
                "block"
            } else {
                "finding"
            },
            time: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            time_unix_nanos: u128::try_from(now.unix_timestamp_nanos()).unwrap_or(0),
            instance_id: instance_id.to_owned(),
            severity: severity_of(f),
            rule_id: f.rule_id.clone(),
            rule_name: f.rule_name.clone(),
            class: f.class.as_str(),
            rule_severity: f.severity.as_str(),
            confidence: f.confidence.as_str(),
            direction: f.direction.as_str(),
            location: f.location.clone(),
            excerpt: f.excerpt.clone(),
            action: f.action.as_str(),
            mode: mode.as_str(),
            host: info.host.clone(),
            method: info.method.clone(),
            path: info.path.clone(),
            listener: conn.listener.as_str(),
            conn_id: conn.id,
            orig_dst: conn.orig_dst.map(|a| a.to_string()),
            pid: attr.map(|a| a.tgid),
            comm: attr.map(|a| a.comm.clone()),
            cgroup_id: attr.map(|a| a.cgroup_id),
            namespace: pod.map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.pod.clone()),
            container: pod.map(|p| p.container.clone()).filter(|c| !c.is_empty()),
        }
    }

    /// The one-line summary syslog and OTLP carry besides the fields.
    pub fn summary(&self) -> String {
        format!(
            "pipelock {} {} {} {} {}{}",
            self.kind, self.action, self.rule_id, self.direction, self.host, self.path
        )
    }
}
