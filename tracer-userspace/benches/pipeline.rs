//! The userspace pipeline alone: recorded events (nginx under keep-alive load, both ends
//! traced) through decoding, time ordering, HTTP parsing, pairing, linking, conversion to
//! OTLP and protobuf encoding. Reports events per second on one core.
//!
//! `cargo bench -p tracer-userspace --bench pipeline`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry::InstrumentationScope;
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use prost::Message as _;
use tracer_userspace::{app::replay_recording, correlate::Capture, export::otlp::span_data};

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
    let resource = ResourceAttributesWithSchema::from(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("bench")
            .build(),
    );
    let scope = InstrumentationScope::builder("tracer").build();
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
            let data = spans
                .iter()
                .map(|s| span_data(s, &clock, &scope))
                .collect::<Vec<_>>();
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(data, &resource),
            };
            request.encode_to_vec().len()
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
