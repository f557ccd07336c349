//! HTTP/2 and gRPC: one span per stream, paired by stream id, over cleartext (h2c) and TLS,
//! with the programs untouched.

use std::process::Command;

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{curl, go_grpc_binary, grpc_js, nginx_http2, run_client_text, script, spawn_server},
};

/// Each server span's parent is the client span of the same stream, on this host.
fn assert_pairs(spans: &[Received]) {
    for s in spans.iter().filter(|s| s.is_server()) {
        let parent = spans
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .unwrap_or_else(|| panic!("server span without its client: {s:#?}"));
        assert!(parent.is_client());
        assert_eq!(parent.attr("url.path"), s.attr("url.path"));
    }
}

/// `scripts/grpc_server.py` (grpcio, h2c) on a free port.
fn grpcio_server() -> tracer_e2e::servers::Server {
    let port = free_port();
    spawn_server(
        Command::new("python3")
            .arg(script("grpc_server.py"))
            .arg(port.to_string()),
        port,
    )
}

fn curl_h2(scheme: &str, port: u16, path: &str) {
    let url = format!("{scheme}://127.0.0.1:{port}{path}");
    let flag = if scheme == "https" {
        "--http2"
    } else {
        "--http2-prior-knowledge"
    };
    let run = curl(&url, &["-k", flag]);
    assert!(
        [200, 404].contains(&run.status),
        "{url}: status {}",
        run.status
    );
}

fn nginx_over_http2(tls: bool) {
    let receiver = Receiver::start();
    let server = nginx_http2(free_port(), tls);
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let scheme = if tls { "https" } else { "http" };
    curl_h2(scheme, port, "/");
    curl_h2(scheme, port, "/static/file.txt");
    curl_h2(scheme, port, "/missing");
    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert_pairs(&spans);
    for s in &spans {
        assert_eq!(s.attr("network.protocol.version").str(), "2", "{s:#?}");
        assert_eq!(s.attr("url.scheme").str(), scheme, "{s:#?}");
        assert_eq!(s.attr("http.request.method").str(), "GET");
        let (status, size) = match s.attr("url.path").str() {
            "/" => (200, 17),
            "/static/file.txt" => (200, 5000),
            "/missing" => (404, -1),
            other => panic!("{other}"),
        };
        assert_eq!(s.attr("http.response.status_code").int(), status, "{s:#?}");
        if size >= 0 {
            assert_eq!(s.attr("http.response.body.size").int(), size, "{s:#?}");
        }
    }
}

#[test]
fn curl_and_nginx_over_h2c() {
    nginx_over_http2(false);
}

#[test]
fn curl_and_nginx_over_h2_in_tls() {
    nginx_over_http2(true);
}

/// Python grpcio over h2c, both ends traced: every kind of call on one connection, an error
/// status, and a deadline the client gives up on. Each call is one span per end, named after
/// its method, with the status its trailers carried, and nothing made up for the call the
/// client cancelled.
#[test]
fn grpcio_calls_of_every_kind_over_h2c() {
    let receiver = Receiver::start();
    let server = grpcio_server();
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let calls = ["say", "fail", "count", "sum", "chat", "slow"];
    let run = run_client_text(
        Command::new("python3")
            .arg(script("grpc_client.py"))
            .arg(port.to_string())
            .args(calls),
    );
    assert_eq!(run.text.trim(), "OK UNAVAILABLE OK OK OK DEADLINE_EXCEEDED");
    // The slow call's server side ends when its handler returns (2 s).
    let spans = receiver.wait_spans(12, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 12, "{spans:#?}");
    assert_pairs(&spans);
    let expected = [
        ("demo.Echo/Say", Some("OK")),
        ("demo.Echo/Fail", Some("UNAVAILABLE")),
        ("demo.Echo/Count", Some("OK")),
        ("demo.Echo/Sum", Some("OK")),
        ("demo.Echo/Chat", Some("OK")),
        ("demo.Echo/Slow", None),
    ];
    for (method, status) in expected {
        for server_side in [false, true] {
            let s = spans
                .iter()
                .find(|s| s.span.name == method && s.is_server() == server_side)
                .unwrap_or_else(|| panic!("no {method} span (server {server_side}): {spans:#?}"));
            let pid = if server_side { server.pid() } else { run.pid };
            assert_eq!(s.pid(), pid, "{s:#?}");
            assert_eq!(s.attr("rpc.system.name").str(), "grpc");
            assert_eq!(s.attr("rpc.method").str(), method);
            assert_eq!(s.attr("network.protocol.version").str(), "2");
            match status {
                Some(code) => {
                    assert_eq!(s.attr("rpc.response.status_code").str(), code, "{s:#?}");
                    assert_eq!(s.is_error(), code != "OK", "{s:#?}");
                }
                None => {
                    // The client cancelled at its deadline: the span is an error, and its
                    // status is what the wire carried, never one made up.
                    assert!(s.is_error(), "{s:#?}");
                    let error = s.attr("error.type").str().to_string();
                    let status = s.attributes.get("rpc.response.status_code");
                    assert!(
                        error == "CANCEL" && status.is_none() || error == "DEADLINE_EXCEEDED",
                        "{s:#?}"
                    );
                }
            }
        }
    }
}

/// The agent starts while a gRPC connection is busy: its preface, its settings and the
/// header-table entries made so far were never seen. Frames are found again, every span is
/// of a call seen from its start, and what could only be decoded with a missed table entry
/// is reported undecoded: no method, path or status is ever wrong.
#[test]
fn agent_started_on_a_busy_grpc_connection() {
    use std::io::{BufRead, BufReader, Write};
    let receiver = Receiver::start();
    let _server = grpcio_server();
    let port = _server.port;
    let mut client = Command::new("python3")
        .arg(script("grpc_busy.py"))
        .arg(port.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "busy");
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    writeln!(client.stdin.take().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "OK OK");
    client.wait().unwrap();
    // Both ends of the two Sum calls, at least.
    receiver.wait_spans(4, |s| s.span.name == "demo.Echo/Sum");
    let spans = receiver.spans();
    agent.stop();
    let sums: Vec<_> = spans
        .iter()
        .filter(|s| s.span.name == "demo.Echo/Sum")
        .collect();
    assert_eq!(
        sums.len(),
        4,
        "a method first called after the agent started is decoded: {spans:#?}"
    );
    assert_eq!(sums.iter().filter(|s| s.is_server()).count(), 2);
    assert!(
        spans.len() > 10,
        "the busy calls after the start are traced: {}",
        spans.len()
    );
    for s in &spans {
        assert_eq!(s.attr("http.request.method").str(), "POST", "{s:#?}");
        assert_eq!(s.attr("network.protocol.version").str(), "2");
        let undecoded = match s.attributes.get("tracer.http2.undecoded") {
            Some(tracer_e2e::receiver::Value::List(l)) => l.clone(),
            _ => Vec::new(),
        };
        match s
            .attributes
            .get("rpc.method")
            .map(|_| s.attr("rpc.method").str())
        {
            Some(m) => {
                assert!(
                    ["demo.Echo/Say", "demo.Echo/Chat", "demo.Echo/Sum"].contains(&m),
                    "{s:#?}"
                );
                assert_eq!(s.span.name, m);
            }
            None => {
                assert!(undecoded.iter().any(|u| u == ":path"), "{s:#?}");
                assert_eq!(s.span.name, "grpc");
            }
        }
        match s.attributes.get("rpc.response.status_code") {
            Some(_) => assert_eq!(s.attr("rpc.response.status_code").str(), "OK", "{s:#?}"),
            None => assert!(undecoded.iter().any(|u| u == "grpc-status"), "{s:#?}"),
        }
        assert!(!s.is_error(), "{s:#?}");
    }
}

/// Each call's two spans, the client's (in `client`) and the server's (in `server`), named
/// after its method, with its status code; errors as the conventions say for each side.
fn assert_grpc_spans(spans: &[Received], calls: &[(&str, &str)], server: u32, client: u32) {
    assert_eq!(spans.len(), calls.len() * 2, "{spans:#?}");
    assert_pairs(spans);
    for (method, code) in calls {
        for server_side in [false, true] {
            let s = spans
                .iter()
                .find(|s| s.span.name == *method && s.is_server() == server_side)
                .unwrap_or_else(|| panic!("no {method} span (server {server_side}): {spans:#?}"));
            assert_eq!(s.pid(), if server_side { server } else { client }, "{s:#?}");
            assert_eq!(s.attr("rpc.system.name").str(), "grpc");
            assert_eq!(s.attr("rpc.method").str(), *method);
            assert_eq!(s.attr("network.protocol.version").str(), "2");
            assert_eq!(s.attr("rpc.response.status_code").str(), *code, "{s:#?}");
            assert_eq!(s.is_error(), *code != "OK", "{s:#?}");
        }
    }
}

const GRPC_CALLS: [(&str, &str); 5] = [
    ("demo.Echo/Say", "OK"),
    ("demo.Echo/Fail", "UNAVAILABLE"),
    ("demo.Echo/Count", "OK"),
    ("demo.Echo/Sum", "OK"),
    ("demo.Echo/Chat", "OK"),
];

fn grpc_js_calls(tls: bool) {
    let receiver = Receiver::start();
    let port = free_port();
    let server = grpc_js(port, tls);
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let mut client = Command::new("node");
    client
        .arg(script("grpc_js_client.js"))
        .arg(port.to_string());
    if tls {
        client
            .arg("--tls")
            .arg(server.certificate().expect("a certificate"));
    }
    let run = run_client_text(client.args(["say", "fail", "count", "sum", "chat"]));
    assert_eq!(run.text.trim(), "OK UNAVAILABLE OK OK OK");
    let spans = receiver.wait_spans(10, |_| true);
    agent.stop();
    assert_grpc_spans(&spans, &GRPC_CALLS, server.pid(), run.pid);
    let scheme = if tls { "https" } else { "http" };
    assert!(
        spans.iter().all(|s| s.attr("url.scheme").str() == scheme),
        "{spans:#?}"
    );
}

/// Node's @grpc/grpc-js at both ends over h2c: its own HTTP/2 (Node's nghttp2).
#[test]
fn grpc_js_calls_of_every_kind_over_h2c() {
    grpc_js_calls(false);
}

/// The same over TLS: Node's OpenSSL on memory buffers, HTTP/2 in its plaintext.
#[test]
fn grpc_js_calls_of_every_kind_over_tls() {
    grpc_js_calls(true);
}

/// 100 calls at once on one connection (100 concurrent streams), grpc-js calling grpcio:
/// 100 spans on each side, each server span the child of its own client span.
#[test]
fn a_hundred_concurrent_streams_on_one_connection() {
    let receiver = Receiver::start();
    let server = grpcio_server();
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let run = run_client_text(
        Command::new("node")
            .arg(script("grpc_js_client.js"))
            .args([&port.to_string(), "many100"]),
    );
    assert_eq!(run.text.trim(), "OK");
    let spans = receiver.wait_spans(200, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 200);
    let clients: Vec<_> = spans.iter().filter(|s| s.is_client()).collect();
    let servers: Vec<_> = spans.iter().filter(|s| s.is_server()).collect();
    assert_eq!((clients.len(), servers.len()), (100, 100));
    let connections: std::collections::HashSet<_> = clients
        .iter()
        .map(|s| s.attr("network.local.port").int())
        .collect();
    assert_eq!(connections.len(), 1, "one connection");
    let mut parents = std::collections::HashSet::new();
    for s in &servers {
        assert_eq!(s.pid(), server.pid());
        let parent = clients
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .unwrap_or_else(|| panic!("no client parent: {s:#?}"));
        assert!(
            parents.insert(parent.span.span_id.clone()),
            "one child per client span"
        );
        assert!(parent.span.start_time_unix_nano <= s.span.start_time_unix_nano);
        assert!(s.span.end_time_unix_nano <= parent.span.end_time_unix_nano);
    }
    for s in &spans {
        assert_eq!(s.span.name, "demo.Echo/Say");
        assert_eq!(s.attr("rpc.response.status_code").str(), "OK", "{s:#?}");
    }
}

/// grpcio answers 60 KiB in one `sendmsg`: its head, four DATA frames, then the trailers with
/// the status, 61 KiB past the copied bytes. The kernel walks the frames there and sends the
/// trailers: the status is known on both sides, the body size is exact, and the call after it
/// on the same connection is whole.
#[test]
fn trailers_after_60_kib_of_data_in_one_write() {
    let receiver = Receiver::start();
    let server = grpcio_server();
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let run = run_client_text(
        Command::new("python3")
            .arg(script("grpc_client.py"))
            .arg(port.to_string())
            .args(["big", "say"]),
    );
    assert_eq!(run.text.trim(), "OK OK");
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_grpc_spans(
        &spans,
        &[("demo.Echo/Big", "OK"), ("demo.Echo/Say", "OK")],
        server.pid(),
        run.pid,
    );
    for s in spans.iter().filter(|s| s.span.name == "demo.Echo/Big") {
        // The message and its 5-byte gRPC prefix.
        assert_eq!(
            s.attr("http.response.body.size").int(),
            60 * 1024 + 5,
            "{s:#?}"
        );
        assert!(
            !s.attributes.contains_key("tracer.http2.undecoded"),
            "{s:#?}"
        );
    }
}

/// Go's gRPC (`google.golang.org/grpc` 1.33, Debian's) at both ends over h2c: its own HTTP/2
/// (`golang.org/x/net/http2`'s framer and HPACK encoder).
#[test]
fn go_grpc_calls_of_every_kind_over_h2c() {
    let binary = go_grpc_binary();
    let receiver = Receiver::start();
    let port = free_port();
    let server = spawn_server(
        Command::new(&binary).args(["serve", &port.to_string()]),
        port,
    );
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let run = run_client_text(
        Command::new(&binary)
            .args(["call", &port.to_string()])
            .args(["say", "fail", "count", "sum", "chat"]),
    );
    // Go names the codes in its own spelling.
    assert_eq!(run.text.trim(), "OK Unavailable OK OK OK");
    let spans = receiver.wait_spans(10, |_| true);
    agent.stop();
    assert_grpc_spans(&spans, &GRPC_CALLS, server.pid(), run.pid);
}

/// `Upgrade: h2c`: curl asks Go's h2c handler (golang.org/x/net) to switch an HTTP/1.1
/// request to HTTP/2. The upgrade request's span ends with its HTTP/2 response on stream 1,
/// and the next request is an HTTP/2 stream on the same connection.
#[test]
fn upgrade_from_http1_to_h2c() {
    let binary = go_grpc_binary();
    let receiver = Receiver::start();
    let port = free_port();
    let server = spawn_server(Command::new(&binary).args(["h2c", &port.to_string()]), port);
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let urls = [
        format!("http://127.0.0.1:{port}/up"),
        format!("http://127.0.0.1:{port}/missing"),
    ];
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let run = tracer_e2e::servers::curl_many(&urls, &["--http2"]);
    assert_eq!(run.statuses, vec![200, 404]);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_pairs(&spans);
    for s in &spans {
        let pid = if s.is_server() { server.pid() } else { run.pid };
        assert_eq!(s.pid(), pid, "{s:#?}");
        assert_eq!(s.attr("network.protocol.version").str(), "2", "{s:#?}");
        assert_eq!(s.attr("http.request.method").str(), "GET");
        let (status, size) = match s.attr("url.path").str() {
            "/up" => (200, 10),
            "/missing" => (404, 19),
            other => panic!("{other}"),
        };
        assert_eq!(s.attr("http.response.status_code").int(), status, "{s:#?}");
        assert_eq!(s.attr("http.response.body.size").int(), size, "{s:#?}");
    }
}

/// A server that splits its header blocks into CONTINUATION frames (`scripts/h2_split_server.py`,
/// raw frames), curl the client. A `203` head cut mid-field over HEADERS and two CONTINUATION
/// frames, and over two writes; then, on another connection, 60 KiB of DATA and trailers
/// split over HEADERS and two CONTINUATION frames in one write, 60 KiB past the copied bytes.
/// Both ends read the whole blocks: the status, the body size and the trailers' gRPC status.
#[test]
fn header_blocks_split_into_continuation_frames() {
    let receiver = Receiver::start();
    let port = free_port();
    let server = spawn_server(
        Command::new("python3")
            .arg(script("h2_split_server.py"))
            .arg(port.to_string()),
        port,
    );
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    let head = curl(
        &format!("http://127.0.0.1:{port}/head"),
        &["--http2-prior-knowledge"],
    );
    assert_eq!(head.status, 203);
    let big = curl(
        &format!("http://127.0.0.1:{port}/demo.Echo/Big"),
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "12345",
        ],
    );
    assert_eq!(big.status, 200);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_pairs(&spans);
    for s in &spans {
        assert_eq!(s.attr("network.protocol.version").str(), "2", "{s:#?}");
        assert!(
            !s.attributes.contains_key("tracer.http2.undecoded"),
            "{s:#?}"
        );
        let client = if s.attr("url.path").str() == "/head" {
            head.pid
        } else {
            big.pid
        };
        assert_eq!(s.pid(), if s.is_server() { server.pid() } else { client });
    }
    for s in spans.iter().filter(|s| s.attr("url.path").str() == "/head") {
        assert_eq!(s.attr("http.request.method").str(), "GET");
        assert_eq!(s.attr("http.response.status_code").int(), 203, "{s:#?}");
        assert_eq!(s.attr("http.response.body.size").int(), 10, "{s:#?}");
        assert!(!s.is_error(), "{s:#?}");
    }
    for s in spans.iter().filter(|s| s.span.name == "demo.Echo/Big") {
        assert_eq!(s.attr("rpc.method").str(), "demo.Echo/Big");
        assert_eq!(s.attr("http.response.body.size").int(), 60 * 1024, "{s:#?}");
        assert_eq!(
            s.attr("rpc.response.status_code").str(),
            "NOT_FOUND",
            "{s:#?}"
        );
        // NOT_FOUND is an error for a client; a server span is not made an error by it.
        assert_eq!(s.is_error(), s.is_client(), "{s:#?}");
    }
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.span.name == "demo.Echo/Big")
            .count(),
        2,
        "{spans:#?}"
    );
}
