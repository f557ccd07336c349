//! RED metrics: the duration of every finished exchange as the semantic conventions' stable
//! histograms (`http.server.request.duration`, `http.client.request.duration`, and for gRPC
//! `rpc.server.call.duration`, `rpc.client.call.duration`), recorded as each span is made,
//! before the export queue and before any sampling, so that they count every exchange.
//!
//! Only the attributes the conventions list for these metrics are kept: never a path, a query
//! or a peer address. A series is one set of attribute values; each instrument holds at most
//! `limit` of them, the last being the overflow series (`otel.metric.overflow="true"`) that
//! takes what new series would have held, and series not updated for [`TTL_NS`] are dropped.

use crate::conn::FastMap;

use crate::correlate::span::{HttpSpan, Kind};

/// The conventions' advisory bucket boundaries for these histograms, in seconds.
pub const BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A series not updated for this long is dropped (and its counts start again from zero if it
/// comes back, which Prometheus reads as a counter reset).
pub const TTL_NS: u64 = 10 * 60 * 1_000_000_000;

/// Series per instrument with the defaults, the overflow series included (the OpenTelemetry
/// SDKs' default cardinality limit).
pub const DEFAULT_LIMIT: usize = 2000;

/// The attribute set of the overflow series.
pub const OVERFLOW: (&str, &str) = ("otel.metric.overflow", "true");

/// The instruments, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
}

impl Instrument {
    pub const ALL: [Instrument; 4] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
    ];

    /// The OpenTelemetry name (unit: seconds).
    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http.server.request.duration",
            Instrument::HttpClient => "http.client.request.duration",
            Instrument::RpcServer => "rpc.server.call.duration",
            Instrument::RpcClient => "rpc.client.call.duration",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests",
            Instrument::HttpClient => "Duration of HTTP client requests",
            Instrument::RpcServer => {
                "Duration of RPCs received (gRPC), from the first request byte to the end of the response"
            }
            Instrument::RpcClient => {
                "Duration of RPCs made (gRPC), from the first request byte to the end of the response"
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One series' attribute values, in a fixed order per instrument (names are `'static`).
pub type Attributes = Vec<(&'static str, String)>;

/// One histogram series: counts per bucket (the last past every bound), sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; BOUNDS.len() + 1],
    pub sum: f64,
    pub count: u64,
    /// Kernel monotonic time of the last update (ns).
    pub updated_ns: u64,
}

impl Histogram {
    pub(crate) fn new(now_ns: u64) -> Self {
        Histogram {
            buckets: [0; BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
            updated_ns: now_ns,
        }
    }

    pub(crate) fn observe(&mut self, seconds: f64, now_ns: u64) {
        // Bounds are inclusive upper bounds (`le`).
        let i = BOUNDS.partition_point(|&b| b < seconds);
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
        self.updated_ns = self.updated_ns.max(now_ns);
    }
}

/// One instrument's series.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub series: FastMap<Attributes, Histogram>,
    /// Observations that went to the overflow series because the limit was reached.
    pub overflowed: u64,
    /// Series dropped because they stopped updating.
    pub expired: u64,
}

/// The RED metrics of every span seen so far.
#[derive(Debug, Clone)]
pub struct Red {
    limit: usize,
    instruments: [Series; 4],
}

impl Default for Red {
    fn default() -> Self {
        Red::new(DEFAULT_LIMIT)
    }
}

impl Red {
    /// At most `limit` series per instrument (at least 2: one, and the overflow series).
    pub fn new(limit: usize) -> Self {
        Red {
            limit: limit.max(2),
            instruments: Default::default(),
        }
    }

    pub fn series(&self, instrument: Instrument) -> &Series {
        &self.instruments[instrument.index()]
    }

    /// Record one finished exchange.
    pub fn record(&mut self, span: &HttpSpan) {
        let (instrument, attributes) = attributes_of(span);
        self.observe(instrument, attributes, seconds_of(span), span.end_ns);
    }

    /// Record one finished exchange, and return where it went, for another sink to record it
    /// alike: its instrument, the attributes of its series (the overflow series' when the
    /// limit sent it there) and its duration in seconds.
    pub fn record_returning(&mut self, span: &HttpSpan) -> (Instrument, Attributes, f64) {
        let (instrument, attributes) = attributes_of(span);
        let seconds = seconds_of(span);
        let overflowed = self.observe(instrument, attributes.clone(), seconds, span.end_ns);
        let attributes = if overflowed {
            vec![(OVERFLOW.0, OVERFLOW.1.to_string())]
        } else {
            attributes
        };
        (instrument, attributes, seconds)
    }

    /// Returns whether the observation went to the overflow series.
    fn observe(
        &mut self,
        instrument: Instrument,
        attributes: Attributes,
        seconds: f64,
        now_ns: u64,
    ) -> bool {
        let limit = self.limit;
        let s = &mut self.instruments[instrument.index()];
        if let Some(h) = s.series.get_mut(&attributes) {
            h.observe(seconds, now_ns);
            // A span's attributes are never the overflow series' own.
            return false;
        }
        let overflow = vec![(OVERFLOW.0, OVERFLOW.1.to_string())];
        // The overflow series, once made, counts toward the limit.
        let regular = s.series.len() - usize::from(s.series.contains_key(&overflow));
        let overflowed = regular >= limit - 1;
        let key = if overflowed {
            s.overflowed += 1;
            overflow
        } else {
            attributes
        };
        s.series
            .entry(key)
            .or_insert_with(|| Histogram::new(now_ns))
            .observe(seconds, now_ns);
        overflowed
    }

    /// Drop the series not updated since `now_ns - TTL_NS`.
    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(TTL_NS);
        for s in &mut self.instruments {
            let before = s.series.len();
            s.series.retain(|_, h| h.updated_ns >= cutoff);
            s.expired += (before - s.series.len()) as u64;
        }
    }
}

/// A span's duration in seconds.
fn seconds_of(span: &HttpSpan) -> f64 {
    span.end_ns.saturating_sub(span.start_ns) as f64 / 1e9
}

/// The method as the conventions want it in metrics: one they know, or `_OTHER`.
fn method_of(span: &HttpSpan) -> String {
    if span.undecoded.contains(&":method") || !crate::correlate::span::known_method(&span.method) {
        "_OTHER".to_string()
    } else {
        span.method.to_string()
    }
}

/// The instrument and attributes of a span: the service (the process's `service.name`, a
/// resource attribute, here to tell the services of one host apart), then for HTTP the method, status code, `error.type`,
/// scheme and protocol version (and on clients the server's address and port; on servers the
/// route, when one is known); for gRPC the system, method, status code and `error.type` (and
/// on clients the server's address and port).
pub fn attributes_of(span: &HttpSpan) -> (Instrument, Attributes) {
    let client = span.kind == Kind::Client;
    let mut a: Attributes = Vec::with_capacity(10);
    a.push(("service.name", span.process.service_name().to_string()));
    let instrument = if span.grpc {
        a.push(("rpc.system.name", "grpc".to_string()));
        if let Some(m) = span.rpc_metric_method() {
            a.push(("rpc.method", m));
        }
        if let Some(code) = span.grpc_status_name() {
            a.push(("rpc.response.status_code", code));
        }
        if client {
            Instrument::RpcClient
        } else {
            Instrument::RpcServer
        }
    } else {
        a.push(("http.request.method", method_of(span)));
        if let Some(status) = span.response.as_ref().and_then(|r| r.status) {
            a.push(("http.response.status_code", status.to_string()));
        }
        if let Some(route) = &span.route {
            a.push(("http.route", route.to_string()));
        }
        a.push(("url.scheme", span.scheme().to_string()));
        a.push(("network.protocol.version", span.version.attribute()));
        if client {
            Instrument::HttpClient
        } else {
            Instrument::HttpServer
        }
    };
    if let Some(e) = span.error_type() {
        a.push(("error.type", e));
    }
    if client {
        let (address, port) = span.server();
        a.push(("server.address", address));
        a.push(("server.port", port.to_string()));
    }
    (instrument, a)
}

/// The Prometheus form of an attribute name: dots become underscores.
fn label_name(name: &str) -> String {
    name.replace('.', "_")
}

/// The histograms as Prometheus/OpenMetrics families (`http_server_request_duration_seconds`
/// and the others), one sample set per series, in a stable order.
#[derive(Debug)]
pub struct Families(pub Red);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::{metrics::MetricType, registry::Unit};
        let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().map(|&b| (b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        for instrument in Instrument::ALL {
            let s = self.0.series(instrument);
            if s.series.is_empty() {
                continue;
            }
            let name = label_name(instrument.name());
            let mut family = enc.encode_descriptor(
                &name,
                instrument.description(),
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            let mut series: Vec<_> = s.series.iter().collect();
            series.sort_by(|a, b| a.0.cmp(b.0));
            for (attributes, h) in series {
                let labels: Vec<(String, &str)> = attributes
                    .iter()
                    .map(|(k, v)| (label_name(k), v.as_str()))
                    .collect();
                for (slot, &count) in buckets.iter_mut().zip(&h.buckets) {
                    slot.1 = count;
                }
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum, h.count, &buckets, None,
                    )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::correlate::span::{Grpc, tests::sample};

    fn attrs(a: &[(&'static str, &str)]) -> Attributes {
        a.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    /// The samples of `render`ed families, `name{labels}` -> value.
    fn samples(red: Red) -> BTreeMap<String, f64> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Families(red)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn http_attributes_are_the_conventions_few() {
        let server = sample(Kind::Server);
        let (i, a) = attributes_of(&server);
        assert_eq!(i, Instrument::HttpServer);
        assert_eq!(
            a,
            attrs(&[
                ("service.name", "srv"),
                ("http.request.method", "GET"),
                ("http.response.status_code", "404"),
                ("url.scheme", "http"),
                ("network.protocol.version", "1.1"),
            ])
        );
        let mut client = sample(Kind::Client);
        client.method = "BREW".into();
        client.response.as_mut().unwrap().status = Some(503);
        client.tls = true;
        client.route = Some("/never/on/clients".into());
        let (i, a) = attributes_of(&client);
        assert_eq!(i, Instrument::HttpClient);
        assert_eq!(
            a,
            attrs(&[
                ("service.name", "srv"),
                ("http.request.method", "_OTHER"),
                ("http.response.status_code", "503"),
                ("http.route", "/never/on/clients"),
                ("url.scheme", "https"),
                ("network.protocol.version", "1.1"),
                ("error.type", "503"),
                ("server.address", "shop.local"),
                ("server.port", "8080"),
            ])
        );
        let mut lost = sample(Kind::Server);
        lost.response = None;
        lost.route = Some("/items/{id}".into());
        lost.undecoded = vec![":method"];
        assert_eq!(
            attributes_of(&lost).1,
            attrs(&[
                ("service.name", "srv"),
                ("http.request.method", "_OTHER"),
                ("http.route", "/items/{id}"),
                ("url.scheme", "http"),
                ("network.protocol.version", "1.1"),
                ("error.type", "response_not_observed"),
            ])
        );
        // Never a path, a query or a peer.
        for (k, v) in a.iter().chain(&attributes_of(&server).1) {
            assert!(
                !k.starts_with("url.path") && !k.starts_with("client."),
                "{k}"
            );
            assert!(!v.contains("items/3") && !v.contains("50000"), "{v}");
        }
    }

    #[test]
    fn grpc_calls_go_to_the_rpc_instruments() {
        let mut s = sample(Kind::Server);
        s.grpc = true;
        s.method = "POST".into();
        s.target = "/demo.Echo/Say".into();
        s.version = crate::protocol::Version::Http2;
        let r = s.response.as_mut().unwrap();
        r.status = Some(200);
        r.grpc = Some(Grpc {
            status: Some(14),
            status_undecoded: false,
            message: None,
        });
        let (i, a) = attributes_of(&s);
        assert_eq!(i, Instrument::RpcServer);
        assert_eq!(
            a,
            attrs(&[
                ("service.name", "srv"),
                ("rpc.system.name", "grpc"),
                ("rpc.method", "demo.Echo/Say"),
                ("rpc.response.status_code", "UNAVAILABLE"),
                ("error.type", "UNAVAILABLE"),
            ])
        );
        s.kind = Kind::Client;
        s.response.as_mut().unwrap().grpc.as_mut().unwrap().status = Some(12);
        let (i, a) = attributes_of(&s);
        assert_eq!(i, Instrument::RpcClient);
        assert_eq!(
            a,
            attrs(&[
                ("service.name", "srv"),
                ("rpc.system.name", "grpc"),
                ("rpc.method", "_OTHER"),
                ("rpc.response.status_code", "UNIMPLEMENTED"),
                ("error.type", "UNIMPLEMENTED"),
                ("server.address", "shop.local"),
                ("server.port", "8080"),
            ])
        );
    }

    #[test]
    fn durations_fall_in_the_conventions_buckets() {
        let mut red = Red::default();
        let mut s = sample(Kind::Server);
        for (start, end) in [(0, 5_000_000), (0, 5_000_001), (0, 30_000_000_000), (7, 7)] {
            s.start_ns = start;
            s.end_ns = end;
            red.record(&s);
        }
        let got = samples(red);
        let series = "service_name=\"srv\",http_request_method=\"GET\",http_response_status_code=\"404\",\
                      url_scheme=\"http\",network_protocol_version=\"1.1\"";
        let m = "http_server_request_duration_seconds";
        assert_eq!(got[&format!("{m}_count{{{series}}}")], 4.0, "{got:?}");
        let sum = got[&format!("{m}_sum{{{series}}}")];
        assert!((sum - 30.010000001).abs() < 1e-9, "{sum}");
        // `le` is inclusive: 5 ms falls in the first bucket, 5 ms + 1 ns in the second.
        assert_eq!(got[&format!("{m}_bucket{{le=\"0.005\",{series}}}")], 2.0);
        assert_eq!(got[&format!("{m}_bucket{{le=\"0.01\",{series}}}")], 3.0);
        assert_eq!(got[&format!("{m}_bucket{{le=\"10.0\",{series}}}")], 3.0);
        assert_eq!(got[&format!("{m}_bucket{{le=\"+Inf\",{series}}}")], 4.0);
        assert_eq!(
            got.keys().filter(|k| k.contains("_bucket")).count(),
            BOUNDS.len() + 1
        );
    }

    #[test]
    fn new_series_past_the_limit_go_to_the_overflow_series() {
        let mut red = Red::new(3);
        let mut s = sample(Kind::Server);
        for status in [200, 201, 202, 203, 200, 204] {
            s.response.as_mut().unwrap().status = Some(status);
            red.record(&s);
        }
        let series = red.series(Instrument::HttpServer);
        assert_eq!(series.series.len(), 3, "{series:?}");
        assert_eq!(series.overflowed, 3);
        let overflow = &series.series[&vec![(OVERFLOW.0, OVERFLOW.1.to_string())]];
        assert_eq!(overflow.count, 3);
        let known = series
            .series
            .iter()
            .find(|(a, _)| a.contains(&("http.response.status_code", "200".to_string())))
            .unwrap();
        assert_eq!(known.1.count, 2, "a known series keeps counting");
        let text = samples(red.clone());
        assert!(
            text.contains_key(
                "http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"}"
            ),
            "{text:?}"
        );
        // Other instruments have their own limit.
        s.kind = Kind::Client;
        red.record(&s);
        assert_eq!(red.series(Instrument::HttpClient).overflowed, 0);
    }

    #[test]
    fn series_that_stop_updating_expire() {
        let mut red = Red::default();
        let mut s = sample(Kind::Server);
        s.end_ns = 1_000;
        red.record(&s);
        s.response.as_mut().unwrap().status = Some(200);
        s.end_ns = 1_000 + TTL_NS;
        red.record(&s);
        red.expire(1_000 + TTL_NS);
        assert_eq!(red.series(Instrument::HttpServer).series.len(), 2);
        red.expire(1_001 + TTL_NS);
        let left = red.series(Instrument::HttpServer);
        assert_eq!(left.series.len(), 1);
        assert_eq!(left.expired, 1);
        assert!(samples(red.clone()).keys().all(|k| !k.contains("\"404\"")));
    }

    #[test]
    fn nothing_recorded_renders_nothing() {
        assert!(samples(Red::default()).is_empty());
    }
}
