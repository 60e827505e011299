//! Which of Pipelock's keys the agent accepts without acting on them yet,
//! and the few it reads differently. A file that sets such a key loads, and
//! the agent says so once at start, with the line; nothing is ignored in
//! silence. A key is reported only when the file sets it and its value asks
//! for something the agent does not do (`forward_proxy.enabled: false` is
//! not news, `true` is).
use super::{Config, lines::KeyLines};

/// One start-up notice about a key in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Key path, e.g. `forward_proxy.enabled`.
    pub path: String,
    /// 1-based line in the file.
    pub line: usize,
    /// What the agent does about it.
    pub note: String,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (line {}): {}", self.path, self.line, self.note)
    }
}

const LATER: &str = "accepted, not implemented yet";

/// A key and the condition under which its value asks for more than the agent does.
struct Rule {
    path: &'static str,
    applies: fn(&Config) -> bool,
    note: &'static str,
}

macro_rules! rule {
    ($path:literal, |$c:ident| $cond:expr, $note:expr) => {
        Rule {
            path: $path,
            applies: |$c: &Config| $cond,
            note: $note,
        }
    };
}

const RULES: &[Rule] = &[
    rule!("explain_blocks", |c| c.explain_blocks == Some(true), LATER),
    rule!("api_allowlist", |c| c.api_allowlist.is_some(), LATER),
    rule!("suppress", |c| !c.suppress.is_empty(), LATER),
    rule!(
        "forward_proxy.redirect_websocket_hosts",
        |c| !c.forward_proxy.redirect_websocket_hosts.is_empty(),
        LATER
    ),
    rule!(
        "websocket_proxy.enabled",
        |c| !c.websocket_proxy.enabled,
        "WebSocket upgrades the interceptor sees are always relayed message by message and scanned"
    ),
    rule!(
        "websocket_proxy.scan_text_frames",
        |c| !c.websocket_proxy.scan_text_frames,
        "text messages are always scanned"
    ),
    rule!(
        "websocket_proxy.strip_compression",
        |c| !c.websocket_proxy.strip_compression,
        "Sec-WebSocket-Extensions is always removed: permessage-deflate cannot be decoded for scanning"
    ),
    rule!(
        "websocket_proxy.forward_cookies",
        |c| !c.websocket_proxy.forward_cookies,
        "not applied: the upgrade request keeps its cookies (scanned like any request header)"
    ),
    rule!(
        "websocket_proxy.origin_policy",
        |c| c.websocket_proxy.origin_policy != super::pipelock::OriginPolicy::Forward,
        "accepted, not implemented yet: Origin is forwarded as sent"
    ),
    rule!(
        "websocket_proxy.content_entropy_enabled",
        |c| c.websocket_proxy.content_entropy_enabled,
        LATER
    ),
    rule!(
        "dlp.scan_env",
        |c| c.dlp.scan_env,
        "not applied: the agent's own environment is not the app's; list the app's secrets in interceptor.known_secret_env / known_secret_files"
    ),
    rule!(
        "dlp.include_defaults",
        |c| !c.dlp.include_defaults,
        "accepted, not implemented yet: the built-in DLP rules stay on"
    ),
    rule!(
        "dlp.patterns",
        |c| c.dlp.patterns.iter().any(|p| p.validator.is_some()),
        "custom patterns are scanned; their `validator` is not applied yet"
    ),
    rule!("canary_tokens.enabled", |c| c.canary_tokens.enabled, LATER),
    rule!(
        "response_scanning.action",
        |c| c.response_scanning.action != super::pipelock::ResponseAction::Block,
        "enforcement follows `mode` (strict blocks every finding, balanced blocks high-confidence ones, audit logs); `warn`/`strip`/`ask` do not lower it (use mode: audit to only log); `block` makes balanced block response findings whatever their confidence"
    ),
    rule!(
        "response_scanning.include_defaults",
        |c| !c.response_scanning.include_defaults,
        "accepted, not implemented yet: the built-in injection rules stay on"
    ),
    rule!(
        "response_scanning.patterns",
        |c| !c.response_scanning.patterns.is_empty(),
        LATER
    ),
    rule!(
        "response_scanning.exempt_domains",
        |c| !c.response_scanning.exempt_domains.is_empty(),
        LATER
    ),
    rule!(
        "response_scanning.sse_streaming.enabled",
        |c| !c.response_scanning.sse_streaming.enabled,
        "accepted, not implemented yet: SSE events are always reassembled and scanned"
    ),
    rule!(
        "response_scanning.sse_streaming.action",
        |_c| true,
        "enforcement follows `mode`"
    ),
    rule!(
        "request_body_scanning.action",
        |c| c.request_body_scanning.action == super::pipelock::WarnBlock::Warn,
        "enforcement follows `mode` (strict blocks every finding, balanced blocks high-confidence ones, audit logs); `warn` does not lower it (use mode: audit to only log); `block` makes balanced block request findings whatever their confidence"
    ),
    rule!(
        "request_body_scanning.header_mode",
        |c| c.request_body_scanning.header_mode == super::pipelock::HeaderMode::Sensitive,
        "every request header is scanned (a superset of `sensitive`)"
    ),
    rule!(
        "request_body_scanning.content_entropy_enabled",
        |c| c.request_body_scanning.content_entropy_enabled,
        LATER
    ),
    rule!(
        "mcp_tool_policy.quarantine_dir",
        |c| c.mcp_tool_policy.quarantine_dir.is_some(),
        LATER
    ),
    rule!(
        "logging.output",
        |c| c.logging.output != super::pipelock::LogOutput::Stdout && c.logging.file.is_none(),
        "needs logging.file; logs go to stdout"
    ),
    rule!(
        "logging.include_blocked",
        |c| !c.logging.include_blocked,
        "blocks are always logged"
    ),
    rule!(
        "tls_interception.enabled",
        |c| c.tls_interception.enabled,
        "redirected TLS is always intercepted; CONNECT tunnels come with the :8888 listener"
    ),
    rule!("tls_interception.max_response_bytes", |_c| true, LATER),
    rule!(
        "health_watchdog.enabled",
        |c| c.health_watchdog.enabled,
        LATER
    ),
    rule!(
        "flight_recorder.enabled",
        |c| c.flight_recorder.enabled,
        LATER
    ),
    rule!(
        "session_profiling.enabled",
        |c| c.session_profiling.enabled,
        LATER
    ),
    rule!(
        "seed_phrase_detection.enabled",
        |c| !c.seed_phrase_detection.enabled,
        "accepted, not implemented yet: seed phrases are always detected"
    ),
    rule!(
        "seed_phrase_detection.min_words",
        |c| c.seed_phrase_detection.min_words != 12,
        "accepted, not implemented yet: 12 or more words"
    ),
    rule!(
        "seed_phrase_detection.verify_checksum",
        |c| !c.seed_phrase_detection.verify_checksum,
        "accepted, not implemented yet: the checksum is always verified"
    ),
    rule!("reverse_proxy.enabled", |c| c.reverse_proxy.enabled, LATER),
];

/// Documented Pipelock sections kept as raw YAML (contents not checked).
pub const OPAQUE_SECTIONS: &[&str] = &[
    "fetch_proxy",
    "mcp_ws_listener",
    "adaptive_enforcement",
    "cross_request_detection",
    "scan_api",
    "address_protection",
    "git_protection",
    "internal",
    "ssrf",
    "a2a_scanning",
    "taint",
    "request_policy",
    "sentry",
    "rules",
    "file_sentry",
    "sandbox",
    "mcp_binary_integrity",
    "mcp_tool_provenance",
    "behavioral_baseline",
    "airlock",
    "browser_shield",
    "media_policy",
    "mediation_envelope",
    "redaction",
    "agents",
    "default_agent_identity",
];

/// The notices for a loaded file, in line order.
pub fn notices(cfg: &Config, lines: &KeyLines) -> Vec<Notice> {
    let mut out: Vec<Notice> = RULES
        .iter()
        .filter(|r| (r.applies)(cfg))
        .filter_map(|r| {
            lines.line(r.path).map(|line| Notice {
                path: r.path.to_owned(),
                line,
                note: r.note.to_owned(),
            })
        })
        .collect();
    for section in OPAQUE_SECTIONS {
        if let Some(line) = lines.line(section) {
            out.push(Notice {
                path: (*section).to_owned(),
                line,
                note: "accepted, not implemented; its contents are not checked".to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.line.cmp(&b.line).then_with(|| a.path.cmp(&b.path)));
    out
}
