//! `--propagate` across two hosts: network namespaces joined by a veth pair, a client in one
//! and a server in the other, each host with its own agent scoped to its own process. The
//! server keeps the exact bytes it received, so the tests see what the kernel changed.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Stdio},
    time::Duration,
};

use tracer_e2e::{
    agent::Agent,
    free_port, hex,
    netns::Hosts,
    receiver::{Received, Receiver},
    servers::{TempDir, script},
    wait_for,
};

/// Which requests of each case get a `traceparent` (in order on its connection).
const EXPECTED: &[(&str, &[bool])] = &[
    ("small", &[true]),
    // A 5 KB request in one send.
    ("large", &[true]),
    // The body follows in three sends; the next request is found after it.
    ("body_later", &[true, true]),
    // The head arrives in two sends: never touched, nor anything after on that connection.
    ("split_head", &[false, false]),
    // Two requests in one send: the first gets one, and the connection is left alone after.
    ("pipelined", &[true, false]),
    // The program wrote its own: no second one.
    ("has_traceparent", &[false]),
    // Its own, after 40 other header lines: still no second one.
    ("late_traceparent", &[false]),
    // A chunked body is not followed: its head gets one, the next request none.
    ("chunked", &[true, false]),
];

const LINE_LEN: usize = 70;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An injected line: `traceparent: 00-<32 hex>-<16 hex>-01\r\n`; returns (trace, span).
fn injected_line(b: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(b.get(..LINE_LEN)?).ok()?;
    let rest = s
        .strip_prefix("traceparent: 00-")?
        .strip_suffix("-01\r\n")?;
    let (trace, span) = rest.split_once('-')?;
    let is_hex = |x: &str, n| x.len() == n && x.bytes().all(|c| c.is_ascii_hexdigit());
    (is_hex(trace, 32) && is_hex(span, 16)).then(|| (trace.to_string(), span.to_string()))
}

/// Check `received` against `sent` plus exactly one injected line after the request line of
/// each request marked in `inject`; returns the injected (trace, span) pairs.
fn check_bytes(
    case: &str,
    sent: &[u8],
    starts: &[usize],
    inject: &[bool],
    received: &[u8],
) -> Vec<(String, String)> {
    assert_eq!(starts.len(), inject.len(), "{case}: requests");
    let mut at_sent = 0;
    let mut at_recv = 0;
    let mut lines = Vec::new();
    for (start, &yes) in starts.iter().zip(inject) {
        if !yes {
            continue;
        }
        let line_end = start
            + sent[*start..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a request line")
            + 2;
        let before = &sent[at_sent..line_end];
        assert_eq!(
            &received[at_recv..at_recv + before.len()],
            before,
            "{case}: bytes before an injection differ"
        );
        at_recv += before.len();
        let line = injected_line(&received[at_recv..]).unwrap_or_else(|| {
            panic!(
                "{case}: no traceparent line where expected: {:?}",
                String::from_utf8_lossy(
                    &received[at_recv..(at_recv + LINE_LEN).min(received.len())]
                )
            )
        });
        lines.push(line);
        at_recv += LINE_LEN;
        at_sent = line_end;
    }
    assert_eq!(
        &received[at_recv..],
        &sent[at_sent..],
        "{case}: received bytes are not the sent bytes plus the expected headers"
    );
    lines
}

/// One case: its name, the bytes sent, where its requests start, the bytes received.
type Case = (String, Vec<u8>, Vec<usize>, Vec<u8>);

struct Run {
    client_spans: Vec<Received>,
    server_spans: Vec<Received>,
    cases: Vec<Case>,
}

fn spawn(mut cmd: std::process::Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting a test program")
}

/// A child killed when dropped, so that a failing test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server in host b, client in host a; each host's agent traces only its own program.
fn run(propagate: bool) -> Run {
    let hosts = Hosts::new();
    let dir = TempDir::new("wire");
    let log = dir.path().join("received.jsonl");
    let port = free_port();
    let mut server_cmd = Hosts::command(&hosts.b, "python3");
    server_cmd
        .arg(script("wire_server.py"))
        .args([Hosts::B_ADDR, &port.to_string()])
        .arg(&log);
    let mut server = Killed(spawn(server_cmd));
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    let mut client_cmd = Hosts::command(&hosts.a, "python3");
    client_cmd
        .arg(script("wire_client.py"))
        .args([Hosts::B_ADDR, &port.to_string()]);
    let mut client = Killed(spawn(client_cmd));

    let (rx_a, rx_b) = (Receiver::start(), Receiver::start());
    let client_pid = client.0.id().to_string();
    let server_pid = server.0.id().to_string();
    let mut args_a = vec!["--pid", client_pid.as_str()];
    if propagate {
        args_a.push("--propagate");
    }
    let mut agent_a = Agent::exporting(&rx_a, &args_a);
    let mut agent_b = Agent::exporting(&rx_b, &["--pid", &server_pid]);

    client.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut sent = Vec::new();
    for line in BufReader::new(client.0.stdout.take().unwrap()).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let starts = v["starts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as usize)
            .collect::<Vec<_>>();
        sent.push((
            v["case"].as_str().unwrap().to_string(),
            unhex(v["sent"].as_str().unwrap()),
            starts,
        ));
    }
    assert!(client.0.wait().unwrap().success(), "the client failed");
    assert_eq!(sent.len(), EXPECTED.len(), "every case ran");
    let received: Vec<Vec<u8>> = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let all: Vec<Vec<u8>> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                unhex(v["bytes"].as_str().unwrap())
            })
            .collect();
        (all.len() == EXPECTED.len()).then_some(all)
    })
    .expect("the server logged every connection");
    let requests: usize = EXPECTED.iter().map(|(_, r)| r.len()).sum();
    // The requests with their own traceparent are the program's (instrumented): no client
    // spans.
    let client_spans = rx_a.wait_spans(requests - 2, |s| s.is_client());
    let server_spans = rx_b.wait_spans(requests, |s| s.is_server());
    agent_a.stop();
    agent_b.stop();
    drop(server);
    let cases = sent
        .into_iter()
        .map(|(case, sent, starts)| {
            let marker = format!(" /case/{case} ");
            let got = received
                .iter()
                .find(|r| {
                    let head = String::from_utf8_lossy(&r[..r.len().min(64)]).into_owned();
                    head.contains(&marker)
                })
                .unwrap_or_else(|| panic!("no connection for case {case}"))
                .clone();
            (case, sent, starts, got)
        })
        .collect();
    Run {
        client_spans,
        server_spans,
        cases,
    }
}

fn by_path<'a>(spans: &'a [Received], path: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.attr("url.path").str() == path)
        .unwrap_or_else(|| panic!("no span for {path}"))
}

#[test]
fn propagate_links_hosts_and_adds_exactly_one_header() {
    let run = run(true);
    let mut injected = std::collections::HashMap::new();
    for (case, sent, starts, received) in &run.cases {
        let inject = EXPECTED
            .iter()
            .find(|(c, _)| c == case)
            .map(|(_, i)| *i)
            .unwrap();
        let lines = check_bytes(case, sent, starts, inject, received);
        injected.insert(case.clone(), lines);
    }
    // The server's span is the child of the client's span, in the client's trace, and the
    // header on the wire names exactly that span.
    for path in [
        "/case/small",
        "/case/large",
        "/case/body_later",
        "/case/body_later/2",
    ] {
        let client = by_path(&run.client_spans, path);
        let server = by_path(&run.server_spans, path);
        assert_eq!(
            server.span.trace_id, client.span.trace_id,
            "{path}: one trace"
        );
        assert_eq!(
            server.span.parent_span_id, client.span.span_id,
            "{path}: the server span is the client span's child"
        );
        assert!(
            client.span.parent_span_id.is_empty(),
            "{path}: the client is the root"
        );
    }
    let (trace, span) = &injected["small"][0];
    let client = by_path(&run.client_spans, "/case/small");
    assert_eq!(trace, &hex(&client.span.trace_id));
    assert_eq!(span, &hex(&client.span.span_id));
    // Requests that were not given a header start their own trace on the server.
    let untouched = by_path(&run.server_spans, "/case/split_head");
    assert!(untouched.span.parent_span_id.is_empty());
    // The program's own traceparent is the one the server continues, and the client span is
    // not exported (the program is instrumented).
    for path in ["/case/has_traceparent", "/case/late_traceparent"] {
        let own = by_path(&run.server_spans, path);
        assert_eq!(hex(&own.span.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&own.span.parent_span_id), "b7ad6b7169203331");
    }
}

#[test]
fn without_propagate_the_bytes_are_untouched_and_the_hosts_are_separate_traces() {
    let run = run(false);
    for (case, sent, _, received) in &run.cases {
        assert_eq!(received, sent, "{case}: bytes changed without --propagate");
    }
    let client = by_path(&run.client_spans, "/case/small");
    let server = by_path(&run.server_spans, "/case/small");
    assert_ne!(server.span.trace_id, client.span.trace_id);
    assert!(server.span.parent_span_id.is_empty());
}

/// A connection the program stops rewriting (here: a head split across sends) leaves the sock
/// hash at once, while it stays open: its later sends no longer pass through the program.
#[test]
fn a_connection_no_longer_followed_leaves_the_sock_hash() {
    let server = tracer_e2e::servers::python_framings(free_port());
    let mut client = std::process::Command::new("python3")
        .arg(script("lost_client.py"))
        .arg(server.port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting lost_client.py");
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut step = |name: &str| {
        writeln!(stdin, "{name}").unwrap();
        assert_eq!(
            stdout.next().and_then(Result::ok).as_deref(),
            Some(name),
            "step {name}"
        );
    };
    let agent = Agent::start(
        &[
            "--propagate",
            "--pid",
            &client.id().to_string(),
            "--output",
            "none",
        ],
        &[],
    );
    let followed = || agent.map_keys("PROPAGATED").len();
    step("connect");
    assert_eq!(followed(), 1, "the traced connection is followed");
    step("plain");
    // The agent takes lost connections out within its next poll (20 ms).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(followed(), 1, "a whole request keeps it followed");
    step("split");
    assert!(
        wait_for(Duration::from_secs(5), || (followed() == 0).then_some(())).is_some(),
        "a split head: the connection is still in the sock hash"
    );
    step("close");
    assert!(client.wait().unwrap().success());
}
