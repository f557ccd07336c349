//! In-process links on event loops, with real frameworks: express (Node) and aiohttp
//! (Python). A call a handler makes while serving its request is that request's child; a call
//! made later, by work the handler left behind (a webhook 150 ms after the answer), never gets
//! as parent another request that happens to be in flight then: it gets its own request's span
//! or, as the agent does, no parent.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread::{sleep, spawn},
    time::Duration,
};

use tracer_e2e::{
    agent::Agent,
    free_port, hex,
    receiver::{Received, Receiver},
    servers::{Server, aiohttp_app, curl, express_app, script, spawn_server},
};

#[derive(Clone, Copy)]
enum App {
    Express,
    Aiohttp,
}

/// The app under test, the downstream it calls (Node's http server, which answers anything)
/// and an agent tracing both ports.
struct Setup {
    receiver: Receiver,
    app: Server,
    downstream: Server,
    agent: Agent,
}

fn setup(app: App) -> Setup {
    let receiver = Receiver::start();
    let d = free_port();
    let downstream = spawn_server(
        Command::new("node")
            .arg(script("server.js"))
            .arg(d.to_string()),
        d,
    );
    let port = free_port();
    let app = match app {
        App::Express => express_app(port, d),
        App::Aiohttp => aiohttp_app(port, d),
    };
    let agent = Agent::exporting(
        &receiver,
        &["--port", &port.to_string(), "--port", &d.to_string()],
    );
    Setup {
        receiver,
        app,
        downstream,
        agent,
    }
}

fn path(s: &Received) -> &str {
    s.attr("url.path").str()
}

/// The spans of `pid` of one kind and path, in start order.
fn spans_of<'a>(spans: &'a [Received], pid: u32, server: bool, p: &str) -> Vec<&'a Received> {
    let mut v: Vec<&Received> = spans
        .iter()
        .filter(|s| s.pid() == pid && s.is_server() == server && path(s) == p)
        .collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v
}

/// `GET path` on a connection of its own, from this process (no client program to start:
/// the next request follows within microseconds); returns the status.
fn get(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the app");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response)
        .expect("reading the response");
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// OTLP span flags: the parent-is-remote bits (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`,
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// Rounds of the webhook scenario: in the first ones `/hook` is answered before `/slow`
/// arrives (one request in flight at a time), in the last ones `/slow` is already in flight
/// when `/hook` arrives.
const SEQUENTIAL: usize = 5;
const CONCURRENT: usize = 2;

/// `/hook` answers, then calls `/webhook` 150 ms later while `/slow` (800 ms) is in flight.
fn webhooks(app: App) {
    let mut s = setup(app);
    let port = s.app.port;
    for round in 0..SEQUENTIAL + CONCURRENT {
        let slow = if round < SEQUENTIAL {
            assert_eq!(get(port, "/hook"), 200);
            spawn(move || get(port, "/slow"))
        } else {
            let slow = spawn(move || get(port, "/slow"));
            // Time for the request to be read (the app gives no signal of that); the spans'
            // times below check that it was.
            sleep(Duration::from_millis(100));
            assert_eq!(get(port, "/hook"), 200);
            slow
        };
        assert_eq!(slow.join().unwrap(), 200);
    }
    let rounds = SEQUENTIAL + CONCURRENT;
    // Per round: this process's two CLIENT spans, the app's SERVER spans of /hook and /slow,
    // its CLIENT span of /webhook, and the downstream's SERVER span of it.
    let spans = s.receiver.wait_spans(6 * rounds, |_| true);
    s.agent.stop();
    assert_eq!(spans.len(), 6 * rounds, "spans: {:#?}", summary(&spans));
    let pid = s.app.pid();
    let hooks = spans_of(&spans, pid, true, "/hook");
    let slows = spans_of(&spans, pid, true, "/slow");
    let calls = spans_of(&spans, pid, false, "/webhook");
    let received = spans_of(&spans, s.downstream.pid(), true, "/webhook");
    assert_eq!(
        (hooks.len(), slows.len(), calls.len(), received.len()),
        (rounds, rounds, rounds, rounds),
        "spans: {:#?}",
        summary(&spans)
    );
    let app_clients = spans.iter().filter(|x| x.pid() == pid && x.is_client());
    assert_eq!(app_clients.count(), rounds, "the app calls only /webhook");
    for (i, call) in calls.iter().enumerate() {
        let start = call.span.start_time_unix_nano;
        // The scenario: the call left while this round's /slow was in flight.
        let slow = slows[i];
        assert!(
            slow.span.start_time_unix_nano < start && start < slow.span.end_time_unix_nano,
            "round {i}: the webhook did not leave while /slow was in flight"
        );
        // Its own /hook, answered before it left, or no parent: never another request.
        let own = hooks[i];
        assert!(own.span.end_time_unix_nano < start);
        let parent = &call.span.parent_span_id;
        assert!(
            parent.is_empty() || *parent == own.span.span_id,
            "round {i}: the webhook's parent {} is not its own /hook {} (the /slow in flight \
             is {})",
            hex(parent),
            hex(&own.span.span_id),
            hex(&slow.span.span_id)
        );
        if parent.is_empty() {
            assert_ne!(call.span.trace_id, slow.span.trace_id);
        }
        // The downstream's end of it is still its child, across processes.
        let down = received
            .iter()
            .find(|r| r.span.parent_span_id == call.span.span_id)
            .unwrap_or_else(|| panic!("round {i}: no downstream span under the webhook"));
        assert_eq!(down.span.trace_id, call.span.trace_id);
        assert_eq!(
            down.span.flags & (HAS_IS_REMOTE | IS_REMOTE),
            HAS_IS_REMOTE | IS_REMOTE
        );
    }
}

/// `/call` calls the downstream inside the handler, one request at a time: every call is its
/// request's child, and each request one trace from curl to the downstream.
fn calls_inside_the_handler(app: App) {
    const ROUNDS: usize = 3;
    let mut s = setup(app);
    let url = format!("http://127.0.0.1:{}/call", s.app.port);
    let runs: Vec<_> = (0..ROUNDS).map(|_| curl(&url, &[])).collect();
    assert!(runs.iter().all(|r| r.status == 200));
    // Per round: curl's CLIENT span, the app's SERVER and CLIENT spans, the downstream's.
    let spans = s.receiver.wait_spans(4 * ROUNDS, |_| true);
    s.agent.stop();
    assert_eq!(spans.len(), 4 * ROUNDS, "spans: {:#?}", summary(&spans));
    let pid = s.app.pid();
    let served = spans_of(&spans, pid, true, "/call");
    let calls = spans_of(&spans, pid, false, "/inside");
    let received = spans_of(&spans, s.downstream.pid(), true, "/inside");
    assert_eq!(
        (served.len(), calls.len(), received.len()),
        (ROUNDS, ROUNDS, ROUNDS)
    );
    for (i, run) in runs.iter().enumerate() {
        let client = spans
            .iter()
            .find(|x| x.pid() == run.pid)
            .unwrap_or_else(|| panic!("no span of curl {i}"));
        let chain = [client, served[i], calls[i], received[i]];
        for pair in chain.windows(2) {
            let (parent, child) = (pair[0], pair[1]);
            assert_eq!(
                child.span.parent_span_id,
                parent.span.span_id,
                "round {i}: {} {} should be the child of {} {}",
                path(child),
                child.span.kind,
                path(parent),
                parent.span.kind
            );
            assert_eq!(child.span.trace_id, parent.span.trace_id);
        }
        // Parents in other processes are remote; the app's own server span is not.
        let remote = |x: &Received| x.span.flags & (HAS_IS_REMOTE | IS_REMOTE);
        assert_eq!(remote(client), HAS_IS_REMOTE, "round {i}: a root");
        assert_eq!(remote(served[i]), HAS_IS_REMOTE | IS_REMOTE, "round {i}");
        assert_eq!(remote(calls[i]), HAS_IS_REMOTE, "round {i}: in process");
        assert_eq!(remote(received[i]), HAS_IS_REMOTE | IS_REMOTE, "round {i}");
    }
}

fn summary(spans: &[Received]) -> Vec<(u32, i32, String, String, String)> {
    spans
        .iter()
        .map(|x| {
            (
                x.pid(),
                x.span.kind,
                path(x).to_string(),
                hex(&x.span.span_id),
                hex(&x.span.parent_span_id),
            )
        })
        .collect()
}

#[test]
fn express_webhooks_never_get_an_unrelated_parent() {
    webhooks(App::Express);
}

#[test]
fn express_calls_inside_the_handler_are_its_children() {
    calls_inside_the_handler(App::Express);
}

#[test]
fn aiohttp_webhooks_never_get_an_unrelated_parent() {
    webhooks(App::Aiohttp);
}

#[test]
fn aiohttp_calls_inside_the_handler_are_its_children() {
    calls_inside_the_handler(App::Aiohttp);
}
