//! The command line. Every flag has help text and an environment variable.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{export::otlp::Protocol, filter::PortRange};

/// How spans are shown on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One readable line per span.
    Text,
    /// One JSON object per span.
    Json,
    /// Nothing on standard output.
    None,
}

/// tracer: HTTP spans from the socket syscalls of running programs, with no instrumentation.
///
/// Repeating a filter flag widens it (OR); different filter flags narrow each other (AND).
/// With no filter every process except tracer itself is traced. Spans go to an OTLP receiver
/// when an endpoint is configured (flag or OTEL_EXPORTER_OTLP_* variables), and to the terminal
/// otherwise.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Trace the process with this id (repeat, or separate with commas).
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "TRACER_PID",
        value_delimiter = ',',
        global = true,
        // Linux process ids are below 2^22.
        value_parser = clap::value_parser!(u32).range(1..(1 << 22))
    )]
    pub pids: Vec<u32>,

    /// Trace processes with this name, as `ps -o comm` shows it (the kernel keeps 15 bytes).
    #[arg(
        long = "comm",
        value_name = "NAME",
        env = "TRACER_COMM",
        value_delimiter = ',',
        global = true
    )]
    pub comms: Vec<String>,

    /// Trace processes in this cgroup (v2) or any cgroup below it: a directory of the
    /// mounted hierarchy (/sys/fs/cgroup/system.slice/docker-ID.scope) or a path as
    /// /proc/PID/cgroup shows it (/system.slice/docker-ID.scope). Cgroups created below it
    /// later are picked up within 2 seconds.
    #[arg(
        long = "cgroup",
        value_name = "PATH",
        env = "TRACER_CGROUP",
        value_delimiter = ',',
        global = true
    )]
    pub cgroups: Vec<String>,

    /// Trace connections whose local or remote port is this port or in this range.
    #[arg(
        long = "port",
        value_name = "PORT|LOW-HIGH",
        env = "TRACER_PORT",
        value_delimiter = ',',
        global = true
    )]
    pub ports: Vec<PortRange>,

    /// OTLP receiver URL, e.g. http://localhost:4318 (http/protobuf) or http://localhost:4317
    /// (grpc). Overrides OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
    #[arg(long, value_name = "URL", env = "TRACER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport. Overrides OTEL_EXPORTER_OTLP_PROTOCOL; the default is http/protobuf.
    #[arg(
        long,
        value_name = "PROTOCOL",
        env = "TRACER_OTLP_PROTOCOL",
        global = true
    )]
    pub otlp_protocol: Option<Protocol>,

    /// Spans on standard output: text, json or none. Default: text without an OTLP endpoint,
    /// none with one.
    #[arg(long, value_name = "FORMAT", env = "TRACER_OUTPUT", global = true)]
    pub output: Option<Output>,

    /// Export the values of this request/response header as http.request.header.NAME and
    /// http.response.header.NAME (repeat for more). Off by default: header values such as
    /// Authorization and Cookie are secrets.
    #[arg(
        long = "capture-header",
        value_name = "NAME",
        env = "TRACER_CAPTURE_HEADER",
        value_delimiter = ',',
        global = true
    )]
    pub capture_headers: Vec<String>,

    /// Export url.query with every value replaced by REDACTED (keys kept). Off by default.
    #[arg(long, env = "TRACER_CAPTURE_QUERY", global = true)]
    pub capture_query: bool,

    /// Payload bytes copied from each syscall (enough for HTTP heads), 64 to 8192.
    #[arg(
        long,
        value_name = "BYTES",
        env = "TRACER_CAPTURE_BYTES",
        default_value_t = tracer_common::DEFAULT_CAPTURE,
        global = true,
        value_parser = clap::value_parser!(u32).range(64..=tracer_common::MAX_CAPTURE as i64)
    )]
    pub capture_bytes: u32,

    /// Add a W3C `traceparent` header to outgoing plaintext HTTP/1.x requests of traced
    /// processes that carry none, so that the agent on the receiving host continues the trace.
    /// This changes the traced programs' traffic; off by default.
    #[arg(long, env = "TRACER_PROPAGATE", global = true)]
    pub propagate: bool,

    /// Do not probe TLS libraries (OpenSSL, Go crypto/tls): HTTPS is then not traced, and its
    /// ciphertext is recognised and ignored.
    #[arg(long, env = "TRACER_NO_TLS", global = true)]
    pub no_tls: bool,

    /// Serve the agent's own counters (spans, export, queue, kernel-side losses) at
    /// http://0.0.0.0:PORT/metrics in the OpenMetrics text format, for Prometheus. Off by
    /// default.
    #[arg(
        long,
        value_name = "PORT",
        env = "TRACER_PROMETHEUS_PORT",
        global = true,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub prometheus_port: Option<u16>,

    /// A route template of the traced servers, e.g. /users/{id} or /static/* (repeat for more):
    /// server requests whose path matches get http.route and are named "GET /users/{id}", and
    /// the request-duration metrics are split by route. `{name}` matches one path segment, a
    /// final `*` the rest. Without templates no route is reported.
    #[arg(
        long = "route",
        value_name = "TEMPLATE",
        env = "TRACER_ROUTE",
        value_delimiter = ',',
        global = true
    )]
    pub routes: Vec<String>,

    /// For server requests no --route template matches, guess http.route by folding the path
    /// segments that look like identifiers (numbers, UUIDs, long tokens with digits) into
    /// {id}. A guess may be wrong: off by default.
    #[arg(long, env = "TRACER_ROUTE_HEURISTIC", global = true)]
    pub route_heuristic: bool,

    /// At most this many series per request-duration metric, the overflow series
    /// (otel.metric.overflow="true") included; what new series would have held goes there.
    #[arg(
        long,
        value_name = "N",
        env = "TRACER_METRICS_SERIES_LIMIT",
        default_value_t = crate::metrics::red::DEFAULT_LIMIT,
        global = true,
        value_parser = parse_series_limit
    )]
    pub metrics_series_limit: usize,

    /// A part of the agent only, for `cargo xtask bench`'s breakdown of the cost of tracing:
    /// `return` attaches a program that returns at once in place of each of ours;
    /// `return-raw` attaches one such program to the raw `sys_enter` and `sys_exit`
    /// tracepoints instead of ours at the syscall tracepoints; `discard` captures as usual and
    /// drops every event unread. Not for use: nothing is traced.
    #[arg(long, value_name = "STAGE", env = "TRACER_BENCH_STAGE", hide = true)]
    pub bench_stage: Option<BenchStage>,
}

/// See [`Cli::bench_stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchStage {
    /// Do-nothing programs are attached where ours would be.
    Return,
    /// As `Return`, but the syscalls' stand-in is one program at the raw `sys_enter` and
    /// `sys_exit` tracepoints, which every syscall of every process runs: what raw
    /// tracepoints would save.
    ReturnRaw,
    /// The kernel captures as usual; the agent drops each event as it takes it.
    Discard,
}

fn parse_series_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (2..=1_000_000).contains(&n) => Ok(n),
        _ => Err("a number of series from 2 to 1000000".to_string()),
    }
}

/// What to do instead of tracing live.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace as usual and also write every captured event to FILE, for replaying or for a bug
    /// report (it holds the first bytes of the traced traffic: share it with care).
    Record {
        /// Where to write the recording.
        file: PathBuf,
    },
    /// Report what this machine offers tracer: kernel, BTF, tracefs, cgroup v2, lockdown,
    /// privileges, and which eBPF hook types load here. Exits 1 if tracer cannot run.
    Check,
    /// Turn a recording back into spans, offline and without root; printed or exported as
    /// the flags say. Span ids are reproducible from run to run.
    Replay {
        /// A file written by `tracer record`.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "tracer",
            "--pid",
            "1",
            "--pid",
            "2,3",
            "--comm",
            "nginx",
            "--port",
            "80",
            "--port",
            "8000-8100",
            "--otlp-endpoint",
            "http://x:4317",
            "--otlp-protocol",
            "grpc",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.pids, vec![1, 2, 3]);
        assert_eq!(cli.comms, vec!["nginx"]);
        assert_eq!(cli.ports.len(), 2);
        assert_eq!(cli.otlp_protocol, Some(Protocol::Grpc));
        assert_eq!(cli.output, Some(Output::Json));
        assert_eq!(cli.capture_bytes, tracer_common::DEFAULT_CAPTURE);
        assert_eq!(cli.prometheus_port, None, "off by default");
    }

    #[test]
    fn prometheus_port_parses_and_refuses_what_is_not_a_port() {
        let cli = Cli::try_parse_from(["tracer", "--prometheus-port", "9464"]).unwrap();
        assert_eq!(cli.prometheus_port, Some(9464));
        let cli = Cli::try_parse_from(["tracer", "record", "x.rec", "--prometheus-port", "1"]);
        assert_eq!(cli.unwrap().prometheus_port, Some(1));
        for bad in ["0", "65536", "-1", "http", ""] {
            let err = Cli::try_parse_from(["tracer", &format!("--prometheus-port={bad}")])
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains(&format!(
                    "invalid value '{bad}' for '--prometheus-port <PORT>'"
                )),
                "{bad}: {err}"
            );
        }
        let err = Cli::try_parse_from(["tracer", "--prometheus-port"])
            .expect_err("a port is required")
            .to_string();
        assert!(err.contains("--prometheus-port <PORT>"), "{err}");
    }

    #[test]
    fn help_documents_the_prometheus_port() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("--prometheus-port <PORT>"), "{help}");
        assert!(help.contains("/metrics"), "{help}");
        assert!(help.contains("TRACER_PROMETHEUS_PORT"), "{help}");
    }

    #[test]
    fn routes_and_the_series_limit_parse() {
        let cli = Cli::try_parse_from([
            "tracer",
            "--route",
            "/users/{id}",
            "--route",
            "/a,/b/*",
            "--route-heuristic",
            "--metrics-series-limit",
            "50",
        ])
        .unwrap();
        assert_eq!(cli.routes, vec!["/users/{id}", "/a", "/b/*"]);
        assert!(cli.route_heuristic);
        assert_eq!(cli.metrics_series_limit, 50);
        let cli = Cli::try_parse_from(["tracer"]).unwrap();
        assert!(cli.routes.is_empty() && !cli.route_heuristic);
        assert_eq!(cli.metrics_series_limit, 2000);
        for bad in ["1", "0", "-3", "x", "", "1000001"] {
            let err = Cli::try_parse_from(["tracer", &format!("--metrics-series-limit={bad}")])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("from 2 to 1000000"), "{bad}: {err}");
        }
    }

    #[test]
    fn record_and_replay_take_the_same_flags() {
        let cli = Cli::try_parse_from(["tracer", "record", "out.rec", "--port", "80"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Record { .. })));
        assert_eq!(cli.ports.len(), 1);
        let cli = Cli::try_parse_from(["tracer", "replay", "in.rec", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Replay { .. })));
        assert!(
            Cli::try_parse_from(["tracer", "replay"]).is_err(),
            "a file is required"
        );
    }

    #[test]
    fn rejects_malformed_flags() {
        for args in [
            &["tracer", "--pid", "abc"][..],
            &["tracer", "--port", "70000"],
            &["tracer", "--port", "9-1"],
            &["tracer", "--otlp-protocol", "http/json"],
            &["tracer", "--output", "xml"],
            &["tracer", "--capture-bytes", "10"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
