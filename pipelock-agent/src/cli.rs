//! Command-line interface (clap): `pipelock-agent [run] --config FILE
//! --cgroup /sure …`, `check-config FILE`, `config --print-defaults` and
//! `ca export`. Every `run` flag sets one config key (named in its help) and
//! overrides the file, which overrides the built-in defaults.
use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::config::{self, CaSettings, Config};
pub use crate::config::{FailMode, LogFormat, Mode, NonHttpAction};

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
    /// Check a config file, and the `run` flags given with it, without
    /// running: exit 0 when they load, 1 when not.
    CheckConfig(Box<CheckConfigArgs>),
    /// Config file helpers.
    Config(ConfigArgs),
    /// Remove the pinned redirect of `fail_mode: closed` (connections go direct again).
    Detach(DetachArgs),
    /// Certificate authority operations.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Probe a running agent: GET /health; exit 0 when it answers 200 and healthy, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Show what the agent on this node covers and does: pods, mode and its source,
    /// fail mode, connections, findings by rule, top talkers (read over the admin
    /// socket in its state directory).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Config file to read `interceptor.state_dir` from.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// The running agent's state directory (its admin socket is there)
    /// [config: interceptor.state_dir; default /var/lib/pipelock].
    #[arg(long, env = "PIPELOCK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the status document as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Where the agent serves /health (the forward listener, or kill_switch.api_listen).
    #[arg(long, default_value = "127.0.0.1:8888")]
    pub addr: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The pipelock.yaml to check (or `--config FILE`).
    pub file: Option<PathBuf>,
    /// `run` flags to check with the file, as the agent would start with
    /// them (e.g. a DaemonSet's arguments): `check-config --config F --mode strict`.
    #[command(flatten)]
    pub run: RunArgs,
}

impl CheckConfigArgs {
    /// The file to check: FILE, else `--config`.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref().or(self.run.config.as_ref())
    }
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Config file to read `interceptor.pin_dir` from.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// bpffs directory of the pinned state [config: interceptor.pin_dir].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print a complete, commented config file with every default.
    #[arg(long, required = true)]
    pub print_defaults: bool,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) that clients must trust; creates the CA if missing.
    Export(CaArgs),
}

/// Where the interception CA lives (flags of `ca export`; `run` has the same).
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Config file to read the CA settings from.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Directory for persistent state (the generated CA) [config: interceptor.state_dir].
    #[arg(long, env = "PIPELOCK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use this CA certificate (PEM) instead of the generated one; needs --ca-key
    /// [config: interceptor.ca_cert].
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert [config: interceptor.ca_key].
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

impl CaArgs {
    /// Applies these flags on top of `cfg`.
    fn apply(&self, cfg: &mut Config) {
        let i = &mut cfg.interceptor;
        if let Some(d) = &self.state_dir {
            i.state_dir.clone_from(d);
        }
        if let (Some(cert), Some(key)) = (&self.ca_cert, &self.ca_key) {
            i.ca_cert = Some(cert.clone());
            i.ca_key = Some(key.clone());
            cfg.tls_interception.ca_cert = None;
            cfg.tls_interception.ca_key = None;
        }
    }

    /// The CA settings: the config file (if any), then these flags.
    pub fn settings(&self) -> Result<CaSettings, config::ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => config::load(path)?.config,
            None => Config::default(),
        };
        self.apply(&mut cfg);
        Ok(cfg.ca_settings())
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// pipelock.yaml to load (Pipelock's keys plus `interceptor:`); reloaded on
    /// SIGHUP and when it changes on disk. Flags override it.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// cgroup v2 path to intercept, relative to the cgroup2 mount (e.g. /sure); covers
    /// its subtree [config: interceptor.cgroup].
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Kubernetes label selector, e.g. app.kubernetes.io/name=sure: cover only the
    /// containers of this node's pods it selects, watched through the API (in-cluster
    /// service account, or KUBECONFIG); --cgroup is then the kubelet's cgroup root
    /// (default /). The agent's and Pipelock's own pods are never covered
    /// [config: interceptor.pod_selector].
    #[arg(long)]
    pub pod_selector: Option<String>,
    /// This node's name, for --pod-selector (the downward API's spec.nodeName)
    /// [config: interceptor.node_name].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Node label (else annotation) whose value, audit, balanced or strict, sets this
    /// node's mode live over --mode and the file (watched through the API), e.g.
    /// pipelock.sure.am/mode [config: interceptor.node_mode_label].
    #[arg(long)]
    pub node_mode_label: Option<String>,
    /// Address the kernel rewrites connections to. Must be reachable from the clients'
    /// network namespaces (loopback only works for clients in the agent's own
    /// namespace) [config: interceptor.redirect_addr; default 127.0.0.1:15001].
    #[arg(long)]
    pub redirect_addr: Option<SocketAddr>,
    /// IPv6 address to redirect IPv6 connections to (same port). Without it, IPv6
    /// connections go to the IPv4-mapped form of --redirect-addr
    /// [config: interceptor.redirect_addr6].
    #[arg(long)]
    pub redirect_addr6: Option<Ipv6Addr>,
    /// Addresses to listen on for redirected connections (repeatable; default: the
    /// redirect addresses) [config: interceptor.redirect_listen].
    #[arg(long)]
    pub redirect_listen: Vec<SocketAddr>,
    /// Destination CIDR never redirected (repeatable; replaces the file's list), e.g.
    /// 10.96.0.0/12 [config: interceptor.bypass_cidrs].
    #[arg(long = "bypass-cidr")]
    pub bypass_cidrs: Vec<IpNet>,
    /// Destination port never redirected (repeatable; replaces the file's list). The
    /// agent's own ports always are [config: interceptor.bypass_ports].
    #[arg(long = "bypass-port")]
    pub bypass_ports: Vec<u16>,
    /// Log format [config: logging.format; default json].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds to let open connections finish after SIGTERM/SIGINT
    /// [config: interceptor.drain_seconds; default 5].
    #[arg(long)]
    pub drain_seconds: Option<u64>,
    /// Enforcement mode [config: mode; default balanced].
    #[arg(short = 'm', long, value_enum)]
    pub mode: Option<Mode>,
    /// Mode for one cgroup subtree, overriding --mode (repeatable), e.g.
    /// `--mode-override /sure/worker=strict`. Paths are relative to the cgroup2 mount
    /// [config: interceptor.mode_overrides].
    #[arg(long = "mode-override", value_parser = parse_mode_override)]
    pub mode_overrides: Vec<(String, Mode)>,
    /// Environment variable whose value must never leave (repeatable; replaces the
    /// file's list), optionally `NAME@host,host` for hosts it legitimately goes to
    /// [config: interceptor.known_secret_env].
    #[arg(long = "known-secret-env")]
    pub known_secret_env: Vec<String>,
    /// File (one value) or directory (one value per file, e.g. a mounted Kubernetes
    /// Secret) whose values must never leave (repeatable; replaces the file's list),
    /// optionally `PATH@host,host` [config: interceptor.known_secret_files].
    #[arg(long = "known-secret-file")]
    pub known_secret_files: Vec<String>,
    /// Directory for persistent state (the generated CA)
    /// [config: interceptor.state_dir; default /var/lib/pipelock].
    #[arg(long, env = "PIPELOCK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use this CA certificate (PEM) instead of the generated one; needs --ca-key
    /// [config: interceptor.ca_cert].
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert [config: interceptor.ca_key].
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Extra CA bundle (PEM) trusted for upstream servers, besides the system roots
    /// [config: interceptor.upstream_ca].
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Domain (glob, e.g. *.bank.example) relayed without decryption (repeatable; adds
    /// to the file's) [config: interceptor.passthrough_domains].
    #[arg(long = "passthrough-domain")]
    pub passthrough_domains: Vec<String>,
    /// What to do with redirected traffic that is neither TLS nor HTTP (it cannot be
    /// scanned): refuse (closed in strict and balanced, relayed and logged in audit),
    /// relay, or reset [config: interceptor.non_http; default refuse].
    #[arg(long, value_enum)]
    pub non_http: Option<NonHttpAction>,
    /// open: the redirect goes with the agent; closed: it stays pinned on bpffs so
    /// covered connects fail while the agent is down [config: interceptor.fail_mode;
    /// default open].
    #[arg(long, value_enum)]
    pub fail_mode: Option<FailMode>,
    /// bpffs directory of the pinned state [config: interceptor.pin_dir; default
    /// /sys/fs/bpf/pipelock].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Forward proxy listen address (CONNECT, absolute-form HTTP, /health), as
    /// Pipelock's `--listen` [config: interceptor.forward_listen; default
    /// 127.0.0.1:8888 without a cgroup].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// MCP reverse proxy listen address, as Pipelock's `--mcp-listen`
    /// [config: interceptor.mcp_listen; default 127.0.0.1:8889 when an upstream is given].
    #[arg(long)]
    pub mcp_listen: Option<SocketAddr>,
    /// MCP upstream URL (http:// or https://), as Pipelock's `--mcp-upstream`
    /// [config: interceptor.mcp_upstream].
    #[arg(long)]
    pub mcp_upstream: Option<String>,
    /// File with the token MCP clients must send as `Proxy-Authorization: Bearer
    /// <token>` [config: interceptor.mcp_auth_token_file].
    #[arg(long)]
    pub mcp_auth_token_file: Option<PathBuf>,
}

impl RunArgs {
    /// Applies the flags that were given on top of `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(m) = self.mode {
            cfg.mode = m;
            cfg.enforce = None;
        }
        if let Some(f) = self.log_format {
            cfg.logging.format = f;
        }
        let ca = CaArgs {
            config: None,
            state_dir: self.state_dir.clone(),
            ca_cert: self.ca_cert.clone(),
            ca_key: self.ca_key.clone(),
        };
        ca.apply(cfg);
        let i = &mut cfg.interceptor;
        if let Some(c) = &self.cgroup {
            i.cgroup = Some(c.clone());
        }
        if let Some(s) = &self.pod_selector {
            i.pod_selector = Some(s.clone());
        }
        if let Some(n) = &self.node_name {
            i.node_name = Some(n.clone());
        }
        if let Some(l) = &self.node_mode_label {
            i.node_mode_label = Some(l.clone());
        }
        if let Some(a) = self.redirect_addr {
            i.redirect_addr = a;
        }
        if let Some(a) = self.redirect_addr6 {
            i.redirect_addr6 = Some(a);
        }
        replace(&mut i.redirect_listen, &self.redirect_listen);
        if let Some(a) = self.listen {
            i.forward_listen = Some(a);
        }
        if let Some(a) = self.mcp_listen {
            i.mcp_listen = Some(a);
        }
        if let Some(u) = &self.mcp_upstream {
            i.mcp_upstream = Some(u.clone());
        }
        if let Some(f) = &self.mcp_auth_token_file {
            i.mcp_auth_token_file = Some(f.clone());
        }
        replace(&mut i.bypass_cidrs, &self.bypass_cidrs);
        replace(&mut i.bypass_ports, &self.bypass_ports);
        replace(&mut i.known_secret_env, &self.known_secret_env);
        replace(&mut i.known_secret_files, &self.known_secret_files);
        i.passthrough_domains
            .extend(self.passthrough_domains.iter().cloned());
        for (path, mode) in &self.mode_overrides {
            i.mode_overrides.insert(path.clone(), *mode);
        }
        if let Some(d) = self.drain_seconds {
            i.drain_seconds = d;
        }
        if let Some(p) = &self.upstream_ca {
            i.upstream_ca = Some(p.clone());
        }
        if let Some(n) = self.non_http {
            i.non_http = n;
        }
        if let Some(f) = self.fail_mode {
            i.fail_mode = f;
        }
        if let Some(p) = &self.pin_dir {
            i.pin_dir.clone_from(p);
        }
    }
}

/// A repeatable flag, when given, replaces the file's list.
fn replace<T: Clone>(list: &mut Vec<T>, flags: &[T]) {
    if !flags.is_empty() {
        *list = flags.to_vec();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> RunArgs {
        let mut all = vec!["pipelock-agent"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).expect("parses").run
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let mut cfg = config::parse(
            "mode: audit\ninterceptor:\n  cgroup: /from-file\n  bypass_ports: [22]\n  mode_overrides: {/a: strict}\n",
        )
        .unwrap()
        .config;
        args(&[
            "--mode",
            "strict",
            "--bypass-port",
            "25",
            "--mode-override",
            "/b=audit",
        ])
        .apply(&mut cfg);
        assert_eq!(cfg.mode, Mode::Strict);
        assert_eq!(cfg.interceptor.cgroup.as_deref(), Some("/from-file"));
        assert_eq!(cfg.interceptor.bypass_ports, vec![25]);
        assert_eq!(cfg.interceptor.mode_overrides.len(), 2);
        // Nothing given: the file stays as it is.
        let before = cfg.clone();
        args(&[]).apply(&mut cfg);
        assert_eq!(cfg, before);
    }

    #[test]
    fn help_names_the_key_each_flag_sets() {
        use clap::CommandFactory as _;
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        for key in [
            "interceptor.cgroup",
            "interceptor.pod_selector",
            "interceptor.redirect_addr",
            "interceptor.bypass_cidrs",
            "interceptor.mode_overrides",
            "interceptor.known_secret_env",
            "interceptor.non_http",
            "logging.format",
            "[config: mode",
        ] {
            assert!(help.contains(key), "--help does not name {key}");
        }
    }
}
