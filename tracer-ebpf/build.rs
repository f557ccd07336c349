//! Rebuild the programs when the linker that produced them changes.
fn main() {
    // bpf-linker is an undeclared dependency of this crate: track its binary so an upgrade
    // rebuilds the programs.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
