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

impl Stream {
    /// The response as far as it was seen: `reset` with this code, or `ended` (its last byte
    /// seen), or neither (the connection closed first).
    fn response(self, grpc: bool, reset: Option<u32>, ended: bool) -> Response {
        let mut status = self.grpc;
        if self.response_gap && grpc && status.as_ref().is_none_or(|g| g.status.is_none()) {
            // The trailers may have gone by unread.
            status.get_or_insert_with(Grpc::default).status_undecoded = true;
        }
        Response {
            status: self.status,
            body_size: (ended && !self.response_gap).then_some(self.response_bytes),
            headers: self.response_headers,
            grpc: status,
            reset,
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
    /// Bytes of the request (or the response) went by unread while the stream was open:
    /// what they held (a body's size, a status, trailers) is not known.
    request_gap: bool,
    response_gap: bool,
    /// The response is gRPC's (its content type or fields say so).
    grpc_response: bool,
}

/// What the frames of one chunk are turned into.
struct Feed<'a, 'e> {
    s: &'a mut State,
    dir: &'a mut Direction,
    env: &'a mut Env<'e>,
    hints: &'a mut Hints,
    tid: u32,
    /// Whether this direction's bytes flow into the traced process.
    ingress: bool,
    capture: &'a [String],
}

/// What outlives one chunk.
#[derive(Debug, Default)]
struct State {
    /// SERVER when requests arrive on this connection, CLIENT when they leave; on a
    /// connection joined late, unknown until a header block says which way requests go.
    role: Option<Kind>,
    streams: BTreeMap<u32, Stream>,
    losses: Losses,
    started: u64,
    /// A direction lost its frames for good: nothing more is learnt from this connection.
    lost: bool,
    /// Times a direction's bytes went by unread.
    gaps: u64,
    /// Streams above this were refused by GOAWAY.
    goaway: Option<u32>,
    /// SETTINGS_HEADER_TABLE_SIZE a direction's sender announced (true: the sender of the
    /// bytes into the traced process): it bounds the other direction's table.
    table_limit: Option<(bool, u32)>,
}

impl Sink for Feed<'_, '_> {
    fn frame(&mut self, header: Header, payload: &[u8], ts: u64) {
        match header.kind {
            kind::HEADERS => {
                let Some(fragment) = frame::headers_fragment(&header, payload) else {
                    self.gap();
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
                    // The start of its block went by unread (joined late, or a gap).
                    return self.gap();
                };
                if block.stream != header.stream || block.bytes.len() + payload.len() > MAX_BLOCK {
                    return self.gap();
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
                    self.gap();
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
                        self.s.table_limit = Some((self.ingress, size));
                    }
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, stream: u32, len: u64, end_stream: bool, ts: u64) {
        let Some(requests) = self.requests() else {
            return;
        };
        let Some(st) = self.s.streams.get_mut(&stream) else {
            return;
        };
        if requests {
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

    fn gap(&mut self) {
        self.s.gaps += 1;
        self.dir.hpack.lost_track();
        self.dir.block = None;
        let requests = self.requests();
        for st in self.s.streams.values_mut() {
            match requests {
                Some(true) => st.request_gap = true,
                Some(false) => st.response_gap = true,
                None => {}
            }
        }
    }

    fn lost(&mut self) {
        self.gap();
        self.s.lost = true;
    }
}

/// RFC 9113 7: the stream was refused (GOAWAY named a lower last stream).
const REFUSED_STREAM: u32 = 0x7;

impl Feed<'_, '_> {
    /// Whether this direction carries requests, once the role is known.
    fn requests(&self) -> Option<bool> {
        self.s.role.map(|r| self.ingress == (r == Kind::Server))
    }

    /// SERVER or CLIENT: known whenever a stream exists.
    fn kind(&self) -> Kind {
        self.s.role.unwrap_or(Kind::Server)
    }

    /// A whole header block of `block.stream`.
    fn block(&mut self, block: Block) {
        let (fields, whole) = match self.dir.hpack.decode(&block.bytes) {
            Ok(b) => {
                let whole = b.fields.iter().all(|f| f.name.is_some());
                (b.fields, whole)
            }
            // The table is lost; this block's fields are not known.
            Err(_) => (Vec::new(), false),
        };
        if block.promise {
            return;
        }
        if self.s.role.is_none() {
            // Joined late: a request's pseudo-headers, or a response's status, say which
            // way requests go. Until one does, nothing is followed.
            let request = named(&fields)
                .any(|(n, _)| matches!(n, Some(":method" | ":path" | ":scheme" | ":authority")));
            let response = named(&fields).any(|(n, _)| n == Some(":status"));
            self.s.role = match (request, response) {
                (true, false) if self.ingress => Some(Kind::Server),
                (true, false) => Some(Kind::Client),
                (false, true) if self.ingress => Some(Kind::Client),
                (false, true) => Some(Kind::Server),
                _ => return,
            };
        }
        if self.requests() == Some(true) {
            self.request_headers(block, &fields);
        } else {
            self.response_headers(block, &fields, whole);
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
            stream: Some(id),
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
                Some(":method") => request.method = value.unwrap_or_default().into(),
                Some(":path") => request.target = value.unwrap_or_default().into(),
                Some(":authority") => request.host = value.map(Into::into),
                Some("user-agent") => request.user_agent = value.map(Into::into),
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
            kind: self.kind(),
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

    /// A response head or trailers; `whole` when every field's name was decoded.
    fn response_headers(&mut self, block: Block, fields: &[Field], whole: bool) {
        let id = block.stream;
        let kind = self.kind();
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
            exchange::answered(self.env, kind, pending, self.tid, block.ts);
            for (n, v) in named(fields) {
                if let (Some(n), Some(v)) = (n, v)
                    && self.capture.iter().any(|c| c == n)
                {
                    st.response_headers.push((n.to_string(), v));
                }
            }
        }
        // gRPC's status: in the trailers, or in a trailers-only response's one head. Its
        // fields, or the response's content type, also say a call is gRPC when the request's
        // content type could not be decoded (joined late).
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
                Some("content-type")
                    if v.as_deref()
                        .is_some_and(|c| c.starts_with("application/grpc")) =>
                {
                    st.grpc_response = true;
                }
                _ => {}
            }
        }
        st.grpc_response |= st.grpc.is_some();
        if pending.request.grpc || st.grpc_response {
            let known = st.grpc.as_ref().is_some_and(|g| g.status.is_some());
            if block.end_stream && !whole && !known {
                // A field whose name is unknown may be the status.
                st.grpc.get_or_insert_with(Grpc::default).status_undecoded = true;
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
        let kind = self.s.role.unwrap_or(Kind::Server);
        if let Some(p) = st.pending.as_mut() {
            p.request_body_size = (!st.request_gap).then_some(st.request_bytes);
            exchange::request_read(self.env, kind, p, self.tid, ts);
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
        let kind = self.kind();
        let Some(mut st) = self.s.streams.remove(&id) else {
            return;
        };
        let Some(mut pending) = st.pending.take() else {
            return;
        };
        if !st.answered {
            exchange::answered(self.env, kind, &pending, self.tid, ts);
        }
        pending.request.grpc |= st.grpc_response;
        let grpc = pending.request.grpc;
        self.env.finished.push(Finished {
            kind,
            request: pending,
            response: Some(st.response(grpc, reset, true)),
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
    /// The bytes into the traced process, and out of it.
    ingress: Direction,
    egress: Direction,
    state: State,
    capture: std::sync::Arc<[String]>,
}

impl Http2 {
    /// A connection seen from its start: the client's preface first (requests), the server's
    /// frames (responses).
    pub fn from_preface(role: Kind, capture: &std::sync::Arc<[String]>) -> Self {
        let client = Direction::new(Reader::after_preface(), true);
        let server = Direction::new(Reader::at_frame(), true);
        let (ingress, egress) = match role {
            Kind::Server => (client, server),
            Kind::Client => (server, client),
        };
        Http2 {
            ingress,
            egress,
            state: State {
                role: Some(role),
                ..State::default()
            },
            capture: capture.clone(),
        }
    }

    /// A connection joined after its start, or whose first bytes were not seen: its role, if
    /// not known (`role`), is learnt from the first header block that shows it. Each
    /// direction's frames are read from its first chunk that starts with them (or with the
    /// client preface); header blocks decode what the static table and the entries inserted
    /// since allow.
    pub fn joined(role: Option<Kind>, capture: &std::sync::Arc<[String]>) -> Self {
        Http2 {
            ingress: Direction::new(Reader::joining(), false),
            egress: Direction::new(Reader::joining(), false),
            state: State {
                role,
                ..State::default()
            },
            capture: capture.clone(),
        }
    }

    /// A connection switched from HTTP/1.1 by `Upgrade: h2c` (RFC 7540 3.2): the upgrade
    /// request goes on as stream 1, whose response comes in HTTP/2 frames; the client's
    /// preface follows the `101`.
    pub fn upgraded(role: Kind, capture: &std::sync::Arc<[String]>, mut request: Pending) -> Self {
        let mut h2 = Self::from_preface(role, capture);
        request.request.version = Version::Http2;
        request.request.stream = Some(1);
        h2.state.streams.insert(
            1,
            Stream {
                pending: Some(request),
                request_ended: true,
                ..Stream::default()
            },
        );
        h2.state.started = 1;
        h2
    }

    /// SERVER or CLIENT, once known.
    pub fn role(&self) -> Option<Kind> {
        self.state.role
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
        let dir = if ingress {
            &mut self.ingress
        } else {
            &mut self.egress
        };
        let mut frames = std::mem::replace(&mut dir.frames, Reader::at_frame());
        let mut feed = Feed {
            s: &mut self.state,
            dir,
            env,
            hints,
            tid,
            ingress,
            capture: &self.capture,
        };
        frames.feed(chunk, &mut feed);
        feed.dir.frames = frames;
        if let Some((from_ingress, size)) = self.state.table_limit.take() {
            // The sender's decoder bounds what the other direction's encoder uses.
            let other = if from_ingress {
                &mut self.egress
            } else {
                &mut self.ingress
            };
            other.hpack.set_limit(size);
        }
    }

    /// Whether nothing more can be learnt: a direction lost its frames for good.
    pub fn is_done(&self) -> bool {
        self.state.lost
    }

    /// The connection ended at `ts` (its last bytes seen at `last`): streams still open end
    /// without a response.
    pub fn close(&mut self, _ts: u64, last: u64, env: &mut Env<'_>) {
        let streams = std::mem::take(&mut self.state.streams);
        let kind = self.state.role.unwrap_or(Kind::Server);
        for (_, mut st) in streams {
            let Some(mut p) = st.pending.take() else {
                continue;
            };
            p.request.grpc |= st.grpc_response;
            let finished = if st.answered {
                // Its head was seen, its end not: what the head said, no size.
                let grpc = p.request.grpc;
                Finished {
                    kind,
                    request: p,
                    response: Some(st.response(grpc, None, false)),
                    end_ns: last,
                }
            } else {
                exchange::unanswered(env, kind, p, last)
            };
            env.finished.push(finished);
        }
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

    /// Times a direction's frames were lost (and looked for again).
    pub fn desyncs(&self) -> u64 {
        self.ingress.frames.gaps + self.egress.frames.gaps
    }
}
