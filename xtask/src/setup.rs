//! Idempotent installation of everything the build and the tests need:
//! Debian packages, nightly `rust-src`, and `bpf-linker` linked against
//! the nightly rustc's own libLLVM (there is no system LLVM of that version).
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages: build (hyperscan, pkg-config), tests (clients, iproute2).
const APT_PACKAGES: &[&str] = &[
    "libhyperscan-dev",
    "pkg-config",
    "iproute2",
    "curl",
    "ruby",
    "ruby-httparty",
    "ruby-faraday",
    "python3-requests",
    "python3",
    "python3-websockets",
    "python3-prometheus-client",
    "python3-venv",
    "util-linux",
    "procps",
];

/// Debian packages only the benchmarks use (`cargo xtask bench`): plain TCP
/// proxies the relay benchmark compares the agent with.
const BENCH_APT_PACKAGES: &[&str] = &["haproxy", "socat"];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// PyPI tools of the deploy tests (tests/tests/deploy.rs), in a venv of
/// their own under the cache dir: Helm's Go SDK behind a Python binding
/// (the `helm` binary is in no registry this project can use), the
/// Kubernetes schema validator and yamllint.
const PIP_PACKAGES: &[&str] = &[
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
    "yamllint==1.38.0",
];

/// Python packages from PyPI the tests use (the official MCP SDK: the MCP
/// proxy tests run its server and client), as pip requirement specifiers,
/// with the module that shows they are installed.
const TEST_PY_PACKAGES: &[(&str, &str)] = &[("mcp>=1.9,<2", "mcp")];

/// Environment for cargo and the agent: PATH with the cached bpf-linker first.
pub struct Env {
    vars: Vec<(&'static str, OsString)>,
}

impl Env {
    pub fn vars(&self) -> Vec<(&'static str, OsString)> {
        self.vars.clone()
    }

    pub fn set(&mut self, name: &'static str, value: OsString) {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value));
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Installs what is missing and returns the environment to build with.
pub fn ensure(_root: &Path) -> anyhow::Result<Env> {
    let cache = cache_dir()?;
    apt_packages()?;
    pip_packages()?;
    rust_src()?;
    let bin = bpf_linker(&cache)?;
    python_venv(&cache)?;
    let mut path = OsString::from(bin);
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    Ok(Env {
        vars: vec![("PATH", path)],
    })
}

pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PIPELOCK_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/pipelock-agent"))
}

fn apt_packages() -> anyhow::Result<()> {
    apt_install(APT_PACKAGES)
}

/// Installs [`BENCH_APT_PACKAGES`] when missing (benchmarks only).
pub fn bench_packages() -> anyhow::Result<()> {
    apt_install(BENCH_APT_PACKAGES)
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `<cache>/venv` with [`PIP_PACKAGES`]; a stamp file lists what was
/// installed, so a changed list reinstalls.
fn python_venv(cache: &Path) -> anyhow::Result<()> {
    let venv = cache.join("venv");
    let stamp = venv.join("pipelock-packages.txt");
    let want = PIP_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} into {}",
        PIP_PACKAGES.join(" "),
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PIP_PACKAGES))?;
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))
}

/// Installs [`TEST_PY_PACKAGES`] for the `python3` the tests run, when its
/// module does not import yet (a Debian system Python needs
/// `--break-system-packages`; a pyenv or venv one does not).
fn pip_packages() -> anyhow::Result<()> {
    for (spec, module) in TEST_PY_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if present {
            continue;
        }
        eprintln!("xtask: pip installing {spec}");
        let pip = |extra: &[&str]| {
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(extra)
                .arg(spec)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !pip(&[]) && !pip(&["--break-system-packages"]) {
            bail!("pip could not install {spec} for python3 (the MCP proxy tests need it)");
        }
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is the nightly toolchain installed?)")?;
    if !out.status.success() {
        bail!(
            "rustc +nightly failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// Builds bpf-linker into `<cache>/bin` once; returns that bin directory.
fn bpf_linker(cache: &Path) -> anyhow::Result<PathBuf> {
    let bin_dir = cache.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(bin_dir);
    }
    let lib = nightly_sysroot()?.join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = so
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let llvm = cache.join("llvm");
    let llvm_lib = llvm.join("lib");
    std::fs::create_dir_all(&llvm_lib).context("creating the LLVM prefix")?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = llvm_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (once)"
    );
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(cache)
        .env("LLVM_PREFIX", &llvm))?;
    Ok(bin_dir)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}
