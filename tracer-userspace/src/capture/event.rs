//! Decoding ring-buffer records into borrowed events: the first step of the userspace flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{ConnTuple, EVENT_HEADER_LEN, EventHeader, TraceIds, direction, kind};

/// One captured event: a header and the payload bytes that were copied (a prefix of what the
/// syscall moved).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub header: EventHeader,
    pub payload: &'a [u8],
}

/// What is wrong with a record that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("record claims {claimed} payload bytes but carries {present}")]
    Payload { claimed: usize, present: usize },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown byte source {0}")]
    Source(u8),
}

impl<'a> Event<'a> {
    /// Decode one record as the eBPF programs wrote it.
    pub fn decode(record: &'a [u8]) -> Result<Self, DecodeError> {
        if record.len() < EVENT_HEADER_LEN {
            return Err(DecodeError::Short(record.len()));
        }
        // SAFETY: EventHeader is plain #[repr(C)] data valid for any bit pattern, and the
        // record holds at least its size; read_unaligned makes no alignment assumption.
        let header: EventHeader =
            unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<EventHeader>()) };
        if !matches!(
            header.kind,
            kind::DATA
                | kind::OPEN
                | kind::CLOSE
                | kind::EXIT
                | kind::CONTEXT
                | kind::INJECT
                | kind::TRACEPARENT
                | kind::MAPPED
                | kind::FRAMES
        ) {
            return Err(DecodeError::Kind(header.kind));
        }
        if crate::conn::Source::from_wire(header.source).is_none() {
            return Err(DecodeError::Source(header.source));
        }
        let claimed = header.captured_len as usize;
        let payload = record
            .get(EVENT_HEADER_LEN..EVENT_HEADER_LEN + claimed)
            .ok_or(DecodeError::Payload {
                claimed,
                present: record.len() - EVENT_HEADER_LEN,
            })?;
        Ok(Event { header, payload })
    }

    /// Whether the bytes went into the traced process.
    pub fn is_ingress(&self) -> bool {
        self.header.direction == direction::INGRESS
    }
}

/// The ids a `CONTEXT` or `INJECT` event carries; `None` for a short or invalid payload.
pub fn trace_ids(payload: &[u8]) -> Option<TraceIds> {
    if payload.len() < std::mem::size_of::<TraceIds>() {
        return None;
    }
    // SAFETY: TraceIds is plain #[repr(C)] bytes, valid for any bit pattern; the payload holds
    // at least its size.
    let ids: TraceIds = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
    (ids.trace_id != [0; 16] && ids.span_id != [0; 8]).then_some(ids)
}

/// A NUL-padded kernel task name as text.
pub fn comm_str(comm: &[u8]) -> &str {
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    std::str::from_utf8(&comm[..end]).unwrap_or("?")
}

/// The local and remote socket addresses of a tuple. IPv4-mapped IPv6 addresses (a dual-stack
/// socket talking IPv4) are shown as IPv4.
pub fn endpoints(t: &ConnTuple) -> (SocketAddr, SocketAddr) {
    let ip = |a: &[u8; 16]| -> IpAddr {
        if t.family == 2 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            let v6 = Ipv6Addr::from(*a);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
    };
    (
        SocketAddr::new(ip(&t.local_addr), t.local_port),
        SocketAddr::new(ip(&t.remote_addr), t.remote_port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: EventHeader, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; EVENT_HEADER_LEN];
        // SAFETY: the vector holds exactly one header's worth of bytes.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<EventHeader>(), header) };
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_header_and_payload() {
        let h = EventHeader {
            kind: kind::DATA,
            direction: direction::INGRESS,
            captured_len: 3,
            total_len: 10,
            tgid: 42,
            ..Default::default()
        };
        let bytes = record(h, b"GET");
        let ev = Event::decode(&bytes).unwrap();
        assert_eq!(ev.payload, b"GET");
        assert_eq!(ev.header.tgid, 42);
        assert!(ev.is_ingress());
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert!(matches!(Event::decode(&[0; 8]), Err(DecodeError::Short(8))));
        let h = EventHeader {
            kind: kind::DATA,
            captured_len: 50,
            ..Default::default()
        };
        assert!(matches!(
            Event::decode(&record(h, b"abc")),
            Err(DecodeError::Payload { .. })
        ));
        let h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert!(matches!(
            Event::decode(&record(h, b"")),
            Err(DecodeError::Kind(99))
        ));
        let h = EventHeader {
            kind: kind::DATA,
            source: 7,
            ..Default::default()
        };
        assert!(matches!(
            Event::decode(&record(h, b"")),
            Err(DecodeError::Source(7))
        ));
    }

    #[test]
    fn shows_mapped_ipv6_as_ipv4() {
        let mut t = ConnTuple {
            family: 10,
            local_port: 80,
            remote_port: 5555,
            ..Default::default()
        };
        t.local_addr[10] = 0xff;
        t.local_addr[11] = 0xff;
        t.local_addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        t.remote_addr[15] = 1;
        let (l, r) = endpoints(&t);
        assert_eq!(l.to_string(), "127.0.0.1:80");
        assert_eq!(r.to_string(), "[::1]:5555");
    }
}
