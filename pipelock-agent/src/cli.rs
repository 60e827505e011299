//! Command-line interface (clap): `pipelock-agent [run] --cgroup /sure …`
//! and `pipelock-agent ca export`.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::config::CaSettings;
pub use crate::config::{LogFormat, Mode, NonHttpAction};

/// Transparent egress interceptor for the pods of a cgroup subtree.
#[derive(Debug, Parser)]
#[command(
    name = "pipelock-agent",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run` is the default command: its flags may be given without `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a cgroup and intercept its outbound TCP connections (default).
    Run(Box<RunArgs>),
    /// Certificate authority operations.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) that clients must trust; creates the CA if missing.
    Export(CaArgs),
}

/// Where the interception CA lives.
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Directory for persistent state (the generated CA).
    #[arg(long, default_value = "/var/lib/pipelock", env = "PIPELOCK_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Use this CA certificate (PEM) instead of the generated one; needs --ca-key.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// cgroup v2 path to intercept, relative to the cgroup2 mount (e.g. /sure); covers its subtree.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Address the kernel rewrites connections to. Must be reachable from the clients'
    /// network namespaces (loopback only works for clients in the agent's own namespace).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub redirect_addr: SocketAddr,
    /// IPv6 address to redirect IPv6 connections to (same port). Without it, IPv6
    /// connections go to the IPv4-mapped form of --redirect-addr.
    #[arg(long)]
    pub redirect_addr6: Option<Ipv6Addr>,
    /// Addresses to listen on for redirected connections (default: the redirect addresses).
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Destination CIDR never redirected (repeatable), e.g. 10.96.0.0/12.
    #[arg(long = "bypass-cidr")]
    pub bypass_cidrs: Vec<IpNet>,
    /// Destination port never redirected (repeatable). The agent's own ports always are.
    #[arg(long = "bypass-port")]
    pub bypass_ports: Vec<u16>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds to let open connections finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 5)]
    pub drain_seconds: u64,
    /// Enforcement mode.
    #[arg(long, value_enum, default_value_t = Mode::Balanced)]
    pub mode: Mode,
    /// Mode for one cgroup subtree, overriding --mode (repeatable), e.g.
    /// `--mode-override /sure/worker=strict`. Paths are relative to the cgroup2 mount.
    #[arg(long = "mode-override", value_parser = parse_mode_override)]
    pub mode_overrides: Vec<(String, Mode)>,
    /// Environment variable whose value must never leave (repeatable), optionally
    /// `NAME@host,host` for hosts it legitimately goes to.
    #[arg(long = "known-secret-env")]
    pub known_secret_env: Vec<String>,
    /// File (one value) or directory (one value per file, e.g. a mounted Kubernetes
    /// Secret) whose values must never leave (repeatable), optionally `PATH@host,host`.
    #[arg(long = "known-secret-file")]
    pub known_secret_files: Vec<String>,
    #[command(flatten)]
    pub ca: CaArgs,
    /// Extra CA bundle (PEM) trusted for upstream servers, besides the system roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Domain (glob, e.g. *.bank.example) relayed without decryption (repeatable).
    #[arg(long = "passthrough-domain")]
    pub passthrough_domains: Vec<String>,
    /// What to do with redirected traffic that is neither TLS nor HTTP.
    #[arg(long, value_enum, default_value_t = NonHttpAction::Relay)]
    pub non_http: NonHttpAction,
}

impl CaArgs {
    /// The CA settings these flags describe.
    pub fn settings(&self) -> CaSettings {
        CaSettings {
            state_dir: self.state_dir.clone(),
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
        }
    }
}

impl RunArgs {
    /// The addresses to listen on: --listen, else the redirect addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        let mut addrs = vec![self.redirect_addr];
        if let Some(v6) = self.redirect_addr6 {
            addrs.push(SocketAddr::new(IpAddr::V6(v6), self.redirect_addr.port()));
        }
        addrs
    }
}

/// Parses `CGROUP=MODE` for `--mode-override`.
fn parse_mode_override(s: &str) -> Result<(String, Mode), String> {
    let (cgroup, mode) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected CGROUP=MODE, got {s:?}"))?;
    let mode = Mode::from_str(mode, true)
        .map_err(|_| format!("unknown mode {mode:?}: expected strict, balanced or audit"))?;
    Ok((cgroup.to_string(), mode))
}
