//! The agent's life: ready, terminal output, clean SIGTERM/SIGINT, clear errors, and an
//! unreachable backend that costs spans but nothing else.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tracer_e2e::{
    agent::{Agent, binary, loaded_program_ids},
    free_port,
    servers::{curl, python_http},
    wait_for,
};

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
    let mut agent = Agent::start(&["--port", &server.port.to_string()], &[]);
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

    let status = agent.stop_within(Duration::from_secs(5));
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
    assert!(!any_loaded(&ids), "nothing left loaded after exit");
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("stopped: 2 spans")),
        "{:?}",
        agent.stderr()
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
    let mut agent = Agent::start(
        &["--port", &server.port.to_string(), "--otlp-endpoint", &dead],
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
    agent.stop();
    let last = agent.stderr().join("\n");
    assert!(last.contains("stopped: 6 spans"), "{last}");
    assert!(!last.contains("0 failed to export"), "{last}");
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
        (&["--otlp-endpoint", "collector:4317"], "not an http:// URL"),
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
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--otlp-endpoint",
            &endpoint,
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
    agent.stop();
    assert_eq!(up.len(), 4, "spans flow again once the backend is back");
    let last = agent.stderr().join("\n");
    assert!(last.contains("stopped: 10 spans"), "{last}");
    assert!(
        !last.contains(" 0 failed to export"),
        "the outage is counted: {last}"
    );
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
