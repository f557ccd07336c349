//! A descriptor number that named a traced socket comes to name an ordinary file without a
//! `close()` the agent sees (`dup2`, `dup3`, `close_range`, close-on-exec at `execve`, a later
//! process with the same pid): the file's bytes are never copied, into no span, JSON line or
//! recording, and the requests that follow are traced exactly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::Receiver,
    servers::{TempDir, curl, script},
};

/// Reads like a request, so that had its bytes been taken for socket data the agent would
/// have made a span of them.
fn secret(mode: &str) -> String {
    format!("GET /SECRET-FILE-{mode} HTTP/1.1\r\nHost: secret\r\n\r\n")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn reused_descriptor_is_never_read(mode: &str) {
    let dir = TempDir::new(&format!("fd-{mode}"));
    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, secret(mode)).unwrap();
    let recording = dir.path().join("traffic.rec");
    let port = free_port();
    let receiver = Receiver::start();
    let mut agent = Agent::exporting(
        &receiver,
        &[
            "record",
            recording.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--output",
            "json",
        ],
    );
    let mut server = Command::new("python3")
        .arg(script("fd_reuse.py"))
        .args([mode, &port.to_string(), secret_path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting fd_reuse.py");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("ready"),
        "the server did not start"
    );
    assert_eq!(
        curl(&format!("http://127.0.0.1:{port}/first"), &[]).status,
        200
    );
    if mode == "pid_reuse" {
        // The second request waits until a later process has the first child's pid: how long
        // that takes depends on what else forks on the machine, not on curl's timeout.
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            line.starts_with("reused pid "),
            "the pid was not reused: {line:?} (exit: {:?})",
            server.wait()
        );
    }
    assert_eq!(
        curl(&format!("http://127.0.0.1:{port}/second"), &[]).status,
        200
    );
    let status = server.wait().unwrap();
    assert!(status.success(), "fd_reuse.py {mode} failed: {status}");

    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    let spans_after = receiver.spans();
    assert_eq!(
        spans_after.len(),
        4,
        "{mode}: exactly the two requests, each seen from both ends: {spans_after:#?}"
    );
    let mut servers: Vec<(String, i64)> = spans
        .iter()
        .filter(|s| s.is_server())
        .map(|s| {
            (
                s.attr("url.path").str().to_string(),
                s.attr("http.response.status_code").int(),
            )
        })
        .collect();
    servers.sort();
    assert_eq!(
        servers,
        vec![("/first".to_string(), 200), ("/second".to_string(), 200)],
        "{mode}"
    );

    let needle = format!("SECRET-FILE-{mode}");
    let rec = std::fs::read(&recording).expect("the recording");
    assert!(!rec.is_empty());
    assert!(
        !contains(&rec, &needle),
        "{mode}: the recording holds the file's bytes"
    );
    for export in receiver.raw_exports() {
        assert!(
            !contains(&export, &needle),
            "{mode}: exported the file's bytes"
        );
    }
    for line in agent.stdout().iter().chain(agent.stderr().iter()) {
        assert!(
            !line.contains(&needle),
            "{mode}: printed the file's bytes: {line}"
        );
    }
}

#[test]
fn dup2_onto_a_traced_socket() {
    reused_descriptor_is_never_read("dup2");
}

#[test]
fn dup3_onto_a_traced_socket() {
    reused_descriptor_is_never_read("dup3");
}

#[test]
fn close_range_then_open() {
    reused_descriptor_is_never_read("close_range");
}

#[test]
fn close_on_exec_then_open() {
    reused_descriptor_is_never_read("exec");
}

#[test]
fn a_later_process_with_the_same_pid() {
    reused_descriptor_is_never_read("pid_reuse");
}

/// `ConnInfo::state` of a muted connection, and where it sits in the entry.
const MUTED: u32 = 2;
const STATE_AT: usize = 64;
/// `tracer_common::counter::EVENTS`.
const EVENTS: u32 = 0;

/// The cache of descriptors is an LRU map: an entry it evicts is resolved afresh at the next
/// syscall. A connection the agent muted must stay muted then.
#[test]
fn a_muted_connection_stays_muted_when_the_cache_forgets_it() {
    use std::io::Write;
    let receiver = Receiver::start();
    let server = tracer_e2e::servers::python_framings(free_port());
    let mut agent = Agent::exporting(&receiver, &["--port", &server.port.to_string()]);
    let mut junk = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let chunk: Vec<u8> = [0x16u8, 3, 1].into_iter().chain(0..97).collect();
    let muted = |agent: &Agent| {
        agent
            .map_entries("CONNS")
            .into_iter()
            .filter(|(_, v)| {
                v.get(STATE_AT..STATE_AT + 4)
                    .is_some_and(|s| u32::from_le_bytes(s.try_into().unwrap()) == MUTED)
            })
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    // A few sends until the agent has muted the connection (both ends are traced).
    let keys = tracer_e2e::wait_for(std::time::Duration::from_secs(10), || {
        junk.write_all(&chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let keys = muted(&agent);
        (keys.len() == 2).then_some(keys)
    })
    .expect("the agent never muted both ends of the junk connection");
    // What an eviction does: the entries are gone from the cache.
    for key in &keys {
        agent.map_delete("CONNS", key);
    }
    // curl once without a request: the files it maps are reported to the agent (TLS
    // libraries are looked for in them) the first time only.
    let version = std::process::Command::new("curl").arg("--version").output();
    assert!(version.is_ok_and(|o| o.status.success()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = agent.kernel_counter(EVENTS);
    for _ in 0..100 {
        junk.write_all(&chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(junk);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
        200
    );
    let spans = receiver.wait_spans(2, |_| true);
    let added = agent.kernel_counter(EVENTS) - before;
    agent.stop();
    assert_eq!(spans.len(), 2, "only the valid request gives spans");
    // The valid request is a handful of events (opens, reads, writes, closes); copying the
    // junk again would add a hundred or more.
    assert!(
        added < 30,
        "{added} events after the cache forgot the muted connection"
    );
}

/// A 64-bit process may still make 32-bit system calls (`int $0x80`): their numbers are
/// another table's (32-bit `getpid` is 64-bit `writev`'s number) and their arguments sit in
/// other registers. The registers a 64-bit call's arguments would be in are set to the traced
/// connection and a buffer that reads like a request: nothing is taken from them, and the
/// connection stays known.
#[test]
fn a_32_bit_syscall_is_not_read_as_a_64_bit_one() {
    let receiver = Receiver::start();
    let server = tracer_e2e::servers::python_http(free_port());
    let port = server.port.to_string();
    let mut agent = Agent::exporting(&receiver, &["--port", &port, "--output", "json"]);
    let run = tracer_e2e::servers::run_client(
        Command::new("python3")
            .arg(script("compat_client.py"))
            .arg(&port),
    );
    assert_eq!(run.statuses, vec![404, 404], "the client completed");
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    // Each end's spans from its own process.
    let mut seen: Vec<(bool, bool, String, Option<i64>)> = receiver
        .spans()
        .iter()
        .map(|s| {
            let pid = if s.is_client() { run.pid } else { server.pid() };
            (
                s.is_client(),
                s.pid() == pid,
                s.attr("url.path").str().to_string(),
                s.attributes
                    .get("http.response.status_code")
                    .map(|v| v.int()),
            )
        })
        .collect();
    seen.sort();
    let want = |client| {
        [
            (client, true, "/after-32bit-getpid".to_string(), Some(404)),
            (client, true, "/after-32bit-read".to_string(), Some(404)),
        ]
    };
    assert_eq!(
        seen,
        [want(false), want(true)].concat(),
        "each request once from each end: {spans:#?}"
    );
    for line in agent.stdout().iter().chain(agent.stderr().iter()) {
        assert!(!line.contains("PHANTOM"), "printed the buffer: {line}");
    }
}
