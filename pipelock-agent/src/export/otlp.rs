//! The OTLP sink: each event as one OpenTelemetry log record (severity
//! from the event, body the summary, the event's fields as attributes,
//! resource `service.name=pipelock-agent` and `service.instance.id`),
//! exported over HTTP/protobuf to `<endpoint>/v1/logs` by
//! `opentelemetry-otlp`'s exporter, through the agent's own HTTP client
//! (marked connections, the agent's trust store). Events are taken from
//! the sink's bounded queue in batches of up to [`MAX_BATCH`]; an export
//! that fails (after the exporter's own retries) counts its events failed.
use std::{collections::HashMap, sync::Arc, time::Duration};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_otlp::{
    Compression, LogExporter, RetryPolicy, WithExportConfig as _, WithHttpConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLoggerProvider},
};
use tokio::sync::mpsc;

use super::{Error, Event, Outcome, Recorder, http::Client};
use crate::config::emit::{EventSeverity, Otlp};

/// Events per export request, at most.
pub const MAX_BATCH: usize = 64;

/// The exporter and what it needs to make records, built at start so a
/// bad endpoint is a start-up error.
pub struct Sink {
    exporter: LogExporter,
    provider: SdkLoggerProvider,
    scope: InstrumentationScope,
}

impl Sink {
    pub fn new(cfg: &Otlp, client: Client, instance: &str) -> Result<Sink, Error> {
        let mut builder = LogExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(cfg.logs_url())
            .with_timeout(Duration::from_secs(cfg.timeout_seconds.max(1)))
            .with_headers(
                cfg.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            )
            .with_retry_policy(
                RetryPolicy::recommended()
                    .with_max_retries(2)
                    .with_initial_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2)),
            );
        if cfg.gzip {
            builder = builder.with_compression(Compression::Gzip);
        }
        let mut exporter = builder.build().map_err(|e| Error::Otlp(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name("pipelock-agent")
            .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        opentelemetry_sdk::logs::LogExporter::set_resource(&mut exporter, &resource);
        // Only a record factory: records go to the exporter directly, so the
        // provider has no processor (and no thread of its own).
        let provider = SdkLoggerProvider::builder().with_resource(resource).build();
        let scope = InstrumentationScope::builder("pipelock-agent")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Sink {
            exporter,
            provider,
            scope,
        })
    }

    fn record(&self, ev: &Event) -> SdkLogRecord {
        let mut r = self.provider.logger("pipelock-agent").create_log_record();
        let (number, text) = match ev.severity {
            EventSeverity::Critical => (Severity::Error, "critical"),
            EventSeverity::Warn => (Severity::Warn, "warn"),
            EventSeverity::Info => (Severity::Info, "info"),
        };
        r.set_severity_number(number);
        r.set_severity_text(text);
        r.set_event_name(if ev.kind == "block" {
            "pipelock.block"
        } else {
            "pipelock.finding"
        });
        let t = std::time::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(ev.time_unix_nanos).unwrap_or(0));
        r.set_timestamp(t);
        r.set_observed_timestamp(std::time::SystemTime::now());
        r.set_body(AnyValue::String(ev.summary().into()));
        if let Some(map) = serde_json::to_value(ev)
            .ok()
            .as_ref()
            .and_then(|v| v.as_object())
        {
            for (k, v) in map {
                let v: AnyValue = match v {
                    serde_json::Value::String(s) => AnyValue::String(s.clone().into()),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => AnyValue::Int(i),
                        None => AnyValue::String(n.to_string().into()),
                    },
                    other => AnyValue::String(other.to_string().into()),
                };
                r.add_attribute(format!("pipelock.{k}"), v);
            }
        }
        r
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Arc<Event>>, rec: Recorder) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let records: Vec<SdkLogRecord> = batch.iter().map(|e| self.record(e)).collect();
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                records.iter().map(|r| (r, &self.scope)).collect();
            let result = self.exporter.export(LogBatch::new(&refs)).await;
            let outcome = match result {
                Ok(()) => Outcome::Sent,
                Err(e) => {
                    tracing::warn!(target: "pipelock::export", sink = "otlp", events = batch.len(), error = %e, "OTLP export failed");
                    Outcome::Failed
                }
            };
            for _ in 0..batch.len() {
                rec.count(outcome);
            }
            batch.clear();
        }
    }
}
