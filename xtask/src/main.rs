//! Developer and CI entry point: `cargo xtask setup|build|demo|run|test|bench|lint`.
//! Every command first installs what it needs (apt packages, nightly
//! rust-src, bpf-linker built against rustc's own libLLVM), idempotently,
//! caching bpf-linker under ~/.cache/pipelock-agent.
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install build and test prerequisites (idempotent).
    Setup,
    /// Build the agent (release) with its embedded eBPF object.
    Build,
    /// First run on a fresh machine (as root): a throwaway cgroup, a local
    /// HTTPS upstream and the real agent; Ruby clients show a secret blocked
    /// (403), a clean call passing and a prompt injection cut.
    Demo {
        /// strict or balanced.
        #[arg(long, default_value = "strict", value_parser = ["strict", "balanced"])]
        mode: String,
    },
    /// Build and run the agent: `cargo xtask run -- --cgroup /sure`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite, privileged tests included (needs root),
    /// then a short fuzz smoke run of every cargo-fuzz target (not with a
    /// test-name filter).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark: relay, tls, scan or detect (the detection corpus
    /// through the real agent; root).
    Bench {
        #[arg(value_parser = ["relay", "tls", "scan", "detect"])]
        name: String,
    },
    /// rustfmt check and clippy -D warnings on the whole workspace.
    Lint,
    /// Run the cargo-fuzz targets (nightly), each for N seconds; fails on a crash.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// address (ASan) or none.
        #[arg(long, default_value = "address", value_parser = ["address", "none"])]
        sanitizer: String,
        /// One target (default: all).
        target: Option<String>,
    },
}

/// Seconds each fuzz target runs at the end of `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 10;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Said before set-up, which would otherwise fail first on something
    // less telling (apt, the cache directory).
    if !setup::is_root() {
        match cli.cmd {
            Cmd::Demo { .. } => bail!(
                "the demo creates a cgroup and attaches the agent's eBPF programs to it: run `cargo xtask demo` as root"
            ),
            Cmd::Test { .. } => bail!(
                "the test suite attaches eBPF programs and creates cgroups and network namespaces: run it as root"
            ),
            _ => {}
        }
    }
    let root = workspace_root()?;
    let env = setup::ensure(&root)?;
    match cli.cmd {
        Cmd::Setup => Ok(()),
        Cmd::Build => cargo(&root, &env, &["build", "--release", "-p", "pipelock-agent"]),
        Cmd::Demo { mode } => {
            // The debug agent, as `cargo xtask test` builds it; the demo is
            // told where it is rather than guessing.
            cargo(&root, &env, &["build", "-p", "pipelock-agent"])?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            let mut env = env;
            env.set(
                "PIPELOCK_AGENT_BIN",
                target.join("debug/pipelock-agent").into_os_string(),
            );
            cargo(
                &root,
                &env,
                &[
                    "run",
                    "-q",
                    "-p",
                    "pipelock-tests",
                    "--bin",
                    "pipelock-demo",
                    "--",
                    "--mode",
                    &mode,
                ],
            )
        }
        Cmd::Run { args } => {
            cargo(&root, &env, &["build", "--release", "-p", "pipelock-agent"])?;
            let bin = root.join("target/release/pipelock-agent");
            let status = Command::new(&bin)
                .args(&args)
                .envs(env.vars())
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => {
            cargo(&root, &env, &["build", "-p", "pipelock-agent"])?;
            // Default members: everything but the eBPF crate, which only
            // builds for bpfel-unknown-none (the agent's build.rs builds it).
            // `root-tests` un-ignores the integration tests that need root;
            // plain `cargo test` reports them as ignored.
            let mut cmd = vec!["test", "--features", "pipelock-tests/root-tests"];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo(&root, &env, &cmd)?;
            // The whole suite (no filter) ends with a fuzz smoke run: every
            // cargo-fuzz target for a few seconds, without a sanitizer (the
            // ASan build takes half an hour on 2 cores; `cargo xtask fuzz`
            // runs it). A crash fails the suite.
            if args.is_empty() {
                eprintln!(
                    "xtask: fuzz smoke run: {} targets, {FUZZ_SMOKE_SECONDS} s each",
                    fuzz::TARGETS.len()
                );
                fuzz::run(&root, &env, FUZZ_SMOKE_SECONDS, None, "none")?;
            }
            Ok(())
        }
        Cmd::Bench { name } => {
            setup::bench_packages()?;
            let package = if name == "scan" {
                "pipelock-agent"
            } else {
                "pipelock-tests"
            };
            cargo(&root, &env, &["build", "--release", "-p", "pipelock-agent"])?;
            let bin = root.join("target/release/pipelock-agent");
            let mut env = env;
            env.set("PIPELOCK_AGENT_BIN", bin.into_os_string());
            cargo(&root, &env, &["bench", "-p", package, "--bench", &name])
        }
        Cmd::Fuzz {
            seconds,
            sanitizer,
            target,
        } => fuzz::run(&root, &env, seconds, target.as_deref(), &sanitizer),
        Cmd::Lint => {
            cargo(&root, &env, &["fmt", "--all", "--check"])?;
            cargo(
                &root,
                &env,
                &["clippy", "--all-targets", "--", "-D", "warnings"],
            )
        }
    }
}

/// Runs `cargo <args>` in the workspace with the set-up environment.
fn cargo(root: &Path, env: &setup::Env, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .envs(env.vars())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}
