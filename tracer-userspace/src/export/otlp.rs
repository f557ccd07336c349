//! OTLP export over gRPC or HTTP (protobuf) with `opentelemetry-otlp`: endpoint and protocol
//! resolution per the OpenTelemetry environment-variable specification, and one resource per
//! traced process.

use std::{borrow::Cow, collections::HashMap, str::FromStr, time::Duration};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};

use crate::correlate::{
    clock::Clock,
    process::Process,
    span::{HttpSpan, Kind, Value},
};

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
}

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Full URL: for HTTP, including the `/v1/traces` path.
    pub endpoint: String,
    pub protocol: Protocol,
}

const TRACES_PATH: &str = "/v1/traces";

/// Resolve the export configuration from the flags, then the standard variables:
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL:
/// `/v1/traces` is appended for HTTP), `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL`. `None` when no endpoint is configured anywhere.
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
    Ok(Some(OtlpConfig { endpoint, protocol }))
}

/// Sends spans to an OTLP receiver, grouped by the process they came from, with up to
/// [`IN_FLIGHT`] export requests under way at once so that a receiver's round trip does not
/// limit throughput.
pub struct Otlp {
    /// Exporters not in use; each carries the resource of its current request.
    idle: Vec<opentelemetry_otlp::SpanExporter>,
    inflight: tokio::task::JoinSet<Done>,
    resources: HashMap<u32, (std::sync::Arc<Process>, Resource)>,
    scope: InstrumentationScope,
    host: String,
}

/// Most export requests under way at once.
pub const IN_FLIGHT: usize = 4;

/// A finished export request, with its exporter to reuse.
struct Done {
    exporter: opentelemetry_otlp::SpanExporter,
    spans: u64,
    failed: bool,
}

/// Spans whose export request has finished.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub exported: u64,
    pub failed: u64,
}

impl Settled {
    fn merge(&mut self, other: Settled) {
        self.exported += other.exported;
        self.failed += other.failed;
    }

    fn add(&mut self, done: &Done) {
        if done.failed {
            self.failed += done.spans;
        } else {
            self.exported += done.spans;
        }
    }
}

/// Longest wait for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Otlp {
    /// Build the exporter. Must run inside the tokio runtime. Headers come from
    /// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, read by the exporter.
    pub fn new(config: &OtlpConfig) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let idle = (0..IN_FLIGHT)
            .map(|_| Self::exporter(config))
            .collect::<Result<_, _>>()?;
        Ok(Otlp {
            idle,
            inflight: tokio::task::JoinSet::new(),
            resources: HashMap::new(),
            scope: InstrumentationScope::builder("tracer")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            host: hostname(),
        })
    }

    fn exporter(
        config: &OtlpConfig,
    ) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
        Ok(match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_compression(opentelemetry_otlp::Compression::Gzip)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::recommended())
                .build()?,
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_retry_policy(opentelemetry_otlp::RetryPolicy::recommended())
                .build()?,
        })
    }

    /// Start exporting a batch, one request per process. Waits only when [`IN_FLIGHT`]
    /// requests are already under way; returns what finished meanwhile.
    pub async fn export(&mut self, spans: &[HttpSpan], clock: &Clock) -> Settled {
        let mut by_pid: HashMap<u32, Vec<SpanData>> = HashMap::new();
        for span in spans {
            by_pid
                .entry(span.process.pid)
                .or_default()
                .push(span_data(span, clock, &self.scope));
        }
        let mut settled = Settled::default();
        for (pid, batch) in by_pid {
            let process = &spans
                .iter()
                .find(|s| s.process.pid == pid)
                .expect("grouped from these spans")
                .process;
            let resource = self.resource(process);
            let mut exporter = loop {
                if let Some(e) = self.idle.pop() {
                    break e;
                }
                match self.inflight.join_next().await {
                    Some(done) => self.reuse(done, &mut settled),
                    None => {
                        log::error!("no OTLP exporter left; {} spans lost", batch.len());
                        settled.failed += batch.len() as u64;
                        return settled;
                    }
                }
            };
            self.inflight.spawn(async move {
                exporter.set_resource(&resource);
                let spans = batch.len() as u64;
                let failed = match exporter.export(batch).await {
                    Ok(()) => false,
                    Err(e) => {
                        log::warn!("OTLP export of {spans} spans failed: {e}");
                        true
                    }
                };
                Done {
                    exporter,
                    spans,
                    failed,
                }
            });
        }
        settled.merge(self.reap());
        settled
    }

    /// What finished since the last call, without waiting.
    pub fn reap(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Some(done) = self.inflight.try_join_next() {
            self.reuse(done, &mut settled);
        }
        settled
    }

    /// Wait for every request under way.
    pub async fn finish(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Some(done) = self.inflight.join_next().await {
            self.reuse(done, &mut settled);
        }
        settled
    }

    fn reuse(&mut self, done: Result<Done, tokio::task::JoinError>, settled: &mut Settled) {
        match done {
            Ok(done) => {
                settled.add(&done);
                self.idle.push(done.exporter);
            }
            // The exporter is lost with its task; the others carry on.
            Err(e) => log::error!("an OTLP export task failed: {e}"),
        }
    }

    pub fn shutdown(&mut self) {
        for exporter in &mut self.idle {
            let _ = exporter.shutdown();
        }
    }

    fn resource(&mut self, process: &std::sync::Arc<Process>) -> Resource {
        if let Some((known, r)) = self.resources.get(&process.pid)
            && known == process
        {
            return r.clone();
        }
        if self.resources.len() > 4096 {
            self.resources.clear();
        }
        let mut attrs = vec![
            KeyValue::new("process.pid", process.pid as i64),
            KeyValue::new("process.executable.name", process.executable_name.clone()),
            KeyValue::new("host.name", self.host.clone()),
            KeyValue::new("telemetry.distro.name", "tracer"),
            KeyValue::new("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(path) = &process.executable_path {
            attrs.push(KeyValue::new("process.executable.path", path.clone()));
        }
        let resource = Resource::builder()
            .with_service_name(process.service_name().to_string())
            .with_attributes(attrs)
            .build();
        self.resources
            .insert(process.pid, (process.clone(), resource.clone()));
        resource
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// An [`HttpSpan`] as the SDK's exportable span.
pub fn span_data(span: &HttpSpan, clock: &Clock, scope: &InstrumentationScope) -> SpanData {
    let trace_state = span
        .tracestate
        .as_deref()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let status = if span.is_error() {
        Status::error(span.error_message().unwrap_or(""))
    } else {
        Status::Unset
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::new(span.trace_flags),
            false,
            trace_state,
        ),
        parent_span_id: span
            .parent_span_id
            .map(SpanId::from_bytes)
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: span.parent_span_id.is_some(),
        span_kind: match span.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        },
        name: Cow::Owned(span.name().to_string()),
        start_time: clock.to_system(span.start_ns),
        end_time: clock.to_system(span.end_ns),
        attributes: span
            .attributes()
            .into_iter()
            .map(|(k, v)| match v {
                Value::Str(s) => KeyValue::new(k, s),
                Value::Int(i) => KeyValue::new(k, i),
                Value::StrList(list) => KeyValue::new(
                    k,
                    opentelemetry::Value::Array(opentelemetry::Array::String(
                        list.into_iter().map(Into::into).collect(),
                    )),
                ),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            c,
            OtlpConfig {
                endpoint: "http://flag:4317".into(),
                protocol: Protocol::Grpc
            }
        );
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
}
