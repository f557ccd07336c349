//! Exchanges, whatever the protocol: the ids and parent a request gets when it starts, what
//! its progress tells the linker, and the finished exchange spans are made of. A protocol's
//! session ([`super::http1`] for HTTP/1.x) finds the messages and pairs requests with
//! responses; it reports them here as [`Request`]s and [`Response`]s.

use tracer_common::TraceIds;

use crate::protocol::Request;

use super::{
    ids::{IdGen, TraceParent},
    link::{Call, Context, Ends, Linker, Parent, Served},
    span::{Kind, Response},
};

/// What feeding a connection needs from the rest of the pipeline.
pub struct Env<'a> {
    pub sampler: super::sample::Sampler,
    pub ids: &'a mut IdGen,
    pub links: &'a mut Linker,
    pub tgid: u32,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The connection's socket.
    pub sock: u64,
    /// Which thread accepted or connected the connection, and when, if that was seen.
    pub opened: Option<Opened>,
    /// Where exchanges go as they finish (the pipeline takes them after each feed).
    pub finished: &'a mut Vec<Finished>,
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

/// A request seen, with the ids it was given.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request: Request,
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

/// What the kernel said about the next request to start on a connection.
#[derive(Debug, Default)]
pub struct Hints {
    /// Ids the kernel gave it (`--propagate`).
    pub kernel_ids: Option<TraceIds>,
    /// Its `traceparent`, found by the kernel past the capture window.
    pub late_traceparent: Option<String>,
}

/// Where a request starts: on a connection of role `kind`, read (server) or written (client)
/// by thread `tid` at `ts`. `first` is true when it is the connection's first message.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub kind: Kind,
    pub tid: u32,
    pub ts: u64,
    pub first: bool,
}

/// A request starts: its ids and parent, and the linker told. `body_size` is its body's size
/// when the head declares it.
pub fn begin(
    env: &mut Env<'_>,
    at: Start,
    request: Request,
    hints: &mut Hints,
    body_size: Option<u64>,
) -> Pending {
    let late = hints.late_traceparent.take();
    let incoming = request
        .traceparent
        .as_deref()
        .or(late.as_deref())
        .and_then(TraceParent::parse);
    // With --propagate the kernel chose this request's ids (and, for a client request,
    // wrote them into it): they are the ones the next hop sees.
    let kernel = hints.kernel_ids.take();
    let mut suppressed = false;
    let parent = match at.kind {
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
            .or_else(|| env.links.server_parent(env.ends(), request.sending())),
        Kind::Client => {
            suppressed = request.traceparent.is_some();
            if suppressed {
                None
            } else {
                // The call began at its connect when this thread connected for it.
                let connected_at = env
                    .opened
                    .filter(|o| o.tid == at.tid && at.first)
                    .map(|o| o.at);
                let call = Call {
                    sent_at: at.ts,
                    connected_at,
                };
                let parent = env.links.client_parent(env.tgid, at.tid, call);
                match &kernel {
                    // The injected trace is the one the callee continues: a parent in
                    // another trace would split the span from it.
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
    // The sampled flag is the decision: the parent's for the parent-based samplers, else
    // the root decision on the trace id (the kernel's injected contexts decide alike).
    let (trace_id, parent_span_id, trace_flags) = match (parent.map(|p| p.ctx), &kernel) {
        (Some(p), _) => (
            p.trace_id,
            Some(p.span_id),
            env.sampler.flags(Some(p.flags), &p.trace_id),
        ),
        (None, Some(k)) => (k.trace_id, None, env.sampler.flags(None, &k.trace_id)),
        (None, None) => {
            let trace_id = env.ids.trace_id();
            (trace_id, None, env.sampler.flags(None, &trace_id))
        }
    };
    let ctx = Context {
        trace_id,
        span_id,
        flags: trace_flags,
    };
    match at.kind {
        Kind::Server => env.links.serving_started(
            env.tgid,
            at.tid,
            ctx,
            at.ts,
            Served {
                sock: env.sock,
                accepted_by: env.opened.map(|o| o.tid),
            },
        ),
        Kind::Client if !suppressed => {
            env.links
                .client_sent(env.ends(), ctx, request.sending(), at.ts)
        }
        Kind::Client => {}
    }
    Pending {
        request,
        start_ns: at.ts,
        tid: at.tid,
        trace_id,
        span_id,
        parent_span_id,
        parent_remote: parent.is_some_and(|p| p.remote),
        trace_flags,
        request_body_size: body_size,
        suppressed,
    }
}

/// The whole of request `p` is in at `ts` (thread `tid`): a server's handler starts from here.
pub fn request_read(env: &mut Env<'_>, kind: Kind, p: &Pending, tid: u32, ts: u64) {
    if kind == Kind::Server {
        env.links.request_read(env.tgid, tid, p.span_id, ts);
    }
}

/// The response to `p` starts at `ts` (thread `tid`): a server's work for it is done.
pub fn answered(env: &mut Env<'_>, kind: Kind, p: &Pending, tid: u32, ts: u64) {
    if kind == Kind::Server {
        env.links.serving_ended(env.tgid, p.tid, Some(tid), ts);
    }
}

/// The connection ended at `end` and `p` was never answered: nothing is invented for it.
pub fn unanswered(env: &mut Env<'_>, kind: Kind, p: Pending, end: u64) -> Finished {
    if kind == Kind::Server {
        env.links.serving_ended(env.tgid, p.tid, None, end);
    }
    Finished {
        kind,
        request: p,
        response: None,
        end_ns: end,
    }
}
