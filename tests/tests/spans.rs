//! Real HTTP traffic through the real probes into a real OTLP receiver: exact span counts and
//! attributes for Python's http.server, nginx and curl, over gRPC and http/protobuf.

use std::time::{SystemTime, UNIX_EPOCH};

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{BIG_FILE_LEN, curl, curl_many, exe_name, nginx, python_http},
};

/// How long a loopback write may still be returning after its reader has the bytes: well
/// under a millisecond on an idle machine, but the writer can be preempted between the two,
/// for tens of milliseconds under the kernel matrix's emulation on a busy host.
const LOOPBACK_SLACK_NS: u64 = 50_000_000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Each curl gives one SERVER span (the server's pid) and one CLIENT span (that curl's pid),
/// with the attributes and timestamps of that exchange.
fn python_and_curl(protocol: &str, endpoint: impl Fn(&Receiver) -> String, transport: &str) {
    let receiver = Receiver::start();
    let server = python_http(free_port());
    let port = server.port.to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &port,
            "--otlp-endpoint",
            &endpoint(&receiver),
            "--otlp-protocol",
            protocol,
        ],
        &[],
    );
    let before = now_ns();
    let paths = ["/", "/index.html", "/missing?token=abc"];
    let mut runs = Vec::new();
    for path in paths {
        let url = format!("http://127.0.0.1:{port}{path}");
        runs.push(curl(&url, &["-A", "e2e-agent/1.0"]));
    }
    let after = now_ns();
    assert_eq!(
        runs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200, 404]
    );

    let spans = receiver.wait_spans(6, |_| true);
    agent.stop();
    assert_eq!(
        spans.len(),
        6,
        "exactly one SERVER and one CLIENT span per request"
    );
    assert!(spans.iter().all(|s| s.transport == transport));

    let servers: Vec<&Received> = spans.iter().filter(|s| s.is_server()).collect();
    let clients: Vec<&Received> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(servers.len(), 3);
    assert_eq!(clients.len(), 3);

    for (run, path) in runs.iter().zip(paths) {
        let expected_path = path.split('?').next().unwrap();
        let status = run.status as i64;
        let client = clients
            .iter()
            .find(|s| s.pid() == run.pid)
            .unwrap_or_else(|| panic!("no CLIENT span from curl pid {}", run.pid));
        assert_eq!(client.res("service.name").str(), "curl");
        assert_eq!(client.res("process.executable.name").str(), "curl");
        assert_eq!(client.span.name, "GET");
        assert_eq!(client.attr("http.request.method").str(), "GET");
        assert_eq!(client.attr("url.path").str(), expected_path);
        assert_eq!(
            client.attr("url.full").str(),
            format!("http://127.0.0.1:{port}{expected_path}")
        );
        assert_eq!(client.attr("http.response.status_code").int(), status);
        assert_eq!(client.attr("server.address").str(), "127.0.0.1");
        assert_eq!(client.attr("server.port").int(), server.port as i64);
        assert_eq!(client.attr("network.peer.port").int(), server.port as i64);
        assert_eq!(client.attr("user_agent.original").str(), "e2e-agent/1.0");
        // 4xx is an error for a client (status code 2 = ERROR), not for a server.
        let client_error = client.span.status.as_ref().map(|s| s.code) == Some(2);
        assert_eq!(client_error, status >= 400);

        // The server span of this exchange: the connection's other end.
        let client_port = client.attr("network.local.port").int();
        let srv = servers
            .iter()
            .find(|s| s.attr("client.port").int() == client_port)
            .unwrap_or_else(|| panic!("no SERVER span for client port {client_port}"));
        assert_eq!(srv.pid(), server.pid());
        assert_eq!(srv.res("service.name").str(), exe_name(server.pid()));
        assert_eq!(
            srv.res("process.executable.name").str(),
            exe_name(server.pid())
        );
        assert_eq!(srv.res("telemetry.sdk.language").str(), "rust");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(srv.res("host.name").str(), host.trim());
        assert_eq!(srv.attr("url.path").str(), expected_path);
        assert_eq!(srv.attr("url.scheme").str(), "http");
        assert_eq!(srv.attr("http.response.status_code").int(), status);
        assert_eq!(srv.attr("client.address").str(), "127.0.0.1");
        assert_eq!(srv.attr("network.peer.port").int(), client_port);
        assert_eq!(srv.attr("server.port").int(), server.port as i64);
        assert_eq!(srv.attr("network.protocol.version").str(), "1.1");
        assert_eq!(srv.attr("user_agent.original").str(), "e2e-agent/1.0");
        assert!(srv.span.status.as_ref().map(|s| s.code) != Some(2));
        assert!(srv.attributes.contains_key("http.response.body.size"));
        assert!(
            !srv.attributes.contains_key("url.query"),
            "query strings are not exported"
        );

        // Kernel timestamps: within the test's window, and the server's work nested inside
        // the client's.
        for s in [*client, *srv] {
            assert!(s.span.start_time_unix_nano >= before - 1_000_000_000);
            assert!(s.span.end_time_unix_nano <= after + 1_000_000_000);
            assert!(s.span.start_time_unix_nano < s.span.end_time_unix_nano);
        }
        assert!(client.span.start_time_unix_nano <= srv.span.start_time_unix_nano);
        // The server's span ends when its last write returns; on loopback the kernel hands
        // the bytes to the client inside that write, so the client may finish reading a
        // little before it returns.
        assert!(srv.span.end_time_unix_nano <= client.span.end_time_unix_nano + LOOPBACK_SLACK_NS);
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span.span_id.clone()).collect();
    assert_eq!(ids.len(), 6, "span ids are unique");
}

#[test]
fn python_server_and_curl_over_grpc() {
    python_and_curl("grpc", |r| r.grpc_url(), "grpc");
}

#[test]
fn python_server_and_curl_over_http_protobuf() {
    python_and_curl("http/protobuf", |r| r.http_url(), "http");
}

#[test]
fn otlp_settings_from_the_standard_environment() {
    let receiver = Receiver::start();
    let server = python_http(free_port());
    let port = server.port.to_string();
    let endpoint = receiver.grpc_url();
    let mut agent = Agent::start(
        &["--port", &port],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=e2e,x-other=2"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=e2e",
            ),
        ],
    );
    curl(&format!("http://127.0.0.1:{port}/"), &[]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    for span in &spans {
        assert_eq!(span.res("deployment.environment.name").str(), "e2e");
    }
    let md = receiver.grpc_metadata();
    assert!(!md.is_empty());
    assert!(
        md.iter()
            .all(|m| m.get("x-tenant").map(String::as_str) == Some("e2e")),
        "OTEL_EXPORTER_OTLP_HEADERS reaches the receiver: {md:?}"
    );

    // http/protobuf from OTEL_EXPORTER_OTLP_ENDPOINT gets /v1/traces appended.
    let receiver = Receiver::start();
    let endpoint = receiver.http_url();
    let mut agent = Agent::start(
        &["--port", &port],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=e2e"),
        ],
    );
    curl(&format!("http://127.0.0.1:{port}/"), &[]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.transport == "http"));
    assert!(
        receiver
            .http_headers()
            .iter()
            .all(|h| h.get("x-tenant").map(String::as_str) == Some("e2e"))
    );
}

#[test]
fn nginx_worker_spans() {
    let receiver = Receiver::start();
    let server = nginx(free_port());
    let port = server.port.to_string();
    let mut agent = Agent::exporting(&receiver, &["--comm", "nginx"]);
    // Keep-alive: three requests on one connection, then a static file.
    let base = format!("http://127.0.0.1:{port}");
    let (a, b) = (format!("{base}/"), format!("{base}/static/file.txt"));
    let run = curl_many(&[&a, &a, &b], &[]);
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 3, "only nginx is traced: three SERVER spans");
    for s in &spans {
        assert!(s.is_server());
        assert!(server.pids.contains(&s.pid()), "span from an nginx worker");
        assert_eq!(s.res("service.name").str(), "nginx");
        assert_eq!(s.attr("http.response.status_code").int(), 200);
    }
    let mut paths: Vec<_> = spans
        .iter()
        .map(|s| s.attr("url.path").str().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["/", "/", "/static/file.txt"]);
    let fixed = spans
        .iter()
        .find(|s| s.attr("url.path").str() == "/")
        .unwrap();
    assert_eq!(
        fixed.attr("http.response.body.size").int(),
        "hello from nginx\n".len() as i64
    );
    // All three came over one connection.
    let ports: std::collections::HashSet<_> =
        spans.iter().map(|s| s.attr("client.port").int()).collect();
    assert_eq!(ports.len(), 1);
}

#[test]
fn nginx_static_files_with_and_without_sendfile() {
    let receiver = Receiver::start();
    let server = nginx(free_port());
    let mut agent = Agent::exporting(&receiver, &["--comm", "nginx"]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let (a, b) = (
        format!("{base}/static/big.bin"),
        format!("{base}/sendfile/big.bin"),
    );
    // Both on one keep-alive connection: the sendfile response must end at its last byte
    // for the next request to pair.
    let run = curl_many(&[&b, &a, &b], &[]);
    assert_eq!(run.statuses, vec![200, 200, 200]);
    let spans = receiver.wait_spans(3, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 3);
    for s in &spans {
        assert_eq!(s.attr("http.response.status_code").int(), 200);
        assert_eq!(s.attr("http.response.body.size").int(), BIG_FILE_LEN as i64);
        assert!(
            s.span.status.as_ref().map(|st| st.code) != Some(2),
            "not an error"
        );
    }
    let sendfile = spans
        .iter()
        .filter(|s| s.attr("url.path").str() == "/sendfile/big.bin")
        .count();
    assert_eq!(sendfile, 2);
}

/// A process's own `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (read from its
/// environment) name its service: the name wins over `service.name` in the attributes,
/// namespace and version come along, and a process without them keeps its executable's name.
#[test]
fn service_identity_from_the_process_environment() {
    let receiver = tracer_e2e::receiver::Receiver::start();
    let (a, b) = (free_port(), free_port());
    let start = |port: u16, env: &[(&str, &str)]| {
        tracer_e2e::servers::spawn_server(
            std::process::Command::new("python3")
                .arg(tracer_e2e::servers::script("server.py"))
                .arg(port.to_string())
                .envs(env.iter().copied()),
            port,
        )
    };
    let checkout = start(
        a,
        &[
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,service.namespace=shop,service.version=1.2%2E3",
            ),
        ],
    );
    let cart = start(
        b,
        &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=cart%20api")],
    );
    let ports = [a.to_string(), b.to_string()];
    let mut agent = Agent::exporting(&receiver, &["--port", &ports[0], "--port", &ports[1]]);
    assert_eq!(curl(&format!("http://127.0.0.1:{a}/x"), &[]).status, 200);
    assert_eq!(curl(&format!("http://127.0.0.1:{b}/x"), &[]).status, 200);
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 4);
    for s in &spans {
        let name = s.res("service.name").str();
        if s.pid() == checkout.pid() {
            assert_eq!(name, "checkout");
            assert_eq!(s.res("service.namespace").str(), "shop");
            assert_eq!(s.res("service.version").str(), "1.2.3");
        } else if s.pid() == cart.pid() {
            assert_eq!(name, "cart api");
            assert!(!s.resource.contains_key("service.version"), "{s:#?}");
        } else {
            assert_eq!(name, "curl", "{s:#?}");
            assert!(!s.resource.contains_key("service.namespace"), "{s:#?}");
        }
    }
}

/// A launcher that execs the real program under the same pid and the same task name is named
/// by what runs now, not by what ran first: the kernel sends the executable's name with a
/// process's first connection and again after an exec, not with every connection. (Names
/// longer than 15 bytes share their task name: the kernel keeps 15.)
#[test]
fn a_program_exec_d_under_the_same_task_name_is_named_afresh() {
    let receiver = Receiver::start();
    let server = python_http(free_port());
    let port = server.port.to_string();
    let dir = tracer_e2e::servers::TempDir::new("exec");
    // The interpreter under a long name of its own (its standard library found through
    // PYTHONHOME), and curl under another that begins with the same 15 bytes.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable)); print(sys.prefix)",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let (interpreter, prefix) = out.trim().split_once('\n').unwrap();
    let (first, then) = ("tracer-e2e-first-program", "tracer-e2e-first-then-curl");
    std::fs::copy(interpreter, dir.path().join(first)).unwrap();
    std::fs::copy(which("curl"), dir.path().join(then)).unwrap();
    let then_path = dir.path().join(then);
    let mut agent = Agent::exporting(&receiver, &["--port", &port]);
    let script = format!(
        "import os, urllib.request\n\
         urllib.request.urlopen('http://127.0.0.1:{port}/index.html').read()\n\
         os.execv({then:?}, [{then:?}, '-s', '-o', '/dev/null', 'http://127.0.0.1:{port}/'])\n",
        then = then_path.to_str().unwrap()
    );
    let status = std::process::Command::new(dir.path().join(first))
        .args(["-c", &script])
        .env("PYTHONHOME", prefix)
        .status()
        .unwrap();
    assert!(status.success());
    let spans = receiver.wait_spans(4, |_| true);
    agent.stop();
    let client = |path: &str| {
        spans
            .iter()
            .find(|s| s.is_client() && s.attr("url.path").str() == path)
            .unwrap_or_else(|| panic!("no CLIENT span for {path}: {spans:#?}"))
    };
    let (before, after) = (client("/index.html"), client("/"));
    assert_eq!(before.pid(), after.pid(), "one process, two programs");
    assert_eq!(before.res("process.executable.name").str(), first);
    assert_eq!(after.res("process.executable.name").str(), then);
}

/// The file `PATH` finds for `program`.
fn which(program: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap()
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
