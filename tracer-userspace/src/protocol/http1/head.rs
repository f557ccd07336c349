//! HTTP/1.x message heads: request and status lines and the few headers tracing needs, parsed
//! with `httparse` into small owned structs.

use crate::protocol::Text;

/// Headers read per message head; heads with more are parsed as far as these go.
const MAX_HEADERS: usize = 96;

/// Methods recognised at the start of a stream chunk (resynchronising after a gap, or
/// picking up a connection that was already open).
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Outcome of parsing a head from the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole head, `len` bytes long.
    Complete { head: T, len: usize },
    /// More bytes are needed.
    Partial,
    /// Not HTTP/1.x.
    Invalid,
}

/// The parts of a request head that tracing uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Text,
    /// The request target as sent (path and query, or an absolute URI).
    pub target: Text,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub host: Option<Text>,
    pub user_agent: Option<Text>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Headers the user asked to capture, as (lower-case name, value), in order.
    pub captured: Vec<(String, String)>,
    /// True when the head did not fit in what was captured: the fields above are what could be
    /// read from its first bytes.
    pub truncated: bool,
}

impl RequestHead {
    /// What every protocol reports of a request (the framing stays here).
    pub fn into_request(self) -> crate::protocol::Request {
        crate::protocol::Request {
            method: self.method,
            target: self.target,
            version: crate::protocol::Version::Http1(self.minor_version),
            host: self.host,
            user_agent: self.user_agent,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            captured: self.captured,
            truncated: self.truncated,
            undecoded: Vec::new(),
            grpc: false,
            stream: None,
        }
    }
}

/// The parts of a response head that tracing uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    /// `Upgrade: h2c`: with status 101, HTTP/2 follows on the connection (RFC 7540 3.2).
    pub upgrade_h2c: bool,
    /// Headers the user asked to capture, as (lower-case name, value), in order.
    pub captured: Vec<(String, String)>,
}

/// Headers shared by requests and responses.
#[derive(Default)]
struct Common {
    content_length: Option<u64>,
    chunked: bool,
    connection_close: bool,
}

/// A header value as text, without the whitespace around it (HTTP's optional whitespace is
/// ASCII; bytes that are not UTF-8 become U+FFFD).
fn text(value: &[u8]) -> std::borrow::Cow<'_, str> {
    let value = value.trim_ascii();
    // The common case checked at full speed; the lossy pass only for bytes that are not UTF-8.
    match std::str::from_utf8(value) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// [`text`], owned.
fn owned(value: &[u8]) -> String {
    text(value).into_owned()
}

fn common(name: &str, value: &[u8], c: &mut Common) -> bool {
    if name.eq_ignore_ascii_case("content-length") {
        c.content_length = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse().ok());
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        // Chunked must be the final coding when present (RFC 9112 6.1).
        c.chunked = text(value)
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
    } else if name.eq_ignore_ascii_case("connection") {
        c.connection_close = text(value)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"));
    } else {
        return false;
    }
    true
}

/// Whether `buf` begins like a request line.
pub fn starts_like_request(buf: &[u8]) -> bool {
    METHODS.iter().any(|m| buf.starts_with(m))
}

/// Whether `buf` is the beginning of a method token and its space (a head split very early).
pub fn starts_like_request_prefix(buf: &[u8]) -> bool {
    !buf.is_empty() && METHODS.iter().any(|m| m.starts_with(buf))
}

/// Whether `buf` begins like a status line.
pub fn starts_like_response(buf: &[u8]) -> bool {
    buf.starts_with(b"HTTP/1.")
}

/// Parse a request head. When `final_bytes` is true no more bytes of this head will be seen
/// (the capture window cut it), and a head whose request line is whole is returned as
/// `truncated` rather than `Partial`.
pub fn parse_request(buf: &[u8], final_bytes: bool) -> Parsed<RequestHead> {
    parse_request_capturing(buf, final_bytes, &[])
}

/// The value of a header named in `wanted` (lower-case names), if it is one.
fn capture(name: &str, value: &[u8], wanted: &[String]) -> Option<(String, String)> {
    wanted
        .iter()
        .find(|w| w.eq_ignore_ascii_case(name))
        .map(|w| (w.clone(), owned(value)))
}

/// [`parse_request`], also keeping the values of the headers named in `wanted`.
pub fn parse_request_capturing(
    buf: &[u8],
    final_bytes: bool,
    wanted: &[String],
) -> Parsed<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => httparse::Status::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (len, truncated) = match status {
        httparse::Status::Complete(len) => (len, false),
        httparse::Status::Partial if final_bytes && req.version.is_some() => (buf.len(), true),
        httparse::Status::Partial => return Parsed::Partial,
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid;
    };
    let mut head = RequestHead {
        method: Text::new(method),
        target: Text::new(target),
        minor_version: version,
        truncated,
        ..Default::default()
    };
    let mut c = Common::default();
    for h in req.headers.iter().take_while(|h| !h.name.is_empty()) {
        if let Some(kept) = capture(h.name, h.value, wanted) {
            head.captured.push(kept);
        }
        if common(h.name, h.value, &mut c) {
            continue;
        }
        if h.name.eq_ignore_ascii_case("host") {
            head.host = Some(Text::from(text(h.value)));
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(Text::from(text(h.value)));
        } else if h.name.eq_ignore_ascii_case("traceparent") {
            head.traceparent = Some(owned(h.value));
        } else if h.name.eq_ignore_ascii_case("tracestate") {
            head.tracestate = Some(owned(h.value));
        }
    }
    head.content_length = c.content_length;
    head.chunked = c.chunked;
    Parsed::Complete { head, len }
}

/// Parse a response head.
pub fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    parse_response_capturing(buf, &[])
}

/// [`parse_response`], also keeping the values of the headers named in `wanted`.
pub fn parse_response_capturing(buf: &[u8], wanted: &[String]) -> Parsed<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Partial;
        }
        Err(_) => return Parsed::Invalid,
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Parsed::Invalid;
    };
    let mut c = Common::default();
    let mut captured = Vec::new();
    let mut upgrade_h2c = false;
    for h in resp.headers.iter() {
        if let Some(kept) = capture(h.name, h.value, wanted) {
            captured.push(kept);
        }
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_h2c = text(h.value)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("h2c"));
        }
        common(h.name, h.value, &mut c);
    }
    Parsed::Complete {
        head: ResponseHead {
            status,
            minor_version: version,
            content_length: c.content_length,
            chunked: c.chunked,
            connection_close: c.connection_close || version == 0,
            upgrade_h2c,
            captured,
        },
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields() {
        let raw = b"POST /api/items?id=7 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/8\r\n\
                    Content-Length: 12\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nbody";
        let Parsed::Complete { head, len } = parse_request(raw, false) else {
            panic!("expected a complete head");
        };
        assert_eq!(len, raw.len() - 4);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/api/items?id=7");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.host.as_deref(), Some("shop.local:8080"));
        assert_eq!(head.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(head.content_length, Some(12));
        assert!(!head.chunked && !head.truncated);
        assert!(head.traceparent.unwrap().starts_with("00-0af76519"));
    }

    #[test]
    fn partial_until_the_blank_line() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(
                parse_request(&raw[..cut], false),
                Parsed::Partial,
                "cut at {cut}"
            );
        }
        assert!(matches!(parse_request(raw, false), Parsed::Complete { .. }));
    }

    #[test]
    fn truncated_head_keeps_the_request_line() {
        let raw = b"GET /long HTTP/1.1\r\nHost: a\r\nX-Filler: aaaaaaaa";
        let Parsed::Complete { head, .. } = parse_request(raw, true) else {
            panic!("expected the salvaged head");
        };
        assert!(head.truncated);
        assert_eq!(head.target, "/long");
        assert_eq!(
            head.host.as_deref(),
            Some("a"),
            "the headers before the cut are kept"
        );
        // Without even a whole request line there is nothing to salvage.
        assert_eq!(parse_request(b"GET /lo", true), Parsed::Partial);
    }

    /// More headers than are parsed: more bytes may follow (partial), or, when none will, the
    /// head is kept as far as the parsed headers go.
    #[test]
    fn a_head_with_too_many_headers() {
        let mut raw = b"GET /many HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&raw, false), Parsed::Partial);
        let Parsed::Complete { head, len } = parse_request(&raw, true) else {
            panic!("expected the salvaged head");
        };
        assert!(head.truncated);
        assert_eq!((head.host.as_deref(), len), (Some("h"), raw.len()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            {
                let head = ResponseHead {
                    status: 200,
                    minor_version: 1,
                    content_length: Some(2),
                    ..Default::default()
                };
                Parsed::Complete { head, len: 38 }
            }
        );
    }

    /// Values are trimmed of the whitespace around them; bytes that are not UTF-8 become
    /// U+FFFD, and what follows them is kept.
    #[test]
    fn header_values_as_text() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\xffb \t\r\nUser-Agent: \tcurl/8 \r\n\r\n";
        let Parsed::Complete { head, .. } = parse_request(raw, false) else {
            panic!("expected a complete head");
        };
        assert_eq!(head.host.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(head.user_agent.as_deref(), Some("curl/8"));
    }

    #[test]
    fn response_fields() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\nConnection: keep-alive, close\r\n\r\n";
        let Parsed::Complete { head, .. } = parse_response(raw) else {
            panic!("expected a complete head");
        };
        assert_eq!(head.status, 404);
        assert!(head.chunked);
        assert!(head.connection_close);
        let Parsed::Complete { head, .. } = parse_response(b"HTTP/1.0 200 OK\r\n\r\n") else {
            panic!("expected a complete head");
        };
        assert!(head.connection_close, "HTTP/1.0 closes by default");
    }

    #[test]
    fn only_wanted_headers_are_kept() {
        let raw = b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nX-Request-Id: abc\r\nx-request-id: def\r\n\r\n";
        let wanted = vec!["x-request-id".to_string()];
        let Parsed::Complete { head, .. } = parse_request_capturing(raw, false, &wanted) else {
            panic!("expected a complete head");
        };
        assert_eq!(
            head.captured,
            vec![
                ("x-request-id".into(), "abc".into()),
                ("x-request-id".into(), "def".into())
            ]
        );
        let Parsed::Complete { head, .. } = parse_request(raw, false) else {
            panic!("expected a complete head");
        };
        assert!(head.captured.is_empty(), "nothing is kept unless asked for");
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00\x01", false),
            Parsed::Invalid
        );
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH_9.2\r\n"), Parsed::Invalid);
        assert!(starts_like_request(b"DELETE /x HTTP/1.1"));
        assert!(!starts_like_request(b"GETX / HTTP/1.1"));
        assert!(starts_like_response(b"HTTP/1.1 200 OK"));
    }
}
