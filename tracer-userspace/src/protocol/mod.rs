//! Pure protocol parsers: bytes in, messages out, no I/O; and what every protocol reports of
//! a request ([`Request`]), the one shape pairing, linking and spans consume.

pub mod http1;
pub mod http2;

/// The protocol and version an exchange used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.x with its minor version (0 or 1).
    Http1(u8),
    Http2,
}

impl Default for Version {
    fn default() -> Self {
        Version::Http1(1)
    }
}

impl Version {
    /// `network.protocol.version`.
    pub fn attribute(self) -> String {
        match self {
            Version::Http1(minor) => format!("1.{minor}"),
            Version::Http2 => "2".to_string(),
        }
    }
}

/// Text of a request that is usually short (method, target, host, user agent): up to 24 bytes
/// are held in place, with no allocation to make or free.
pub type Text = compact_str::CompactString;

/// A request as any protocol reports it: what tracing uses of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: Text,
    /// The request target as sent (path and query, or an absolute URI).
    pub target: Text,
    pub version: Version,
    /// `Host` (HTTP/1.x), the authority.
    pub host: Option<Text>,
    pub user_agent: Option<Text>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Headers the user asked to capture, as (lower-case name, value), in order.
    pub captured: Vec<(String, String)>,
    /// The head did not fit in what was captured: the fields above are what could be read
    /// from its first bytes.
    pub truncated: bool,
    /// Fields that could not be decoded (HTTP/2 joined late): `:method`, `:path`. Their
    /// values above are empty, never made up.
    pub undecoded: Vec<&'static str>,
    /// A gRPC call (`content-type: application/grpc*`).
    pub grpc: bool,
    /// The HTTP/2 stream it was sent on.
    pub stream: Option<u32>,
}

impl Request {
    /// What the two ends of its connection both see of it.
    pub fn sending(&self) -> crate::correlate::link::Sending<'_> {
        crate::correlate::link::Sending {
            method: &self.method,
            target: &self.target,
            stream: self.stream,
        }
    }
}

/// Largest TLS record body (2^14 bytes of plaintext plus the most a cipher may add).
const TLS_RECORD_MAX: usize = (1 << 14) + 2048;

/// Whether `data` starts like TLS records: a record header of a known content type
/// (change_cipher_spec, alert, handshake, application_data) and version (SSL 3.0 to TLS 1.3 on
/// the wire, 3.0 to 3.4), with a length a record may have. HTTP/1.x starts with a letter, so
/// neither can be taken for the other. A prefix shorter than a header counts when it agrees.
pub fn starts_tls(data: &[u8]) -> bool {
    let content_type = |b: u8| (20..=23).contains(&b);
    match data {
        [] => false,
        [t] => content_type(*t),
        [t, 3] => content_type(*t),
        [t, 3, minor, ..] if content_type(*t) && *minor <= 4 => match data.get(3..5) {
            Some(&[hi, lo]) => {
                let len = usize::from(u16::from_be_bytes([hi, lo]));
                len > 0 && len <= TLS_RECORD_MAX
            }
            _ => true,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::starts_tls;

    #[test]
    fn tls_records_are_told_from_http() {
        // A ClientHello (record version 3.1), a ServerHello, application data, an alert.
        assert!(starts_tls(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]));
        assert!(starts_tls(&[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02]));
        assert!(starts_tls(&[0x17, 0x03, 0x03, 0x40, 0x11]));
        assert!(starts_tls(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]));
        // Prefixes of a record header.
        assert!(starts_tls(&[0x16]));
        assert!(starts_tls(&[0x16, 0x03, 0x01]));
        // HTTP, SSH, HTTP/2's preface, a length no record has, a version that is not TLS.
        assert!(!starts_tls(b"GET / HTTP/1.1\r\n"));
        assert!(!starts_tls(b"HTTP/1.1 200 OK\r\n"));
        assert!(!starts_tls(b"SSH-2.0-OpenSSH_9.2"));
        assert!(!starts_tls(b"PRI * HTTP/2.0\r\n"));
        assert!(!starts_tls(&[0x17, 0x03, 0x03, 0xff, 0xff]));
        assert!(!starts_tls(&[0x16, 0x03, 0x01, 0x00, 0x00]));
        assert!(!starts_tls(&[0x16, 0x03, 0x09, 0x00, 0x10]));
        assert!(!starts_tls(&[0x16, 0x02]));
        assert!(!starts_tls(&[]));
    }
}
