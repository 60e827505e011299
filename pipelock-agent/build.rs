//! Builds the eBPF object (pipelock-ebpf, nightly + bpf-linker) with aya-build
//! and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` the eBPF build is skipped and an empty object is
//! embedded: the agent then refuses to start with a clear error. That is only
//! for working on userspace code on a machine without bpf-linker.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name == "pipelock-ebpf")
        .ok_or_else(|| anyhow!("pipelock-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("pipelock-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "pipelock-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF object (is bpf-linker installed? run `cargo xtask setup`)")?;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join("pipelock-ebpf");
    if !out.exists() {
        fs::write(&out, b"").context("writing empty eBPF placeholder")?;
    }
    Ok(())
}
