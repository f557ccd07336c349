//! Joining spans into traces on one host, after an incoming `traceparent` (the strongest
//! evidence, handled where requests are read):
//!
//! - **Same-host calls**: a traced client's request and the traced server's view of it are the
//!   two ends of one TCP connection. The client's request is recorded under (client address,
//!   server address); the server finds it there, in order, and checks that method and target
//!   agree. Events are fed in time order (see `reorder`), so the client's write is always
//!   seen before the server's read.
//! - **In-process causality**: a request a thread sends may be part of the work of a request
//!   that thread serves. Syscalls do not say which piece of work a thread is running, so the
//!   link is made only where the thread's history leaves one answer; elsewhere no parent is
//!   given: a new trace beats a wrong one.
//!
//! The hard case is an event loop. "Read A, answer A, read B (slow), A's timer sends C" and
//! "read B, B's handler sends C" are the same events up to C's send. What tells them apart is
//! what the thread can run between requests:
//!
//! - A **dedicated** thread reads requests from one connection, accepted by another thread
//!   (a thread per connection: Python's `ThreadingHTTPServer`). It serves its requests one
//!   after another and runs nothing else in between: while it serves exactly one request,
//!   what it sends belongs to that request.
//! - A **shared** thread (it accepted the connection itself, or serves several connections,
//!   or its connection's accept was not seen) may run the leftover work of an earlier request (timers, background tasks) while it serves a
//!   later one. Its send is linked only when it begins within [`CALL_WINDOW_NS`] of the last
//!   read of the request it serves, with nothing else read or answered in between: the
//!   synchronous start of that request's handler. A call made later (after an `await`, a
//!   timer) gets no parent.
//! - A thread seen **sending while serving nothing**, longer than [`CALL_WINDOW_NS`] after its
//!   last request, runs work of its own between requests: it gets no in-process parent again.
//!
//! On every thread: several requests in flight, or another request read or answered since
//! the one in flight was read, give no parent; so does a process seen answering on another
//! thread than the one that read the request (thread pools, async runtimes).

use crate::conn::{FastMap, FastSet};

use std::{collections::VecDeque, net::SocketAddr};

/// A span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// A parent found for a span, and whether it lives in another process (OTLP's "parent is
/// remote").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub ctx: Context,
    pub remote: bool,
}

/// A connection as one traced process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub tgid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What identifies a request between the two ends of a connection: its method and target,
/// and on HTTP/2 its stream.
#[derive(Debug, Clone, Copy)]
pub struct Sending<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub stream: Option<u32>,
}

impl<'a> Sending<'a> {
    /// An HTTP/1.x request.
    pub fn http1(method: &'a str, target: &'a str) -> Self {
        Sending {
            method,
            target,
            stream: None,
        }
    }

    /// Its method and target in 64 bits: two requests that differ in them match by chance
    /// once in 2^64 comparisons, and nothing is allocated to keep them.
    fn fingerprint(&self) -> u64 {
        use std::hash::BuildHasher;
        foldhash::quality::FixedState::default().hash_one((self.method, self.target))
    }
}

/// A client request waiting for its server end.
#[derive(Debug, Clone)]
struct Sent {
    ctx: Context,
    tgid: u32,
    /// [`Sending::fingerprint`].
    request: u64,
    /// Its HTTP/2 stream id.
    stream: Option<u32>,
    at: u64,
}

/// How long after the last read of the request a shared thread serves its send may begin and
/// still be that request's: the synchronous start of a handler. Warm express and aiohttp
/// handlers begin their call 0.3 to 2 ms after the read; the first request of a fresh Node
/// process took 4 to 15 ms on a loaded 2-core machine. Work deferred by an earlier request
/// that happens to begin this soon after a read cannot be told apart from it.
pub const CALL_WINDOW_NS: u64 = 50_000_000;

/// What a thread has shown of how it serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reads requests from this one connection, which another thread accepted.
    Dedicated { sock: u64 },
    /// May run an earlier request's work while serving a later one.
    Shared,
    /// Sent a request while serving none: runs work of its own between requests.
    Deferred,
}

/// The last thing a thread did for any request it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// It read this request: its first byte at `first`, its last so far at `last`.
    Read { ctx: Context, first: u64, last: u64 },
    /// A request it served ended (answered, or its connection gone) at this time.
    Ended { at: u64 },
}

/// The serving history of one thread.
#[derive(Debug, Clone, Copy)]
struct Thread {
    in_flight: u32,
    last: Last,
    role: Role,
}

/// The connection a server request was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The connection's socket (unique while it is open).
    pub sock: u64,
    /// The thread that accepted it, when the accept was seen.
    pub accepted_by: Option<u32>,
}

/// A client request as it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// When its first byte left.
    pub sent_at: u64,
    /// When the sending thread connected its connection, if this is the connection's first
    /// request: the call began there.
    pub connected_at: Option<u64>,
}

/// Client requests remembered per connection, and for how long: as many as HTTP/2 streams
/// followed at once on one connection (`http2::MAX_STREAMS`), so that a burst of concurrent
/// calls finds every parent.
const MAX_SENT_PER_CONN: usize = 1024;
const SENT_TTL_NS: u64 = 30 * 1_000_000_000;
const MAX_CONNS: usize = 65_536;
const MAX_THREADS: usize = 65_536;

/// How often each kind of link was made, or refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub same_host: u64,
    pub in_process: u64,
    /// Client requests sent while the evidence was ambiguous (several requests in flight,
    /// another request read or answered since, answers on other threads, a thread that runs
    /// deferred work): left without a parent.
    pub ambiguous: u64,
    /// Client requests a shared thread began too long after reading the request it serves:
    /// left without a parent.
    pub late: u64,
    /// Threads' serving histories forgotten because the table was full.
    pub threads_evicted: u64,
}

/// The linking state of the whole host.
#[derive(Debug, Default)]
pub struct Linker {
    sent: FastMap<(SocketAddr, SocketAddr), VecDeque<Sent>>,
    threads: FastMap<(u32, u32), Thread>,
    hopping: FastSet<u32>,
    pub stats: LinkStats,
}

impl Linker {
    /// The parent of a request that thread `tid` of process `tgid` is sending, when its
    /// history says which request it belongs to (see the module's documentation).
    pub fn client_parent(&mut self, tgid: u32, tid: u32, call: Call) -> Option<Context> {
        let thread = self.threads.get_mut(&(tgid, tid))?;
        let (ctx, first, last) = match (thread.in_flight, thread.last) {
            (0, Last::Ended { at }) => {
                if call.sent_at.saturating_sub(at) > CALL_WINDOW_NS {
                    thread.role = Role::Deferred;
                }
                return None;
            }
            (1, Last::Read { ctx, first, last }) => (ctx, first, last),
            _ => {
                self.stats.ambiguous += 1;
                return None;
            }
        };
        if self.hopping.contains(&tgid) {
            self.stats.ambiguous += 1;
            return None;
        }
        match thread.role {
            Role::Dedicated { .. } => {}
            Role::Shared => {
                let began = call
                    .connected_at
                    .filter(|&c| c >= first)
                    .unwrap_or(call.sent_at);
                let gap = began.saturating_sub(last);
                log::debug!(
                    "thread {tid} of {tgid} began a call {} us after reading the request it \
                     serves: {}",
                    gap / 1_000,
                    if gap > CALL_WINDOW_NS {
                        "no parent (late)"
                    } else {
                        "its child"
                    }
                );
                if gap > CALL_WINDOW_NS {
                    self.stats.late += 1;
                    return None;
                }
            }
            Role::Deferred => {
                self.stats.ambiguous += 1;
                return None;
            }
        }
        self.stats.in_process += 1;
        Some(ctx)
    }

    /// A client request left on `conn` (on HTTP/2 `stream`): remember it for the server end.
    pub fn client_sent(&mut self, conn: Ends, ctx: Context, request: Sending<'_>, at: u64) {
        let Ends {
            tgid,
            local,
            remote,
        } = conn;
        if self.sent.len() >= MAX_CONNS && !self.sent.contains_key(&(local, remote)) {
            self.expire(at);
            if self.sent.len() >= MAX_CONNS {
                return;
            }
        }
        let queue = self.sent.entry((local, remote)).or_default();
        if queue.len() >= MAX_SENT_PER_CONN {
            queue.pop_front();
        }
        queue.push_back(Sent {
            ctx,
            tgid,
            request: request.fingerprint(),
            stream: request.stream,
            at,
        });
    }

    /// A server received a request on `conn`: the client span that sent it, when that client
    /// is traced on this host.
    pub fn server_parent(&mut self, conn: Ends, request: Sending<'_>) -> Option<Parent> {
        let Ends {
            tgid,
            local,
            remote,
        } = conn;
        let key = (remote, local);
        let queue = self.sent.get_mut(&key)?;
        let fingerprint = request.fingerprint();
        let same = |sent: &Sent| sent.request == fingerprint;
        let found = match request.stream {
            // HTTP/2: the client's request on the same stream, which must agree. Requests
            // sent before it on other streams were read before it, or never will be.
            Some(stream) => match queue.iter().position(|s| s.stream == Some(stream)) {
                Some(at) => {
                    let sent = queue.drain(..=at).next_back().expect("at least one");
                    same(&sent).then_some(sent)
                }
                None => None,
            },
            // Requests are answered in order; one the server never saw (it was already
            // reading when the agent started) is skipped by method and target.
            None => loop {
                let Some(sent) = queue.pop_front() else {
                    break None;
                };
                if same(&sent) {
                    break Some(sent);
                }
            },
        }
        .map(|sent| Parent {
            ctx: sent.ctx,
            remote: sent.tgid != tgid,
        });
        if queue.is_empty() {
            self.sent.remove(&key);
        }
        if found.is_some() {
            self.stats.same_host += 1;
        }
        found
    }

    /// Thread `tid` of `tgid` read the first byte of a request at `at`, on `conn`, and serves
    /// it as `ctx`.
    pub fn serving_started(&mut self, tgid: u32, tid: u32, ctx: Context, at: u64, conn: Served) {
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&(tgid, tid)) {
            self.make_room();
        }
        let thread = self.threads.entry((tgid, tid)).or_insert_with(|| Thread {
            in_flight: 0,
            last: Last::Ended { at },
            role: match conn.accepted_by {
                Some(acceptor) if acceptor != tid => Role::Dedicated { sock: conn.sock },
                _ => Role::Shared,
            },
        });
        if let Role::Dedicated { sock } = thread.role
            && sock != conn.sock
        {
            thread.role = Role::Shared;
        }
        thread.in_flight += 1;
        thread.last = Last::Read {
            ctx,
            first: at,
            last: at,
        };
    }

    /// Thread `tid` of `tgid` read the last byte of the request `span_id` at `at` (its head,
    /// or the end of its body): the handler starts from here.
    pub fn request_read(&mut self, tgid: u32, tid: u32, span_id: [u8; 8], at: u64) {
        if let Some(thread) = self.threads.get_mut(&(tgid, tid))
            && let Last::Read { ctx, last, .. } = &mut thread.last
            && ctx.span_id == span_id
        {
            *last = (*last).max(at);
        }
    }

    /// The request `reader` read is over at `at` (answered by `writer`, or abandoned).
    pub fn serving_ended(&mut self, tgid: u32, reader: u32, writer: Option<u32>, at: u64) {
        if let Some(w) = writer
            && w != reader
        {
            // This process answers on other threads: thread-based causality is unreliable.
            self.hopping.insert(tgid);
        }
        if let Some(thread) = self.threads.get_mut(&(tgid, reader)) {
            thread.in_flight = thread.in_flight.saturating_sub(1);
            thread.last = Last::Ended { at };
        }
    }

    /// A process exited: forget its threads.
    pub fn forget_process(&mut self, tgid: u32) {
        self.threads.retain(|(p, _), _| *p != tgid);
        self.hopping.remove(&tgid);
    }

    /// Drop client requests no server claimed in time.
    pub fn expire(&mut self, now: u64) {
        let cutoff = now.saturating_sub(SENT_TTL_NS);
        self.sent.retain(|_, q| {
            q.retain(|s| s.at >= cutoff);
            !q.is_empty()
        });
    }

    /// The thread table is full: forget the idle threads whose history gives links (a
    /// forgotten `Deferred` thread could be linked again); failing that, everything.
    fn make_room(&mut self) {
        let before = self.threads.len();
        self.threads
            .retain(|_, t| t.in_flight > 0 || t.role == Role::Deferred);
        if self.threads.len() >= MAX_THREADS {
            self.threads.clear();
        }
        self.stats.threads_evicted += (before - self.threads.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(n: u8) -> Context {
        Context {
            trace_id: [n; 16],
            span_id: [n; 8],
            flags: 1,
        }
    }

    /// Process `tgid`'s view of a loopback connection between two ports.
    fn ends(tgid: u32, local: u16, remote: u16) -> Ends {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ends {
            tgid,
            local: addr(local),
            remote: addr(remote),
        }
    }

    const MS: u64 = 1_000_000;
    /// Process and thread ids of the timelines below.
    const P: u32 = 1;
    const LOOP: u32 = 11;
    const ACCEPTOR: u32 = 10;

    /// A connection the serving thread accepted itself (an event loop, a single-threaded
    /// server).
    fn own(sock: u64) -> Served {
        Served {
            sock,
            accepted_by: Some(LOOP),
        }
    }

    /// A connection another thread accepted (a thread per connection).
    fn handed(sock: u64) -> Served {
        Served {
            sock,
            accepted_by: Some(ACCEPTOR),
        }
    }

    fn send(at: u64) -> Call {
        Call {
            sent_at: at,
            connected_at: None,
        }
    }

    #[test]
    fn server_finds_the_client_span_of_its_connection_in_order() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), Sending::http1("GET", "/a"), 10);
        l.client_sent(ends(2, 5000, 80), ctx(2), Sending::http1("GET", "/b"), 20);
        let found = |l: &mut Linker, target| {
            l.server_parent(ends(1, 80, 5000), Sending::http1("GET", target))
                .map(|p| p.ctx)
        };
        assert_eq!(found(&mut l, "/a"), Some(ctx(1)));
        assert_eq!(found(&mut l, "/b"), Some(ctx(2)));
        assert_eq!(found(&mut l, "/c"), None);
        // Another connection's requests are never taken.
        l.client_sent(ends(2, 5001, 80), ctx(3), Sending::http1("GET", "/a"), 30);
        assert_eq!(found(&mut l, "/a"), None);
        assert_eq!(l.stats.same_host, 2);
    }

    /// HTTP/2: identical calls on one connection are told apart by their stream, so one the
    /// server never saw (lost in a gap) does not shift every parent after it.
    #[test]
    fn http2_streams_find_their_own_client_span() {
        let mut l = Linker::default();
        let on = |stream| Sending {
            method: "POST",
            target: "/demo.Echo/Say",
            stream: Some(stream),
        };
        for (i, stream) in [1, 3, 5, 7].into_iter().enumerate() {
            l.client_sent(
                ends(2, 5000, 80),
                ctx(i as u8 + 1),
                on(stream),
                10 * i as u64,
            );
        }
        let mut found = |stream| {
            l.server_parent(ends(1, 80, 5000), on(stream))
                .map(|p| p.ctx)
        };
        // Stream 1 was never read by the server.
        assert_eq!(found(3), Some(ctx(2)));
        // A stream the client was not seen sending: nothing, and nothing is used up.
        assert_eq!(found(9), None);
        assert_eq!(found(5), Some(ctx(3)));
        assert_eq!(found(7), Some(ctx(4)));
        assert_eq!(found(1), None, "passed over");
    }

    #[test]
    fn a_client_in_another_process_is_a_remote_parent_one_in_the_same_is_not() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), Sending::http1("GET", "/"), 10);
        l.client_sent(ends(1, 5001, 80), ctx(2), Sending::http1("GET", "/"), 20);
        let other = l
            .server_parent(ends(1, 80, 5000), Sending::http1("GET", "/"))
            .unwrap();
        let same = l
            .server_parent(ends(1, 80, 5001), Sending::http1("GET", "/"))
            .unwrap();
        assert_eq!((other.ctx, other.remote), (ctx(1), true));
        assert_eq!((same.ctx, same.remote), (ctx(2), false));
    }

    #[test]
    fn a_request_the_server_missed_is_skipped() {
        let mut l = Linker::default();
        l.client_sent(
            ends(2, 5000, 80),
            ctx(1),
            Sending::http1("GET", "/missed"),
            10,
        );
        l.client_sent(
            ends(2, 5000, 80),
            ctx(2),
            Sending::http1("POST", "/seen"),
            20,
        );
        assert_eq!(
            l.server_parent(ends(1, 80, 5000), Sending::http1("POST", "/seen"))
                .map(|p| p.ctx),
            Some(ctx(2))
        );
    }

    /// Thread per connection: a thread reads one connection another thread accepted. Its
    /// handler may take its time before calling out; keep-alive requests follow one another.
    #[test]
    fn thread_per_connection_links_whatever_the_delay() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, handed(7));
        assert_eq!(l.client_parent(P, LOOP, send(500 * MS)), Some(ctx(1)));
        assert_eq!(
            l.client_parent(P, 12, send(500 * MS)),
            None,
            "another thread"
        );
        l.serving_ended(P, LOOP, Some(LOOP), 600 * MS);
        assert_eq!(
            l.client_parent(P, LOOP, send(601 * MS)),
            None,
            "serving none"
        );
        // The next request on the same connection.
        l.serving_started(P, LOOP, ctx(2), 700 * MS, handed(7));
        assert_eq!(l.client_parent(P, LOOP, send(900 * MS)), Some(ctx(2)));
        assert_eq!(l.stats.in_process, 2);
    }

    /// A chain through an event loop, one request at a time: each handler calls out as soon
    /// as its request is read, on a new connection or a kept-alive one.
    #[test]
    fn an_event_loop_links_a_call_its_handler_begins_at_once() {
        let mut l = Linker::default();
        for (i, sock) in [(1u8, 7), (2, 8), (3, 9)] {
            let read = i as u64 * 100 * MS;
            l.serving_started(P, LOOP, ctx(i), read, own(sock));
            let call = match i {
                // A new connection, connected 300 us after the read, written 2 ms later.
                1 => Call {
                    sent_at: read + 2 * MS,
                    connected_at: Some(read + 300_000),
                },
                _ => send(read + 400_000),
            };
            assert_eq!(l.client_parent(P, LOOP, call), Some(ctx(i)), "request {i}");
            l.serving_ended(P, LOOP, Some(LOOP), read + 5 * MS);
        }
    }

    /// The window starts from the request's last byte: a body read in pieces holds the
    /// handler back.
    #[test]
    fn an_event_loop_measures_from_the_end_of_the_request_body() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, own(7));
        l.request_read(P, LOOP, ctx(1).span_id, 50 * MS);
        assert_eq!(l.client_parent(P, LOOP, send(51 * MS)), Some(ctx(1)));
        let edge = 50 * MS + CALL_WINDOW_NS;
        assert_eq!(l.client_parent(P, LOOP, send(edge)), Some(ctx(1)));
        assert_eq!(l.client_parent(P, LOOP, send(edge + 1)), None);
        // Another request's bytes do not move the window.
        l.request_read(P, LOOP, ctx(9).span_id, 500 * MS);
        assert_eq!(
            l.client_parent(P, LOOP, send(50 * MS + CALL_WINDOW_NS + 1)),
            None
        );
    }

    /// Read A, answer A, read B (slow, in flight), A's timer sends C: C is not B's. At C's
    /// send this looks like B's handler calling out, except for the time since B's read.
    #[test]
    fn sequential_webhook_with_another_request_in_flight_gets_no_parent() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, own(7));
        l.serving_ended(P, LOOP, Some(LOOP), MS);
        l.serving_started(P, LOOP, ctx(2), 3 * MS, own(8));
        // The webhook opens its connection 150 ms after A's answer.
        let webhook = Call {
            sent_at: 152 * MS,
            connected_at: Some(151 * MS),
        };
        assert_eq!(l.client_parent(P, LOOP, webhook), None);
        assert_eq!(l.stats.late, 1);
        assert_eq!(l.stats.in_process, 0);
    }

    /// Read B (slow), read A, answer A, A's timer fires: two requests were in flight.
    #[test]
    fn concurrent_webhook_gets_no_parent() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(2), 0, own(8));
        l.serving_started(P, LOOP, ctx(1), MS, own(7));
        assert_eq!(
            l.client_parent(P, LOOP, send(MS + 100_000)),
            None,
            "two in flight"
        );
        l.serving_ended(P, LOOP, Some(LOOP), 2 * MS);
        assert_eq!(l.client_parent(P, LOOP, send(152 * MS)), None);
        // Answered A right before the send: the send may be A's post-answer work.
        l.serving_started(P, LOOP, ctx(3), 200 * MS, own(9));
        l.serving_ended(P, LOOP, Some(LOOP), 201 * MS);
        assert_eq!(l.client_parent(P, LOOP, send(201 * MS + 10)), None);
        assert_eq!(l.stats.in_process, 0);
    }

    /// A dedicated thread that starts serving a second connection is shared from then on; so
    /// is a thread whose connection's accept was not seen.
    #[test]
    fn a_thread_reading_several_connections_is_shared() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, handed(7));
        l.serving_ended(P, LOOP, Some(LOOP), MS);
        l.serving_started(P, LOOP, ctx(2), 10 * MS, handed(8));
        let late = 10 * MS + CALL_WINDOW_NS + 1;
        assert_eq!(l.client_parent(P, LOOP, send(late)), None, "late");
        assert_eq!(l.client_parent(P, LOOP, send(11 * MS)), Some(ctx(2)));
        // The accept was not seen: shared.
        l.serving_started(
            P,
            12,
            ctx(3),
            0,
            Served {
                sock: 9,
                accepted_by: None,
            },
        );
        assert_eq!(l.client_parent(P, 12, send(100 * MS)), None);
    }

    /// Sending while serving nothing, long after the last answer: the thread runs work of
    /// its own (timers, background tasks), and none of its sends is linked again.
    #[test]
    fn a_thread_seen_running_deferred_work_is_never_linked_again() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, own(7));
        l.serving_ended(P, LOOP, Some(LOOP), MS);
        // Right after the answer (the handler's own tail): no evidence either way.
        assert_eq!(l.client_parent(P, LOOP, send(MS + 50_000)), None);
        l.serving_started(P, LOOP, ctx(2), 20 * MS, own(7));
        assert_eq!(l.client_parent(P, LOOP, send(20 * MS + 1)), Some(ctx(2)));
        l.serving_ended(P, LOOP, Some(LOOP), 21 * MS);
        // 150 ms later, idle: deferred work.
        assert_eq!(l.client_parent(P, LOOP, send(171 * MS)), None);
        l.serving_started(P, LOOP, ctx(3), 300 * MS, own(7));
        assert_eq!(l.client_parent(P, LOOP, send(300 * MS + 1)), None);
        // So is a dedicated thread's.
        l.serving_started(P, 12, ctx(4), 0, handed(8));
        l.serving_ended(P, 12, Some(12), MS);
        assert_eq!(l.client_parent(P, 12, send(500 * MS)), None);
        l.serving_started(P, 12, ctx(5), 600 * MS, handed(8));
        assert_eq!(l.client_parent(P, 12, send(601 * MS)), None);
        // A new process under the pid starts afresh.
        l.forget_process(P);
        l.serving_started(P, LOOP, ctx(6), 700 * MS, own(7));
        assert_eq!(l.client_parent(P, LOOP, send(700 * MS + 1)), Some(ctx(6)));
    }

    #[test]
    fn one_request_in_flight_gives_a_parent_several_do_not() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, handed(7));
        assert_eq!(l.client_parent(P, LOOP, send(1)), Some(ctx(1)));
        l.serving_started(P, LOOP, ctx(2), 2, handed(7));
        assert_eq!(l.client_parent(P, LOOP, send(3)), None, "two in flight");
        // The later one was answered first: the one left is the earlier, but its send may
        // be the answered one's.
        l.serving_ended(P, LOOP, Some(LOOP), 4);
        assert_eq!(l.client_parent(P, LOOP, send(5)), None);
        l.serving_ended(P, LOOP, Some(LOOP), 6);
        assert_eq!(l.client_parent(P, LOOP, send(7)), None, "nothing in flight");
    }

    #[test]
    fn answering_on_another_thread_disables_in_process_links() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, handed(7));
        l.serving_ended(P, LOOP, Some(12), 1);
        l.serving_started(P, LOOP, ctx(2), 2, handed(7));
        assert_eq!(l.client_parent(P, LOOP, send(3)), None);
        l.forget_process(P);
        l.serving_started(P, LOOP, ctx(3), 4, handed(7));
        assert_eq!(
            l.client_parent(P, LOOP, send(5)),
            Some(ctx(3)),
            "a new process under the pid"
        );
    }

    #[test]
    fn a_full_thread_table_keeps_what_refuses_links() {
        let mut l = Linker::default();
        l.serving_started(P, LOOP, ctx(1), 0, own(7));
        l.serving_ended(P, LOOP, Some(LOOP), 1);
        assert_eq!(l.client_parent(P, LOOP, send(500 * MS)), None);
        for tid in 0..MAX_THREADS as u32 {
            l.serving_started(2, 100_000 + tid, ctx(2), 0, own(7));
            l.serving_ended(2, 100_000 + tid, Some(100_000 + tid), 1);
        }
        assert!(l.stats.threads_evicted > 0);
        l.serving_started(P, LOOP, ctx(3), 600 * MS, own(7));
        assert_eq!(
            l.client_parent(P, LOOP, send(600 * MS + 1)),
            None,
            "still deferred"
        );
    }

    #[test]
    fn unclaimed_requests_expire() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), Sending::http1("GET", "/"), 10);
        l.expire(10 + SENT_TTL_NS + 1);
        assert_eq!(
            l.server_parent(ends(1, 80, 5000), Sending::http1("GET", "/")),
            None
        );
    }
}
