//! A side exit beside the flow: the agent's own counters (pipeline, export queue, kernel) as
//! OpenMetrics text for a scraper. The capture loop takes a [`Snapshot`]; [`render`] writes
//! it; [`serve`] answers `GET /metrics` with it. No span passes through here.

pub mod graph;
pub mod otlp;
pub mod red;
pub mod serve;

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tracer_common::counter;

use crate::{correlate::Stats, export::ExportStats};

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The kernel-side counters, indexed as `tracer_common::counter`.
pub type KernelCounters = [u64; counter::COUNT as usize];

/// The numbers of the periodic `stats:` report, taken together by the capture loop.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pipeline: Stats,
    pub export: ExportStats,
    /// Spans dropped because the export queue was full.
    pub queue_dropped: u64,
    /// Spans waiting in the export queue.
    pub queue_depth: u64,
    /// Ring-buffer records that did not decode as events.
    pub decode_errors: u64,
    /// The kernel-side counters, or why they could not be read.
    pub kernel: Result<KernelCounters, String>,
    /// The RED histograms of every exchange so far.
    pub red: red::Red,
    /// The service graph.
    pub graph: graph::Graph,
    /// Spans not exported because their trace was not sampled.
    pub unsampled: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            pipeline: Stats::default(),
            export: ExportStats::default(),
            queue_dropped: 0,
            queue_depth: 0,
            decode_errors: 0,
            kernel: Ok([0; counter::COUNT as usize]),
            red: red::Red::default(),
            graph: graph::Graph::default(),
            unsampled: 0,
        }
    }
}

/// `snapshot` as an OpenMetrics text exposition ended by `# EOF`: the RED histograms under
/// their conventional names, the agent's own families prefixed `tracer_`. The kernel
/// families are left out when the kernel counters could not be read.
pub fn render(mut snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    let red = std::mem::take(&mut snapshot.red);
    let graph = std::mem::take(&mut snapshot.graph);
    let series = series_counts(&red, &graph);
    registry.register_collector(Box::new(red::Families(red)));
    registry.register_collector(Box::new(graph::Families(graph)));
    registry
        .sub_registry_with_prefix("tracer")
        .register_collector(Box::new(Families(families(&snapshot, &series))));
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One of the agent's own metric families: a counter or gauge, with one sample, or one per
/// value of its single label. Prometheus writes them prefixed `tracer_`; OTLP names them
/// `tracer.NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub gauge: bool,
    /// The label's name, and a sample per value; without a label, one sample under `""`.
    pub label: Option<&'static str>,
    pub samples: Vec<(&'static str, u64)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Family {
            name,
            help,
            gauge: false,
            label: None,
            samples: vec![("", value)],
        }
    }

    fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Family {
            gauge: true,
            ..Family::counter(name, help, value)
        }
    }

    fn labelled(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        samples: Vec<(&'static str, u64)>,
    ) -> Self {
        Family {
            name,
            help,
            gauge: false,
            label: Some(label),
            samples,
        }
    }
}

/// Each metric's overflow and expiry counts, and ends of the service graph given up on for
/// want of room: ((name, overflowed, expired), given up).
pub type SeriesCounts = (Vec<(&'static str, u64, u64)>, u64);

/// The series counts of `red` and `graph`.
pub fn series_counts(red: &red::Red, graph: &graph::Graph) -> SeriesCounts {
    let mut v: Vec<_> = red::Instrument::ALL
        .iter()
        .map(|&i| {
            let s = red.series(i);
            (i.name(), s.overflowed, s.expired)
        })
        .collect();
    v.push(("traces_service_graph", graph.overflowed, graph.expired));
    (v, graph.waiting_full)
}

/// The agent's own families as `s` and `series` give them. The kernel families are left out
/// when the kernel counters could not be read.
pub fn families(s: &Snapshot, series: &SeriesCounts) -> Vec<Family> {
    let p = &s.pipeline;
    let mut out = vec![
        Family::counter("spans", "HTTP spans produced (finished exchanges)", p.spans),
        Family::counter(
            "spans_exported",
            "Spans the sinks took (acknowledged by the OTLP receiver, or printed)",
            s.export.exported,
        ),
        Family::counter(
            "spans_export_failed",
            "Spans lost because their export failed after retries",
            s.export.failed,
        ),
        Family::counter(
            "spans_rejected",
            "Spans in export requests the OTLP receiver took but rejected (partial success)",
            s.export.rejected,
        ),
        Family::counter(
            "spans_unsampled",
            "Spans not exported because their trace was not sampled (OTEL_TRACES_SAMPLER); \
             the request-duration metrics count them",
            s.unsampled,
        ),
        Family::counter(
            "spans_dropped",
            "Spans dropped because the export queue was full",
            s.queue_dropped,
        ),
        Family::gauge(
            "export_queue_depth",
            "Spans waiting in the export queue",
            s.queue_depth,
        ),
        Family::counter(
            "spans_without_response",
            "Spans of requests that ended without a response",
            p.spans_without_response,
        ),
        Family::counter(
            "events",
            "Kernel events the pipeline has taken in",
            p.events,
        ),
        Family::counter(
            "event_decode_errors",
            "Ring-buffer records that did not decode as events",
            s.decode_errors,
        ),
        Family::gauge("connections", "Connections followed now", p.connections),
        Family::labelled(
            "connections_evicted",
            "Connections evicted from the table: idle too long, or the table was full",
            "reason",
            vec![("idle", p.evicted_idle), ("full", p.evicted_full)],
        ),
        Family::counter(
            "unmatched_responses",
            "Responses with no request to pair with (counted when their connection ends)",
            p.unmatched_responses,
        ),
        Family::counter(
            "pending_overflow",
            "Requests dropped because too many were waiting for responses on one connection \
             (counted when it ends)",
            p.pending_overflow,
        ),
        Family::counter(
            "desyncs",
            "Times a connection's message boundaries were lost (counted when it ends)",
            p.desyncs,
        ),
        Family::counter(
            "tls_connections",
            "Connections whose socket bytes are TLS records: ciphertext, not parsed, and no \
             longer copied by the kernel",
            p.tls_connections,
        ),
        Family::counter(
            "tls_misattributed",
            "TLS plaintext events dropped: their connection was inferred (OpenSSL on memory \
             buffers) and its socket's bytes are known not to be TLS",
            p.tls_misattributed,
        ),
        Family::labelled(
            "metric_series_overflowed",
            "Exchanges recorded in a request-duration metric's overflow series because it \
             held its limit of series (--metrics-series-limit)",
            "metric",
            series.0.iter().map(|&(n, o, _)| (n, o)).collect(),
        ),
        Family::labelled(
            "metric_series_expired",
            "Request-duration series dropped because they stopped updating",
            "metric",
            series.0.iter().map(|&(n, _, x)| (n, x)).collect(),
        ),
        Family::counter(
            "service_graph_unpaired_early",
            "Service-graph ends recorded without waiting for their other end, because too many \
             were waiting",
            series.1,
        ),
    ];
    if let Ok(k) = &s.kernel {
        out.push(Family::counter(
            "kernel_events",
            "Events the probes wrote to the ring buffer",
            k[counter::EVENTS as usize],
        ));
        out.push(Family::counter(
            "kernel_files_reported",
            "Executable files traced processes started or mapped that the agent had not \
             looked at for TLS libraries, reported to it",
            k[counter::FILES_REPORTED as usize],
        ));
        out.push(Family::labelled(
            "kernel_losses",
            "Kernel-side losses by reason, named as in the stats report: events lost to a \
             full ring buffer (ringbuf_full), payloads unread or cut short, syscalls or \
             connections not followed",
            "reason",
            counter::NAMES
                .iter()
                .zip(k)
                .enumerate()
                .filter(|&(i, _)| counter::is_loss(i as u32))
                .map(|(_, (&name, &v))| (name, v))
                .collect(),
        ));
    }
    out
}

/// The families of one scrape, from values taken once (hence a collector of constants rather
/// than live metric handles).
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        for f in &self.0 {
            // Counter names get `_total` from the encoder.
            let kind = if f.gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let mut family = enc.encode_descriptor(f.name, f.help, None, kind)?;
            match f.label {
                None => {
                    let n = f.samples.first().map_or(0, |&(_, n)| n);
                    if f.gauge {
                        ConstGauge::new(n).encode(family)?
                    } else {
                        ConstCounter::new(n).encode(family)?
                    }
                }
                Some(label) => {
                    for &(value, n) in &f.samples {
                        let labels = [(label, value)];
                        let sample = family.encode_family(&labels)?;
                        if f.gauge {
                            ConstGauge::new(n).encode(sample)?
                        } else {
                            ConstCounter::new(n).encode(sample)?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Samples of an exposition, `name{labels}` -> value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line");
                (k.to_string(), v.parse().expect("a number"))
            })
            .collect()
    }

    fn snapshot() -> Snapshot {
        let mut kernel = [0; counter::COUNT as usize];
        for (i, v) in kernel.iter_mut().enumerate() {
            *v = 1000 + i as u64;
        }
        Snapshot {
            pipeline: Stats {
                events: 37,
                spans: 8,
                spans_without_response: 1,
                unmatched_responses: 2,
                pending_overflow: 3,
                desyncs: 4,
                tls_connections: 13,
                tls_misattributed: 14,
                evicted_full: 5,
                evicted_idle: 6,
                connections: 7,
                ..Stats::default()
            },
            export: ExportStats {
                exported: 6,
                failed: 2,
                rejected: 16,
            },
            queue_dropped: 9,
            queue_depth: 11,
            decode_errors: 12,
            kernel: Ok(kernel),
            red: red::Red::default(),
            graph: graph::Graph::default(),
            unsampled: 15,
        }
    }

    #[test]
    fn every_family_carries_its_value() {
        let text = render(snapshot()).unwrap();
        let got = samples(&text);
        let mut want: BTreeMap<String, f64> = [
            ("tracer_spans_total", 8.0),
            ("tracer_spans_exported_total", 6.0),
            ("tracer_spans_export_failed_total", 2.0),
            ("tracer_spans_dropped_total", 9.0),
            ("tracer_spans_unsampled_total", 15.0),
            ("tracer_spans_rejected_total", 16.0),
            ("tracer_export_queue_depth", 11.0),
            ("tracer_spans_without_response_total", 1.0),
            ("tracer_events_total", 37.0),
            ("tracer_event_decode_errors_total", 12.0),
            ("tracer_connections", 7.0),
            ("tracer_connections_evicted_total{reason=\"idle\"}", 6.0),
            ("tracer_connections_evicted_total{reason=\"full\"}", 5.0),
            ("tracer_unmatched_responses_total", 2.0),
            ("tracer_pending_overflow_total", 3.0),
            ("tracer_desyncs_total", 4.0),
            ("tracer_tls_connections_total", 13.0),
            ("tracer_tls_misattributed_total", 14.0),
            ("tracer_kernel_events_total", 1000.0),
            (
                "tracer_metric_series_overflowed_total{metric=\"http.server.request.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_overflowed_total{metric=\"http.client.request.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_overflowed_total{metric=\"rpc.server.call.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_overflowed_total{metric=\"rpc.client.call.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_overflowed_total{metric=\"traces_service_graph\"}",
                0.0,
            ),
            (
                "tracer_metric_series_expired_total{metric=\"traces_service_graph\"}",
                0.0,
            ),
            ("tracer_service_graph_unpaired_early_total", 0.0),
            (
                "tracer_metric_series_expired_total{metric=\"http.server.request.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_expired_total{metric=\"http.client.request.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_expired_total{metric=\"rpc.server.call.duration\"}",
                0.0,
            ),
            (
                "tracer_metric_series_expired_total{metric=\"rpc.client.call.duration\"}",
                0.0,
            ),
            ("tracer_kernel_files_reported_total", 1008.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (i, name) in counter::NAMES
            .iter()
            .enumerate()
            .filter(|&(i, _)| counter::is_loss(i as u32))
        {
            want.insert(
                format!("tracer_kernel_losses_total{{reason=\"{name}\"}}"),
                1000.0 + i as f64,
            );
        }
        assert_eq!(got, want, "{text}");
        assert!(
            want.contains_key("tracer_kernel_losses_total{reason=\"ringbuf_full\"}"),
            "ring-buffer drops are a reason of their own"
        );
    }

    #[test]
    fn the_exposition_is_openmetrics() {
        let text = render(snapshot()).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for family in ["spans", "kernel_losses", "connections_evicted"] {
            assert!(
                text.contains(&format!("# TYPE tracer_{family} counter\n")),
                "{family}: {text}"
            );
        }
        for family in ["export_queue_depth", "connections"] {
            assert!(
                text.contains(&format!("# TYPE tracer_{family} gauge\n")),
                "{family}: {text}"
            );
        }
        // Every counter's samples end in `_total`; every family has help.
        let counters: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        assert!(counters.len() >= 10, "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            if let Some(family) = name.strip_suffix("_total") {
                assert!(counters.contains(&family), "{line}");
            } else {
                assert!(
                    !counters.contains(&name),
                    "a counter without _total: {line}"
                );
            }
        }
        for family in &counters {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
    }

    #[test]
    fn the_request_durations_come_first_under_their_own_names() {
        let mut red = red::Red::new(2);
        let mut span = crate::correlate::span::tests::sample(crate::correlate::span::Kind::Client);
        for status in [200, 201, 202] {
            span.response.as_mut().unwrap().status = Some(status);
            red.record(&span);
        }
        let text = render(Snapshot { red, ..snapshot() }).unwrap();
        assert!(
            text.starts_with("# HELP http_client_request_duration_seconds "),
            "{text}"
        );
        assert!(text.contains("# TYPE http_client_request_duration_seconds histogram\n"));
        assert!(text.contains("# UNIT http_client_request_duration_seconds seconds\n"));
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        let got = samples(&text);
        assert_eq!(
            got["tracer_metric_series_overflowed_total{metric=\"http.client.request.duration\"}"],
            2.0
        );
        assert_eq!(
            got["http_client_request_duration_seconds_count{otel_metric_overflow=\"true\"}"],
            2.0
        );
        assert_eq!(got["tracer_spans_total"], 8.0);
    }

    #[test]
    fn unreadable_kernel_counters_leave_out_only_their_families() {
        let text = render(Snapshot {
            kernel: Err("the map is gone".into()),
            ..snapshot()
        })
        .unwrap();
        assert!(!text.contains("tracer_kernel_"), "{text}");
        assert_eq!(samples(&text)["tracer_spans_exported_total"], 6.0);
    }
}
