//! Servers and clients in several languages, each checked for exact span counts and
//! attributes: Node, Java and Go servers answering curl; Node, Java, Go and Python clients
//! calling nginx.

use std::process::Command;

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{
        ClientRun, Server, curl_many, exe_name, go_binary, nginx, python_client, run_client,
        script, spawn_server,
    },
};

fn agent(receiver: &Receiver, args: &[&str]) -> Agent {
    Agent::exporting(receiver, args)
}

fn status(s: &Received) -> i64 {
    s.attr("http.response.status_code").int()
}

/// A server answering curl: exactly one SERVER span per request, from the server's pid.
fn server_answers_curl(server: Server, service: &str) -> Vec<Received> {
    let receiver = Receiver::start();
    let mut agent = agent(&receiver, &["--pid", &server.pid().to_string()]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let (a, b) = (format!("{base}/"), format!("{base}/chunked"));
    let run = curl_many(&[&a, &b, &a], &[]);
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 3);
    for s in &spans {
        assert!(s.is_server());
        assert_eq!(s.pid(), server.pid());
        assert_eq!(s.res("service.name").str(), service);
        assert_eq!(status(s), 200);
        assert_eq!(s.attr("server.port").int(), server.port as i64);
    }
    spans
}

#[test]
fn node_server() {
    let port = free_port();
    let server = spawn_server(
        Command::new("node")
            .arg(script("server.js"))
            .arg(port.to_string()),
        port,
    );
    let service = exe_name(server.pid());
    let spans = server_answers_curl(server, &service);
    let chunked = spans
        .iter()
        .find(|s| s.attr("url.path").str() == "/chunked")
        .unwrap();
    assert_eq!(
        chunked.attr("http.response.body.size").int(),
        11,
        "chunked body, decoded size"
    );
}

#[test]
fn java_server() {
    let port = free_port();
    let server = spawn_server(
        Command::new("java")
            .arg(script("Server.java"))
            .arg(port.to_string()),
        port,
    );
    server_answers_curl(server, "java");
}

#[test]
fn go_server() {
    let port = free_port();
    let server = spawn_server(
        Command::new(go_binary()).args(["serve", &port.to_string()]),
        port,
    );
    server_answers_curl(server, "gohttp");
}

/// A client calling nginx: exactly one CLIENT span per request, from the client's pid, and
/// nginx's SERVER span for each.
fn client_calls_nginx(run: impl FnOnce(u16) -> ClientRun, n: usize, service: &str, prefix: &str) {
    let receiver = Receiver::start();
    let server = nginx(free_port());
    let port = server.port.to_string();
    let mut agent = agent(&receiver, &["--port", &port]);
    let client = run(server.port);
    assert_eq!(client.statuses.len(), n);
    let spans = receiver.wait_spans(2 * n, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2 * n);
    let clients: Vec<_> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(clients.len(), n);
    for s in &clients {
        assert_eq!(s.pid(), client.pid);
        assert_eq!(s.res("service.name").str(), service);
        assert!(
            s.attr("url.path").str().starts_with(prefix),
            "{}",
            s.attr("url.path").str()
        );
        assert_eq!(status(s), client.statuses[0] as i64);
    }
    for s in spans.iter().filter(|s| s.is_server()) {
        assert!(server.pids.contains(&s.pid()));
    }
}

#[test]
fn node_client() {
    client_calls_nginx(
        |port| {
            run_client(
                Command::new("node")
                    .arg(script("client.js"))
                    .args([port.to_string(), "5".into()]),
            )
        },
        5,
        "node",
        "/node/",
    );
}

#[test]
fn java_client() {
    client_calls_nginx(
        |port| {
            run_client(
                Command::new("java")
                    .arg(script("Client.java"))
                    .args([port.to_string(), "5".into()]),
            )
        },
        5,
        "java",
        "/java/",
    );
}

#[test]
fn go_client() {
    client_calls_nginx(
        |port| run_client(Command::new(go_binary()).args(["get", &port.to_string(), "5"])),
        5,
        "gohttp",
        "/go/",
    );
}

#[test]
fn python_urllib_client() {
    client_calls_nginx(
        |port| python_client("urllib", port, Some("urllib/x")),
        1,
        &exe_name_of_python(),
        "/urllib/",
    );
}

fn exe_name_of_python() -> String {
    use std::io::BufRead;
    // The interpreter says it runs (a launcher may exec it first), then waits for stdin.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys; print('up', flush=True); sys.stdin.read()",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up");
    let name = exe_name(child.id());
    drop(child.stdin.take());
    let _ = child.wait();
    name
}
