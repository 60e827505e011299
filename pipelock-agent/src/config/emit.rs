//! Pipelock's `emit:` section: where findings and block events are sent
//! besides the findings log (a webhook, syslog, an OTLP logs endpoint),
//! each optional, each with the lowest event severity it receives. Read
//! at start only (`crate::export` owns the senders).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Event severity, as Pipelock's `emit` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSeverity {
    Info,
    Warn,
    Critical,
}

impl EventSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSeverity::Info => "info",
            EventSeverity::Warn => "warn",
            EventSeverity::Critical => "critical",
        }
    }
}

/// `emit:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Emit {
    /// Names this agent in every event (unset: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<Syslog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<Otlp>,
}

/// `emit.webhook`: one JSON POST per event.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    #[serde(default = "warn")]
    pub min_severity: EventSeverity,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default = "five")]
    pub timeout_seconds: u64,
    /// Events waiting to be sent, at most; more are dropped (counted).
    #[serde(default = "webhook_queue")]
    pub queue_size: usize,
}

/// `emit.syslog`: RFC 5424 messages.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Syslog {
    /// `udp://host:port`, `tcp://host:port`, or `host:port` (UDP).
    pub address: String,
    #[serde(default = "warn")]
    pub min_severity: EventSeverity,
    /// `kern` … `local7`.
    #[serde(default = "local0")]
    pub facility: String,
    /// APP-NAME of the messages.
    #[serde(default = "pipelock")]
    pub tag: String,
}

/// `emit.otlp`: OTLP logs over HTTP/protobuf.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// Collector base URL; `/v1/logs` is appended unless the path ends with it.
    pub endpoint: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "ten")]
    pub timeout_seconds: u64,
    #[serde(default = "warn")]
    pub min_severity: EventSeverity,
    #[serde(default = "otlp_queue")]
    pub queue_size: usize,
    #[serde(default)]
    pub gzip: bool,
}

fn warn() -> EventSeverity {
    EventSeverity::Warn
}
fn five() -> u64 {
    5
}
fn ten() -> u64 {
    10
}
fn webhook_queue() -> usize {
    64
}
fn otlp_queue() -> usize {
    256
}
fn local0() -> String {
    "local0".to_owned()
}
fn pipelock() -> String {
    "pipelock".to_owned()
}

/// How syslog messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogTransport {
    Udp,
    /// RFC 6587 octet counting (`LEN SP MSG`).
    Tcp,
}

impl Syslog {
    /// The transport and `host:port` of `address`.
    pub fn target(&self) -> Result<(SyslogTransport, String), String> {
        let (transport, rest) = match self.address.split_once("://") {
            Some(("udp", rest)) => (SyslogTransport::Udp, rest),
            Some(("tcp", rest)) => (SyslogTransport::Tcp, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown scheme {scheme:?}: expected udp:// or tcp://"
                ));
            }
            None => (SyslogTransport::Udp, self.address.as_str()),
        };
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok((transport, rest.to_owned()))
            }
            _ => Err(format!("{:?} is not host:port", self.address)),
        }
    }

    /// The facility named by `facility`.
    pub fn facility(&self) -> Result<fasyslog::Facility, String> {
        fasyslog::Facility::try_from(self.facility.to_ascii_uppercase().as_str()).map_err(|_| {
            format!(
                "unknown facility {:?}: expected kern … local7",
                self.facility
            )
        })
    }
}

impl Otlp {
    /// The logs URL: `endpoint`, with `/v1/logs` appended unless present.
    pub fn logs_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/logs") {
            base.to_owned()
        } else {
            format!("{base}/v1/logs")
        }
    }
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(format!("{url:?} must be an http:// or https:// URL")),
    }
}

impl Emit {
    /// Checks what types alone cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(w) = &self.webhook {
            check_url(&w.url).map_err(|m| ("emit.webhook.url", m))?;
            if w.queue_size == 0 {
                return Err(("emit.webhook.queue_size", "must be at least 1".into()));
            }
        }
        if let Some(s) = &self.syslog {
            s.target().map_err(|m| ("emit.syslog.address", m))?;
            s.facility().map_err(|m| ("emit.syslog.facility", m))?;
        }
        if let Some(o) = &self.otlp {
            check_url(&o.endpoint).map_err(|m| ("emit.otlp.endpoint", m))?;
            if o.queue_size == 0 {
                return Err(("emit.otlp.queue_size", "must be at least 1".into()));
            }
        }
        Ok(())
    }
}
