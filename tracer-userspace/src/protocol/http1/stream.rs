//! One direction of an HTTP/1.x connection: captured chunks in, message boundaries out.
//!
//! Each chunk is what one syscall moved: `total` bytes, of which the first `data.len()` were
//! captured. Bodies are counted through the uncaptured rest; a head cut by the capture window
//! is reported as far as it could be read, and the reader then waits for the next chunk that
//! starts like a message (as it does after garbage, or on a connection already open).

use super::{
    body::{Body, Fed, Framing},
    head::{self, Parsed, RequestHead, ResponseHead},
};

/// Longest head buffered across chunks; a longer one is parsed as cut short.
pub const MAX_HEAD: usize = 16 * 1024;

/// What one syscall moved in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub data: &'a [u8],
    /// Bytes moved, at least `data.len()`.
    pub total: u64,
    /// Kernel time of the chunk's first byte (ns).
    pub ts_first: u64,
    /// Kernel time of the chunk's last byte (ns).
    pub ts_last: u64,
    /// Bytes past `data` the kernel found HTTP/2 frames in, as a `FRAMES` event's pieces
    /// (`tracer_common::kind::FRAMES`); empty for none.
    pub beyond: &'a [u8],
}

/// Which messages a direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Boundaries found in a direction's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request {
        head: RequestHead,
        ts: u64,
    },
    Response {
        head: ResponseHead,
        ts: u64,
    },
    /// The body of the last message ended (`size` is `None` when it could not be counted).
    End {
        ts: u64,
        size: Option<u64>,
    },
}

/// Receives what a [`Reader`] finds, and decides how responses are framed (which depends on
/// the request they answer).
pub trait Sink {
    fn message(&mut self, message: Message);
    fn response_framing(&mut self, head: &ResponseHead) -> Framing;
    /// A `101` switched the connection to HTTP/2 (`Upgrade: h2c`): `rest` are the bytes of
    /// the chunk after its head, and `gap` more moved uncopied. No more HTTP/1.x follows.
    fn switched_to_h2c(&mut self, _rest: &[u8], _gap: u64) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Inside a head that began at `ts`.
    Head {
        ts: u64,
    },
    Body(Body),
    /// Lost track: waiting for a chunk that starts like a message.
    Desync,
    /// No more HTTP/1.x on this connection (closed or switched protocols).
    Stopped,
}

/// Parser state of one direction.
#[derive(Debug)]
pub struct Reader {
    side: Side,
    /// Header names (lower case) whose values are kept.
    wanted: std::sync::Arc<[String]>,
    state: State,
    head: Vec<u8>,
    /// Times the reader lost track of message boundaries.
    pub desyncs: u64,
}

impl Reader {
    pub fn new(side: Side) -> Self {
        Self::capturing(side, std::sync::Arc::from(Vec::new()))
    }

    /// A reader that keeps the values of the headers named in `wanted` (lower case).
    pub fn capturing(side: Side, wanted: std::sync::Arc<[String]>) -> Self {
        Reader {
            side,
            wanted,
            state: State::Idle,
            head: Vec::new(),
            desyncs: 0,
        }
    }

    /// Whether `data` could be the start of a message of this side (a prefix of one counts,
    /// since heads may arrive a byte at a time).
    pub fn could_start(side: Side, data: &[u8]) -> bool {
        match side {
            Side::Request => {
                head::starts_like_request(data)
                    || (data.len() < 8 && head::starts_like_request_prefix(data))
            }
            Side::Response => {
                head::starts_like_response(data) || (data.len() < 7 && b"HTTP/1.".starts_with(data))
            }
        }
    }

    /// Whether the reader lost track and waits for something that looks like a message.
    pub fn is_desynced(&self) -> bool {
        self.state == State::Desync
    }

    /// No more messages: switched protocols, or given up.
    pub fn stop(&mut self) {
        self.state = State::Stopped;
        self.head = Vec::new();
    }

    fn desync(&mut self) {
        self.desyncs += 1;
        self.state = State::Desync;
        self.head.clear();
    }

    /// Feed one chunk.
    pub fn feed(&mut self, chunk: Chunk<'_>, sink: &mut impl Sink) {
        let gap = chunk.total.saturating_sub(chunk.data.len() as u64);
        if self.state == State::Desync && !chunk.data.is_empty() {
            let strict = match self.side {
                Side::Request => head::starts_like_request(chunk.data),
                Side::Response => head::starts_like_response(chunk.data),
            };
            if strict {
                self.state = State::Idle;
            }
        }
        let mut data = chunk.data;
        loop {
            match &mut self.state {
                State::Stopped | State::Desync => return,
                State::Idle => {
                    while let [b'\r' | b'\n', rest @ ..] = data {
                        data = rest;
                    }
                    if data.is_empty() {
                        break;
                    }
                    if !Self::could_start(self.side, data) {
                        self.desync();
                        return;
                    }
                    self.state = State::Head { ts: chunk.ts_first };
                }
                State::Head { ts } => {
                    let ts = *ts;
                    let buffered = self.head.len();
                    let take = data.len().min(MAX_HEAD.saturating_sub(buffered));
                    let final_bytes = gap > 0 || take < data.len() || buffered + take >= MAX_HEAD;
                    // Parse in place when nothing is buffered: the usual whole-head chunk.
                    let parsed = if buffered == 0 {
                        self.parse_head(&data[..take], final_bytes)
                    } else {
                        self.head.extend_from_slice(&data[..take]);
                        let buf = std::mem::take(&mut self.head);
                        let parsed = self.parse_head(&buf, final_bytes);
                        self.head = buf;
                        parsed
                    };
                    match parsed {
                        HeadParse::Partial if !final_bytes => {
                            if buffered == 0 {
                                self.head.extend_from_slice(&data[..take]);
                            }
                            return;
                        }
                        HeadParse::Partial | HeadParse::Invalid => {
                            self.desync();
                            return;
                        }
                        HeadParse::Request(head, len) => {
                            let truncated = head.truncated;
                            let framing = request_framing(&head);
                            sink.message(Message::Request { head, ts });
                            data = &data[(len - buffered).min(data.len())..];
                            self.head.clear();
                            if truncated {
                                // Where this head ends is unknown.
                                self.desync();
                                return;
                            }
                            self.begin_body(framing, chunk.ts_last, sink);
                        }
                        HeadParse::Response(head, len) => {
                            let framing = sink.response_framing(&head);
                            let h2c = head.status == 101 && head.upgrade_h2c;
                            sink.message(Message::Response { head, ts });
                            data = &data[(len - buffered).min(data.len())..];
                            self.head.clear();
                            self.begin_body(framing, chunk.ts_last, sink);
                            if h2c {
                                self.stop();
                                sink.switched_to_h2c(data, gap);
                                return;
                            }
                        }
                    }
                }
                State::Body(body) => match body.feed(data) {
                    Fed::More => break,
                    Fed::Done(n) => {
                        let size = body.size;
                        data = &data[n..];
                        self.state = State::Idle;
                        sink.message(Message::End {
                            ts: chunk.ts_last,
                            size: Some(size),
                        });
                    }
                    Fed::Lost => {
                        self.desync();
                        return;
                    }
                },
            }
        }
        if gap == 0 {
            return;
        }
        match &mut self.state {
            State::Body(body) => match body.skip(gap) {
                Fed::More => {}
                Fed::Done(_) => {
                    let size = body.size;
                    self.state = State::Idle;
                    sink.message(Message::End {
                        ts: chunk.ts_last,
                        size: Some(size),
                    });
                }
                Fed::Lost => {
                    // A length-delimited body ended inside the gap: its size is known, what
                    // follows it is not. Elsewhere the end itself is unknown.
                    if let Some(size) = body.ended_in_gap() {
                        sink.message(Message::End {
                            ts: chunk.ts_last,
                            size: Some(size),
                        });
                    }
                    self.desync();
                }
            },
            State::Idle => self.desync(),
            _ => {}
        }
    }

    /// The connection closed: a body delimited by the close ends here.
    pub fn close(&mut self, ts: u64, sink: &mut impl Sink) {
        if let State::Body(body) = &self.state
            && body.framing() == Framing::UntilClose
        {
            sink.message(Message::End {
                ts,
                size: Some(body.size),
            });
        }
        self.stop();
    }

    fn begin_body(&mut self, framing: Framing, ts: u64, sink: &mut impl Sink) {
        let body = Body::new(framing);
        if body.is_done() {
            self.state = State::Idle;
            sink.message(Message::End { ts, size: Some(0) });
        } else {
            self.state = State::Body(body);
        }
    }

    fn parse_head(&self, buf: &[u8], final_bytes: bool) -> HeadParse {
        match self.side {
            Side::Request => match head::parse_request_capturing(buf, final_bytes, &self.wanted) {
                Parsed::Complete { head, len } => HeadParse::Request(head, len),
                Parsed::Partial => HeadParse::Partial,
                Parsed::Invalid => HeadParse::Invalid,
            },
            Side::Response => match head::parse_response_capturing(buf, &self.wanted) {
                Parsed::Complete { head, len } => HeadParse::Response(head, len),
                Parsed::Partial => HeadParse::Partial,
                Parsed::Invalid => HeadParse::Invalid,
            },
        }
    }
}

enum HeadParse {
    Request(RequestHead, usize),
    Response(ResponseHead, usize),
    Partial,
    Invalid,
}

/// How a request's body is delimited: requests without a length have none.
pub fn request_framing(head: &RequestHead) -> Framing {
    if head.chunked {
        Framing::Chunked
    } else {
        match head.content_length {
            Some(n) => Framing::Length(n),
            None => Framing::Empty,
        }
    }
}

/// How a response's body is delimited, given the method of the request it answers.
pub fn response_framing(head: &ResponseHead, request_method: Option<&str>) -> Framing {
    let no_body = matches!(head.status, 100..=199 | 204 | 304)
        || request_method == Some("HEAD")
        || (request_method == Some("CONNECT") && (200..300).contains(&head.status));
    if no_body {
        Framing::Empty
    } else if head.chunked {
        Framing::Chunked
    } else if let Some(n) = head.content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        messages: Vec<Message>,
        method: Option<String>,
    }

    impl Sink for Collect {
        fn message(&mut self, message: Message) {
            self.messages.push(message);
        }
        fn response_framing(&mut self, head: &ResponseHead) -> Framing {
            response_framing(head, self.method.as_deref())
        }
    }

    fn chunk(data: &[u8], ts: u64) -> Chunk<'_> {
        Chunk {
            data,
            total: data.len() as u64,
            ts_first: ts,
            ts_last: ts + 1,
            beyond: &[],
        }
    }

    fn kinds(m: &[Message]) -> String {
        m.iter()
            .map(|m| match m {
                Message::Request { head, .. } => format!("req:{}", head.target),
                Message::Response { head, .. } => format!("resp:{}", head.status),
                Message::End { size, .. } => format!("end:{}", size.map_or(-1, |s| s as i64)),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let mut r = Reader::new(Side::Request);
        let mut c = Collect::default();
        let raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n";
        r.feed(chunk(raw, 10), &mut c);
        assert_eq!(kinds(&c.messages), "req:/a end:0 req:/b end:3 req:/c end:0");
    }

    #[test]
    fn heads_one_byte_at_a_time() {
        let mut r = Reader::new(Side::Request);
        let mut c = Collect::default();
        let raw = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
        for (i, b) in raw.iter().enumerate() {
            r.feed(chunk(std::slice::from_ref(b), i as u64 * 10), &mut c);
        }
        assert_eq!(kinds(&c.messages), "req:/slow end:0");
        assert!(matches!(c.messages[0], Message::Request { ts: 0, .. }));
        assert_eq!(
            c.messages[1],
            Message::End {
                ts: (raw.len() as u64 - 1) * 10 + 1,
                size: Some(0)
            }
        );
    }

    #[test]
    fn large_body_counted_through_uncaptured_bytes() {
        let mut r = Reader::new(Side::Response);
        let mut c = Collect::default();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        let mut data = head.to_vec();
        data.extend_from_slice(&[b'x'; 100]);
        r.feed(
            Chunk {
                data: &data,
                total: head.len() as u64 + 600_000,
                ts_first: 1,
                ts_last: 2,
                beyond: &[],
            },
            &mut c,
        );
        r.feed(
            Chunk {
                data: &[b'x'; 50],
                total: 400_000,
                ts_first: 3,
                ts_last: 4,
                beyond: &[],
            },
            &mut c,
        );
        assert_eq!(kinds(&c.messages), "resp:200 end:1000000");
        assert_eq!(
            c.messages[1],
            Message::End {
                ts: 4,
                size: Some(1_000_000)
            }
        );
    }

    #[test]
    fn head_response_has_no_body_and_close_delimited_ends_at_close() {
        let mut r = Reader::new(Side::Response);
        let mut c = Collect {
            method: Some("HEAD".into()),
            ..Default::default()
        };
        r.feed(
            chunk(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 1),
            &mut c,
        );
        assert_eq!(kinds(&c.messages), "resp:200 end:0");
        c.method = Some("GET".into());
        r.feed(chunk(b"HTTP/1.0 200 OK\r\n\r\nhello", 5), &mut c);
        r.feed(chunk(b" world", 7), &mut c);
        r.close(9, &mut c);
        assert_eq!(kinds(&c.messages), "resp:200 end:0 resp:200 end:11");
    }

    #[test]
    fn garbage_then_resync_at_next_request() {
        let mut r = Reader::new(Side::Request);
        let mut c = Collect::default();
        r.feed(chunk(b"\x16\x03\x01binary", 1), &mut c);
        r.feed(chunk(b"more binary", 2), &mut c);
        r.feed(chunk(b"GET /ok HTTP/1.1\r\n\r\n", 3), &mut c);
        assert_eq!(kinds(&c.messages), "req:/ok end:0");
        assert_eq!(r.desyncs, 1);
    }

    #[test]
    fn head_cut_by_capture_window_is_reported_then_resynced() {
        let mut r = Reader::new(Side::Request);
        let mut c = Collect::default();
        let data = b"GET /big HTTP/1.1\r\nCookie: aaaaaaaaaaaa";
        r.feed(
            Chunk {
                data,
                total: 9000,
                ts_first: 1,
                ts_last: 2,
                beyond: &[],
            },
            &mut c,
        );
        r.feed(chunk(b"GET /next HTTP/1.1\r\n\r\n", 3), &mut c);
        assert_eq!(kinds(&c.messages), "req:/big req:/next end:0");
        let Message::Request { head, .. } = &c.messages[0] else {
            unreachable!()
        };
        assert!(head.truncated);
    }

    #[test]
    fn chunked_response_ends_at_terminal_chunk() {
        let mut r = Reader::new(Side::Response);
        let mut c = Collect::default();
        r.feed(
            chunk(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                1,
            ),
            &mut c,
        );
        assert_eq!(kinds(&c.messages), "resp:200");
        r.feed(chunk(b"0\r\n\r\n", 2), &mut c);
        assert_eq!(kinds(&c.messages), "resp:200 end:5");
    }
}
