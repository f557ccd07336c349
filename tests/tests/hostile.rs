//! Hostile and odd traffic on traced ports: the agent keeps running with bounded memory, and
//! the valid requests that follow are traced exactly.

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{Server, curl, nginx, nginx_http2, python_client, python_framings, script},
};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Run `hostile` against a server under a tracing agent, then five valid requests: they must
/// give exactly ten correct spans (both sides), and the agent must stay small.
fn survive(server: Server, hostile: impl FnOnce(u16)) {
    survive_with(server, hostile, &[]);
}

/// [`survive`], the valid requests made by curl with `curl_args`. Returns every span received.
fn survive_with(server: Server, hostile: impl FnOnce(u16), curl_args: &[&str]) -> Vec<Received> {
    let receiver = Receiver::start();
    let port = server.port;
    let mut agent = Agent::exporting(&receiver, &["--port", &port.to_string()]);
    hostile(port);
    let mut pids = Vec::new();
    for i in 0..5 {
        let run = curl(&format!("http://127.0.0.1:{port}/valid{i}"), curl_args);
        assert!(
            run.status == 200 || run.status == 404,
            "status {}",
            run.status
        );
        pids.push(run.pid);
    }
    let is_valid = |s: &Received| {
        s.attributes
            .get("url.path")
            .is_some_and(|p| p.str().starts_with("/valid"))
    };
    let valid = receiver.wait_spans(10, is_valid);
    let rss = rss_kib(agent.pid());
    agent.stop();
    assert_eq!(
        valid.len(),
        10,
        "the five valid requests after the hostile traffic"
    );
    for (i, pid) in pids.iter().enumerate() {
        let path = format!("/valid{i}");
        let client = valid
            .iter()
            .find(|s| s.is_client() && s.attr("url.path").str() == path);
        let server_span = valid
            .iter()
            .find(|s| s.is_server() && s.attr("url.path").str() == path);
        let (client, server_span) = (
            client.expect("client span"),
            server_span.expect("server span"),
        );
        assert_eq!(client.pid(), *pid);
        assert_eq!(
            client.attr("http.response.status_code").int(),
            server_span.attr("http.response.status_code").int()
        );
    }
    assert!(rss < 128 * 1024, "agent RSS {rss} KiB stays bounded");
    receiver.spans()
}

#[test]
fn request_line_of_100_kb() {
    survive(python_framings(free_port()), |port| {
        assert_eq!(
            python_client("longline", port, Some("100000")).statuses,
            vec![200]
        );
    });
}

#[test]
fn slowloris_head_that_never_ends() {
    survive(python_framings(free_port()), |port| {
        python_client("slowloris", port, Some("3"));
    });
}

#[test]
fn half_closed_connections() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = Agent::exporting(&receiver, &["--port", &server.port.to_string()]);
    assert_eq!(
        python_client("halfclose", server.port, None).statuses,
        vec![200]
    );
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.attr("url.path").str() == "/half"));
}

#[test]
fn ten_thousand_connections_opened_and_closed() {
    survive(nginx(free_port()), |port| {
        python_client("churn", port, Some("10000"));
    });
}

#[test]
fn flood_of_pipelined_requests() {
    survive(nginx(free_port()), |port| {
        // nginx answers up to 1000 requests per connection by default.
        let statuses = python_client("flood", port, Some("900")).statuses;
        assert_eq!(statuses.len(), 900);
    });
}

#[test]
fn binary_garbage_and_tls_bytes() {
    survive(python_framings(free_port()), |port| {
        python_client("garbage", port, None);
        python_client("garbage_stream", port, None);
    });
}

/// Hostile HTTP/2 on an h2c port (nginx `http2`): bad header table indexes, a table size past
/// the limit, invalid Huffman, a frame claiming 16 MiB, CONTINUATION without HEADERS, a
/// header block grown past 256 KiB, frames on the wrong streams, padding longer than its
/// frame, random bytes. Then valid HTTP/2 requests are traced exactly.
#[test]
fn hostile_http2_frames() {
    let spans = survive_with(
        nginx_http2(free_port(), false),
        |port| {
            let out = std::process::Command::new("python3")
                .arg(script("h2_hostile.py"))
                .arg(port.to_string())
                .output()
                .expect("running h2_hostile.py");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
        },
        &["--http2-prior-knowledge"],
    );
    // What the hostile streams give is never made up: no path was ever sent, so none is
    // reported; what could not be decoded is named.
    for s in spans
        .iter()
        .filter(|s| !s.attributes.contains_key("url.path"))
    {
        let undecoded = match s.attributes.get("tracer.http2.undecoded") {
            Some(tracer_e2e::receiver::Value::List(l)) => l.clone(),
            _ => Vec::new(),
        };
        assert!(undecoded.iter().any(|u| u == ":path"), "{s:#?}");
    }
    assert!(
        spans.iter().all(|s| s
            .attributes
            .get("url.path")
            .is_none_or(|p| p.str().starts_with("/valid"))),
        "{spans:#?}"
    );
}
