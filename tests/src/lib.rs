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

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}
