//! The spans the pipeline produces, and their OpenTelemetry HTTP semantic-convention
//! attributes (one definition shared by every exporter).

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use super::process::Process;
use crate::protocol::{Text, Version};

/// SERVER: the traced process received the request. CLIENT: it sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
        }
    }
}

/// An attribute key: mostly the conventions' fixed names, or a captured header's.
pub type Key = Cow<'static, str>;

/// An attribute value, lent by [`HttpSpan::visit_attributes`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    StrList(&'a [String]),
}

impl Attr<'_> {
    pub fn to_owned(self) -> Value {
        match self {
            Attr::Str(s) => Value::Str(s.to_string()),
            Attr::Int(i) => Value::Int(i),
            Attr::StrList(l) => Value::StrList(l.to_vec()),
        }
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    /// Header values: a header may appear several times.
    StrList(Vec<String>),
}

/// The response side of an exchange, when one was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `None` when the status could not be decoded (HTTP/2 joined late) or the stream was
    /// reset before its response head.
    pub status: Option<u16>,
    pub body_size: Option<u64>,
    /// Response headers the user asked to capture.
    pub headers: Vec<(String, String)>,
    /// gRPC's status, from the trailers (or a trailers-only response).
    pub grpc: Option<Grpc>,
    /// The stream was reset (HTTP/2 RST_STREAM, or refused by GOAWAY) with this error code.
    pub reset: Option<u32>,
}

impl Response {
    /// An HTTP/1.x response: its status and body.
    pub fn http1(status: u16, body_size: Option<u64>, headers: Vec<(String, String)>) -> Self {
        Response {
            status: Some(status),
            body_size,
            headers,
            grpc: None,
            reset: None,
        }
    }
}

/// A gRPC call's status as its trailers gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grpc {
    /// `grpc-status`; `None` when absent or not decodable.
    pub status: Option<u32>,
    /// `grpc-status` was there but could not be decoded.
    pub status_undecoded: bool,
    pub message: Option<String>,
}

/// gRPC status codes by number, as the conventions write them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC codes that make a server span an error (the conventions' list); on a client
/// every code but OK does.
const GRPC_SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// HTTP/2 error codes (RFC 9113 7) by number.
const H2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

fn grpc_code_name(code: u32) -> String {
    GRPC_CODES
        .get(code as usize)
        .map_or_else(|| code.to_string(), |n| (*n).to_string())
}

fn h2_error_name(code: u32) -> String {
    H2_ERRORS
        .get(code as usize)
        .map_or_else(|| format!("0x{code:x}"), |n| (*n).to_string())
}

/// One HTTP request and its response, seen from one process.
#[derive(Debug, Clone)]
pub struct HttpSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent lives in another process: it came with the request (`traceparent`), or is
    /// a traced client's span elsewhere on this host. In-process parents are not remote.
    pub parent_remote: bool,
    pub trace_flags: u8,
    pub tracestate: Option<String>,
    pub kind: Kind,
    /// Kernel monotonic time of the request's first byte (ns).
    pub start_ns: u64,
    /// Kernel monotonic time of the response's last byte (ns), or when the connection was
    /// seen to end without a response.
    pub end_ns: u64,
    pub process: Arc<Process>,
    /// Thread that handled the request (server) or sent it (client).
    pub tid: u32,
    pub method: Text,
    pub target: Text,
    pub version: crate::protocol::Version,
    pub host: Option<Text>,
    pub user_agent: Option<Text>,
    pub request_body_size: Option<u64>,
    /// `None` when no response was observed.
    pub response: Option<Response>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The request head was longer than the capture window: headers past it are unknown.
    pub head_truncated: bool,
    /// Request headers the user asked to capture.
    pub request_headers: Vec<(String, String)>,
    /// Export `url.query`, with every value replaced by `REDACTED`.
    pub capture_query: bool,
    /// Read from a TLS library's plaintext: the request was made over HTTPS.
    pub tls: bool,
    /// A gRPC call (HTTP/2, `content-type: application/grpc*`).
    pub grpc: bool,
    /// Request fields that could not be decoded (HTTP/2 joined late): `:method`, `:path`.
    pub undecoded: Vec<&'static str>,
    /// `http.route` of a server request, from the user's route templates (or the opt-in
    /// guess); never for gRPC, whose method names the call.
    pub route: Option<Arc<str>>,
}

const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Why a span has no response, as `error.type`.
pub const NO_RESPONSE: &str = "response_not_observed";

/// The path of a request target, without query or fragment.
pub fn path_of(target: &str) -> &str {
    let mut t = target;
    // absolute-form (proxies): scheme://authority/path
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    &t[..end]
}

/// Whether the conventions know this method (others are reported as `_OTHER`).
pub fn known_method(method: &str) -> bool {
    KNOWN_METHODS.contains(&method)
}

impl HttpSpan {
    fn known_method(&self) -> bool {
        known_method(&self.method)
    }

    /// `url.scheme`: `https` for what was read from a TLS library's plaintext.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `rpc.method` as metrics carry it: `_OTHER` for a method the server did not know.
    pub fn rpc_metric_method(&self) -> Option<String> {
        let m = self.rpc_method()?;
        Some(if self.rpc_method_recognised() {
            m.to_string()
        } else {
            "_OTHER".to_string()
        })
    }

    /// The gRPC status code's name, when the trailers carried one.
    pub fn grpc_status_name(&self) -> Option<String> {
        let code = self.response.as_ref()?.grpc.as_ref()?.status?;
        Some(grpc_code_name(code))
    }

    /// Span name per the conventions: gRPC's `{rpc.method}` (`grpc` when it is not known or
    /// not recognised); for HTTP the method, or `HTTP` for methods they do not know (or that
    /// could not be decoded), followed by the route when there is one.
    pub fn name(&self) -> Cow<'_, str> {
        if self.grpc {
            return Cow::Borrowed(match self.rpc_method() {
                Some(m) if self.rpc_method_recognised() => m,
                _ => "grpc",
            });
        }
        let method = if self.known_method() && !self.undecoded.contains(&":method") {
            self.method.as_str()
        } else {
            "HTTP"
        };
        match &self.route {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => Cow::Borrowed(method),
        }
    }

    /// gRPC's fully qualified method (`package.Service/Method`), from the path.
    pub fn rpc_method(&self) -> Option<&str> {
        if !self.grpc || self.undecoded.contains(&":path") {
            return None;
        }
        let m = self.path().strip_prefix('/')?;
        m.contains('/').then_some(m)
    }

    /// Whether the server knew the method: it did not answer UNIMPLEMENTED. An unknown method
    /// is reported as `_OTHER` (its name in `rpc.method_original`), so that calls to made-up
    /// methods cannot multiply span names.
    fn rpc_method_recognised(&self) -> bool {
        const UNIMPLEMENTED: u32 = 12;
        let status = self
            .response
            .as_ref()
            .and_then(|r| r.grpc.as_ref())
            .and_then(|g| g.status);
        status != Some(UNIMPLEMENTED)
    }

    /// The path of the request target, without query or fragment.
    pub fn path(&self) -> &str {
        path_of(&self.target)
    }

    /// The query string with every value replaced by `REDACTED` (keys kept), if any.
    pub fn redacted_query(&self) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        let query = query.split('#').next().unwrap_or("");
        if query.is_empty() {
            return None;
        }
        let parts: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=REDACTED"),
                None => pair.to_string(),
            })
            .collect();
        Some(parts.join("&"))
    }

    /// Whether the span's status is ERROR: 5xx on servers, 4xx and 5xx on clients, and any
    /// request whose response was never observed.
    ///
    /// gRPC: a status the conventions count as an error (on clients every code but OK), or a
    /// call that ended without one (reset, or never answered). A reset stream is an error.
    pub fn is_error(&self) -> bool {
        self.error_type().is_some()
    }

    /// `error.type`, for a span that is an error.
    pub fn error_type(&self) -> Option<String> {
        let Some(r) = &self.response else {
            return Some(NO_RESPONSE.to_string());
        };
        if self.grpc
            && let Some(code) = r.grpc.as_ref().and_then(|g| g.status)
        {
            let error = match self.kind {
                Kind::Server => GRPC_SERVER_ERRORS.contains(&code),
                Kind::Client => code != 0,
            };
            return error.then(|| grpc_code_name(code));
        }
        if let Some(code) = r.reset {
            return Some(h2_error_name(code));
        }
        let status = r.status?;
        let error = match self.kind {
            Kind::Server => status >= 500,
            Kind::Client => status >= 400,
        };
        error.then(|| status.to_string())
    }

    /// The status description for an ERROR span without a status of its own.
    pub fn error_message(&self) -> Option<String> {
        match &self.response {
            None => Some("no response was observed before the connection ended".into()),
            Some(r) => match (r.reset, r.grpc.as_ref().and_then(|g| g.message.clone())) {
                (_, Some(m)) if self.is_error() => Some(m),
                (Some(code), _) => Some(format!("stream reset ({})", h2_error_name(code))),
                _ => None,
            },
        }
    }

    /// Host and port named by the Host header, if any.
    fn host_header(&self) -> Option<(&str, Option<u16>)> {
        let host = self.host.as_deref()?.trim();
        if host.is_empty() {
            return None;
        }
        if let Some(rest) = host.strip_prefix('[') {
            // [v6]:port
            let (addr, after) = rest.split_once(']')?;
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return Some((addr, port));
        }
        match host.rsplit_once(':') {
            Some((h, p)) => match p.parse() {
                Ok(port) => Some((h, Some(port))),
                Err(_) => Some((host, None)),
            },
            None => Some((host, None)),
        }
    }

    /// `server.address` and `server.port`: from the Host header, else the socket's server end.
    pub fn server(&self) -> (String, u16) {
        let socket = match self.kind {
            Kind::Server => self.local,
            Kind::Client => self.remote,
        };
        match self.host_header() {
            Some((host, port)) => (host.to_string(), port.unwrap_or(socket.port())),
            None => (socket.ip().to_string(), socket.port()),
        }
    }

    /// The conventions' attributes, in a stable order, owned (see
    /// [`HttpSpan::visit_attributes`] for the same without allocating).
    pub fn attributes(&self) -> Vec<(Key, Value)> {
        let mut a = Vec::with_capacity(24);
        let mut scratch = String::new();
        self.visit_attributes(&mut scratch, &mut |key, value| {
            a.push((Cow::Owned(key.to_string()), value.to_owned()))
        });
        a
    }

    /// The conventions' attributes, in a stable order, each lent to `f`. Values the span
    /// holds are borrowed; the few that are formatted (addresses, `url.full`) are written
    /// into `scratch`, which a caller reuses from span to span, so that the common span costs
    /// no allocation.
    pub fn visit_attributes(&self, scratch: &mut String, f: &mut dyn FnMut(&str, Attr<'_>)) {
        use Attr::{Int, Str};
        if self.undecoded.contains(&":method") {
            // Not decodable: no value is made up for it.
        } else if self.known_method() {
            f("http.request.method", Str(&self.method));
        } else {
            f("http.request.method", Str("_OTHER"));
            f("http.request.method_original", Str(&self.method));
        }
        if !self.undecoded.contains(&":path") {
            f("url.path", Str(self.path()));
        }
        if let Some(route) = &self.route {
            f("http.route", Str(route));
        }
        let scheme = self.scheme();
        f("url.scheme", Str(scheme));
        if self.kind == Kind::Client {
            let path = self.path();
            let full = match self.host_header() {
                Some(_) => {
                    let host = self.host.as_deref().unwrap_or_default();
                    fmt_into(scratch, format_args!("{scheme}://{host}{path}"))
                }
                None => fmt_into(scratch, format_args!("{scheme}://{}{path}", self.remote)),
            };
            f("url.full", Str(full));
        }
        if let Some(status) = self.response.as_ref().and_then(|r| r.status) {
            f("http.response.status_code", Int(status as i64));
        }
        if self.grpc {
            f("rpc.system.name", Str("grpc"));
            if let Some(m) = self.rpc_method() {
                if self.rpc_method_recognised() {
                    f("rpc.method", Str(m));
                } else {
                    f("rpc.method", Str("_OTHER"));
                    f("rpc.method_original", Str(m));
                }
            }
            if let Some(code) = self.grpc_status_name() {
                f("rpc.response.status_code", Str(&code));
            }
        }
        let socket = match self.kind {
            Kind::Server => self.local,
            Kind::Client => self.remote,
        };
        match self.host_header() {
            Some((host, port)) => {
                f("server.address", Str(host));
                f("server.port", Int(port.unwrap_or(socket.port()) as i64));
            }
            None => {
                f("server.address", Str(ip_into(scratch, socket.ip())));
                f("server.port", Int(socket.port() as i64));
            }
        }
        let remote = ip_into(scratch, self.remote.ip());
        if self.kind == Kind::Server {
            f("client.address", Str(remote));
            f("client.port", Int(self.remote.port() as i64));
        }
        f("network.peer.address", Str(remote));
        f("network.peer.port", Int(self.remote.port() as i64));
        f(
            "network.local.address",
            Str(ip_into(scratch, self.local.ip())),
        );
        f("network.local.port", Int(self.local.port() as i64));
        f("network.transport", Str("tcp"));
        let net_type = if self.remote.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        f("network.type", Str(net_type));
        f(
            "network.protocol.version",
            Str(match self.version {
                Version::Http1(0) => "1.0",
                Version::Http1(1) => "1.1",
                Version::Http2 => "2",
                Version::Http1(minor) => fmt_into(scratch, format_args!("1.{minor}")),
            }),
        );
        if let Some(ua) = &self.user_agent {
            f("user_agent.original", Str(ua));
        }
        if let Some(n) = self.request_body_size {
            f("http.request.body.size", Int(n as i64));
        }
        if let Some(n) = self.response.as_ref().and_then(|r| r.body_size) {
            f("http.response.body.size", Int(n as i64));
        }
        f("thread.id", Int(self.tid as i64));
        if let Some(error) = self.error_type() {
            f("error.type", Str(&error));
        }
        let mut undecoded: Vec<String> = self.undecoded.iter().map(|f| f.to_string()).collect();
        if let Some(r) = &self.response {
            if r.status.is_none() && r.reset.is_none() {
                undecoded.push(":status".into());
            }
            if r.grpc.as_ref().is_some_and(|g| g.status_undecoded) {
                undecoded.push("grpc-status".into());
            }
        }
        if !undecoded.is_empty() {
            f("tracer.http2.undecoded", Attr::StrList(&undecoded));
        }
        if self.capture_query
            && let Some(q) = self.redacted_query()
        {
            f("url.query", Str(&q));
        }
        visit_headers(f, "http.request.header.", &self.request_headers);
        if let Some(r) = &self.response {
            visit_headers(f, "http.response.header.", &r.headers);
        }
        if self.head_truncated {
            f("tracer.request.head_truncated", Str("true"));
        }
    }
}

/// `ip` written into `scratch`, which is lent back: IPv4 by hand (`Display` pads and
/// formats through `fmt`, and costs several times more), IPv6 as `Display` writes it.
fn ip_into(scratch: &mut String, ip: std::net::IpAddr) -> &str {
    scratch.clear();
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, &o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    scratch.push('.');
                }
                if o >= 100 {
                    scratch.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    scratch.push(char::from(b'0' + o / 10 % 10));
                }
                scratch.push(char::from(b'0' + o % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(scratch, "{ip}");
        }
    }
    scratch
}

/// `args` written into `scratch`, which is lent back.
fn fmt_into<'s>(scratch: &'s mut String, args: std::fmt::Arguments<'_>) -> &'s str {
    use std::fmt::Write as _;
    scratch.clear();
    let _ = scratch.write_fmt(args);
    scratch
}

/// Captured headers as `{prefix}{name}` attributes: one per name, whatever its case or how
/// often it appears (asked for twice, or sent in several lines), holding every value in the
/// order sent, as the conventions say (`http.request.header.<key>`, lower case, string array).
fn visit_headers(f: &mut dyn FnMut(&str, Attr<'_>), prefix: &str, headers: &[(String, String)]) {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value.clone()),
            None => grouped.push((name, vec![value.clone()])),
        }
    }
    for (name, values) in grouped {
        f(&format!("{prefix}{name}"), Attr::StrList(&values));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut scratch = String::new();
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "100.99.9.199",
            "::1",
            "::ffff:10.0.0.1",
            "fe80::1:2",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_into(&mut scratch, ip), ip.to_string());
        }
    }

    pub(crate) fn sample(kind: Kind) -> HttpSpan {
        HttpSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            parent_remote: false,
            trace_flags: 1,
            tracestate: None,
            kind,
            start_ns: 1_000,
            end_ns: 5_000,
            process: Arc::new(Process {
                pid: 7,
                comm: "srv".into(),
                executable_name: "srv".into(),
                executable_path: None,
                service: Default::default(),
                container_id: None,
            }),
            tid: 8,
            method: "GET".into(),
            target: "/items/3?secret=1".into(),
            version: crate::protocol::Version::Http1(1),
            host: Some("shop.local:8080".into()),
            user_agent: Some("curl/8".into()),
            request_body_size: None,
            response: Some(Response {
                status: Some(404),
                body_size: Some(10),
                headers: vec![("set-cookie".into(), "a=1".into())],
                grpc: None,
                reset: None,
            }),
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            head_truncated: false,
            request_headers: vec![],
            capture_query: false,
            tls: false,
            grpc: false,
            undecoded: Vec::new(),
            route: None,
        }
    }

    fn get<'a>(a: &'a [(Key, Value)], k: &str) -> Option<&'a Value> {
        a.iter().find(|(key, _)| *key == k).map(|(_, v)| v)
    }

    #[test]
    fn a_route_names_the_span_and_is_an_attribute() {
        let mut s = sample(Kind::Server);
        s.route = Some("/items/{id}".into());
        assert_eq!(s.name(), "GET /items/{id}");
        let a = s.attributes();
        assert_eq!(
            get(&a, "http.route"),
            Some(&Value::Str("/items/{id}".into()))
        );
        s.method = "BREW".into();
        assert_eq!(s.name(), "HTTP /items/{id}");
        s.route = None;
        assert_eq!(s.name(), "HTTP");
        assert_eq!(get(&s.attributes(), "http.route"), None);
    }

    #[test]
    fn server_span_attributes() {
        let s = sample(Kind::Server);
        let a = s.attributes();
        assert_eq!(s.name(), "GET");
        assert_eq!(get(&a, "url.path"), Some(&Value::Str("/items/3".into())));
        assert_eq!(get(&a, "http.response.status_code"), Some(&Value::Int(404)));
        assert_eq!(
            get(&a, "server.address"),
            Some(&Value::Str("shop.local".into()))
        );
        assert_eq!(get(&a, "server.port"), Some(&Value::Int(8080)));
        assert_eq!(get(&a, "client.port"), Some(&Value::Int(50000)));
        assert_eq!(
            get(&a, "network.protocol.version"),
            Some(&Value::Str("1.1".into()))
        );
        assert!(get(&a, "url.full").is_none());
        assert!(!s.is_error(), "404 is not a server error");
        assert!(get(&a, "error.type").is_none());
    }

    #[test]
    fn client_span_attributes_and_error() {
        let mut s = sample(Kind::Client);
        s.local = "127.0.0.1:50000".parse().unwrap();
        s.remote = "127.0.0.1:8080".parse().unwrap();
        let a = s.attributes();
        assert!(s.is_error(), "404 is a client error");
        assert_eq!(get(&a, "error.type"), Some(&Value::Str("404".into())));
        assert_eq!(
            get(&a, "url.full"),
            Some(&Value::Str("http://shop.local:8080/items/3".into()))
        );
        assert!(get(&a, "client.address").is_none());
    }

    #[test]
    fn tls_plaintext_spans_say_https() {
        let mut s = sample(Kind::Client);
        s.tls = true;
        let a = s.attributes();
        assert_eq!(get(&a, "url.scheme"), Some(&Value::Str("https".into())));
        assert_eq!(
            get(&a, "url.full"),
            Some(&Value::Str("https://shop.local:8080/items/3".into()))
        );
        let mut s = sample(Kind::Server);
        s.tls = true;
        let a = s.attributes();
        assert_eq!(get(&a, "url.scheme"), Some(&Value::Str("https".into())));
    }

    #[test]
    fn missing_response_is_an_error_without_status() {
        let mut s = sample(Kind::Server);
        s.response = None;
        let a = s.attributes();
        assert!(s.is_error());
        assert!(get(&a, "http.response.status_code").is_none());
        assert_eq!(get(&a, "error.type"), Some(&Value::Str(NO_RESPONSE.into())));
    }

    #[test]
    fn query_and_headers_only_when_asked() {
        let mut s = sample(Kind::Server);
        s.response.as_mut().unwrap().headers.clear();
        assert!(get(&s.attributes(), "url.query").is_none());
        s.capture_query = true;
        s.target = "/p?token=s3cret&flag&b=2#frag".into();
        assert_eq!(
            get(&s.attributes(), "url.query"),
            Some(&Value::Str("token=REDACTED&flag&b=REDACTED".into()))
        );
        s.request_headers = vec![("x-id".into(), "1".into()), ("x-id".into(), "2".into())];
        assert_eq!(
            get(&s.attributes(), "http.request.header.x-id"),
            Some(&Value::StrList(vec!["1".into(), "2".into()]))
        );
    }

    /// A header sent in several lines, apart from each other, or named in another case: one
    /// attribute, with every value in order.
    #[test]
    fn captured_headers_give_one_attribute_per_name() {
        let mut s = sample(Kind::Server);
        s.request_headers = vec![
            ("x-id".into(), "1".into()),
            ("accept".into(), "*/*".into()),
            ("X-Id".into(), "2".into()),
            ("x-id".into(), "3".into()),
        ];
        s.response.as_mut().unwrap().headers = vec![
            ("set-cookie".into(), "a=1".into()),
            ("x-id".into(), "r".into()),
            ("Set-Cookie".into(), "b=2".into()),
        ];
        let a = s.attributes();
        let mut keys: Vec<&str> = a.iter().map(|(k, _)| k.as_ref()).collect();
        let all = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all, "duplicate keys in {keys:?}");
        assert_eq!(
            get(&a, "http.request.header.x-id"),
            Some(&Value::StrList(vec!["1".into(), "2".into(), "3".into()]))
        );
        assert_eq!(
            get(&a, "http.request.header.accept"),
            Some(&Value::StrList(vec!["*/*".into()]))
        );
        assert_eq!(
            get(&a, "http.response.header.set-cookie"),
            Some(&Value::StrList(vec!["a=1".into(), "b=2".into()]))
        );
        assert_eq!(
            get(&a, "http.response.header.x-id"),
            Some(&Value::StrList(vec!["r".into()]))
        );
    }

    #[test]
    fn unknown_methods_and_hosts() {
        let mut s = sample(Kind::Server);
        s.method = "PURGE".into();
        s.host = None;
        s.target = "http://proxy.example/x/y?z".into();
        let a = s.attributes();
        assert_eq!(s.name(), "HTTP");
        assert_eq!(
            get(&a, "http.request.method"),
            Some(&Value::Str("_OTHER".into()))
        );
        assert_eq!(
            get(&a, "http.request.method_original"),
            Some(&Value::Str("PURGE".into()))
        );
        assert_eq!(
            get(&a, "server.address"),
            Some(&Value::Str("127.0.0.1".into()))
        );
        assert_eq!(s.path(), "/x/y");
        s.host = Some("[::1]:9000".into());
        assert_eq!(s.server(), ("::1".to_string(), 9000));
    }
}
