//! Project commands: `cargo xtask setup | run | test`.
//!
//! `setup` installs what a fresh Debian machine lacks to build the eBPF programs (LLVM 22,
//! bpf-linker, the nightly's rust-src) and, for tests, the real servers they drive. It is
//! idempotent and quick when everything is present.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Debian packages needed to build bpf-linker against LLVM 22.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Programs the end-to-end tests drive or inspect with, and the Debian package of each
/// (installed only when the program is missing).
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
    ("node", "nodejs"),
    ("java", "openjdk-17-jdk-headless"),
    ("go", "golang-go"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const EBPF_TOOLCHAIN: &str = "nightly";

#[derive(Parser)]
#[command(about = "tracer's project commands")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building (and, with --test, testing) needs; idempotent.
    Setup {
        /// Also install the servers and tools the end-to-end tests use.
        #[arg(long)]
        test: bool,
    },
    /// Set up, build the agent (release) and run it with the given arguments (needs root).
    Run {
        /// Arguments for tracer, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the whole suite: formatting, lints, unit tests and the root
    /// end-to-end tests against real servers.
    Test,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Setup { test } => setup(test),
        Cmd::Run { args } => {
            setup(false)?;
            cargo(&["build", "--release", "-p", "tracer-userspace"])?;
            require_root("the agent loads eBPF programs")?;
            let bin = workspace().join("target/release/tracer");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("tracer exited with {status}");
            }
            Ok(())
        }
        Cmd::Test => test(),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{why}: run this as root (for example with sudo -E)");
    }
    Ok(())
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed with {st}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    status(Command::new(cargo).current_dir(workspace()).args(args))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn package_installed(name: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Whether `program` is on the PATH (or in the sbin directories root has).
fn on_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .any(|dir| Path::new(dir).join(program).is_file())
}

fn setup(test: bool) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if test {
        missing.extend(
            TEST_PROGRAMS
                .iter()
                .filter(|(program, _)| !on_path(program))
                .map(|(_, package)| *package),
        );
    }
    if !missing.is_empty() {
        require_root(&format!("installing {}", missing.join(" ")))?;
        eprintln!("xtask: installing {}", missing.join(" "));
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        eprintln!("xtask: installing the {EBPF_TOOLCHAIN} toolchain");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to {EBPF_TOOLCHAIN}");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        status(
            Command::new("cargo")
                .env("PATH", path)
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ]),
        )?;
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    require_root("the end-to-end tests load eBPF programs")?;
    setup(true)?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--all-targets",
        "-p",
        "tracer-common",
        "-p",
        "tracer-userspace",
        "-p",
        "xtask",
        "-p",
        "tracer-e2e",
        "--",
        "-D",
        "warnings",
    ])?;
    // Unit tests: no root, no kernel.
    cargo(&[
        "test",
        "-p",
        "tracer-common",
        "-p",
        "tracer-userspace",
        "-p",
        "xtask",
    ])?;
    // End-to-end: the release agent against real servers, one test at a time (they share
    // the kernel and the machine's ports).
    cargo(&["build", "--release", "-p", "tracer-userspace"])?;
    let bin = workspace().join("target/release/tracer");
    // SAFETY: single-threaded at this point; the variable is read by the child cargo.
    unsafe { std::env::set_var("TRACER_BIN", &bin) };
    cargo(&[
        "test",
        "-p",
        "tracer-e2e",
        "--tests",
        "--",
        "--test-threads=1",
    ])
}
