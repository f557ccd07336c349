//! HTTP/2 and gRPC: one span per stream, paired by stream id, over cleartext (h2c) and TLS,
//! with the programs untouched.

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{curl, nginx_http2},
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
