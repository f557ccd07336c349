//! HTTP/1.x sessions: one connection's requests paired with responses in order (keep-alive
//! and pipelining), reported to [`super::exchange`] as they start, are read, are answered
//! and end.

use std::collections::VecDeque;

use crate::protocol::http1::{
    body::Framing,
    head::ResponseHead,
    stream::{self, Chunk, Message, Reader, Side, Sink},
};

use super::{
    exchange::{self, Env, Finished, Hints, Losses, Pending, Start},
    span::{Kind, Response},
};

/// Requests awaiting responses on one connection; more are dropped (oldest first) and counted.
const MAX_PENDING: usize = 256;
/// Chunks inspected on a connection before deciding it does not speak HTTP/1.x.
const MAX_PROBES: u8 = 4;

/// A request waiting for the end of its exchange.
#[derive(Debug)]
struct Waiting {
    pending: Pending,
    /// Its body's size is known only when the body ends (chunked).
    size_at_end: bool,
    /// The response's head, once seen.
    response: Option<ResponseHead>,
}

#[derive(Debug, Default)]
struct Pairing {
    /// Boxed: an idle connection (there may be tens of thousands) keeps no room for requests
    /// it is not waiting on.
    waiting: VecDeque<Box<Waiting>>,
    /// The response in progress is informational (1xx) or unmatched: its end is not an answer.
    ignore_end: bool,
    /// 101 Switching Protocols was answered: no more HTTP/1.x here.
    switched: bool,
    /// That 101 switched to HTTP/2 (`Upgrade: h2c`): its request goes on as stream 1, and
    /// the bytes after the 101's head (and how many more moved uncopied) are HTTP/2's.
    to_h2c: bool,
    upgraded: Option<(Pending, Vec<u8>, u64)>,
    losses: Losses,
    /// Message heads seen on the connection, both directions.
    heads: u64,
}

/// Per-feed context: the pairing plus what the chunk's event says.
struct Feed<'a, 'e> {
    pairing: &'a mut Pairing,
    hints: &'a mut Hints,
    env: &'a mut Env<'e>,
    kind: Kind,
    tid: u32,
    /// Which reader is feeding: request ends and response ends mean different things.
    side: Side,
}

impl Sink for Feed<'_, '_> {
    fn message(&mut self, message: Message) {
        let p = &mut *self.pairing;
        if !matches!(message, Message::End { .. }) {
            p.heads += 1;
        }
        match message {
            Message::Request { head, ts } => {
                let size_at_end = head.chunked;
                let declared = if head.chunked {
                    None
                } else {
                    head.content_length
                };
                let at = Start {
                    kind: self.kind,
                    tid: self.tid,
                    ts,
                    first: p.heads == 1,
                };
                let pending =
                    exchange::begin(self.env, at, head.into_request(), self.hints, declared);
                if p.waiting.len() >= MAX_PENDING {
                    p.waiting.pop_front();
                    p.losses.pending_overflow += 1;
                }
                p.waiting.push_back(Box::new(Waiting {
                    pending,
                    size_at_end,
                    response: None,
                }));
            }
            Message::Response { head, ts } => {
                p.ignore_end = false;
                if (100..200).contains(&head.status) && head.status != 101 {
                    p.ignore_end = true;
                    return;
                }
                match p.waiting.iter_mut().find(|w| w.response.is_none()) {
                    Some(w) => {
                        if head.status == 101 {
                            p.switched = true;
                            p.to_h2c = head.upgrade_h2c;
                        }
                        exchange::answered(self.env, self.kind, &w.pending, self.tid, ts);
                        w.response = Some(head);
                    }
                    None => {
                        p.losses.unmatched_responses += 1;
                        p.ignore_end = true;
                    }
                }
            }
            Message::End { ts, size } => self.end(ts, size),
        }
    }

    fn response_framing(&mut self, head: &ResponseHead) -> Framing {
        let method = self
            .pairing
            .waiting
            .iter()
            .find(|w| w.response.is_none())
            .map(|w| w.pending.request.method.as_str());
        stream::response_framing(head, method)
    }

    fn switched_to_h2c(&mut self, rest: &[u8], gap: u64) {
        if let Some((_, bytes, missing)) = self.pairing.upgraded.as_mut() {
            bytes.extend_from_slice(rest);
            *missing = gap;
        }
    }
}

impl Feed<'_, '_> {
    /// A body ended: a request's (its size is recorded) or a response's (the exchange is over).
    fn end(&mut self, ts: u64, size: Option<u64>) {
        let p = &mut *self.pairing;
        if self.side == Side::Request {
            // A declared length is known from the head (the response may even finish first);
            // a chunked body's size only now.
            if let Some(w) = p.waiting.back_mut() {
                if w.size_at_end {
                    w.pending.request_body_size = size;
                }
                exchange::request_read(self.env, self.kind, &w.pending, self.tid, ts);
            }
            return;
        }
        if std::mem::take(&mut p.ignore_end) {
            return;
        }
        let answered = p.waiting.front().is_some_and(|w| w.response.is_some());
        if !answered {
            return;
        }
        let Some(w) = p.waiting.pop_front() else {
            return;
        };
        let Waiting {
            pending, response, ..
        } = *w;
        let head = response.expect("checked above");
        if p.waiting.is_empty() {
            p.waiting = VecDeque::new();
        }
        if head.status == 101 && p.to_h2c {
            // Not over: its response comes as HTTP/2, on stream 1.
            p.upgraded = Some((pending, Vec::new(), 0));
            return;
        }
        self.env.finished.push(Finished {
            kind: self.kind,
            request: pending,
            response: Some(Response::http1(head.status, size, head.captured)),
            end_ns: ts,
        });
    }
}

/// HTTP/1.x state of one connection's byte stream.
#[derive(Debug)]
pub struct Http1 {
    /// SERVER when requests arrive on this connection, CLIENT when they leave; unknown until
    /// the open event or the first message says.
    role: Option<Kind>,
    probes: u8,
    requests: Reader,
    responses: Reader,
    pairing: Pairing,
}

impl Http1 {
    pub fn new(role: Option<Kind>, capture_headers: &std::sync::Arc<[String]>) -> Self {
        Http1 {
            role,
            probes: 0,
            requests: Reader::capturing(Side::Request, capture_headers.clone()),
            responses: Reader::capturing(Side::Response, capture_headers.clone()),
            pairing: Pairing::default(),
        }
    }

    /// SERVER or CLIENT, once known.
    pub fn role(&self) -> Option<Kind> {
        self.role
    }

    /// Whether a message head was seen (both directions).
    pub fn saw_message(&self) -> bool {
        self.pairing.heads > 0
    }

    /// Whether bytes were looked at: a message, or chunks that were none.
    pub fn saw_bytes(&self) -> bool {
        self.pairing.heads > 0 || self.probes > 0 || self.desyncs() > 0
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
        if self.pairing.switched {
            return;
        }
        let role = match self.role {
            Some(role) => role,
            None => {
                if self.probes >= MAX_PROBES {
                    return;
                }
                match infer_role(ingress, chunk.data) {
                    Some(role) => {
                        self.role = Some(role);
                        role
                    }
                    None => {
                        self.probes += 1;
                        return;
                    }
                }
            }
        };
        // Requests flow into servers and out of clients.
        let side = if ingress == (role == Kind::Server) {
            Side::Request
        } else {
            Side::Response
        };
        let mut feed = Feed {
            pairing: &mut self.pairing,
            hints,
            env,
            kind: role,
            tid,
            side,
        };
        let reader = match side {
            Side::Request => &mut self.requests,
            Side::Response => &mut self.responses,
        };
        reader.feed(chunk, &mut feed);
        // A connection whose first chunks are all junk is not HTTP/1.x.
        if self.pairing.heads == 0 && reader.is_desynced() {
            self.probes = self.probes.saturating_add(1);
        }
        if self.pairing.switched {
            self.requests.stop();
            self.responses.stop();
        }
    }

    /// Whether nothing more can be learnt from this connection's bytes: it does not carry
    /// HTTP/1.x, or it switched protocols.
    pub fn is_done(&self) -> bool {
        (self.pairing.heads == 0 && self.probes >= MAX_PROBES) || self.pairing.switched
    }

    /// The connection ended at `ts` (the last bytes seen at `last`): close-delimited bodies
    /// end, and requests still waiting are finished without a response.
    pub fn close(&mut self, ts: u64, last: u64, env: &mut Env<'_>, hints: &mut Hints) {
        if let Some(kind) = self.role {
            let mut feed = Feed {
                pairing: &mut self.pairing,
                hints,
                env: &mut *env,
                kind,
                tid: 0,
                side: Side::Response,
            };
            self.responses.close(ts, &mut feed);
            feed.side = Side::Request;
            self.requests.close(ts, &mut feed);
        }
        let kind = self.role.unwrap_or(Kind::Server);
        for w in self.pairing.waiting.drain(..) {
            let Waiting {
                pending, response, ..
            } = *w;
            let finished = match response {
                None => exchange::unanswered(env, kind, pending, last),
                // Answered, but the response's end was not seen: no response is reported.
                Some(_) => Finished {
                    kind,
                    request: pending,
                    response: None,
                    end_ns: last,
                },
            };
            env.finished.push(finished);
        }
    }

    /// The connection switched to HTTP/2 by `Upgrade: h2c`: the upgrade request (to go on as
    /// stream 1), the bytes that followed the `101` in its chunk, and how many more moved
    /// uncopied.
    pub fn take_upgrade(&mut self) -> Option<(Pending, Vec<u8>, u64)> {
        self.pairing.upgraded.take()
    }

    /// Requests still waiting for the end of their exchange (spans to be).
    pub fn open_requests(&self) -> u64 {
        self.pairing
            .waiting
            .iter()
            .filter(|w| !w.pending.suppressed)
            .count() as u64
    }

    /// Take the pairing loss counts accumulated so far.
    pub fn take_losses(&mut self) -> Losses {
        std::mem::take(&mut self.pairing.losses)
    }

    /// Times the readers lost message boundaries.
    pub fn desyncs(&self) -> u64 {
        self.requests.desyncs + self.responses.desyncs
    }
}

/// The role a connection's first HTTP bytes reveal.
fn infer_role(ingress: bool, data: &[u8]) -> Option<Kind> {
    let request = Reader::could_start(Side::Request, data);
    let response = Reader::could_start(Side::Response, data) && !request;
    match (ingress, request, response) {
        (true, true, _) | (false, _, true) => Some(Kind::Server),
        (false, true, _) | (true, _, true) => Some(Kind::Client),
        _ => None,
    }
}
