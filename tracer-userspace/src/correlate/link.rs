//! Joining spans into traces on one host, after an incoming `traceparent` (the strongest
//! evidence, handled where requests are read):
//!
//! - **Same-host calls**: a traced client's request and the traced server's view of it are the
//!   two ends of one TCP connection. The client's request is recorded under (client address,
//!   server address); the server finds it there, in order, and checks that method and target
//!   agree. Events are fed in time order (see `reorder`), so the client's write is always
//!   seen before the server's read.
//! - **In-process causality**: a request sent by a thread while that thread serves exactly one
//!   request (read it, has not yet answered) is a child of that server span. Where the
//!   evidence is ambiguous (a thread with several requests in flight, or a process seen
//!   answering on a different thread than the one that read the request, as thread pools and
//!   async runtimes do) no parent is given: a new trace beats a wrong one.

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

/// A client request waiting for its server end.
#[derive(Debug, Clone)]
struct Sent {
    ctx: Context,
    tgid: u32,
    method: String,
    target: String,
    at: u64,
}

/// What a thread is serving.
#[derive(Debug, Clone, Copy)]
struct Serving {
    ctx: Context,
    in_flight: u32,
}

/// Client requests remembered per connection, and for how long.
const MAX_SENT_PER_CONN: usize = 64;
const SENT_TTL_NS: u64 = 30 * 1_000_000_000;
const MAX_CONNS: usize = 65_536;
const MAX_THREADS: usize = 65_536;

/// How often each kind of link was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub same_host: u64,
    pub in_process: u64,
    /// Client requests sent while the evidence was ambiguous: left without a parent.
    pub ambiguous: u64,
}

/// The linking state of the whole host.
#[derive(Debug, Default)]
pub struct Linker {
    sent: FastMap<(SocketAddr, SocketAddr), VecDeque<Sent>>,
    serving: FastMap<(u32, u32), Serving>,
    hopping: FastSet<u32>,
    pub stats: LinkStats,
}

impl Linker {
    /// The parent of a request that thread `tid` of process `tgid` is sending, if that thread
    /// is serving exactly one request.
    pub fn client_parent(&mut self, tgid: u32, tid: u32) -> Option<Context> {
        let serving = self.serving.get(&(tgid, tid))?;
        if serving.in_flight == 1 && !self.hopping.contains(&tgid) {
            self.stats.in_process += 1;
            Some(serving.ctx)
        } else {
            self.stats.ambiguous += 1;
            None
        }
    }

    /// A client request left on `conn`: remember it for the server end.
    pub fn client_sent(&mut self, conn: Ends, ctx: Context, method: &str, target: &str, at: u64) {
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
            method: method.to_string(),
            target: target.to_string(),
            at,
        });
    }

    /// A server received a request on `conn`: the client span that sent it, when that client
    /// is traced on this host.
    pub fn server_parent(&mut self, conn: Ends, method: &str, target: &str) -> Option<Parent> {
        let Ends {
            tgid,
            local,
            remote,
        } = conn;
        let key = (remote, local);
        let queue = self.sent.get_mut(&key)?;
        // Requests are answered in order; one the server never saw (it was already reading
        // when the agent started) is skipped by method and target.
        let found = loop {
            let Some(sent) = queue.pop_front() else {
                break None;
            };
            if sent.method == method && sent.target == target {
                break Some(Parent {
                    ctx: sent.ctx,
                    remote: sent.tgid != tgid,
                });
            }
        };
        if queue.is_empty() {
            self.sent.remove(&key);
        }
        if found.is_some() {
            self.stats.same_host += 1;
        }
        found
    }

    /// Thread `tid` of `tgid` read a request and serves it as `ctx`.
    pub fn serving_started(&mut self, tgid: u32, tid: u32, ctx: Context) {
        if self.serving.len() >= MAX_THREADS && !self.serving.contains_key(&(tgid, tid)) {
            self.serving.clear();
        }
        let s = self
            .serving
            .entry((tgid, tid))
            .or_insert(Serving { ctx, in_flight: 0 });
        s.ctx = ctx;
        s.in_flight += 1;
    }

    /// The request `reader` read is over (answered by `writer`, or abandoned).
    pub fn serving_ended(&mut self, tgid: u32, reader: u32, writer: Option<u32>) {
        if let Some(w) = writer
            && w != reader
        {
            // This process answers on other threads: thread-based causality is unreliable.
            self.hopping.insert(tgid);
        }
        if let Some(s) = self.serving.get_mut(&(tgid, reader)) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                self.serving.remove(&(tgid, reader));
            }
        }
    }

    /// A process exited: forget its threads.
    pub fn forget_process(&mut self, tgid: u32) {
        self.serving.retain(|(p, _), _| *p != tgid);
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

    #[test]
    fn server_finds_the_client_span_of_its_connection_in_order() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), "GET", "/a", 10);
        l.client_sent(ends(2, 5000, 80), ctx(2), "GET", "/b", 20);
        let found = |l: &mut Linker, target| {
            l.server_parent(ends(1, 80, 5000), "GET", target)
                .map(|p| p.ctx)
        };
        assert_eq!(found(&mut l, "/a"), Some(ctx(1)));
        assert_eq!(found(&mut l, "/b"), Some(ctx(2)));
        assert_eq!(found(&mut l, "/c"), None);
        // Another connection's requests are never taken.
        l.client_sent(ends(2, 5001, 80), ctx(3), "GET", "/a", 30);
        assert_eq!(found(&mut l, "/a"), None);
        assert_eq!(l.stats.same_host, 2);
    }

    #[test]
    fn a_client_in_another_process_is_a_remote_parent_one_in_the_same_is_not() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), "GET", "/", 10);
        l.client_sent(ends(1, 5001, 80), ctx(2), "GET", "/", 20);
        let other = l.server_parent(ends(1, 80, 5000), "GET", "/").unwrap();
        let same = l.server_parent(ends(1, 80, 5001), "GET", "/").unwrap();
        assert_eq!((other.ctx, other.remote), (ctx(1), true));
        assert_eq!((same.ctx, same.remote), (ctx(2), false));
    }

    #[test]
    fn a_request_the_server_missed_is_skipped() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), "GET", "/missed", 10);
        l.client_sent(ends(2, 5000, 80), ctx(2), "POST", "/seen", 20);
        assert_eq!(
            l.server_parent(ends(1, 80, 5000), "POST", "/seen")
                .map(|p| p.ctx),
            Some(ctx(2))
        );
    }

    #[test]
    fn one_request_in_flight_gives_a_parent_several_do_not() {
        let mut l = Linker::default();
        l.serving_started(1, 11, ctx(1));
        assert_eq!(l.client_parent(1, 11), Some(ctx(1)));
        assert_eq!(
            l.client_parent(1, 12),
            None,
            "another thread serves nothing"
        );
        l.serving_started(1, 11, ctx(2));
        assert_eq!(
            l.client_parent(1, 11),
            None,
            "two requests in flight: ambiguous"
        );
        l.serving_ended(1, 11, Some(11));
        l.serving_ended(1, 11, Some(11));
        assert_eq!(l.client_parent(1, 11), None, "nothing in flight");
    }

    #[test]
    fn answering_on_another_thread_disables_in_process_links() {
        let mut l = Linker::default();
        l.serving_started(1, 11, ctx(1));
        l.serving_ended(1, 11, Some(12));
        l.serving_started(1, 11, ctx(2));
        assert_eq!(l.client_parent(1, 11), None);
        l.forget_process(1);
        l.serving_started(1, 11, ctx(3));
        assert_eq!(
            l.client_parent(1, 11),
            Some(ctx(3)),
            "a new process under the pid"
        );
    }

    #[test]
    fn unclaimed_requests_expire() {
        let mut l = Linker::default();
        l.client_sent(ends(2, 5000, 80), ctx(1), "GET", "/", 10);
        l.expire(10 + SENT_TTL_NS + 1);
        assert_eq!(l.server_parent(ends(1, 80, 5000), "GET", "/"), None);
    }
}
