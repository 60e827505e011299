//! Rebuild the eBPF object when the bpf-linker on PATH changes.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
