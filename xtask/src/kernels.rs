//! `cargo xtask kernels`: the agent on other kernels. Boots Debian's 6.1 and 6.12 kernels under
//! QEMU's software emulation (virtme-ng, this machine's root filesystem read-only) and runs, in
//! each, the checks of what the agent needs, `tracer check`, a smoke test with and without
//! `--propagate`, and a subset of the end-to-end tests; or any command given after `--`.
//!
//! A guest that dies before its command runs (about one boot in ten under emulation; one such
//! console showed an Oops on a stray int3 in code the kernel was patching) is a boot failure
//! and is retried, and so is a guest whose kernel hits that emulation fault later, as an Oops
//! or as a CPU looping on the breakpoint (stopped as soon as its console reports it); a test
//! that fails is not. The guest tells them apart by writing
//! `out/booted` as its first action and `out/result` as its last, in `target/kernels/SERIES/`,
//! a directory it shares with this machine; the kernel's console is kept in `out/vng.log`.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Debian packages the matrix needs: QEMU, a static busybox (virtme-ng builds an initramfs
/// with it: Debian's kernels have 9p as modules) and the kernels themselves.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "linux-image-amd64",
    "linux-image-6.12-amd64",
];
/// virtme-ng, from PyPI; its command is `vng`.
pub const VIRTME_NG: &str = "virtme-ng==1.42";

/// The kernel series of the matrix, and the Debian package that installs each.
const SERIES: &[(&str, &str)] = &[
    ("6.1", "linux-image-amd64"),
    ("6.12", "linux-image-6.12-amd64"),
];

/// The end-to-end tests run in each guest (test binary, exact test names): loading and
/// `tracer check`, capture, a 32-bit syscall skipped, detach on SIGINT and SIGKILL, filters,
/// a trace linked across two hosts (network namespaces) by `--propagate`, a chain of three
/// services linked on one host, with and without `--propagate`, and a `traceparent` found
/// past the capture window or in a later read of the head. The curl -> Python -> Node -> Java
/// chain of `traces` is left out: under emulation `java Server.java` takes 18-28 s to listen,
/// past the tests' 15 s.
const E2E_SUBSET: &[(&str, &[&str])] = &[
    (
        "lifecycle",
        &[
            "check_reports_each_feature",
            "json_output_and_sigint",
            "sigkill_leaves_nothing_attached",
        ],
    ),
    ("spans", &["python_server_and_curl_over_http_protobuf"]),
    // The syscall tracepoints skip a 32-bit syscall (the kernel checks the task's flag).
    (
        "descriptors",
        &["a_32_bit_syscall_is_not_read_as_a_64_bit_one"],
    ),
    (
        "filters",
        &[
            "pid_selects_exactly_that_process",
            "port_selects_connections_by_local_or_remote_port",
        ],
    ),
    (
        "propagate",
        &["propagate_links_hosts_and_adds_exactly_one_header"],
    ),
    (
        "traces",
        &[
            "python_chain_one_trace",
            "python_chain_one_trace_with_propagate",
            "a_traceparent_past_the_capture_window_is_continued",
            "a_traceparent_in_a_later_read_of_the_head_is_carried_on",
        ],
    ),
    // Uprobes on the entry and the `ret` instructions of the shared libssl, on both ends; and
    // of OpenSSL linked into node, on memory buffers.
    (
        "tls",
        &[
            "python_https_both_ends_are_traced_from_plaintext",
            "node_https_server_and_client_on_one_keep_alive_connection",
        ],
    ),
];

/// Boots per kernel: the first and up to two retries of a boot that failed.
const BOOT_ATTEMPTS: u32 = 3;
/// How long a guest may take to reach its command before the boot counts as failed.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(250);
/// How often the runner reads the guest's console for a CPU that will never recover.
const CONSOLE_LOOK: Duration = Duration::from_secs(5);

/// What `cargo xtask kernels` was asked for.
pub struct Opts {
    /// `6.1`, `6.12` or `all`.
    pub kernel: String,
    /// An agent binary to use instead of building `target/release/tracer`.
    pub agent: Option<PathBuf>,
    /// Skip building and running the end-to-end subset.
    pub no_e2e: bool,
    /// Seconds one boot may take in all, command included.
    pub timeout: u64,
    /// A command to run in each guest instead of the built-in suite.
    pub command: Vec<String>,
}

/// The `vng` command: on the PATH, or in the scripts directory of the `python3` pip installs
/// into.
pub fn vng() -> Option<PathBuf> {
    if crate::on_path("vng") {
        return Some(PathBuf::from("vng"));
    }
    let scripts = crate::output(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]))?;
    let path = Path::new(scripts.trim()).join("vng");
    path.is_file().then_some(path)
}

/// A version string as numbers, for ordering (`6.1.0-56-amd64` -> [6, 1, 0, 56, 64]).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The newest generic (not cloud, not rt) `/boot/vmlinuz-SERIES.*`.
fn find_vmlinuz(series: &str, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("vmlinuz-{series}.");
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/boot")
        .context("listing /boot")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let version = name.strip_prefix(&prefix)?;
            let generic = version.ends_with("-amd64")
                && !version.contains("-cloud-")
                && !version.contains("-rt-");
            generic.then(|| (version_key(version), e.path()))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no /boot/{prefix}*-amd64: install the Debian package {package} \
             (cargo xtask setup --test does)"
        ),
    }
}

/// Paths are written into the guest's shell script between single quotes.
fn quoted(path: &Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if s.contains('\'') {
        bail!("{s} contains a single quote, which the guest script cannot take");
    }
    Ok(format!("'{s}'"))
}

/// Build the end-to-end test binaries; returns (target name, executable) of each.
fn build_e2e(agent: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: building the end-to-end tests (cargo test -p tracer-e2e --no-run)");
    let out = Command::new(cargo)
        .current_dir(crate::workspace())
        .env("TRACER_BIN", agent)
        .args([
            "test",
            "-p",
            "tracer-e2e",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed with {}", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] == "compiler-artifact"
            && is_test
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

/// The script the guest runs. Its first action writes `out/booted`, its last `out/result`
/// (the number of failed steps, or the exit code of a custom command); what it prints goes to
/// `out/guest.log`.
fn guest_script(dir: &Path, custom: bool, e2e: bool) -> anyhow::Result<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    if path.contains('\'') {
        bail!("PATH contains a single quote, which the guest script cannot take");
    }
    let tests_dir = crate::workspace().join("tests");
    let mut s = format!(
        r#"#!/bin/bash
# Written by `cargo xtask kernels`; runs as root inside the guest.
D={dir}
O="$D/out"
cut -d' ' -f1 /proc/uptime > "$O/booted"
# Our output goes to a file of its own, which the host shows as it grows; vng's output is the
# kernel's console (out/vng.log), with which it would interleave out of order.
exec >> "$O/guest.log" 2>&1
# Debian's programs first: a pyenv shim takes 20 s to start a cold python3 under emulation.
export PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{path}'
export TRACER_BIN="$D/bin/tracer"
failed=0
pass() {{ echo "PASS  $*" | tee -a "$O/summary"; }}
fail() {{ echo "FAIL  $*" | tee -a "$O/summary"; failed=$((failed + 1)); }}
note() {{ echo "note  $*" | tee -a "$O/summary"; }}

echo "==== guest: $(uname -r), up $(cat "$O/booted") s when its command started"
note "kernel $(uname -r)"
if [ -r /sys/kernel/btf/vmlinux ]; then
    pass "btf: /sys/kernel/btf/vmlinux ($(stat -c %s /sys/kernel/btf/vmlinux) bytes)"
else
    fail "btf: /sys/kernel/btf/vmlinux is missing"
fi
if [ ! -d /sys/kernel/tracing/events/syscalls ]; then
    mount -t tracefs nodev /sys/kernel/tracing && note "mounted tracefs at /sys/kernel/tracing"
fi
if [ -d /sys/kernel/tracing/events/syscalls ]; then
    pass "tracefs: syscall tracepoints listed"
else
    fail "tracefs: /sys/kernel/tracing/events/syscalls is missing"
fi
cg=$(awk '$3 == "cgroup2" {{ print $2; exit }}' /proc/mounts)
if [ -z "$cg" ]; then
    mount -t cgroup2 none /sys/fs/cgroup && note "mounted cgroup2 at /sys/fs/cgroup" && cg=/sys/fs/cgroup
fi
if [ -n "$cg" ]; then pass "cgroup v2 at $cg"; else fail "cgroup v2 is not mounted"; fi
if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" {{ f = 1 }} END {{ exit !f }}' /proc/mounts; then
    mount -t bpf bpf /sys/fs/bpf && note "mounted bpffs at /sys/fs/bpf"
fi
if awk '$2 == "/sys/fs/bpf" && $3 == "bpf" {{ f = 1 }} END {{ exit !f }}' /proc/mounts; then
    pass "bpffs at /sys/fs/bpf"
else
    fail "bpffs is not mounted"
fi
if ! ip -o link show lo | grep -q '[<,]UP[,>]'; then
    ip link set lo up && note "brought lo up"
fi
if ip -o addr show lo | grep -q '127\.0\.0\.1'; then pass "loopback up (127.0.0.1)"; else fail "loopback has no 127.0.0.1"; fi
for p in python3 curl nginx ip; do
    if w=$(command -v "$p"); then pass "$p: $w"; else fail "$p is not on the PATH"; fi
done
# A program's first start reads it over 9p (seconds under emulation); later starts hit the
# page cache. Warm up what the tests start, so that their start-up timeouts measure the same
# thing as on a real machine.
for c in "python3 -c pass" "curl --version" "nginx -v" "node -e 0" "java -version" "$TRACER_BIN --version"; do
    start=$(date +%s%N)
    $c > /dev/null 2>&1
    note "first start of ${{c%% *}}: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
"#,
        dir = quoted(dir)?,
    );
    if custom {
        s.push_str(
            r#"
echo "==== guest: running the command"
bash "$D/command.sh"
rc=$?
echo "==== guest: the command exited $rc"
echo "$rc" > "$O/result"
"#,
        );
        return Ok(s);
    }
    s.push_str(
        r#"
echo "==== guest: tracer check"
"$TRACER_BIN" check > "$O/check.txt" 2>&1
rc=$?
cat "$O/check.txt"
if [ $rc = 0 ]; then pass "tracer check"; else fail "tracer check exited $rc"; fi

cd /tmp
python3 -m http.server 8000 --bind 127.0.0.1 > "$O/http-server.log" 2>&1 &
hp=$!
for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 2 http://127.0.0.1:8000/ && break
    sleep 0.3
done

# The agent's error in full: its last debug record (the error with the verifier's log, up to
# the chain of causes that repeats it) and its one-line message.
agent_error() {
    awk '/^\[[^]]*DEBUG\]/ { n = NR } { l[NR] = $0 }
        END { for (i = (n ? n : 1); i <= NR; i++) { if (l[i] ~ /^ *Caused by:/) break; print l[i] }
              print l[NR] }' "$1"
}

# smoke NAME ARGS...: the agent on port 8000, one curl, a SERVER span for GET / 200, SIGTERM.
smoke() {
    local name=$1
    shift
    local out="$O/$name.json" err="$O/$name.log" start=$SECONDS ready="" span="" rc
    echo "==== guest: smoke test $name: tracer --port 8000 --output json $*"
    RUST_LOG=info,tracer=debug "$TRACER_BIN" --port 8000 --output json "$@" > "$out" 2> "$err" &
    local ap=$!
    while [ $((SECONDS - start)) -lt 180 ]; do
        if grep -q ' ready: ' "$err"; then ready=1; break; fi
        kill -0 $ap 2> /dev/null || break
        sleep 0.5
    done
    if [ -z "$ready" ]; then
        if kill -0 $ap 2> /dev/null; then
            kill -KILL $ap
            wait $ap
            fail "$name: no ready line within 180 s"
        else
            wait $ap
            fail "$name: the agent exited $? before it was ready"
        fi
        echo "---- $name: the agent's error"
        agent_error "$err" | tee "$O/$name.error"
        return
    fi
    note "$name: ready after $((SECONDS - start)) s"
    grep -E ' (WARN|ERROR|INFO) *\] ' "$err"
    curl -s -o /dev/null --max-time 10 http://127.0.0.1:8000/
    for _ in $(seq 1 40); do
        if grep '"kind":"SERVER"' "$out" | grep '"http.request.method":"GET"' \
            | grep '"url.path":"/"' | grep -q '"http.response.status_code":200'; then
            span=1
            break
        fi
        sleep 0.5
    done
    if [ -n "$span" ]; then pass "$name: SERVER span GET / 200"; else fail "$name: no SERVER span GET / 200 within 20 s"; fi
    cat "$out"
    kill -TERM $ap
    for _ in $(seq 1 60); do
        kill -0 $ap 2> /dev/null || break
        sleep 0.5
    done
    if kill -0 $ap 2> /dev/null; then
        kill -KILL $ap
        wait $ap
        fail "$name: still running 30 s after SIGTERM"
    else
        wait $ap
        rc=$?
        if [ $rc = 0 ]; then pass "$name: exit 0 after SIGTERM"; else fail "$name: exit $rc after SIGTERM"; fi
    fi
    grep -E ' (WARN|ERROR) *\] |stopped: ' "$err"
}

smoke smoke
smoke smoke-propagate --propagate
kill $hp 2> /dev/null
wait $hp 2> /dev/null
"#,
    );
    if e2e {
        s.push_str(&format!("\ncd {}\n", quoted(&tests_dir)?));
        for (bin, tests) in E2E_SUBSET {
            s.push_str(&format!(
                r#"
echo "==== guest: end-to-end {bin}: {tests}"
start=$SECONDS
"$D/bin/e2e/{bin}" --exact --test-threads=1 {tests} > "$O/e2e-{bin}.log" 2>&1
rc=$?
cat "$O/e2e-{bin}.log"
# Every named test ran: a name that matches none would pass with nothing run.
if [ $rc = 0 ] && grep -q "test result: ok. {n} passed" "$O/e2e-{bin}.log"; then pass "e2e {bin} ({n} tests) in $((SECONDS - start)) s"; else fail "e2e {bin}: exit $rc after $((SECONDS - start)) s, {n} tests expected (see out/e2e-{bin}.log)"; fi
"#,
                tests = tests.join(" "),
                n = tests.len(),
            ));
        }
    }
    s.push_str(
        r#"
echo "==== guest: $failed failed"
echo "$failed" > "$O/result"
"#,
    );
    Ok(s)
}

/// How one kernel went.
struct Report {
    series: &'static str,
    vmlinuz: PathBuf,
    attempts: u32,
    boot: Option<Duration>,
    total: Duration,
    /// `Ok(0)`: all passed; `Ok(n)`: n failed steps (or a custom command's exit code);
    /// `Err`: no result.
    result: Result<i64, String>,
    summary: String,
}

/// How one boot ended.
enum Boot {
    /// The guest never reached its command.
    Failed(String),
    /// The guest ran its command: the boot time and its result.
    Ran(Duration, Result<i64, String>),
}

/// The process group of the running vng and its QEMU (0: none), for [`on_signal`].
static GROUP: AtomicI32 = AtomicI32::new(0);

/// On SIGINT or SIGTERM, take QEMU down with us: it runs in its own process group (so that
/// a timeout can stop vng and QEMU together), which a Ctrl-C at the terminal does not reach.
extern "C" fn on_signal(sig: libc::c_int) {
    let group = GROUP.load(Ordering::SeqCst);
    // SAFETY: kill, signal and raise are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn forward_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Stop the process group of `child` (vng and the QEMU it starts): SIGTERM, SIGKILL after 5 s.
fn stop_group(child: &mut Child) {
    let group = child.id() as i32;
    // SAFETY: kill(2) on the process group this runner created for the child.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above; the group may already be gone.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

/// Copy what the guest wrote to `log` since `offset` to our output.
fn stream(log: &Path, offset: &mut u64) {
    let Ok(mut f) = fs::File::open(log) else {
        return;
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    if let Ok(n) = f.read_to_end(&mut buf) {
        *offset += n as u64;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

/// A kernel crash as the console reported it.
#[derive(Debug)]
struct Crash {
    /// The report's first line, and where the kernel was (`RIP: ...`) when there is one.
    headline: String,
    /// The report without its register dump and code bytes.
    lines: Vec<String>,
}

impl Crash {
    /// A breakpoint left in code the kernel was patching, which QEMU's software emulation
    /// produces now and then (also at boot, with no program of ours loaded), in one of two
    /// forms: an Oops on an `int3` the kernel's handler does not know, or a CPU stuck in a
    /// soft lockup with `exc_int3` in its trace. The second is the same fault seen from the
    /// other side: the emulated CPU keeps executing an `int3` that memory no longer holds,
    /// and the kernel's breakpoint handler, finding the byte already restored, backs up to
    /// run it again, forever. Any other crash is a failure of the run.
    fn is_emulation_fault(&self) -> bool {
        self.headline.contains("int3") || self.is_int3_lockup()
    }

    /// A soft lockup of a CPU looping on a breakpoint: the guest never recovers from it, so
    /// the runner stops it at once instead of waiting out the time limit.
    fn is_int3_lockup(&self) -> bool {
        self.headline.contains("soft lockup") && self.lines.iter().any(|l| l.contains("exc_int3"))
    }
}

/// The first kernel crash in a console log, if any.
fn kernel_crash(console: &str) -> Option<Crash> {
    const STARTS: &[&str] = &[
        "BUG:",
        "Oops",
        "general protection fault",
        "kernel BUG at",
        "watchdog: BUG",
        "Kernel panic",
    ];
    // Console lines carry a `[   72.402549] ` timestamp.
    let text = |line: &str| -> String {
        let t = line.trim_start();
        match t.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((_, rest)) => rest.to_string(),
            None => t.to_string(),
        }
    };
    let all: Vec<String> = console.lines().map(text).collect();
    let first = all
        .iter()
        .position(|l| STARTS.iter().any(|s| l.starts_with(s)))?;
    // Register dumps (`RAX: ...`, `R10: ...`, `FS:  ...`, `PKRU: ...`) and code bytes say
    // nothing a reader of this report can use.
    let noise = |l: &str| {
        l.starts_with("Code:")
            || l.split_once(':').is_some_and(|(name, _)| {
                !["RIP", "CPU"].contains(&name)
                    && (2..=4).contains(&name.len())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            })
    };
    let mut lines = Vec::new();
    for l in &all[first..] {
        if !noise(l) {
            lines.push(l.clone());
        }
        if l.starts_with("Kernel panic") || lines.len() >= 40 {
            break;
        }
    }
    let mut headline = all[first].clone();
    if let Some(rip) = lines.iter().find(|l| l.starts_with("RIP:")) {
        headline = format!("{headline}; {rip}");
    }
    Some(Crash { headline, lines })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Boot `vmlinuz` once with the guest script of `dir`.
fn boot(vng: &Path, vmlinuz: &Path, dir: &Path, limit: Duration) -> anyhow::Result<Boot> {
    let out = dir.join("out");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.join("vng.log");
    let log = fs::File::create(&log_path).context("creating vng.log")?;
    let err = log.try_clone().context("duplicating vng.log")?;
    let script = dir.join("guest.sh");
    let mut child = Command::new(vng)
        .current_dir(dir)
        // --verbose: the kernel's console too, so that a guest that dies says why.
        .args(["--verbose", "--disable-kvm", "--run"])
        .arg(vmlinuz)
        .args(["--user", "root", "--cpus", "2", "--memory", "3G"])
        .arg(format!("--rwdir={}", dir.display()))
        .arg("--")
        .arg(format!("bash {}", quoted(&script)?))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", vng.display()))?;
    GROUP.store(child.id() as i32, Ordering::SeqCst);
    let start = Instant::now();
    let booted = out.join("booted");
    let mut boot_time = None;
    let guest_log = out.join("guest.log");
    let mut offset = 0;
    let mut last_look = Instant::now();
    let status = loop {
        stream(&guest_log, &mut offset);
        if let Some(status) = child.try_wait().context("waiting for vng")? {
            break Some(status);
        }
        if boot_time.is_none() && booted.exists() {
            let t = start.elapsed();
            eprintln!(
                "xtask: the guest reached its command after {:.1} s",
                t.as_secs_f64()
            );
            boot_time = Some(t);
        }
        if boot_time.is_none() && start.elapsed() > BOOT_LIMIT {
            eprintln!(
                "xtask: no guest command after {} s: stopping QEMU",
                BOOT_LIMIT.as_secs()
            );
            stop_group(&mut child);
            break None;
        }
        if last_look.elapsed() > CONSOLE_LOOK {
            last_look = Instant::now();
            let console = fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(crash) = kernel_crash(&console).filter(Crash::is_int3_lockup) {
                eprintln!(
                    "xtask: {}: a CPU loops on a breakpoint (an emulation fault): stopping QEMU",
                    crash.headline
                );
                stop_group(&mut child);
                break None;
            }
        }
        if start.elapsed() > limit {
            eprintln!(
                "xtask: the guest is still running after {} s: stopping QEMU",
                limit.as_secs()
            );
            stop_group(&mut child);
            break None;
        }
        std::thread::sleep(POLL);
    };
    GROUP.store(0, Ordering::SeqCst);
    stream(&guest_log, &mut offset);
    let boot_time = boot_time.or_else(|| booted.exists().then(|| start.elapsed()));
    let shown = status.map_or("stopped by xtask".to_string(), |s| s.to_string());
    let Some(boot_time) = boot_time else {
        let console = fs::read_to_string(&log_path).unwrap_or_default();
        return Ok(Boot::Failed(match kernel_crash(&console) {
            Some(crash) => format!(
                "vng ended ({shown}) before the guest command ran; the kernel crashed:\n{}",
                crash.lines.join("\n")
            ),
            None => format!(
                "vng ended ({shown}) before the guest command ran; the console's last lines:\n{}",
                tail(&log_path, 30)
            ),
        }));
    };
    let result = match fs::read_to_string(out.join("result")) {
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|e| format!("out/result holds {text:?}: {e}")),
        Err(_) => {
            let console = fs::read_to_string(&log_path).unwrap_or_default();
            match kernel_crash(&console) {
                Some(crash) if crash.is_emulation_fault() => {
                    return Ok(Boot::Failed(format!(
                        "the guest's kernel stopped on a breakpoint left by patching (an emulation fault): {}",
                        crash.headline
                    )));
                }
                Some(crash) => {
                    eprintln!(
                        "xtask: the guest's kernel crashed:\n{}",
                        crash.lines.join("\n")
                    );
                    Err(format!(
                        "the guest's kernel crashed: {}\n{}",
                        crash.headline,
                        crash.lines.join("\n")
                    ))
                }
                None => {
                    eprintln!(
                        "xtask: the guest stopped before its command finished; the console's last lines:\n{}",
                        tail(&log_path, 40)
                    );
                    Err(format!(
                        "the guest stopped before its command finished (vng: {shown})"
                    ))
                }
            }
        }
    };
    Ok(Boot::Ran(boot_time, result))
}

/// Prepare `target/kernels/SERIES/` and boot the kernel, retrying a boot that failed.
fn run_kernel(
    (series, package): (&'static str, &str),
    vng: &Path,
    agent: &Path,
    e2e: &[(String, PathBuf)],
    opts: &Opts,
) -> anyhow::Result<Report> {
    let vmlinuz = find_vmlinuz(series, package)?;
    let dir = crate::workspace().join("target/kernels").join(series);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let bin = dir.join("bin");
    fs::create_dir_all(bin.join("e2e")).with_context(|| format!("creating {}", bin.display()))?;
    // Copies: the guest reads this machine's files live, and a build may replace them meanwhile.
    fs::copy(agent, bin.join("tracer"))
        .with_context(|| format!("copying {} into {}", agent.display(), bin.display()))?;
    for (name, exe) in e2e {
        fs::copy(exe, bin.join("e2e").join(name))
            .with_context(|| format!("copying {}", exe.display()))?;
    }
    let custom = !opts.command.is_empty();
    if custom {
        fs::write(dir.join("command.sh"), opts.command.join(" ") + "\n")
            .context("writing command.sh")?;
    }
    fs::write(
        dir.join("guest.sh"),
        guest_script(&dir, custom, !e2e.is_empty())?,
    )
    .context("writing guest.sh")?;

    let start = Instant::now();
    let limit = Duration::from_secs(opts.timeout);
    for attempt in 1..=BOOT_ATTEMPTS {
        eprintln!(
            "xtask: booting {} ({series}), attempt {attempt} of {BOOT_ATTEMPTS}",
            vmlinuz.display()
        );
        match boot(vng, &vmlinuz, &dir, limit)? {
            Boot::Failed(why) => eprintln!("xtask: boot failed: {why}"),
            Boot::Ran(boot_time, result) => {
                return Ok(Report {
                    series,
                    vmlinuz,
                    attempts: attempt,
                    boot: Some(boot_time),
                    total: start.elapsed(),
                    result,
                    summary: fs::read_to_string(dir.join("out/summary")).unwrap_or_default(),
                });
            }
        }
    }
    Ok(Report {
        series,
        vmlinuz,
        attempts: BOOT_ATTEMPTS,
        boot: None,
        total: start.elapsed(),
        result: Err(format!("the guest failed to boot {BOOT_ATTEMPTS} times")),
        summary: String::new(),
    })
}

/// Hold `target/kernels/.lock` for as long as the returned file is open: a second run in the
/// same workspace would remove the directories the first one's guests are using.
fn lock() -> anyhow::Result<fs::File> {
    let dir = crate::workspace().join("target/kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        bail!(
            "another `cargo xtask kernels` is running in this workspace ({} is locked)",
            path.display()
        );
    }
    Ok(file)
}

pub fn run(opts: Opts) -> anyhow::Result<()> {
    let _lock = lock()?;
    crate::setup(true)?;
    let vng = vng().context(
        "vng (virtme-ng) is not installed: run cargo xtask setup --test, or pip install virtme-ng",
    )?;
    let agent = match &opts.agent {
        Some(p) => fs::canonicalize(p).with_context(|| format!("agent binary {}", p.display()))?,
        None => {
            crate::cargo(&["build", "--release", "-p", "tracer-userspace"])?;
            crate::workspace().join("target/release/tracer")
        }
    };
    let e2e = if opts.no_e2e || !opts.command.is_empty() {
        Vec::new()
    } else {
        let built = build_e2e(&agent)?;
        let mut picked = Vec::new();
        for (name, _) in E2E_SUBSET {
            let (_, exe) = built
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("cargo built no end-to-end test binary named {name}"))?;
            picked.push((name.to_string(), exe.clone()));
        }
        picked
    };
    let chosen: Vec<_> = SERIES
        .iter()
        .filter(|(s, _)| opts.kernel == "all" || opts.kernel == *s)
        .collect();
    forward_signals();
    let mut reports = Vec::new();
    for &series in chosen {
        reports.push(run_kernel(series, &vng, &agent, &e2e, &opts)?);
    }

    println!("\n==== kernels");
    let mut bad = Vec::new();
    for r in &reports {
        let boot = r
            .boot
            .map_or("never".to_string(), |t| format!("{:.1} s", t.as_secs_f64()));
        let verdict = match &r.result {
            Ok(0) => "pass".to_string(),
            Ok(n) if opts.command.is_empty() => format!("FAIL ({n} failed)"),
            Ok(n) => format!("FAIL (exit {n})"),
            Err(e) => format!("FAIL ({e})"),
        };
        println!(
            "{:<5} {}  boots {}  reached its command after {boot}  in all {:.0} s  {verdict}",
            r.series,
            r.vmlinuz.display(),
            r.attempts,
            r.total.as_secs_f64(),
        );
        for line in r.summary.lines().filter(|l| !l.starts_with("PASS")) {
            println!("      {line}");
        }
        if r.result != Ok(0) {
            bad.push(r.series);
        }
    }
    println!(
        "(guest outputs: {}/SERIES/out)",
        crate::workspace().join("target/kernels").display()
    );
    if !bad.is_empty() {
        bail!("failed on {}", bad.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("6.1.0-56-amd64") > version_key("6.1.0-9-amd64"));
        assert!(version_key("6.12.117+deb12-amd64") > version_key("6.12.57+deb12-amd64"));
    }

    const PANIC: &str = "[   70.1] virtme-ng-init: starting script
[   72.402001] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[   72.402100] CPU: 1 UID: 0 PID: 0 Comm: swapper/1 Not tainted 6.12.117+deb12-amd64 #1
[   72.402200] RIP: 0010:tcp_v4_rcv+0x5a1/0x1080
[   72.402300] Code: 48 8b 44 24 08 <cc> 1f 44 00 00
[   72.402400] RSP: 0018:ffffb0c9c0003c88 EFLAGS: 00000246
[   72.402549] R10: 0000000000000001 R11: ffffffffade5a380 R12: ff3b31c0802fa100
[   72.402562] FS:  00007f9f00808cc0(0000) GS:ff3b31c0bcb00000(0000) knlGS:0000000000000000
[   72.402586] PKRU: 55555554
[   72.402600] Call Trace:
[   72.402700]  <IRQ>
[   72.402750]  ip_protocol_deliver_rcu+0x3b/0x190
[   72.402812] Kernel panic - not syncing: Fatal exception in interrupt
[   72.404124] Kernel Offset: 0x2b200000 from 0xffffffff81000000
";

    #[test]
    fn a_crash_is_reported_without_its_register_dump() {
        let crash = kernel_crash(PANIC).expect("a crash");
        assert_eq!(
            crash.headline,
            "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; RIP: 0010:tcp_v4_rcv+0x5a1/0x1080"
        );
        assert_eq!(
            crash.lines.first().unwrap(),
            "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
        );
        assert_eq!(
            crash.lines.last().unwrap(),
            "Kernel panic - not syncing: Fatal exception in interrupt"
        );
        let text = crash.lines.join("\n");
        for kept in ["Comm: swapper/1", "Call Trace:", "ip_protocol_deliver_rcu"] {
            assert!(text.contains(kept), "{text}");
        }
        for dropped in ["Code:", "RSP:", "R10:", "FS:", "PKRU:", "Kernel Offset"] {
            assert!(!text.contains(dropped), "{text}");
        }
        assert!(crash.is_emulation_fault());
    }

    #[test]
    fn only_a_stray_int3_counts_as_an_emulation_fault() {
        let gp = PANIC.replace("Oops: int3: 0000", "Oops: general protection fault: 0000");
        assert!(!kernel_crash(&gp).unwrap().is_emulation_fault());
        let null = "[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n";
        let crash = kernel_crash(null).unwrap();
        assert_eq!(
            crash.headline,
            "BUG: kernel NULL pointer dereference, address: 0000000000000008"
        );
        assert!(!crash.is_emulation_fault());
        assert!(kernel_crash("[ 1.0] virtme-ng-init: udev is done\n").is_none());
    }

    /// A 6.1 guest's report of a CPU looping on a breakpoint (frames marked `?` are
    /// addresses found on the stack: what the CPU last ran besides the interrupted code).
    const INT3_LOCKUP: &str =
        "[  912.3] watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [bpftool:657]
[  912.3] Modules linked in: 9p netfs virtio_net
[  912.3] CPU: 0 PID: 657 Comm: bpftool Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1
[  912.3] RIP: 0010:syscall_trace_enter.constprop.0+0xe9/0x1c0
[  912.3] RSP: 0018:ffffa1b2c0a4ff10 EFLAGS: 00000246
[  912.3] Call Trace:
[  912.3]  <TASK>
[  912.3]  ? exc_int3+0x3a/0xb0
[  912.3]  ? do_sync_core+0x2a/0x30
[  912.3]  ? copy_from_kernel_nofault+0x1f/0xe0
[  912.3]  do_syscall_64+0x4d/0xc0
[  912.3]  entry_SYSCALL_64_after_hwframe+0x64/0xce
";

    #[test]
    fn a_cpu_looping_on_a_breakpoint_is_an_emulation_fault() {
        let crash = kernel_crash(INT3_LOCKUP).expect("a crash");
        assert_eq!(
            crash.headline,
            "watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [bpftool:657]; \
             RIP: 0010:syscall_trace_enter.constprop.0+0xe9/0x1c0"
        );
        assert!(crash.is_int3_lockup());
        assert!(crash.is_emulation_fault());
        // A lockup anywhere else is a failure of the run, and so is the trace without the
        // soft lockup.
        let elsewhere = INT3_LOCKUP.replace("exc_int3", "tcp_sendmsg");
        let crash = kernel_crash(&elsewhere).unwrap();
        assert!(!crash.is_int3_lockup() && !crash.is_emulation_fault());
        let hard = INT3_LOCKUP.replace("soft lockup", "hard LOCKUP");
        assert!(!kernel_crash(&hard).unwrap().is_emulation_fault());
    }

    #[test]
    fn guest_script_marks_boot_first_and_result_last() {
        let s = guest_script(Path::new("/x/y"), false, true).unwrap();
        let first = s
            .lines()
            .find(|l| l.contains("out/") || l.contains("\"$O/"));
        assert!(first.is_some_and(|l| l.contains("booted")), "{s}");
        assert!(
            s.trim_end().ends_with("echo \"$failed\" > \"$O/result\""),
            "{s}"
        );
        for (bin, _) in E2E_SUBSET {
            assert!(s.contains(&format!("\"$D/bin/e2e/{bin}\"")), "{s}");
        }
    }
}
