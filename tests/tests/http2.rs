//! HTTP/2 and gRPC: one span per stream, paired by stream id, over cleartext (h2c) and TLS,
//! with the programs untouched.

use std::process::Command;

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{curl, nginx_http2, run_client_text, script, spawn_server},
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
    let port = free_port();
    let server = spawn_server(
        Command::new("python3")
            .arg(script("grpc_server.py"))
            .arg(port.to_string()),
        port,
    );
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
