//! OTLP export over gRPC or HTTP (protobuf): endpoint, protocol and headers resolved per the
//! OpenTelemetry environment-variable specification, one resource per traced process, and the
//! request built straight from our spans with the official protobuf messages
//! (`opentelemetry-proto`), so that a span costs one conversion and no SDK span in between.

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

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

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(ConfigError::Protocol(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("OTLP protocol `{0}` is not supported: use `grpc` or `http/protobuf`")]
    Protocol(String),
    #[error("OTLP endpoint `{0}` is not an http:// URL (TLS endpoints are not supported yet)")]
    Endpoint(String),
    #[error("{0}: `{1}` is not a timeout in milliseconds (1 to 3600000)")]
    Timeout(&'static str, String),
    #[error("{0}: `{1}` is not a compression: use `gzip` or `none`")]
    Compression(&'static str, String),
}

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Full URL: for HTTP, including the `/v1/traces` path.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Longest wait for one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Compress request bodies with gzip (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
}

/// The specification's default export timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpConfig {
    /// `endpoint` over `protocol` with the specification's defaults: 10 s, no compression.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            protocol,
            timeout: DEFAULT_TIMEOUT,
            gzip: false,
        }
    }
}

/// The first of `vars` that `env` gives a value: its name and value.
fn first_set(
    env: &impl Fn(&str) -> Option<String>,
    vars: [&'static str; 2],
) -> Option<(&'static str, String)> {
    vars.into_iter().find_map(|v| env(v).map(|x| (v, x)))
}

const TRACES_PATH: &str = "/v1/traces";

/// Resolve the export configuration from the flags, then the standard variables:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL:
/// `/v1/traces` is appended for HTTP), `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, and the `..._TIMEOUT` (milliseconds) and `..._COMPRESSION`
/// variables in their per-signal and general forms. `None` when no endpoint is configured
/// anywhere.
pub fn resolve(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<Protocol>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let protocol = match protocol_flag {
        Some(p) => p,
        None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => p.parse()?,
            // The specification's default.
            None => Protocol::HttpProtobuf,
        },
    };
    let (url, is_base) = match endpoint_flag {
        Some(e) => (e.to_string(), true),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => (e, false),
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(e) => (e, true),
                None => return Ok(None),
            },
        },
    };
    let url = url.trim().to_string();
    if !url.starts_with("http://") {
        return Err(ConfigError::Endpoint(url));
    }
    let endpoint = match protocol {
        Protocol::HttpProtobuf if is_base && !url.trim_end_matches('/').ends_with(TRACES_PATH) => {
            format!("{}{TRACES_PATH}", url.trim_end_matches('/'))
        }
        _ => url,
    };
    let timeout = match first_set(
        &env,
        [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    ) {
        None => DEFAULT_TIMEOUT,
        Some((var, v)) => match v.trim().parse::<u64>() {
            Ok(ms) if (1..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            _ => return Err(ConfigError::Timeout(var, v)),
        },
    };
    let gzip = match first_set(
        &env,
        [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    ) {
        None => false,
        Some((var, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" => false,
            _ => return Err(ConfigError::Compression(var, v)),
        },
    };
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        timeout,
        gzip,
    }))
}

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
        headers: Vec<(
            tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        )>,
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
                request.set_timeout(*timeout);
                for (k, v) in headers {
                    request.metadata_mut().insert(k.clone(), v.clone());
                }
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
                    .map_err(|status| {
                        SendError::new(
                            format!("{}: {}", status.code(), status.message()),
                            retry::grpc_retryable(status.code()),
                        )
                    })
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

/// Export headers from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`:
/// `key=value` pairs separated by commas, keys lower-cased, values percent-decoded (W3C
/// Baggage format, as the specification says). Empty entries are skipped; an entry without
/// `=` or with an empty key is an error that names the variable.
pub fn headers_from_env(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, BuildError> {
    let Some((var, text)) = [
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ]
    .into_iter()
    .find_map(|var| env(var).map(|v| (var, v))) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let bad = || BuildError::HeaderVariable {
                var,
                entry: pair.trim().to_string(),
            };
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let k = k.trim();
            if k.is_empty() {
                return Err(bad());
            }
            let value = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            Ok((k.to_ascii_lowercase(), value.into_owned()))
        })
        .collect()
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    #[error("invalid header `{0}`")]
    Header(String),
    #[error("{var}: `{entry}` is not a key=value pair")]
    HeaderVariable { var: &'static str, entry: String },
    #[error("HTTP client: {0}")]
    Client(String),
}

impl Otlp {
    /// Build the exporter. Must run inside the tokio runtime. Headers come from
    /// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`.
    pub fn new(config: &OtlpConfig) -> Result<Self, BuildError> {
        let headers = headers_from_env(|k| std::env::var(k).ok())?;
        let transport = match config.protocol {
            Protocol::HttpProtobuf => {
                let mut map = reqwest::header::HeaderMap::new();
                for (k, v) in &headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    map.insert(name, value);
                }
                Transport::Http {
                    client: reqwest::Client::builder()
                        .timeout(config.timeout)
                        .build()
                        .map_err(|e| BuildError::Client(e.to_string()))?,
                    url: config.endpoint.clone(),
                    headers: map,
                    gzip: config.gzip,
                }
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| BuildError::Endpoint(e.to_string()))?
                    .timeout(config.timeout)
                    .connect_lazy();
                let mut metadata = Vec::new();
                for (k, v) in &headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| BuildError::Header(k.clone()))?;
                    let value = v.parse().map_err(|_| BuildError::Header(k.clone()))?;
                    metadata.push((key, value));
                }
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
        let body = self.encode(spans, clock);
        while self.inflight.len() >= IN_FLIGHT {
            match self.inflight.join_next().await {
                Some(done) => Self::settle(done, &mut settled),
                None => break,
            }
        }
        let transport = self.transport.clone();
        let n = spans.len() as u64;
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

        settled.merge(self.reap());
        settled
    }

    /// The encoded export request for `spans`: one `ResourceSpans` per process.
    pub fn encode(&mut self, spans: &[HttpSpan], clock: &Clock) -> Vec<u8> {
        let mut pids: Vec<u32> = Vec::new();
        for span in spans {
            if !pids.contains(&span.process.pid) {
                pids.push(span.process.pid);
                self.resource(&span.process);
            }
        }
        let mut out = Vec::with_capacity(spans.len() * 512);
        for pid in pids {
            let resource = &self.resources[&pid].1;
            self.encoder.resource_spans(
                resource,
                &self.scope,
                spans.iter().filter(|s| s.process.pid == pid),
                clock,
                &mut out,
            );
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
        let mut otlp = Otlp::new(&OtlpConfig::new(
            "http://127.0.0.1:9/v1/traces",
            Protocol::HttpProtobuf,
        ))
        .unwrap();
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

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(resolve(None, None, env(&[])), Ok(None));
    }

    #[test]
    fn base_endpoint_gets_the_traces_path_for_http() {
        let c = resolve(
            None,
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = resolve(Some("http://c:4318/v1/traces"), None, env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
    }

    #[test]
    fn signal_endpoint_is_used_as_is_and_wins() {
        let c = resolve(
            None,
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://t:9999/custom");
    }

    #[test]
    fn flags_override_the_environment() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let c = resolve(Some("http://flag:4317"), Some(Protocol::Grpc), e)
            .unwrap()
            .unwrap();
        assert_eq!(c, OtlpConfig::new("http://flag:4317", Protocol::Grpc));
    }

    #[test]
    fn grpc_from_the_environment() {
        let c = resolve(
            None,
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://c:4317");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert_eq!(
            resolve(
                None,
                None,
                env(&[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x")
                ])
            ),
            Err(ConfigError::Protocol("http/json".into()))
        );
        assert!(matches!(
            resolve(Some("collector:4317"), None, env(&[])),
            Err(ConfigError::Endpoint(_))
        ));
    }

    #[test]
    fn timeout_and_compression_per_signal_or_general() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let c = resolve(None, None, env(&[base])).unwrap().unwrap();
        assert_eq!((c.timeout, c.gzip), (DEFAULT_TIMEOUT, false));
        let c = resolve(
            None,
            None,
            env(&[
                base,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.timeout, c.gzip), (Duration::from_millis(2500), true));
        let c = resolve(
            None,
            None,
            env(&[
                base,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.timeout, c.gzip), (Duration::from_millis(700), false));
        for (var, bad) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-5"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "99999999999999999999"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "g\u{e9}zip"),
        ] {
            let err = resolve(None, None, env(&[base, (var, bad)])).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}={bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
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

    #[test]
    fn header_variables_are_parsed_and_decoded() {
        let h = |pairs: &[(&str, &str)]| super::headers_from_env(env(pairs));
        assert_eq!(h(&[]).unwrap(), vec![]);
        assert_eq!(
            h(&[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                " Authorization=Bearer%20x%3Dy , api-key = k1,,x-empty=",
            )])
            .unwrap(),
            vec![
                ("authorization".to_string(), "Bearer x=y".to_string()),
                ("api-key".to_string(), "k1".to_string()),
                ("x-empty".to_string(), String::new()),
            ]
        );
        // The per-signal variable wins.
        assert_eq!(
            h(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ])
            .unwrap(),
            vec![("b".to_string(), "2".to_string())]
        );
    }

    #[test]
    fn malformed_header_variables_are_errors_not_panics() {
        let h = |v: &str| super::headers_from_env(env(&[("OTEL_EXPORTER_OTLP_HEADERS", v)]));
        for bad in ["novalue", "=x", "a=1,b"] {
            let err = h(bad).unwrap_err().to_string();
            assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{err}");
        }
        // Broken escapes and multi-byte text decode without a panic.
        for odd in [
            "k=%",
            "k=%4",
            "k=%zz",
            "k=%a\u{e9}",
            "k=\u{e9}%\u{e9}",
            "k=%ff%fe",
        ] {
            assert!(h(odd).is_ok(), "{odd}");
        }
    }
}
