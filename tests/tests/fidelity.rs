//! HTTP/1.x as real programs speak it: keep-alive, pipelining, heads split into single bytes
//! or larger than the capture window, every body framing, garbage on a traced port, IPv6,
//! connections already open when the agent starts, and responses that never come.

use std::time::Duration;

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{curl, nginx, python_client, python_framings, python_http},
};

fn agent(receiver: &Receiver, args: &[&str]) -> Agent {
    Agent::exporting(receiver, args)
}

fn status(s: &Received) -> Option<i64> {
    s.attributes
        .get("http.response.status_code")
        .map(|v| v.int())
}

fn path(s: &Received) -> String {
    s.attr("url.path").str().to_string()
}

#[test]
fn hundreds_of_keep_alive_requests_on_one_connection() {
    let receiver = Receiver::start();
    let server = nginx(free_port());
    let port = server.port.to_string();
    let mut agent = agent(&receiver, &["--port", &port]);
    let run = python_client("keepalive", server.port, Some("300"));
    assert_eq!(run.statuses.len(), 300);
    let spans = receiver.wait_spans(600, |_| true);
    agent.stop();
    assert_eq!(
        spans.len(),
        600,
        "one SERVER and one CLIENT span per request"
    );
    let clients: Vec<_> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(clients.len(), 300);
    assert!(
        clients
            .iter()
            .all(|s| s.pid() == run.pid && status(s) == Some(200))
    );
    let conns: std::collections::HashSet<_> = clients
        .iter()
        .map(|s| s.attr("network.local.port").int())
        .collect();
    assert_eq!(conns.len(), 1, "all on one connection");
    // In order: each request starts after the previous one ended.
    let mut times: Vec<_> = clients
        .iter()
        .map(|s| (s.span.start_time_unix_nano, s.span.end_time_unix_nano))
        .collect();
    times.sort();
    assert!(times.windows(2).all(|w| w[0].1 <= w[1].0));
}

#[test]
fn pipelined_requests_get_one_span_each() {
    let receiver = Receiver::start();
    let server = nginx(free_port());
    let mut agent = agent(&receiver, &["--comm", "nginx"]);
    let run = python_client("pipeline", server.port, Some("10"));
    assert_eq!(run.statuses, vec![404; 10]);
    let spans = receiver.wait_spans(10, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 10);
    let mut paths: Vec<_> = spans.iter().map(path).collect();
    paths.sort();
    let mut want: Vec<_> = (0..10).map(|i| format!("/p{i}")).collect();
    want.sort();
    assert_eq!(paths, want);
    assert!(spans.iter().all(|s| status(s) == Some(404)));
}

#[test]
fn head_split_into_single_bytes() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let mut agent = agent(&receiver, &["--port", &port]);
    let run = python_client("bytewise", server.port, None);
    assert_eq!(run.statuses, vec![200]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(path(s), "/bytewise");
        assert_eq!(status(s), Some(200));
    }
    let client = spans.iter().find(|s| s.is_client()).unwrap();
    // The span starts at the first byte: the head took ~100 sends, 2 ms apart.
    let duration = client.span.end_time_unix_nano - client.span.start_time_unix_nano;
    assert!(
        duration > 50_000_000,
        "duration {duration} covers the slow head"
    );
}

#[test]
fn head_larger_than_the_capture_window() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let mut agent = agent(&receiver, &["--port", &port, "--capture-bytes", "256"]);
    let run = python_client("bigheader", server.port, Some("20000"));
    assert_eq!(run.statuses, vec![200]);
    // The next request on a new connection is whole again.
    let after = python_client("keepalive", server.port, Some("1"));
    assert_eq!(after.statuses, vec![200]);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4);
    let big: Vec<_> = spans.iter().filter(|s| path(s) == "/big-head").collect();
    assert_eq!(big.len(), 2, "method, path and status are still found");
    for s in &big {
        assert_eq!(status(s), Some(200));
        assert_eq!(s.attr("tracer.request.head_truncated").str(), "true");
    }
}

#[test]
fn chunked_close_delimited_204_and_head() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port;
    let mut agent = agent(
        &receiver,
        &["--port", &port.to_string(), "--comm", "python3"],
    );
    for p in ["/chunked", "/close", "/nocontent"] {
        curl(&format!("http://127.0.0.1:{port}{p}"), &[]);
    }
    let head = python_client("head", port, None);
    assert_eq!(head.statuses, vec![200, 200]);
    let spans = receiver.wait_spans(7, |_| true);
    agent.stop();
    // The servers' side (python3) and python's client side; curl is not traced.
    let servers: Vec<_> = spans.iter().filter(|s| s.is_server()).collect();
    let get = |p: &str| {
        servers
            .iter()
            .find(|s| path(s) == p)
            .unwrap_or_else(|| panic!("{p}"))
    };
    assert_eq!(get("/chunked").attr("http.response.body.size").int(), 11);
    assert_eq!(get("/close").attr("http.response.body.size").int(), 27);
    assert_eq!(status(get("/nocontent")), Some(204));
    let heads: Vec<_> = servers.iter().filter(|s| s.span.name == "HEAD").collect();
    assert_eq!(heads.len(), 1);
    assert_eq!(servers.len(), 5);
    assert_eq!(spans.iter().filter(|s| s.is_client()).count(), 2);
}

#[test]
fn garbage_on_a_traced_port_is_ignored() {
    let receiver = Receiver::start();
    let server = python_http(free_port());
    let port = server.port.to_string();
    let mut agent = agent(&receiver, &["--port", &port]);
    python_client("garbage", server.port, None);
    for _ in 0..5 {
        assert_eq!(curl(&format!("http://127.0.0.1:{port}/"), &[]).status, 200);
    }
    let spans = receiver.wait_spans(10, |_| true);
    agent.stop();
    assert_eq!(
        spans.len(),
        10,
        "the five valid requests, both sides, nothing for the junk"
    );
    assert!(spans.iter().all(|s| status(s) == Some(200)));
}

#[test]
fn ipv6() {
    let receiver = Receiver::start();
    let port = free_port();
    let dir = tracer_e2e::servers::TempDir::new("v6");
    let mut child = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "::1",
            "-d",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = tracer_e2e::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("::1", port)).ok()
    });
    assert!(up.is_some());
    let mut agent = agent(&receiver, &["--port", &port.to_string()]);
    let run = curl(&format!("http://[::1]:{port}/"), &[]);
    assert_eq!(run.status, 200);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(s.attr("network.peer.address").str(), "::1");
        assert_eq!(s.attr("network.type").str(), "ipv6");
    }
}

#[test]
fn a_killed_server_leaves_a_span_without_an_invented_status() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port;
    let mut agent = agent(&receiver, &["--port", &port.to_string()]);
    let url = format!("http://127.0.0.1:{port}/slow");
    let client = std::thread::spawn(move || curl(&url, &[]));
    // The server has read the request once the kernel has reported four events: curl's
    // connection and write, the server's accept and read (`counter::EVENTS`).
    let read = tracer_e2e::wait_for(Duration::from_secs(10), || {
        (agent.kernel_counter(0) >= 4).then_some(())
    });
    assert!(read.is_some(), "the server never read the request");
    drop(server); // SIGTERM mid-request
    let run = client.join().unwrap();
    assert_eq!(run.status, 0, "curl got no response");
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(status(s), None, "no status code is invented");
        assert_eq!(s.attr("error.type").str(), "response_not_observed");
        assert_eq!(s.span.status.as_ref().map(|st| st.code), Some(2));
    }
}

#[test]
fn agent_started_mid_connection_picks_up_at_the_next_request() {
    use std::io::{BufRead, BufReader, Write};
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut client = std::process::Command::new("python3")
        .arg(tracer_e2e::servers::script("client.py"))
        .args(["twophase", "127.0.0.1", &server.port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "waiting",
        "the first request is done before the agent starts"
    );
    let mut agent = agent(&receiver, &["--port", &server.port.to_string()]);
    writeln!(client.stdin.take().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200 200 200");
    client.wait().unwrap();
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    // The client's sends are all seen. The server was already blocked in recv when the
    // agent started: that read's request is not seen (its syscall entry was missed), and
    // its response is not given a request; the next request is whole on both sides.
    let mut clients: Vec<_> = spans.iter().filter(|s| s.is_client()).map(path).collect();
    clients.sort();
    assert_eq!(clients, vec!["/after1", "/after2"]);
    let servers: Vec<_> = spans.iter().filter(|s| s.is_server()).map(path).collect();
    assert_eq!(servers, vec!["/after2"]);
    assert!(spans.iter().all(|s| status(s) == Some(200)));
}

#[test]
fn several_iovecs_with_sendmsg_recvmsg_writev_readv() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = agent(&receiver, &["--port", &server.port.to_string()]);
    let run = python_client("iovecs", server.port, None);
    assert_eq!(run.statuses, vec![200, 200]);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4);
    let mut client_paths: Vec<_> = spans.iter().filter(|s| s.is_client()).map(path).collect();
    client_paths.sort();
    assert_eq!(client_paths, vec!["/sendmsg", "/writev"]);
    assert!(spans.iter().all(|s| status(s) == Some(200)));
}

/// A client that peeks (`MSG_PEEK`) at each response before reading it, once with `recv`
/// (`recvfrom`) and once with `recvmsg`: the peeked byte is read again by the next call, and
/// is taken once. Taken twice, it shifted the stream, and the response went unseen.
#[test]
fn a_peek_at_a_response_is_not_taken_for_its_bytes() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = agent(&receiver, &["--port", &server.port.to_string()]);
    let run = python_client("peek", server.port, None);
    assert_eq!(run.statuses, vec![203, 200]);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let mut seen: Vec<(bool, String, Option<i64>, Option<i64>)> = spans
        .iter()
        .map(|s| {
            (
                s.is_client(),
                path(s),
                status(s),
                s.attributes.get("http.response.body.size").map(|v| v.int()),
            )
        })
        .collect();
    seen.sort();
    let want = |client| {
        [
            (client, "/peek-recvmsg".to_string(), Some(200), Some(2)),
            (client, "/status/203".to_string(), Some(203), Some(0)),
        ]
    };
    assert_eq!(seen, [want(false), want(true)].concat(), "{spans:#?}");
}

#[test]
fn continue_and_switching_protocols() {
    let receiver = Receiver::start();
    let port = free_port();
    let server = tracer_e2e::servers::spawn_server(
        std::process::Command::new("node")
            .arg(tracer_e2e::servers::script("server.js"))
            .arg(port.to_string()),
        port,
    );
    let mut agent = agent(&receiver, &["--pid", &server.pid().to_string()]);
    let body = "x".repeat(2000);
    let run = curl(
        &format!("http://127.0.0.1:{port}/upload"),
        &["-H", "Expect: 100-continue", "--data-binary", &body],
    );
    assert_eq!(run.status, 200);
    let up = python_client("upgrade", port, None);
    assert_eq!(up.statuses, vec![101]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(
        spans.len(),
        2,
        "100 Continue is not an answer; bytes after 101 are not HTTP"
    );
    let upload = spans.iter().find(|s| path(s) == "/upload").unwrap();
    assert_eq!(status(upload), Some(200));
    assert_eq!(upload.attr("http.request.body.size").int(), 2000);
    let ws = spans.iter().find(|s| path(s) == "/ws").unwrap();
    assert_eq!(status(ws), Some(101));
}

#[test]
fn non_http_connections_stop_costing_after_their_first_bytes() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = agent(&receiver, &["--port", &server.port.to_string()]);
    // 204 sends of binary bytes on one connection.
    python_client("garbage_stream", server.port, None);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
        200
    );
    let spans = receiver.wait_spans(2, |_| true);
    // The kernel's own count (`counter::EVENTS`), read from the agent's map.
    let events = agent.kernel_counter(0);
    agent.stop();
    assert_eq!(spans.len(), 2, "only the valid request gives spans");
    // Without muting, the client's 204 sends alone would be 204 events.
    assert!(
        events < 40,
        "{events} events: the junk connection was muted after its first bytes"
    );
}
