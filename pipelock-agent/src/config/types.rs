//! Domain types the configuration is made of and the components take:
//! the enforcement mode, the handling of non-HTTP traffic, the log format
//! and where the interception CA lives.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Enforcement mode, as Pipelock's `mode:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Block on any finding.
    Strict,
    /// Block high-confidence findings, warn on the rest.
    Balanced,
    /// Log only.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Balanced => "balanced",
            Mode::Audit => "audit",
        }
    }
}

/// Handling of redirected connections that are neither TLS nor HTTP (or
/// whose client stays silent): such bytes cannot be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NonHttpAction {
    /// Refused in strict and balanced, relayed and logged in audit, except to
    /// the destinations listed in `non_http_relay_ports` / `_cidrs` (default).
    Refuse,
    /// Relay the bytes unmodified everywhere (logged with attribution).
    Relay,
    /// Close the connection, in every mode.
    Reset,
}

/// Log line format (Pipelock's `logging.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the interception CA lives: generated and kept in `state_dir`, or
/// given as a certificate and key file pair (e.g. a Kubernetes Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSettings {
    /// Directory for persistent state (the generated CA).
    pub state_dir: PathBuf,
    /// CA certificate (PEM) used instead of the generated one.
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of `ca_cert`.
    pub ca_key: Option<PathBuf>,
}

/// What happens to the kernel redirect when the agent is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The programs go with the agent: connections go direct (unscanned).
    Open,
    /// The programs stay pinned: connections fail until the agent is back.
    Closed,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}
