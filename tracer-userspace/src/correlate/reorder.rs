//! Events in time order. The ring buffer orders events by when each syscall *ended*; linking
//! needs them by when their first byte moved (a client's write begins before the server's read
//! of it returns, but may end after it). Events are held for a short window and released
//! sorted by that time; events of one connection keep their relative order.

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

/// Freed slots that keep their payload buffer for reuse, and the largest buffer kept:
/// holding an event then costs no allocation once the flow is steady.
const SPARE_BUFFERS: usize = 4096;
const SPARE_CAPACITY: usize = 4096;

/// Held events, released in time order. The events stay in their slots; only their sort keys
/// (24 bytes each) move while sorting and releasing.
#[derive(Default)]
pub struct Reorder {
    /// (first-byte time, arrival sequence, slot).
    held: Vec<(u64, u64, u32)>,
    slots: Vec<(EventHeader, Vec<u8>)>,
    /// Slots not holding an event.
    free: Vec<u32>,
    seq: u64,
}

impl Reorder {
    pub fn push(&mut self, ev: &Event<'_>) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                let (header, payload) = &mut self.slots[i as usize];
                *header = ev.header;
                payload.extend_from_slice(ev.payload);
                i
            }
            None => {
                self.slots.push((ev.header, ev.payload.to_vec()));
                (self.slots.len() - 1) as u32
            }
        };
        self.held.push((key(&ev.header), self.seq, slot));
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
        if self.held.is_empty() {
            return;
        }
        // Stable and run-adaptive: held events are mostly in order already (a sorted rest and
        // a nearly sorted arrival), which this sorts in about linear time.
        self.held.sort_by_key(|&(k, seq, _)| (k, seq));
        let over = self.held.len().saturating_sub(MAX_HELD);
        let n = self
            .held
            .iter()
            .position(|&(k, _, _)| k >= watermark)
            .unwrap_or(self.held.len())
            .max(over);
        for (_, _, slot) in self.held.drain(..n) {
            let (header, payload) = &mut self.slots[slot as usize];
            f(&Event {
                header: *header,
                payload,
            });
            if self.free.len() < SPARE_BUFFERS && payload.capacity() <= SPARE_CAPACITY {
                payload.clear();
            } else {
                *payload = Vec::new();
            }
            self.free.push(slot);
        }
        if self.held.is_empty() && self.slots.len() > SPARE_BUFFERS {
            // After a burst: give the slots beyond the spare ones back.
            self.slots.truncate(SPARE_BUFFERS);
            self.free.clear();
            self.free.extend((0..SPARE_BUFFERS as u32).rev());
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
}
