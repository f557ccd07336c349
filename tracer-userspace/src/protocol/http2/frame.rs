//! HTTP/2 framing (RFC 9113 section 4): one direction's bytes cut into frames across the chunks
//! the kernel reports, however frames and syscalls line up. Frames that carry header blocks,
//! settings or the end of streams are kept whole; DATA is counted, never kept.

use crate::protocol::http1::stream::Chunk;

/// What a client sends first on a connection (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's size.
pub const HEADER_LEN: usize = 9;
/// The largest payload kept whole; a larger frame that would be kept is reported as lost.
pub const MAX_KEPT: usize = 64 * 1024;

/// Frame types (RFC 9113 6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether the frame is kept whole: it carries a header block, settings, or ends streams.
    fn kept(&self) -> bool {
        matches!(
            self.kind,
            kind::HEADERS
                | kind::CONTINUATION
                | kind::PUSH_PROMISE
                | kind::RST_STREAM
                | kind::SETTINGS
                | kind::GOAWAY
        )
    }

    /// Whether a frame with this header is plausible: a known type on the stream it belongs
    /// to (connection-level types on stream 0, the others on a stream), of a length the type
    /// allows. Used to find frames on a connection joined late.
    pub fn plausible(&self) -> bool {
        let on_stream = self.stream != 0;
        match self.kind {
            kind::DATA | kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE => on_stream,
            kind::PRIORITY => on_stream && self.len == 5,
            kind::RST_STREAM => on_stream && self.len == 4,
            kind::SETTINGS => !on_stream && self.len.is_multiple_of(6),
            kind::PING => !on_stream && self.len == 8,
            kind::GOAWAY => !on_stream && self.len >= 8,
            kind::WINDOW_UPDATE => self.len == 4,
            _ => false,
        }
    }
}

/// Receives what a [`Reader`] finds, in order.
pub trait Sink {
    /// A frame kept whole, with its payload. `ts` is the kernel time of its first byte.
    fn frame(&mut self, header: Header, payload: &[u8], ts: u64);
    /// `len` more bytes of stream `stream`'s DATA; `end_stream` with the frame's last byte
    /// when it ends the stream.
    fn data(&mut self, stream: u32, len: u64, end_stream: bool, ts: u64);
    /// Bytes were not seen, or were not HTTP/2: frames can no longer be found here.
    fn lost(&mut self);
}

#[derive(Debug, Clone)]
enum State {
    /// The client preface: how many of its bytes have been seen.
    Preface(usize),
    /// A frame header: the bytes seen so far.
    Header([u8; HEADER_LEN], usize),
    /// A payload: its header, the bytes still to come, and when it started.
    Payload {
        header: Header,
        left: u32,
        ts: u64,
    },
    Lost,
}

/// One direction's frame boundaries, kept across chunks.
#[derive(Debug, Clone)]
pub struct Reader {
    state: State,
    /// The payload of the frame being kept.
    kept: Vec<u8>,
}

impl Reader {
    /// A direction that starts with the client preface (the client's side, from its start).
    pub fn after_preface() -> Self {
        Reader {
            state: State::Preface(0),
            kept: Vec::new(),
        }
    }

    /// A direction whose next byte starts a frame.
    pub fn at_frame() -> Self {
        Reader {
            state: State::Header([0; HEADER_LEN], 0),
            kept: Vec::new(),
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next chunk of this direction.
    pub fn feed(&mut self, chunk: Chunk<'_>, sink: &mut impl Sink) {
        let mut data = chunk.data;
        while !data.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Preface(seen) => {
                    let want = &PREFACE[*seen..];
                    let n = want.len().min(data.len());
                    if data[..n] != want[..n] {
                        self.lose(sink);
                        return;
                    }
                    *seen += n;
                    data = &data[n..];
                    if *seen == PREFACE.len() {
                        self.state = State::Header([0; HEADER_LEN], 0);
                    }
                }
                State::Header(buf, have) => {
                    let n = (HEADER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == HEADER_LEN {
                        let header = Header::parse(buf);
                        if !header.plausible() && header.kind <= kind::CONTINUATION {
                            self.lose(sink);
                            return;
                        }
                        if header.kept() && header.len as usize > MAX_KEPT {
                            self.lose(sink);
                            return;
                        }
                        self.kept.clear();
                        self.state = State::Payload {
                            header,
                            left: header.len,
                            ts: chunk.ts_first,
                        };
                        self.payload_done(sink);
                    }
                }
                State::Payload { header, left, ts } => {
                    let (header, ts) = (*header, *ts);
                    let n = (*left as usize).min(data.len());
                    *left -= n as u32;
                    let done = *left == 0;
                    if header.kept() {
                        self.kept.extend_from_slice(&data[..n]);
                    } else if header.kind == kind::DATA {
                        let end = done && header.flags & flag::END_STREAM != 0;
                        sink.data(header.stream, n as u64, end, ts);
                    }
                    data = &data[n..];
                    if done {
                        self.payload_done(sink);
                    }
                }
            }
        }
        // Bytes moved but not captured: only a DATA payload (or one not kept) may lie there.
        let mut missing = chunk.total.saturating_sub(chunk.data.len() as u64);
        while missing > 0 {
            match &mut self.state {
                State::Payload { header, left, ts } if !header.kept() => {
                    let (header, ts) = (*header, *ts);
                    let n = u64::from(*left).min(missing);
                    *left -= n as u32;
                    missing -= n;
                    if header.kind == kind::DATA {
                        let end = *left == 0 && header.flags & flag::END_STREAM != 0;
                        sink.data(header.stream, n, end, ts);
                    }
                    if *left == 0 {
                        self.payload_done(sink);
                    }
                }
                State::Lost => return,
                _ => {
                    self.lose(sink);
                    return;
                }
            }
        }
    }

    /// The bytes that follow are not seen (a gap): frames can no longer be found.
    pub fn gap(&mut self, sink: &mut impl Sink) {
        if !self.is_lost() {
            self.lose(sink);
        }
    }

    /// The payload in progress is whole (or empty): a kept frame goes out.
    fn payload_done(&mut self, sink: &mut impl Sink) {
        let State::Payload {
            header,
            left: 0,
            ts,
        } = self.state
        else {
            return;
        };
        if header.kept() {
            sink.frame(header, &self.kept, ts);
            self.kept.clear();
        } else if header.kind == kind::DATA && header.len == 0 {
            sink.data(header.stream, 0, header.flags & flag::END_STREAM != 0, ts);
        }
        self.state = State::Header([0; HEADER_LEN], 0);
    }

    fn lose(&mut self, sink: &mut impl Sink) {
        self.state = State::Lost;
        self.kept = Vec::new();
        sink.lost();
    }
}

/// The payload of a HEADERS or PUSH_PROMISE frame less its padding, priority fields and
/// promised stream id: the header block fragment. `None` when the lengths do not add up.
pub fn headers_fragment<'p>(header: &Header, payload: &'p [u8]) -> Option<&'p [u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if header.flags & flag::PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if header.kind == kind::HEADERS && header.flags & flag::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if header.kind == kind::PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        frames: Vec<(Header, Vec<u8>, u64)>,
        data: Vec<(u32, u64, bool)>,
        lost: u32,
    }

    impl Sink for Seen {
        fn frame(&mut self, header: Header, payload: &[u8], ts: u64) {
            self.frames.push((header, payload.to_vec(), ts));
        }
        fn data(&mut self, stream: u32, len: u64, end_stream: bool, _ts: u64) {
            self.data.push((stream, len, end_stream));
        }
        fn lost(&mut self) {
            self.lost += 1;
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn chunk(data: &[u8], total: u64, ts: u64) -> Chunk<'_> {
        Chunk {
            data,
            total,
            ts_first: ts,
            ts_last: ts,
        }
    }

    /// Frames cut at every possible point between two chunks give the same frames.
    #[test]
    fn frames_are_found_however_the_bytes_are_cut() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        bytes.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, b"block-1"));
        bytes.extend(frame(kind::DATA, 0, 1, &[7; 100]));
        bytes.extend(frame(kind::DATA, flag::END_STREAM, 1, &[8; 5]));
        bytes.extend(frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        bytes.extend(frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        for cut in 0..=bytes.len() {
            let mut r = Reader::after_preface();
            let mut seen = Seen::default();
            r.feed(chunk(&bytes[..cut], cut as u64, 1), &mut seen);
            r.feed(
                chunk(&bytes[cut..], (bytes.len() - cut) as u64, 2),
                &mut seen,
            );
            assert_eq!(seen.lost, 0, "cut at {cut}");
            let kinds: Vec<(u8, u32, Vec<u8>)> = seen
                .frames
                .iter()
                .map(|(h, p, _)| (h.kind, h.stream, p.clone()))
                .collect();
            assert_eq!(
                kinds,
                vec![
                    (kind::SETTINGS, 0, vec![0, 1, 0, 0, 0x10, 0]),
                    (kind::HEADERS, 1, b"block-1".to_vec()),
                    (kind::RST_STREAM, 3, vec![0, 0, 0, 8]),
                ],
                "cut at {cut}"
            );
            let total: u64 = seen.data.iter().map(|d| d.1).sum();
            assert_eq!(total, 105, "cut at {cut}");
            let ends: Vec<&(u32, u64, bool)> = seen.data.iter().filter(|d| d.2).collect();
            assert_eq!(ends.len(), 1, "cut at {cut}");
            assert_eq!(ends[0].0, 1);
            assert!(seen.data.last().unwrap().2, "the end comes last");
        }
    }

    /// A HEADERS frame right after a 60 KiB DATA frame in one write: found, though the
    /// capture window holds only the write's first bytes, as long as the rest was captured
    /// by the kernel (here: all of it).
    #[test]
    fn headers_after_a_large_data_frame_in_one_write() {
        let mut bytes = frame(kind::DATA, 0, 1, &vec![0; 60 * 1024]);
        bytes.extend(frame(kind::HEADERS, flag::END_HEADERS, 3, b"block-3"));
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        r.feed(chunk(&bytes, bytes.len() as u64, 5), &mut seen);
        assert_eq!(seen.frames.len(), 1);
        assert_eq!(seen.frames[0].1, b"block-3");
        assert_eq!(seen.data.iter().map(|d| d.1).sum::<u64>(), 60 * 1024);
    }

    /// Bytes moved but not captured inside DATA are counted; a frame header in them is lost.
    #[test]
    fn uncaptured_bytes_are_counted_or_lost() {
        let data = frame(kind::DATA, flag::END_STREAM, 1, &[1; 1000]);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        r.feed(chunk(&data[..100], data.len() as u64, 1), &mut seen);
        assert_eq!(
            (seen.lost, seen.data.iter().map(|d| d.1).sum::<u64>()),
            (0, 1000)
        );
        assert!(seen.data.last().unwrap().2, "the stream's end is known");
        let mut two = data.clone();
        two.extend(frame(kind::HEADERS, flag::END_HEADERS, 3, b"x"));
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        r.feed(chunk(&two[..100], two.len() as u64, 1), &mut seen);
        assert_eq!(seen.lost, 1);
        assert!(r.is_lost());
        assert!(seen.frames.is_empty());
    }

    #[test]
    fn garbage_is_lost_not_a_panic() {
        let mut r = Reader::after_preface();
        let mut seen = Seen::default();
        r.feed(chunk(b"GET / HTTP/1.1\r\n\r\n", 18, 1), &mut seen);
        assert_eq!(seen.lost, 1);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        // A HEADERS frame on stream 0.
        r.feed(chunk(&frame(kind::HEADERS, 0, 0, b"x"), 10, 1), &mut seen);
        assert_eq!(seen.lost, 1);
        // An oversized header block.
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        let big = [0xff, 0xff, 0xff, kind::HEADERS, 0, 0, 0, 0, 1];
        r.feed(chunk(&big, 9, 1), &mut seen);
        assert_eq!(seen.lost, 1);
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let h = Header {
            len: 0,
            kind: kind::HEADERS,
            flags: flag::PADDED | flag::PRIORITY,
            stream: 1,
        };
        let payload = [2, 0, 0, 0, 0, 16, b'a', b'b', 0, 0];
        assert_eq!(headers_fragment(&h, &payload), Some(&b"ab"[..]));
        assert_eq!(headers_fragment(&h, &[9, 0, 0, 0, 0, 0]), None);
        assert_eq!(headers_fragment(&h, &[]), None);
        let promise = Header {
            len: 0,
            kind: kind::PUSH_PROMISE,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(
            headers_fragment(&promise, &[1, 0, 0, 0, 2, b'a', 0]),
            Some(&b"a"[..])
        );
    }
}
