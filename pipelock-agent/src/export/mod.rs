//! Event export: findings and blocks sent to a webhook, syslog and an OTLP
//! logs endpoint (Pipelock's `emit:` section), each optional. The findings
//! log (`pipeline::findings`) hands every finding to [`Exporter::emit`],
//! which never waits: each sink has a bounded queue drained by a task of
//! its own, and an event its queue cannot take is dropped. Every event is
//! counted in `pipelock_export_events_total{sink,result}` as `sent`,
//! `failed` (the sink refused it or stayed unreachable) or `dropped`
//! (queue full), so a slow or dead sink shows in the metrics and never in
//! the traffic.
mod event;
mod http;
mod otlp;
mod syslog;
mod webhook;

use std::{sync::Arc, time::Duration};

use rustls::ClientConfig;
use tokio::sync::mpsc;

pub use event::{Event, severity_of};
pub use syslog::format as syslog_format;

use crate::{
    config::{
        Mode,
        emit::{Emit, EventSeverity},
    },
    pipeline::{
        ConnMeta,
        findings::{ExchangeInfo, Finding},
    },
    telemetry::metrics::Metrics,
};

/// Queue of the syslog sink (Pipelock has no key for it).
pub const SYSLOG_QUEUE: usize = 256;

/// Errors of the export subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("emit.otlp: {0}")]
    Otlp(String),
}

/// What became of one event at one sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Failed,
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Counts one sink's outcomes.
#[derive(Clone)]
pub struct Recorder {
    sink: &'static str,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn count(&self, outcome: Outcome) {
        self.metrics.export_event(self.sink, outcome.as_str());
    }
}

struct Sink {
    name: &'static str,
    min: EventSeverity,
    tx: mpsc::Sender<Arc<Event>>,
    rec: Recorder,
}

/// The process's exporter (built once at start; `emit` is start-only).
pub struct Exporter {
    instance_id: String,
    sinks: Vec<Sink>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::disabled()
    }
}

impl Exporter {
    /// No sink: `emit` does nothing.
    pub fn disabled() -> Exporter {
        Exporter {
            instance_id: String::new(),
            sinks: Vec::new(),
        }
    }

    /// Starts a task per configured sink (inside a tokio runtime). `tls` is
    /// the client config for https sinks (the agent's upstream trust store).
    pub fn start(
        cfg: &Emit,
        tls: Option<Arc<ClientConfig>>,
        metrics: Arc<Metrics>,
    ) -> Result<Exporter, Error> {
        let instance_id = cfg.instance_id.clone().unwrap_or_else(hostname);
        let mut sinks = Vec::new();
        let mut sink = |name: &'static str, min: EventSeverity, queue: usize| {
            let (tx, rx) = mpsc::channel(queue.max(1));
            let rec = Recorder {
                sink: name,
                metrics: metrics.clone(),
            };
            // Every sink shows in the metrics from the start.
            for o in [Outcome::Sent, Outcome::Failed, Outcome::Dropped] {
                metrics.export_event_series(name, o.as_str());
            }
            sinks.push(Sink {
                name,
                min,
                tx,
                rec: rec.clone(),
            });
            (rx, rec)
        };
        if let Some(w) = &cfg.webhook {
            let (rx, rec) = sink("webhook", w.min_severity, w.queue_size);
            let client =
                http::Client::new(tls.clone(), Duration::from_secs(w.timeout_seconds.max(1)));
            tokio::spawn(webhook::run(w.clone(), client, rx, rec));
        }
        if let Some(s) = &cfg.syslog {
            let (rx, rec) = sink("syslog", s.min_severity, SYSLOG_QUEUE);
            tokio::spawn(syslog::run(s.clone(), instance_id.clone(), rx, rec));
        }
        if let Some(o) = &cfg.otlp {
            let client =
                http::Client::new(tls.clone(), Duration::from_secs(o.timeout_seconds.max(1)));
            let otlp = otlp::Sink::new(o, client, &instance_id)?;
            let (rx, rec) = sink("otlp", o.min_severity, o.queue_size);
            tokio::spawn(otlp.run(rx, rec));
        }
        for s in &sinks {
            tracing::info!(target: "pipelock::export", sink = s.name, min_severity = s.min.as_str(), "event export on");
        }
        Ok(Exporter { instance_id, sinks })
    }

    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Queues the finding for every sink whose `min_severity` it reaches;
    /// never waits (a full queue drops the event, counted).
    pub fn emit(&self, f: &Finding, mode: Mode, info: &ExchangeInfo, conn: &ConnMeta) {
        if self.sinks.is_empty() {
            return;
        }
        let severity = severity_of(f);
        let mut event = None;
        for s in &self.sinks {
            if severity < s.min {
                continue;
            }
            let ev = event
                .get_or_insert_with(|| Arc::new(Event::new(&self.instance_id, f, mode, info, conn)))
                .clone();
            if s.tx.try_send(ev).is_err() {
                s.rec.count(Outcome::Dropped);
            }
        }
    }
}

/// The host name (the node's, with hostNetwork), else "unknown".
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        pipeline::{Attribution, Listener, findings::Direction, verdict::Action},
        scan::engine::patterns::{Confidence, RuleClass, Severity},
    };

    fn finding(action: Action, severity: Severity) -> Finding {
        Finding {
            rule_id: "dlp.github_token".into(),
            rule_name: "GitHub Token".into(),
            class: RuleClass::Dlp,
            severity,
            confidence: Confidence::High,
            direction: Direction::Request,
            location: "url".into(),
            excerpt: "ghp_[REDACTED 36 chars]".into(),
            action,
        }
    }

    fn conn() -> ConnMeta {
        ConnMeta {
            id: 7,
            listener: Listener::Transparent,
            peer: SocketAddr::from(([198, 18, 0, 2], 40000)),
            orig_dst: Some(SocketAddr::from(([198, 18, 0, 1], 443))),
            attribution: Some(Attribution {
                pid: 41,
                tgid: 40,
                comm: "ruby".into(),
                cgroup_id: 1234,
                pod: None,
            }),
            verified_name: None,
        }
    }

    #[test]
    fn severity_follows_action_then_rule() {
        assert_eq!(
            severity_of(&finding(Action::Block, Severity::Low)),
            EventSeverity::Critical
        );
        assert_eq!(
            severity_of(&finding(Action::Log, Severity::Critical)),
            EventSeverity::Critical
        );
        assert_eq!(
            severity_of(&finding(Action::Warn, Severity::Low)),
            EventSeverity::Warn
        );
        assert_eq!(
            severity_of(&finding(Action::Log, Severity::Medium)),
            EventSeverity::Warn
        );
        assert_eq!(
            severity_of(&finding(Action::Log, Severity::Low)),
            EventSeverity::Info
        );
    }

    #[test]
    fn syslog_message_is_rfc5424_with_the_fields_as_structured_data() {
        let info = ExchangeInfo {
            host: "api.openai.com".into(),
            method: "POST".into(),
            path: "/v1/chat \"x\"]".into(),
        };
        let ev = Event::new(
            "node-1",
            &finding(Action::Block, Severity::Critical),
            Mode::Strict,
            &info,
            &conn(),
        );
        let mut ctx = fasyslog::format::SyslogContext::default();
        ctx.facility(fasyslog::Facility::LOCAL0)
            .hostname("node-1")
            .appname("pipelock")
            .procid("99");
        let msg = syslog_format(&ctx, &ev);
        // <local0*8 + critical>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG
        let parts: Vec<&str> = msg.splitn(7, ' ').collect();
        assert_eq!(parts[0], "<130>1");
        assert!(parts[1].ends_with('Z') && parts[1].contains('T'), "{msg}");
        assert_eq!(&parts[2..6], ["node-1", "pipelock", "99", "block"]);
        assert!(parts[6].starts_with("[pipelock@32473 "), "{msg}");
        assert!(msg.contains("rule_id=\"dlp.github_token\""), "{msg}");
        assert!(
            msg.contains("comm=\"ruby\"") && msg.contains("cgroup_id=\"1234\""),
            "{msg}"
        );
        // PARAM-VALUE escapes `"`, `\` and `]` (RFC 5424 §6.3.3).
        assert!(msg.contains(r#"path="/v1/chat \"x\"\]""#), "{msg}");
        assert!(
            msg.ends_with(
                "pipelock block block dlp.github_token request api.openai.com/v1/chat \"x\"]"
            ),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = Arc::new(Metrics::new());
        // A webhook at a port nothing listens on, a queue of one.
        let cfg: Emit = serde_yaml::from_str(
            "webhook:\n  url: http://127.0.0.1:9/x\n  queue_size: 1\n  min_severity: critical\n",
        )
        .unwrap();
        let ex = Exporter::start(&cfg, None, metrics.clone()).unwrap();
        let info = ExchangeInfo::default();
        let started = std::time::Instant::now();
        for _ in 0..50 {
            ex.emit(
                &finding(Action::Block, Severity::High),
                Mode::Strict,
                &info,
                &conn(),
            );
        }
        // Below min_severity: not queued, not counted.
        ex.emit(
            &finding(Action::Log, Severity::Low),
            Mode::Audit,
            &info,
            &conn(),
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // The first is taken by the sender (or waits in the queue) and at
        // most one waits in the queue: the other 48 or 49 are dropped.
        let dropped = metrics.export_events_count("webhook", "dropped");
        assert!((48..=49).contains(&dropped), "dropped {dropped}");
    }
}
