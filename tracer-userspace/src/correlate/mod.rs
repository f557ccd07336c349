//! From events to spans: route each event to its connection, pair requests with responses, and
//! assemble spans with the process, addresses and kernel timestamps they belong to.

pub mod clock;
pub mod exchange;
pub mod http1;
pub mod http2;
pub mod ids;
pub mod link;
pub mod process;
pub mod reorder;
pub mod route;
pub mod sample;
pub mod session;
pub mod span;
#[cfg(test)]
mod tests;

use tracer_common::{direction, flag, kind};

use crate::{
    capture::event::{Event, comm_str, endpoints, trace_ids},
    conn::{ConnKey, Limits, Source, Table},
    protocol::http1::stream::Chunk,
};

use self::{
    exchange::{Env, Finished, Opened},
    ids::IdGen,
    link::{LinkStats, Linker},
    process::Processes,
    session::Session,
    span::{HttpSpan, Kind},
};

/// What the pipeline has seen and lost, for the periodic report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub spans: u64,
    pub spans_without_response: u64,
    /// Requests whose exchange was still open when the pipeline finished (shutdown): not
    /// exported, since their responses may simply not have come yet.
    pub open_at_finish: u64,
    pub unmatched_responses: u64,
    pub pending_overflow: u64,
    pub desyncs: u64,
    pub evicted_full: u64,
    pub evicted_idle: u64,
    pub connections: u64,
    /// Connections whose socket bytes turned out to be TLS records: not parsed, and no longer
    /// copied by the kernel.
    pub tls_connections: u64,
    /// TLS plaintext events dropped: their connection was inferred (OpenSSL on memory
    /// buffers), and that connection's own bytes are known not to be TLS.
    pub tls_misattributed: u64,
    /// Client spans not exported: the program sent its own `traceparent` (instrumented).
    pub suppressed_instrumented: u64,
    pub links: LinkStats,
}

/// A connection's state plus what the pipeline needs to name its spans.
struct Conn {
    session: Session,
    /// The descriptor the process last used for it.
    fd: i32,
    /// Whether the capture of its bytes was asked to stop.
    muted: bool,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    /// The accept or connect that opened it, when seen.
    opened: Option<Opened>,
    comm: [u8; tracer_common::COMM_LEN],
}

type FinishedAt = (
    ConnKey,
    std::net::SocketAddr,
    std::net::SocketAddr,
    [u8; 16],
    Finished,
);

/// A connection borrowed from the table, with the fields feeding it needs.
struct ConnRef<'t> {
    conn: &'t mut Conn,
    sampler: sample::Sampler,
    ids: &'t mut IdGen,
    links: &'t mut Linker,
    finished: &'t mut Vec<FinishedAt>,
    exchanges: &'t mut Vec<Finished>,
    mutes: &'t mut Vec<Mute>,
}

/// A connection whose bytes the kernel may stop capturing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mute {
    pub tgid: u32,
    pub fd: i32,
    pub sock: u64,
}

/// What spans carry beyond the defaults, as the user opted in.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Header names (lower case) whose values are exported.
    pub headers: std::sync::Arc<[String]>,
    /// Export `url.query` with its values redacted.
    pub query: bool,
    /// Route templates for `http.route` on server requests.
    pub routes: std::sync::Arc<route::Routes>,
}

/// The userspace pipeline. One owner (the capture task) feeds it events in ring-buffer order.
pub struct Pipeline {
    conns: Table<Conn>,
    processes: Processes,
    ids: IdGen,
    stats: Stats,
    /// Exchanges finished by the last call, waiting to become spans.
    finished: Vec<FinishedAt>,
    /// Where a connection's feed puts the exchanges it finished (kept, so that finishing
    /// one allocates nothing).
    exchanges: Vec<Finished>,
    /// Connections found to be of no further use, for the capture side to mute.
    mutes: Vec<Mute>,
    capture: Capture,
    links: Linker,
    sampler: sample::Sampler,
}

impl Pipeline {
    pub fn new(limits: Limits, ids: IdGen, processes: Processes) -> Self {
        Pipeline {
            conns: Table::new(limits),
            processes,
            ids,
            stats: Stats::default(),
            finished: Vec::new(),
            exchanges: Vec::new(),
            mutes: Vec::new(),
            capture: Capture::default(),
            links: Linker::default(),
            sampler: sample::Sampler::default(),
        }
    }

    /// Which traces are sampled: spans carry the decision in their flags.
    pub fn sampling(mut self, sampler: sample::Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Opt-in content: headers and redacted queries.
    pub fn capturing(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }

    /// Feed one event; spans it completes are passed to `out`.
    pub fn on_event(&mut self, ev: &Event<'_>, out: &mut impl FnMut(HttpSpan)) {
        self.stats.events += 1;
        let h = &ev.header;
        let key = ConnKey {
            tgid: h.tgid,
            sock: h.sock,
            // Decoding refused any other value.
            source: Source::from_wire(h.source).unwrap_or(Source::Socket),
        };
        match h.kind {
            kind::OPEN => {
                // A new connection on a reused socket address: finish whatever was there.
                self.retire_all(key, h.ts_exit_ns);
                let role = if h.direction == direction::INGRESS {
                    Kind::Server
                } else {
                    Kind::Client
                };
                let exe = String::from_utf8_lossy(ev.payload);
                self.processes.learn(h.tgid, comm_str(&h.comm), &exe);
                self.conn(key, ev, Some(role)).conn.opened = Some(Opened {
                    tid: h.tid,
                    at: h.ts_exit_ns,
                });
            }
            kind::DATA => {
                if h.flags & flag::FD_INFERRED != 0 && self.known_plain(key) {
                    self.stats.tls_misattributed += 1;
                    return;
                }
                let ingress = ev.is_ingress();
                // Bytes into the process: the first byte is there when the read returns.
                // Bytes out: the first byte leaves when the write starts.
                let ts_first = if ingress { h.ts_exit_ns } else { h.ts_enter_ns };
                let c = self.conn(key, ev, None);
                let beyond = c.conn.session.take_frames(h.direction, h.ts_exit_ns);
                let chunk = Chunk {
                    data: ev.payload,
                    total: h.total_len,
                    ts_first,
                    ts_last: h.ts_exit_ns,
                    beyond: &beyond,
                };
                c.conn.fd = h.fd;
                let mut env = Env {
                    sampler: c.sampler,
                    ids: c.ids,
                    links: c.links,
                    tgid: key.tgid,
                    local: c.conn.local,
                    remote: c.conn.remote,
                    sock: key.sock,
                    opened: c.conn.opened,
                    finished: c.exchanges,
                };
                c.conn.session.data(ingress, chunk, h.tid, &mut env);
                let mut tls = false;
                if !c.conn.muted && c.conn.session.is_done() {
                    c.conn.muted = true;
                    tls = c.conn.session.carries_tls();
                    // The kernel can stop copying a socket's bytes; a TLS library's plaintext
                    // of a connection that carries nothing of use is only ignored here.
                    if key.source == Source::Socket {
                        c.mutes.push(Mute {
                            tgid: key.tgid,
                            fd: h.fd,
                            sock: key.sock,
                        });
                    }
                }
                let (local, remote, comm) = (c.conn.local, c.conn.remote, c.conn.comm);
                for f in env.finished.drain(..) {
                    c.finished.push((key, local, remote, comm, f));
                }
                self.stats.tls_connections += u64::from(tls);
            }
            kind::CONTEXT | kind::INJECT => {
                if let Some(ids) = trace_ids(ev.payload) {
                    match self.conns.get_mut(&key) {
                        Some(c) => c.session.expect_kernel_ids(ids),
                        // A server read carries the connection's endpoints; an injection
                        // does not, and its send's own event will not be far behind.
                        None if h.kind == kind::CONTEXT => {
                            self.conn(key, ev, None).conn.session.expect_kernel_ids(ids)
                        }
                        None => {}
                    }
                }
            }
            kind::FRAMES => {
                self.conn(key, ev, None).conn.session.frames_beyond(
                    h.direction,
                    h.ts_exit_ns,
                    ev.payload.to_vec(),
                );
            }
            kind::TRACEPARENT => {
                if let Ok(value) = std::str::from_utf8(ev.payload) {
                    let value = value.to_string();
                    self.conn(key, ev, None)
                        .conn
                        .session
                        .expect_traceparent(value);
                }
            }
            kind::CLOSE => self.retire_all(key, h.ts_exit_ns),
            kind::EXIT => {
                // The kernel closed the process's sockets: its connections end here.
                for (k, conn) in self.conns.remove_process(h.tgid) {
                    self.retire(k, conn, h.ts_exit_ns);
                }
                self.links.forget_process(h.tgid);
            }
            _ => {}
        }
        self.emit(out);
    }

    /// Periodic housekeeping at kernel time `now`: evict idle connections.
    pub fn tick(&mut self, now: u64, out: &mut impl FnMut(HttpSpan)) {
        self.links.expire(now);
        let mut idle = Vec::new();
        self.conns.evict_idle(now, |k, c| idle.push((k, c)));
        for (k, c) in idle {
            let last = c.session.last_ns;
            self.retire(k, c, last);
        }
        self.emit(out);
    }

    /// Shutdown: exchanges still open are dropped (their responses may simply not have
    /// arrived yet), and counted.
    pub fn finish(&mut self, out: &mut impl FnMut(HttpSpan)) {
        self.emit(out);
        let mut open = 0;
        self.conns.drain(|_, c| open += c.session.open_requests());
        self.stats.open_at_finish += open;
    }

    /// Connections found since the last call to carry nothing more of use.
    pub fn take_mutes(&mut self) -> Vec<Mute> {
        std::mem::take(&mut self.mutes)
    }

    /// Name a process, as a recording does.
    pub fn add_process(&mut self, p: process::Process) {
        self.processes.insert(p);
    }

    pub fn stats(&self) -> Stats {
        Stats {
            evicted_full: self.conns.evicted_full,
            evicted_idle: self.conns.evicted_idle,
            connections: self.conns.len() as u64,
            links: self.links.stats,
            ..self.stats
        }
    }

    /// The connection `key`, created from `ev` if new (evicting the least recent one when the
    /// table is full). Borrows only the table, so callers can use the other fields alongside.
    fn conn<'t>(&'t mut self, key: ConnKey, ev: &Event<'_>, role: Option<Kind>) -> ConnRef<'t> {
        if let Some((k, c)) = self.conns.make_room_for(&key) {
            let last = c.session.last_ns;
            self.retire(k, c, last);
        }
        let (local, remote) = endpoints(&ev.header.tuple);
        // Data events after a connection's first leave the process's name out (the kernel
        // saves two reads per event): a connection the pipeline forgot and meets again takes
        // the name its process is known by.
        let comm = if ev.header.comm[0] != 0 {
            ev.header.comm
        } else {
            self.processes.comm_of(key.tgid)
        };
        let fd = ev.header.fd;
        let headers = self.capture.headers.clone();
        // A TLS library's plaintext starts after its socket was accepted or connected: what
        // the socket's open said (the role, who opened it) holds for the plaintext too.
        let (role, opened) = match (key.source, role) {
            (Source::Tls, None) => self
                .conns
                .get_mut(&key.with_source(Source::Socket))
                .map_or((None, None), |s| (s.session.role(), s.opened)),
            _ => (role, None),
        };
        let conn = self
            .conns
            .get_or_insert(key, ev.header.ts_exit_ns, || Conn {
                session: Session::new(role, &headers),
                fd,
                muted: false,
                local,
                remote,
                opened,
                comm,
            });
        ConnRef {
            conn,
            sampler: self.sampler,
            ids: &mut self.ids,
            links: &mut self.links,
            finished: &mut self.finished,
            exchanges: &mut self.exchanges,
            mutes: &mut self.mutes,
        }
    }

    /// Whether the socket under the TLS stream `key` is known to carry something else than TLS.
    fn known_plain(&self, key: ConnKey) -> bool {
        self.conns
            .get(&key.with_source(Source::Socket))
            .is_some_and(|c| c.session.known_not_tls())
    }

    /// The socket of `key` closed or was reused: finish both of its byte streams.
    fn retire_all(&mut self, key: ConnKey, ts: u64) {
        for source in Source::ALL {
            let key = key.with_source(source);
            if let Some(conn) = self.conns.remove(&key) {
                self.retire(key, conn, ts);
            }
        }
    }

    /// A connection is gone (closed, evicted): finish its exchanges.
    fn retire(&mut self, key: ConnKey, mut conn: Conn, ts: u64) {
        let mut env = Env {
            sampler: self.sampler,
            ids: &mut self.ids,
            links: &mut self.links,
            tgid: key.tgid,
            local: conn.local,
            remote: conn.remote,
            sock: key.sock,
            opened: conn.opened,
            finished: &mut self.exchanges,
        };
        conn.session.close(ts, &mut env);
        let losses = conn.session.take_losses();
        self.stats.unmatched_responses += losses.unmatched_responses;
        self.stats.pending_overflow += losses.pending_overflow;
        self.stats.desyncs += conn.session.desyncs();
        for f in self.exchanges.drain(..) {
            self.finished
                .push((key, conn.local, conn.remote, conn.comm, f));
        }
    }

    fn emit(&mut self, out: &mut impl FnMut(HttpSpan)) {
        for (key, local, remote, comm, f) in self.finished.drain(..) {
            let process = self.processes.get(key.tgid, comm_str(&comm));
            let r = f.request;
            if r.suppressed {
                self.stats.suppressed_instrumented += 1;
                continue;
            }
            if f.response.is_none() {
                self.stats.spans_without_response += 1;
            }
            self.stats.spans += 1;
            let route = if f.kind == Kind::Server
                && !r.request.grpc
                && !r.request.undecoded.contains(&":path")
            {
                let path = crate::correlate::span::path_of(&r.request.target);
                self.capture.routes.route_of(path)
            } else {
                None
            };
            out(HttpSpan {
                trace_id: r.trace_id,
                span_id: r.span_id,
                parent_span_id: r.parent_span_id,
                parent_remote: r.parent_remote,
                trace_flags: r.trace_flags,
                tracestate: r.request.tracestate.clone(),
                kind: f.kind,
                start_ns: r.start_ns,
                end_ns: f.end_ns.max(r.start_ns),
                process,
                tid: r.tid,
                method: r.request.method,
                target: r.request.target,
                version: r.request.version,
                host: r.request.host,
                user_agent: r.request.user_agent,
                request_body_size: r.request_body_size,
                response: f.response,
                local,
                remote,
                head_truncated: r.request.truncated,
                request_headers: r.request.captured,
                capture_query: self.capture.query,
                tls: key.source == Source::Tls,
                grpc: r.request.grpc,
                undecoded: r.request.undecoded,
                route,
            });
        }
    }
}
