//! The agent's metrics: one registry ([`Metrics`], on `prometheus-client`)
//! holding every counter under its `pipelock_` name, shared by whatever
//! counts (the scan pipeline) and encoded by the `/metrics` endpoint. A
//! pipeline rebuilt on a config reload is handed the same `Arc<Metrics>`, so
//! counters never go back to zero while the process lives.
use prometheus_client::{encoding::text, metrics::counter::Counter, registry::Registry};

/// Declares the counters once: the fields, their registration (name without
/// the `pipelock_` prefix and the `_total` suffix the encoder adds) and a
/// `u64` reader per counter.
macro_rules! counters {
    ($($field:ident => $name:literal, $help:literal;)*) => {
        /// Every counter of the agent (monotonic, process lifetime).
        /// Count with `metrics.<name>.inc()`; read with `metrics.<name>()`.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            $(#[doc = $help] pub $field: Counter,)*
        }

        impl Metrics {
            /// A registry with every counter at zero.
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("pipelock");
                $(
                    let $field = Counter::default();
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field,)* }
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
    scanner_hits => "scanner_hits", "Findings of any rule (after home-host exemptions and de-duplication).";
    dlp_hits => "dlp_hits", "Findings of DLP rules.";
    injection_hits => "injection_hits", "Findings of prompt-injection rules.";
    findings_blocked => "findings_blocked", "Findings whose action was block.";
    findings_warned => "findings_warned", "Findings whose action was warn.";
    findings_logged => "findings_logged", "Findings whose action was log.";
    requests_blocked => "requests_blocked", "Requests refused with a block.";
    responses_cut => "responses_cut", "Responses blocked or cut mid-stream.";
    decompression_bombs => "decompression_bombs", "Bodies whose decoding hit the size or ratio limit.";
    scan_errors => "scan_errors", "Internal scan errors (the exchange fails closed).";
    request_bytes_scanned => "request_bytes_scanned", "Request body bytes scanned (as sent, before decoding).";
    response_bytes_scanned => "response_bytes_scanned", "Response body bytes scanned (as received, before decoding).";
    exchanges => "scanned_exchanges", "HTTP exchanges passed through the scan pipeline.";
    connections_refused => "connections_refused", "Redirected connections reset because a connection limit was reached.";
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

    /// Every metric in the OpenMetrics text exposition format (the
    /// Prometheus text format with `# EOF`), for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
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
        assert_eq!(m.requests_blocked(), 1);
        assert_eq!(m.request_bytes_scanned(), 1234);
        assert_eq!(m.scanner_hits(), 0);
        let text = m.encode();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "# TYPE pipelock_requests_blocked counter",
            "pipelock_requests_blocked_total 1",
            "pipelock_request_bytes_scanned_total 1234",
            "pipelock_scanner_hits_total 0",
            "pipelock_scanned_exchanges_total 0",
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
    }
}
