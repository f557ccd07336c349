//! tracer: zero-instrumentation HTTP tracing for Linux. Parse the command line into a
//! [`app::Config`] and run the agent.

use anyhow::Context as _;
use clap::Parser as _;
use tracer_userspace::{app, cli, export, filter};

fn sink_config(cli: &cli::Cli) -> anyhow::Result<app::SinkConfig> {
    let otlp = export::otlp::resolve(
        export::otlp::Signal::Traces,
        cli.otlp_endpoint.as_deref(),
        cli.otlp_protocol,
        |k| std::env::var(k).ok(),
    )?;
    if let Some(c) = &otlp
        && c.protocol == export::otlp::Protocol::HttpProtobuf
        && c.endpoint.contains(":4317")
    {
        log::warn!(
            "{} looks like an OTLP/gRPC port but the protocol is http/protobuf; \
             pass --otlp-protocol grpc if the receiver speaks gRPC",
            c.endpoint
        );
    }
    for name in &cli.comms {
        if name.len() >= tracer_common::COMM_LEN {
            log::warn!(
                "process name `{name}` is longer than the kernel keeps: matching its first {} bytes",
                tracer_common::COMM_LEN - 1
            );
        }
    }
    let output = cli.output.unwrap_or(if otlp.is_some() {
        cli::Output::None
    } else {
        cli::Output::Text
    });
    let capture = tracer_userspace::correlate::Capture {
        headers: cli
            .capture_headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>()
            .into(),
        query: cli.capture_query,
        routes: tracer_userspace::correlate::route::Routes::new(&cli.routes, cli.route_heuristic)
            .context("--route")?
            .into(),
    };
    let sampler = tracer_userspace::correlate::sample::Sampler::from_env(|k| {
        std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
    })?;
    Ok(app::SinkConfig {
        otlp,
        output,
        capture,
        sampler,
    })
}

fn check(filter: &filter::Filter) -> ! {
    let items = tracer_userspace::capture::check::run(filter);
    for item in &items {
        println!("{item}");
    }
    if tracer_userspace::capture::check::can_run(&items) {
        println!("tracer can run here.");
        std::process::exit(0);
    }
    println!("tracer cannot run here: see the FAIL lines above.");
    std::process::exit(1);
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    // Looked up only where the filters apply (a replay's events were filtered when recorded).
    let cgroups = || {
        cli.cgroups
            .iter()
            .map(|c| filter::cgroup::Cgroup::resolve(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!(e))
    };
    if matches!(cli.command, Some(cli::Command::Check)) {
        // The process and cgroup filters narrow the TLS libraries listed to the processes
        // they select.
        check(&filter::Filter {
            pids: cli.pids.clone(),
            comms: cli.comms.clone(),
            ports: Vec::new(),
            cgroups: cgroups()?,
        });
    }
    let sinks = sink_config(&cli)?;
    let otlp_metrics = tracer_userspace::metrics::otlp::resolve(
        cli.otlp_endpoint.as_deref(),
        cli.otlp_protocol,
        |k| std::env::var(k).ok(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let record = match cli.command {
        Some(cli::Command::Replay { file }) => {
            if cli.prometheus_port.is_some() {
                log::warn!("--prometheus-port is ignored by replay: it serves live counters only");
            }
            return runtime.block_on(app::replay(&file, sinks));
        }
        Some(cli::Command::Record { file }) => Some(file),
        Some(cli::Command::Check) | None => None,
    };
    let config = app::Config {
        filter: filter::Filter {
            pids: cli.pids,
            comms: cli.comms,
            ports: cli.ports,
            cgroups: cgroups()?,
        },
        capture_bytes: cli.capture_bytes,
        propagate: cli.propagate,
        tls: !cli.no_tls,
        prometheus_port: cli.prometheus_port,
        metrics_series_limit: cli.metrics_series_limit,
        otlp_metrics: otlp_metrics.map(|c| tracer_userspace::metrics::otlp::MetricsConfig {
            series_limit: cli.metrics_series_limit,
            ..c
        }),
        sinks,
        record,
        bench_stage: cli.bench_stage,
    };
    // On a worker, not this thread: the workers drive the timers and the ring buffer's
    // readiness, and a loop blocked on here would be woken from one of them at every tick
    // (about 290 thread switches a second with nothing to trace).
    runtime.block_on(async {
        tokio::spawn(app::run(config))
            .await
            .context("the capture loop failed")?
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    if let Err(e) = run(cli::Cli::parse()) {
        // One line for the user; the whole story (verifier logs) at debug level.
        log::debug!("{e:?}");
        let full = format!("{e:#}");
        let first = full.lines().next().unwrap_or_default();
        if full.lines().nth(1).is_some() {
            eprintln!("tracer: error: {first} (run with RUST_LOG=debug for details)");
        } else {
            eprintln!("tracer: error: {first}");
        }
        std::process::exit(1);
    }
}
