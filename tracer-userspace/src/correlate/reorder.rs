//! Events in time order. The ring buffer orders events by when each syscall *ended*; linking
//! needs them by when their first byte moved (a client's write begins before the server's read
//! of it returns, but may end after it). Events are held for a short window and released
//! sorted by that time; events of one connection keep their relative order.

use std::collections::VecDeque;

use tracer_common::{EventHeader, direction, kind};

use crate::capture::event::Event;

/// Longest an event is held before the pipeline sees it (kernel ns).
pub const WINDOW_NS: u64 = 50_000_000;
/// Events held at most; past this the oldest are released early.
const MAX_HELD: usize = 50_000;

/// The time an event's first byte moved. A `FRAMES` event goes with its syscall's `DATA`
/// event, which follows it.
fn key(h: &EventHeader) -> u64 {
    if matches!(h.kind, kind::DATA | kind::FRAMES) && h.direction == direction::EGRESS {
        h.ts_enter_ns
    } else {
        h.ts_exit_ns
    }
}

/// Payload buffers kept in freed slots for reuse, in bytes of capacity, and the largest
/// buffer kept: holding an event then costs no allocation once the flow is steady.
const SPARE_BYTES: usize = 1 << 20;
const SPARE_CAPACITY: usize = 4096;
/// Slots kept after a burst has drained.
const SPARE_SLOTS: usize = 4096;

/// Held events, released in time order. The events stay in their slots; only their keys (16
/// bytes each) are ordered. The ring buffer delivers events nearly in key order, so each new
/// key goes in at or near the back: holding and releasing an event cost no sort.
#[derive(Default)]
pub struct Reorder {
    /// (first-byte time, slot), in time order; equal times in arrival order.
    held: VecDeque<(u64, u32)>,
    slots: Vec<(EventHeader, Vec<u8>)>,
    /// Slots not holding an event.
    free: Vec<u32>,
    /// Capacity of the payload buffers in free slots.
    spare_bytes: usize,
}

impl Reorder {
    pub fn push(&mut self, ev: &Event<'_>) {
        let slot = match self.free.pop() {
            Some(i) => {
                let (header, payload) = &mut self.slots[i as usize];
                self.spare_bytes -= payload.capacity();
                *header = ev.header;
                payload.extend_from_slice(ev.payload);
                i
            }
            None => {
                self.slots.push((ev.header, ev.payload.to_vec()));
                (self.slots.len() - 1) as u32
            }
        };
        let k = key(&ev.header);
        let at = match self.held.back() {
            Some(&(last, _)) if last > k => self.held.partition_point(|&(t, _)| t <= k),
            _ => self.held.len(),
        };
        self.held.insert(at, (k, slot));
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Release, in order, every event whose first byte moved before `watermark` (all of them
    /// with `u64::MAX`), and the oldest beyond the cap.
    pub fn release(&mut self, watermark: u64, mut f: impl FnMut(&Event<'_>)) {
        while let Some(&(k, slot)) = self.held.front() {
            if k >= watermark && self.held.len() <= MAX_HELD {
                break;
            }
            self.held.pop_front();
            let (header, payload) = &mut self.slots[slot as usize];
            f(&Event {
                header: *header,
                payload,
            });
            let cap = payload.capacity();
            if cap <= SPARE_CAPACITY && self.spare_bytes + cap <= SPARE_BYTES {
                payload.clear();
                self.spare_bytes += cap;
            } else {
                *payload = Vec::new();
            }
            self.free.push(slot);
        }
        if self.held.is_empty() && self.slots.len() > SPARE_SLOTS {
            // After a burst: give the slots beyond the spare ones back.
            self.slots.truncate(SPARE_SLOTS);
            self.free.clear();
            self.free.extend((0..SPARE_SLOTS as u32).rev());
            self.spare_bytes = self.slots.iter().map(|(_, p)| p.capacity()).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, dir: u8, enter: u64, exit: u64) -> EventHeader {
        EventHeader {
            kind,
            direction: dir,
            ts_enter_ns: enter,
            ts_exit_ns: exit,
            ..Default::default()
        }
    }

    /// The pieces the kernel found past a write's copied bytes arrive just before its event,
    /// with the same times, and stay just before it.
    #[test]
    fn frames_stay_just_before_their_write() {
        let mut r = Reorder::default();
        let mut frames = ev(kind::FRAMES, direction::EGRESS, 10, 50);
        frames.captured_len = 0;
        let data = ev(kind::DATA, direction::EGRESS, 10, 50);
        let read = ev(kind::DATA, direction::INGRESS, 20, 30);
        for h in [read, frames, data] {
            r.push(&Event {
                header: h,
                payload: &[],
            });
        }
        let mut order = Vec::new();
        r.release(u64::MAX, |e| order.push(e.header.kind));
        assert_eq!(order, vec![kind::FRAMES, kind::DATA, kind::DATA]);
    }

    #[test]
    fn releases_by_first_byte_time_up_to_the_watermark() {
        let mut r = Reorder::default();
        // The server's read returned (30) before the client's write returned (40), but the
        // write began first (10).
        for h in [
            ev(kind::DATA, direction::INGRESS, 5, 30),
            ev(kind::DATA, direction::EGRESS, 10, 40),
            ev(kind::CLOSE, 0, 100, 100),
        ] {
            r.push(&Event {
                header: h,
                payload: b"",
            });
        }
        let mut order = Vec::new();
        r.release(50, |e| order.push(e.header.ts_exit_ns));
        assert_eq!(order, vec![40, 30]);
        assert_eq!(r.len(), 1, "the close waits for the watermark");
        r.release(u64::MAX, |e| order.push(e.header.ts_exit_ns));
        assert_eq!(order, vec![40, 30, 100]);
        assert!(r.is_empty());
    }

    /// Against the plain model (hold everything, sort stably by key, release the prefix
    /// before the watermark and beyond the cap): events arriving nearly in key order, some
    /// far out of it (a long syscall), released at rising watermarks and past the cap, come
    /// out in the same order, each once, with its own payload.
    #[test]
    fn matches_sorting_everything_held() {
        let mut r = Reorder::default();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut got = Vec::new();
        let mut want = Vec::new();
        for i in 0..(MAX_HELD as u64 + 40_000) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let exit = 10 * i + 1_000_000;
            let back = if rng.is_multiple_of(97) {
                900_000
            } else {
                10 * (rng % 4)
            };
            let dir = if rng.is_multiple_of(2) {
                direction::EGRESS
            } else {
                direction::INGRESS
            };
            let h = ev(kind::DATA, dir, exit - back, exit);
            let bytes = i.to_le_bytes();
            r.push(&Event {
                header: h,
                payload: &bytes[..(rng % 9) as usize],
            });
            model.push((key(&h), exit));
            if i % 1000 == 999 {
                // Now and then nothing is due, and for a while more than the cap is held:
                // only the cap releases.
                let stalled = (10_000..70_000).contains(&i) || i % 7000 == 6999;
                let watermark = if stalled { 0 } else { exit - 5_000 };
                r.release(watermark, |e| {
                    let i = (e.header.ts_exit_ns - 1_000_000) / 10;
                    assert_eq!(e.payload, &i.to_le_bytes()[..e.payload.len()]);
                    got.push((key(&e.header), e.header.ts_exit_ns));
                });
                model.sort_by_key(|&(k, _)| k);
                let over = model.len().saturating_sub(MAX_HELD);
                let n = model
                    .iter()
                    .position(|&(k, _)| k >= watermark)
                    .unwrap_or(model.len())
                    .max(over);
                want.extend(model.drain(..n));
                assert_eq!(got.len(), want.len(), "released after event {i}");
            }
        }
        r.release(u64::MAX, |e| {
            got.push((key(&e.header), e.header.ts_exit_ns))
        });
        model.sort_by_key(|&(k, _)| k);
        want.append(&mut model);
        assert!(r.is_empty());
        assert_eq!(got.len(), want.len());
        let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_difference, None);
    }
}
