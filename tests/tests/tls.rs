//! TLS on a traced port, seen from the socket syscalls alone: ciphertext is recognised at its
//! first record, gives no span and no garbage, and the kernel stops copying it.

use std::{process::Command, time::Duration};

use tracer_e2e::{
    agent::{Agent, sample},
    free_port,
    servers::{python_https, run_client, script},
};

const TLS_CONNECTIONS: &str = "tracer_tls_connections_total";
const KERNEL_EVENTS: &str = "tracer_kernel_events_total";

#[test]
fn tls_ciphertext_is_recognised_and_no_longer_copied() {
    let server = python_https(free_port());
    let metrics = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--prometheus-port",
            &metrics,
            "--output",
            "json",
        ],
        &[],
    );
    // One keep-alive connection: a page; a pause, in which the agent sees the first records
    // and mutes the connection (its events wait 50 ms to be put in order); then 5 MB
    // (hundreds of TLS records, each a read or a write on both ends) and the page again.
    let run = run_client(
        Command::new("python3")
            .arg(script("https_client.py"))
            .args([&server.port.to_string(), "1", "/big", "/"]),
    );
    assert_eq!(run.statuses, vec![200, 200, 200]);
    // Both ends of the connection are traced processes: both are recognised.
    let m = agent.metrics_when(Duration::from_secs(10), |m| {
        m.get(TLS_CONNECTIONS) == Some(&2.0)
    });
    assert_eq!(sample(&m, TLS_CONNECTIONS), 2.0, "{m:?}");
    assert_eq!(
        sample(&m, "tracer_spans_total"),
        0.0,
        "no span from ciphertext"
    );
    assert_eq!(sample(&m, "tracer_desyncs_total"), 0.0, "{m:?}");
    assert_eq!(sample(&m, "tracer_unmatched_responses_total"), 0.0, "{m:?}");
    // 5 MB moved as some 320 records of 16 KiB, at least one syscall each on each end:
    // copied whole, well over 600 events. Muted after the first records, a few dozen.
    let events = sample(&m, KERNEL_EVENTS);
    assert!(
        events < 200.0,
        "the kernel kept copying ciphertext: {events} events"
    );
    agent.stop();
    let printed = agent.stdout();
    assert!(printed.is_empty(), "no span printed: {printed:?}");
}

/// The `tls library` lines of `tracer check ARGS`.
fn tls_lines(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(tracer_e2e::agent::binary())
        .arg("check")
        .args(args)
        .output()
        .expect("running tracer check");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("info  tls library"))
        .map(str::to_string)
        .collect()
}

/// The line about the library at `path`.
fn line_of<'l>(lines: &'l [String], path: &str) -> &'l str {
    lines
        .iter()
        .find(|l| l.contains(&format!(" in {path} (")))
        .unwrap_or_else(|| panic!("no tls library line for {path}: {lines:#?}"))
}

#[test]
fn check_finds_the_tls_libraries_of_running_programs() {
    use tracer_e2e::servers::{go_binary, go_binary_stripped, spawn_server};
    // CPython maps the shared libssl once it imports ssl; Node links OpenSSL into its
    // executable; Go has crypto/tls, found by its symbols or, stripped, by Go's own table.
    let python = python_https(free_port());
    let node_port = free_port();
    let node = spawn_server(
        std::process::Command::new("node")
            .arg(tracer_e2e::servers::script("server.js"))
            .arg(node_port.to_string()),
        node_port,
    );
    let go = free_port();
    let _go = spawn_server(
        std::process::Command::new(go_binary()).args(["serve", &go.to_string()]),
        go,
    );
    let stripped = free_port();
    let _stripped = spawn_server(
        std::process::Command::new(go_binary_stripped()).args(["serve", &stripped.to_string()]),
        stripped,
    );
    let lines = tls_lines(&[]);
    let libssl = line_of(&lines, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
    assert!(libssl.contains("OpenSSL"), "{libssl}");
    assert!(
        libssl.contains("(SSL_read, SSL_write, SSL_read_ex, SSL_write_ex;"),
        "{libssl}"
    );
    let node_line = line_of(&lines, "/usr/bin/node");
    assert!(
        node_line.contains("OpenSSL") && node_line.contains("SSL_read_ex"),
        "{node_line}"
    );
    // As the processes map them: the real path.
    let real = |p: std::path::PathBuf| std::fs::canonicalize(p).unwrap().display().to_string();
    let go_line = line_of(&lines, &real(go_binary()));
    assert!(go_line.contains("Go crypto/tls"), "{go_line}");
    assert!(
        go_line.contains("crypto/tls.(*Conn).Read") && go_line.contains("crypto/tls.(*Conn).Write"),
        "{go_line}"
    );
    assert!(!go_line.contains("stripped"), "{go_line}");
    let stripped_line = line_of(&lines, &real(go_binary_stripped()));
    assert!(
        stripped_line.contains("crypto/tls.(*Conn).Read")
            && stripped_line.contains("crypto/tls.(*Conn).Write")
            && stripped_line.contains("stripped, found in .gopclntab"),
        "{stripped_line}"
    );
    // Every plaintext function found leaves by `ret` alone: probes on those instructions see
    // its results with no return probe.
    for line in [libssl, node_line, go_line, stripped_line] {
        assert!(line.contains("each returns only by ret"), "{line}");
    }
    // The process filters narrow the list to the processes they select.
    let only_python = tls_lines(&["--pid", &python.pid().to_string()]);
    assert_eq!(only_python.len(), 1, "{only_python:#?}");
    assert!(
        only_python[0].contains("libssl.so.3")
            && only_python[0].ends_with(&format!("process {}", python.pid())),
        "{only_python:#?}"
    );
    let only_node = tls_lines(&["--comm", "node"]);
    assert!(
        !only_node.is_empty() && only_node.iter().all(|l| l.contains(" in /usr/bin/node (")),
        "{only_node:#?}"
    );
    let nothing = tls_lines(&["--pid", &std::process::id().to_string()]);
    assert_eq!(
        nothing,
        vec!["info  tls library     none found in the processes --pid and --comm select"]
    );
    drop((python, node));
}
