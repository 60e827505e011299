//! Configuration: the `pipelock.yaml` that Sure's Helm chart renders, read
//! as Pipelock reads it (strict: an unknown key at any depth, a wrong type
//! or a bad value is an error naming the key path and its line), plus the
//! agent's own `interceptor:` section. Layers: built-in defaults, then the
//! file, then command-line flags (`crate::cli`). `support` lists the keys
//! accepted without being acted on yet; `reload` swaps a new file in live.
mod duration;
pub mod emit;
pub mod interceptor;
mod lines;
pub mod pipelock;
pub mod reload;
pub mod support;
mod types;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use duration::Duration;
pub use interceptor::Interceptor;
pub use lines::KeyLines;
pub use support::Notice;
pub use types::{CaSettings, FailMode, LogFormat, Mode, NonHttpAction};

/// The complete commented default file (`config --print-defaults`).
pub const DEFAULTS_YAML: &str = include_str!("defaults.yaml");

/// The whole `pipelock.yaml`: Pipelock's top-level keys and `interceptor:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub mode: Mode,
    pub enforce: Option<bool>,
    pub explain_blocks: Option<bool>,
    pub trusted_domains: Vec<String>,
    pub api_allowlist: Option<Vec<String>>,
    pub suppress: Vec<pipelock::Suppression>,
    pub forward_proxy: pipelock::ForwardProxy,
    pub websocket_proxy: pipelock::WebsocketProxy,
    pub dlp: pipelock::Dlp,
    pub canary_tokens: pipelock::CanaryTokens,
    pub response_scanning: pipelock::ResponseScanning,
    pub request_body_scanning: pipelock::RequestBodyScanning,
    pub mcp_input_scanning: pipelock::McpInputScanning,
    pub mcp_tool_scanning: pipelock::McpToolScanning,
    pub mcp_tool_policy: pipelock::McpToolPolicy,
    pub mcp_session_binding: pipelock::McpSessionBinding,
    pub tool_chain_detection: pipelock::ToolChainDetection,
    pub kill_switch: pipelock::KillSwitch,
    pub logging: pipelock::Logging,
    pub tls_interception: pipelock::TlsInterception,
    pub health_watchdog: pipelock::HealthWatchdog,
    pub flight_recorder: pipelock::FlightRecorder,
    pub session_profiling: pipelock::SessionProfiling,
    pub seed_phrase_detection: pipelock::SeedPhraseDetection,
    pub reverse_proxy: pipelock::ReverseProxy,
    pub metrics_listen: Option<String>,
    // Documented sections the agent does not act on; contents unchecked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_proxy: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_ws_listener: pipelock::Opaque,
    pub emit: emit::Emit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_enforcement: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_request_detection: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_api: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_protection: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_protection: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrf: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a2a_scanning: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taint: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_policy: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentry: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sentry: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_binary_integrity: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool_provenance: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavioral_baseline: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub airlock: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_shield: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_policy: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mediation_envelope: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redaction: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: pipelock::Opaque,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_agent_identity: pipelock::Opaque,
    /// pipelock-agent's own settings.
    pub interceptor: Interceptor,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 1,
            mode: Mode::Balanced,
            enforce: None,
            explain_blocks: None,
            trusted_domains: Vec::new(),
            api_allowlist: None,
            suppress: Vec::new(),
            forward_proxy: Default::default(),
            websocket_proxy: Default::default(),
            dlp: Default::default(),
            canary_tokens: Default::default(),
            response_scanning: Default::default(),
            request_body_scanning: Default::default(),
            mcp_input_scanning: Default::default(),
            mcp_tool_scanning: Default::default(),
            mcp_tool_policy: Default::default(),
            mcp_session_binding: Default::default(),
            tool_chain_detection: Default::default(),
            kill_switch: Default::default(),
            logging: Default::default(),
            tls_interception: Default::default(),
            health_watchdog: Default::default(),
            flight_recorder: Default::default(),
            session_profiling: Default::default(),
            seed_phrase_detection: Default::default(),
            reverse_proxy: Default::default(),
            metrics_listen: None,
            fetch_proxy: None,
            mcp_ws_listener: None,
            emit: Default::default(),
            adaptive_enforcement: None,
            cross_request_detection: None,
            scan_api: None,
            address_protection: None,
            git_protection: None,
            internal: None,
            ssrf: None,
            a2a_scanning: None,
            taint: None,
            request_policy: None,
            sentry: None,
            rules: None,
            file_sentry: None,
            sandbox: None,
            mcp_binary_integrity: None,
            mcp_tool_provenance: None,
            behavioral_baseline: None,
            airlock: None,
            browser_shield: None,
            media_policy: None,
            mediation_envelope: None,
            redaction: None,
            agents: None,
            default_agent_identity: None,
            interceptor: Interceptor::default(),
        }
    }
}

impl Config {
    /// The mode in force: `mode`, or audit when `enforce: false`.
    pub fn effective_mode(&self) -> Mode {
        if self.enforce == Some(false) {
            Mode::Audit
        } else {
            self.mode
        }
    }

    /// Where the CA lives: `interceptor.ca_cert/ca_key`, else
    /// `tls_interception.ca_cert/ca_key`, else generated in the state dir.
    pub fn ca_settings(&self) -> CaSettings {
        let i = &self.interceptor;
        let t = &self.tls_interception;
        let (ca_cert, ca_key) = if i.ca_cert.is_some() {
            (i.ca_cert.clone(), i.ca_key.clone())
        } else {
            (t.ca_cert.clone(), t.ca_key.clone())
        };
        CaSettings {
            state_dir: i.state_dir.clone(),
            ca_cert,
            ca_key,
        }
    }

    /// Domains relayed undecrypted: both `interceptor.` and `tls_interception.passthrough_domains`.
    pub fn passthrough_domains(&self) -> Vec<String> {
        let mut all = self.interceptor.passthrough_domains.clone();
        all.extend(self.tls_interception.passthrough_domains.iter().cloned());
        all.sort();
        all.dedup();
        all
    }

    /// Checks what types alone cannot. `lines` gives each error its line.
    fn validate(&self, lines: &KeyLines) -> Result<(), Invalid> {
        let fail = |key: &str, message: String| {
            Err(Invalid {
                key: key.to_owned(),
                line: lines.line(key),
                message,
            })
        };
        if self.version != 1 {
            return fail(
                "version",
                format!("unsupported version {}: expected 1", self.version),
            );
        }
        for (section, cert, key) in [
            (
                "interceptor",
                &self.interceptor.ca_cert,
                &self.interceptor.ca_key,
            ),
            (
                "tls_interception",
                &self.tls_interception.ca_cert,
                &self.tls_interception.ca_key,
            ),
        ] {
            match (cert, key) {
                (Some(_), None) => {
                    return fail(
                        &format!("{section}.ca_cert"),
                        format!("needs {section}.ca_key as well"),
                    );
                }
                (None, Some(_)) => {
                    return fail(
                        &format!("{section}.ca_key"),
                        format!("needs {section}.ca_cert as well"),
                    );
                }
                _ => {}
            }
        }
        if self.interceptor.ca_cert.is_some()
            && self.tls_interception.ca_cert.is_some()
            && self.interceptor.ca_cert != self.tls_interception.ca_cert
        {
            return fail(
                "interceptor.ca_cert",
                "conflicts with tls_interception.ca_cert: set the CA in one place".into(),
            );
        }
        if !self.interceptor.redirect_addr.is_ipv4() {
            return fail(
                "interceptor.redirect_addr",
                format!(
                    "{} must be an IPv4 address; use interceptor.redirect_addr6 for IPv6",
                    self.interceptor.redirect_addr
                ),
            );
        }
        if let Some(sel) = &self.interceptor.pod_selector
            && let Err(e) = sel.parse::<crate::redirect::pods::Selector>()
        {
            return fail("interceptor.pod_selector", e.to_string());
        }
        for path in self.interceptor.mode_overrides.keys() {
            if !path.starts_with('/') {
                return fail(
                    &format!("interceptor.mode_overrides.{path}"),
                    format!(
                        "cgroup path {path:?} must start with / (relative to the cgroup2 mount)"
                    ),
                );
            }
        }
        for (name, p) in &self.mcp_tool_policy.redirect_profiles {
            let key = format!("mcp_tool_policy.redirect_profiles.{name}.exec");
            match p.exec.first() {
                None => return fail(&key, "is empty: name the handler to run".into()),
                Some(program) if program.is_empty() => {
                    return fail(&key, "the program (exec[0]) is empty".into());
                }
                Some(program) if p.match_abs_path && !program.starts_with('/') => {
                    return fail(
                        &key,
                        format!("match_abs_path is set but exec[0] {program:?} is not absolute"),
                    );
                }
                Some(_) => {}
            }
        }
        for (i, p) in self.dlp.patterns.iter().enumerate() {
            let key = format!("dlp.patterns[{i}].regex");
            if let Err(e) = regex_automata::util::syntax::parse(&p.regex) {
                return fail(&key, format!("pattern {:?} does not compile: {e}", p.name));
            }
            if p.name.trim().is_empty() {
                return fail(&format!("dlp.patterns[{i}].name"), "is empty".into());
            }
        }
        for (i, p) in self.response_scanning.patterns.iter().enumerate() {
            if let Err(e) = regex_automata::util::syntax::parse(&p.regex) {
                return fail(
                    &format!("response_scanning.patterns[{i}].regex"),
                    format!("pattern {:?} does not compile: {e}", p.name),
                );
            }
        }
        if let Err((key, message)) = self.emit.check() {
            return fail(key, message);
        }
        Ok(())
    }
}

/// A config file read, checked and ready to use.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Keys the file sets that the agent does not act on (yet), with lines.
    pub notices: Vec<Notice>,
    /// The file it came from (none: built-in defaults).
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// The built-in defaults, no file.
    pub fn defaults() -> Loaded {
        Loaded {
            config: Config::default(),
            notices: Vec::new(),
            path: None,
        }
    }
}

/// What is wrong with a file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Key path (`forward_proxy.idle_timeout_secs`), or `.` for the whole file.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        Ok(())
    }
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {invalid}")]
    Invalid { path: PathBuf, invalid: Invalid },
}

impl ConfigError {
    /// The located problem, for a bad (not unreadable) file.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            ConfigError::Invalid { invalid, .. } => Some(invalid),
            ConfigError::Read { .. } => None,
        }
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = parse(&text).map_err(|invalid| ConfigError::Invalid {
        path: path.to_path_buf(),
        invalid,
    })?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Parses and checks a config text.
pub fn parse(text: &str) -> Result<Loaded, Invalid> {
    let lines = KeyLines::index(text);
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let mut invalid = locate(&e, &lines);
            // The YAML scanner reports the end of a text whose last line has
            // no line break as the line after it: name the last line (YAML
            // ends a line at \n, \r\n or a lone \r).
            let breaks = text.matches('\n').count() + text.matches('\r').count()
                - text.matches("\r\n").count();
            let last = breaks + 1;
            invalid.line = invalid.line.map(|l| l.min(last));
            invalid
        })?
    };
    config.validate(&lines)?;
    let notices = support::notices(&config, &lines);
    Ok(Loaded {
        config,
        notices,
        path: None,
    })
}

/// `msg` without a leading `P: ` where P is `path` or one of its parents.
fn strip_path_prefix<'a>(msg: &'a str, path: &str) -> &'a str {
    let mut p = path;
    while !p.is_empty() {
        if let Some(rest) = msg.strip_prefix(p).and_then(|r| r.strip_prefix(": ")) {
            return rest;
        }
        p = p.rfind(['.', '[']).map_or("", |i| &p[..i]);
    }
    msg
}

fn parent_or(field: &str, parent: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        parent.to_owned()
    }
}

/// Turns a serde error into a key path, a message and a line.
fn locate(e: &serde_path_to_error::Error<serde_yaml::Error>, lines: &KeyLines) -> Invalid {
    let inner = e.inner();
    let msg = inner.to_string();
    // serde_yaml appends " at line L column C"; the line is reported apart.
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m)
        .to_owned();
    let parent = e.path().to_string();
    let parent = if parent == "." { String::new() } else { parent };
    // serde_yaml may start its message with the path itself.
    let msg = match msg.find("unknown field `") {
        Some(at) => msg[at..].to_owned(),
        None => strip_path_prefix(&msg, &parent).to_owned(),
    };
    let yaml_line = inner.location().map(|l| l.line());
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        // The path sometimes ends with the unknown key already.
        let key = if parent.is_empty() || parent == field || parent.ends_with(&format!(".{field}"))
        {
            parent_or(field, &parent)
        } else {
            format!("{parent}.{field}")
        };
        let expected = expected
            .trim_start_matches(", ")
            .replace("expected one of", "expected one of:");
        let message = if expected.is_empty() {
            "unknown key".to_owned()
        } else {
            format!("unknown key ({expected})")
        };
        return Invalid {
            line: lines.line(&key).or(yaml_line),
            key,
            message,
        };
    }
    let key = if parent.is_empty() {
        ".".to_owned()
    } else {
        parent
    };
    Invalid {
        line: lines.line(&key).or(yaml_line),
        key,
        message: msg,
    }
}

#[cfg(test)]
mod tests;
