//! The userspace pipeline alone: recorded events (nginx under keep-alive load, both ends
//! traced) through decoding, time ordering, HTTP parsing, pairing, linking, conversion to
//! OTLP and protobuf encoding. Reports events per second on one core. Then what the metrics
//! add per finished exchange: the request-duration histograms and the service graph as the
//! Prometheus endpoint reads them, and with OTLP metrics on top.
//!
//! `cargo bench -p tracer-userspace --bench pipeline`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer_userspace::{
    app::replay_recording,
    correlate::Capture,
    export::otlp::{Otlp, OtlpConfig, Protocol},
    metrics::{
        graph::Graph,
        otlp::{MetricsConfig, OtlpMetrics},
        red::Red,
    },
};

const RECORDING: &[u8] = include_bytes!("../tests/golden/nginx-keepalive.rec");

/// Events in the recording (each is one syscall the kernel reported).
fn event_count() -> u64 {
    replay_recording(RECORDING, Capture::default(), |_| {})
        .expect("the recording replays")
        .1
        .events
}

fn pipeline(c: &mut Criterion) {
    let events = event_count();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Only its encoder is used: nothing is sent.
    let mut otlp = runtime.block_on(async {
        Otlp::new(&OtlpConfig::new(
            "http://127.0.0.1:9/v1/traces",
            Protocol::HttpProtobuf,
        ))
        .unwrap()
    });
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(events));
    group.bench_function("events_to_spans", |b| {
        b.iter(|| {
            let mut n = 0usize;
            replay_recording(RECORDING, Capture::default(), |_| n += 1).unwrap();
            n
        })
    });
    group.bench_function("events_to_otlp_bytes", |b| {
        b.iter(|| {
            let mut spans = Vec::new();
            let (clock, _) =
                replay_recording(RECORDING, Capture::default(), |s| spans.push(s)).unwrap();
            otlp.encode(&spans, &clock).len()
        })
    });
    group.finish();

    // The encoder alone, per span, on a batch of the exporter's size.
    let (clock, batch) = {
        let mut spans = Vec::new();
        let (clock, _) =
            replay_recording(RECORDING, Capture::default(), |s| spans.push(s)).unwrap();
        let batch: Vec<_> = spans.iter().cycle().take(2048).cloned().collect();
        (clock, batch)
    };
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("otlp_spans", |b| {
        b.iter(|| otlp.encode(&batch, &clock).len())
    });
    group.finish();
}

/// Per finished exchange, in steady state (the series exist already).
fn metrics(c: &mut Criterion) {
    let mut spans = Vec::new();
    replay_recording(RECORDING, Capture::default(), |s| spans.push(s)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Nothing listens there; the export interval is longer than the run.
    let otel = runtime.block_on(async {
        OtlpMetrics::start(
            &MetricsConfig {
                otlp: OtlpConfig::new("http://127.0.0.1:9/v1/metrics", Protocol::HttpProtobuf),
                temporality: opentelemetry_sdk::metrics::Temporality::Cumulative,
                interval: std::time::Duration::from_secs(3600),
                series_limit: 2000,
            },
            Vec::new(),
        )
        .unwrap()
    });
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(spans.len() as u64));
    let (mut red, mut graph) = (Red::default(), Graph::default());
    group.bench_function("prometheus", |b| {
        b.iter(|| {
            for s in &spans {
                red.record(s);
                graph.record(s);
            }
        })
    });
    let (mut red, mut graph) = (Red::default(), Graph::default());
    group.bench_function("prometheus_and_otlp", |b| {
        b.iter(|| {
            for s in &spans {
                let (instrument, attributes, seconds) = red.record_returning(s);
                otel.record(instrument, &attributes, seconds);
                for (edge, o) in graph.record(s) {
                    otel.record_edge(&edge, &o);
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline, metrics);
criterion_main!(benches);
