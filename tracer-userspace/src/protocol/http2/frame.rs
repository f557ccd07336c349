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
    /// Bytes of this direction went by unread (not captured, not frames, or a header block
    /// too large to keep): whatever they held is unknown. Frames are looked for again.
    fn gap(&mut self);
    /// Frames cannot be found here any more: nothing more is learnt from this direction.
    fn lost(&mut self);
}

/// Chunks looked at for one that starts with frames, before a direction is given up.
const MAX_SYNC_TRIES: u8 = 32;

/// The largest frame a direction joined late may start with: the size every peer accepts
/// until told otherwise (RFC 9113 4.2). Larger frames are legal, but a stricter test keeps
/// other bytes from being taken for frames.
const MAX_JOIN_FRAME: u32 = 16 * 1024;

#[derive(Debug, Clone)]
enum State {
    /// The client preface: how many of its bytes have been seen.
    Preface(usize),
    /// Waiting for a chunk that starts with frames (joined late, or after a gap): the
    /// number of chunks that did not.
    Sync(u8),
    /// A frame header: the bytes seen so far.
    Header([u8; HEADER_LEN], usize),
    /// A payload: its header, the bytes still to come, when it started, and whether it is
    /// kept (a frame that would be kept but is too large is skipped, as a gap).
    Payload {
        header: Header,
        left: u32,
        ts: u64,
        keep: bool,
    },
    Lost,
}

/// One direction's frame boundaries, kept across chunks.
#[derive(Debug, Clone)]
pub struct Reader {
    state: State,
    /// The payload of the frame being kept.
    kept: Vec<u8>,
    /// Times this direction's frames were lost and looked for again.
    pub gaps: u64,
    /// Where the current chunk's next byte, and the frame in progress, are in it (`None`:
    /// the frame began in an earlier chunk).
    at: u64,
    frame_at: Option<u64>,
}

/// The pieces of a `FRAMES` event: (offset, bytes), in the order the kernel found them.
struct Pieces<'a>(&'a [u8]);

impl<'a> Pieces<'a> {
    /// The bytes from `pos` on of the piece that starts at `frame` (a frame's header).
    fn at(&self, frame: u64, pos: u64) -> Option<&'a [u8]> {
        let mut rest = self.0;
        while rest.len() >= 6 {
            let off = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
            let len = usize::from(u16::from_le_bytes([rest[4], rest[5]]));
            let bytes = rest.get(6..6 + len)?;
            if off == frame {
                let skip = usize::try_from(pos.checked_sub(off)?).ok()?;
                return bytes.get(skip..).filter(|b| !b.is_empty());
            }
            rest = &rest[6 + len..];
        }
        None
    }
}

impl Reader {
    fn with(state: State) -> Self {
        Reader {
            state,
            kept: Vec::new(),
            gaps: 0,
            at: 0,
            frame_at: None,
        }
    }

    /// A direction that starts with the client preface (the client's side, from its start).
    pub fn after_preface() -> Self {
        Self::with(State::Preface(0))
    }

    /// A direction whose next byte starts a frame.
    pub fn at_frame() -> Self {
        Self::with(State::Header([0; HEADER_LEN], 0))
    }

    /// A direction joined after its start: frames are read from the first chunk that starts
    /// with them ([`joinable`]).
    pub fn joining() -> Self {
        Self::with(State::Sync(0))
    }

    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// The next chunk of this direction.
    pub fn feed(&mut self, chunk: Chunk<'_>, sink: &mut impl Sink) {
        if let State::Sync(tries) = self.state {
            if chunk.data.starts_with(PREFACE) {
                self.state = State::Preface(0);
            } else if !joinable(chunk.data, chunk.total) {
                if tries + 1 >= MAX_SYNC_TRIES {
                    self.lose(sink);
                } else {
                    self.state = State::Sync(tries + 1);
                }
                return;
            } else {
                self.state = State::Header([0; HEADER_LEN], 0);
            }
        }
        self.at = 0;
        // A frame that starts here can be found in the kernel's pieces; one begun in an
        // earlier chunk cannot.
        self.frame_at = matches!(self.state, State::Header(_, 0)).then_some(0);
        self.consume(chunk.data, chunk.ts_first, sink);
        // Bytes moved but not captured: a payload not kept (DATA) is counted; a frame header
        // or a kept payload must be in the pieces the kernel found there, or it is a gap.
        let pieces = Pieces(chunk.beyond);
        while self.at < chunk.total {
            match &mut self.state {
                State::Payload {
                    header,
                    left,
                    ts,
                    keep: false,
                } => {
                    let (header, ts) = (*header, *ts);
                    let n = u64::from(*left).min(chunk.total - self.at);
                    *left -= n as u32;
                    self.at += n;
                    if header.kind == kind::DATA {
                        let end = *left == 0 && header.flags & flag::END_STREAM != 0;
                        sink.data(header.stream, n, end, ts);
                    }
                    if *left == 0 {
                        self.payload_done(sink);
                    }
                }
                State::Lost | State::Sync(_) => return,
                State::Header(..) | State::Payload { .. } => {
                    let found = self.frame_at.and_then(|f| pieces.at(f, self.at));
                    let Some(bytes) = found else {
                        self.resync(sink);
                        return;
                    };
                    let n = bytes.len().min((chunk.total - self.at) as usize);
                    self.consume(&bytes[..n], chunk.ts_first, sink);
                }
                State::Preface(_) => {
                    self.resync(sink);
                    return;
                }
            }
        }
    }

    /// Bytes of this direction at `self.at` of the current chunk, read as frames.
    fn consume(&mut self, mut data: &[u8], chunk_ts: u64, sink: &mut impl Sink) {
        while !data.is_empty() {
            match &mut self.state {
                State::Lost | State::Sync(_) => return,
                State::Preface(seen) => {
                    let want = &PREFACE[*seen..];
                    let n = want.len().min(data.len());
                    if data[..n] != want[..n] {
                        self.lose(sink);
                        return;
                    }
                    *seen += n;
                    data = &data[n..];
                    self.at += n as u64;
                    if *seen == PREFACE.len() {
                        self.state = State::Header([0; HEADER_LEN], 0);
                        self.frame_at = Some(self.at);
                    }
                }
                State::Header(buf, have) => {
                    let n = (HEADER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    self.at += n as u64;
                    if *have == HEADER_LEN {
                        let header = Header::parse(buf);
                        if !header.plausible() && header.kind <= kind::CONTINUATION {
                            self.resync(sink);
                            return;
                        }
                        let keep = header.kept() && header.len as usize <= MAX_KEPT;
                        if header.kept() && !keep {
                            // Its header block is not read: the table lost track.
                            self.gaps += 1;
                            sink.gap();
                        }
                        self.kept.clear();
                        self.state = State::Payload {
                            header,
                            left: header.len,
                            ts: chunk_ts,
                            keep,
                        };
                        self.payload_done(sink);
                    }
                }
                State::Payload {
                    header,
                    left,
                    ts,
                    keep,
                } => {
                    let (header, ts, keep) = (*header, *ts, *keep);
                    let n = (*left as usize).min(data.len());
                    *left -= n as u32;
                    let done = *left == 0;
                    if keep {
                        self.kept.extend_from_slice(&data[..n]);
                    } else if header.kind == kind::DATA {
                        let end = done && header.flags & flag::END_STREAM != 0;
                        sink.data(header.stream, n as u64, end, ts);
                    }
                    data = &data[n..];
                    self.at += n as u64;
                    if done {
                        self.payload_done(sink);
                    }
                }
            }
        }
    }

    /// The bytes that follow are not seen (a gap): frames are looked for again after it.
    pub fn gap(&mut self, sink: &mut impl Sink) {
        if !matches!(self.state, State::Lost | State::Sync(_)) {
            self.resync(sink);
        }
    }

    /// The payload in progress is whole (or empty): a kept frame goes out.
    fn payload_done(&mut self, sink: &mut impl Sink) {
        let State::Payload {
            header,
            left: 0,
            ts,
            keep,
        } = self.state
        else {
            return;
        };
        if keep {
            sink.frame(header, &self.kept, ts);
            self.kept.clear();
        } else if header.kind == kind::DATA && header.len == 0 {
            sink.data(header.stream, 0, header.flags & flag::END_STREAM != 0, ts);
        }
        self.state = State::Header([0; HEADER_LEN], 0);
        self.frame_at = Some(self.at);
    }

    /// Frame boundaries were lost: what was missed is a gap, and frames are looked for again
    /// from the next chunk that starts with them.
    fn resync(&mut self, sink: &mut impl Sink) {
        self.state = State::Sync(0);
        self.kept = Vec::new();
        self.gaps += 1;
        sink.gap();
    }

    fn lose(&mut self, sink: &mut impl Sink) {
        self.state = State::Lost;
        self.kept = Vec::new();
        sink.lost();
    }
}

/// The flags RFC 9113 defines for each frame type.
fn defined_flags(kind: u8) -> u8 {
    match kind {
        kind::DATA => flag::END_STREAM | flag::PADDED,
        kind::HEADERS => flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
        kind::SETTINGS | kind::PING => flag::ACK,
        kind::PUSH_PROMISE => flag::END_HEADERS | flag::PADDED,
        kind::CONTINUATION => flag::END_HEADERS,
        _ => 0,
    }
}

/// Whether a chunk of a connection joined late (or after a gap) can be read as frames from
/// its first byte: it is whole frames of known types, each plausible on its stream, with only
/// the flags its type defines, at most 16 KiB long, a request's header block on a
/// client-initiated (odd) stream, and the last frame ends with the chunk or continues past it
/// without leaving a header block unseen. Text, TLS records and the middle of a frame almost
/// never pass; a chunk that fails is skipped and the next one tried.
pub fn joinable(data: &[u8], total: u64) -> bool {
    let mut at = 0usize;
    let mut last_kept = false;
    while at < data.len() {
        let Some(raw) = data.get(at..at + HEADER_LEN) else {
            return false;
        };
        let raw: &[u8; HEADER_LEN] = raw.try_into().expect("HEADER_LEN bytes");
        let h = Header::parse(raw);
        let reserved = raw[5] & 0x80 != 0;
        let odd_only = matches!(h.kind, kind::HEADERS | kind::PUSH_PROMISE);
        if reserved
            || !h.plausible()
            || h.len > MAX_JOIN_FRAME
            || h.flags & !defined_flags(h.kind) != 0
            || (odd_only && h.stream.is_multiple_of(2))
            || (h.kind == kind::SETTINGS && h.flags & flag::ACK != 0 && h.len != 0)
        {
            return false;
        }
        last_kept = h.kept();
        at += HEADER_LEN + h.len as usize;
    }
    let end = at as u64;
    if at == 0 || end < total {
        // Nothing, or frames beyond what was captured that cannot be read.
        return false;
    }
    // A kept frame that runs past what was captured, when more moved than was captured,
    // lost bytes.
    !(last_kept && at > data.len() && total > data.len() as u64)
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
        gaps: u32,
        lost: u32,
    }

    impl Sink for Seen {
        fn frame(&mut self, header: Header, payload: &[u8], ts: u64) {
            self.frames.push((header, payload.to_vec(), ts));
        }
        fn data(&mut self, stream: u32, len: u64, end_stream: bool, _ts: u64) {
            self.data.push((stream, len, end_stream));
        }
        fn gap(&mut self) {
            self.gaps += 1;
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
            beyond: &[],
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

    /// Pieces as the kernel sends them: (offset, bytes) each.
    fn pieces(list: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (off, bytes) in list {
            out.extend(off.to_le_bytes());
            out.extend((bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// A write of a 60 KiB DATA frame, a HEADERS frame and a 20 KiB DATA frame that ends its
    /// stream, of which 2 KiB were copied: the kernel's pieces hold the frame headers past
    /// that, and the header block, at their offsets; the frames are found whole.
    #[test]
    fn frames_past_the_copied_bytes_come_from_the_kernels_pieces() {
        let data = frame(kind::DATA, 0, 1, &vec![0; 60 * 1024]);
        let headers = frame(kind::HEADERS, flag::END_HEADERS, 3, b"block-3");
        let tail = frame(kind::DATA, flag::END_STREAM, 3, &vec![1; 20 * 1024]);
        let bytes = [data.clone(), headers.clone(), tail.clone()].concat();
        let at_headers = data.len() as u32;
        let at_tail = at_headers + headers.len() as u32;
        let found = pieces(&[(at_headers, &headers), (at_tail, &tail[..9])]);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        let c = Chunk {
            beyond: &found,
            ..chunk(&bytes[..2048], bytes.len() as u64, 5)
        };
        r.feed(c, &mut seen);
        assert_eq!(seen.gaps, 0);
        assert_eq!(seen.frames.len(), 1);
        assert_eq!(
            (seen.frames[0].0.stream, &seen.frames[0].1[..]),
            (3, &b"block-3"[..])
        );
        let counted = |s: u32| {
            seen.data
                .iter()
                .filter(|d| d.0 == s)
                .map(|d| d.1)
                .sum::<u64>()
        };
        assert_eq!((counted(1), counted(3)), (60 * 1024, 20 * 1024));
        assert!(seen.data.iter().any(|d| d.0 == 3 && d.2), "stream 3 ended");
        // A piece at an offset where no frame starts is not taken: a gap.
        let wrong = pieces(&[(at_headers + 1, &headers[1..])]);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        let c = Chunk {
            beyond: &wrong,
            ..chunk(&bytes[..2048], bytes.len() as u64, 5)
        };
        r.feed(c, &mut seen);
        assert_eq!((seen.gaps, seen.frames.len()), (1, 0));
        // A header block cut short in its piece is a gap too.
        let short = pieces(&[(at_headers, &headers[..12])]);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        let c = Chunk {
            beyond: &short,
            ..chunk(&bytes[..2048], bytes.len() as u64, 5)
        };
        r.feed(c, &mut seen);
        assert_eq!((seen.gaps, seen.frames.len()), (1, 0));
    }

    /// Bytes moved but not captured inside DATA are counted; a frame header in them is a
    /// gap, after which frames are found again in a chunk that starts with them.
    #[test]
    fn uncaptured_bytes_are_counted_or_a_gap() {
        let data = frame(kind::DATA, flag::END_STREAM, 1, &[1; 1000]);
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        r.feed(chunk(&data[..100], data.len() as u64, 1), &mut seen);
        assert_eq!(
            (seen.gaps, seen.data.iter().map(|d| d.1).sum::<u64>()),
            (0, 1000)
        );
        assert!(seen.data.last().unwrap().2, "the stream's end is known");
        let mut two = data.clone();
        two.extend(frame(kind::HEADERS, flag::END_HEADERS, 3, b"x"));
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        r.feed(chunk(&two[..100], two.len() as u64, 1), &mut seen);
        assert_eq!((seen.gaps, r.gaps), (1, 1));
        assert!(seen.frames.is_empty());
        // The next chunk starts in the middle of a frame: skipped, not read as frames.
        let middle = &frame(kind::HEADERS, flag::END_HEADERS, 5, b"abcdefgh")[3..];
        r.feed(chunk(middle, middle.len() as u64, 2), &mut seen);
        assert!(seen.frames.is_empty());
        // Then one that starts with a frame.
        let next = frame(kind::HEADERS, flag::END_HEADERS, 7, b"block-7");
        r.feed(chunk(&next, next.len() as u64, 3), &mut seen);
        assert_eq!(seen.frames.len(), 1);
        assert_eq!(
            (seen.frames[0].0.stream, &seen.frames[0].1[..]),
            (7, &b"block-7"[..])
        );
        assert!(!r.is_lost());
    }

    #[test]
    fn garbage_is_a_gap_or_lost_not_a_panic() {
        let mut r = Reader::after_preface();
        let mut seen = Seen::default();
        r.feed(chunk(b"GET / HTTP/1.1\r\n\r\n", 18, 1), &mut seen);
        assert_eq!(seen.lost, 1);
        assert!(r.is_lost());
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        // A HEADERS frame on stream 0.
        r.feed(chunk(&frame(kind::HEADERS, 0, 0, b"x"), 10, 1), &mut seen);
        assert_eq!((seen.gaps, seen.lost), (1, 0));
        // An oversized header block: not kept, a gap, and the frames after it are found.
        let mut r = Reader::at_frame();
        let mut seen = Seen::default();
        let mut big = frame(kind::HEADERS, flag::END_HEADERS, 1, &vec![7; MAX_KEPT + 1]);
        big.extend(frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        r.feed(chunk(&big, big.len() as u64, 1), &mut seen);
        assert_eq!(seen.gaps, 1);
        assert_eq!(seen.frames.len(), 1);
        assert_eq!(seen.frames[0].0.kind, kind::RST_STREAM);
        // A direction that never finds frames again is given up.
        let mut r = Reader::joining();
        let mut seen = Seen::default();
        for i in 0..MAX_SYNC_TRIES {
            assert!(!r.is_lost());
            r.feed(chunk(b"HTTP/1.1 200 OK\r\n", 17, u64::from(i)), &mut seen);
        }
        assert!(r.is_lost());
        assert_eq!(seen.lost, 1);
    }

    #[test]
    fn a_chunk_joined_late_is_read_only_if_it_starts_with_frames() {
        let headers = frame(kind::HEADERS, flag::END_HEADERS, 1, b"block");
        let data = frame(kind::DATA, flag::END_STREAM, 1, &[0; 100]);
        let ping = frame(kind::PING, 0, 0, &[0; 8]);
        let mut all = headers.clone();
        all.extend(&data);
        all.extend(&ping);
        let n = all.len() as u64;
        assert!(joinable(&all, n));
        // Not at a frame's start.
        assert!(!joinable(&all[1..], n - 1));
        assert!(!joinable(
            &all[headers.len() + 9..],
            n - headers.len() as u64 - 9
        ));
        // DATA running past the capture is fine; frames past it are not.
        assert!(joinable(&data[..50], data.len() as u64));
        assert!(!joinable(&all[..headers.len() + 50], n));
        // A header block cut by the capture window.
        assert!(!joinable(&headers[..12], n));
        // The frame goes on in the next chunk, all of this one captured.
        assert!(joinable(&data[..50], 50));
        // Text, TLS, a request on an even stream, undefined flags, a large frame, the
        // reserved bit.
        assert!(!joinable(b"GET / HTTP/1.1\r\n", 16));
        assert!(!joinable(&[0x16, 3, 1, 0, 0x50, 1, 0, 0, 0x4c], 9));
        assert!(!joinable(
            &frame(kind::HEADERS, flag::END_HEADERS, 2, b"x"),
            10
        ));
        assert!(!joinable(&frame(kind::HEADERS, 0x40, 1, b"x"), 10));
        assert!(!joinable(
            &frame(kind::DATA, 0, 1, &vec![0; 16 * 1024 + 1]),
            16_394
        ));
        let mut reserved = frame(kind::DATA, 0, 1, b"x");
        reserved[5] |= 0x80;
        assert!(!joinable(&reserved, 10));
        assert!(!joinable(&[], 0));
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
