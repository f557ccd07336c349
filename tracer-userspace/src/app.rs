//! Wiring: attach the probes, run the capture loop that feeds the pipeline, and the export
//! task behind a bounded queue; report counters; shut down cleanly on SIGINT/SIGTERM. Also
//! the offline path: a recording replayed through the same pipeline and exporters.

use std::{
    fs::File,
    io::{BufReader, BufWriter},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracer_common::counter;

use aya::maps::{MapData, RingBuf};

use crate::{
    capture::{
        Probes,
        event::Event,
        record::{Item, Recorder, Replay},
    },
    cli::{BenchStage, Output},
    conn::Limits,
    correlate::{
        Pipeline, Stats,
        clock::{Clock, monotonic_now},
        ids::IdGen,
        process::{Process, Processes},
        reorder::{self, Reorder},
        span::HttpSpan,
    },
    export::{self, ExportStats, Sinks, otlp, terminal::Terminal},
    filter::Filter,
    metrics::{
        self, Snapshot,
        graph::Graph,
        otlp::{MetricsConfig, OtlpMetrics},
        red::Red,
        serve::{self, Scrape},
    },
};

/// Where spans go and what they carry, resolved from flags and environment.
pub struct SinkConfig {
    pub otlp: Option<otlp::OtlpConfig>,
    pub output: Output,
    pub capture: crate::correlate::Capture,
    /// Which traces are exported (`OTEL_TRACES_SAMPLER`).
    pub sampler: crate::correlate::sample::Sampler,
}

/// Everything the agent needs to run, resolved from flags and environment.
pub struct Config {
    pub filter: Filter,
    pub capture_bytes: u32,
    /// Inject `traceparent` into outgoing requests (`--propagate`).
    pub propagate: bool,
    /// Probe TLS libraries for HTTPS plaintext (not `--no-tls`).
    pub tls: bool,
    /// Serve the counters at `0.0.0.0:PORT/metrics` (`--prometheus-port`).
    pub prometheus_port: Option<u16>,
    /// Series per request-duration metric (`--metrics-series-limit`).
    pub metrics_series_limit: usize,
    /// Push metrics over OTLP (`OTEL_METRICS_EXPORTER=otlp`).
    pub otlp_metrics: Option<MetricsConfig>,
    pub sinks: SinkConfig,
    /// Also write every captured event to this file.
    pub record: Option<PathBuf>,
    /// A part of the agent only (`--bench-stage`, for the benchmark).
    pub bench_stage: Option<BenchStage>,
}

/// How far back in a recording events may need reordering (a long syscall's first byte).
const REPLAY_WINDOW_NS: u64 = 1_000_000_000;

/// Ids in replays come from this seed, so that a replay prints the same spans every time.
const REPLAY_SEED: u64 = 0x7261_6365_7265_6364;

fn sinks(config: &SinkConfig) -> anyhow::Result<Sinks> {
    let otlp = match &config.otlp {
        Some(c) => Some(
            otlp::Otlp::new(c)
                .with_context(|| format!("setting up OTLP export to {}", c.endpoint))?,
        ),
        None => None,
    };
    let terminal = match config.output {
        Output::Text => Some(Terminal::text()),
        Output::Json => Some(Terminal::json()),
        Output::None => None,
    };
    Ok(Sinks { terminal, otlp })
}

/// Feed a recording through the pipeline; spans go to `out`. Returns the recording's clock
/// and the pipeline's counts.
pub fn replay_recording(
    input: impl std::io::Read,
    capture: crate::correlate::Capture,
    mut out: impl FnMut(HttpSpan),
) -> anyhow::Result<(Clock, Stats)> {
    let mut replay = Replay::new(input)?;
    let clock = Clock::fixed(replay.clock_offset_ns);
    let mut pipeline = Pipeline::new(
        Limits::default(),
        IdGen::seeded(REPLAY_SEED),
        Processes::offline(),
    )
    .capturing(capture);
    // Recordings hold events in ring-buffer order: put them in time order as live does.
    let mut reorder = Reorder::default();
    while let Some(item) = replay.next_item()? {
        match item {
            Item::Process(p) => pipeline.add_process(p),
            Item::Event(raw) => {
                let ev = Event::decode(&raw)?;
                let watermark = ev.header.ts_exit_ns.saturating_sub(REPLAY_WINDOW_NS);
                reorder.push(&ev);
                reorder.release(watermark, |e| pipeline.on_event(e, &mut out));
            }
        }
    }
    reorder.release(u64::MAX, |e| pipeline.on_event(e, &mut out));
    pipeline.finish(&mut out);
    Ok((clock, pipeline.stats()))
}

/// `tracer replay FILE`: the recording's spans, printed or exported like live ones.
pub async fn replay(path: &Path, config: SinkConfig) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let input = BufReader::new(file);
    // The clock offset is in the file header: read it before starting the exporter.
    let offset = Replay::new(File::open(path)?)
        .with_context(|| format!("reading {}", path.display()))?
        .clock_offset_ns;
    let (tx, rx) = export::queue();
    let (stats_tx, _stats_rx) = watch::channel(ExportStats::default());
    let exporter = tokio::spawn(export::run(
        sinks(&config)?,
        rx,
        stats_tx,
        Clock::fixed(offset),
        false,
    ));
    let capture = config.capture.clone();
    let worker = tokio::task::spawn_blocking(move || {
        // The export side drains until the sender is dropped: waiting here loses nothing.
        const CHUNK: usize = 128;
        let mut chunk = tx.buffer(CHUNK);
        let result = replay_recording(input, capture, |span| {
            chunk.push(span);
            if chunk.len() == CHUNK {
                tx.blocking_send(std::mem::replace(&mut chunk, tx.buffer(CHUNK)));
            }
        });
        tx.blocking_send(chunk);
        result
    });
    let (_, stats) = worker.await.context("the replay task failed")??;
    let exported = exporter.await.context("the export task failed")?;
    log::info!(
        "replayed {} events: {} spans ({} exported, {} failed to export), open requests not \
         exported: {}",
        stats.events,
        stats.spans,
        exported.exported,
        exported.failed,
        stats.open_at_finish
    );
    Ok(())
}

/// How often the ring buffer is read when no wakeup came (programs wake the agent only when
/// much is pending).
const POLL_EVERY: Duration = Duration::from_millis(20);
/// While reads find nothing and nothing is held, the wait between reads doubles up to this:
/// an idle agent wakes a few times a second, not fifty. The first event after a quiet spell
/// waits at most this long to be read; its timestamps are the kernel's either way.
const POLL_QUIET_MAX: Duration = Duration::from_millis(320);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// How often the cgroups below the `--cgroup` choices are looked for (the flag's help says 2 s).
const CGROUPS_EVERY: Duration = Duration::from_secs(2);
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The wait before the next timed read of the ring buffer, after one that found `read`
/// records with `held` events still waiting to be released: the shortest while anything moves,
/// doubling while all is quiet.
fn next_poll(last: Duration, read: usize, held: usize) -> Duration {
    if read > 0 || held > 0 {
        POLL_EVERY
    } else {
        (last * 2).min(POLL_QUIET_MAX)
    }
}

/// Scrapes waiting for the capture loop; a scraper past this waits in its own task.
const SCRAPES_QUEUED: usize = 4;

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Bound before the probes load, so that a port in use fails start-up at once.
    let metrics_server = match config.prometheus_port {
        Some(port) => Some(serve::Server::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?),
        None => None,
    };
    let mut probes = Probes::attach(
        &config.filter,
        config.capture_bytes,
        config.propagate,
        config.tls,
        &config.sinks.sampler,
        config.bench_stage,
    )?;
    // The TLS libraries of the processes running now; later ones are reported by the kernel.
    if probes.tls_enabled() {
        let selected = crate::tls::selected_pids(&config.filter);
        if probes.discover_tls(selected) == 0 {
            log::info!("TLS: no OpenSSL or Go crypto/tls in the traced processes yet");
        }
        // Programs that start later (by name, or any) may use the system's libssl before the
        // agent hears of them; processes chosen by pid already run and were looked at.
        if config.filter.pids.is_empty() {
            probes.discover_system_tls();
        }
    }
    let ring = probes.take_events()?;
    // Start-up parsed the kernel's BTF (megabytes, now freed): give that memory back.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    // SAFETY: the ring buffer owns its map fd, which stays open until the AsyncFd drops it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;

    let (tx, rx) = export::queue();
    let (stats_tx, stats_rx) = watch::channel(ExportStats::default());
    // One clock for the exporter and the recording, so that a replay gives the same times.
    let clock = Clock::now();
    let exporter = tokio::spawn(export::run(
        sinks(&config.sinks)?,
        rx,
        stats_tx,
        clock,
        true,
    ));

    let otel = match &config.otlp_metrics {
        Some(c) => {
            let families = metrics::families(
                &Snapshot::default(),
                &metrics::series_counts(&Red::default(), &Graph::default()),
            );
            let m = OtlpMetrics::start(c, families).with_context(|| {
                format!("setting up OTLP metrics export to {}", c.otlp.endpoint)
            })?;
            log::info!(
                "exporting metrics to {} every {:?} ({:?} temporality)",
                c.otlp.endpoint,
                c.interval,
                c.temporality
            );
            Some(m)
        }
        None => None,
    };
    let recorder = match &config.record {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            Some(Recorder::new(BufWriter::new(file), clock.offset_ns())?)
        }
        None => None,
    };
    let mut flow = Flow {
        pipeline: Pipeline::new(Limits::default(), IdGen::new(), Processes::new())
            .capturing(config.sinks.capture.clone())
            .sampling(config.sinks.sampler),
        out: Outlet {
            tx,
            dropped: 0,
            // Recorded only when something reads them.
            red: (config.prometheus_port.is_some() || otel.is_some())
                .then(|| Red::new(config.metrics_series_limit)),
            graph: (config.prometheus_port.is_some() || otel.is_some())
                .then(|| Graph::new(config.metrics_series_limit)),
            otel,
            unsampled: 0,
        },
        decode_errors: 0,
        recorder,
        reorder: Reorder::default(),
        mapped: Default::default(),
        discard: config.bench_stage == Some(BenchStage::Discard),
    };

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut poll_every = POLL_EVERY;
    let poll = tokio::time::sleep(POLL_EVERY);
    tokio::pin!(poll);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    let mut publish = tokio::time::interval(
        config
            .otlp_metrics
            .as_ref()
            .map_or(HOUSEKEEPING_EVERY, |c| c.interval.min(HOUSEKEEPING_EVERY)),
    );
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cgroups = tokio::time::interval(CGROUPS_EVERY);
    cgroups.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Each scrape asks this loop for a snapshot, answered between two ring-buffer reads: the
    // pipeline's counts are as of the read made for the scrape (less the events held
    // for reordering), the export counts as of the exporter's last batch or reap (at most
    // 500 ms old), the kernel's are read for the scrape.
    let (scrape_tx, mut scrapes) = mpsc::channel::<Scrape>(SCRAPES_QUEUED);
    let metrics_task = match metrics_server {
        Some(server) => {
            if let Ok(addr) = server.local_addr() {
                log::info!("serving metrics at http://{addr}/metrics");
            }
            Some(tokio::spawn(server.run(scrape_tx.clone())))
        }
        None => None,
    };

    let destination = match &config.sinks.otlp {
        Some(c) => format!("exporting to {} ({:?})", c.endpoint, c.protocol),
        None => "printing spans here (no OTLP endpoint configured)".to_string(),
    };
    log::info!(
        "ready: tracing HTTP of {}; {destination}; sampler {}",
        config.filter.describe(),
        config.sinks.sampler.describe()
    );

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                guard.clear_ready();
                flow.read(ring.get_mut(), &mut probes)?;
                // Woken because much is pending: the quiet spell is over.
                if poll_every > POLL_EVERY {
                    poll_every = POLL_EVERY;
                    poll.as_mut().reset(tokio::time::Instant::now() + POLL_EVERY);
                }
            }
            _ = &mut poll => {
                let read = flow.read(ring.get_mut(), &mut probes)?;
                poll_every = next_poll(poll_every, read, flow.reorder.len());
                poll.as_mut().reset(tokio::time::Instant::now() + poll_every);
            }
            Some(reply) = scrapes.recv() => {
                flow.drain(ring.get_mut())?;
                // Only scrapes read the histograms: the periodic report does not copy them.
                let red = flow.out.red.clone().unwrap_or_default();
                let graph = flow.out.graph.as_ref().map(Graph::edges_only).unwrap_or_default();
                let _ = reply.send(Snapshot { red, graph, ..flow.snapshot(&probes, &stats_rx) });
            }
            _ = housekeeping.tick() => flow.housekeeping(),
            _ = publish.tick(), if flow.out.otel.is_some() => flow.publish(&probes, &stats_rx),
            _ = cgroups.tick(), if !config.filter.cgroups.is_empty() => {
                if let Err(e) = probes.refresh_cgroups() {
                    log::warn!("updating the cgroup filter failed: {e}");
                }
            }
            _ = report.tick() => {
                log_report(&flow.snapshot(&probes, &stats_rx));
                if let Err(e) = probes.sweep_mutes() {
                    log::debug!("sweeping the mutes of exited processes failed: {e}");
                }
            }
        }
    }

    log::info!("shutting down: detaching probes and flushing spans");
    // The endpoint's counters would stop moving from here on: close it.
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(scrape_tx);
    // Detach first so nothing new arrives, then take what the ring still holds.
    let counters = probes.counters().map_err(|e| e.to_string());
    drop(probes);
    flow.drain(ring.get_mut())?;
    let finished = flow.finish()?;
    let (s, dropped) = (finished.stats, finished.dropped);
    let final_stats = match tokio::time::timeout(Duration::from_secs(5), exporter).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => anyhow::bail!("the export task failed: {e}"),
        Err(_) => {
            log::warn!("export did not finish within 5 s; unsent spans are lost");
            *stats_rx.borrow()
        }
    };
    if let Some(m) = finished.otel {
        // The last push carries the final counts.
        m.publish(metrics::families(
            &Snapshot {
                pipeline: s,
                export: final_stats,
                queue_dropped: dropped,
                queue_depth: 0,
                decode_errors: finished.decode_errors,
                kernel: counters.clone(),
                unsampled: finished.unsampled,
                ..Snapshot::default()
            },
            &finished.series,
        ));
        m.shutdown().await;
    }
    let counters = counters.ok();
    log::info!(
        "stopped: {} spans ({} exported, {} failed to export, {} rejected by the receiver, {} \
         dropped at the queue), open requests not exported: {}, {} events{}",
        s.spans,
        final_stats.exported,
        final_stats.failed,
        final_stats.rejected,
        dropped,
        s.open_at_finish,
        s.events,
        counters
            .map(|c| format!(", kernel: {}", kernel_report(&c)))
            .unwrap_or_default()
    );
    Ok(())
}

fn kernel_report(c: &[u64; counter::COUNT as usize]) -> String {
    counter::NAMES
        .iter()
        .zip(c.iter())
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn log_report(snapshot: &Snapshot) {
    let Snapshot {
        pipeline: s,
        export: e,
        queue_dropped: dropped,
        queue_depth,
        decode_errors,
        kernel,
        red: _,
        graph: _,
        unsampled,
    } = snapshot;
    let kernel = match kernel {
        Ok(c) => kernel_report(c),
        Err(err) => format!("unreadable ({err})"),
    };
    log::info!(
        "stats: spans={} exported={} export_failed={} export_rejected={} \
         queue_depth={queue_depth} queue_dropped={} \
         no_response={} connections={} unmatched_responses={} desyncs={} evicted_idle={} \
         evicted_full={} pending_overflow={} tls_connections={} tls_misattributed={} \
         decode_errors={} unsampled={unsampled} kernel: {kernel}",
        s.spans,
        e.exported,
        e.failed,
        e.rejected,
        dropped,
        s.spans_without_response,
        s.connections,
        s.unmatched_responses,
        s.desyncs,
        s.evicted_idle,
        s.evicted_full,
        s.pending_overflow,
        s.tls_connections,
        s.tls_misattributed,
        decode_errors,
    );
}

/// Where finished spans go: into the request-duration metrics, then, when sampled, into the
/// export queue; each span not queued is counted.
struct Outlet {
    tx: export::SpanQueue,
    /// Spans dropped because the export queue was full.
    dropped: u64,
    /// The request-duration metrics, fed every span before the export queue (with
    /// `--prometheus-port` or OTLP metrics: nothing else reads them).
    red: Option<Red>,
    /// The service graph, fed alike.
    graph: Option<Graph>,
    /// OTLP metrics: the same observations as `red` and `graph`, after their series limits.
    otel: Option<OtlpMetrics>,
    /// Spans not exported because their trace was not sampled.
    unsampled: u64,
}

impl Outlet {
    /// What the service graph gained, to the OTLP metrics too.
    fn record_edges(&self, added: &[(metrics::red::Attributes, metrics::graph::Observation)]) {
        if let Some(otel) = &self.otel {
            for (edge, o) in added {
                otel.record_edge(edge, o);
            }
        }
    }

    /// Give up on the service graph's ends that waited since before `now_ns` minus its wait.
    fn expire_graph(&mut self, now_ns: u64) {
        if let Some(graph) = &mut self.graph {
            let added = graph.expire(now_ns);
            self.record_edges(&added);
        }
    }

    /// The metrics' series counts (zero where nothing is recorded).
    fn series_counts(&self) -> metrics::SeriesCounts {
        match (&self.red, &self.graph) {
            (Some(red), Some(graph)) => metrics::series_counts(red, graph),
            _ => metrics::series_counts(&Red::default(), &Graph::default()),
        }
    }

    fn send(&mut self, span: HttpSpan) {
        // Metrics count every exchange; only sampled spans are exported.
        match (&mut self.red, &self.otel) {
            (Some(red), Some(otel)) => {
                let (instrument, attributes, seconds) = red.record_returning(&span);
                otel.record(instrument, &attributes, seconds);
            }
            (Some(red), None) => red.record(&span),
            _ => {}
        }
        if let Some(graph) = &mut self.graph {
            let added = graph.record(&span);
            self.record_edges(&added);
        }
        if span.trace_flags & 1 == 0 {
            self.unsampled += 1;
            return;
        }
        if !self.tx.push(span) {
            self.lost(1);
        }
    }

    /// Hand the spans of this read of the ring buffer to the exporter, at once.
    fn flush(&mut self) {
        let lost = self.tx.flush();
        self.lost(lost);
    }

    fn lost(&mut self, spans: usize) {
        if spans > 0 && self.dropped == 0 {
            log::warn!("export queue full: dropping spans (counted in the report)");
        }
        self.dropped += spans as u64;
    }
}

/// The capture side's final counts, and the OTLP metrics still to flush.
struct Finished {
    stats: Stats,
    dropped: u64,
    decode_errors: u64,
    unsampled: u64,
    series: metrics::SeriesCounts,
    otel: Option<OtlpMetrics>,
}

/// The capture side's state: the pipeline and the way out of finished spans. Owned by the
/// capture loop alone.
struct Flow {
    pipeline: Pipeline,
    out: Outlet,
    decode_errors: u64,
    recorder: Option<Recorder<BufWriter<File>>>,
    /// Events held briefly so the pipeline sees them in time order.
    reorder: Reorder,
    /// Traced processes that started a program or mapped an executable file since the last
    /// look for TLS libraries.
    mapped: std::collections::BTreeSet<u32>,
    /// `--bench-stage discard`: events are taken from the ring buffer and dropped.
    discard: bool,
}

impl Flow {
    /// The counters as they are now, for the report and for scrapes (without the
    /// histograms, which scrapes add).
    fn snapshot(&self, probes: &Probes, export: &watch::Receiver<ExportStats>) -> Snapshot {
        Snapshot {
            pipeline: self.pipeline.stats(),
            export: *export.borrow(),
            queue_dropped: self.out.dropped,
            queue_depth: self.out.tx.depth() as u64,
            decode_errors: self.decode_errors,
            kernel: probes.counters().map_err(|e| e.to_string()),
            red: Red::default(),
            graph: Graph::default(),
            unsampled: self.out.unsampled,
        }
    }

    /// [`Flow::drain`], then what it asks of the probes: mutes, and TLS libraries to look at.
    /// Returns how many records were read.
    fn read(&mut self, ring: &mut RingBuf<MapData>, probes: &mut Probes) -> anyhow::Result<usize> {
        let read = self.drain(ring)?;
        self.apply_mutes(probes);
        self.discover_tls(probes);
        Ok(read)
    }

    /// Read everything the ring buffer holds into the pipeline (and the recording); returns
    /// how many records were read.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<usize> {
        let mut read = 0;
        if self.discard {
            while ring.next().is_some() {
                read += 1;
            }
            return Ok(read);
        }
        while let Some(item) = ring.next() {
            read += 1;
            if let Some(r) = &mut self.recorder {
                r.event(&item, Process::read)
                    .context("writing the recording")?;
            }
            match Event::decode(&item) {
                Ok(ev) if ev.header.kind == tracer_common::kind::MAPPED => {
                    self.mapped.insert(ev.header.tgid);
                }
                Ok(ev) => self.reorder.push(&ev),
                Err(e) => {
                    if self.decode_errors == 0 {
                        log::warn!("undecodable event: {e}");
                    }
                    self.decode_errors += 1;
                }
            }
        }
        self.release(monotonic_now().saturating_sub(reorder::WINDOW_NS));
        Ok(read)
    }

    /// Feed the pipeline every held event older than `watermark`.
    fn release(&mut self, watermark: u64) {
        let out = &mut self.out;
        let pipeline = &mut self.pipeline;
        self.reorder
            .release(watermark, |ev| pipeline.on_event(ev, &mut |s| out.send(s)));
        self.out.flush();
    }

    /// Stop the kernel copying bytes of connections the pipeline has no use for.
    fn apply_mutes(&mut self, probes: &mut Probes) {
        for m in self.pipeline.take_mutes() {
            if let Err(e) = probes.mute(m.tgid, m.fd, m.sock) {
                log::debug!("muting a connection failed: {e}");
            }
        }
        if let Err(e) = probes.release_lost() {
            log::debug!("taking connections out of the sock hash failed: {e}");
        }
    }

    /// Probe the TLS libraries of processes that started a program or mapped a file.
    fn discover_tls(&mut self, probes: &mut Probes) {
        if !self.mapped.is_empty() {
            probes.discover_tls(std::mem::take(&mut self.mapped));
        }
    }

    fn housekeeping(&mut self) {
        let out = &mut self.out;
        self.pipeline.tick(monotonic_now(), &mut |s| out.send(s));
        self.out.flush();
        if let Some(red) = &mut self.out.red {
            red.expire(monotonic_now());
        }
        self.out.expire_graph(monotonic_now());
        // Bursts (thousands of connections at once) leave freed memory in the allocator's
        // per-thread arenas: return it.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
    }

    /// Hand the counters as they are now to the OTLP metrics, for their next export.
    fn publish(&self, probes: &Probes, export: &watch::Receiver<ExportStats>) {
        if let Some(otel) = &self.out.otel {
            let series = self.out.series_counts();
            otel.publish(metrics::families(&self.snapshot(probes, export), &series));
        }
    }

    /// Finish the pipeline, the recording and the queue (and the service graph's waiting
    /// ends); returns the final counts and the OTLP metrics (to flush once the spans are out).
    fn finish(mut self) -> anyhow::Result<Finished> {
        self.release(u64::MAX);
        let out = &mut self.out;
        self.pipeline.finish(&mut |s| out.send(s));
        self.out.flush();
        if let Some(r) = self.recorder.take() {
            let events = r.events;
            r.finish().context("writing the recording")?;
            log::info!("recorded {events} events");
        }
        // Ends still waiting for their other end are recorded as they are.
        self.out.expire_graph(u64::MAX);
        let series = self.out.series_counts();
        Ok(Finished {
            stats: self.pipeline.stats(),
            dropped: self.out.dropped,
            decode_errors: self.decode_errors,
            unsampled: self.out.unsampled,
            series,
            otel: self.out.otel.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slow_down_only_while_nothing_moves() {
        let mut every = POLL_EVERY;
        let mut waits = Vec::new();
        for _ in 0..6 {
            every = next_poll(every, 0, 0);
            waits.push(every.as_millis());
        }
        assert_eq!(waits, [40, 80, 160, 320, 320, 320]);
        // One record read, or one event still held for ordering: back to the shortest wait.
        assert_eq!(next_poll(POLL_QUIET_MAX, 1, 0), POLL_EVERY);
        assert_eq!(next_poll(POLL_QUIET_MAX, 0, 1), POLL_EVERY);
    }
}
