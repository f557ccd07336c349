//! The pipeline fed event sequences shaped like the ones the probes record (python's
//! http.server answering curl, nginx keep-alive, pipelining, lost responses), checked span by
//! span.

use tracer_common::{ConnTuple, EventHeader, direction, kind, syscall};

use super::{
    Pipeline,
    ids::{IdGen, to_hex},
    process::{Process, Processes},
    span::{HttpSpan, Kind, NO_RESPONSE, Value},
};
use crate::{capture::event::Event, conn::Limits};

const SERVER_PID: u32 = 100;
const CLIENT_PID: u32 = 200;
const SERVER_SOCK: u64 = 0xaaaa;
const CLIENT_SOCK: u64 = 0xbbbb;

fn tuple(local_port: u16, remote_port: u16) -> ConnTuple {
    let mut t = ConnTuple {
        family: 2,
        local_port,
        remote_port,
        ..Default::default()
    };
    t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t
}

/// A recorded exchange, event by event.
struct Recording {
    events: Vec<(EventHeader, Vec<u8>)>,
}

impl Recording {
    fn new() -> Self {
        Recording { events: Vec::new() }
    }

    fn header(pid: u32, sock: u64, kind: u8, dir: u8, ts: (u64, u64)) -> EventHeader {
        let (local, remote) = if pid == SERVER_PID {
            (8080, 50000)
        } else {
            (50000, 8080)
        };
        let mut comm = [0u8; 16];
        let name: &[u8] = if pid == SERVER_PID {
            b"server"
        } else {
            b"client"
        };
        comm[..name.len()].copy_from_slice(name);
        EventHeader {
            ts_enter_ns: ts.0,
            ts_exit_ns: ts.1,
            sock,
            tgid: pid,
            tid: pid + 1,
            fd: 5,
            kind,
            direction: dir,
            syscall: if dir == direction::INGRESS {
                syscall::RECVFROM
            } else {
                syscall::SENDTO
            },
            tuple: tuple(local, remote),
            comm,
            ..Default::default()
        }
    }

    fn open(mut self, pid: u32, sock: u64, role: u8, ts: u64) -> Self {
        self.events.push((
            Self::header(pid, sock, kind::OPEN, role, (ts, ts)),
            Vec::new(),
        ));
        self
    }

    /// Bytes moved at [enter, exit], of which the first `captured` were copied.
    fn data(
        mut self,
        pid: u32,
        sock: u64,
        dir: u8,
        ts: (u64, u64),
        bytes: &[u8],
        total: u64,
    ) -> Self {
        let mut h = Self::header(pid, sock, kind::DATA, dir, ts);
        h.total_len = total;
        h.captured_len = bytes.len() as u32;
        self.events.push((h, bytes.to_vec()));
        self
    }

    fn all(self, pid: u32, sock: u64, dir: u8, ts: (u64, u64), bytes: &[u8]) -> Self {
        let n = bytes.len() as u64;
        self.data(pid, sock, dir, ts, bytes, n)
    }

    /// The last event's bytes are a TLS library's plaintext (by default: socket bytes).
    fn tls(mut self) -> Self {
        self.events.last_mut().expect("an event").0.source = tracer_common::source::TLS;
        self
    }

    /// The last event carries no process name (the kernel names a connection once).
    fn nameless(mut self) -> Self {
        self.events.last_mut().expect("an event").0.comm = [0; 16];
        self
    }

    /// The last event was made by thread `tid` (by default the process's first thread).
    fn by(mut self, tid: u32) -> Self {
        self.events.last_mut().expect("an event").0.tid = tid;
        self
    }

    fn close(mut self, pid: u32, sock: u64, ts: u64) -> Self {
        self.events.push((
            Self::header(pid, sock, kind::CLOSE, 0, (ts, ts)),
            Vec::new(),
        ));
        self
    }

    fn run(&self) -> (Vec<HttpSpan>, super::Stats) {
        self.run_capturing(super::Capture::default())
    }

    fn run_capturing(&self, capture: super::Capture) -> (Vec<HttpSpan>, super::Stats) {
        let (spans, stats, _) = self.run_muting(capture);
        (spans, stats)
    }

    /// Also the connections the pipeline asked the kernel to stop copying.
    fn run_muting(
        &self,
        capture: super::Capture,
    ) -> (Vec<HttpSpan>, super::Stats, Vec<super::Mute>) {
        self.run_full(capture, super::sample::Sampler::default())
    }

    fn run_sampling(&self, sampler: super::sample::Sampler) -> Vec<HttpSpan> {
        self.run_full(super::Capture::default(), sampler).0
    }

    fn run_full(
        &self,
        capture: super::Capture,
        sampler: super::sample::Sampler,
    ) -> (Vec<HttpSpan>, super::Stats, Vec<super::Mute>) {
        let mut processes = Processes::new();
        for (pid, name) in [(SERVER_PID, "server"), (CLIENT_PID, "client")] {
            processes.insert(Process {
                pid,
                comm: name.into(),
                executable_name: name.into(),
                executable_path: None,
                service: Default::default(),
                container_id: None,
            });
        }
        let mut p = Pipeline::new(Limits::default(), IdGen::seeded(7), processes)
            .capturing(capture)
            .sampling(sampler);
        let mut spans = Vec::new();
        let mut mutes = Vec::new();
        for (h, payload) in &self.events {
            let ev = Event {
                header: *h,
                payload,
            };
            p.on_event(&ev, &mut |s| spans.push(s));
            mutes.extend(p.take_mutes());
        }
        p.finish(&mut |s| spans.push(s));
        (spans, p.stats(), mutes)
    }
}

fn attr(s: &HttpSpan, key: &str) -> Option<Value> {
    s.attributes()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

const IN: u8 = direction::INGRESS;
const OUT: u8 = direction::EGRESS;

/// curl -> python http.server, as recorded: the request in one send, the response head and
/// body in two sends (HTTP/1.0, Content-Length), then both sides close.
fn python_exchange() -> Recording {
    let req = b"GET /index.html?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    let head = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Type: text/html\r\nContent-Length: 26\r\n\r\n";
    let body = b"<p>hello from python</p>\n\n";
    Recording::new()
        .open(CLIENT_PID, CLIENT_SOCK, OUT, 1_000)
        .open(SERVER_PID, SERVER_SOCK, IN, 1_100)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (2_000, 2_100), req)
        .all(SERVER_PID, SERVER_SOCK, IN, (1_500, 2_200), req)
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_000, 3_100), head)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (2_300, 3_200), head)
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_300, 3_400), body)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (3_250, 3_450), body)
        .close(SERVER_PID, SERVER_SOCK, 3_600)
        .close(CLIENT_PID, CLIENT_SOCK, 3_700)
}

#[test]
fn one_request_gives_one_server_and_one_client_span() {
    let (spans, stats) = python_exchange().run();
    assert_eq!(spans.len(), 2);
    let server = spans.iter().find(|s| s.kind == Kind::Server).unwrap();
    let client = spans.iter().find(|s| s.kind == Kind::Client).unwrap();

    // Server: first byte when its read returned, last byte when its last write returned.
    assert_eq!((server.start_ns, server.end_ns), (2_200, 3_400));
    // Client: first byte when its write started, last byte when its last read returned.
    assert_eq!((client.start_ns, client.end_ns), (2_000, 3_450));
    assert_eq!(server.process.pid, SERVER_PID);
    assert_eq!(client.process.pid, CLIENT_PID);
    assert_eq!(server.tid, SERVER_PID + 1);

    assert_eq!(server.name(), "GET");
    assert_eq!(
        attr(server, "url.path"),
        Some(Value::Str("/index.html".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(Value::Int(200))
    );
    assert_eq!(
        attr(server, "http.response.body.size"),
        Some(Value::Int(26))
    );
    assert_eq!(
        attr(server, "http.request.body.size"),
        None,
        "a GET declares no body"
    );
    assert_eq!(attr(server, "client.port"), Some(Value::Int(50000)));
    assert_eq!(attr(server, "server.port"), Some(Value::Int(8080)));
    assert_eq!(
        attr(server, "user_agent.original"),
        Some(Value::Str("curl/7.88.1".into()))
    );
    assert_eq!(
        attr(client, "url.full"),
        Some(Value::Str("http://127.0.0.1:8080/index.html".into()))
    );
    assert_eq!(attr(client, "network.peer.port"), Some(Value::Int(8080)));
    assert!(!server.is_error() && !client.is_error());
    // The two ends of one connection on one host: one trace, the server under the client.
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(server.parent_span_id, Some(client.span_id));
    assert_eq!(client.parent_span_id, None);
    assert_eq!(stats.links.same_host, 1);
    assert_eq!(stats.spans, 2);
    assert_eq!(stats.connections, 0, "closed connections leave the table");
}

#[test]
fn keep_alive_requests_pair_in_order() {
    let mut r = Recording::new().open(SERVER_PID, SERVER_SOCK, IN, 10);
    for i in 0..100u64 {
        let t = 1_000 + i * 100;
        let req = format!("GET /item/{i} HTTP/1.1\r\nHost: shop\r\n\r\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{i}",
            i.to_string().len()
        );
        r = r
            .all(SERVER_PID, SERVER_SOCK, IN, (t, t + 10), req.as_bytes())
            .all(
                SERVER_PID,
                SERVER_SOCK,
                OUT,
                (t + 50, t + 60),
                resp.as_bytes(),
            );
    }
    let (spans, _) = r.run();
    assert_eq!(spans.len(), 100);
    for (i, s) in spans.iter().enumerate() {
        let t = 1_000 + i as u64 * 100;
        assert_eq!(s.path(), format!("/item/{i}"));
        assert_eq!((s.start_ns, s.end_ns), (t + 10, t + 60));
    }
}

#[test]
fn pipelined_requests_get_one_span_each() {
    let reqs = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
    // The HEAD response declares a length but carries no body.
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let (spans, stats) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(SERVER_PID, SERVER_SOCK, IN, (100, 110), reqs)
        .all(SERVER_PID, SERVER_SOCK, OUT, (200, 210), resps)
        .run();
    let got: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                s.method.as_str(),
                s.path(),
                s.response.as_ref().and_then(|r| r.status),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("GET", "/a", Some(200)),
            ("HEAD", "/b", Some(200)),
            ("POST", "/c", Some(201))
        ]
    );
    assert_eq!(spans[2].request_body_size, Some(4));
    assert_eq!(stats.unmatched_responses, 0);
}

#[test]
fn no_response_is_never_invented() {
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100, 110),
            b"GET /slow HTTP/1.1\r\n\r\n",
        )
        .close(SERVER_PID, SERVER_SOCK, 5_000)
        .run();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert!(s.response.is_none());
    assert_eq!(attr(s, "http.response.status_code"), None);
    assert_eq!(attr(s, "error.type"), Some(Value::Str(NO_RESPONSE.into())));
    assert!(s.is_error());
    // Ends when the connection was seen to end.
    assert_eq!((s.start_ns, s.end_ns), (110, 5_000));
}

#[test]
fn connection_already_open_picks_up_at_the_next_request() {
    // No open event; the first bytes seen are the tail of an earlier response.
    let (spans, stats) = Recording::new()
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (100, 110),
            b"tail of a body from before",
        )
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            OUT,
            (200, 210),
            b"GET /next HTTP/1.1\r\nHost: api:9000\r\n\r\n",
        )
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (300, 310),
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
        )
        .run();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, Kind::Client);
    assert_eq!(spans[0].response.as_ref().unwrap().status, Some(503));
    assert!(spans[0].is_error());
    assert_eq!(spans[0].server(), ("api".to_string(), 9000));
    assert_eq!(stats.unmatched_responses, 0);
}

/// Data events after a connection's first carry no process name. A connection the pipeline
/// meets again after forgetting it (evicted, or closed in the pipeline's view) is named as its
/// process is known, not by an empty name, which would describe the process afresh as nameless.
#[test]
fn a_connection_met_without_a_name_takes_its_process_name() {
    let (spans, _) = Recording::new()
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            OUT,
            (200, 210),
            b"GET /next HTTP/1.1\r\nHost: api:9000\r\n\r\n",
        )
        .nameless()
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (300, 310),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .nameless()
        .run();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].process.comm, "client");
    assert_eq!(spans[0].process.executable_name, "client");
}

#[test]
fn non_http_traffic_gives_nothing() {
    let mut r = Recording::new().open(SERVER_PID, SERVER_SOCK, IN, 10);
    for i in 0..20 {
        r = r.all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100 + i, 101 + i),
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        );
    }
    let (spans, stats) = r.run();
    assert!(spans.is_empty());
    assert_eq!(stats.unmatched_responses, 0);
}

#[test]
fn incoming_traceparent_is_continued() {
    let req = b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: vendor=1\r\n\r\n";
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(SERVER_PID, SERVER_SOCK, IN, (100, 110), req)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (200, 210),
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .run();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        to_hex(&spans[0].trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        spans[0].parent_span_id.map(|p| to_hex(&p)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(spans[0].tracestate.as_deref(), Some("vendor=1"));
}

fn sampler(name: &str, ratio: &str) -> super::sample::Sampler {
    super::sample::Sampler::from_env(|k| match k {
        "OTEL_TRACES_SAMPLER" => Some(name.to_string()),
        "OTEL_TRACES_SAMPLER_ARG" => Some(ratio.to_string()),
        _ => None,
    })
    .unwrap()
}

/// A server that calls out while serving: the incoming context, the server span, and the
/// client span it makes.
fn served_with_a_call(traceparent: Option<&str>) -> Recording {
    const OUT_SOCK: u64 = 0xcccc;
    let req = match traceparent {
        Some(tp) => format!("GET /front HTTP/1.1\r\ntraceparent: {tp}\r\n\r\n"),
        None => "GET /front HTTP/1.1\r\n\r\n".to_string(),
    };
    Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(SERVER_PID, SERVER_SOCK, IN, (100, 110), req.as_bytes())
        .open(SERVER_PID, OUT_SOCK, OUT, 120)
        .all(
            SERVER_PID,
            OUT_SOCK,
            OUT,
            (130, 140),
            b"GET /back HTTP/1.1\r\n\r\n",
        )
        .all(
            SERVER_PID,
            OUT_SOCK,
            IN,
            (150, 160),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (170, 180),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
}

/// The parent-based samplers follow the incoming `traceparent`'s flag, and a child made
/// while serving follows its parent; the others decide on the trace id alone.
#[test]
fn spans_carry_their_sampling_decision() {
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let flags = |name: &str, ratio: &str, tp: Option<&str>| -> Vec<u8> {
        let spans = served_with_a_call(tp).run_sampling(sampler(name, ratio));
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_id, spans[1].trace_id);
        spans.iter().map(|s| s.trace_flags).collect()
    };
    assert_eq!(flags("parentbased_always_on", "1", Some(sampled)), [1, 1]);
    assert_eq!(flags("parentbased_always_on", "1", Some(unsampled)), [0, 0]);
    assert_eq!(flags("parentbased_always_off", "1", Some(sampled)), [1, 1]);
    assert_eq!(flags("parentbased_always_off", "1", None), [0, 0]);
    assert_eq!(flags("always_on", "1", Some(unsampled)), [1, 1]);
    assert_eq!(flags("always_off", "1", Some(sampled)), [0, 0]);
    // The trace id's random part (0x...0e0e4736 ends it) against the ratio's threshold.
    let random = super::sample::random_part(&[
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ]);
    let ratio = 1.0 - random as f64 / (1u64 << 56) as f64;
    let above = format!("{}", ratio + 0.01);
    let below = format!("{}", ratio - 0.01);
    assert_eq!(flags("traceidratio", &above, Some(unsampled)), [1, 1]);
    assert_eq!(flags("traceidratio", &below, Some(sampled)), [0, 0]);
    assert_eq!(
        flags("parentbased_traceidratio", &below, Some(sampled)),
        [1, 1]
    );
}

#[test]
fn informational_and_switching_responses() {
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100, 110),
            b"PUT /up HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (120, 130),
            b"HTTP/1.1 100 Continue\r\n\r\n",
        )
        .all(SERVER_PID, SERVER_SOCK, IN, (140, 150), b"ok")
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (160, 170),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (200, 210),
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (220, 230),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (240, 250),
            b"GET /not-http-anymore HTTP/1.1\r\n\r\n",
        )
        .run();
    let got: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                s.path(),
                s.response.as_ref().and_then(|r| r.status),
                s.end_ns,
            )
        })
        .collect();
    assert_eq!(got, vec![("/up", Some(200), 170), ("/ws", Some(101), 230)]);
    assert_eq!(spans[0].request_body_size, Some(2));
}

#[test]
fn large_bodies_are_counted_not_copied() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&[b'x'; 2000]);
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100, 110),
            b"GET /big HTTP/1.1\r\n\r\n",
        )
        .data(SERVER_PID, SERVER_SOCK, OUT, (200, 300), &first, 1_000_000)
        .data(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (400, 500),
            &[b'x'; 2048],
            head.len() as u64 + 4_000_000,
        )
        .run();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        spans[0].response.as_ref().unwrap().body_size,
        Some(5_000_000)
    );
    assert_eq!(spans[0].end_ns, 500);
}

#[test]
fn a_request_sent_while_serving_one_is_its_child() {
    // The server (pid 100) reads a request, calls out on another connection from the same
    // thread, then answers.
    let (spans, stats) = served_with_a_call(None).run();
    assert_eq!(spans.len(), 2);
    let front = spans.iter().find(|s| s.kind == Kind::Server).unwrap();
    let back = spans.iter().find(|s| s.kind == Kind::Client).unwrap();
    assert_eq!(back.trace_id, front.trace_id);
    assert_eq!(back.parent_span_id, Some(front.span_id));
    assert!(!back.parent_remote, "the parent is in the same process");
    assert_eq!(stats.links.in_process, 1);
}

#[test]
fn an_instrumented_client_keeps_its_own_span() {
    let req = b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let (spans, stats) = Recording::new()
        .open(CLIENT_PID, CLIENT_SOCK, OUT, 10)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (100, 110), req)
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (200, 210),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .run();
    assert!(spans.is_empty(), "the SDK's span stands for this request");
    assert_eq!(stats.suppressed_instrumented, 1);
}

/// A header asked for twice in different cases, sent twice with another captured header
/// between: one attribute with both values.
#[test]
fn a_captured_header_is_one_attribute() {
    let capture = super::Capture {
        headers: std::sync::Arc::from(vec![
            "x-id".to_string(),
            "X-ID".to_string(),
            "accept".to_string(),
            "x-id".to_string(),
        ]),
        query: false,
        routes: Default::default(),
    };
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100, 110),
            b"GET / HTTP/1.1\r\nX-Id: 1\r\nAccept: */*\r\nx-id: 2\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (200, 210),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .run_capturing(capture);
    let attrs = spans[0].attributes();
    let ids: Vec<_> = attrs
        .iter()
        .filter(|(k, _)| k.starts_with("http.request.header."))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(
        attr(&spans[0], "http.request.header.x-id"),
        Some(Value::StrList(vec!["1".into(), "2".into()]))
    );
}

#[test]
fn requests_open_at_finish_are_counted_not_exported() {
    let (spans, stats) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (100, 110),
            b"GET /a HTTP/1.1\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (120, 130),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (200, 210),
            b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        )
        // /b's response has begun, not ended.
        .data(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (300, 310),
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            40,
        )
        .run();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].path(), "/a");
    assert_eq!(stats.open_at_finish, 2);
    assert_eq!(stats.spans_without_response, 0);
}

#[test]
fn remote_parents_are_those_from_another_process() {
    let (spans, _) = python_exchange().run();
    let server = spans.iter().find(|s| s.kind == Kind::Server).unwrap();
    let client = spans.iter().find(|s| s.kind == Kind::Client).unwrap();
    assert!(server.parent_remote, "curl's span, in another process");
    assert!(!client.parent_remote, "no parent");
    let req = b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let (spans, _) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 10)
        .all(SERVER_PID, SERVER_SOCK, IN, (100, 110), req)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (200, 210),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .run();
    assert!(spans[0].parent_remote, "an incoming traceparent");
}

const MS: u64 = 1_000_000;
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// An event loop (pid 100, one thread that accepts and reads) that serves `/first`, answers
/// it, then reads `/slow`; a call leaves on a new connection, connected at `connect` and
/// sent 1 ms later. Returns the span of the call and of `/slow`.
fn event_loop_call(connect: u64) -> (HttpSpan, HttpSpan, super::Stats) {
    const FIRST: u64 = 0xa1;
    const SLOW: u64 = 0xa2;
    const CALL: u64 = 0xa3;
    let (spans, stats) = Recording::new()
        .open(SERVER_PID, FIRST, IN, 0)
        .all(
            SERVER_PID,
            FIRST,
            IN,
            (MS, MS + 10),
            b"GET /first HTTP/1.1\r\n\r\n",
        )
        .all(SERVER_PID, FIRST, OUT, (2 * MS, 2 * MS + 10), OK)
        .open(SERVER_PID, SLOW, IN, 3 * MS)
        .all(
            SERVER_PID,
            SLOW,
            IN,
            (4 * MS, 4 * MS + 10),
            b"GET /slow HTTP/1.1\r\n\r\n",
        )
        .open(SERVER_PID, CALL, OUT, connect)
        .all(
            SERVER_PID,
            CALL,
            OUT,
            (connect + MS, connect + MS + 10),
            b"POST /call HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .all(
            SERVER_PID,
            CALL,
            IN,
            (connect + 2 * MS, connect + 2 * MS + 10),
            OK,
        )
        .all(SERVER_PID, SLOW, OUT, (800 * MS, 800 * MS + 10), OK)
        .run();
    assert_eq!(spans.len(), 3);
    let find = |path: &str| spans.iter().find(|s| s.path() == path).unwrap().clone();
    (find("/call"), find("/slow"), stats)
}

/// Read `/first`, answer it, read `/slow`, and `/first`'s timer calls out 150 ms later: the
/// call is not `/slow`'s, and gets no parent.
#[test]
fn an_event_loop_call_long_after_the_read_gets_no_parent() {
    let (call, slow, stats) = event_loop_call(152 * MS);
    assert_eq!(call.parent_span_id, None);
    assert_ne!(call.trace_id, slow.trace_id);
    assert_eq!((stats.links.in_process, stats.links.late), (0, 1));
}

/// The same loop, with `/slow`'s handler connecting at once: the call is its child.
#[test]
fn an_event_loop_call_begun_right_after_the_read_is_its_child() {
    let (call, slow, stats) = event_loop_call(4 * MS + 300_000);
    assert_eq!(call.parent_span_id, Some(slow.span_id));
    assert_eq!(call.trace_id, slow.trace_id);
    assert_eq!(stats.links.in_process, 1);
}

/// Thread per connection: the main thread (tid 101) accepts, a thread of the connection's
/// own (tid 300) reads, calls out 200 ms later, and answers. Its second request on the same
/// connection too.
#[test]
fn a_thread_per_connection_call_is_its_child_whenever_it_is_made() {
    const CONN: u64 = 0xb1;
    const CALL: u64 = 0xb2;
    const T: u32 = 300;
    let mut r = Recording::new().open(SERVER_PID, CONN, IN, 0);
    for i in 0..2u64 {
        let t = i * 1_000 * MS;
        let req = format!("GET /front/{i} HTTP/1.1\r\n\r\n");
        r = r
            .all(SERVER_PID, CONN, IN, (t + MS, t + MS + 10), req.as_bytes())
            .by(T)
            .open(SERVER_PID, CALL + i, OUT, t + 200 * MS)
            .by(T)
            .all(
                SERVER_PID,
                CALL + i,
                OUT,
                (t + 201 * MS, t + 201 * MS + 10),
                b"GET /back HTTP/1.1\r\n\r\n",
            )
            .by(T)
            .all(
                SERVER_PID,
                CALL + i,
                IN,
                (t + 202 * MS, t + 202 * MS + 10),
                OK,
            )
            .by(T)
            .all(SERVER_PID, CONN, OUT, (t + 203 * MS, t + 203 * MS + 10), OK)
            .by(T);
    }
    let (spans, stats) = r.run();
    assert_eq!(spans.len(), 4);
    for i in 0..2 {
        let front = spans
            .iter()
            .find(|s| s.path() == format!("/front/{i}"))
            .unwrap();
        let back = spans
            .iter()
            .filter(|s| s.kind == Kind::Client)
            .nth(i)
            .unwrap();
        assert_eq!(back.parent_span_id, Some(front.span_id), "request {i}");
    }
    assert_eq!(stats.links.in_process, 2);
}

/// TLS records as they cross the sockets: a handshake record, application data.
const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03];
const SERVER_HELLO: &[u8] = &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];

fn app_data(n: usize) -> Vec<u8> {
    let mut r = vec![0x17, 0x03, 0x03];
    r.extend_from_slice(&(n as u16).to_be_bytes());
    r.extend(std::iter::repeat_n(0xa5, n));
    r
}

/// curl -> python over TLS, as the socket syscalls and a TLS library's probes see it: each
/// side's plaintext from the library, and its ciphertext crossing the socket just after.
fn tls_exchange() -> Recording {
    let req = b"GET /secure HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: curl/7.88.1\r\n\r\n";
    let head = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n";
    let body = b"hello";
    Recording::new()
        .open(CLIENT_PID, CLIENT_SOCK, OUT, 1_000)
        .open(SERVER_PID, SERVER_SOCK, IN, 1_100)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (1_200, 1_210), CLIENT_HELLO)
        .all(SERVER_PID, SERVER_SOCK, IN, (1_150, 1_220), CLIENT_HELLO)
        .all(SERVER_PID, SERVER_SOCK, OUT, (1_300, 1_310), SERVER_HELLO)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (1_250, 1_320), SERVER_HELLO)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (2_000, 2_100), req)
        .tls()
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            OUT,
            (2_010, 2_090),
            &app_data(req.len()),
        )
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (1_500, 2_190),
            &app_data(req.len()),
        )
        .all(SERVER_PID, SERVER_SOCK, IN, (1_500, 2_200), req)
        .tls()
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_000, 3_100), head)
        .tls()
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (3_010, 3_090),
            &app_data(head.len()),
        )
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (2_300, 3_190),
            &app_data(head.len()),
        )
        .all(CLIENT_PID, CLIENT_SOCK, IN, (2_300, 3_200), head)
        .tls()
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_300, 3_400), body)
        .tls()
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (3_310, 3_390),
            &app_data(body.len()),
        )
        .all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (3_250, 3_440),
            &app_data(body.len()),
        )
        .all(CLIENT_PID, CLIENT_SOCK, IN, (3_250, 3_450), body)
        .tls()
        .close(SERVER_PID, SERVER_SOCK, 3_600)
        .close(CLIENT_PID, CLIENT_SOCK, 3_700)
}

#[test]
fn tls_plaintext_makes_the_spans_and_the_ciphertext_is_muted() {
    let (spans, stats, mutes) = tls_exchange().run_muting(super::Capture::default());
    assert_eq!(spans.len(), 2, "one span per end, none from ciphertext");
    let server = spans.iter().find(|s| s.kind == Kind::Server).unwrap();
    let client = spans.iter().find(|s| s.kind == Kind::Client).unwrap();
    // The plaintext's kernel times: the library calls, not the socket syscalls.
    assert_eq!((server.start_ns, server.end_ns), (2_200, 3_400));
    assert_eq!((client.start_ns, client.end_ns), (2_000, 3_450));
    assert_eq!(attr(server, "url.path"), Some(Value::Str("/secure".into())));
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(Value::Int(200))
    );
    assert_eq!(attr(client, "http.response.body.size"), Some(Value::Int(5)));
    assert_eq!(attr(server, "url.scheme"), Some(Value::Str("https".into())));
    assert_eq!(attr(client, "url.scheme"), Some(Value::Str("https".into())));
    // The roles the sockets' accept and connect gave hold for the plaintext; one host links.
    assert_eq!(server.parent_span_id, Some(client.span_id));
    assert_eq!(server.trace_id, client.trace_id);
    // Both sockets' ciphertext: recognised at its first record, copied no further.
    assert_eq!(stats.tls_connections, 2);
    assert_eq!(stats.desyncs, 0);
    let mut muted: Vec<(u32, u64)> = mutes.iter().map(|m| (m.tgid, m.sock)).collect();
    muted.sort();
    assert_eq!(
        muted,
        vec![(SERVER_PID, SERVER_SOCK), (CLIENT_PID, CLIENT_SOCK)]
    );
}

#[test]
fn ciphertext_alone_gives_no_span_and_no_garbage() {
    let req_len = 80;
    let (spans, stats, mutes) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 1_000)
        .all(SERVER_PID, SERVER_SOCK, IN, (1_100, 1_200), CLIENT_HELLO)
        .all(SERVER_PID, SERVER_SOCK, OUT, (1_300, 1_400), SERVER_HELLO)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (1_500, 1_600),
            &app_data(req_len),
        )
        .all(SERVER_PID, SERVER_SOCK, OUT, (1_700, 1_800), &app_data(40))
        .close(SERVER_PID, SERVER_SOCK, 2_000)
        .run_muting(super::Capture::default());
    assert!(spans.is_empty(), "{spans:?}");
    assert_eq!(stats.tls_connections, 1);
    assert_eq!((stats.desyncs, stats.unmatched_responses), (0, 0));
    assert_eq!(mutes.len(), 1);
}

/// OpenSSL on memory buffers: plaintext whose connection the kernel inferred is used on a
/// socket that carries TLS records (or whose bytes were not seen), and dropped, counted, on a
/// socket known to carry plain HTTP.
#[test]
fn inferred_tls_plaintext_is_dropped_on_a_plaintext_socket() {
    let req = b"GET /inferred HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let inferred = |mut r: Recording| {
        r.events.last_mut().expect("an event").0.flags = tracer_common::flag::FD_INFERRED;
        r
    };
    let exchange = |r: Recording, sock: u64, t: u64| {
        let r = inferred(r.all(SERVER_PID, sock, IN, (t, t + 10), req).tls());
        inferred(r.all(SERVER_PID, sock, OUT, (t + 20, t + 30), resp).tls())
    };
    let plain_sock = SERVER_SOCK + 1;
    let unseen_sock = SERVER_SOCK + 2;
    let r = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 1_000)
        .all(SERVER_PID, SERVER_SOCK, IN, (1_100, 1_200), CLIENT_HELLO)
        .open(SERVER_PID, plain_sock, IN, 1_000)
        .all(SERVER_PID, plain_sock, IN, (1_100, 1_200), req)
        .all(SERVER_PID, plain_sock, OUT, (1_300, 1_400), resp)
        .open(SERVER_PID, unseen_sock, IN, 1_000);
    let r = exchange(r, SERVER_SOCK, 2_000);
    let r = exchange(r, plain_sock, 3_000);
    let r = exchange(r, unseen_sock, 4_000);
    let (spans, stats) = r.run();
    let mut got: Vec<(bool, u64)> = spans.iter().map(|s| (s.tls, s.start_ns)).collect();
    got.sort();
    // The plain socket's own exchange, and the TLS plaintext of the TLS and unseen sockets.
    assert_eq!(got, vec![(false, 1_200), (true, 2_010), (true, 4_010)]);
    assert_eq!(stats.tls_misattributed, 2);
}

/// HTTP/2 frames for the tests: `(type, flags, stream, payload)`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

mod h2 {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;
}

/// Both ends of one h2c connection carrying what `exchange` lays out: the client's bytes
/// (preface, SETTINGS, then `requests`), the server's (SETTINGS, then `responses`).
fn h2_connection(requests: &[Vec<u8>], responses: &[Vec<u8>]) -> Recording {
    let (r, t) = h2_connection_open(requests, responses);
    r.close(SERVER_PID, SERVER_SOCK, t + 100)
        .close(CLIENT_PID, CLIENT_SOCK, t + 200)
}

/// [`h2_connection`] still open, and the time its last bytes moved.
fn h2_connection_open(requests: &[Vec<u8>], responses: &[Vec<u8>]) -> (Recording, u64) {
    use crate::protocol::http2::frame::PREFACE;
    let mut out = PREFACE.to_vec();
    out.extend(h2_frame(h2::SETTINGS, 0, 0, &[]));
    let mut back = h2_frame(h2::SETTINGS, 0, 0, &[]);
    let mut r = Recording::new()
        .open(CLIENT_PID, CLIENT_SOCK, OUT, 1_000)
        .open(SERVER_PID, SERVER_SOCK, IN, 1_100);
    let mut t = 2_000;
    for req in requests {
        out.extend(req);
        r = r.all(CLIENT_PID, CLIENT_SOCK, OUT, (t, t + 10), &out).all(
            SERVER_PID,
            SERVER_SOCK,
            IN,
            (t - 500, t + 20),
            &out,
        );
        out.clear();
        t += 100;
    }
    for resp in responses {
        back.extend(resp);
        r = r.all(SERVER_PID, SERVER_SOCK, OUT, (t, t + 10), &back).all(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (t - 500, t + 20),
            &back,
        );
        back.clear();
        t += 100;
    }
    (r, t)
}

fn hpack_block(encoder: &mut loona_hpack::Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Each server span's parent is the client span of the same path.
fn assert_server_parents(spans: &[HttpSpan]) {
    for server in spans.iter().filter(|s| s.kind == Kind::Server) {
        let client = spans
            .iter()
            .find(|c| c.kind == Kind::Client && c.path() == server.path())
            .unwrap();
        assert_eq!(server.parent_span_id, Some(client.span_id));
    }
}

/// The header block of `GET path` to authority `a`.
fn h2_get(encoder: &mut loona_hpack::Encoder<'_>, path: &str) -> Vec<u8> {
    hpack_block(
        encoder,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "a"),
        ],
    )
}

/// Two streams on one connection, answered in the other order: each span is its stream's,
/// with HTTP/2's version, and each server span's parent is its client span.
#[test]
fn http2_streams_pair_by_id() {
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let get = |e: &mut loona_hpack::Encoder<'_>, path: &str| {
        hpack_block(
            e,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1:8080"),
                ("user-agent", "curl/7.88.1"),
            ],
        )
    };
    let a = get(&mut req, "/a");
    let b = get(&mut req, "/b");
    let requests = vec![
        h2_frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &a),
        h2_frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 3, &b),
    ];
    let ok = hpack_block(&mut resp, &[(":status", "200")]);
    let missing = hpack_block(&mut resp, &[(":status", "404")]);
    let responses = vec![
        [
            h2_frame(h2::HEADERS, h2::END_HEADERS, 3, &ok),
            h2_frame(h2::DATA, h2::END_STREAM, 3, b"hello"),
        ]
        .concat(),
        [
            h2_frame(h2::HEADERS, h2::END_HEADERS, 1, &missing),
            h2_frame(h2::DATA, 0, 1, b"no"),
            h2_frame(h2::DATA, h2::END_STREAM, 1, b"pe"),
        ]
        .concat(),
    ];
    let (spans, stats) = h2_connection(&requests, &responses).run();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!((stats.unmatched_responses, stats.desyncs), (0, 0));
    for s in &spans {
        assert_eq!(
            attr(s, "network.protocol.version"),
            Some(Value::Str("2".into()))
        );
        let (status, size) = match s.path() {
            "/a" => (404, 4),
            "/b" => (200, 5),
            other => panic!("{other}"),
        };
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(Value::Int(status))
        );
        assert_eq!(attr(s, "http.response.body.size"), Some(Value::Int(size)));
        assert_eq!(s.is_error(), status == 404 && s.kind == Kind::Client);
        assert_eq!(s.name(), "GET");
    }
    assert_server_parents(&spans);
}

/// gRPC: the span is named after the method, the status comes from the trailers (or a
/// trailers-only response), the conventions say which codes are errors on each side, and a
/// reset stream is an error with no status made up.
#[test]
fn grpc_status_from_trailers_and_resets() {
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let call = |e: &mut loona_hpack::Encoder<'_>, method: &str| {
        hpack_block(
            e,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "127.0.0.1:8080"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
    };
    let message = [0u8, 0, 0, 0, 2, 8, 1];
    let requests = vec![
        [
            h2_frame(
                h2::HEADERS,
                h2::END_HEADERS,
                1,
                &call(&mut req, "/demo.Echo/Say"),
            ),
            h2_frame(h2::DATA, h2::END_STREAM, 1, &message),
        ]
        .concat(),
        [
            h2_frame(
                h2::HEADERS,
                h2::END_HEADERS,
                3,
                &call(&mut req, "/demo.Echo/Fail"),
            ),
            h2_frame(h2::DATA, h2::END_STREAM, 3, &message),
        ]
        .concat(),
        [
            h2_frame(
                h2::HEADERS,
                h2::END_HEADERS,
                5,
                &call(&mut req, "/demo.Echo/Slow"),
            ),
            h2_frame(h2::DATA, h2::END_STREAM, 5, &message),
        ]
        .concat(),
        // The client gives up on /Slow: CANCEL.
        h2_frame(h2::RST_STREAM, 0, 5, &[0, 0, 0, 8]),
    ];
    let head = hpack_block(
        &mut resp,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    let ok = hpack_block(&mut resp, &[("grpc-status", "0")]);
    let unavailable = hpack_block(
        &mut resp,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "14"),
            ("grpc-message", "down"),
        ],
    );
    let responses = vec![
        [
            h2_frame(h2::HEADERS, h2::END_HEADERS, 1, &head),
            h2_frame(h2::DATA, 0, 1, &message),
            h2_frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &ok),
        ]
        .concat(),
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            3,
            &unavailable,
        ),
    ];
    let (spans, _) = h2_connection(&requests, &responses).run();
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let find = |kind: Kind, name: &str| {
        spans
            .iter()
            .find(|s| s.kind == kind && s.name() == name)
            .unwrap_or_else(|| panic!("{name}: {spans:#?}"))
    };
    for kind in [Kind::Client, Kind::Server] {
        let say = find(kind, "demo.Echo/Say");
        assert_eq!(
            attr(say, "rpc.system.name"),
            Some(Value::Str("grpc".into()))
        );
        assert_eq!(
            attr(say, "rpc.method"),
            Some(Value::Str("demo.Echo/Say".into()))
        );
        assert_eq!(
            attr(say, "rpc.response.status_code"),
            Some(Value::Str("OK".into()))
        );
        assert!(!say.is_error());
        assert_eq!(attr(say, "http.request.body.size"), Some(Value::Int(7)));
        let fail = find(kind, "demo.Echo/Fail");
        assert_eq!(
            attr(fail, "rpc.response.status_code"),
            Some(Value::Str("UNAVAILABLE".into()))
        );
        assert!(fail.is_error(), "UNAVAILABLE is an error on both sides");
        assert_eq!(
            attr(fail, "error.type"),
            Some(Value::Str("UNAVAILABLE".into()))
        );
        assert_eq!(fail.error_message().as_deref(), Some("down"));
        let slow = find(kind, "demo.Echo/Slow");
        assert!(slow.is_error());
        assert_eq!(attr(slow, "error.type"), Some(Value::Str("CANCEL".into())));
        assert_eq!(
            attr(slow, "rpc.response.status_code"),
            None,
            "none on the wire"
        );
        assert_eq!(attr(slow, "http.response.status_code"), None);
    }
}

/// A header block split over CONTINUATION frames, and frames cut across sends.
#[test]
fn http2_continuation_and_frames_across_sends() {
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let long = "x".repeat(3000);
    let block = hpack_block(
        &mut req,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/split"),
            (":authority", "a"),
            ("x-long", long.as_str()),
        ],
    );
    let (first, rest) = block.split_at(10);
    let (second, third) = rest.split_at(1000);
    let all = [
        h2_frame(h2::HEADERS, h2::END_STREAM, 1, first),
        h2_frame(9, 0, 1, second),
        h2_frame(9, h2::END_HEADERS, 1, third),
    ]
    .concat();
    // The request crosses three sends, cut inside frame headers.
    let cut = [&all[..5], &all[5..1020], &all[1020..]];
    let response = [
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS,
            1,
            &hpack_block(&mut resp, &[(":status", "204")]),
        ),
        h2_frame(h2::DATA, h2::END_STREAM, 1, &[]),
    ]
    .concat();
    let (spans, stats) = h2_connection(
        &cut.iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
        &[response],
    )
    .run();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(stats.desyncs, 0);
    for s in &spans {
        assert_eq!(s.path(), "/split");
        assert_eq!(attr(s, "http.response.status_code"), Some(Value::Int(204)));
    }
}

/// A method the server does not know (UNIMPLEMENTED) is `_OTHER`, named apart.
#[test]
fn an_unimplemented_grpc_method_is_other() {
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let call = hpack_block(
        &mut req,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/demo.Echo/Nope"),
            (":authority", "a"),
            ("content-type", "application/grpc+proto"),
        ],
    );
    let unimplemented = hpack_block(
        &mut resp,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
        ],
    );
    let (spans, _) = h2_connection(
        &[h2_frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            1,
            &call,
        )],
        &[h2_frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            1,
            &unimplemented,
        )],
    )
    .run();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(s.name(), "grpc");
        assert_eq!(attr(s, "rpc.method"), Some(Value::Str("_OTHER".into())));
        assert_eq!(
            attr(s, "rpc.method_original"),
            Some(Value::Str("demo.Echo/Nope".into()))
        );
        assert!(s.is_error(), "UNIMPLEMENTED is an error on both sides");
    }
}

/// A gRPC connection busy before the agent started: no preface and no open event, and the
/// header table already holds entries the agent never saw. Frames are found from the first
/// chunk that starts with them, the role comes from the first decoded head, and what can only
/// be decoded with the missed entries is reported as undecoded, never given another value.
#[test]
fn http2_joined_late_decodes_what_it_can_and_guesses_nothing() {
    // Header blocks as an encoder that indexes writes them (RFC 7541): before the agent, the
    // client's encoder inserted `:path: /demo.Echo/Say` and the server's `grpc-status: 0`,
    // each as entry 62.
    fn literal(prefix: u8, value: &str) -> Vec<u8> {
        let mut b = vec![prefix, value.len() as u8];
        b.extend(value.as_bytes());
        b
    }
    // :method POST, :scheme http (static), then the path, :authority as a literal not
    // indexed (static name 1), and content-type from an entry made before (index 69: unknown
    // whatever was inserted since).
    let call = |path: Vec<u8>| {
        [
            vec![0x83, 0x86],
            path,
            literal(0x01, "127.0.0.1:8080"),
            vec![0xc5],
        ]
        .concat()
    };
    let say_before = call(vec![0xbe]);
    // A new path, inserted (literal with incremental indexing, static name 4): entry 62 now.
    let count_new = call(literal(0x44, "/demo.Echo/Count"));
    let count_again = call(vec![0xbe]);
    // The server's head: :status 200 (static) and its content type from an old entry; its
    // trailers: grpc-status from an old entry, and an empty grpc-message as a literal with a
    // literal name, which says the call is gRPC's.
    let head = vec![0x88, 0xc5];
    let trailers = [&[0xbe, 0x00, 0x0c][..], b"grpc-message", &[0x00]].concat();
    let message = [0u8, 0, 0, 0, 2, 8, 1];
    // Seen: the tail of stream 1's response DATA (not at a frame's start: skipped), then
    // stream 3 repeats the call (path: an entry from before), stream 5 calls a new method (a
    // literal: known), and stream 7 repeats it (an entry inserted since: known).
    let mut tail = h2_frame(h2::DATA, h2::END_STREAM, 1, &[1; 40]);
    tail.drain(..20);
    let mut server_in = Vec::new();
    let mut server_out = vec![tail.clone()];
    for (id, block) in [(3, say_before), (5, count_new), (7, count_again)] {
        server_in.push(
            [
                h2_frame(h2::HEADERS, h2::END_HEADERS, id, &block),
                h2_frame(h2::DATA, h2::END_STREAM, id, &message),
            ]
            .concat(),
        );
        server_out.push(
            [
                h2_frame(h2::HEADERS, h2::END_HEADERS, id, &head),
                h2_frame(h2::DATA, 0, id, &message),
                h2_frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &trailers),
            ]
            .concat(),
        );
    }
    let mut r = Recording::new();
    let mut t = 2_000;
    r = r.all(SERVER_PID, SERVER_SOCK, OUT, (t, t + 5), &server_out[0]);
    for i in 0..3 {
        t += 100;
        r = r
            .all(SERVER_PID, SERVER_SOCK, IN, (t, t + 5), &server_in[i])
            .all(
                SERVER_PID,
                SERVER_SOCK,
                OUT,
                (t + 50, t + 55),
                &server_out[i + 1],
            );
    }
    let (spans, stats) = r.close(SERVER_PID, SERVER_SOCK, t + 500).run();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(stats.unmatched_responses, 0);
    for s in &spans {
        assert_eq!(s.kind, Kind::Server, "the role from the first head");
        assert_eq!(s.method, "POST", "static table");
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(Value::Int(200)),
            "static table"
        );
    }
    let undecoded = |s: &HttpSpan| match attr(s, "tracer.http2.undecoded") {
        Some(Value::StrList(l)) => l,
        _ => Vec::new(),
    };
    // Stream 3: its path and its grpc-status were entries inserted before the agent.
    assert_eq!(
        spans[0].name(),
        "grpc",
        "the system, for want of the method"
    );
    assert_eq!(attr(&spans[0], "rpc.method"), None);
    assert_eq!(attr(&spans[0], "rpc.response.status_code"), None);
    assert_eq!(undecoded(&spans[0]), vec![":path", "grpc-status"]);
    assert!(!spans[0].is_error(), "an unknown status is no error");
    // Streams 5 and 7: the new method is known; their grpc-status still is not.
    for s in &spans[1..] {
        assert_eq!(s.name(), "demo.Echo/Count");
        assert_eq!(undecoded(s), vec!["grpc-status"]);
    }
}

/// A gap inside a connection (bytes moved that were not captured, where a frame header lay):
/// streams open across it report what they lost, frames are found again, and the connection
/// goes on being traced.
#[test]
fn http2_gap_is_reported_and_frames_are_found_again() {
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let get = h2_get;
    let requests = vec![
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            1,
            &get(&mut req, "/a"),
        ),
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS | h2::END_STREAM,
            3,
            &get(&mut req, "/b"),
        ),
    ];
    let status = hpack_block(&mut resp, &[(":status", "200")]);
    let (mut r, _) = h2_connection_open(&requests, &[]);
    // The server's answer to stream 1 moves in one write whose tail was not captured: a large
    // DATA frame, then stream 1's end and the head of stream 3 beyond the capture window.
    let big = [
        h2_frame(h2::SETTINGS, 0, 0, &[]),
        h2_frame(h2::HEADERS, h2::END_HEADERS, 1, &status),
        h2_frame(h2::DATA, 0, 1, &[0; 3000]),
        h2_frame(h2::DATA, h2::END_STREAM, 1, &[]),
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS,
            3,
            &hpack_block(&mut resp, &[(":status", "201")]),
        ),
    ]
    .concat();
    let captured = 1000;
    r = r
        .data(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (3_000, 3_010),
            &big[..captured],
            big.len() as u64,
        )
        .data(
            CLIENT_PID,
            CLIENT_SOCK,
            IN,
            (3_020, 3_030),
            &big[..captured],
            big.len() as u64,
        );
    // Stream 3's body and end, then a third stream answered in full.
    let more = [h2_frame(h2::DATA, h2::END_STREAM, 3, b"ok")].concat();
    r = r
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_100, 3_110), &more)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (3_120, 3_130), &more);
    let third = h2_frame(
        h2::HEADERS,
        h2::END_HEADERS | h2::END_STREAM,
        5,
        &get(&mut req, "/c"),
    );
    r = r
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (3_200, 3_210), &third)
        .all(SERVER_PID, SERVER_SOCK, IN, (3_220, 3_230), &third);
    let answer = [
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS,
            5,
            &hpack_block(&mut resp, &[(":status", "202")]),
        ),
        h2_frame(h2::DATA, h2::END_STREAM, 5, b"yes"),
    ]
    .concat();
    r = r
        .all(SERVER_PID, SERVER_SOCK, OUT, (3_300, 3_310), &answer)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (3_320, 3_330), &answer);
    let (spans, stats) = r
        .close(SERVER_PID, SERVER_SOCK, 4_000)
        .close(CLIENT_PID, CLIENT_SOCK, 4_100)
        .run();
    assert_eq!(stats.desyncs, 2, "one gap on each end");
    assert_eq!(spans.len(), 6, "{spans:#?}");
    for s in &spans {
        let status = attr(s, "http.response.status_code");
        let size = attr(s, "http.response.body.size");
        match s.path() {
            // Answered before the gap; its end lay in it: ended at close, with its status
            // and without a size.
            "/a" => assert_eq!((status, size), (Some(Value::Int(200)), None)),
            // Its head lay in the gap: no status, said so.
            "/b" => {
                assert_eq!((status, size), (None, None));
                assert_eq!(
                    attr(s, "tracer.http2.undecoded"),
                    Some(Value::StrList(vec![":status".into()]))
                );
            }
            "/c" => assert_eq!((status, size), (Some(Value::Int(202)), Some(Value::Int(3)))),
            other => panic!("{other}"),
        }
    }
}

/// A server seen from its accept often sends its SETTINGS before it reads the client's
/// preface: that is no connection joined late, and the preface that follows is read as one.
#[test]
fn http2_server_settings_before_the_preface() {
    use crate::protocol::http2::frame::PREFACE;
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let mut hello = PREFACE.to_vec();
    hello.extend(h2_frame(h2::SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(
        h2::HEADERS,
        h2::END_HEADERS | h2::END_STREAM,
        1,
        &h2_get(&mut req, "/first"),
    ));
    let answer = [
        h2_frame(
            h2::HEADERS,
            h2::END_HEADERS,
            1,
            &hpack_block(&mut resp, &[(":status", "200")]),
        ),
        h2_frame(h2::DATA, h2::END_STREAM, 1, b"hi"),
    ]
    .concat();
    let (spans, stats) = Recording::new()
        .open(SERVER_PID, SERVER_SOCK, IN, 1_000)
        .all(
            SERVER_PID,
            SERVER_SOCK,
            OUT,
            (1_100, 1_110),
            &h2_frame(h2::SETTINGS, 0, 0, &[]),
        )
        .all(SERVER_PID, SERVER_SOCK, IN, (1_200, 1_210), &hello)
        .all(SERVER_PID, SERVER_SOCK, OUT, (1_300, 1_310), &answer)
        .close(SERVER_PID, SERVER_SOCK, 2_000)
        .run();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].path(), "/first");
    assert_eq!(
        attr(&spans[0], "http.response.status_code"),
        Some(Value::Int(200))
    );
    assert_eq!(stats.desyncs, 0);
}

/// `Upgrade: h2c` (RFC 7540 3.2): the HTTP/1.1 request is answered `101`, then in HTTP/2 on
/// stream 1, in the same write as the `101`; later requests are HTTP/2 streams.
#[test]
fn http2_by_upgrade_from_http1() {
    use crate::protocol::http2::frame::PREFACE;
    let mut req = loona_hpack::Encoder::new();
    let mut resp = loona_hpack::Encoder::new();
    let upgrade = b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let mut switched =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    switched.extend(h2_frame(h2::SETTINGS, 0, 0, &[]));
    switched.extend(h2_frame(
        h2::HEADERS,
        h2::END_HEADERS,
        1,
        &hpack_block(&mut resp, &[(":status", "200")]),
    ));
    switched.extend(h2_frame(h2::DATA, h2::END_STREAM, 1, b"hi"));
    let mut second = PREFACE.to_vec();
    second.extend(h2_frame(h2::SETTINGS, 0, 0, &[]));
    second.extend(h2_frame(
        h2::HEADERS,
        h2::END_HEADERS | h2::END_STREAM,
        3,
        &h2_get(&mut req, "/second"),
    ));
    let answer = h2_frame(
        h2::HEADERS,
        h2::END_HEADERS | h2::END_STREAM,
        3,
        &hpack_block(&mut resp, &[(":status", "204")]),
    );
    let (spans, stats) = Recording::new()
        .open(CLIENT_PID, CLIENT_SOCK, OUT, 1_000)
        .open(SERVER_PID, SERVER_SOCK, IN, 1_100)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (2_000, 2_010), upgrade)
        .all(SERVER_PID, SERVER_SOCK, IN, (1_500, 2_020), upgrade)
        .all(SERVER_PID, SERVER_SOCK, OUT, (2_100, 2_110), &switched)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (1_600, 2_120), &switched)
        .all(CLIENT_PID, CLIENT_SOCK, OUT, (2_200, 2_210), &second)
        .all(SERVER_PID, SERVER_SOCK, IN, (2_150, 2_220), &second)
        .all(SERVER_PID, SERVER_SOCK, OUT, (2_300, 2_310), &answer)
        .all(CLIENT_PID, CLIENT_SOCK, IN, (2_250, 2_320), &answer)
        .close(SERVER_PID, SERVER_SOCK, 3_000)
        .close(CLIENT_PID, CLIENT_SOCK, 3_100)
        .run();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!((stats.desyncs, stats.unmatched_responses), (0, 0));
    for s in &spans {
        assert_eq!(
            attr(s, "network.protocol.version"),
            Some(Value::Str("2".into()))
        );
        let (status, size) = match s.path() {
            "/up" => (200, Some(Value::Int(2))),
            "/second" => (204, Some(Value::Int(0))),
            other => panic!("{other}"),
        };
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(Value::Int(status)),
            "{s:#?}"
        );
        assert_eq!(attr(s, "http.response.body.size"), size);
    }
    assert_server_parents(&spans);
}
