//! Sampling (`OTEL_TRACES_SAMPLER`): decisions that every agent on a trace's path agrees on,
//! exported spans only of sampled traces, metrics of every exchange.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::Receiver,
    servers::{curl_many, script, spawn_server},
};

const REQUESTS: usize = 1000;

/// Two services, each traced by its own agent: the front's agent (`--propagate`, sampler
/// `traceidratio` 0.5) decides each trace from its id and writes the decision into the
/// `traceparent` it adds to the front's call; the back's agent (`parentbased_traceidratio`
/// 0.5) follows that flag. Over 1,000 requests the two agents export exactly the same traces,
/// each whole (the front's two spans and the back's one), about half of them; the metrics
/// count every request.
#[test]
fn two_agents_agree_on_every_trace() {
    let receiver = Receiver::start();
    let (front_port, back_port) = (free_port(), free_port());
    let back = tracer_e2e::servers::python_framings(back_port);
    let front = spawn_server(
        Command::new("python3")
            .arg(script("proxy.py"))
            .args([front_port.to_string(), back_port.to_string()]),
        front_port,
    );
    let (front_metrics, back_metrics) = (free_port().to_string(), free_port().to_string());
    let endpoint = receiver.grpc_url();
    let (front_pid, back_pid) = (front.pid().to_string(), back.pid().to_string());
    let common = ["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"];
    let mut front_agent = Agent::start(
        &[
            &common[..],
            &[
                "--pid",
                &front_pid,
                "--propagate",
                "--prometheus-port",
                &front_metrics,
            ],
        ]
        .concat(),
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    let mut back_agent = Agent::start(
        &[
            &common[..],
            &["--pid", &back_pid, "--prometheus-port", &back_metrics],
        ]
        .concat(),
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    let urls: Vec<String> = (0..REQUESTS)
        .map(|i| format!("http://127.0.0.1:{front_port}/chain?n={i}"))
        .collect();
    for chunk in urls.chunks(250) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let run = curl_many(&chunk, &[]);
        assert!(run.statuses.iter().all(|&s| s == 200), "{:?}", run.statuses);
        assert_eq!(run.statuses.len(), chunk.len());
    }
    let total = |n: usize| {
        move |m: &BTreeMap<String, f64>| m.get("tracer_spans_total") == Some(&(n as f64))
    };
    let fm = front_agent.metrics_when(Duration::from_secs(30), total(2 * REQUESTS));
    let bm = back_agent.metrics_when(Duration::from_secs(30), total(REQUESTS));
    front_agent.stop();
    back_agent.stop();
    let spans = receiver.spans();

    // Metrics count every request, sampled or not.
    let count = |m: &BTreeMap<String, f64>, prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        count(&fm, "http_server_request_duration_seconds_count"),
        REQUESTS as f64
    );
    assert_eq!(
        count(&fm, "http_client_request_duration_seconds_count"),
        REQUESTS as f64
    );
    assert_eq!(
        count(&bm, "http_server_request_duration_seconds_count"),
        REQUESTS as f64
    );

    let mut by_trace: BTreeMap<Vec<u8>, Vec<(u32, bool)>> = BTreeMap::new();
    for s in &spans {
        assert_eq!(
            s.span.flags & 1,
            1,
            "only sampled spans are exported: {s:#?}"
        );
        by_trace
            .entry(s.span.trace_id.clone())
            .or_default()
            .push((s.pid(), s.is_server()));
    }
    let front_pid = front.pid();
    let back_pid = back.pid();
    for (trace, ends) in &by_trace {
        let ends: BTreeSet<_> = ends.iter().copied().collect();
        let whole: BTreeSet<_> = [(front_pid, true), (front_pid, false), (back_pid, true)].into();
        assert_eq!(
            ends, whole,
            "trace {trace:02x?}: both agents export it whole"
        );
    }
    let sampled = by_trace.len();
    assert_eq!(spans.len(), 3 * sampled);
    // Binomial(1000, 0.5): 400..600 is more than six standard deviations each side.
    assert!(
        (400..=600).contains(&sampled),
        "{sampled} of {REQUESTS} traces sampled"
    );
    assert_eq!(
        fm["tracer_spans_unsampled_total"],
        (2 * (REQUESTS - sampled)) as f64,
        "{fm:#?}"
    );
    assert_eq!(
        bm["tracer_spans_unsampled_total"],
        (REQUESTS - sampled) as f64
    );
}

/// `always_off`: nothing is exported, everything is counted; a malformed sampler variable
/// stops the agent at start with a clear error.
#[test]
fn always_off_exports_nothing_and_bad_values_are_errors() {
    let receiver = Receiver::start();
    let server = tracer_e2e::servers::python_framings(free_port());
    let port = server.port.to_string();
    let metrics = free_port().to_string();
    let endpoint = receiver.grpc_url();
    let mut agent = Agent::start(
        &[
            "--port",
            &port,
            "--prometheus-port",
            &metrics,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
        ],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    let url = format!("http://127.0.0.1:{port}/x");
    assert_eq!(curl_many(&[&url, &url], &[]).statuses, [200, 200]);
    let m = agent.metrics_when(Duration::from_secs(15), |m| {
        m.get("tracer_spans_total") == Some(&4.0)
    });
    agent.stop();
    assert_eq!(m["tracer_spans_unsampled_total"], 4.0, "{m:#?}");
    assert!(receiver.spans().is_empty());
    for (name, arg) in [
        ("sometimes", "1"),
        ("traceidratio", "1.5"),
        ("traceidratio", "é"),
    ] {
        let out = Command::new(tracer_e2e::agent::binary())
            .args(["--port", "1"])
            .env("OTEL_TRACES_SAMPLER", name)
            .env("OTEL_TRACES_SAMPLER_ARG", arg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name} {arg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("tracer: error: OTEL_TRACES_SAMPLER"),
            "{name} {arg}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
