//! One request through several services in different languages on one host gives one trace
//! with every parent right: curl -> Python -> Node -> Java, none of them instrumented.

use std::process::Command;

use tracer_e2e::{
    agent::Agent,
    free_port, hex,
    receiver::{Received, Receiver},
    servers::{Server, curl, python_http, script, spawn_server},
};

struct Chain {
    python: Server,
    node: Server,
    java: Server,
}

fn chain() -> Chain {
    let (p, n, j) = (free_port(), free_port(), free_port());
    let java = spawn_server(
        Command::new("java")
            .arg(script("Server.java"))
            .arg(j.to_string()),
        j,
    );
    let node = spawn_server(
        Command::new("node")
            .arg(script("server.js"))
            .args([n.to_string(), j.to_string()]),
        n,
    );
    let python = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([p.to_string(), n.to_string()]),
        p,
    );
    Chain { python, node, java }
}

fn agent(receiver: &Receiver, c: &Chain, extra: &[&str]) -> Agent {
    let ports: Vec<String> = [c.python.port, c.node.port, c.java.port]
        .iter()
        .map(u16::to_string)
        .collect();
    let mut args = vec![
        "--port", &ports[0], "--port", &ports[1], "--port", &ports[2],
    ];
    args.extend(extra);
    Agent::exporting(receiver, &args)
}

/// The span of `pid` of the given kind.
fn span(spans: &[Received], pid: u32, server: bool) -> &Received {
    spans
        .iter()
        .find(|s| s.pid() == pid && s.is_server() == server)
        .unwrap_or_else(|| {
            panic!(
                "no {} span from pid {pid}",
                if server { "SERVER" } else { "CLIENT" }
            )
        })
}

fn parent_of(child: &Received, parent: &Received) {
    assert_eq!(
        child.span.parent_span_id,
        parent.span.span_id,
        "{} {} should be the child of {} {}",
        child.res("service.name").str(),
        child.span.kind,
        parent.res("service.name").str(),
        parent.span.kind
    );
    assert_eq!(child.span.trace_id, parent.span.trace_id);
}

#[test]
fn three_services_one_trace() {
    three_services(&[]);
}

/// With `--propagate` every request on the way carries the kernel's `traceparent`, and the
/// kernel's per-thread context must agree with the links made in userspace.
#[test]
fn three_services_one_trace_with_propagate() {
    three_services(&["--propagate"]);
}

fn three_services(extra: &[&str]) {
    let receiver = Receiver::start();
    let c = chain();
    let mut agent = agent(&receiver, &c, extra);
    let run = curl(&format!("http://127.0.0.1:{}/chain", c.python.port), &[]);
    assert_eq!(run.status, 200);
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "curl, python x2, node x2, java");
    let curl_client = span(&spans, run.pid, false);
    let py_server = span(&spans, c.python.pid(), true);
    let py_client = span(&spans, c.python.pid(), false);
    let node_server = span(&spans, c.node.pid(), true);
    let node_client = span(&spans, c.node.pid(), false);
    let java_server = span(&spans, c.java.pid(), true);
    assert!(
        curl_client.span.parent_span_id.is_empty(),
        "curl's span is the root"
    );
    parent_of(py_server, curl_client); // same host, one connection
    parent_of(py_client, py_server); // in process: the thread serving the request
    parent_of(node_server, py_client);
    parent_of(node_client, node_server); // in process: one request in the event loop
    parent_of(java_server, node_client);
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|s| s.span.trace_id.clone()).collect();
    assert_eq!(traces.len(), 1, "exactly one trace");
}

/// Requests one after another through the same services: each its own trace, every parent
/// right. Node's event loop serves them one at a time, each call made as its request is read.
#[test]
fn requests_one_at_a_time_are_one_trace_each() {
    const ROUNDS: usize = 3;
    let receiver = Receiver::start();
    let c = chain();
    let mut agent = agent(&receiver, &c, &[]);
    let url = format!("http://127.0.0.1:{}/chain", c.python.port);
    let runs: Vec<_> = (0..ROUNDS).map(|_| curl(&url, &[])).collect();
    assert!(runs.iter().all(|r| r.status == 200));
    let spans = receiver.wait_spans(6 * ROUNDS, |_| true);
    agent.stop();
    assert_eq!(
        spans.len(),
        6 * ROUNDS,
        "curl, python x2, node x2, java per request"
    );
    // The spans of `pid` of one kind, in start order: request i's is the i-th.
    let of = |pid: u32, server: bool| {
        let mut v: Vec<&Received> = spans
            .iter()
            .filter(|s| s.pid() == pid && s.is_server() == server)
            .collect();
        v.sort_by_key(|s| s.span.start_time_unix_nano);
        assert_eq!(v.len(), ROUNDS);
        v
    };
    let (py_server, py_client) = (of(c.python.pid(), true), of(c.python.pid(), false));
    let (node_server, node_client) = (of(c.node.pid(), true), of(c.node.pid(), false));
    let java_server = of(c.java.pid(), true);
    for (i, run) in runs.iter().enumerate() {
        let curl_client = span(&spans, run.pid, false);
        assert!(curl_client.span.parent_span_id.is_empty());
        parent_of(py_server[i], curl_client);
        parent_of(py_client[i], py_server[i]);
        parent_of(node_server[i], py_client[i]);
        parent_of(node_client[i], node_server[i]);
        parent_of(java_server[i], node_client[i]);
    }
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|s| s.span.trace_id.clone()).collect();
    assert_eq!(traces.len(), ROUNDS, "one trace per request");
}

#[test]
fn an_incoming_traceparent_is_continued_through_the_chain() {
    incoming_traceparent(&[]);
}

/// The kernel reads the incoming `traceparent` itself and carries its trace id on.
#[test]
fn an_incoming_traceparent_is_continued_through_the_chain_with_propagate() {
    incoming_traceparent(&["--propagate"]);
}

fn incoming_traceparent(extra: &[&str]) {
    let receiver = Receiver::start();
    let c = chain();
    let mut agent = agent(&receiver, &c, extra);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header = format!("traceparent: 00-{trace}-00f067aa0ba902b7-01");
    let run = curl(
        &format!("http://127.0.0.1:{}/chain", c.python.port),
        &["-H", &header],
    );
    assert_eq!(run.status, 200);
    // curl wrote its own traceparent: it counts as instrumented, and its span is its own.
    let spans = receiver.wait_spans(5, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 5, "python x2, node x2, java");
    for s in &spans {
        let hex: String = s.span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, trace, "every span continues the incoming trace");
    }
    let py_server = span(&spans, c.python.pid(), true);
    let parent: String = py_server
        .span
        .parent_span_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(parent, "00f067aa0ba902b7");
    parent_of(
        span(&spans, c.node.pid(), true),
        span(&spans, c.python.pid(), false),
    );
    parent_of(
        span(&spans, c.java.pid(), true),
        span(&spans, c.node.pid(), false),
    );
}

#[test]
fn an_sdk_instrumented_program_gets_no_duplicate_spans() {
    let receiver = Receiver::start();
    let server = tracer_e2e::servers::python_framings(free_port());
    let mut agent = Agent::exporting(&receiver, &["--port", &server.port.to_string()]);
    let out = Command::new("python3")
        .arg(script("sdk_client.py"))
        .args([server.port.to_string(), receiver.http_url()])
        .output()
        .expect("running sdk_client.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (trace, sdk_span) = (fields[1], fields[2]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    // The SDK's own CLIENT span, and tracer's SERVER span of the callee: nothing else.
    assert_eq!(
        spans.len(),
        2,
        "no second CLIENT span for the instrumented request"
    );
    let own = spans
        .iter()
        .find(|s| s.transport == "http")
        .expect("the SDK's span");
    assert_eq!(hex(&own.span.span_id), sdk_span);
    let server_span = spans
        .iter()
        .find(|s| s.transport == "grpc")
        .expect("tracer's span");
    assert!(server_span.is_server());
    assert_eq!(server_span.pid(), server.pid());
    assert_eq!(
        hex(&server_span.span.trace_id),
        trace,
        "the callee continues the SDK's trace"
    );
    assert_eq!(hex(&server_span.span.parent_span_id), sdk_span);
}

/// A `traceparent` that sits past the capture window (2048 bytes by default) in a request head
/// read whole: the kernel finds it in the rest of the read.
#[test]
fn a_traceparent_past_the_capture_window_is_continued() {
    let receiver = Receiver::start();
    let port = free_port();
    let server = python_http(port);
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let padding = format!("X-Padding: {}", "p".repeat(3000));
    let header = format!("traceparent: 00-{trace}-10f067aa0ba902b8-01");
    let run = curl(
        &format!("http://127.0.0.1:{port}/"),
        &["-H", &padding, "-H", &header],
    );
    assert_eq!(run.status, 200);
    let spans = receiver.wait_spans(1, |s| s.is_server());
    agent.stop();
    let span = span(&spans, server.pid(), true);
    assert_eq!(hex(&span.span.trace_id), trace);
    assert_eq!(hex(&span.span.parent_span_id), "10f067aa0ba902b8");
}

/// curl -> Python -> Python -> Python, three thread-per-request services that start fast
/// everywhere (also inside the kernel matrix's emulated guests, where Java takes too long).
fn python_chain(extra: &[&str]) {
    let receiver = Receiver::start();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let last = tracer_e2e::servers::python_framings(c);
    let middle = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([b.to_string(), c.to_string()]),
        b,
    );
    let first = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([a.to_string(), b.to_string()]),
        a,
    );
    let ports: Vec<String> = [a, b, c].iter().map(u16::to_string).collect();
    let mut args = vec![
        "--port", &ports[0], "--port", &ports[1], "--port", &ports[2],
    ];
    args.extend(extra);
    let mut agent = Agent::exporting(&receiver, &args);
    let run = curl(&format!("http://127.0.0.1:{a}/chain"), &[]);
    assert_eq!(run.status, 200);
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "curl, python x2, python x2, python");
    let curl_client = span(&spans, run.pid, false);
    let a_server = span(&spans, first.pid(), true);
    let a_client = span(&spans, first.pid(), false);
    let b_server = span(&spans, middle.pid(), true);
    let b_client = span(&spans, middle.pid(), false);
    let c_server = span(&spans, last.pid(), true);
    assert!(curl_client.span.parent_span_id.is_empty());
    parent_of(a_server, curl_client);
    parent_of(a_client, a_server);
    parent_of(b_server, a_client);
    parent_of(b_client, b_server);
    parent_of(c_server, b_client);
    let traces: std::collections::HashSet<_> =
        spans.iter().map(|s| s.span.trace_id.clone()).collect();
    assert_eq!(traces.len(), 1, "exactly one trace");
}

#[test]
fn python_chain_one_trace() {
    python_chain(&[]);
}

#[test]
fn python_chain_one_trace_with_propagate() {
    python_chain(&["--propagate"]);
}

/// A head that arrives in two reads with its `traceparent` in the second, as when the
/// caller's segments are split on the way: with `--propagate`, the calls the service makes for
/// that request still carry the caller's trace.
#[test]
fn a_traceparent_in_a_later_read_of_the_head_is_carried_on() {
    let receiver = Receiver::start();
    let (a, b) = (free_port(), free_port());
    let last = tracer_e2e::servers::python_framings(b);
    let first = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([a.to_string(), b.to_string()]),
        a,
    );
    let ports = [a.to_string(), b.to_string()];
    let mut agent = Agent::exporting(
        &receiver,
        &["--port", &ports[0], "--port", &ports[1], "--propagate"],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let run =
        tracer_e2e::servers::run_client(Command::new("python3").arg(script("client.py")).args([
            "splithead",
            "127.0.0.1",
            &ports[0],
            trace,
        ]));
    assert_eq!(run.statuses, vec![200]);
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    let a_server = span(&spans, first.pid(), true);
    let a_client = span(&spans, first.pid(), false);
    let b_server = span(&spans, last.pid(), true);
    for s in [a_server, a_client, b_server] {
        assert_eq!(hex(&s.span.trace_id), trace, "{}", s.span.kind);
    }
    assert_eq!(hex(&a_server.span.parent_span_id), "00f067aa0ba902b7");
    parent_of(a_client, a_server);
    parent_of(b_server, a_client);
}
