//! Project commands: `cargo xtask setup | run | test | soak | bench | kernels | dist`.
//!
//! `setup` installs what a fresh Debian machine lacks to build the eBPF programs (LLVM 22,
//! bpf-linker, the nightly's rust-src) and, for tests, the real servers they drive and the
//! kernels (with QEMU and virtme-ng) the kernel matrix boots. It is idempotent and quick when
//! everything is present.

mod bench;
mod dist;
mod kernels;

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
    ("npm", "npm"),
    ("java", "openjdk-17-jdk-headless"),
    ("go", "golang-go"),
    ("ip", "iproute2"),
];
/// Debian libraries the end-to-end tests build against: Go's gRPC, for a Go server and client
/// (built in GOPATH mode from Debian's Go sources).
const TEST_LIBRARIES: &[&str] = &["golang-google-grpc-dev"];
/// Python packages the end-to-end tests use (an SDK-instrumented program, an aiohttp app, a
/// gRPC server and client), from PyPI.
const TEST_PYTHON_PACKAGES: &[&str] = &[
    "opentelemetry-sdk==1.39.1",
    "opentelemetry-exporter-otlp-proto-http==1.39.1",
    "aiohttp==3.14.5",
    "grpcio==1.85.1",
];
/// npm packages the end-to-end tests use (an express app, a gRPC server and client),
/// installed into `tests/scripts` where the scripts find them. Installed in one command:
/// `npm install --no-save` removes the packages it is not given.
const TEST_NODE_PACKAGES: &[&str] = &["express@5.3.0", "@grpc/grpc-js@1.14.7"];
/// The crates whose tests need neither root nor a kernel.
const HOST_CRATES: &[&str] = &["tracer-common", "tracer-userspace", "xtask"];
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
    /// Set up, then run the whole suite: formatting, lints, unit tests, the root end-to-end
    /// tests against real servers, and the kernel matrix (a subset of them on Debian's 6.1
    /// and 6.12 kernels under QEMU).
    Test,
    /// Run the agent for a long time under steady load and report its memory and open
    /// descriptors over time (needs root; not part of CI).
    Soak {
        /// How long, in minutes.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
    },
    /// Measure what tracing costs (needs root; prints a table and writes
    /// target/bench/latest.json).
    Bench {
        /// ABBA blocks of the saturation comparison.
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        /// Seconds per load leg.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of the completeness run at saturation.
        #[arg(long, default_value_t = 60)]
        saturation: u64,
        /// Keep-alive connections held open for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Instead of the full benchmark, compare this build with another agent binary
        /// (both ends of nginx traced at saturation, ABBA; then the Flask app, server traced).
        #[arg(long, value_name = "PATH")]
        baseline: Option<PathBuf>,
    },
    /// Boot Debian's 6.1 and 6.12 kernels under QEMU (software emulation) and run in each the
    /// agent's checks, a smoke test and a subset of the end-to-end tests, or COMMAND.
    Kernels {
        /// Which kernel series to boot.
        #[arg(long, default_value = "all", value_parser = ["6.1", "6.12", "all"])]
        kernel: String,
        /// Use this agent binary instead of building target/release/tracer.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Skip building and running the end-to-end subset.
        #[arg(long)]
        no_e2e: bool,
        /// Seconds one boot may take in all, its command included.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// A shell command to run in each guest (as root, after the environment checks)
        /// instead of the built-in suite, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Set up, build the agent (release) and gather what operators install in target/dist:
    /// the binary, a systemd unit with its environment file, a Containerfile and a Kubernetes
    /// DaemonSet (from deploy/), the unit checked with systemd-analyze and the manifest with
    /// kubernetes-validate.
    Dist {
        /// Put them here instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
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
        Cmd::Soak { minutes, rate } => soak(minutes, rate),
        Cmd::Bench {
            pairs,
            seconds,
            saturation,
            connections,
            baseline,
        } => bench::bench(bench::Opts {
            pairs,
            seconds,
            saturation,
            connections,
            baseline,
        }),
        Cmd::Kernels {
            kernel,
            agent,
            no_e2e,
            timeout,
            command,
        } => kernels::run(kernels::Opts {
            kernel,
            agent,
            no_e2e,
            timeout,
            command,
        }),
        Cmd::Dist { out } => dist::run(dist::Opts { out }),
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
        missing.extend(
            kernels::PACKAGES
                .iter()
                .chain(TEST_LIBRARIES)
                .copied()
                .filter(|p| !package_installed(p)),
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

    if test {
        install_node_packages()?;
    }

    if test
        && output(Command::new("python3").args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, aiohttp, grpc",
        ]))
        .is_none()
    {
        eprintln!("xtask: installing {}", TEST_PYTHON_PACKAGES.join(" "));
        status(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(TEST_PYTHON_PACKAGES),
        )?;
    }

    if test && kernels::vng().is_none() {
        eprintln!("xtask: installing {}", kernels::VIRTME_NG);
        status(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            kernels::VIRTME_NG,
        ]))?;
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
    // Every host crate; the eBPF crate is checked by its own build.
    let mut clippy = vec!["clippy", "--all-targets"];
    clippy.extend(HOST_CRATES.iter().flat_map(|c| ["-p", c]));
    clippy.extend(["-p", "tracer-e2e", "--", "-D", "warnings"]);
    cargo(&clippy)?;
    // Unit tests: no root, no kernel.
    let mut unit = vec!["test"];
    unit.extend(HOST_CRATES.iter().flat_map(|c| ["-p", c]));
    cargo(&unit)?;
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
    ])?;
    // What operators install: the environment file against the agent's flags, the unit and
    // the manifest against their validators.
    dist::run(dist::Opts {
        out: Some(workspace().join("target/dist-check")),
    })?;
    // The kernel matrix: Debian's 6.1 and 6.12 under QEMU, each with a subset of the above.
    kernels::run(kernels::Opts {
        kernel: "all".into(),
        agent: Some(bin),
        no_e2e: false,
        // A hung guest must not take CI's whole budget: boots take under a minute, and the
        // subset 12 to 15 minutes under emulation (more on a slow host), so 25 in all.
        timeout: 1500,
        command: Vec::new(),
    })
}

/// Stop a child when dropped: SIGTERM (nginx then stops its workers), SIGKILL after 5 s.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("nothing listens on port {port}")
}

/// nginx with two workers answering `body` on `listen` (an address, and `ssl` for TLS), run from a copy of its binary
/// named `name` (so that a filter on the process name picks only this one), configured in
/// `dir`; `main`, `events` and `http` add directives to those blocks.
fn start_nginx(
    dir: &Path,
    name: &str,
    listen: &str,
    body: &str,
    main: &str,
    events: &str,
    http: &str,
) -> anyhow::Result<Guard> {
    let conf = format!(
        "daemon off; worker_processes 2; {main} pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ {events} }}\n\
         http {{ access_log off; {http}\n\
         client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
         fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         server {{ listen {listen}; location / {{ return 200 \"{body}\\n\"; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let bin = dir.join(name);
    std::fs::copy(
        if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        },
        &bin,
    )
    .context("copying nginx")?;
    Ok(Guard(
        Command::new(&bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .spawn()
            .context("starting nginx")?,
    ))
}

/// nginx, an OTLP/HTTP sink, the agent tracing nginx and exporting to the sink, and a steady
/// load; the agent's RSS and descriptors are sampled every 30 s.
fn soak(minutes: u64, rate: u64) -> anyhow::Result<()> {
    require_root("the soak test loads eBPF programs")?;
    setup(true)?;
    cargo(&["build", "--release", "-p", "tracer-userspace"])?;
    let ws = workspace();
    let dir = std::env::temp_dir().join(format!("tracer-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (web, sink_port) = (18_680u16, 18_681u16);
    // Its own process name, so that only this nginx is traced.
    let _nginx = start_nginx(
        &dir,
        "soak-nginx",
        &format!("127.0.0.1:{web}"),
        "soak",
        "",
        "worker_connections 1024;",
        "",
    )?;
    let _sink = Guard(
        Command::new("python3")
            .arg(ws.join("tests/scripts/sink.py"))
            .arg(sink_port.to_string())
            .spawn()
            .context("starting the OTLP sink")?,
    );
    wait_port(web)?;
    wait_port(sink_port)?;
    let agent = Guard(
        Command::new(ws.join("target/release/tracer"))
            .args(["--comm", "soak-nginx", "--otlp-endpoint"])
            .arg(format!("http://127.0.0.1:{sink_port}"))
            .spawn()
            .context("starting tracer")?,
    );
    let pid = agent.0.id();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let seconds = minutes * 60;
    let mut load = Command::new("python3")
        .arg(ws.join("tests/scripts/load.py"))
        .args([web.to_string(), rate.to_string(), seconds.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the load")?;
    println!("minute  rss_kib  fds");
    let start = std::time::Instant::now();
    let mut samples = Vec::new();
    while load.try_wait()?.is_none() {
        let sample = (
            start.elapsed().as_secs_f64() / 60.0,
            proc_status(pid, "VmRSS:"),
            open_fds(pid),
        );
        println!("{:6.1}  {:7}  {:3}", sample.0, sample.1, sample.2);
        samples.push(sample);
        for _ in 0..30 {
            if load.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let out = load.wait_with_output()?;
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_string();
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let after_warmup: Vec<_> = samples.iter().filter(|s| s.0 >= 1.0).collect();
    if let (Some(first), Some(last)) = (after_warmup.first(), after_warmup.last()) {
        let max = after_warmup.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "requests sent: {sent}; RSS after 1 min {} KiB, at the end {} KiB, peak {max} KiB; fds {} -> {}",
            first.1, last.1, first.2, last.2
        );
    }
    Ok(())
}

/// Install [`TEST_NODE_PACKAGES`] into `tests/scripts/node_modules` unless they are there.
fn install_node_packages() -> anyhow::Result<()> {
    let dir = workspace().join("tests/scripts");
    let missing = TEST_NODE_PACKAGES.iter().any(|p| {
        let (name, version) = p.rsplit_once('@').expect("packages are name@version");
        let manifest = dir.join("node_modules").join(name).join("package.json");
        !std::fs::read_to_string(manifest)
            .is_ok_and(|m| m.contains(&format!("\"version\": \"{version}\"")))
    });
    if missing {
        eprintln!("xtask: installing {}", TEST_NODE_PACKAGES.join(" "));
        status(
            Command::new("npm")
                .args(["install", "--no-save", "--no-package-lock", "--no-audit"])
                .args(["--no-fund", "--prefix"])
                .arg(&dir)
                .args(TEST_NODE_PACKAGES),
        )?;
    }
    Ok(())
}
