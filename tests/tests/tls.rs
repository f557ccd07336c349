//! HTTPS: spans from TLS libraries' plaintext (OpenSSL shared and linked in, Go crypto/tls
//! also stripped) with the programs of every test client and server untouched; and TLS seen
//! from the socket syscalls alone (`--no-tls`): ciphertext is recognised at its first record,
//! gives no span and no garbage, and the kernel stops copying it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tracer_e2e::{
    agent::{Agent, sample},
    free_port, hex,
    receiver::{Received, Receiver},
    servers::{
        curl, curl_many, go_binary, go_https, nginx_https, node_https, python_https,
        python_https_calling, run_client, script,
    },
};

/// Every span is HTTPS, each server span's parent is a client span of the same trace (both
/// ends on this host), and the client spans' `url.full` names the server.
fn assert_https_pairs(spans: &[Received], port: u16) {
    let servers: Vec<&Received> = spans.iter().filter(|s| s.is_server()).collect();
    let clients: Vec<&Received> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(servers.len(), clients.len(), "{spans:#?}");
    for s in spans {
        assert_eq!(s.attr("url.scheme").str(), "https", "{s:#?}");
        assert_eq!(s.attr("http.response.status_code").int(), 200, "{s:#?}");
    }
    for c in &clients {
        let full = c.attr("url.full").str();
        let path = c.attr("url.path").str();
        assert!(
            full.starts_with("https://") && full.ends_with(&format!(":{port}{path}")),
            "{full}"
        );
    }
    for s in &servers {
        let parent = clients
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .unwrap_or_else(|| panic!("server span without its client: {s:#?}"));
        assert_eq!(parent.span.trace_id, s.span.trace_id);
        assert_eq!(parent.attr("url.path"), s.attr("url.path"));
    }
}

/// Start a client with piped standard output (and `stdin`), and wait for its first line.
fn spawn_until_first_line(cmd: &mut Command, stdin: Stdio) -> (Child, Lines, String) {
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, out, line.trim().to_string())
}

type Lines = BufReader<std::process::ChildStdout>;

fn paths(spans: &[Received], server: bool) -> Vec<String> {
    let mut v: Vec<String> = spans
        .iter()
        .filter(|s| s.is_server() == server)
        .map(|s| s.attr("url.path").str().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn python_https_both_ends_are_traced_from_plaintext() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    // One keep-alive connection (Python's ssl module: SSL_read_ex/SSL_write_ex of the shared
    // libssl on both ends): a page, 5 MB, the page again.
    let run = run_client(
        Command::new("python3")
            .arg(script("https_client.py"))
            .args([&port.to_string(), "0.2", "/big", "/"]),
    );
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "one span per exchange and end: {spans:#?}");
    assert_https_pairs(&spans, port);
    for s in &spans {
        let pid = if s.is_server() { server.pid() } else { run.pid };
        assert_eq!(s.pid(), pid, "{s:#?}");
    }
    assert_eq!(paths(&spans, true), vec!["/", "/", "/big"]);
    let big = spans
        .iter()
        .filter(|s| s.attr("url.path").str() == "/big")
        .collect::<Vec<_>>();
    assert_eq!(big.len(), 2);
    for s in big {
        assert_eq!(s.attr("http.response.body.size").int(), 5 * 1024 * 1024);
    }
    // One connection: the server saw one client port.
    let ports: std::collections::HashSet<i64> = spans
        .iter()
        .filter(|s| s.is_server())
        .map(|s| s.attr("client.port").int())
        .collect();
    assert_eq!(ports.len(), 1);
}

#[test]
fn a_three_service_https_chain_is_one_trace_with_every_parent_right() {
    let receiver = Receiver::start();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let last = python_https(c);
    let middle = python_https_calling(b, Some(c));
    let first = python_https_calling(a, Some(b));
    let ports: Vec<String> = [a, b, c].iter().map(u16::to_string).collect();
    let mut args = Vec::new();
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let mut agent = Agent::exporting(&receiver, &args);
    let run = curl(
        &format!("https://127.0.0.1:{a}/chain"),
        &["-k", "--http1.1"],
    );
    assert_eq!(run.status, 200);
    // curl -> first -> middle -> last: a client and a server span per hop.
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let find = |pid: u32, server: bool| -> &Received {
        spans
            .iter()
            .find(|s| s.pid() == pid && s.is_server() == server)
            .unwrap_or_else(|| panic!("no span of {pid} (server {server}): {spans:#?}"))
    };
    let chain = [
        find(run.pid, false),
        find(first.pid(), true),
        find(first.pid(), false),
        find(middle.pid(), true),
        find(middle.pid(), false),
        find(last.pid(), true),
    ];
    assert!(
        chain[0].span.parent_span_id.is_empty(),
        "curl's span is the root"
    );
    for pair in chain.windows(2) {
        assert_eq!(pair[1].span.trace_id, chain[0].span.trace_id, "one trace");
        assert_eq!(
            pair[1].span.parent_span_id, pair[0].span.span_id,
            "{:#?} is not the parent of {:#?}",
            pair[0], pair[1]
        );
    }
    for s in &chain {
        assert_eq!(s.attr("url.scheme").str(), "https");
        assert_eq!(s.attr("url.path").str(), "/chain");
    }
}

#[test]
fn concurrent_https_connections_pair_exactly() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    // Eight clients at once, each on its own keep-alive connection: "/" then two of its own.
    let clients: Vec<std::process::Child> = (0..8)
        .map(|i| {
            Command::new("python3")
                .arg(script("https_client.py"))
                .args([port.to_string(), "0".into()])
                .args([format!("/c{i}/0"), format!("/c{i}/1")])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let spans = receiver.wait_spans(48, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 48, "{} spans", spans.len());
    assert_https_pairs(&spans, port);
    let mut expected: Vec<String> = (0..8)
        .flat_map(|i| ["/".to_string(), format!("/c{i}/0"), format!("/c{i}/1")])
        .collect();
    expected.sort();
    assert_eq!(paths(&spans, true), expected);
    assert_eq!(paths(&spans, false), expected);
}

#[test]
fn a_5_mb_request_body_over_tls_and_an_incoming_traceparent() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    let dir = std::env::temp_dir().join(format!("tracer-e2e-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("body.bin");
    std::fs::write(&body, vec![b'u'; 5 * 1024 * 1024]).unwrap();
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let upload = format!("@{}", body.display());
    let header = format!("traceparent: 00-{trace}-{parent}-01");
    let run = curl(
        &format!("https://127.0.0.1:{port}/upload"),
        &["-k", "--http1.1", "--data-binary", &upload, "-H", &header],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.status, 200);
    // curl sent its own trace context: its request is instrumented and gives no client span;
    // the server's span continues that trace, read from inside TLS.
    let spans = receiver.wait_spans(1, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert!(s.is_server());
    assert_eq!(hex(&s.span.trace_id), trace);
    assert_eq!(hex(&s.span.parent_span_id), parent);
    assert_eq!(s.attr("http.request.method").str(), "POST");
    assert_eq!(s.attr("http.request.body.size").int(), 5 * 1024 * 1024);
    assert_eq!(s.attr("url.scheme").str(), "https");
}

#[test]
fn curl_and_nginx_over_tls() {
    let receiver = Receiver::start();
    let server = nginx_https(free_port());
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    // curl and nginx call SSL_read/SSL_write of the shared libssl; keep-alive.
    let base = format!("https://127.0.0.1:{port}");
    let (a, b) = (format!("{base}/"), format!("{base}/static/file.txt"));
    let run = curl_many(&[&a, &a, &b], &["-k", "--http1.1"]);
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert_https_pairs(&spans, port);
    assert_eq!(paths(&spans, true), vec!["/", "/", "/static/file.txt"]);
    for s in &spans {
        if s.is_server() {
            assert!(server.pids.contains(&s.pid()), "span from an nginx worker");
        } else {
            assert_eq!(s.pid(), run.pid);
        }
        let size = if s.attr("url.path").str() == "/" {
            "hello from nginx\n".len() as i64
        } else {
            5000
        };
        assert_eq!(s.attr("http.response.body.size").int(), size, "{s:#?}");
    }
}

#[test]
fn go_programs_started_after_the_agent_are_traced_stripped_too() {
    let receiver = Receiver::start();
    let port = free_port();
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    // Both start after the agent: the kernel reports their start and the agent probes their
    // executables. The server has no symbol table (its functions come from .gopclntab); the
    // client waits half a second before its requests.
    let server = go_https(port, true);
    let run = run_client(Command::new(go_binary()).args(["gets", &port.to_string(), "3", "500"]));
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert_https_pairs(&spans, port);
    assert_eq!(paths(&spans, true), vec!["/go/0", "/go/1", "/go/2"]);
    for s in &spans {
        let pid = if s.is_server() { server.pid() } else { run.pid };
        assert_eq!(s.pid(), pid, "{s:#?}");
    }
    let stderr = agent.stderr().join("\n");
    assert!(stderr.contains("gohttp-stripped"), "{stderr}");
}

#[test]
fn python_importing_ssl_after_the_agent_started_is_traced() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    let (mut client, mut out, line) = spawn_until_first_line(
        Command::new("python3")
            .arg(script("late_ssl_client.py"))
            .args([&port.to_string(), "0.5", "2"]),
        Stdio::piped(),
    );
    assert_eq!(line, "waiting");
    // Only the client is traced, and it has no TLS library mapped yet.
    let mut agent = Agent::exporting(&receiver, &["--pid", &client.id().to_string()]);
    let stderr = agent.stderr().join("\n");
    assert!(
        stderr.contains("no OpenSSL or Go crypto/tls in the traced processes yet"),
        "{stderr}"
    );
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut statuses = String::new();
    std::io::Read::read_to_string(&mut out, &mut statuses).unwrap();
    assert!(client.wait().unwrap().success());
    assert_eq!(
        statuses.split_whitespace().collect::<Vec<_>>(),
        ["200", "200"]
    );
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for s in &spans {
        assert!(s.is_client());
        assert_eq!(s.pid(), client.id());
        assert_eq!(s.attr("url.scheme").str(), "https");
    }
    assert_eq!(paths(&spans, false), vec!["/late/0", "/late/1"]);
    let stderr = agent.stderr().join("\n");
    assert!(stderr.contains("libssl"), "{stderr}");
}

#[test]
fn an_agent_started_while_tls_connections_are_open_picks_up_at_the_next_request() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    // The client's first request, then a pause in which the agent starts, then two more on
    // the same connection.
    let (mut client, _out, line) = spawn_until_first_line(
        Command::new("python3")
            .arg(script("https_client.py"))
            .args([&port.to_string(), "4", "/after/0", "/after/1"]),
        Stdio::null(),
    );
    assert_eq!(line, "200");
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    assert!(client.wait().unwrap().success());
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    // Nothing from before, nothing made up. The client's two requests after the start are
    // seen whole. The server was already waiting inside SSL_read for the first of them when
    // the agent started: a call whose entry was not seen is not guessed at (as a blocked
    // socket read is not), so its span starts with the next request.
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(paths(&spans, false), vec!["/after/0", "/after/1"]);
    assert_eq!(paths(&spans, true), vec!["/after/1"]);
    let (second, first): (Vec<Received>, Vec<Received>) = spans
        .into_iter()
        .partition(|s| s.attr("url.path").str() == "/after/1");
    assert_https_pairs(&second, port);
    assert_eq!(first[0].attr("url.scheme").str(), "https");
}

const TLS_CONNECTIONS: &str = "tracer_tls_connections_total";
const KERNEL_EVENTS: &str = "tracer_kernel_events_total";

#[test]
fn with_no_tls_ciphertext_is_recognised_and_no_longer_copied() {
    let server = python_https(free_port());
    let metrics = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--no-tls",
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

/// System calls entered in a number range, counted by a tracefs instance of its own
/// (`raw_syscalls:sys_enter` with a filter), until dropped.
struct SyscallWatch {
    dir: std::path::PathBuf,
}

impl SyscallWatch {
    fn start(name: &str, low: u32, high: u32) -> SyscallWatch {
        let dir = std::path::PathBuf::from(format!("/sys/kernel/tracing/instances/{name}"));
        let _ = std::fs::create_dir(&dir);
        let event = dir.join("events/raw_syscalls/sys_enter");
        std::fs::write(event.join("filter"), format!("id >= {low} && id <= {high}")).unwrap();
        std::fs::write(event.join("enable"), "1").unwrap();
        SyscallWatch { dir }
    }

    /// The lines of the calls seen so far whose task is `pid` (by the trace's `comm-pid`).
    fn calls_of(&self, pid: u32) -> Vec<String> {
        let trace = std::fs::read_to_string(self.dir.join("trace")).unwrap();
        let tag = format!("-{pid} ");
        trace
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&tag))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SyscallWatch {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/raw_syscalls/sys_enter/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The file offset of a dynamic symbol of an ELF file: where a probe on it is placed.
fn symbol_offset(path: &str, name: &str) -> u64 {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let data = std::fs::read(path).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let address = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in {path}"))
        .address();
    let section = elf
        .sections()
        .find(|s| s.address() <= address && address < s.address() + s.size())
        .unwrap();
    address - section.address() + section.file_range().unwrap().0
}

/// A return probe of tracefs's own (not the agent's) on a libssl function, until dropped.
struct ReturnProbe;

impl ReturnProbe {
    const EVENTS: &str = "/sys/kernel/tracing/uprobe_events";
    const ENABLE: &str = "/sys/kernel/tracing/events/tracer_e2e/ssl_read_ex_return/enable";

    fn on_ssl_read_ex() -> ReturnProbe {
        let lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let offset = symbol_offset(lib, "SSL_read_ex");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(Self::EVENTS)
            .unwrap();
        // One write: tracefs parses each write as a whole command.
        let line = format!("r:tracer_e2e/ssl_read_ex_return {lib}:{offset:#x}\n");
        f.write_all(line.as_bytes()).unwrap();
        std::fs::write(Self::ENABLE, "1").unwrap();
        ReturnProbe
    }
}

impl Drop for ReturnProbe {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::ENABLE, "0");
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(Self::EVENTS) {
            let _ = f.write_all(b"-:tracer_e2e/ssl_read_ex_return\n");
        }
    }
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[test]
fn a_seccomp_filtered_client_is_traced_and_not_killed() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port.to_string();
    let mut agent = Agent::exporting(&receiver, &["--port", &port]);
    // The filter kills the client on any call from 335 (`uretprobe` from Linux 6.11) to 423;
    // the watch sees such calls even where a kernel lets `uretprobe` through seccomp.
    let watch = SyscallWatch::start("tracer_e2e_seccomp", 335, 423);
    let run = run_client(
        Command::new("python3")
            .arg(script("seccomp_client.py"))
            .args([&port, "2"]),
    );
    assert_eq!(
        run.statuses,
        vec![200, 200],
        "the filtered client completed"
    );
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_https_pairs(&spans, server.port);
    assert_eq!(paths(&spans, false), vec!["/filtered/0", "/filtered/1"]);
    assert!(
        spans
            .iter()
            .filter(|s| s.is_client())
            .all(|s| s.pid() == run.pid),
        "{spans:#?}"
    );
    assert_eq!(
        watch.calls_of(run.pid),
        Vec::<String>::new(),
        "the traced client made a system call its filter kills"
    );
    // The watch can tell: under a return probe (tracefs's own) on the function the client
    // calls, the same client makes the `uretprobe` call (Linux 6.11 and later) or is killed.
    if kernel_version() >= (6, 11) {
        let probe = ReturnProbe::on_ssl_read_ex();
        let child = Command::new("python3")
            .arg(script("seccomp_client.py"))
            .args([&port, "1"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        drop(probe);
        let killed =
            std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGSYS);
        let calls = watch.calls_of(pid);
        assert!(
            killed || calls.iter().any(|l| l.contains("NR 335")),
            "a return probe made no uretprobe call: {:?} {calls:?}",
            out.status
        );
    }
}

/// Node's OpenSSL works on memory buffers: libuv reads the ciphertext before `SSL_read` and
/// writes it after `SSL_write`, so no call names its connection by a syscall inside it.
#[test]
fn node_https_server_and_client_on_one_keep_alive_connection() {
    let receiver = Receiver::start();
    let server = node_https(free_port(), None, false);
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    // A page, 5 MB down, 5 MB up, the page again.
    let run = run_client(Command::new("node").arg(script("https_client.js")).args([
        &port.to_string(),
        "/",
        "/big",
        "+/upload",
        "/",
    ]));
    assert_eq!(run.statuses, vec![200, 200, 200, 200]);
    let spans = receiver.wait_spans(8, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 8, "one span per exchange and end: {spans:#?}");
    assert_https_pairs(&spans, port);
    for s in &spans {
        let pid = if s.is_server() { server.pid() } else { run.pid };
        assert_eq!(s.pid(), pid, "{s:#?}");
    }
    assert_eq!(paths(&spans, true), vec!["/", "/", "/big", "/upload"]);
    for s in &spans {
        let (request, response) = match s.attr("url.path").str() {
            "/big" => (None, 5 * 1024 * 1024),
            "/upload" => (Some(5 * 1024 * 1024), 7),
            _ => (None, 25),
        };
        assert_eq!(s.attr("http.response.body.size").int(), response, "{s:#?}");
        if let Some(size) = request {
            assert_eq!(s.attr("http.request.method").str(), "POST");
            assert_eq!(s.attr("http.request.body.size").int(), size, "{s:#?}");
        }
    }
    let client_ports: std::collections::HashSet<i64> = spans
        .iter()
        .filter(|s| s.is_server())
        .map(|s| s.attr("client.port").int())
        .collect();
    assert_eq!(client_ports.len(), 1, "one connection");
}

/// One Node thread serves every connection: each request is its own connection's.
#[test]
fn node_https_serves_concurrent_connections_on_one_thread() {
    let receiver = Receiver::start();
    let server = node_https(free_port(), None, false);
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let runs: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let urls: Vec<String> = (0..2)
                    .map(|j| format!("https://127.0.0.1:{port}/c{i}/r{j}"))
                    .collect();
                let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
                curl_many(&urls, &["-k", "--http1.1"])
            })
        })
        .collect();
    let runs: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    for run in &runs {
        assert_eq!(run.statuses, vec![200, 200]);
    }
    let spans = receiver.wait_spans(32, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 32, "{spans:#?}");
    assert_https_pairs(&spans, port);
    // Each server span is on its client's connection: the client port its parent used.
    for s in spans.iter().filter(|s| s.is_server()) {
        assert_eq!(s.pid(), server.pid());
        let client = spans
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .unwrap();
        assert_eq!(
            s.attr("client.port").int(),
            client.attr("network.local.port").int(),
            "{s:#?}"
        );
        let i = &s.attr("url.path").str()[2..3];
        let run = &runs[i.parse::<usize>().unwrap()];
        assert_eq!(client.pid(), run.pid, "{client:#?}");
    }
}

/// curl -> Node -> Python, HTTPS throughout: Node reads one TLS connection and writes another
/// on the same thread.
#[test]
fn a_node_hop_in_an_https_chain() {
    let receiver = Receiver::start();
    let (a, b) = (free_port(), free_port());
    let last = python_https(b);
    let node = node_https(a, Some(b), false);
    chain_through_node(&receiver, &node, &last, "https");
}

/// curl -> Node over plain HTTP, Node -> Python over HTTPS: the plaintext request Node reads
/// just before it opens the TLS connection is not taken for that connection's.
#[test]
fn plaintext_in_and_tls_out_on_one_node_thread() {
    let receiver = Receiver::start();
    let (a, b) = (free_port(), free_port());
    let last = python_https(b);
    let node = node_https(a, Some(b), true);
    chain_through_node(&receiver, &node, &last, "http");
}

fn chain_through_node(
    receiver: &Receiver,
    node: &tracer_e2e::servers::Server,
    last: &tracer_e2e::servers::Server,
    scheme: &str,
) {
    let (a, b) = (node.port, last.port);
    let mut agent = Agent::exporting(
        receiver,
        &["--port", &a.to_string(), "--port", &b.to_string()],
    );
    for _ in 0..2 {
        let run = curl(
            &format!("{scheme}://127.0.0.1:{a}/chain"),
            &["-k", "--http1.1"],
        );
        assert_eq!(run.status, 200);
    }
    let spans = receiver.wait_spans(8, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 8, "{spans:#?}");
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 2, "{spans:#?}");
    for root in roots {
        let child_of = |parent: &Received| -> &Received {
            let children: Vec<&Received> = spans
                .iter()
                .filter(|s| s.span.parent_span_id == parent.span.span_id)
                .collect();
            assert_eq!(children.len(), 1, "{parent:#?} {spans:#?}");
            children[0]
        };
        let node_server = child_of(root);
        let node_client = child_of(node_server);
        let python = child_of(node_client);
        assert!(root.is_client() && node_server.is_server(), "{spans:#?}");
        assert!(node_client.is_client() && python.is_server(), "{spans:#?}");
        assert_eq!(node_server.pid(), node.pid());
        assert_eq!(node_client.pid(), node.pid());
        assert_eq!(python.pid(), last.pid());
        for s in [root, node_server, node_client, python] {
            assert_eq!(s.span.trace_id, root.span.trace_id);
            assert_eq!(s.attr("url.path").str(), "/chain");
            assert_eq!(s.attr("http.response.status_code").int(), 200);
        }
        for s in [root, node_server] {
            assert_eq!(s.attr("url.scheme").str(), scheme, "{s:#?}");
            assert_eq!(s.attr("server.port").int(), i64::from(a), "{s:#?}");
        }
        for s in [node_client, python] {
            assert_eq!(s.attr("url.scheme").str(), "https", "{s:#?}");
            assert_eq!(s.attr("server.port").int(), i64::from(b), "{s:#?}");
        }
        assert_eq!(
            node_client.attr("network.peer.port").int(),
            i64::from(b),
            "{node_client:#?}"
        );
        assert_eq!(
            node_client.attr("url.full").str(),
            format!("https://127.0.0.1:{b}/chain")
        );
    }
}

/// `kernel.bpf_stats_enabled` on until dropped (programs' run counts are kept only then).
struct BpfStats;

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> BpfStats {
        std::fs::write(Self::PATH, "1").unwrap();
        BpfStats
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, "0");
    }
}

/// How many times the agent's program named `name` ran (bpftool, by the agent's program ids).
fn runs_of(agent: &Agent, name: &str) -> u64 {
    for id in agent.program_ids() {
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .expect("running bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.split_whitespace().any(|w| w == name) {
            continue;
        }
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "run_cnt" {
                return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
        return 0;
    }
    panic!("the agent has no program {name}");
}

#[test]
fn with_pid_only_the_chosen_process_stops_at_the_tls_probes() {
    let _stats = BpfStats::enable();
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    // Python's server calls SSL_read_ex/SSL_write_ex; curl, not traced, SSL_read/SSL_write of
    // the same libssl.
    let mut agent = Agent::exporting(&receiver, &["--pid", &server.pid().to_string()]);
    let url = format!("https://127.0.0.1:{port}/only");
    let run = curl_many(&[&url, &url, &url], &["-k", "--http1.1"]);
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(3, |_| true);
    let (read, write) = (
        runs_of(&agent, "tracer_ssl_read"),
        runs_of(&agent, "tracer_ssl_write"),
    );
    let read_ex = runs_of(&agent, "tracer_ssl_read_ex");
    agent.stop();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.is_server() && s.pid() == server.pid())
    );
    // The probes were set in the server alone: curl's calls never stopped at them.
    assert!(read_ex > 0, "the server's calls ran the probes");
    assert_eq!(
        (read, write),
        (0, 0),
        "curl's SSL_read/SSL_write stopped at the probes"
    );
}

/// A server in a mount namespace of its own whose `libssl.so.3` is its own copy, bind-mounted
/// over the system's path (as a container's image has its own): the agent reaches that file
/// through `/proc/PID/map_files`, probes it (the system's file, probed at start, is another
/// inode), and traces the server.
#[test]
fn a_containers_own_libssl_is_found_and_probed() {
    let system = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    let receiver = Receiver::start();
    let dir = tracer_e2e::servers::TempDir::new("own-libssl");
    let copy = dir.path().join("libssl.so.3");
    std::fs::copy(system, &copy).unwrap();
    let (cert, key) = tracer_e2e::servers::self_signed(dir.path());
    let port = free_port();
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let inner = format!(
        "mount --bind {} {system} && exec python3 {} {port} {} {}",
        copy.display(),
        script("https_server.py").display(),
        cert.display(),
        key.display()
    );
    let server = tracer_e2e::servers::spawn_server(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &inner]),
        port,
    );
    // The server's own view of the file is not the agent's.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(system))
        .expect("the server maps libssl");
    let inode: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_ne!(inode, std::fs::metadata(system).unwrap().ino());
    assert_eq!(inode, std::fs::metadata(&copy).unwrap().ino());
    let (probed, by) = (
        format!("in {system} ("),
        format!("probes; process {})", server.pid()),
    );
    let found = tracer_e2e::wait_for(Duration::from_secs(10), || {
        agent
            .stderr()
            .iter()
            .any(|l| l.contains(&probed) && l.contains(&by))
            .then_some(())
    });
    assert!(found.is_some(), "{:#?}", agent.stderr());
    let url = format!("https://127.0.0.1:{port}/own");
    let run = curl_many(&[&url, &url], &["-k", "--http1.1"]);
    assert_eq!(run.statuses, vec![200, 200]);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_https_pairs(&spans, port);
    for s in spans.iter().filter(|s| s.is_server()) {
        assert_eq!(s.pid(), server.pid());
    }
}

/// `--comm` selects TLS plaintext as it selects plaintext: the Python server's side only.
#[test]
fn comm_selects_tls_traffic_like_plaintext() {
    let receiver = Receiver::start();
    let server = python_https(free_port());
    let port = server.port;
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap();
    let mut agent = Agent::exporting(&receiver, &["--comm", comm.trim()]);
    let url = format!("https://127.0.0.1:{port}/by-name");
    let run = curl_many(&[&url, &url], &["-k", "--http1.1"]);
    assert_eq!(run.statuses, vec![200, 200]);
    let spans = receiver.wait_spans(2, |_| true);
    // curl is not selected: nothing of it may follow.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    let spans_after = receiver.spans();
    assert_eq!(spans_after.len(), 2, "{spans_after:#?}");
    for s in &spans {
        assert!(s.is_server(), "{s:#?}");
        assert_eq!(s.pid(), server.pid());
        assert_eq!(s.attr("url.scheme").str(), "https");
        assert_eq!(s.attr("url.path").str(), "/by-name");
    }
}
