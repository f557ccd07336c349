//! One connection's HTTP/1.x exchanges: requests paired with responses in order (keep-alive
//! and pipelining), with the ids each request gets when it starts.

use std::collections::VecDeque;

use crate::protocol::http1::{
    body::Framing,
    head::{RequestHead, ResponseHead},
    stream::{self, Chunk, Message, Reader, Side, Sink},
};

use tracer_common::TraceIds;

use super::{
    ids::{IdGen, TraceParent},
    link::{Call, Context, Ends, Linker, Parent, Served},
    span::{Kind, Response},
};

/// What feeding a connection needs from the rest of the pipeline.
pub struct Env<'a> {
    pub ids: &'a mut IdGen,
    pub links: &'a mut Linker,
    pub tgid: u32,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The connection's socket.
    pub sock: u64,
    /// Which thread accepted or connected the connection, and when, if that was seen.
    pub opened: Option<Opened>,
}

impl Env<'_> {
    fn ends(&self) -> Ends {
        Ends {
            tgid: self.tgid,
            local: self.local,
            remote: self.remote,
        }
    }
}

/// A connection's accept or connect, as seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub tid: u32,
    pub at: u64,
}

/// Requests awaiting responses on one connection; more are dropped (oldest first) and counted.
const MAX_PENDING: usize = 256;
/// Chunks inspected on a connection before deciding it does not speak HTTP/1.x.
const MAX_PROBES: u8 = 4;

/// A request seen, with what is known of its response so far.
#[derive(Debug, Clone)]
pub struct Pending {
    pub head: RequestHead,
    pub start_ns: u64,
    pub tid: u32,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent lives in another process (it came with the request, or from a client
    /// elsewhere on this host).
    pub parent_remote: bool,
    pub trace_flags: u8,
    pub request_body_size: Option<u64>,
    /// The request already carried a `traceparent` the program wrote itself: it is
    /// instrumented, its own span stands for this request, and ours is not exported.
    pub suppressed: bool,
    response: Option<ResponseHead>,
}

/// A request whose exchange is over: answered, or abandoned without an answer.
#[derive(Debug, Clone)]
pub struct Finished {
    pub kind: Kind,
    pub request: Pending,
    pub response: Option<Response>,
    pub end_ns: u64,
}

/// Counts of what a connection could not pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// Responses with no request waiting for them.
    pub unmatched_responses: u64,
    /// Requests dropped because too many were waiting.
    pub pending_overflow: u64,
}

#[derive(Debug, Default)]
struct Pairing {
    /// Boxed, and `finished` handed over whole: an idle connection (there may be tens of
    /// thousands) keeps no room for requests it is not waiting on.
    pending: VecDeque<Box<Pending>>,
    /// The response in progress is informational (1xx) or unmatched: its end is not an answer.
    ignore_end: bool,
    /// 101 Switching Protocols was answered: no more HTTP/1.x here.
    switched: bool,
    finished: Vec<Finished>,
    losses: Losses,
    /// Message heads seen on the connection, both directions.
    heads: u64,
}

/// Per-feed context: the pairing plus what the chunk's event says.
struct Feed<'a, 'e> {
    pairing: &'a mut Pairing,
    /// Ids the kernel gave the next request (`--propagate`).
    kernel_ids: &'a mut Option<TraceIds>,
    /// A `traceparent` the kernel found in the next request's head past the capture window.
    late_traceparent: &'a mut Option<String>,
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
                let env = &mut *self.env;
                let late = self.late_traceparent.take();
                let incoming = head
                    .traceparent
                    .as_deref()
                    .or(late.as_deref())
                    .and_then(TraceParent::parse);
                // With --propagate the kernel chose this request's ids (and, for a client
                // request, wrote them into it): they are the ones the next hop sees.
                let kernel = self.kernel_ids.take();
                let mut suppressed = false;
                let parent = match self.kind {
                    // An incoming trace context wins; else the client end on this host.
                    Kind::Server => incoming
                        .map(|tp| Parent {
                            ctx: Context {
                                trace_id: tp.trace_id,
                                span_id: tp.parent_id,
                                flags: tp.flags,
                            },
                            remote: true,
                        })
                        .or_else(|| {
                            env.links
                                .server_parent(env.ends(), &head.method, &head.target)
                        }),
                    Kind::Client => {
                        suppressed = head.traceparent.is_some();
                        if suppressed {
                            None
                        } else {
                            // The call began at its connect when this thread connected for it.
                            let connected_at = env
                                .opened
                                .filter(|o| o.tid == self.tid && p.heads == 1)
                                .map(|o| o.at);
                            let call = Call {
                                sent_at: ts,
                                connected_at,
                            };
                            let parent = env.links.client_parent(env.tgid, self.tid, call);
                            match &kernel {
                                // The injected trace is the one the callee continues: a
                                // parent in another trace would split the span from it.
                                Some(k) => parent.filter(|p| p.trace_id == k.trace_id),
                                None => parent,
                            }
                            .map(|ctx| Parent { ctx, remote: false })
                        }
                    }
                };
                let span_id = match &kernel {
                    Some(k) => k.span_id,
                    None => env.ids.span_id(),
                };
                let (trace_id, parent_span_id, trace_flags) = match (parent.map(|p| p.ctx), &kernel)
                {
                    (Some(p), _) => (p.trace_id, Some(p.span_id), p.flags),
                    (None, Some(k)) => (k.trace_id, None, k.flags),
                    (None, None) => (env.ids.trace_id(), None, 1),
                };
                let ctx = Context {
                    trace_id,
                    span_id,
                    flags: trace_flags,
                };
                match self.kind {
                    Kind::Server => env.links.serving_started(
                        env.tgid,
                        self.tid,
                        ctx,
                        ts,
                        Served {
                            sock: env.sock,
                            accepted_by: env.opened.map(|o| o.tid),
                        },
                    ),
                    Kind::Client if !suppressed => {
                        env.links
                            .client_sent(env.ends(), ctx, &head.method, &head.target, ts)
                    }
                    Kind::Client => {}
                }
                let declared_body = if head.chunked {
                    None
                } else {
                    head.content_length
                };
                if p.pending.len() >= MAX_PENDING {
                    p.pending.pop_front();
                    p.losses.pending_overflow += 1;
                }
                p.pending.push_back(Box::new(Pending {
                    head,
                    start_ns: ts,
                    tid: self.tid,
                    trace_id,
                    span_id,
                    parent_span_id,
                    parent_remote: parent.is_some_and(|p| p.remote),
                    trace_flags,
                    request_body_size: declared_body,
                    suppressed,
                    response: None,
                }));
            }
            Message::Response { head, ts } => {
                p.ignore_end = false;
                if (100..200).contains(&head.status) && head.status != 101 {
                    p.ignore_end = true;
                    return;
                }
                match p.pending.iter_mut().find(|r| r.response.is_none()) {
                    Some(r) => {
                        if head.status == 101 {
                            p.switched = true;
                        }
                        if self.kind == Kind::Server {
                            // The server answers: its work for this request is done.
                            self.env
                                .links
                                .serving_ended(self.env.tgid, r.tid, Some(self.tid), ts);
                        }
                        r.response = Some(head);
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
            .pending
            .iter()
            .find(|r| r.response.is_none())
            .map(|r| r.head.method.as_str());
        stream::response_framing(head, method)
    }
}

impl Feed<'_, '_> {
    /// A body ended: a request's (its size is recorded) or a response's (the exchange is over).
    fn end(&mut self, ts: u64, size: Option<u64>) {
        let p = &mut *self.pairing;
        if self.side == Side::Request {
            // A declared length is known from the head (the response may even finish first);
            // a chunked body's size only now.
            if let Some(r) = p.pending.back_mut() {
                if r.head.chunked {
                    r.request_body_size = size;
                }
                if self.kind == Kind::Server {
                    // The whole request is in: its handler starts from here.
                    self.env
                        .links
                        .request_read(self.env.tgid, self.tid, r.span_id, ts);
                }
            }
            return;
        }
        if std::mem::take(&mut p.ignore_end) {
            return;
        }
        let answered = p.pending.front().is_some_and(|r| r.response.is_some());
        if !answered {
            return;
        }
        let Some(mut request) = p.pending.pop_front() else {
            return;
        };
        let head = request.response.take().expect("checked above");
        if p.pending.is_empty() {
            p.pending = VecDeque::new();
        }
        p.finished.push(Finished {
            kind: self.kind,
            request: *request,
            response: Some(Response {
                status: head.status,
                body_size: size,
                headers: head.captured,
            }),
            end_ns: ts,
        });
    }
}

/// HTTP/1.x state of one connection of one process.
#[derive(Debug)]
pub struct Connection {
    /// SERVER when requests arrive on this connection, CLIENT when they leave; unknown until
    /// the open event or the first message says.
    role: Option<Kind>,
    probes: u8,
    /// Its first bytes were TLS records: ciphertext, of no use to the parser.
    tls: bool,
    requests: Reader,
    responses: Reader,
    pairing: Pairing,
    /// Ids the kernel gave the next request to start here (`--propagate`).
    kernel_ids: Option<TraceIds>,
    /// The next request's `traceparent`, found by the kernel past the capture window.
    late_traceparent: Option<String>,
    /// Kernel time of the last event seen.
    pub last_ns: u64,
}

impl Connection {
    pub fn new(role: Option<Kind>, capture_headers: &std::sync::Arc<[String]>) -> Self {
        Connection {
            role,
            probes: 0,
            tls: false,
            requests: Reader::capturing(Side::Request, capture_headers.clone()),
            responses: Reader::capturing(Side::Response, capture_headers.clone()),
            pairing: Pairing::default(),
            kernel_ids: None,
            late_traceparent: None,
            last_ns: 0,
        }
    }

    /// SERVER or CLIENT, once known.
    pub fn role(&self) -> Option<Kind> {
        self.role
    }

    /// The kernel chose the ids of the next request to start on this connection: a server
    /// request it read, or a client request it wrote a `traceparent` into.
    pub fn expect_kernel_ids(&mut self, ids: TraceIds) {
        self.kernel_ids = Some(ids);
    }

    /// The kernel found the next request's `traceparent` beyond what was captured of it.
    pub fn expect_traceparent(&mut self, value: String) {
        self.late_traceparent = Some(value);
    }

    /// Bytes moved on the connection. `ingress` is true for bytes into the traced process.
    pub fn data(&mut self, ingress: bool, chunk: Chunk<'_>, tid: u32, env: &mut Env<'_>) {
        self.last_ns = self.last_ns.max(chunk.ts_last);
        if self.pairing.switched || self.tls {
            return;
        }
        if self.pairing.heads == 0 && crate::protocol::starts_tls(chunk.data) {
            self.tls = true;
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
            kernel_ids: &mut self.kernel_ids,
            late_traceparent: &mut self.late_traceparent,
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
    /// HTTP/1.x, it carries TLS ciphertext, or it switched protocols.
    pub fn is_done(&self) -> bool {
        (self.pairing.heads == 0 && self.probes >= MAX_PROBES) || self.pairing.switched || self.tls
    }

    /// Whether its bytes are TLS records (ciphertext).
    pub fn carries_tls(&self) -> bool {
        self.tls
    }

    /// Whether bytes were seen on it and they were not TLS records.
    pub fn known_not_tls(&self) -> bool {
        !self.tls && (self.pairing.heads > 0 || self.probes > 0 || self.desyncs() > 0)
    }

    /// The connection ended at `ts`: close-delimited bodies end, and requests still waiting
    /// are finished without a response (nothing is invented for them).
    pub fn close(&mut self, ts: u64, env: &mut Env<'_>) {
        self.last_ns = self.last_ns.max(ts);
        if let Some(kind) = self.role {
            let mut feed = Feed {
                pairing: &mut self.pairing,
                kernel_ids: &mut self.kernel_ids,
                late_traceparent: &mut self.late_traceparent,
                env: &mut *env,
                kind,
                tid: 0,
                side: Side::Response,
            };
            self.responses.close(ts, &mut feed);
            feed.side = Side::Request;
            self.requests.close(ts, &mut feed);
        }
        let end = self.last_ns;
        let kind = self.role.unwrap_or(Kind::Server);
        for request in self.pairing.pending.drain(..) {
            if kind == Kind::Server && request.response.is_none() {
                env.links.serving_ended(env.tgid, request.tid, None, end);
            }
            self.pairing.finished.push(Finished {
                kind,
                request: *request,
                response: None,
                end_ns: end,
            });
        }
    }

    /// Take the exchanges finished so far.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.pairing.finished)
    }

    /// Requests still waiting for the end of their exchange (spans to be).
    pub fn open_requests(&self) -> u64 {
        self.pairing
            .pending
            .iter()
            .filter(|r| !r.suppressed)
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
