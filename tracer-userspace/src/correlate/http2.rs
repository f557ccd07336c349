//! HTTP/2 sessions: one connection's streams, each request paired with its response by stream
//! id. An exchange ends at the response's END_STREAM (after its trailers), so a streaming call
//! lasts as long as its stream; RST_STREAM and GOAWAY end streams as errors, and no status is
//! invented for them. Header blocks are decoded with one HPACK decoder per direction; what
//! cannot be decoded (the agent joined late) is reported as such.

use std::collections::BTreeMap;

use crate::protocol::{
    Request, Version,
    http1::stream::Chunk,
    http2::{
        frame::{self, Header, Reader, Sink, flag, kind},
        hpack::{Decoder, Field},
    },
};

use super::{
    exchange::{self, Env, Finished, Hints, Losses, Pending, Start},
    span::{Grpc, Kind, Response},
};

/// Streams followed at once on one connection; past that the oldest is dropped and counted.
const MAX_STREAMS: usize = 1024;
/// The most a header block may grow across CONTINUATION frames.
const MAX_BLOCK: usize = 256 * 1024;

/// A header block being gathered: its stream, fragments so far, and its HEADERS frame's flags.
#[derive(Debug)]
struct Block {
    stream: u32,
    bytes: Vec<u8>,
    end_stream: bool,
    /// A PUSH_PROMISE's block: it fills the table, the promised request is not followed.
    promise: bool,
    ts: u64,
}

/// One direction: its frames, its header compression, a block in progress.
#[derive(Debug)]
struct Direction {
    frames: Reader,
    hpack: Decoder,
    block: Option<Block>,
}

impl Direction {
    fn new(reader: Reader, from_start: bool) -> Self {
        Direction {
            frames: reader,
            hpack: Decoder::new(from_start),
            block: None,
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// The request's exchange, once its headers were seen.
    pending: Option<Pending>,
    request_ended: bool,
    request_bytes: u64,
    /// The final response head's status, once seen (None: not yet, or not decodable).
    status: Option<u16>,
    answered: bool,
    /// The response's status could not be decoded.
    status_undecoded: bool,
    response_bytes: u64,
    grpc: Option<Grpc>,
    response_headers: Vec<(String, String)>,
}

/// What the frames of one chunk are turned into.
struct Feed<'a, 'e> {
    s: &'a mut State,
    dir: &'a mut Direction,
    env: &'a mut Env<'e>,
    hints: &'a mut Hints,
    kind: Kind,
    tid: u32,
    /// Whether this direction carries requests.
    requests: bool,
    capture: &'a [String],
}

/// What outlives one chunk.
#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<u32, Stream>,
    finished: Vec<Finished>,
    losses: Losses,
    started: u64,
    /// A direction lost its frames: nothing more is learnt from this connection.
    lost: bool,
    /// Streams above this were refused by GOAWAY.
    goaway: Option<u32>,
    /// SETTINGS_HEADER_TABLE_SIZE a direction's sender announced (true: the requests'
    /// sender): it bounds the other direction's table.
    table_limit: Option<(bool, u32)>,
}

impl Sink for Feed<'_, '_> {
    fn frame(&mut self, header: Header, payload: &[u8], ts: u64) {
        match header.kind {
            kind::HEADERS => {
                let Some(fragment) = frame::headers_fragment(&header, payload) else {
                    self.lost();
                    return;
                };
                let block = Block {
                    stream: header.stream,
                    bytes: fragment.to_vec(),
                    end_stream: header.flags & flag::END_STREAM != 0,
                    promise: false,
                    ts,
                };
                if header.flags & flag::END_HEADERS != 0 {
                    self.block(block);
                } else {
                    self.dir.block = Some(block);
                }
            }
            kind::CONTINUATION => {
                let Some(mut block) = self.dir.block.take() else {
                    return self.lost();
                };
                if block.stream != header.stream || block.bytes.len() + payload.len() > MAX_BLOCK {
                    return self.lost();
                }
                block.bytes.extend_from_slice(payload);
                if header.flags & flag::END_HEADERS != 0 {
                    self.block(block);
                } else {
                    self.dir.block = Some(block);
                }
            }
            kind::PUSH_PROMISE => {
                let Some(fragment) = frame::headers_fragment(&header, payload) else {
                    self.lost();
                    return;
                };
                let block = Block {
                    stream: header.stream,
                    bytes: fragment.to_vec(),
                    end_stream: false,
                    promise: true,
                    ts,
                };
                if header.flags & flag::END_HEADERS != 0 {
                    self.block(block);
                } else {
                    self.dir.block = Some(block);
                }
            }
            kind::RST_STREAM => {
                let code = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.reset(header.stream, code, ts);
            }
            kind::GOAWAY => {
                let last = payload.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                });
                self.s.goaway = Some(last);
                let refused: Vec<u32> = self
                    .s
                    .streams
                    .range(last + 1..)
                    .map(|(id, _)| *id)
                    .collect();
                for id in refused {
                    self.reset(id, REFUSED_STREAM, ts);
                }
            }
            kind::SETTINGS if header.flags & flag::ACK == 0 => {
                // SETTINGS_HEADER_TABLE_SIZE bounds the table the other direction's encoder
                // uses; it is that direction's decoder that needs it, set by the session.
                for setting in payload.chunks_exact(6) {
                    if setting[..2] == [0, 1] {
                        let size =
                            u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        self.s.table_limit = Some((self.requests, size));
                    }
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, stream: u32, len: u64, end_stream: bool, ts: u64) {
        let Some(st) = self.s.streams.get_mut(&stream) else {
            return;
        };
        if self.requests {
            st.request_bytes += len;
            if end_stream {
                self.request_end(stream, ts);
            }
        } else {
            st.response_bytes += len;
            if end_stream {
                self.response_end(stream, ts);
            }
        }
    }

    fn lost(&mut self) {
        self.s.lost = true;
        self.dir.hpack.lost_track();
        self.dir.block = None;
    }
}

/// RFC 9113 7: the stream was refused (GOAWAY named a lower last stream).
const REFUSED_STREAM: u32 = 0x7;

impl Feed<'_, '_> {
    /// A whole header block of `block.stream`.
    fn block(&mut self, block: Block) {
        let fields = match self.dir.hpack.decode(&block.bytes) {
            Ok(b) => b.fields,
            // The table is lost; this block's fields are not known.
            Err(_) => Vec::new(),
        };
        if block.promise {
            return;
        }
        if self.requests {
            self.request_headers(block, &fields);
        } else {
            self.response_headers(block, &fields);
        }
    }

    fn request_headers(&mut self, block: Block, fields: &[Field]) {
        let id = block.stream;
        if let Some(st) = self.s.streams.get(&id)
            && st.pending.is_some()
        {
            // Trailers of the request.
            if block.end_stream {
                self.request_end(id, block.ts);
            }
            return;
        }
        let mut request = Request {
            version: Version::Http2,
            ..Request::default()
        };
        let mut content_type = None;
        for (name, value) in named(fields) {
            if let (Some(n), Some(v)) = (name, value.as_ref())
                && !n.starts_with(':')
                && self.capture.iter().any(|c| c == n)
            {
                request.captured.push((n.to_string(), v.clone()));
            }
            match name {
                Some(":method") => request.method = value.unwrap_or_default(),
                Some(":path") => request.target = value.unwrap_or_default(),
                Some(":authority") => request.host = value,
                Some("user-agent") => request.user_agent = value,
                Some("traceparent") => request.traceparent = value,
                Some("tracestate") => request.tracestate = value,
                Some("content-type") => content_type = value,
                _ => {}
            }
        }
        for pseudo in [":method", ":path"] {
            let known = named(fields).any(|(n, v)| n == Some(pseudo) && v.is_some());
            if !known {
                request.undecoded.push(pseudo);
            }
        }
        request.grpc = content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"));
        if self.s.streams.len() >= MAX_STREAMS
            && let Some((&oldest, _)) = self.s.streams.iter().next()
        {
            self.s.streams.remove(&oldest);
            self.s.losses.pending_overflow += 1;
        }
        let at = Start {
            kind: self.kind,
            tid: self.tid,
            ts: block.ts,
            first: self.s.started == 0,
        };
        self.s.started += 1;
        let pending = exchange::begin(self.env, at, request, self.hints, None);
        let st = self.s.streams.entry(id).or_default();
        st.pending = Some(pending);
        if block.end_stream {
            self.request_end(id, block.ts);
        }
    }

    fn response_headers(&mut self, block: Block, fields: &[Field]) {
        let id = block.stream;
        let Some(st) = self.s.streams.get_mut(&id) else {
            if block.end_stream {
                self.s.losses.unmatched_responses += 1;
            }
            return;
        };
        let Some(pending) = st.pending.as_ref() else {
            return;
        };
        let status = named(fields).find(|(n, _)| *n == Some(":status"));
        if !st.answered {
            match status {
                Some((_, Some(v))) => match v.parse::<u16>() {
                    // Informational: the final head follows.
                    Ok(code) if (100..200).contains(&code) => return,
                    Ok(code) => st.status = Some(code),
                    Err(_) => st.status_undecoded = true,
                },
                // A head whose status was in the table before the agent started.
                Some((_, None)) => st.status_undecoded = true,
                // Not a response head at all (no :status): nothing known of it.
                None => st.status_undecoded = true,
            }
            st.answered = true;
            exchange::answered(self.env, self.kind, pending, self.tid, block.ts);
            for (n, v) in named(fields) {
                if let (Some(n), Some(v)) = (n, v)
                    && self.capture.iter().any(|c| c == n)
                {
                    st.response_headers.push((n.to_string(), v));
                }
            }
        }
        // gRPC's status: in the trailers, or in a trailers-only response's one head.
        if pending.request.grpc {
            for (n, v) in named(fields) {
                match n {
                    Some("grpc-status") => {
                        let g = st.grpc.get_or_insert_with(Grpc::default);
                        g.status = v.as_deref().and_then(|v| v.parse().ok());
                        g.status_undecoded = v.is_none();
                    }
                    Some("grpc-message") => {
                        st.grpc.get_or_insert_with(Grpc::default).message = v;
                    }
                    _ => {}
                }
            }
        }
        if block.end_stream {
            self.response_end(id, block.ts);
        }
    }

    fn request_end(&mut self, id: u32, ts: u64) {
        let Some(st) = self.s.streams.get_mut(&id) else {
            return;
        };
        if st.request_ended {
            return;
        }
        st.request_ended = true;
        if let Some(p) = st.pending.as_mut() {
            p.request_body_size = Some(st.request_bytes);
            exchange::request_read(self.env, self.kind, p, self.tid, ts);
        }
    }

    fn response_end(&mut self, id: u32, ts: u64) {
        self.finish(id, None, ts);
    }

    /// Stream `id` was reset with `code` (or refused): it ends as an error, with what its
    /// response said so far.
    fn reset(&mut self, id: u32, code: u32, ts: u64) {
        self.finish(id, Some(code), ts);
    }

    /// Stream `id` is over: its response ended, or it was reset with `reset`.
    fn finish(&mut self, id: u32, reset: Option<u32>, ts: u64) {
        let Some(st) = self.s.streams.remove(&id) else {
            return;
        };
        let Some(pending) = st.pending else {
            return;
        };
        if !st.answered {
            exchange::answered(self.env, self.kind, &pending, self.tid, ts);
        }
        self.s.finished.push(Finished {
            kind: self.kind,
            request: pending,
            response: Some(Response {
                status: st.status,
                body_size: Some(st.response_bytes),
                headers: st.response_headers,
                grpc: st.grpc,
                reset,
            }),
            end_ns: ts,
        });
    }
}

/// Fields with their names as text (`None`: not decodable or not UTF-8).
fn named(fields: &[Field]) -> impl Iterator<Item = (Option<&str>, Option<String>)> {
    fields.iter().map(|f| {
        (
            f.name.as_deref().and_then(|n| std::str::from_utf8(n).ok()),
            f.value
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        )
    })
}

/// HTTP/2 state of one connection's byte stream.
#[derive(Debug)]
pub struct Http2 {
    /// SERVER when requests arrive on this connection, CLIENT when they leave.
    role: Kind,
    /// Client to server (requests), server to client (responses).
    requests: Direction,
    responses: Direction,
    state: State,
    capture: std::sync::Arc<[String]>,
}

impl Http2 {
    /// A connection seen from its start: the client's preface first (requests), the server's
    /// frames (responses).
    pub fn from_preface(role: Kind, capture: &std::sync::Arc<[String]>) -> Self {
        Http2 {
            role,
            requests: Direction::new(Reader::after_preface(), true),
            responses: Direction::new(Reader::at_frame(), true),
            state: State::default(),
            capture: capture.clone(),
        }
    }

    pub fn role(&self) -> Kind {
        self.role
    }

    /// Bytes moved on the connection. `ingress` is true for bytes into the traced process.
    pub fn data(
        &mut self,
        ingress: bool,
        chunk: Chunk<'_>,
        tid: u32,
        env: &mut Env<'_>,
        hints: &mut Hints,
    ) {
        let requests = ingress == (self.role == Kind::Server);
        let dir = if requests {
            &mut self.requests
        } else {
            &mut self.responses
        };
        let mut frames = std::mem::replace(&mut dir.frames, Reader::at_frame());
        let mut feed = Feed {
            s: &mut self.state,
            dir,
            env,
            hints,
            kind: self.role,
            tid,
            requests,
            capture: &self.capture,
        };
        frames.feed(chunk, &mut feed);
        feed.dir.frames = frames;
        if let Some((from_requests, size)) = self.state.table_limit.take() {
            // The sender's decoder bounds what the other direction's encoder uses.
            let other = if from_requests {
                &mut self.responses
            } else {
                &mut self.requests
            };
            other.hpack.set_limit(size);
        }
    }

    /// Whether nothing more can be learnt: a direction lost its frames.
    pub fn is_done(&self) -> bool {
        self.state.lost
    }

    /// The connection ended at `ts` (its last bytes seen at `last`): streams still open end
    /// without a response.
    pub fn close(&mut self, _ts: u64, last: u64, env: &mut Env<'_>) {
        let streams = std::mem::take(&mut self.state.streams);
        for (_, st) in streams {
            if let Some(p) = st.pending {
                self.state
                    .finished
                    .push(exchange::unanswered(env, self.role, p, last));
            }
        }
    }

    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.state.finished)
    }

    pub fn open_requests(&self) -> u64 {
        self.state
            .streams
            .values()
            .filter(|s| s.pending.as_ref().is_some_and(|p| !p.suppressed))
            .count() as u64
    }

    pub fn take_losses(&mut self) -> Losses {
        std::mem::take(&mut self.state.losses)
    }

    /// Times a direction lost its frames.
    pub fn desyncs(&self) -> u64 {
        u64::from(self.requests.frames.is_lost()) + u64::from(self.responses.frames.is_lost())
    }
}
