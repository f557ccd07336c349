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

/// Arbitrary bytes as HPACK header blocks (the first byte says where a block ends) through
/// one decoder, and as HTTP/2 frames cut into chunks through one frame reader. Returns the
/// number of fields decoded and frames found.
pub fn run_http2(data: &[u8]) -> usize {
    use crate::protocol::{
        http1::stream::Chunk,
        http2::{frame, hpack},
    };
    struct Count(usize);
    impl frame::Sink for Count {
        fn frame(&mut self, header: frame::Header, payload: &[u8], _ts: u64) {
            self.0 += 1;
            let _ = frame::headers_fragment(&header, payload);
        }
        fn data(&mut self, _stream: u32, _len: u64, _end: bool, _ts: u64) {}
        fn gap(&mut self) {}
        fn lost(&mut self) {}
    }
    let mut found = 0;
    let mut decoder = hpack::Decoder::new(data.first().is_some_and(|b| b & 1 == 0));
    let mut rest = data;
    while let [len, tail @ ..] = rest {
        let (block, next) = tail.split_at((*len as usize).min(tail.len()));
        if let Ok(b) = decoder.decode(block) {
            found += b.fields.len();
        }
        rest = next;
    }
    let mut reader = match data.len() % 3 {
        0 => frame::Reader::after_preface(),
        1 => frame::Reader::at_frame(),
        _ => frame::Reader::joining(),
    };
    let mut count = Count(0);
    for (i, piece) in data.chunks(7 + data.len() % 13).enumerate() {
        let total = piece.len() as u64 + if i % 5 == 4 { 100 } else { 0 };
        let chunk = Chunk {
            data: piece,
            total,
            ts_first: i as u64,
            ts_last: i as u64,
            beyond: &[],
        };
        reader.feed(chunk, &mut count);
    }
    found + count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short smoke run of the fuzz target's body over pseudo-random inputs seeded with real
    /// HTTP, so `cargo test` catches panics without cargo-fuzz.
    #[test]
    fn fuzz_smoke() {
        // An HTTP/2 client's first bytes: the preface, SETTINGS, a HEADERS frame (GET / on
        // stream 1, static table entries) with END_STREAM.
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\
                          \0\0\x03\x01\x05\0\0\0\x01\x82\x86\x84";
        let seeds: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            h2,
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
                let seed = seeds[(next() % 4) as usize];
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

    /// The HTTP/2 target's body over random and mutated frames: no panic, and valid input
    /// gets through.
    #[test]
    fn http2_fuzz_smoke() {
        let mut state: u64 = 0x9876_5432;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid: &[u8] = b"\x03\x82\x86\x84\0\0\x03\x01\x05\0\0\0\x01\x82\x86\x84";
        let mut found = 0;
        for _ in 0..5000 {
            let mut data = valid.to_vec();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % data.len();
                data[i] = next() as u8;
            }
            for _ in 0..(next() % 40) {
                data.push(next() as u8);
            }
            found += run_http2(&data);
        }
        assert!(found > 0);
    }
}
