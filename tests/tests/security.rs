//! Secure by default: no body, no header value beyond the conventions' few, no query value
//! ever leaves the agent unless the user names it.

use tracer_e2e::{
    agent::Agent,
    free_port,
    receiver::{Receiver, Value},
    servers::{curl, python_framings},
};

const SECRETS: &[&str] = &[
    "SECRET-AUTH-1",
    "SECRET-COOKIE-2",
    "SECRET-KEY-3",
    "SECRET-PROXY-4",
    "SECRET-BODY-5",
    "SECRET-QUERY-6",
    "SECRET-SETCOOKIE-7",
];

fn send_secrets(port: u16, extra: &[&str]) {
    let mut args = vec![
        "-H",
        "Authorization: Bearer SECRET-AUTH-1",
        "-H",
        "Cookie: s=SECRET-COOKIE-2",
        "-H",
        "X-Api-Key: SECRET-KEY-3",
        "-H",
        "Proxy-Authorization: Basic SECRET-PROXY-4",
        "--data",
        "SECRET-BODY-5",
    ];
    args.extend(extra);
    let run = curl(
        &format!("http://127.0.0.1:{port}/cookie?token=SECRET-QUERY-6&x=1"),
        &args,
    );
    assert_eq!(run.status, 200);
}

fn leaks(haystacks: &[Vec<u8>], secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for h in haystacks {
        for s in secrets {
            if h.windows(s.len()).any(|w| w == s.as_bytes()) {
                found.push(s.to_string());
            }
        }
    }
    found
}

#[test]
fn secrets_never_leave_the_agent_by_default() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = Agent::exporting(
        &receiver,
        &["--port", &server.port.to_string(), "--output", "json"],
    );
    send_secrets(server.port, &[]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    let mut exported = receiver.raw_exports();
    exported.extend(agent.stdout().into_iter().map(String::into_bytes));
    exported.extend(agent.stderr().into_iter().map(String::into_bytes));
    assert!(!exported.is_empty());
    assert_eq!(leaks(&exported, SECRETS), Vec::<String>::new());
    for s in &spans {
        assert!(!s.attributes.contains_key("url.query"));
        assert!(
            s.attributes
                .keys()
                .all(|k| !k.starts_with("http.request.header."))
        );
    }
}

#[test]
fn named_headers_and_redacted_queries_when_asked() {
    let receiver = Receiver::start();
    let server = python_framings(free_port());
    let mut agent = Agent::start(
        &[
            "--port",
            &server.port.to_string(),
            "--otlp-endpoint",
            &receiver.http_url(),
            "--capture-header",
            "X-Request-Id",
            "--capture-header",
            "x-trace-me",
            "--capture-query",
        ],
        &[],
    );
    send_secrets(server.port, &["-H", "X-Request-Id: req-42"]);
    let spans = receiver.wait_spans(2, |_| true);
    agent.stop();
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert_eq!(s.attr("url.query").str(), "token=REDACTED&x=REDACTED");
        assert_eq!(
            s.attr("http.request.header.x-request-id"),
            &Value::List(vec!["req-42".into()])
        );
        assert_eq!(
            s.attr("http.response.header.x-trace-me"),
            &Value::List(vec!["visible".into()])
        );
    }
    // Naming some headers still exports no other.
    assert_eq!(
        leaks(&receiver.raw_exports(), SECRETS),
        Vec::<String>::new()
    );
}
