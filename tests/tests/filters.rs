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

/// A cgroup tree made for a test, laid out like a container runtime's; processes in it go
/// back to the root cgroup and the tree is removed when dropped.
struct CgroupTree {
    root: std::path::PathBuf,
    top: std::path::PathBuf,
}

impl CgroupTree {
    fn new() -> CgroupTree {
        // The v2 hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| std::path::PathBuf::from(f[1]))
            .expect("cgroup v2 is mounted");
        let top = root.join(format!("tracer-e2e-{}.slice", std::process::id()));
        std::fs::create_dir_all(&top).expect("making a cgroup");
        CgroupTree { root, top }
    }

    /// Make `rel` below the top and move `pid` into it.
    fn put(&self, rel: &str, pid: u32) {
        let dir = self.top.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        let mut stack = vec![self.top.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        // Deepest first; their processes back to the root.
        for d in dirs.iter().rev() {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `--cgroup` selects the processes of a cgroup and of every cgroup below it, including one
/// made after the agent started; the spans of a process in a cgroup named like Docker's carry
/// its `container.id`.
#[test]
fn cgroup_selects_its_processes_and_names_their_container() {
    const ID: &str = "5e0c3a1f9b7d2e4c6a8f0b1d3e5c7a9f2b4d6e8a0c1e3f5a7b9d2c4e6f8a0b1c";
    let s = setup();
    let tree = CgroupTree::new();
    tree.put(&format!("docker-{ID}.scope"), s.a.pid());
    let top = tree.top.file_name().unwrap().to_str().unwrap().to_string();
    // The hierarchy's form of the path (as /proc/PID/cgroup shows it).
    let chosen = format!("/{top}");
    let mut agent = Agent::exporting(&s.receiver, &["--cgroup", &chosen]);
    for server in [&s.a, &s.b] {
        assert_eq!(
            curl(&format!("http://127.0.0.1:{}/", server.port), &[]).status,
            200
        );
    }
    let spans = s.receiver.wait_spans(1, |_| true);
    assert_eq!(spans.len(), 1, "only A's server span: {spans:#?}");
    assert!(spans[0].is_server());
    assert_eq!(spans[0].pid(), s.a.pid());
    assert_eq!(spans[0].res("container.id").str(), ID);

    // A cgroup made below the chosen one after the start is picked up within seconds.
    tree.put("later", s.b.pid());
    let url_b = format!("http://127.0.0.1:{}/", s.b.port);
    let seen = tracer_e2e::wait_for(std::time::Duration::from_secs(10), || {
        assert_eq!(curl(&url_b, &[]).status, 200);
        std::thread::sleep(std::time::Duration::from_millis(300));
        s.receiver
            .spans()
            .into_iter()
            .find(|sp| sp.pid() == s.b.pid())
    });
    agent.stop();
    let b = seen.expect("B's spans once its new cgroup is below the chosen one");
    assert!(b.is_server());
    assert!(
        !b.resource.contains_key("container.id"),
        "not a container: {:?}",
        b.resource
    );
    let log = agent.stderr().join("\n");
    assert!(
        log.contains(&format!("cgroup {chosen} (and below)")),
        "{log}"
    );
    // Nothing from curl, nothing else from B's old place.
    assert!(
        s.receiver
            .spans()
            .iter()
            .all(|sp| sp.pid() == s.a.pid() || sp.pid() == s.b.pid()),
    );
}

/// A `--cgroup` that is not a cgroup is a clear error at start.
#[test]
fn a_cgroup_that_does_not_exist_is_a_clear_error() {
    let out = std::process::Command::new(tracer_e2e::agent::binary())
        .args(["--cgroup", "/no-such.slice"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`/no-such.slice` is not a cgroup"), "{err}");
}
