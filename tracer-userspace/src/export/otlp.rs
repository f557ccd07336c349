//! OTLP export over gRPC or HTTP (protobuf): endpoint, protocol and headers resolved per the
//! OpenTelemetry environment-variable specification, one resource per traced process, and the
//! request built straight from our spans with the official protobuf messages
//! (`opentelemetry-proto`), so that a span costs one conversion and no SDK span in between.

use std::{collections::HashMap, sync::Arc, time::Duration};

#[cfg(test)]
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceResponse,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource as ProtoResource,
};
use prost::Message as _;

use super::retry::{self, SendError};
#[cfg(test)]
use crate::correlate::span::{Kind, Value};
use crate::correlate::{clock::Clock, process::Process, span::HttpSpan};

use super::client;
pub use super::client::BuildError;
pub use super::config::{ConfigError, DEFAULT_TIMEOUT, OtlpConfig, Protocol, Signal, resolve};

/// Sends spans to an OTLP receiver, grouped by the process they came from, with up to
/// [`IN_FLIGHT`] export requests under way at once so that a receiver's round trip does not
/// limit throughput. Only the encoded bytes of a request are held while it is under way.
pub struct Otlp {
    transport: Transport,
    inflight: tokio::task::JoinSet<Done>,
    /// Each process's `Resource`, encoded once.
    resources: HashMap<u32, (Arc<Process>, Vec<u8>)>,
    /// Our `InstrumentationScope`, encoded.
    scope: Vec<u8>,
    encoder: super::encode::Encoder,
    host: String,
}

/// Most export requests under way at once.
pub const IN_FLIGHT: usize = 4;

/// The largest export request sent: gRPC receivers refuse messages over 4 MiB by default
/// (the OpenTelemetry Collector among them), and HTTP receivers are often set alike.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// A finished export request.
struct Done {
    spans: u64,
    failed: bool,
    /// Spans the receiver took the request with but rejected (`partial_success`).
    rejected: u64,
}

/// Spans whose export request has finished.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Taken by the receiver.
    pub exported: u64,
    /// Lost: the request failed after its retries.
    pub failed: u64,
    /// In a request the receiver took, but rejected by it (`partial_success`).
    pub rejected: u64,
}

impl Settled {
    fn merge(&mut self, other: Settled) {
        self.exported += other.exported;
        self.failed += other.failed;
        self.rejected += other.rejected;
    }

    fn add(&mut self, done: &Done) {
        if done.failed {
            self.failed += done.spans;
        } else {
            let rejected = done.rejected.min(done.spans);
            self.exported += done.spans - rejected;
            self.rejected += rejected;
        }
    }
}

/// What a receiver said of a request it took: how many spans it rejected, and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Accepted {
    rejected: u64,
    message: String,
}

impl Accepted {
    fn of(response: Option<ExportTraceServiceResponse>) -> Self {
        match response.and_then(|r| r.partial_success) {
            Some(p) => Accepted {
                rejected: p.rejected_spans.max(0) as u64,
                message: p.error_message,
            },
            None => Accepted::default(),
        }
    }
}

/// Whether a partial success was logged yet (at warn level once; later ones at debug).
static PARTIAL_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Log a receiver's partial success: the first at warn level, later ones at debug level.
fn log_partial_success(rejected: u64, sent: u64, message: &str) {
    let first = !PARTIAL_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed);
    let level = if first {
        log::Level::Warn
    } else {
        log::Level::Debug
    };
    let why = if message.is_empty() {
        "no reason given"
    } else {
        message
    };
    let later = if first {
        " (counted in spans_rejected; later ones are logged at debug level)"
    } else {
        ""
    };
    log::log!(
        level,
        "the OTLP receiver rejected {rejected} of {sent} spans: {why}{later}"
    );
}

/// How requests reach the receiver. Cheap to clone: clones share connections.
#[derive(Clone)]
enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
    Grpc {
        client: tonic::client::Grpc<tonic::transport::Channel>,
        headers: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
}

/// The trace service's export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC codec that sends a request already encoded (by [`super::encode`]) as it is, and
/// reads the response with the generated message type.
struct RawCodec;
struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Transport {
    async fn send(&self, body: bytes::Bytes) -> Result<Accepted, SendError> {
        match self {
            Transport::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let mut request = client
                    .post(url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                request = if *gzip {
                    request
                        .header(reqwest::header::CONTENT_ENCODING, "gzip")
                        .body(gzipped(&body))
                } else {
                    request.body(body)
                };
                let response = request
                    .send()
                    .await
                    .map_err(|e| SendError::new(e.to_string(), true))?;
                let status = response.status();
                if status.is_success() {
                    // A body that is not a response message is still a success.
                    let body = response.bytes().await.unwrap_or_default();
                    return Ok(Accepted::of(ExportTraceServiceResponse::decode(body).ok()));
                }
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
                Err(SendError {
                    message: format!("the receiver answered {status}"),
                    retryable: retry::http_retryable(status.as_u16()),
                    retry_after,
                })
            }
            Transport::Grpc {
                client,
                headers,
                timeout,
            } => {
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = headers.clone();
                request.set_timeout(*timeout);
                let mut client = client.clone();
                client
                    .ready()
                    .await
                    .map_err(|e| SendError::new(e.to_string(), true))?;
                client
                    .unary(
                        request,
                        tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH),
                        RawCodec,
                    )
                    .await
                    .map(|r| Accepted::of(Some(r.into_inner())))
                    .map_err(|status| retry::grpc_error(&status))
            }
        }
    }

    /// Send with retries and backoff for what the receiver may take later.
    async fn send_retrying(&self, body: Vec<u8>) -> Result<Accepted, String> {
        // Shared, not copied, between attempts.
        let body = bytes::Bytes::from(body);
        retry::with_retries(|| self.send(body.clone())).await
    }
}

/// `body` compressed with gzip (the fast level: export runs at span rates).
fn gzipped(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = out.write_all(body);
    out.finish().unwrap_or_default()
}

impl Otlp {
    /// Build the exporter. Must run inside the tokio runtime.
    pub fn new(config: &OtlpConfig) -> Result<Self, BuildError> {
        let headers = &config.headers;
        let transport = match config.protocol {
            Protocol::HttpProtobuf => {
                let mut map = reqwest::header::HeaderMap::new();
                for (k, v) in headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    map.insert(name, value);
                }
                Transport::Http {
                    client: client::http_client(config)?,
                    url: config.endpoint.clone(),
                    headers: map,
                    gzip: config.gzip,
                }
            }
            Protocol::Grpc => {
                let channel = client::grpc_channel(config)?;
                let metadata = client::grpc_metadata(headers)?;
                let mut client = tonic::client::Grpc::new(channel)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                if config.gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Transport::Grpc {
                    client,
                    headers: metadata,
                    timeout: config.timeout,
                }
            }
        };
        Ok(Otlp {
            transport,
            inflight: tokio::task::JoinSet::new(),
            resources: HashMap::new(),
            scope: InstrumentationScope {
                name: "tracer".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }
            .encode_to_vec(),
            encoder: Default::default(),
            host: hostname(),
        })
    }

    /// Start exporting a batch (one request, one resource per process). Waits only when
    /// [`IN_FLIGHT`] requests are already under way; returns what finished meanwhile.
    pub async fn export(&mut self, spans: &[HttpSpan], clock: &Clock) -> Settled {
        let mut settled = Settled::default();
        for (body, n) in self.encode_capped(spans, clock) {
            self.start(body, n, &mut settled).await;
        }
        settled.merge(self.reap());
        settled
    }

    /// Encoded export requests for `spans`, each at most [`MAX_REQUEST_BYTES`] (a batch that
    /// encodes larger is halved until its parts fit; one span alone goes as it is), with the
    /// number of spans of each.
    pub fn encode_capped(&mut self, spans: &[HttpSpan], clock: &Clock) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut todo = vec![spans];
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            let body = self.encode(part, clock);
            if body.len() > MAX_REQUEST_BYTES && part.len() > 1 {
                let (a, b) = part.split_at(part.len() / 2);
                // Popped in order: a first.
                todo.push(b);
                todo.push(a);
            } else {
                out.push((body, part.len() as u64));
            }
        }
        out
    }

    /// Start one export request, waiting only while [`IN_FLIGHT`] are under way.
    async fn start(&mut self, body: Vec<u8>, n: u64, settled: &mut Settled) {
        while self.inflight.len() >= IN_FLIGHT {
            match self.inflight.join_next().await {
                Some(done) => Self::settle(done, settled),
                None => break,
            }
        }
        let transport = self.transport.clone();
        self.inflight.spawn(async move {
            match transport.send_retrying(body).await {
                Ok(a) => {
                    if a.rejected > 0 || !a.message.is_empty() {
                        log_partial_success(a.rejected, n, &a.message);
                    }
                    Done {
                        spans: n,
                        failed: false,
                        rejected: a.rejected,
                    }
                }
                Err(e) => {
                    log::warn!("OTLP export of {n} spans failed: {e}");
                    Done {
                        spans: n,
                        failed: true,
                        rejected: 0,
                    }
                }
            }
        });
    }

    /// The encoded export request for `spans`: one `ResourceSpans` per process.
    pub fn encode(&mut self, spans: &[HttpSpan], clock: &Clock) -> Vec<u8> {
        // The spans of each process, in the order the processes first appear: one pass to
        // group them (linear in spans, whatever the number of processes), one to encode. A
        // process is its description, not its pid: a program exec'd under the pid of another
        // is a resource of its own, even within one batch.
        let mut groups: Vec<(&Arc<Process>, Vec<&HttpSpan>)> = Vec::new();
        let mut group_of: crate::conn::FastMap<*const Process, usize> = Default::default();
        for span in spans {
            let i = *group_of
                .entry(Arc::as_ptr(&span.process))
                .or_insert_with(|| {
                    groups.push((&span.process, Vec::new()));
                    groups.len() - 1
                });
            groups[i].1.push(span);
        }
        let mut out = Vec::with_capacity(spans.len() * 512);
        for (process, group) in groups {
            self.resource(process);
            let resource = &self.resources[&process.pid].1;
            self.encoder
                .resource_spans(resource, &self.scope, group.into_iter(), clock, &mut out);
        }
        out
    }

    /// What finished since the last call, without waiting.
    pub fn reap(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Some(done) = self.inflight.try_join_next() {
            Self::settle(done, &mut settled);
        }
        settled
    }

    /// Wait for every request under way.
    pub async fn finish(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Some(done) = self.inflight.join_next().await {
            Self::settle(done, &mut settled);
        }
        settled
    }

    fn settle(done: Result<Done, tokio::task::JoinError>, settled: &mut Settled) {
        match done {
            Ok(done) => settled.add(&done),
            Err(e) => log::error!("an OTLP export task failed: {e}"),
        }
    }

    pub fn shutdown(&mut self) {
        self.inflight.abort_all();
    }

    /// Make sure the resource of `process` is known (built once per process).
    fn resource(&mut self, process: &Arc<Process>) {
        if let Some((known, _)) = self.resources.get(&process.pid)
            && known == process
        {
            return;
        }
        if self.resources.len() > 4096 {
            self.resources.clear();
        }
        let mut attrs = vec![
            opentelemetry::KeyValue::new("process.pid", process.pid as i64),
            opentelemetry::KeyValue::new(
                "process.executable.name",
                process.executable_name.clone(),
            ),
            opentelemetry::KeyValue::new("host.name", self.host.clone()),
            opentelemetry::KeyValue::new("telemetry.distro.name", "tracer"),
            opentelemetry::KeyValue::new("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(path) = &process.executable_path {
            attrs.push(opentelemetry::KeyValue::new(
                "process.executable.path",
                path.clone(),
            ));
        }
        if let Some(ns) = &process.service.namespace {
            attrs.push(opentelemetry::KeyValue::new(
                "service.namespace",
                ns.clone(),
            ));
        }
        if let Some(v) = &process.service.version {
            attrs.push(opentelemetry::KeyValue::new("service.version", v.clone()));
        }
        if let Some(id) = &process.container_id {
            attrs.push(opentelemetry::KeyValue::new("container.id", id.clone()));
        }
        // The SDK's builder adds OTEL_RESOURCE_ATTRIBUTES and the telemetry.sdk.* attributes.
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(process.service_name().to_string())
            .with_attributes(attrs)
            .build();
        let attributes = resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.as_str().to_string(),
                value: Some(any_value_of(v)),
                ..Default::default()
            })
            .collect();
        self.resources.insert(
            process.pid,
            (
                process.clone(),
                ProtoResource {
                    attributes,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        );
    }
}

fn any_value_of(v: &opentelemetry::Value) -> AnyValue {
    use opentelemetry::{Array, Value as V};
    let value = match v {
        V::Bool(b) => any_value::Value::BoolValue(*b),
        V::I64(i) => any_value::Value::IntValue(*i),
        V::F64(f) => any_value::Value::DoubleValue(*f),
        V::String(s) => any_value::Value::StringValue(s.to_string()),
        V::Array(Array::String(list)) => any_value::Value::ArrayValue(ArrayValue {
            values: list
                .iter()
                .map(|s| AnyValue {
                    value: Some(any_value::Value::StringValue(s.to_string())),
                })
                .collect(),
        }),
        other => any_value::Value::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
fn str_value(s: String) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    })
}

/// An [`HttpSpan`] as an OTLP span message: the reference the direct encoder is tested
/// against.
#[cfg(test)]
pub fn proto_span(span: &HttpSpan, clock: &Clock) -> Span {
    let status = if span.is_error() {
        Status {
            message: span.error_message().unwrap_or_default(),
            code: StatusCode::Error as i32,
        }
    } else {
        Status::default()
    };
    Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.tracestate.clone().unwrap_or_default(),
        parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        // W3C flags, and the specification's "parent is remote" bits: known, and set for a
        // parent in another process.
        flags: span.trace_flags as u32
            | if span.parent_span_id.is_some() && span.parent_remote {
                0x300
            } else {
                0x100
            },
        name: span.name().to_string(),
        kind: match span.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        } as i32,
        start_time_unix_nano: clock.to_unix_nanos(span.start_ns),
        end_time_unix_nano: clock.to_unix_nanos(span.end_ns),
        attributes: span
            .attributes()
            .into_iter()
            .map(|(k, v)| KeyValue {
                key: k.into_owned(),
                value: match v {
                    Value::Str(s) => str_value(s),
                    Value::Int(i) => Some(AnyValue {
                        value: Some(any_value::Value::IntValue(i)),
                    }),
                    Value::StrList(list) => Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue {
                            values: list
                                .into_iter()
                                .map(|s| AnyValue {
                                    value: Some(any_value::Value::StringValue(s)),
                                })
                                .collect(),
                        })),
                    }),
                },
                ..Default::default()
            })
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exporter to nowhere, for encoding only.
    fn test_otlp() -> Otlp {
        Otlp::new(&OtlpConfig::new(
            "http://127.0.0.1:9/v1/traces",
            Protocol::HttpProtobuf,
        ))
        .unwrap()
    }

    /// The direct encoder's bytes decode to exactly the request built from the generated
    /// message types, for spans of every shape the replays produce.
    #[tokio::test]
    async fn direct_encoding_matches_the_generated_messages() {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
        let recording: &[u8] = include_bytes!("../../tests/golden/python-curl.rec");
        let mut spans = Vec::new();
        let capture = crate::correlate::Capture {
            headers: std::sync::Arc::from(vec!["user-agent".to_string(), "accept".to_string()]),
            query: true,
            routes: Default::default(),
        };
        let (clock, _) =
            crate::app::replay_recording(recording, capture, |s| spans.push(s)).unwrap();
        assert!(spans.len() > 3);
        // One span without a response, one with a parent and trace state.
        spans[0].response = None;
        spans[1].parent_span_id = Some([7; 8]);
        spans[1].parent_remote = true;
        spans[1].tracestate = Some("vendor=1".into());
        spans[2].parent_span_id = Some([8; 8]);
        spans[2].parent_remote = false;
        let mut otlp = test_otlp();
        let bytes = otlp.encode(&spans, &clock);
        let got = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let mut pids: Vec<u32> = Vec::new();
        for s in &spans {
            if !pids.contains(&s.process.pid) {
                pids.push(s.process.pid);
            }
        }
        let want = ExportTraceServiceRequest {
            resource_spans: pids
                .iter()
                .map(|pid| ResourceSpans {
                    resource: Some(
                        ProtoResource::decode(otlp.resources[pid].1.as_slice()).unwrap(),
                    ),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope::decode(otlp.scope.as_slice()).unwrap()),
                        spans: spans
                            .iter()
                            .filter(|s| s.process.pid == *pid)
                            .map(|s| proto_span(s, &clock))
                            .collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        };
        assert_eq!(got, want);
        assert!(
            got.resource_spans[0].scope_spans[0].spans[0]
                .status
                .as_ref()
                .unwrap()
                .code
                == StatusCode::Error as i32
        );
    }

    /// A program exec'd under the pid of another is a resource of its own, even when the
    /// spans of both go out in one request.
    #[tokio::test]
    async fn two_programs_under_one_pid_are_two_resources() {
        let recording: &[u8] = include_bytes!("../../tests/golden/python-curl.rec");
        let mut spans = Vec::new();
        let (clock, _) =
            crate::app::replay_recording(recording, Default::default(), |s| spans.push(s)).unwrap();
        let mut before = spans[0].clone();
        let mut after = spans[0].clone();
        let mut process = (*before.process).clone();
        process.executable_name = "launcher".into();
        before.process = Arc::new(process.clone());
        process.executable_name = "program".into();
        after.process = Arc::new(process);
        let mut otlp = test_otlp();
        let batch = [before.clone(), after, before];
        let got =
            ExportTraceServiceRequest::decode(otlp.encode(&batch, &clock).as_slice()).unwrap();
        let names: Vec<(String, usize)> = got
            .resource_spans
            .iter()
            .map(|r| {
                let name = r
                    .resource
                    .as_ref()
                    .unwrap()
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "process.executable.name")
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                let Some(any_value::Value::StringValue(name)) = name else {
                    panic!("no executable name in {r:?}")
                };
                (name, r.scope_spans[0].spans.len())
            })
            .collect();
        assert_eq!(
            names,
            [("launcher".to_string(), 2), ("program".to_string(), 1)]
        );
    }

    #[tokio::test]
    async fn requests_larger_than_the_cap_are_split() {
        let recording: &[u8] = include_bytes!("../../tests/golden/python-curl.rec");
        let mut spans = Vec::new();
        let (clock, _) =
            crate::app::replay_recording(recording, Default::default(), |s| spans.push(s)).unwrap();
        // 100 spans of about 100 KB each.
        let big: Vec<HttpSpan> = (0..100)
            .map(|i| {
                let mut s = spans[i % spans.len()].clone();
                s.target = format!("/{i}/{}", "a".repeat(100_000)).into();
                s
            })
            .collect();
        let mut otlp = test_otlp();
        let parts = otlp.encode_capped(&big, &clock);
        assert!(parts.len() >= 3, "{}", parts.len());
        let mut paths = Vec::new();
        for (body, n) in &parts {
            assert!(body.len() <= MAX_REQUEST_BYTES, "{}", body.len());
            let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            let spans: Vec<&Span> = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .collect();
            assert_eq!(spans.len() as u64, *n);
            for s in spans {
                let path = s.attributes.iter().find(|kv| kv.key == "url.path").unwrap();
                let Some(any_value::Value::StringValue(p)) =
                    path.value.as_ref().and_then(|v| v.value.as_ref())
                else {
                    panic!("{path:?}")
                };
                paths.push(p.split('/').nth(1).unwrap().parse::<usize>().unwrap());
            }
        }
        // Every span once (grouped by process within a request).
        paths.sort();
        assert_eq!(paths, (0..100).collect::<Vec<_>>());
        let small = otlp.encode_capped(&spans, &clock);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].1, spans.len() as u64);
    }

    #[test]
    fn partial_success_counts_rejected_spans_as_not_exported() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let a = Accepted::of(Some(ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }));
        assert_eq!(a.rejected, 3);
        assert_eq!(a.message, "too old");
        assert_eq!(Accepted::of(None), Accepted::default());
        let mut s = Settled::default();
        s.add(&Done {
            spans: 10,
            failed: false,
            rejected: 3,
        });
        s.add(&Done {
            spans: 5,
            failed: true,
            rejected: 0,
        });
        // A receiver cannot reject more than it was sent.
        s.add(&Done {
            spans: 2,
            failed: false,
            rejected: 9,
        });
        assert_eq!(
            s,
            Settled {
                exported: 7,
                failed: 5,
                rejected: 5
            }
        );
    }

    #[test]
    fn gzip_bodies_decompress_to_the_request() {
        use std::io::Read as _;
        let body: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let z = gzipped(&body);
        assert!(z.len() < body.len() / 4, "{}", z.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }
}
