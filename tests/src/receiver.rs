//! An OTLP receiver for tests: traces and metrics over gRPC (the generated tonic
//! `TraceService` and `MetricsService`) and http/protobuf (`POST /v1/traces`,
//! `POST /v1/metrics`, decoded with the same generated messages).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::Span,
};
use prost::Message as _;

/// One span as received, with its resource and how it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub resource: HashMap<String, Value>,
    pub span: Span,
    pub attributes: HashMap<String, Value>,
    pub transport: &'static str,
}

/// A flattened attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    List(Vec<String>),
    Other(String),
}

impl Value {
    pub fn str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            other => panic!("expected an int, got {other:?}"),
        }
    }
}

fn flatten(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
                Some(any_value::Value::IntValue(i)) => Value::Int(*i),
                Some(any_value::Value::ArrayValue(a)) => Value::List(
                    a.values
                        .iter()
                        .map(|v| match &v.value {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .collect(),
                ),
                other => Value::Other(format!("{other:?}")),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

impl Received {
    pub fn attr(&self, key: &str) -> &Value {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("span has no attribute {key}: {:?}", self.attributes))
    }

    pub fn res(&self, key: &str) -> &Value {
        self.resource
            .get(key)
            .unwrap_or_else(|| panic!("resource has no attribute {key}: {:?}", self.resource))
    }

    /// 2 = SERVER, 3 = CLIENT (OTLP `SpanKind`).
    pub fn is_server(&self) -> bool {
        self.span.kind == 2
    }

    pub fn is_client(&self) -> bool {
        self.span.kind == 3
    }

    pub fn pid(&self) -> u32 {
        self.res("process.pid").int() as u32
    }

    /// The span's status is ERROR.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }
}

/// How the receiver answers one export request, instead of taking it.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// An HTTP status other than 200 refuses the request (http/protobuf only).
    pub status: Option<u16>,
    /// A `Retry-After` header with a refusal.
    pub retry_after: Option<String>,
    /// Take the request but say this many spans were rejected, and why.
    pub rejected: Option<(i64, String)>,
    /// Refuse a gRPC request with this code, with a `RetryInfo` asking for this wait.
    pub grpc: Option<(tonic::Code, Option<Duration>)>,
}

#[derive(Default)]
struct Store {
    spans: Vec<Received>,
    /// Answers for the next requests, in order; then requests are taken.
    script: std::collections::VecDeque<Answer>,
    /// When each export request arrived (either transport), taken or not.
    arrivals: Vec<std::time::Instant>,
    /// Every export request, protobuf-encoded (uncompressed).
    raw: Vec<Vec<u8>>,
    http_headers: Vec<HashMap<String, String>>,
    grpc_metadata: Vec<HashMap<String, String>>,
    /// Every metrics export request, with the transport it came over.
    metrics: Vec<(ExportMetricsServiceRequest, &'static str)>,
}

type Shared = Arc<Mutex<Store>>;

fn record(store: &Shared, req: ExportTraceServiceRequest, transport: &'static str) {
    let mut s = store.lock().unwrap();
    s.raw.push(req.encode_to_vec());
    for rs in req.resource_spans {
        let resource = flatten(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        for ss in rs.scope_spans {
            for span in ss.spans {
                s.spans.push(Received {
                    resource: resource.clone(),
                    attributes: flatten(&span.attributes),
                    span,
                    transport,
                });
            }
        }
    }
}

struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let md = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        let answer = {
            let mut s = self.0.lock().unwrap();
            s.grpc_metadata.push(md);
            s.arrivals.push(std::time::Instant::now());
            s.script.pop_front().unwrap_or_default()
        };
        if let Some((code, wait)) = answer.grpc {
            use tonic_types::{ErrorDetails, StatusExt as _};
            let details = match wait {
                Some(w) => ErrorDetails::with_retry_info(Some(w)),
                None => ErrorDetails::new(),
            };
            return Err(tonic::Status::with_error_details(code, "refused", details));
        }
        record(&self.0, request.into_inner(), "grpc");
        Ok(tonic::Response::new(response(&answer)))
    }
}

struct Metrics(Shared);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .unwrap()
            .metrics
            .push((request.into_inner(), "grpc"));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// One data point of a metric as received, flattened.
#[derive(Debug, Clone)]
pub struct Point {
    pub resource: HashMap<String, Value>,
    pub attributes: HashMap<String, Value>,
    /// Histograms: count and sum; sums and gauges: the value (as f64) in `sum`, count 0.
    pub count: u64,
    pub sum: f64,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    pub unit: String,
    /// AggregationTemporality: 1 delta, 2 cumulative (0 for gauges).
    pub temporality: i32,
    pub transport: &'static str,
}

impl Point {
    pub fn attr(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// A running receiver. Servers stop with the test process.
pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    store: Shared,
    scheme: &'static str,
}

/// TLS on both of a receiver's endpoints: its certificate and key (PEM files), and when
/// given, the certificate authority whose client certificates it requires (mTLS).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

impl ServerTls {
    // ring, as the agent uses; no post-quantum key exchange is needed here.
    #[allow(deprecated)]
    fn rustls(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }

    fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(&self.cert), read(&self.key)),
        );
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)));
        }
        tls
    }
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_on(0)
    }

    /// A receiver whose http/protobuf endpoint listens on `http_port` (0: any free port).
    pub fn start_on(http_port: u16) -> Receiver {
        Self::start_with(http_port, None)
    }

    /// A receiver that speaks TLS on both endpoints (`https://` URLs).
    pub fn start_tls(tls: ServerTls) -> Receiver {
        Self::start_with(0, Some(tls))
    }

    fn start_with(http_port: u16, tls: Option<ServerTls>) -> Receiver {
        let store: Shared = Arc::default();
        let grpc_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        grpc_listener.set_nonblocking(true).unwrap();
        let service = Grpc(store.clone());
        let metrics_service = Metrics(store.clone());
        let grpc_tls = tls.as_ref().map(ServerTls::tonic);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(grpc_listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let mut server = tonic::transport::Server::builder();
                if let Some(tls) = grpc_tls {
                    server = server.tls_config(tls).unwrap();
                }
                server
                    .add_service(
                        TraceServiceServer::new(service)
                            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                    )
                    .add_service(
                        MetricsServiceServer::new(metrics_service)
                            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                    )
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            });
        });
        let http_listener = TcpListener::bind(("127.0.0.1", http_port)).unwrap();
        let http = http_listener.local_addr().unwrap();
        let s = store.clone();
        let http_tls = tls.as_ref().map(ServerTls::rustls);
        std::thread::spawn(move || {
            for conn in http_listener.incoming().flatten() {
                let s = s.clone();
                match &http_tls {
                    None => std::thread::spawn(move || serve_http(conn, s)),
                    Some(config) => {
                        let tls = rustls::ServerConnection::new(config.clone()).unwrap();
                        let stream = rustls::StreamOwned::new(tls, conn);
                        std::thread::spawn(move || serve_http(stream, s))
                    }
                };
            }
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        Receiver {
            grpc,
            http,
            store,
            scheme,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme, self.http)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.store.lock().unwrap().spans.clone()
    }

    /// Every export request received, as protobuf bytes.
    pub fn raw_exports(&self) -> Vec<Vec<u8>> {
        self.store.lock().unwrap().raw.clone()
    }

    /// Headers of every http/protobuf export request received.
    pub fn http_headers(&self) -> Vec<HashMap<String, String>> {
        self.store.lock().unwrap().http_headers.clone()
    }

    /// Answer the next export requests so, in order (then take requests as usual).
    pub fn script(&self, answers: Vec<Answer>) {
        self.store.lock().unwrap().script.extend(answers);
    }

    /// When each export request arrived, taken or refused.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.store.lock().unwrap().arrivals.clone()
    }

    /// The data points of metric `name` in the last metrics export request that has it.
    pub fn last_points(&self, name: &str) -> Vec<Point> {
        self.points_of(name, true)
    }

    /// The data points of metric `name` in every metrics export request (for delta
    /// temporality, whose points add up).
    pub fn all_points(&self, name: &str) -> Vec<Point> {
        self.points_of(name, false)
    }

    fn points_of(&self, name: &str, last_only: bool) -> Vec<Point> {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
        let s = self.store.lock().unwrap();
        let mut all = Vec::new();
        for (req, transport) in s.metrics.iter().rev() {
            let mut out = Vec::new();
            for rm in &req.resource_metrics {
                let resource = flatten(
                    &rm.resource
                        .as_ref()
                        .map(|r| r.attributes.clone())
                        .unwrap_or_default(),
                );
                for sm in &rm.scope_metrics {
                    for m in sm.metrics.iter().filter(|m| m.name == name) {
                        let base = |attributes: &[KeyValue], temporality| Point {
                            resource: resource.clone(),
                            attributes: flatten(attributes),
                            count: 0,
                            sum: 0.0,
                            bucket_counts: Vec::new(),
                            explicit_bounds: Vec::new(),
                            unit: m.unit.clone(),
                            temporality,
                            transport,
                        };
                        let number = |v: &Option<number_data_point::Value>| match v {
                            Some(number_data_point::Value::AsInt(i)) => *i as f64,
                            Some(number_data_point::Value::AsDouble(d)) => *d,
                            None => f64::NAN,
                        };
                        match &m.data {
                            Some(Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    out.push(Point {
                                        count: p.count,
                                        sum: p.sum.unwrap_or(f64::NAN),
                                        bucket_counts: p.bucket_counts.clone(),
                                        explicit_bounds: p.explicit_bounds.clone(),
                                        ..base(&p.attributes, h.aggregation_temporality)
                                    });
                                }
                            }
                            Some(Data::Sum(sum)) => {
                                for p in &sum.data_points {
                                    out.push(Point {
                                        sum: number(&p.value),
                                        ..base(&p.attributes, sum.aggregation_temporality)
                                    });
                                }
                            }
                            Some(Data::Gauge(g)) => {
                                for p in &g.data_points {
                                    out.push(Point {
                                        sum: number(&p.value),
                                        ..base(&p.attributes, 0)
                                    });
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            if last_only && !out.is_empty() {
                return out;
            }
            all.extend(out);
        }
        all
    }

    /// How many metrics export requests arrived.
    pub fn metrics_exports(&self) -> usize {
        self.store.lock().unwrap().metrics.len()
    }

    /// Metadata of every gRPC export request received.
    pub fn grpc_metadata(&self) -> Vec<HashMap<String, String>> {
        self.store.lock().unwrap().grpc_metadata.clone()
    }

    /// Wait until at least `n` spans matching `f` arrived, then a little longer for strays,
    /// and return all spans matching `f`.
    pub fn wait_spans(&self, n: usize, f: impl Fn(&Received) -> bool) -> Vec<Received> {
        let got = crate::wait_for(Duration::from_secs(15), || {
            let v: Vec<_> = self.spans().into_iter().filter(|s| f(s)).collect();
            (v.len() >= n).then_some(())
        });
        // Quiescence: spans are exported in batches at most 0.5 s apart, so once none has
        // arrived for longer than that, any stray would have shown up.
        let mut last = self.spans().len();
        let mut quiet = Duration::ZERO;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while quiet < Duration::from_millis(700) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.spans().len();
            quiet = if now == last {
                quiet + Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            last = now;
        }
        let v: Vec<_> = self.spans().into_iter().filter(|s| f(s)).collect();
        assert!(
            got.is_some(),
            "expected {n} spans, got {}: {:#?}",
            v.len(),
            v.iter()
                .map(|s| (&s.span.name, s.span.kind, &s.attributes))
                .collect::<Vec<_>>()
        );
        v
    }
}

/// Minimal HTTP/1.1 server for `POST /v1/traces` with keep-alive.
fn serve_http(conn: impl Read + Write, store: Shared) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(body.as_slice())
                .read_to_end(&mut plain)
                .is_err()
            {
                plain.clear();
            }
            body = plain;
        }
        if path == "/v1/metrics" {
            let status = match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    store.lock().unwrap().metrics.push((req, "http"));
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            };
            let reply = ExportMetricsServiceResponse::default().encode_to_vec();
            if answer_http(reader.get_mut(), status, "", &reply).is_err() {
                return;
            }
            continue;
        }
        let answer = if path == "/v1/traces" {
            let mut s = store.lock().unwrap();
            s.arrivals.push(std::time::Instant::now());
            s.script.pop_front().unwrap_or_default()
        } else {
            Answer::default()
        };
        let mut extra = String::new();
        let status = if path != "/v1/traces" {
            "404 Not Found".to_string()
        } else if let Some(code) = answer.status.filter(|&c| c != 200) {
            if let Some(after) = &answer.retry_after {
                extra = format!("Retry-After: {after}\r\n");
            }
            format!("{code} Refused")
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    store.lock().unwrap().http_headers.push(headers);
                    record(&store, req, "http");
                    "200 OK".to_string()
                }
                Err(_) => "400 Bad Request".to_string(),
            }
        };
        let reply = response(&answer).encode_to_vec();
        if answer_http(reader.get_mut(), &status, &extra, &reply).is_err() {
            return;
        }
    }
}

/// Write one HTTP/1.1 response: `status`, `extra` header lines, a protobuf body.
fn answer_http(w: &mut impl Write, status: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// The response message of a taken request: a partial success when the answer says so.
fn response(answer: &Answer) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: answer.rejected.as_ref().map(|(n, why)| {
            opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                rejected_spans: *n,
                error_message: why.clone(),
            }
        }),
    }
}
