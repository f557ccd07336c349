//! The OTLP exporter against a receiver that refuses, asks for a wait, rejects part of a
//! request, or reads gzip; and every variable the agent reads, given a malformed value.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tracer_e2e::{
    agent::{Agent, binary},
    certs::Pki,
    free_port,
    receiver::{Answer, Receiver, ServerTls},
    servers::{curl, python_framings},
};

/// The receiver answers the first request 429 with `Retry-After: 2`: the agent waits those
/// two seconds (not its own short backoff), sends again, and every span arrives once, gzip
/// compressed as `OTEL_EXPORTER_OTLP_COMPRESSION` asked.
#[test]
fn retry_after_is_waited_and_bodies_are_gzipped() {
    let receiver = Receiver::start();
    receiver.script(vec![Answer {
        status: Some(429),
        retry_after: Some("2".into()),
        ..Answer::default()
    }]);
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let metrics = free_port().to_string();
    let endpoint = receiver.http_url();
    let mut agent = Agent::start(
        &[
            "--port",
            &port,
            "--otlp-endpoint",
            &endpoint,
            "--prometheus-port",
            &metrics,
        ],
        &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
    );
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/x"), &[]).status, 200);
    let spans = receiver.wait_spans(2, |_| true);
    let m = agent.metrics_when(Duration::from_secs(10), |m| {
        m.get("tracer_spans_exported_total") == Some(&2.0)
    });
    agent.stop();
    assert_eq!(spans.len(), 2, "each span once: {spans:#?}");
    let arrivals = receiver.arrivals();
    assert!(arrivals.len() >= 2, "{arrivals:?}");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "the second try came {waited:?} after the first"
    );
    assert_eq!(m["tracer_spans_export_failed_total"], 0.0);
    let headers = receiver.http_headers();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(
            h.get("content-encoding").map(String::as_str),
            Some("gzip"),
            "{h:?}"
        );
    }
}

/// A gRPC receiver answers the first request `RESOURCE_EXHAUSTED` with a `RetryInfo` asking
/// for two seconds: the agent waits them (this code is retried only with such a detail), sends
/// again, and every span arrives once.
#[test]
fn grpc_retry_info_is_waited() {
    let receiver = Receiver::start();
    receiver.script(vec![Answer {
        grpc: Some((tonic::Code::ResourceExhausted, Some(Duration::from_secs(2)))),
        ..Answer::default()
    }]);
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let metrics = free_port().to_string();
    let endpoint = receiver.grpc_url();
    let mut agent = Agent::start(
        &[
            "--port",
            &port,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--prometheus-port",
            &metrics,
        ],
        &[],
    );
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/x"), &[]).status, 200);
    let spans = receiver.wait_spans(2, |_| true);
    let m = agent.metrics_when(Duration::from_secs(10), |m| {
        m.get("tracer_spans_exported_total") == Some(&2.0)
    });
    agent.stop();
    assert_eq!(spans.len(), 2, "each span once: {spans:#?}");
    let arrivals = receiver.arrivals();
    assert!(arrivals.len() >= 2, "{arrivals:?}");
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "the second try came {waited:?} after the first"
    );
    assert_eq!(m["tracer_spans_export_failed_total"], 0.0);
}

/// A receiver that takes a request but rejects part of it (`partial_success`): the rejected
/// spans are counted apart from the exported ones and the reason is logged once.
#[test]
fn a_partial_success_is_counted_and_logged() {
    let receiver = Receiver::start();
    receiver.script(vec![Answer {
        rejected: Some((1, "one span too many".into())),
        ..Answer::default()
    }]);
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let metrics = free_port().to_string();
    let mut agent = Agent::exporting(&receiver, &["--port", &port, "--prometheus-port", &metrics]);
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/x"), &[]).status, 200);
    receiver.wait_spans(2, |_| true);
    let m = agent.metrics_when(Duration::from_secs(10), |m| {
        m.get("tracer_spans_rejected_total") == Some(&1.0)
    });
    agent.stop();
    assert_eq!(m["tracer_spans_rejected_total"], 1.0, "{m:#?}");
    assert_eq!(m["tracer_spans_exported_total"], 1.0, "{m:#?}");
    let log = agent.stderr().join("\n");
    assert!(
        log.contains("the OTLP receiver rejected 1 of") && log.contains("one span too many"),
        "{log}"
    );
}

/// A receiver with a certificate of a test-made authority that requires client certificates
/// (mTLS): the agent trusts the authority (`OTEL_EXPORTER_OTLP_CERTIFICATE`), shows its own
/// certificate (`..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`) and sends gzip, over both
/// transports; the per-signal forms of the variables work alike. Without a client certificate,
/// or without trusting the authority, nothing is taken and the loss is counted.
#[test]
fn export_over_tls_and_mtls_with_gzip() {
    let pki = Pki::new();
    let receiver = Receiver::start_tls(ServerTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    assert!(receiver.http_url().starts_with("https://"));
    let server = python_framings(free_port());
    let port = server.port.to_string();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let general = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ];
    let per_signal = [
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.as_str()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            cert.as_str(),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", key.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
    ];
    for (transport, protocol, endpoint, env) in [
        ("http", "http/protobuf", receiver.http_url(), &general),
        ("grpc", "grpc", receiver.grpc_url(), &per_signal),
    ] {
        let mut agent = Agent::start(
            &[
                "--port",
                &port,
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                protocol,
            ],
            env,
        );
        let url = format!("http://127.0.0.1:{port}/{transport}");
        assert_eq!(curl(&url, &[]).status, 200);
        let spans = receiver.wait_spans(2, |s| {
            s.transport == transport
                && matches!(s.attributes.get("url.path"), Some(v) if v.str() == format!("/{transport}"))
        });
        agent.stop();
        assert_eq!(spans.len(), 2, "{transport}: {spans:#?}");
    }
    for h in receiver.http_headers() {
        assert_eq!(h.get("content-encoding").map(String::as_str), Some("gzip"));
    }
    assert!(!receiver.grpc_metadata().is_empty());
    assert!(
        receiver
            .grpc_metadata()
            .iter()
            .all(|m| m.get("grpc-encoding").map(String::as_str) == Some("gzip")),
        "{:?}",
        receiver.grpc_metadata()
    );
    // Refused: no client certificate, then a server certificate the agent cannot trust.
    let before = receiver.spans().len();
    for (what, env) in [
        ("no client certificate", &general[..1]),
        ("an untrusted authority", &general[1..3]),
    ] {
        let metrics = free_port().to_string();
        let mut agent = Agent::start(
            &[
                "--port",
                &port,
                "--otlp-endpoint",
                &receiver.http_url(),
                "--prometheus-port",
                &metrics,
            ],
            env,
        );
        assert_eq!(
            curl(&format!("http://127.0.0.1:{port}/no"), &[]).status,
            200
        );
        let m = agent.metrics_when(Duration::from_secs(20), |m| {
            m.get("tracer_spans_export_failed_total") == Some(&2.0)
        });
        agent.stop();
        assert_eq!(m["tracer_spans_export_failed_total"], 2.0, "{what}: {m:#?}");
        assert_eq!(m["tracer_spans_exported_total"], 0.0, "{what}: {m:#?}");
        let log = agent.stderr().join("\n");
        assert!(
            log.contains("OTLP export of 2 spans failed"),
            "{what}: {log}"
        );
    }
    assert_eq!(
        receiver.spans().len(),
        before,
        "nothing taken without TLS trust"
    );
}

/// Every variable the agent reads, with a malformed value: a one-line error that names it,
/// exit status 1, never a panic.
#[test]
fn malformed_values_of_every_variable_are_clear_errors() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let tls_endpoint = format!("https://127.0.0.1:{}", free_port());
    let cases: &[(&str, &str, &str)] = &[
        ("TRACER_PID", "abc", "--pid"),
        ("TRACER_PID", "0", "--pid"),
        ("TRACER_PORT", "70000", "--port"),
        ("TRACER_PORT", "9-1", "--port"),
        (
            "TRACER_OTLP_ENDPOINT",
            "collector:4317",
            "not an http:// or https:// URL",
        ),
        ("TRACER_OTLP_PROTOCOL", "http/json", "--otlp-protocol"),
        ("TRACER_OUTPUT", "xml", "--output"),
        ("TRACER_CAPTURE_BYTES", "10", "--capture-bytes"),
        ("TRACER_PROMETHEUS_PORT", "0", "--prometheus-port"),
        ("TRACER_ROUTE", "users/{id}", "starts with '/'"),
        ("TRACER_METRICS_SERIES_LIMIT", "1", "--metrics-series-limit"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://x",
            "not an http:// or https:// URL",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "x\u{e9}",
            "not an http:// or https:// URL",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/json"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "grpc\u{e9}",
            "is not supported",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "novalue",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "=x",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "10s",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "-1",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "zstd",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "%",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "/nonexistent/ca.pem: cannot read it",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/proc/self/status",
            "holds no PEM certificate",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "/k.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY is set but",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "/c.pem",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE is set but",
        ),
        ("OTEL_METRICS_EXPORTER", "statsd", "OTEL_METRICS_EXPORTER"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "often",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            "5s",
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "0",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "novalue",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        ),
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG"),
    ];
    for (var, value, needle) in cases {
        let mut cmd = Command::new(binary());
        cmd.stdin(Stdio::null()).env(var, value);
        if var.starts_with("OTEL_EXPORTER") && !var.contains("ENDPOINT") {
            let tls = var.contains("CERTIFICATE") || var.contains("KEY");
            cmd.env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                if tls { &tls_endpoint } else { &endpoint },
            );
        }
        if var.contains("METRIC") && *var != "OTEL_METRICS_EXPORTER" {
            cmd.env("OTEL_METRICS_EXPORTER", "otlp")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        }
        if *var == "OTEL_TRACES_SAMPLER_ARG" {
            cmd.env("OTEL_TRACES_SAMPLER", "traceidratio");
        }
        let out = cmd.output().expect("running tracer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if needle.starts_with("--") { 2 } else { 1 }),
            "{var}={value}: {err}"
        );
        assert!(err.contains(needle), "{var}={value}: {err}");
        assert!(!err.contains("panicked"), "{var}={value}: {err}");
    }
}
