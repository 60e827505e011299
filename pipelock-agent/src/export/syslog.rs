//! The syslog sink: each event as one RFC 5424 message (formatted by
//! `fasyslog`: PRI from the facility and the event severity, APP-NAME the
//! tag, MSGID the event type, the fields as structured data
//! `[pipelock@32473 …]`, the summary as MSG), over UDP (one datagram each)
//! or TCP (RFC 6587 octet counting, reconnecting after an error). Runs as
//! one task draining the sink's bounded queue.
use std::{sync::Arc, time::Duration};

use fasyslog::{SDElement, Severity, format::SyslogContext};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpStream, UdpSocket},
    sync::mpsc,
};

use super::{Event, Outcome, Recorder};
use crate::config::emit::{EventSeverity, Syslog, SyslogTransport};

/// The SD-ID of the fields (private enterprise number of the example
/// range, as RFC 5424's own examples use).
const SD_ID: &str = "pipelock@32473";
/// Time to connect or write one message.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP datagram sent (RFC 5426: receivers must accept 480, should 2048).
const MAX_DATAGRAM: usize = 8192;

enum Conn {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
}

pub async fn run(cfg: Syslog, instance: String, mut rx: mpsc::Receiver<Arc<Event>>, rec: Recorder) {
    let (Ok((transport, addr)), Ok(facility)) = (cfg.target(), cfg.facility()) else {
        // Checked when the config loaded.
        return;
    };
    let mut ctx = SyslogContext::default();
    ctx.facility(facility)
        .hostname(instance)
        .appname(cfg.tag.clone())
        .procid(std::process::id().to_string());
    let mut conn = match transport {
        SyslogTransport::Tcp => Conn::Tcp(None),
        SyslogTransport::Udp => match udp(&addr).await {
            Ok(s) => Conn::Udp(s),
            Err(e) => {
                tracing::warn!(target: "pipelock::export", sink = "syslog", error = %e, "no UDP socket; syslog export off");
                return;
            }
        },
    };
    while let Some(ev) = rx.recv().await {
        let msg = format(&ctx, &ev);
        let ok = match &mut conn {
            Conn::Udp(s) => {
                let bytes = &msg.as_bytes()[..msg.len().min(MAX_DATAGRAM)];
                match s.send(bytes).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(target: "pipelock::export", sink = "syslog", error = %e, "syslog send failed");
                        false
                    }
                }
            }
            Conn::Tcp(stream) => send_tcp(stream, &addr, &msg).await,
        };
        rec.count(if ok { Outcome::Sent } else { Outcome::Failed });
    }
}

async fn udp(addr: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} has no address")))?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(target).await?;
    Ok(s)
}

/// One octet-counted frame on the open connection, opening it first if
/// needed; after a failure the connection is dropped and the next event
/// reconnects.
async fn send_tcp(stream: &mut Option<TcpStream>, addr: &str, msg: &str) -> bool {
    if stream.is_none() {
        let target = match tokio::net::lookup_host(addr).await.map(|mut a| a.next()) {
            Ok(Some(t)) => t,
            Ok(None) | Err(_) => {
                tracing::warn!(target: "pipelock::export", sink = "syslog", addr, "cannot resolve");
                return false;
            }
        };
        match crate::proxy::relay::connect_upstream(target, IO_TIMEOUT).await {
            Ok(s) => *stream = Some(s),
            Err(e) => {
                tracing::warn!(target: "pipelock::export", sink = "syslog", error = %e, "syslog connect failed");
                return false;
            }
        }
    }
    let Some(s) = stream.as_mut() else {
        return false;
    };
    let frame = format!("{} {msg}", msg.len());
    match tokio::time::timeout(IO_TIMEOUT, s.write_all(frame.as_bytes())).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(target: "pipelock::export", sink = "syslog", error = %e, "syslog write failed");
            *stream = None;
            false
        }
        Err(_) => {
            tracing::warn!(target: "pipelock::export", sink = "syslog", "syslog write timed out");
            *stream = None;
            false
        }
    }
}

fn severity(s: EventSeverity) -> Severity {
    match s {
        EventSeverity::Critical => Severity::CRITICAL,
        EventSeverity::Warn => Severity::WARNING,
        EventSeverity::Info => Severity::INFORMATIONAL,
    }
}

/// The RFC 5424 message of `ev`.
pub fn format(ctx: &SyslogContext, ev: &Event) -> String {
    let mut elements = Vec::new();
    if let Ok(mut sd) = SDElement::new(SD_ID) {
        let fields = serde_json::to_value(ev).unwrap_or_default();
        if let Some(map) = fields.as_object() {
            for (k, v) in map {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = sd.add_param(k.as_str(), v);
            }
        }
        elements.push(sd);
    }
    ctx.format_rfc5424(
        severity(ev.severity),
        Some(ev.kind),
        elements,
        Some(ev.summary()),
    )
    .to_string()
}
