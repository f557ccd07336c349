//! Metrics over OTLP: the request-duration histograms and the agent's own counters, pushed
//! every export interval through the OpenTelemetry SDK (`opentelemetry_sdk` metrics with
//! `opentelemetry-otlp`; the volume is a few series, so the SDK's cost does not matter here),
//! over the same connection setup as spans (TLS, headers, compression, timeout).
//!
//! The histograms receive exactly what the Prometheus store records, after its series limit
//! decided (an exchange past the limit is recorded under `otel.metric.overflow="true"` here
//! too). The counters are read from the latest snapshot the capture loop published.

use std::{collections::HashMap, time::Duration};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::metrics::{
    SdkMeterProvider, Temporality, periodic_reader_with_async_runtime::PeriodicReader,
};
use tokio::sync::watch;

use super::{Family, red};
use crate::export::{
    client::{self, BuildError},
    config::{self, ConfigError, OtlpConfig, Protocol, Signal},
};

/// How and where metrics go over OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub otlp: OtlpConfig,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
    pub temporality: Temporality,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub interval: Duration,
    /// Series per instrument (`--metrics-series-limit`).
    pub series_limit: usize,
}

/// The specification's default export interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsConfigError {
    #[error(transparent)]
    Export(#[from] ConfigError),
    #[error("OTEL_METRICS_EXPORTER: `{0}` is not an exporter: use otlp, prometheus or none")]
    Exporter(String),
    #[error(
        "OTEL_METRICS_EXPORTER asks for otlp but no endpoint is set (--otlp-endpoint, \
         OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT)"
    )]
    NoEndpoint,
    #[error(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: `{0}` is not a temporality: use \
         cumulative, delta or lowmemory"
    )]
    Temporality(String),
    #[error(
        "OTEL_METRIC_EXPORT_INTERVAL: `{0}` is not an interval in milliseconds (100 to 3600000)"
    )]
    Interval(String),
}

/// Whether and how to export metrics over OTLP. They go out when `OTEL_METRICS_EXPORTER`
/// lists `otlp`, or when `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set; not merely because a
/// traces endpoint is (Jaeger, the most common trace backend, takes no metrics). The endpoint
/// is resolved for the metrics signal: `--otlp-endpoint` and `OTEL_EXPORTER_OTLP_ENDPOINT`
/// are base URLs that get `/v1/metrics` for http/protobuf.
pub fn resolve(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<Protocol>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<MetricsConfig>, MetricsConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut wanted = env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some();
    if let Some(list) = env("OTEL_METRICS_EXPORTER") {
        for item in list.split(',').map(|s| s.trim().to_ascii_lowercase()) {
            match item.as_str() {
                "otlp" => wanted = true,
                // Served with --prometheus-port.
                "prometheus" | "" => {}
                "none" => return Ok(None),
                _ => return Err(MetricsConfigError::Exporter(list.trim().to_string())),
            }
        }
    }
    if !wanted {
        return Ok(None);
    }
    // The metrics' own variables beat the flags, which are the traces' (and the base).
    let endpoint_flag =
        endpoint_flag.filter(|_| env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_none());
    let protocol_flag =
        protocol_flag.filter(|_| env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").is_none());
    // The flag may name the traces path itself: metrics go beside it.
    let base = endpoint_flag.map(|e| {
        let e = e.trim().trim_end_matches('/');
        e.strip_suffix(Signal::Traces.path())
            .unwrap_or(e)
            .to_string()
    });
    let otlp = config::resolve(Signal::Metrics, base.as_deref(), protocol_flag, env)?
        .ok_or(MetricsConfigError::NoEndpoint)?;
    let temporality = match env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        None => Temporality::Cumulative,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "cumulative" => Temporality::Cumulative,
            "delta" => Temporality::Delta,
            "lowmemory" => Temporality::LowMemory,
            _ => return Err(MetricsConfigError::Temporality(v)),
        },
    };
    let interval = match env("OTEL_METRIC_EXPORT_INTERVAL") {
        None => DEFAULT_INTERVAL,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (100..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            _ => return Err(MetricsConfigError::Interval(v)),
        },
    };
    Ok(Some(MetricsConfig {
        otlp,
        temporality,
        interval,
        series_limit: super::red::DEFAULT_LIMIT,
    }))
}

/// The running OTLP metrics pipeline.
pub struct OtlpMetrics {
    /// `None` once shut down.
    provider: Option<SdkMeterProvider>,
    histograms: [Histogram<f64>; 4],
    /// The service graph: requests, failures, server and client durations.
    graph: (
        opentelemetry::metrics::Counter<u64>,
        opentelemetry::metrics::Counter<u64>,
        Histogram<f64>,
        Histogram<f64>,
    ),
    counters: watch::Sender<Vec<Family>>,
}

impl OtlpMetrics {
    /// Start exporting; `families` are the agent's counter families as they will be published
    /// (their names and kinds make the instruments). Must run inside the tokio runtime.
    pub fn start(config: &MetricsConfig, families: Vec<Family>) -> Result<Self, BuildError> {
        let limit = config.series_limit;
        let c = &config.otlp;
        let exporter = match c.protocol {
            Protocol::HttpProtobuf => {
                let headers: HashMap<String, String> = c.headers.iter().cloned().collect();
                let mut b = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_http_client(client::http_client(c)?)
                    .with_endpoint(c.endpoint.clone())
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(c.timeout)
                    .with_headers(headers)
                    .with_temporality(config.temporality);
                if c.gzip {
                    b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                b.build()
            }
            Protocol::Grpc => {
                let metadata = client::grpc_metadata(&c.headers)?;
                let mut b = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_channel(client::grpc_channel(c)?)
                    .with_timeout(c.timeout)
                    .with_metadata(metadata)
                    .with_temporality(config.temporality);
                if c.gzip {
                    b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                b.build()
            }
        }
        .map_err(|e| BuildError::Client(e.to_string()))?;
        let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_interval(config.interval)
            .with_timeout(c.timeout)
            .build();
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "tracer".to_string());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .with_attributes([
                KeyValue::new("telemetry.distro.name", "tracer"),
                KeyValue::new("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        // The series the Prometheus store admits (it decides first): the SDK's own limit,
        // 2000 by default, must not cut them again.
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .with_view(move |_: &opentelemetry_sdk::metrics::Instrument| {
                opentelemetry_sdk::metrics::Stream::builder()
                    .with_cardinality_limit(limit)
                    .build()
                    .ok()
            })
            .build();
        let meter = provider.meter("tracer");
        let histograms = red::Instrument::ALL.map(|i| {
            meter
                .f64_histogram(i.name())
                .with_unit("s")
                .with_description(i.description())
                .with_boundaries(red::BOUNDS.to_vec())
                .build()
        });
        let seconds = |name: &'static str, help: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .with_boundaries(red::BOUNDS.to_vec())
                .build()
        };
        let graph = (
            meter
                .u64_counter("traces_service_graph_request")
                .with_description("Requests per edge of the service graph")
                .build(),
            meter
                .u64_counter("traces_service_graph_request_failed")
                .with_description("Failed requests per edge of the service graph")
                .build(),
            seconds(
                "traces_service_graph_request_server",
                "Durations of the service graph's requests as their servers saw them",
            ),
            seconds(
                "traces_service_graph_request_client",
                "Durations of the service graph's requests as their clients saw them",
            ),
        );
        let (counters, latest) = watch::channel(families.clone());
        for f in families {
            let name = format!("tracer.{}", f.name);
            let rx = latest.clone();
            let callback = move |o: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
                let now = rx.borrow();
                if let Some(family) = now.iter().find(|x| x.name == f.name) {
                    for &(value, n) in &family.samples {
                        match family.label {
                            Some(label) => o.observe(n, &[KeyValue::new(label, value)]),
                            None => o.observe(n, &[]),
                        }
                    }
                }
            };
            if f.gauge {
                meter
                    .u64_observable_gauge(name)
                    .with_description(f.help)
                    .with_callback(callback)
                    .build();
            } else {
                meter
                    .u64_observable_counter(name)
                    .with_description(f.help)
                    .with_callback(callback)
                    .build();
            }
        }
        Ok(OtlpMetrics {
            provider: Some(provider),
            histograms,
            graph,
            counters,
        })
    }

    /// Record one exchange as the Prometheus store recorded it.
    pub fn record(&self, instrument: red::Instrument, attributes: &red::Attributes, seconds: f64) {
        let kvs: Vec<KeyValue> = attributes
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect();
        self.histograms[instrument as usize].record(seconds, &kvs);
    }

    /// Record what a service-graph edge (with attributes `edge`) gained.
    pub fn record_edge(&self, edge: &red::Attributes, o: &super::graph::Observation) {
        let kvs: Vec<KeyValue> = edge
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect();
        let (total, failed, server, client) = &self.graph;
        total.add(1, &kvs);
        if o.failed {
            failed.add(1, &kvs);
        }
        if let Some(s) = o.server_seconds {
            server.record(s, &kvs);
        }
        if let Some(s) = o.client_seconds {
            client.record(s, &kvs);
        }
    }

    /// The counters as they are now, for the next export.
    pub fn publish(&self, families: Vec<Family>) {
        self.counters.send_replace(families);
    }

    /// Export what is pending and stop.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK's shutdown blocks until the reader's task answers.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("flushing metrics at shutdown failed: {e}"),
            Err(e) => log::warn!("flushing metrics at shutdown failed: {e}"),
        }
    }
}

impl Drop for OtlpMetrics {
    /// Dropped without [`OtlpMetrics::shutdown`] (the agent stopping on an error): the SDK's
    /// own shutdown blocks until the reader's task answers, which a runtime thread must not
    /// wait for; it runs on a thread of its own, and the process does not wait for it.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            std::thread::spawn(move || {
                let _ = provider.shutdown();
            });
        }
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
    fn metrics_go_out_only_when_asked_for() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(resolve(None, None, env(&[base])), Ok(None));
        assert_eq!(
            resolve(Some("http://c:4318"), None, env(&[])),
            Ok(None),
            "a traces endpoint alone does not send metrics"
        );
        let c = resolve(None, None, env(&[base, ("OTEL_METRICS_EXPORTER", "otlp")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.otlp.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.temporality, Temporality::Cumulative);
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        // The flag's traces path is replaced.
        let c = resolve(
            Some("http://f:4318/v1/traces"),
            None,
            env(&[("OTEL_METRICS_EXPORTER", "prometheus,otlp")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.otlp.endpoint, "http://f:4318/v1/metrics");
        let c = resolve(
            None,
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://m:1/x"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.otlp.endpoint.as_str(), c.temporality, c.interval),
            (
                "https://m:1/x",
                Temporality::Delta,
                Duration::from_millis(1500)
            )
        );
        assert_eq!(
            resolve(
                None,
                None,
                env(&[
                    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://m:1/x"),
                    ("OTEL_METRICS_EXPORTER", "none"),
                ])
            ),
            Ok(None)
        );
    }

    #[test]
    fn the_metrics_own_endpoint_and_protocol_beat_the_flags() {
        let c = resolve(
            Some("http://traces:4318"),
            Some(Protocol::HttpProtobuf),
            env(&[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.otlp.endpoint.as_str(), c.otlp.protocol),
            ("http://m:4317", Protocol::Grpc)
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let on = ("OTEL_METRICS_EXPORTER", "otlp");
        for (pairs, needle) in [
            (
                vec![("OTEL_METRICS_EXPORTER", "statsd")],
                "OTEL_METRICS_EXPORTER",
            ),
            (vec![on], "no endpoint is set"),
            (
                vec![
                    base,
                    on,
                    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "often"),
                ],
                "often",
            ),
            (
                vec![base, on, ("OTEL_METRIC_EXPORT_INTERVAL", "5s")],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                vec![base, on, ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1")],
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            ),
        ] {
            let err = resolve(None, None, env(&pairs)).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }
}
