//! `cargo xtask fuzz --seconds N [TARGET]`: the cargo-fuzz (libFuzzer)
//! targets of `pipelock-agent/fuzz`, each run for N seconds with nightly;
//! fails if any target crashes (its input is left in
//! `pipelock-agent/fuzz/artifacts/<target>/`). cargo-fuzz is installed once
//! into the same cache as bpf-linker. The eBPF object is not built
//! (`AYA_BUILD_SKIP=1`): no fuzz target loads it.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::setup;

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "sniff",
    "sse",
    "decode",
    "unescape",
    "normalize",
    "config",
    "pipeline",
    "websocket",
];

/// Builds the targets and runs `target` (or all) for `seconds` each.
pub fn run(
    root: &Path,
    env: &setup::Env,
    seconds: u64,
    target: Option<&str>,
    sanitizer: &str,
) -> anyhow::Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    cargo_fuzz(env)?;
    let dir = root.join("pipelock-agent");
    let fuzz = |args: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz"])
            .args(args)
            .current_dir(&dir)
            .envs(env.vars())
            .env("AYA_BUILD_SKIP", "1");
        cmd
    };
    let common = ["--fuzz-dir", "fuzz", "--sanitizer", sanitizer];
    let mut build = fuzz(&["build"]);
    build.args(common);
    if !build
        .status()
        .context("running cargo fuzz build")?
        .success()
    {
        bail!("cargo fuzz build failed");
    }
    let mut failed = Vec::new();
    for t in &targets {
        // New inputs go to corpus/<t> (not in git); seeds/<t> is read too.
        let corpus = format!("fuzz/corpus/{t}");
        let seeds = format!("fuzz/seeds/{t}");
        std::fs::create_dir_all(dir.join(&corpus)).context("creating the corpus dir")?;
        let mut cmd = fuzz(&["run"]);
        cmd.args(common).arg(t).arg(&corpus);
        if dir.join(&seeds).is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1");
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        let status = cmd
            .status()
            .with_context(|| format!("running fuzz target {t}"))?;
        if !status.success() {
            eprintln!("xtask: fuzz target {t} failed ({status})");
            failed.push(*t);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in pipelock-agent/fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Installs cargo-fuzz into `<cache>/bin` (on the set-up PATH) once.
fn cargo_fuzz(env: &setup::Env) -> anyhow::Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .envs(env.vars())
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    let cache = setup::cache_dir()?;
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked", "--version"])
        .arg(CARGO_FUZZ_VERSION)
        .arg("--root")
        .arg(&cache)
        .envs(env.vars())
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}
