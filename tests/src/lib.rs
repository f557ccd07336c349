//! Harness for tracer's end-to-end tests: an OTLP receiver built on the official protobuf
//! definitions, the agent as a child process, and real servers and clients.
//!
//! These tests load real eBPF programs and need root; run them with `cargo xtask test`.

pub mod agent;
pub mod certs;
pub mod netns;
pub mod receiver;
pub mod servers;

use std::time::{Duration, Instant};

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes as lowercase hex (trace and span ids as `traceparent` writes them).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TCP port that was free a moment ago, below the kernel's ephemeral range: a port from
/// that range can be taken, between this check and the test's own bind, as the local port of
/// an outgoing connection (the agent's to its receiver, a client's), and the server then fails
/// with "address already in use".
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1000 {
        let span = u64::from(ephemeral_low - LOWEST);
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        for i in 0..1000u64 {
            let port = LOWEST + ((start + i * 7919) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}
