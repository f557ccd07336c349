//! One byte stream of one connection of one process (its socket's bytes, or a TLS library's
//! plaintext of it: [`crate::conn::Source`]), the protocol it carries, and the exchanges found
//! in it. This is where protocols plug in: the pipeline feeds bytes and takes finished
//! exchanges ([`super::exchange`]) without knowing which protocol found them.

use std::sync::Arc;

use crate::protocol::{
    http1::stream::Chunk,
    http2::frame::{self, PREFACE},
    starts_tls,
};

use super::{
    exchange::{Env, Hints, Losses},
    http1::Http1,
    http2::Http2,
    span::Kind,
};

/// The protocols a session can carry. A session starts as HTTP/1.x and becomes HTTP/2 when
/// its first bytes are the client preface, or, before any HTTP/1.x message, whole HTTP/2
/// frames (a connection the agent joined late).
///
/// HTTP/1.x, the common case, is held inline (no allocation per connection); HTTP/2, twice its
/// size, is boxed so that HTTP/1.x connections do not carry its room.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Protocol {
    Http1(Http1),
    Http2(Box<Http2>),
}

/// Whether `data` starts like HTTP/2's client preface (at least its first four bytes).
fn starts_preface(data: &[u8]) -> bool {
    let n = data.len().min(PREFACE.len());
    n >= 4 && data[..n] == PREFACE[..n]
}

#[derive(Debug)]
pub struct Session {
    protocol: Protocol,
    /// Its first bytes were TLS records: ciphertext, of no use to a parser.
    tls: bool,
    /// What the kernel said about the next request to start here.
    hints: Hints,
    /// Header names the user asked to capture.
    capture: Arc<[String]>,
    /// HTTP/2 frames the kernel found past the copied bytes of the next chunk: its
    /// direction, its time, the pieces.
    frames: Option<(u8, u64, Vec<u8>)>,
    /// Kernel time of the last event seen.
    pub last_ns: u64,
}

impl Session {
    /// A session whose role (server or client end) is known, or not yet. `capture_headers`
    /// names the headers the user asked for.
    pub fn new(role: Option<Kind>, capture_headers: &std::sync::Arc<[String]>) -> Self {
        Session {
            protocol: Protocol::Http1(Http1::new(role, capture_headers)),
            tls: false,
            hints: Hints::default(),
            capture: capture_headers.clone(),
            frames: None,
            last_ns: 0,
        }
    }

    /// SERVER or CLIENT, once known.
    pub fn role(&self) -> Option<Kind> {
        match &self.protocol {
            Protocol::Http1(h) => h.role(),
            Protocol::Http2(h) => h.role(),
        }
    }

    /// The kernel chose the ids of the next request to start here: a server request it read,
    /// or a client request it wrote a `traceparent` into (`--propagate`).
    pub fn expect_kernel_ids(&mut self, ids: tracer_common::TraceIds) {
        self.hints.kernel_ids = Some(ids);
    }

    /// The kernel found HTTP/2 frames past the copied bytes of the next chunk in
    /// `direction`, reported at `ts` (`tracer_common::kind::FRAMES`).
    pub fn frames_beyond(&mut self, direction: u8, ts: u64, pieces: Vec<u8>) {
        self.frames = Some((direction, ts, pieces));
    }

    /// The pieces for the chunk moved in `direction` at `ts`, if the kernel sent them (empty
    /// otherwise).
    pub fn take_frames(&mut self, direction: u8, ts: u64) -> Vec<u8> {
        match self.frames.take() {
            Some((d, t, pieces)) if d == direction && t == ts => pieces,
            _ => Vec::new(),
        }
    }

    /// The kernel found the next request's `traceparent` beyond what was captured of it.
    pub fn expect_traceparent(&mut self, value: String) {
        self.hints.late_traceparent = Some(value);
    }

    /// Bytes moved on the connection. `ingress` is true for bytes into the traced process.
    pub fn data(&mut self, ingress: bool, chunk: Chunk<'_>, tid: u32, env: &mut Env<'_>) {
        self.last_ns = self.last_ns.max(chunk.ts_last);
        if self.tls {
            return;
        }
        match &mut self.protocol {
            Protocol::Http1(h) => {
                if !h.saw_message() && starts_tls(chunk.data) {
                    self.tls = true;
                    return;
                }
                if !h.saw_message() && starts_preface(chunk.data) {
                    // The client sends the preface.
                    let role = if ingress { Kind::Server } else { Kind::Client };
                    let mut h2 = Http2::from_preface(role, &self.capture);
                    h2.data(ingress, chunk, tid, env, &mut self.hints);
                    self.protocol = Protocol::Http2(Box::new(h2));
                    return;
                }
                if !h.saw_message() && frame::joinable(chunk.data, chunk.total) {
                    // Frames without a preface: a connection that started before the agent,
                    // or TLS plaintext whose first calls were not seen. On a connection seen
                    // from its start, these may be the server's frames sent before it read the
                    // client's preface: that preface is then read as one.
                    let mut h2 = Http2::joined(h.role(), &self.capture);
                    h2.data(ingress, chunk, tid, env, &mut self.hints);
                    self.protocol = Protocol::Http2(Box::new(h2));
                    return;
                }
                h.data(ingress, chunk, tid, env, &mut self.hints);
                if let Some((request, rest, gap)) = h.take_upgrade() {
                    // `Upgrade: h2c` was answered 101: HTTP/2 from here, the 101's own chunk
                    // included (the server's SETTINGS and first frames may share it).
                    let role = h.role().unwrap_or(Kind::Server);
                    let mut h2 = Http2::upgraded(role, &self.capture, request);
                    let after = Chunk {
                        data: &rest,
                        total: rest.len() as u64 + gap,
                        beyond: &[],
                        ..chunk
                    };
                    if after.total > 0 {
                        h2.data(ingress, after, tid, env, &mut self.hints);
                    }
                    self.protocol = Protocol::Http2(Box::new(h2));
                }
            }
            Protocol::Http2(h) => h.data(ingress, chunk, tid, env, &mut self.hints),
        }
    }

    /// Whether nothing more can be learnt from these bytes: they carry no protocol known
    /// here, TLS ciphertext, or switched to one not followed.
    pub fn is_done(&self) -> bool {
        self.tls
            || match &self.protocol {
                Protocol::Http1(h) => h.is_done(),
                Protocol::Http2(h) => h.is_done(),
            }
    }

    /// Whether its bytes are TLS records (ciphertext).
    pub fn carries_tls(&self) -> bool {
        self.tls
    }

    /// Whether bytes were seen on it and they were not TLS records.
    pub fn known_not_tls(&self) -> bool {
        !self.tls
            && match &self.protocol {
                Protocol::Http1(h) => h.saw_bytes(),
                Protocol::Http2(_) => true,
            }
    }

    /// The connection ended at `ts`: what can end does, and requests still waiting are
    /// finished without a response (nothing is invented for them).
    pub fn close(&mut self, ts: u64, env: &mut Env<'_>) {
        self.last_ns = self.last_ns.max(ts);
        match &mut self.protocol {
            Protocol::Http1(h) => h.close(ts, self.last_ns, env, &mut self.hints),
            Protocol::Http2(h) => h.close(ts, self.last_ns, env),
        }
    }

    /// Requests still waiting for the end of their exchange (spans to be).
    pub fn open_requests(&self) -> u64 {
        match &self.protocol {
            Protocol::Http1(h) => h.open_requests(),
            Protocol::Http2(h) => h.open_requests(),
        }
    }

    /// Take the pairing loss counts accumulated so far.
    pub fn take_losses(&mut self) -> Losses {
        match &mut self.protocol {
            Protocol::Http1(h) => h.take_losses(),
            Protocol::Http2(h) => h.take_losses(),
        }
    }

    /// Times the parser lost message boundaries.
    pub fn desyncs(&self) -> u64 {
        match &self.protocol {
            Protocol::Http1(h) => h.desyncs(),
            Protocol::Http2(h) => h.desyncs(),
        }
    }
}
