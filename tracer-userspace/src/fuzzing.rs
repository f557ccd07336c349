//! Arbitrary bytes as a stream of events through the whole userspace pipeline: the body of
//! the fuzz target (`fuzz/`) and of the smoke run in `cargo test`.

use tracer_common::{ConnTuple, EventHeader, direction, kind};

use crate::{
    capture::event::Event,
    conn::Limits,
    correlate::{Pipeline, ids::IdGen, process::Processes},
};

/// Interpret `data` as events (a control byte, a length, then payload) and feed them to a
/// pipeline with small limits. Returns the number of spans produced.
pub fn run_pipeline(data: &[u8]) -> usize {
    let limits = Limits {
        max_connections: 8,
        idle_ns: 1_000_000,
    };
    let mut pipeline = Pipeline::new(limits, IdGen::seeded(1), Processes::offline());
    let mut spans = 0usize;
    let mut out = |_| spans += 1;
    let mut rest = data;
    let mut ts: u64 = 1;
    while let [ctl, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        ts += (*ctl as u64 & 0x7) * 1_000;
        let kinds = [
            kind::DATA,
            kind::DATA,
            kind::DATA,
            kind::DATA,
            kind::OPEN,
            kind::CLOSE,
            kind::EXIT,
            kind::DATA,
        ];
        let k = kinds[(*ctl >> 3) as usize & 7];
        let mut tuple = ConnTuple {
            family: if ctl & 0x40 != 0 { 10 } else { 2 },
            local_port: 80,
            remote_port: 5000 + (ctl & 1) as u16,
            ..Default::default()
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        // Sometimes claim more bytes moved than were captured.
        let total = if ctl & 0x20 != 0 {
            n as u64 * 7 + 3
        } else {
            n as u64
        };
        let header = EventHeader {
            ts_enter_ns: ts,
            ts_exit_ns: ts + 10,
            sock: 1 + (ctl & 3) as u64,
            total_len: total,
            tgid: 1 + (ctl >> 7) as u32,
            tid: 1,
            fd: 3,
            captured_len: n as u32,
            kind: k,
            direction: if ctl & 0x10 != 0 {
                direction::INGRESS
            } else {
                direction::EGRESS
            },
            tuple,
            ..Default::default()
        };
        pipeline.on_event(&Event { header, payload }, &mut out);
        if ctl & 0x3f == 0x3f {
            pipeline.tick(ts + 2_000_000, &mut out);
        }
    }
    pipeline.finish(&mut out);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short smoke run of the fuzz target's body over pseudo-random inputs seeded with real
    /// HTTP, so `cargo test` catches panics without cargo-fuzz.
    #[test]
    fn fuzz_smoke() {
        let seeds: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        let mut state: u64 = 0x1234_5678;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut produced = 0;
        for _ in 0..3000 {
            let mut data = Vec::new();
            for _ in 0..(next() % 12) {
                let ctl = next() as u8;
                let seed = seeds[(next() % 3) as usize];
                let mut payload = seed.to_vec();
                // Mutate a few bytes and cut at a random point.
                for _ in 0..(next() % 4) {
                    let i = (next() as usize) % payload.len();
                    payload[i] = next() as u8;
                }
                payload.truncate((next() as usize) % (payload.len() + 1));
                data.push(ctl);
                data.push(payload.len() as u8);
                data.extend_from_slice(&payload);
            }
            produced += run_pipeline(&data);
        }
        assert!(produced > 0, "the inputs reach span assembly");
    }
}
