//! RED metrics: the request-duration histograms of real servers and clients, read from the
//! agent's `/metrics`, with exact counts per series after a known number of requests.

use std::{collections::BTreeMap, process::Command, time::Duration};

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::Receiver,
    servers::{curl, curl_many, exe_name, python_framings, run_client_text, script, spawn_server},
};

/// The value of one sample: `name{labels}` with the labels in the order the agent writes
/// them; 0 when the series is not there.
fn value(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let key = format!("{name}{{{}}}", labels.join(","));
    m.get(&key).copied().unwrap_or(0.0)
}

/// The `_count` samples of one histogram, labels -> count.
fn counts(m: &BTreeMap<String, f64>, histogram: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{histogram}_count{{");
    m.iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix(&prefix)?.trim_end_matches('}').to_string(),
                *v,
            ))
        })
        .collect()
}

/// Python's HTTP server answers known statuses to curl, both ends traced, with one route
/// template. Each series counts exactly its requests; the route folds the ids, errors carry `error.type` as the conventions say for each side, and no
/// path, query or peer address is ever a label. Spans of routed requests are named after
/// their route.
#[test]
fn request_durations_per_series_from_real_traffic() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let metrics_port = free_port().to_string();
    let mut agent = Agent::exporting(
        &receiver,
        &[
            "--port",
            &port,
            "--prometheus-port",
            &metrics_port,
            "--route",
            "/users/{id}",
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let urls: Vec<String> = [
        "/users/1?secret=1",
        "/users/2",
        "/users/3",
        "/status/500",
        "/status/500",
        "/status/404",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(
        curl_many(&urls, &[]).statuses,
        [200, 200, 200, 500, 500, 404]
    );
    assert_eq!(
        curl(&format!("{base}/users/9"), &["-X", "POST"]).status,
        200
    );
    let m = agent.metrics_when(Duration::from_secs(15), |m| {
        m.get("tracer_spans_total") == Some(&14.0)
    });
    let spans = receiver.wait_spans(14, |_| true);
    agent.stop();

    let server_h = "http_server_request_duration_seconds_count";
    let server_name = exe_name(server.pid());
    let served = [("service_name", server_name.as_str())];
    let curled = [("service_name", "curl")];
    let ok = [
        ("http_request_method", "GET"),
        ("http_response_status_code", "200"),
    ];
    let tail = [("url_scheme", "http"), ("network_protocol_version", "1.1")];
    let route = [("http_route", "/users/{id}")];
    let series = |head: &[(&'static str, &'static str)],
                  mid: &[(&'static str, &'static str)],
                  end: &[(&'static str, &'static str)]| {
        [&served[..], head, mid, &tail, end].concat()
    };
    assert_eq!(
        value(&m, server_h, &series(&ok, &route, &[])),
        3.0,
        "{m:#?}"
    );
    let post = [
        ("http_request_method", "POST"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(
        value(&m, server_h, &series(&post, &route, &[])),
        1.0,
        "{m:#?}"
    );
    let e500 = [
        ("http_request_method", "GET"),
        ("http_response_status_code", "500"),
    ];
    assert_eq!(
        value(&m, server_h, &series(&e500, &[], &[("error_type", "500")])),
        2.0,
        "{m:#?}"
    );
    let e404 = [
        ("http_request_method", "GET"),
        ("http_response_status_code", "404"),
    ];
    assert_eq!(value(&m, server_h, &series(&e404, &[], &[])), 1.0, "{m:#?}");
    assert_eq!(
        counts(&m, "http_server_request_duration_seconds").len(),
        4,
        "{m:#?}"
    );

    let client_h = "http_client_request_duration_seconds_count";
    let peer = [
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
    ];
    let with_peer = |head: &[(&'static str, &'static str)], error: Option<&'static str>| {
        let error: Vec<(&str, &str)> = error.map(|e| ("error_type", e)).into_iter().collect();
        [&curled[..], head, &tail[..], &error, &peer].concat()
    };
    assert_eq!(value(&m, client_h, &with_peer(&ok, None)), 3.0, "{m:#?}");
    assert_eq!(value(&m, client_h, &with_peer(&post, None)), 1.0, "{m:#?}");
    assert_eq!(value(&m, client_h, &with_peer(&e500, Some("500"))), 2.0);
    assert_eq!(value(&m, client_h, &with_peer(&e404, Some("404"))), 1.0);
    assert_eq!(
        counts(&m, "http_client_request_duration_seconds").len(),
        4,
        "{m:#?}"
    );

    // Every request is in a bucket, and its duration in the sum.
    let all_server: f64 = counts(&m, "http_server_request_duration_seconds")
        .values()
        .sum();
    assert_eq!(all_server, 7.0);
    let inf = value(
        &m,
        "http_server_request_duration_seconds_bucket",
        &[&[("le", "+Inf")][..], &series(&ok, &route, &[])].concat(),
    );
    assert_eq!(inf, 3.0, "{m:#?}");
    for key in m.keys() {
        assert!(
            !key.contains("users/1") && !key.contains("secret") && !key.contains("url_path"),
            "{key}"
        );
    }
    for s in spans.iter().filter(|s| s.is_server()) {
        match s.attributes.get("http.route") {
            Some(r) => {
                assert_eq!(r.str(), "/users/{id}");
                let method = s.attr("http.request.method").str();
                assert_eq!(s.span.name, format!("{method} /users/{{id}}"), "{s:#?}");
            }
            None => assert!(s.attr("url.path").str().starts_with("/status/"), "{s:#?}"),
        }
    }
}

/// gRPC calls (grpcio at both ends) in the RPC histograms: one series per method and status,
/// errors as the conventions say; not in the HTTP histograms.
#[test]
fn grpc_calls_in_the_rpc_histograms() {
    let port = free_port();
    let server = spawn_server(
        Command::new("python3")
            .arg(script("grpc_server.py"))
            .arg(port.to_string()),
        port,
    );
    let metrics_port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &port.to_string(),
            "--prometheus-port",
            &metrics_port,
            "--output",
            "none",
        ],
        &[],
    );
    let run = run_client_text(
        Command::new("python3")
            .arg(script("grpc_client.py"))
            .arg(port.to_string())
            .args(["say", "say", "fail"]),
    );
    assert_eq!(run.text.trim(), "OK OK UNAVAILABLE");
    let m = agent.metrics_when(Duration::from_secs(15), |m| {
        m.get("tracer_spans_total") == Some(&6.0)
    });
    agent.stop();
    let server_name = exe_name(server.pid());
    // The client is the same Python (it has exited: its name is read from the server).
    let client_name = server_name.clone();
    let server = "rpc_server_call_duration_seconds_count";
    let say = [
        ("rpc_system_name", "grpc"),
        ("rpc_method", "demo.Echo/Say"),
        ("rpc_response_status_code", "OK"),
    ];
    let fail = [
        ("rpc_system_name", "grpc"),
        ("rpc_method", "demo.Echo/Fail"),
        ("rpc_response_status_code", "UNAVAILABLE"),
        ("error_type", "UNAVAILABLE"),
    ];
    let served = [("service_name", server_name.as_str())];
    let called = [("service_name", client_name.as_str())];
    assert_eq!(
        value(&m, server, &[&served[..], &say].concat()),
        2.0,
        "{m:#?}"
    );
    assert_eq!(
        value(&m, server, &[&served[..], &fail].concat()),
        1.0,
        "{m:#?}"
    );
    assert_eq!(
        counts(&m, "rpc_server_call_duration_seconds").len(),
        2,
        "{m:#?}"
    );
    let client = "rpc_client_call_duration_seconds_count";
    let port = port.to_string();
    let peer = [
        ("server_address", "127.0.0.1"),
        ("server_port", port.as_str()),
    ];
    assert_eq!(
        value(&m, client, &[&called[..], &say, &peer].concat()),
        2.0,
        "{m:#?}"
    );
    assert_eq!(
        value(&m, client, &[&called[..], &fail, &peer].concat()),
        1.0,
        "{m:#?}"
    );
    assert!(
        counts(&m, "http_server_request_duration_seconds").is_empty(),
        "gRPC is not counted as HTTP too: {m:#?}"
    );
}

/// With a limit of 3 series, five statuses make two series and the overflow series, which
/// takes the rest; the agent counts what went there.
#[test]
fn the_series_limit_holds_with_an_overflow_series() {
    let server = python_framings(free_port());
    let metrics_port = free_port().to_string();
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--prometheus-port",
            &metrics_port,
            "--metrics-series-limit",
            "3",
            "--output",
            "none",
        ],
        &[],
    );
    let urls: Vec<String> = [201, 202, 203, 204, 205, 201]
        .iter()
        .map(|s| format!("http://127.0.0.1:{}/status/{s}", server.port))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    curl_many(&urls, &[]);
    let m = agent.metrics_when(Duration::from_secs(15), |m| {
        m.get("tracer_spans_total") == Some(&12.0)
    });
    agent.stop();
    for side in ["server", "client"] {
        let c = counts(&m, &format!("http_{side}_request_duration_seconds"));
        assert_eq!(c.len(), 3, "{c:#?}");
        assert_eq!(c["otel_metric_overflow=\"true\""], 3.0, "{c:#?}");
        assert_eq!(c.values().sum::<f64>(), 6.0, "{c:#?}");
        assert_eq!(
            value(
                &m,
                "tracer_metric_series_overflowed_total",
                &[("metric", &format!("http.{side}.request.duration"))]
            ),
            3.0
        );
    }
}

/// Metrics pushed over OTLP (`OTEL_METRICS_EXPORTER=otlp`) to the receiver, over
/// http/protobuf with cumulative temporality and over gRPC with delta temporality: the
/// request-duration histograms count exactly the requests made, per series, with the
/// conventions' unit and bucket boundaries and no path label; the agent's own counters come
/// along.
#[test]
fn request_durations_and_counters_over_otlp() {
    for (protocol, temporality, code) in [("http/protobuf", "cumulative", 2), ("grpc", "delta", 1)]
    {
        let receiver = Receiver::start();
        let server = python_framings(free_port());
        let port = server.port.to_string();
        let endpoint = if protocol == "grpc" {
            receiver.grpc_url()
        } else {
            receiver.http_url()
        };
        let mut agent = Agent::start(
            &[
                "--port",
                &port,
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                protocol,
                "--route",
                "/users/{id}",
            ],
            &[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                    temporality,
                ),
            ],
        );
        let base = format!("http://127.0.0.1:{port}");
        let urls: Vec<String> = ["/users/1", "/users/2", "/status/500"]
            .iter()
            .map(|p| format!("{base}{p}"))
            .collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        assert_eq!(curl_many(&urls, &[]).statuses, [200, 200, 500]);
        // Per series: (status, route) -> requests, summed over the exports for delta.
        let per_series = || {
            let points = if code == 1 {
                receiver.all_points("http.server.request.duration")
            } else {
                receiver.last_points("http.server.request.duration")
            };
            let mut m: BTreeMap<(String, String), u64> = BTreeMap::new();
            for p in &points {
                let key = (
                    p.attr("http.response.status_code")
                        .unwrap_or("-")
                        .to_string(),
                    p.attr("http.route").unwrap_or("-").to_string(),
                );
                *m.entry(key).or_default() += p.count;
            }
            (m, points)
        };
        let want: BTreeMap<(String, String), u64> = [
            (("200".to_string(), "/users/{id}".to_string()), 2),
            (("500".to_string(), "-".to_string()), 1),
        ]
        .into();
        let got = tracer_e2e::wait_for(Duration::from_secs(20), || {
            let (m, points) = per_series();
            (m == want).then_some(points)
        });
        // Once more after a few more exports: nothing counted twice.
        std::thread::sleep(Duration::from_millis(1500));
        let (again, _) = per_series();
        // Delta points add up; a cumulative one holds the total.
        let spans = tracer_e2e::wait_for(Duration::from_secs(10), || {
            let points = if code == 1 {
                receiver.all_points("tracer.spans")
            } else {
                receiver.last_points("tracer.spans")
            };
            Some(points.iter().map(|p| p.sum).sum::<f64>()).filter(|&n| n >= 6.0)
        });
        let clients = receiver.last_points("http.client.request.duration");
        let losses = receiver.last_points("tracer.kernel_losses");
        agent.stop();
        let points = got.unwrap_or_else(|| panic!("{protocol}: {:?}", per_series().0));
        assert_eq!(again, want, "{protocol}");
        for p in &points {
            assert_eq!(p.unit, "s");
            assert_eq!(p.temporality, code, "{protocol}");
            assert_eq!(p.explicit_bounds.len(), 14);
            assert_eq!(p.explicit_bounds[0], 0.005);
            assert_eq!(
                p.attr("service.name"),
                Some(exe_name(server.pid()).as_str())
            );
            assert_eq!(p.attr("http.request.method"), Some("GET"));
            assert!(!p.attributes.contains_key("url.path"), "{p:?}");
            assert_eq!(
                p.resource.get("service.name").map(|v| v.str()),
                Some("tracer")
            );
            assert_eq!(
                p.transport,
                if protocol == "grpc" { "grpc" } else { "http" }
            );
        }
        let error = points
            .iter()
            .find(|p| p.attr("http.response.status_code") == Some("500"))
            .unwrap();
        assert_eq!(error.attr("error.type"), Some("500"));
        assert!(
            spans.is_some(),
            "{protocol}: tracer.spans counts the six spans"
        );
        assert!(
            clients
                .iter()
                .all(|p| p.attr("service.name") == Some("curl")
                    && p.attr("server.port") == Some(port.as_str())),
            "{clients:?}"
        );
        assert!(
            losses
                .iter()
                .any(|p| p.attr("reason") == Some("ringbuf_full")),
            "{losses:?}"
        );
    }
}

/// The service graph of a real chain on one host: curl calls a Python front service, which
/// calls a Python back service; curl also calls the back service directly, once, and gets a
/// 503. Each edge counts exactly its requests and failures, with both ends' durations where
/// both ends are traced, on `/metrics` and over OTLP.
#[test]
fn service_graph_of_a_chain() {
    const N: usize = 5;
    let receiver = Receiver::start();
    let (front_port, back_port) = (free_port(), free_port());
    let back = spawn_server(
        Command::new("python3")
            .arg(script("server.py"))
            .arg(back_port.to_string())
            .env("OTEL_SERVICE_NAME", "backend"),
        back_port,
    );
    let front = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([front_port.to_string(), back_port.to_string()])
            .env("OTEL_SERVICE_NAME", "frontend"),
        front_port,
    );
    let metrics_port = free_port().to_string();
    let endpoint = receiver.http_url();
    let mut agent = Agent::start(
        &[
            "--port",
            &front_port.to_string(),
            "--port",
            &back_port.to_string(),
            "--prometheus-port",
            &metrics_port,
            "--otlp-endpoint",
            &endpoint,
        ],
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    let urls: Vec<String> = (0..N)
        .map(|i| format!("http://127.0.0.1:{front_port}/chain?n={i}"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(curl_many(&urls, &[]).statuses, vec![200; N]);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{back_port}/status/503"), &[]).status,
        503
    );
    // curl and the front's server spans, the front's client and the back's server spans,
    // and the direct call's two.
    let spans = (4 * N + 2) as f64;
    let m = agent.metrics_when(Duration::from_secs(15), |m| {
        m.get("tracer_spans_total") == Some(&spans)
    });
    let total = "traces_service_graph_request_total";
    let failed = "traces_service_graph_request_failed_total";
    let edge = |c: &'static str, s: &'static str| [("client", c), ("server", s)];
    let otlp_total = |c: &str, s: &str| {
        receiver
            .last_points("traces_service_graph_request")
            .iter()
            .filter(|p| p.attr("client") == Some(c) && p.attr("server") == Some(s))
            .map(|p| p.sum)
            .sum::<f64>()
    };
    let over_otlp = tracer_e2e::wait_for(Duration::from_secs(10), || {
        (otlp_total("frontend", "backend") == N as f64).then_some(())
    });
    let otlp_curl_back = otlp_total("curl", "backend");
    agent.stop();
    drop((front, back));
    assert_eq!(
        value(&m, total, &edge("curl", "frontend")),
        N as f64,
        "{m:#?}"
    );
    assert_eq!(
        value(&m, total, &edge("frontend", "backend")),
        N as f64,
        "{m:#?}"
    );
    assert_eq!(value(&m, total, &edge("curl", "backend")), 1.0, "{m:#?}");
    assert_eq!(value(&m, failed, &edge("curl", "backend")), 1.0, "{m:#?}");
    assert_eq!(
        value(&m, failed, &edge("frontend", "backend")),
        0.0,
        "{m:#?}"
    );
    for side in ["server", "client"] {
        let h = format!("traces_service_graph_request_{side}_seconds_count");
        assert_eq!(
            value(&m, &h, &edge("frontend", "backend")),
            N as f64,
            "{side}: {m:#?}"
        );
    }
    // Nothing else: every end found its other end.
    let edges: Vec<&String> = m.keys().filter(|k| k.starts_with(total)).collect();
    assert_eq!(edges.len(), 3, "{edges:#?}");
    assert!(over_otlp.is_some(), "the graph over OTLP");
    assert_eq!(otlp_curl_back, 1.0);
}

/// With an export interval longer than the agent runs, the metrics still arrive: the agent
/// pushes them when it stops, with the final counts (the spans exported just before).
#[test]
fn metrics_are_flushed_at_exit_with_the_final_counts() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let mut agent = Agent::start(
        &["--port", &port, "--otlp-endpoint", &receiver.http_url()],
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    );
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/x"), &[]).status, 200);
    receiver.wait_spans(2, |_| true);
    assert_eq!(receiver.metrics_exports(), 0, "nothing before the exit");
    agent.stop();
    let count = |name: &str| {
        receiver
            .last_points(name)
            .iter()
            .map(|p| if p.count > 0 { p.count as f64 } else { p.sum })
            .sum::<f64>()
    };
    assert_eq!(count("http.server.request.duration"), 1.0);
    assert_eq!(count("http.client.request.duration"), 1.0);
    assert_eq!(count("tracer.spans"), 2.0);
    assert_eq!(count("tracer.spans_exported"), 2.0);
    assert_eq!(count("traces_service_graph_request"), 1.0);
}
