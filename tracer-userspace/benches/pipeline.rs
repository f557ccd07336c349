//! The userspace pipeline alone: recorded events (nginx under keep-alive load, both ends
//! traced) through decoding, time ordering, HTTP parsing, pairing, linking, conversion to
//! OTLP and protobuf encoding. Reports events per second on one core.
//!
//! `cargo bench -p tracer-userspace --bench pipeline`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer_userspace::{
    app::replay_recording,
    correlate::Capture,
    export::otlp::{Otlp, OtlpConfig, Protocol},
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
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
