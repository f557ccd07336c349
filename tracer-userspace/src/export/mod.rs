//! The end of the flow: spans to the terminal and/or an OTLP receiver, in batches, behind a
//! bounded queue that the capture side never waits on.

pub mod client;
pub mod config;
mod encode;
pub mod otlp;
mod retry;
pub mod terminal;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::correlate::{clock::Clock, span::HttpSpan};

/// Spans held between the pipeline and the exporters; when full, new spans are dropped and
/// counted by the sender.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Hand-overs the queue holds (each a read of the ring buffer's worth of spans).
const QUEUE_BATCHES: usize = 1024;
/// Emptied hand-over buffers kept for the pipeline to fill again, and the largest kept (in
/// spans): a hand-over then costs no allocation once the flow is steady.
const SPARE_BATCHES: usize = 4;
const SPARE_BATCH_SPANS: usize = 128;

/// Emptied hand-over buffers on their way back to the pipeline.
type Spare = Arc<std::sync::Mutex<Vec<Vec<HttpSpan>>>>;

/// The queue between the pipeline and the exporter, bounded in spans. Spans are handed over
/// in batches, one per read of the ring buffer, so the exporter's thread wakes once per batch
/// rather than once per span.
pub fn queue() -> (SpanQueue, QueueReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let queued = Arc::new(AtomicUsize::new(0));
    let spare = Spare::default();
    (
        SpanQueue {
            tx,
            queued: queued.clone(),
            pending: Vec::new(),
            spare: spare.clone(),
        },
        QueueReceiver { rx, queued, spare },
    )
}

/// The pipeline's end of [`queue`].
pub struct SpanQueue {
    tx: mpsc::Sender<Vec<HttpSpan>>,
    /// Spans handed over and not yet taken by the exporter.
    queued: Arc<AtomicUsize>,
    /// Spans waiting for the next hand-over.
    pending: Vec<HttpSpan>,
    spare: Spare,
}

impl SpanQueue {
    /// Hold `span` for the next [`SpanQueue::flush`]; false (and the span dropped) if the
    /// queue is full.
    pub fn push(&mut self, span: HttpSpan) -> bool {
        if self.depth() >= QUEUE_CAPACITY {
            return false;
        }
        self.pending.push(span);
        true
    }

    /// Hand the held spans to the exporter without waiting; returns how many were lost
    /// (the exporter has stopped, or too many hand-overs wait).
    pub fn flush(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        // While the exporter is busy sending, no emptied buffer comes back: a new one starts
        // with room for as many spans as this batch, since reads of the ring buffer under a
        // steady load bring about as many each time (grown span by span, it would be copied
        // whole at each doubling). A batch far smaller than its room gives the rest back
        // before it waits in the queue.
        let next = self.buffer(self.pending.len());
        let mut batch = std::mem::replace(&mut self.pending, next);
        let n = batch.len();
        if batch.capacity() > 2 * n + SPARE_BATCH_SPANS {
            batch.shrink_to_fit();
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return n;
        }
        0
    }

    /// An empty buffer for a batch: one the exporter emptied, or a new one with room for
    /// `spans`.
    pub fn buffer(&self, spans: usize) -> Vec<HttpSpan> {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Vec::with_capacity(spans))
    }

    /// Hand `batch` over, waiting while the queue is full (for replays, which may wait).
    pub fn blocking_send(&self, batch: Vec<HttpSpan>) {
        let n = batch.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.blocking_send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Spans queued or held for the next hand-over.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.pending.len()
    }
}

/// The exporter's end of [`queue`].
pub struct QueueReceiver {
    rx: mpsc::Receiver<Vec<HttpSpan>>,
    queued: Arc<AtomicUsize>,
    spare: Spare,
}

impl QueueReceiver {
    /// Move every batch waiting now into `into` (waiting for the first); false once the
    /// sending side is gone and nothing is left. The emptied buffers go back to the sender.
    async fn recv_into(&mut self, into: &mut Vec<HttpSpan>) -> bool {
        let Some(first) = self.rx.recv().await else {
            return false;
        };
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(mut batch) = next {
            taken += batch.len();
            into.append(&mut batch);
            if batch.capacity() <= SPARE_BATCH_SPANS
                && let Ok(mut spare) = self.spare.lock()
                && spare.len() < SPARE_BATCHES
            {
                spare.push(batch);
            }
            next = self.rx.try_recv().ok();
        }
        self.queued.fetch_sub(taken, Ordering::Relaxed);
        true
    }
}
/// Spans per export request.
const MAX_BATCH: usize = 2048;
/// Longest a span waits in a partial batch.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Counts of the export side, for the periodic report.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub exported: u64,
    pub failed: u64,
    /// Spans a receiver took the request with but rejected (`partial_success`).
    pub rejected: u64,
}

/// Where spans go.
pub struct Sinks {
    pub terminal: Option<terminal::Terminal>,
    pub otlp: Option<otlp::Otlp>,
}

/// Run until the sending side closes, then flush what is left and shut the exporter down.
/// Returns the final counts. Kernel times become wall-clock times through `clock`; when
/// `follow_wall_clock` is set, a step of the system clock (more than a millisecond) is followed.
pub async fn run(
    mut sinks: Sinks,
    mut rx: QueueReceiver,
    stats: tokio::sync::watch::Sender<ExportStats>,
    mut clock: Clock,
    follow_wall_clock: bool,
) -> ExportStats {
    let mut batch: Vec<HttpSpan> = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counts = ExportStats::default();
    let mut open = true;
    while open {
        tokio::select! {
            got = rx.recv_into(&mut batch) => {
                if !got {
                    open = false;
                }
                if batch.len() < MAX_BATCH && open {
                    continue;
                }
            }
            _ = tick.tick() => {
                if let Some(o) = &mut sinks.otlp {
                    let settled = o.reap();
                    counts.failed += settled.failed;
                    counts.exported += settled.exported;
                    counts.rejected += settled.rejected;
                    stats.send_replace(counts);
                }
                // Re-reading the offset every time would make it jitter by tens of ns.
                let now = Clock::now();
                if follow_wall_clock && (now.offset_ns() - clock.offset_ns()).abs() > 1_000_000 {
                    clock = now;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(t) = &sinks.terminal {
            t.print(&batch, &clock);
        }
        for chunk in batch.chunks(MAX_BATCH) {
            if let Some(o) = &mut sinks.otlp {
                let settled = o.export(chunk, &clock).await;
                counts.failed += settled.failed;
                counts.exported += settled.exported;
                counts.rejected += settled.rejected;
            } else {
                counts.exported += chunk.len() as u64;
            }
        }
        batch.clear();
        // After a burst, give back most of the room it took.
        batch.shrink_to(4 * SPARE_BATCH_SPANS);
        stats.send_replace(counts);
    }
    if let Some(o) = &mut sinks.otlp {
        let settled = o.finish().await;
        counts.failed += settled.failed;
        counts.exported += settled.exported;
        counts.rejected += settled.rejected;
        o.shutdown();
        stats.send_replace(counts);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::span::{Kind, tests::sample};

    #[tokio::test]
    async fn the_queue_hands_over_batches_and_bounds_spans() {
        let (mut tx, mut rx) = queue();
        for _ in 0..3 {
            assert!(tx.push(sample(Kind::Server)));
        }
        assert_eq!(tx.depth(), 3, "held for the hand-over");
        assert_eq!(tx.flush(), 0);
        assert!(tx.push(sample(Kind::Client)));
        assert_eq!(tx.flush(), 0);
        assert_eq!(tx.depth(), 4, "handed over, not yet taken");
        let mut got = Vec::new();
        assert!(rx.recv_into(&mut got).await);
        assert_eq!(got.len(), 4, "both hand-overs taken at once");
        assert_eq!(tx.depth(), 0);
        // Full: the span past the capacity is refused, the held ones stay.
        while tx.depth() < QUEUE_CAPACITY {
            assert!(tx.push(sample(Kind::Server)));
        }
        assert!(!tx.push(sample(Kind::Server)));
        assert_eq!(tx.flush(), 0);
        assert!(!tx.push(sample(Kind::Server)), "still full until taken");
    }

    /// With no emptied buffer back, the next batch starts with room for as many spans as the
    /// last; a batch that fills little of its room waits in the queue without the rest.
    #[tokio::test]
    async fn a_new_batch_has_room_for_the_last_ones_spans() {
        let (mut tx, mut rx) = queue();
        for _ in 0..1000 {
            assert!(tx.push(sample(Kind::Server)));
        }
        assert_eq!(tx.flush(), 0);
        assert!(tx.pending.capacity() >= 1000, "{}", tx.pending.capacity());
        assert!(tx.push(sample(Kind::Server)));
        assert_eq!(tx.flush(), 0);
        let first = rx.rx.recv().await.unwrap();
        let second = rx.rx.recv().await.unwrap();
        assert_eq!((first.len(), second.len()), (1000, 1));
        assert!(
            second.capacity() <= 2 + SPARE_BATCH_SPANS,
            "{}",
            second.capacity()
        );
    }

    #[tokio::test]
    async fn a_hand_over_to_a_stopped_exporter_is_counted_lost() {
        let (mut tx, rx) = queue();
        drop(rx);
        assert!(tx.push(sample(Kind::Server)));
        assert!(tx.push(sample(Kind::Server)));
        assert_eq!(tx.flush(), 2);
        assert_eq!(tx.depth(), 0);
    }
}
