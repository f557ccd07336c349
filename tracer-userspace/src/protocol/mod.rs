//! Pure protocol parsers: bytes in, messages out, no I/O.

pub mod http1;

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
