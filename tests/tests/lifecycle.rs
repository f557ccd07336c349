//! The agent's life: ready, terminal output, clean SIGTERM/SIGINT, clear errors, an
//! unreachable backend that costs spans but nothing else, and the counters it serves at
//! `/metrics` (read here instead of its log lines), garbage on that port included.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use tracer_e2e::{
    agent::{Agent, binary, http_get, loaded_program_ids, sample},
    free_port,
    servers::{curl, python_http},
    wait_for,
};

const SPANS: &str = "tracer_spans_total";
const EXPORTED: &str = "tracer_spans_exported_total";
const FAILED: &str = "tracer_spans_export_failed_total";
const DROPPED: &str = "tracer_spans_dropped_total";
const RINGBUF_FULL: &str = "tracer_kernel_losses_total{reason=\"ringbuf_full\"}";

/// Run the agent as `nobody`, with no capabilities.
fn unprivileged(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer through setpriv")
}

/// Wait until the agent reports a failed export.
fn wait_export_failure(agent: &Agent, limit: Duration) -> bool {
    wait_for(limit, || {
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("export of"))
            .then_some(())
    })
    .is_some()
}

/// Whether any of `ids` is still loaded in the kernel.
fn any_loaded(ids: &[u64]) -> bool {
    let loaded = loaded_program_ids();
    ids.iter().any(|id| loaded.contains(id))
}

#[test]
fn terminal_output_without_a_backend_and_clean_sigterm() {
    let server = python_http(free_port());
    let metrics_port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--prometheus-port",
            &metrics_port,
        ],
        &[],
    );
    let ids = agent.program_ids();
    assert!(ids.len() >= 20, "the agent holds its programs: {ids:?}");
    assert!(any_loaded(&ids), "programs are loaded while running");
    let run = curl(&format!("http://127.0.0.1:{}/index.html", server.port), &[]);
    let lines = wait_for(Duration::from_secs(10), || {
        let out = agent.stdout();
        (out.len() >= 2).then_some(out)
    })
    .expect("two span lines on stdout");
    let server_line = lines
        .iter()
        .find(|l| l.contains(" SERVER "))
        .expect("a SERVER line");
    assert!(
        server_line.contains(&format!("[{}]", server.pid())),
        "{server_line}"
    );
    assert!(server_line.contains("GET /index.html 200"), "{server_line}");
    let client_line = lines
        .iter()
        .find(|l| l.contains(" CLIENT "))
        .expect("a CLIENT line");
    assert!(
        client_line.contains(&format!("curl[{}]", run.pid)),
        "{client_line}"
    );
    // Printed spans count as exported once the batch is written.
    let m = agent.metrics_when(Duration::from_secs(10), |m| m.get(EXPORTED) == Some(&2.0));
    assert_eq!(sample(&m, SPANS), 2.0, "{m:?}");
    assert_eq!(sample(&m, EXPORTED), 2.0, "{m:?}");
    assert_eq!(sample(&m, FAILED), 0.0, "{m:?}");
    assert_eq!(sample(&m, DROPPED), 0.0, "{m:?}");
    assert_eq!(sample(&m, "tracer_export_queue_depth"), 0.0, "{m:?}");
    assert_eq!(sample(&m, RINGBUF_FULL), 0.0, "{m:?}");
    assert!(sample(&m, "tracer_kernel_events_total") >= 4.0, "{m:?}");
    assert!(sample(&m, "tracer_events_total") >= 4.0, "{m:?}");

    let status = agent.stop_within(Duration::from_secs(5));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    assert!(!any_loaded(&ids), "nothing left loaded after exit");
    // The stop report, for people, says what the last scrape said: nothing was added or lost
    // in the shutdown flush.
    assert!(
        agent.stderr().iter().any(|l| l
            .contains("stopped: 2 spans (2 exported, 0 failed to export, 0 rejected by the receiver, 0 dropped at the queue)")),
        "{:?}",
        agent.stderr()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", metrics_port.parse::<u16>().unwrap())).is_err(),
        "the metrics port is closed with the agent"
    );
}

#[test]
fn json_output_and_sigint() {
    let server = python_http(free_port());
    let mut agent = Agent::start(
        &["--port", &server.port.to_string(), "--output", "json"],
        &[],
    );
    curl(&format!("http://127.0.0.1:{}/", server.port), &[]);
    let lines = wait_for(Duration::from_secs(10), || {
        let out = agent.stdout();
        (out.len() >= 2).then_some(out)
    })
    .expect("two JSON lines");
    for line in &lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains("\"http.response.status_code\":200"), "{line}");
    }
    unsafe { libc::kill(agent.pid() as i32, libc::SIGINT) };
    let status = agent.stop_within(Duration::from_secs(5));
    // SIGINT already stopped it; the SIGTERM that follows finds it gone or exiting.
    assert!(status.success() || status.code().is_none(), "{status}");
}

#[test]
fn unreachable_backend_loses_spans_not_the_agent() {
    let server = python_http(free_port());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let metrics_port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--otlp-endpoint",
            &dead,
            "--prometheus-port",
            &metrics_port,
        ],
        &[],
    );
    for _ in 0..3 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
            200
        );
    }
    let warned = wait_export_failure(&agent, Duration::from_secs(15));
    assert!(warned, "export failures are reported: {:?}", agent.stderr());
    // Every span's export ends, in failure, once its retries are spent.
    let m = agent.metrics_when(Duration::from_secs(20), |m| m.get(FAILED) == Some(&6.0));
    assert_eq!(sample(&m, SPANS), 6.0, "{m:?}");
    assert_eq!(sample(&m, FAILED), 6.0, "{m:?}");
    assert_eq!(sample(&m, EXPORTED), 0.0, "{m:?}");
    assert_eq!(sample(&m, DROPPED), 0.0, "{m:?}");
    assert_eq!(sample(&m, RINGBUF_FULL), 0.0, "{m:?}");
    agent.stop();
}

/// Connect to the metrics port, send `bytes` (as much of them as the agent takes) and keep
/// the connection open, unread.
fn send_to(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics port");
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may answer and close before taking it all.
    let _ = s.write_all(bytes);
    s
}

/// Send `bytes` to the metrics port, say that is all, and take the answer.
fn exchange(port: u16, bytes: &[u8]) -> String {
    let s = send_to(port, bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    answer(s)
}

/// What the agent answered on `s`, if anything, before it closed.
fn answer(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn garbage_on_the_metrics_port_harms_nothing() {
    let server = python_http(free_port());
    let port = free_port();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--prometheus-port",
            &port.to_string(),
            "--output",
            "none",
        ],
        &[],
    );
    // Random bytes (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let r = exchange(port, &random);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400 "), "{r}");
    // Requests whose head never ends, more of them than are served at once, left open.
    let hanging: Vec<TcpStream> = (0..24)
        .map(|_| send_to(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    // A 1 MB header.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(big.len() + 1024 * 1024, b'a');
    let r = exchange(port, &big);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431 "), "{r}");
    // A scrape waits at most for the hanging clients' deadline, and is answered.
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    for s in hanging {
        assert_eq!(answer(s), "", "a head that never ends gets no answer");
    }
    assert_eq!(http_get(port, "/").0, 404);

    // Capture went on meanwhile.
    for _ in 0..2 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
            200
        );
    }
    let m = agent.metrics_when(Duration::from_secs(10), |m| m.get(EXPORTED) == Some(&4.0));
    assert_eq!(sample(&m, SPANS), 4.0, "{m:?}");
    assert_eq!(sample(&m, EXPORTED), 4.0, "{m:?}");
    assert_eq!(sample(&m, RINGBUF_FULL), 0.0, "{m:?}");
    agent.stop();
    let log = agent.stderr().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_metrics_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("binding a port");
    let port = taken.local_addr().unwrap().port();
    let (code, err) = run_agent(&["--port", "80", "--prometheus-port", &port.to_string()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "tracer: error: cannot serve metrics on 0.0.0.0:{port}: Address already in use \
             (os error 98); choose another --prometheus-port"
        ),
        "one clear line, before ready"
    );
    // Not a port at all: clap says so.
    let (code, err) = run_agent(&["--prometheus-port", "http"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("invalid value 'http' for '--prometheus-port <PORT>'"),
        "{err}"
    );
}

fn run_agent(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tracer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn malformed_flags_are_clear_errors() {
    for (args, needle) in [
        (&["--port", "0"][..], "not a TCP port"),
        (&["--port", "90-80"], "is empty"),
        (&["--pid", "x"], "invalid"),
        (&["--otlp-protocol", "http/json"], "http/json"),
        (
            &["--otlp-endpoint", "collector:4317"],
            "not an http:// or https:// URL",
        ),
    ] {
        let (code, err) = run_agent(args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.trim().lines().count() <= 6,
            "short error for {args:?}: {err}"
        );
    }
}

#[test]
fn malformed_header_variables_are_clear_errors_not_crashes() {
    let port = free_port().to_string();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "--port",
        port.as_str(),
        "--otlp-endpoint",
        endpoint.as_str(),
    ];
    let run = |value: &str| {
        let out = Command::new(binary())
            .args(args)
            .env("OTEL_EXPORTER_OTLP_HEADERS", value)
            .stdin(Stdio::null())
            .output()
            .expect("running tracer");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("authorization");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_HEADERS: `authorization` is not a key=value pair"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A broken escape before a multi-byte character once crashed the agent: now it starts.
    let mut agent = Agent::start(&args, &[("OTEL_EXPORTER_OTLP_HEADERS", "k=%a\u{e9}")]);
    agent.stop();
}

#[test]
fn not_root_is_a_one_line_error() {
    let out = unprivileged(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("must run as root"), "{err}");
}

#[test]
fn record_then_replay_without_root_gives_the_live_spans() {
    let receiver = tracer_e2e::receiver::Receiver::start();
    let server = python_http(free_port());
    let dir = tracer_e2e::servers::TempDir::new("rec");
    // Readable by the unprivileged user that replays it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let file = dir.path().join("traffic.rec");
    let port = server.port.to_string();
    let mut agent = Agent::start(
        &[
            "record",
            file.to_str().unwrap(),
            "--port",
            &port,
            "--otlp-endpoint",
            &receiver.grpc_url(),
            "--otlp-protocol",
            "grpc",
        ],
        &[],
    );
    curl(&format!("http://127.0.0.1:{port}/"), &[]);
    curl(&format!("http://127.0.0.1:{port}/nope"), &[]);
    let live = receiver.wait_spans(4, |_| true);
    agent.stop();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let out = unprivileged(&["replay", file.to_str().unwrap(), "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let mut want: Vec<_> = live
        .iter()
        .map(|s| {
            (
                if s.is_server() { "SERVER" } else { "CLIENT" }.to_string(),
                s.attr("url.path").str().to_string(),
                s.attr("http.response.status_code").int(),
                s.pid() as u64,
                s.span.start_time_unix_nano,
                s.span.end_time_unix_nano,
            )
        })
        .collect();
    let mut got: Vec<_> = replayed
        .iter()
        .map(|j| {
            (
                j["kind"].as_str().unwrap().to_string(),
                j["attributes"]["url.path"].as_str().unwrap().to_string(),
                j["attributes"]["http.response.status_code"]
                    .as_i64()
                    .unwrap(),
                j["resource"]["process.pid"].as_u64().unwrap(),
                j["start_time_unix_nano"].as_u64().unwrap(),
                j["end_time_unix_nano"].as_u64().unwrap(),
            )
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "the replay gives the spans seen live, to the nanosecond"
    );
}

#[test]
fn export_recovers_when_the_backend_comes_back() {
    let server = python_http(free_port());
    let otlp_port = free_port();
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let metrics_port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--otlp-endpoint",
            &endpoint,
            "--prometheus-port",
            &metrics_port,
        ],
        &[],
    );
    for _ in 0..3 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{}/down", server.port), &[]).status,
            404
        );
    }
    // Retries with backoff end in a reported failure; capture goes on meanwhile.
    let failed = wait_export_failure(&agent, Duration::from_secs(20));
    assert!(failed, "{:?}", agent.stderr());
    let receiver = tracer_e2e::receiver::Receiver::start_on(otlp_port);
    for _ in 0..2 {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{}/up", server.port), &[]).status,
            404
        );
    }
    let up = receiver.wait_spans(4, |s| s.attr("url.path").str() == "/up");
    assert_eq!(up.len(), 4, "spans flow again once the backend is back");
    // Requests still retrying when the receiver came back may have got through: every span
    // is settled one way or the other, the outage costs some and the receiver got the rest.
    let m = agent.metrics_when(Duration::from_secs(20), |m| {
        m.get(EXPORTED).unwrap_or(&0.0) + m.get(FAILED).unwrap_or(&0.0) == 10.0
    });
    agent.stop();
    assert_eq!(sample(&m, SPANS), 10.0, "{m:?}");
    assert_eq!(sample(&m, EXPORTED) + sample(&m, FAILED), 10.0, "{m:?}");
    assert!(sample(&m, FAILED) >= 1.0, "the outage is counted: {m:?}");
    assert_eq!(
        sample(&m, EXPORTED) as usize,
        receiver.spans().len(),
        "exported means received: {m:?}"
    );
    assert_eq!(sample(&m, DROPPED), 0.0, "{m:?}");
    assert_eq!(sample(&m, RINGBUF_FULL), 0.0, "{m:?}");
}

#[test]
fn sigkill_leaves_nothing_attached() {
    let server = python_http(free_port());
    let agent = Agent::start(&["--port", &server.port.to_string()], &[]);
    let ids = agent.program_ids();
    assert!(any_loaded(&ids));
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    let gone = wait_for(Duration::from_secs(10), || {
        (!any_loaded(&ids)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the kernel drops the programs with the agent's descriptors"
    );
    assert_eq!(
        curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
        200
    );
    drop(agent);
}

#[test]
fn check_reports_each_feature() {
    let out = Command::new(binary())
        .arg("check")
        .output()
        .expect("running tracer check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for name in [
        "kernel",
        "privileges",
        "btf",
        "tracefs",
        "cgroup v2",
        "lockdown",
        "kprobe",
        "fentry",
        "uprobe",
        "sock_ops",
        "sk_msg",
    ] {
        assert!(
            text.lines().any(|l| l.contains(&format!("  {name} "))),
            "no {name} line: {text}"
        );
    }
    // The agent's own programs go through the verifier. `--propagate` is optional: some
    // kernels' verifiers refuse its program (the kernel matrix runs this test on them too).
    for name in ["capture", "head search", "propagate", "tracepoint"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("no {name} line: {text}"));
        let optional_failure = name == "propagate" && line.ends_with("(optional)");
        assert!(line.starts_with("pass") || optional_failure, "{line}");
    }
    assert!(
        text.contains("the agent's 24 tracepoint programs load"),
        "{text}"
    );
    // Not root: a clear failure naming the fix, and exit 1.
    let out = unprivileged(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("run as root")),
        "{text}"
    );
}
