//! The end of the flow: spans to the terminal and/or an OTLP receiver, in batches, behind a
//! bounded queue that the capture side never waits on.

pub mod client;
pub mod config;
mod encode;
pub mod otlp;
mod retry;
pub mod terminal;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::correlate::{clock::Clock, span::HttpSpan};

/// Spans held between the pipeline and the exporters; when full, new spans are dropped and
/// counted by the sender.
pub const QUEUE_CAPACITY: usize = 65_536;
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
    mut rx: mpsc::Receiver<HttpSpan>,
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
            got = rx.recv_many(&mut batch, MAX_BATCH) => {
                if got == 0 {
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
        if let Some(o) = &mut sinks.otlp {
            let settled = o.export(&batch, &clock).await;
            counts.failed += settled.failed;
            counts.exported += settled.exported;
            counts.rejected += settled.rejected;
        } else {
            counts.exported += batch.len() as u64;
        }
        batch.clear();
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
