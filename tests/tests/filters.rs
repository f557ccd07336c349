//! `--pid`, `--comm` and `--port` select exactly what they name; different flags narrow each
//! other; repeating a flag widens it.

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Received, Receiver},
    servers::{Server, curl, python_http},
};

struct Setup {
    receiver: Receiver,
    a: Server,
    b: Server,
}

fn setup() -> Setup {
    Setup {
        receiver: Receiver::start(),
        a: python_http(free_port()),
        b: python_http(free_port()),
    }
}

/// Start an agent with `args`, curl each server `n` times, and return every span received.
fn traffic(s: &Setup, args: &[&str], n: usize, expected: usize) -> (Vec<Received>, Vec<u32>) {
    let mut agent = Agent::exporting(&s.receiver, args);
    let mut curls = Vec::new();
    for _ in 0..n {
        for server in [&s.a, &s.b] {
            let run = curl(&format!("http://127.0.0.1:{}/", server.port), &[]);
            assert_eq!(run.status, 200);
            curls.push(run.pid);
        }
    }
    let spans = s.receiver.wait_spans(expected, |_| true);
    agent.stop();
    (spans, curls)
}

fn server_port(span: &Received) -> i64 {
    span.attr("server.port").int()
}

#[test]
fn pid_selects_exactly_that_process() {
    let s = setup();
    let pid = s.a.pid().to_string();
    let (spans, _) = traffic(&s, &["--pid", &pid], 2, 2);
    assert_eq!(
        spans.len(),
        2,
        "two requests to A, nothing else: {spans:#?}"
    );
    for span in &spans {
        assert!(span.is_server());
        assert_eq!(span.pid(), s.a.pid());
        assert_eq!(server_port(span), s.a.port as i64);
    }
}

#[test]
fn repeated_pid_widens_the_selection() {
    let s = setup();
    let (a, b) = (s.a.pid().to_string(), s.b.pid().to_string());
    let (spans, _) = traffic(&s, &["--pid", &a, "--pid", &b], 1, 2);
    assert_eq!(spans.len(), 2);
    let mut pids: Vec<u32> = spans.iter().map(Received::pid).collect();
    pids.sort();
    let mut want = vec![s.a.pid(), s.b.pid()];
    want.sort();
    assert_eq!(pids, want);
}

#[test]
fn comm_selects_processes_by_name() {
    let s = setup();
    let (spans, curls) = traffic(&s, &["--comm", "curl"], 2, 4);
    assert_eq!(spans.len(), 4, "only the four curl CLIENT spans");
    for span in &spans {
        assert!(span.is_client());
        assert!(curls.contains(&span.pid()));
        assert_eq!(span.res("service.name").str(), "curl");
    }
}

#[test]
fn port_selects_connections_by_local_or_remote_port() {
    let s = setup();
    let port = s.a.port.to_string();
    let (spans, _) = traffic(&s, &["--port", &port], 2, 4);
    assert_eq!(
        spans.len(),
        4,
        "server and client spans of the two requests to A only"
    );
    assert_eq!(spans.iter().filter(|s| s.is_server()).count(), 2);
    assert_eq!(spans.iter().filter(|s| s.is_client()).count(), 2);
    for span in &spans {
        assert_eq!(server_port(span), s.a.port as i64);
    }
}

#[test]
fn port_ranges_are_inclusive() {
    let s = setup();
    let (lo, hi) = (s.a.port.min(s.b.port), s.a.port.max(s.b.port));
    let range = format!("{lo}-{hi}");
    let (spans, _) = traffic(&s, &["--port", &range, "--comm", "curl"], 1, 2);
    assert_eq!(spans.len(), 2, "both ends of the range match: {spans:#?}");
}

#[test]
fn different_flags_narrow_each_other() {
    let s = setup();
    let port = s.b.port.to_string();
    let (spans, curls) = traffic(&s, &["--comm", "curl", "--port", &port], 2, 2);
    assert_eq!(spans.len(), 2, "curl's requests to B only");
    for span in &spans {
        assert!(span.is_client());
        assert!(curls.contains(&span.pid()));
        assert_eq!(server_port(span), s.b.port as i64);
    }
}
