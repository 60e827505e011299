//! Pipelock's own sections of `pipelock.yaml`, typed as Pipelock documents
//! them (defaults from its `defaults.go`), so the file Sure's chart renders
//! loads unchanged. Every struct rejects unknown keys. Which keys the agent
//! acts on, and which it accepts without acting on yet, is listed in
//! `super::support`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sections Pipelock documents whose contents the agent neither uses nor
/// checks: kept as raw YAML so that a file carrying them still loads.
pub type Opaque = Option<serde_yaml::Value>;

/// `forward_proxy`: the CONNECT / absolute-form listener (:8888).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardProxy {
    pub enabled: bool,
    pub max_tunnel_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub sni_verification: bool,
    pub redirect_websocket_hosts: Vec<String>,
}

impl Default for ForwardProxy {
    fn default() -> Self {
        ForwardProxy {
            enabled: false,
            max_tunnel_seconds: 300,
            idle_timeout_seconds: 120,
            sni_verification: true,
            redirect_websocket_hosts: Vec::new(),
        }
    }
}

/// Origin header handling of the WebSocket proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginPolicy {
    Rewrite,
    Forward,
    Strip,
}

/// `websocket_proxy`: frame-level scanning after an HTTP upgrade.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketProxy {
    pub enabled: bool,
    pub max_message_bytes: u64,
    pub max_concurrent_connections: u64,
    pub scan_text_frames: bool,
    pub allow_binary_frames: bool,
    pub forward_cookies: bool,
    pub strip_compression: bool,
    pub max_connection_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub origin_policy: OriginPolicy,
    pub content_entropy_enabled: bool,
    pub content_entropy_action: WarnBlock,
    pub content_entropy_threshold: f64,
    pub content_entropy_exclusions: Vec<String>,
}

impl Default for WebsocketProxy {
    fn default() -> Self {
        WebsocketProxy {
            enabled: false,
            max_message_bytes: 1 << 20,
            max_concurrent_connections: 128,
            scan_text_frames: true,
            allow_binary_frames: false,
            forward_cookies: false,
            strip_compression: true,
            max_connection_seconds: 3600,
            idle_timeout_seconds: 300,
            origin_policy: OriginPolicy::Rewrite,
            content_entropy_enabled: false,
            content_entropy_action: WarnBlock::Warn,
            content_entropy_threshold: 4.5,
            content_entropy_exclusions: Vec::new(),
        }
    }
}

/// An action that can only warn or block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WarnBlock {
    Warn,
    Block,
}

/// Validators a custom DLP pattern can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    Luhn,
    Mod97,
    Aba,
    Wif,
}

/// Severity of a custom pattern, as Pipelock spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternSeverity {
    Low,
    Medium,
    High,
    Critical,
}

/// A user DLP pattern (`dlp.patterns[]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlpPattern {
    pub name: String,
    pub regex: String,
    #[serde(default = "default_pattern_severity")]
    pub severity: PatternSeverity,
    #[serde(default)]
    pub validator: Option<Validator>,
    #[serde(default)]
    pub exempt_domains: Vec<String>,
    /// Pipelock allows only `warn` here.
    #[serde(default)]
    pub action: Option<OnlyWarn>,
}

fn default_pattern_severity() -> PatternSeverity {
    PatternSeverity::High
}

/// The one per-pattern action Pipelock accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnlyWarn {
    Warn,
}

/// `dlp`: secret and PII detection on what leaves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dlp {
    pub scan_env: bool,
    pub secrets_file: Option<String>,
    pub min_env_secret_length: usize,
    pub include_defaults: bool,
    pub patterns: Vec<DlpPattern>,
}

impl Default for Dlp {
    fn default() -> Self {
        Dlp {
            scan_env: true,
            secrets_file: None,
            min_env_secret_length: 16,
            include_defaults: true,
            patterns: Vec::new(),
        }
    }
}

/// `canary_tokens`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryTokens {
    pub enabled: bool,
    pub tokens: Vec<CanaryToken>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryToken {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub env_var: Option<String>,
}

/// Actions of the response scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseAction {
    Strip,
    Warn,
    Block,
    Ask,
}

/// A user response (prompt-injection) pattern.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsePattern {
    pub name: String,
    pub regex: String,
}

/// `response_scanning.sse_streaming`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseStreaming {
    pub enabled: bool,
    pub action: ResponseAction,
    pub max_event_bytes: usize,
}

impl Default for SseStreaming {
    fn default() -> Self {
        SseStreaming {
            enabled: true,
            action: ResponseAction::Block,
            max_event_bytes: 65536,
        }
    }
}

/// `response_scanning`: prompt injection in what comes back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseScanning {
    pub enabled: bool,
    pub action: ResponseAction,
    pub ask_timeout_seconds: u64,
    pub include_defaults: bool,
    pub patterns: Vec<ResponsePattern>,
    pub exempt_domains: Vec<String>,
    pub sse_streaming: SseStreaming,
}

impl Default for ResponseScanning {
    fn default() -> Self {
        ResponseScanning {
            enabled: true,
            action: ResponseAction::Warn,
            ask_timeout_seconds: 30,
            include_defaults: true,
            patterns: Vec::new(),
            exempt_domains: Vec::new(),
            sse_streaming: SseStreaming::default(),
        }
    }
}

/// Which request headers are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderMode {
    Sensitive,
    All,
}

/// `request_body_scanning`: DLP on request bodies and headers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestBodyScanning {
    pub enabled: bool,
    pub action: WarnBlock,
    pub max_body_bytes: u64,
    pub scan_headers: bool,
    pub header_mode: HeaderMode,
    pub sensitive_headers: Vec<String>,
    pub ignore_headers: Vec<String>,
    pub content_entropy_enabled: bool,
    pub content_entropy_action: WarnBlock,
    pub content_entropy_threshold: f64,
    pub content_entropy_exclusions: Vec<String>,
}

impl Default for RequestBodyScanning {
    fn default() -> Self {
        RequestBodyScanning {
            enabled: true,
            action: WarnBlock::Warn,
            max_body_bytes: 5 << 20,
            scan_headers: true,
            header_mode: HeaderMode::Sensitive,
            sensitive_headers: [
                "Authorization",
                "Cookie",
                "X-Api-Key",
                "X-Token",
                "Proxy-Authorization",
                "X-Goog-Api-Key",
            ]
            .map(String::from)
            .to_vec(),
            ignore_headers: Vec::new(),
            content_entropy_enabled: false,
            content_entropy_action: WarnBlock::Warn,
            content_entropy_threshold: 4.5,
            content_entropy_exclusions: Vec::new(),
        }
    }
}

/// What to do with an MCP message that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnParseError {
    Block,
    Forward,
}

/// `mcp_input_scanning`: DLP and injection in tool arguments.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpInputScanning {
    pub enabled: bool,
    pub action: WarnBlock,
    pub on_parse_error: OnParseError,
}

impl Default for McpInputScanning {
    fn default() -> Self {
        McpInputScanning {
            enabled: false,
            action: WarnBlock::Warn,
            on_parse_error: OnParseError::Block,
        }
    }
}

/// `mcp_tool_scanning`: poisoning and drift of tool definitions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpToolScanning {
    pub enabled: bool,
    pub action: WarnBlock,
    pub detect_drift: bool,
}

impl Default for McpToolScanning {
    fn default() -> Self {
        McpToolScanning {
            enabled: false,
            action: WarnBlock::Warn,
            detect_drift: true,
        }
    }
}

/// Actions of the MCP tool policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    Warn,
    Block,
    Redirect,
}

/// One `mcp_tool_policy.rules[]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPolicyRule {
    pub name: String,
    pub tool_pattern: String,
    #[serde(default)]
    pub arg_pattern: Option<String>,
    #[serde(default)]
    pub arg_key: Option<String>,
    #[serde(default)]
    pub action: Option<PolicyAction>,
    #[serde(default)]
    pub redirect_profile: Option<String>,
}

/// One `mcp_tool_policy.redirect_profiles` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectProfile {
    pub exec: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub preserve_argv: bool,
    #[serde(default)]
    pub match_abs_path: bool,
}

/// `mcp_tool_policy`: rules on tool names and arguments.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpToolPolicy {
    pub enabled: bool,
    pub action: PolicyAction,
    pub rules: Vec<ToolPolicyRule>,
    pub redirect_profiles: BTreeMap<String, RedirectProfile>,
    pub quarantine_dir: Option<String>,
}

impl Default for McpToolPolicy {
    fn default() -> Self {
        McpToolPolicy {
            enabled: false,
            action: PolicyAction::Warn,
            rules: Vec::new(),
            redirect_profiles: BTreeMap::new(),
            quarantine_dir: None,
        }
    }
}

/// `mcp_session_binding`: tools seen per session.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpSessionBinding {
    pub enabled: bool,
    pub unknown_tool_action: WarnBlock,
    pub no_baseline_action: WarnBlock,
}

impl Default for McpSessionBinding {
    fn default() -> Self {
        McpSessionBinding {
            enabled: true,
            unknown_tool_action: WarnBlock::Warn,
            no_baseline_action: WarnBlock::Warn,
        }
    }
}

/// Severities of chain patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainSeverity {
    Low,
    Medium,
    High,
    Critical,
}

/// A user chain pattern.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainPattern {
    pub name: String,
    pub sequence: Vec<String>,
    #[serde(default)]
    pub severity: Option<ChainSeverity>,
    #[serde(default)]
    pub action: Option<WarnBlock>,
}

/// `tool_chain_detection`: suspicious sequences of tool calls.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolChainDetection {
    pub enabled: bool,
    pub action: WarnBlock,
    pub window_size: usize,
    pub window_seconds: u64,
    pub max_gap: usize,
    pub tool_categories: BTreeMap<String, String>,
    pub pattern_overrides: BTreeMap<String, WarnBlock>,
    pub custom_patterns: Vec<ChainPattern>,
}

impl Default for ToolChainDetection {
    fn default() -> Self {
        ToolChainDetection {
            enabled: true,
            action: WarnBlock::Warn,
            window_size: 20,
            window_seconds: 60,
            max_gap: 3,
            tool_categories: BTreeMap::new(),
            pattern_overrides: BTreeMap::new(),
            custom_patterns: Vec::new(),
        }
    }
}

/// `kill_switch`: deny everything on demand.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KillSwitch {
    pub enabled: bool,
    pub sentinel_file: Option<String>,
    pub message: String,
    pub health_exempt: bool,
    pub metrics_exempt: bool,
    pub api_exempt: bool,
    pub api_token: Option<String>,
    pub api_listen: Option<String>,
    pub allowlist_ips: Vec<String>,
}

impl Default for KillSwitch {
    fn default() -> Self {
        KillSwitch {
            enabled: false,
            sentinel_file: None,
            message: "Emergency deny-all active".into(),
            health_exempt: true,
            metrics_exempt: true,
            api_exempt: true,
            api_token: None,
            api_listen: None,
            allowlist_ips: Vec::new(),
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    Stdout,
    File,
    Both,
}

/// `logging`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    pub format: super::types::LogFormat,
    pub output: LogOutput,
    pub file: Option<String>,
    pub include_allowed: bool,
    pub include_blocked: bool,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            format: super::types::LogFormat::Json,
            output: LogOutput::Stdout,
            file: None,
            include_allowed: true,
            include_blocked: true,
        }
    }
}

/// `tls_interception`: the CA and leaf cache of intercepted tunnels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsInterception {
    pub enabled: bool,
    pub ca_cert: Option<std::path::PathBuf>,
    pub ca_key: Option<std::path::PathBuf>,
    pub passthrough_domains: Vec<String>,
    pub cert_ttl: super::duration::Duration,
    pub cert_cache_size: usize,
    pub max_response_bytes: u64,
}

impl Default for TlsInterception {
    fn default() -> Self {
        TlsInterception {
            enabled: false,
            ca_cert: None,
            ca_key: None,
            passthrough_domains: Vec::new(),
            cert_ttl: super::duration::Duration::from_secs(24 * 60 * 60),
            cert_cache_size: 10_000,
            max_response_bytes: 5 << 20,
        }
    }
}

/// `health_watchdog`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthWatchdog {
    pub enabled: bool,
    pub interval_seconds: u64,
    pub expose_subsystems: bool,
}

impl Default for HealthWatchdog {
    fn default() -> Self {
        HealthWatchdog {
            enabled: true,
            interval_seconds: 2,
            expose_subsystems: false,
        }
    }
}

/// `flight_recorder`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlightRecorder {
    pub enabled: bool,
    pub require_receipts: bool,
    pub redact: bool,
    pub sign_checkpoints: bool,
    pub checkpoint_interval: u64,
    pub max_entries_per_file: u64,
    pub dir: Option<String>,
}

impl Default for FlightRecorder {
    fn default() -> Self {
        FlightRecorder {
            enabled: false,
            require_receipts: false,
            redact: true,
            sign_checkpoints: true,
            checkpoint_interval: 1000,
            max_entries_per_file: 10_000,
            dir: None,
        }
    }
}

/// `session_profiling`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionProfiling {
    pub enabled: bool,
    pub anomaly_action: WarnBlock,
    pub domain_burst: u64,
    pub window_minutes: u64,
    pub volume_spike_ratio: f64,
    pub max_sessions: u64,
    pub session_ttl_minutes: u64,
    pub cleanup_interval_seconds: u64,
}

impl Default for SessionProfiling {
    fn default() -> Self {
        SessionProfiling {
            enabled: false,
            anomaly_action: WarnBlock::Warn,
            domain_burst: 5,
            window_minutes: 5,
            volume_spike_ratio: 3.0,
            max_sessions: 1000,
            session_ttl_minutes: 30,
            cleanup_interval_seconds: 60,
        }
    }
}

/// `seed_phrase_detection`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedPhraseDetection {
    pub enabled: bool,
    pub min_words: usize,
    pub verify_checksum: bool,
}

impl Default for SeedPhraseDetection {
    fn default() -> Self {
        SeedPhraseDetection {
            enabled: true,
            min_words: 12,
            verify_checksum: true,
        }
    }
}

/// `suppress[]`: a finding silenced for a path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    pub rule: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `reverse_proxy`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseProxy {
    pub enabled: bool,
    pub listen: Option<String>,
    pub upstream: Option<String>,
}
