//! `cargo xtask bench`: what tracing costs, measured side by side in one run on this machine.
//!
//! Costs are attributed directly where the kernel allows it: the run time of the agent's own
//! eBPF programs (`bpf_stats`, read from the agent's program descriptors in
//! `/proc/PID/fdinfo`) and the agent's own CPU time, divided by the spans a real OTLP receiver
//! counted. Throughput and latency are compared untraced/traced in ABBA order and reported as
//! medians, because this machine is shared and noisy.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{Guard, cargo, require_root, setup, start_nginx, wait_port, workspace};

const SINK_PORT: u16 = 18_690;
/// The OTLP sink's process, whose CPU the breakdown shows apart: it shares the machine.
static SINK_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
const NGINX_PORT: u16 = 18_691;
const APP_PORT: u16 = 18_692;
const NGINX_TLS_PORT: u16 = 18_693;
const NGINX_H2C_PORT: u16 = 18_694;
/// Python packages of the comparison with OpenTelemetry's own auto-instrumentation.
const BENCH_PYTHON_PACKAGES: &[&str] = &[
    "flask==3.1.3",
    "opentelemetry-distro==0.60b1",
    "opentelemetry-instrumentation-flask==0.60b1",
    "opentelemetry-exporter-otlp-proto-http==1.39.1",
];

pub struct Opts {
    /// ABBA blocks (each: untraced, traced, traced, untraced).
    pub pairs: usize,
    /// Seconds per leg.
    pub seconds: u64,
    /// Seconds of the saturation (completeness) run.
    pub saturation: u64,
    /// Connections held open for the memory figure.
    pub connections: usize,
    /// Another build of the agent: compare it with this one (traced nginx at saturation, ABBA)
    /// instead of the full benchmark.
    pub baseline: Option<std::path::PathBuf>,
}

pub fn bench(opts: Opts) -> anyhow::Result<()> {
    require_root("the benchmark loads eBPF programs")?;
    setup(true)?;
    if crate::output(Command::new("python3").args([
        "-c",
        "import flask, opentelemetry.instrumentation.flask, opentelemetry.distro",
    ]))
    .is_none()
    {
        eprintln!("xtask: installing {}", BENCH_PYTHON_PACKAGES.join(" "));
        crate::status(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(BENCH_PYTHON_PACKAGES),
        )?;
    }
    // wrk for HTTP/1.1, h2load (nghttp2's) for HTTP/2.
    let tools: Vec<&str> = [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("perf", "linux-perf"),
    ]
    .into_iter()
    .filter(|(program, _)| !crate::on_path(program))
    .map(|(_, package)| package)
    .collect();
    if !tools.is_empty() {
        crate::status(Command::new("apt-get").args(["update", "-q"]))?;
        crate::status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&tools),
        )?;
    }
    cargo(&["build", "--release", "-p", "tracer-userspace"])?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "tracer-e2e",
        "--bin",
        "otlp-sink",
    ])?;
    let ws = workspace();
    let dir = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _stats = BpfStatsEnabled::enable()?;

    let _sink = Guard(
        Command::new(ws.join("target/release/otlp-sink"))
            .arg(SINK_PORT.to_string())
            .spawn()
            .context("starting the OTLP sink")?,
    );
    let _ = SINK_PID.set(_sink.0.id());
    // Many connections held open, each kept for the whole run.
    let _nginx = start_nginx(
        &dir,
        "bench-nginx",
        &format!("127.0.0.1:{NGINX_PORT}"),
        "ok",
        "worker_rlimit_nofile 20000;",
        "worker_connections 12000;",
        "keepalive_requests 1000000; keepalive_timeout 300s;",
    )?;
    // The same over TLS (nginx's ssl module and wrk: the shared libssl at both ends).
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    crate::status(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()),
    )?;
    let _nginx_tls = start_nginx(
        &tls_dir,
        "bench-nginx",
        &format!("127.0.0.1:{NGINX_TLS_PORT} ssl"),
        "ok",
        "",
        "worker_connections 1024;",
        &format!(
            "keepalive_requests 1000000; keepalive_timeout 300s; ssl_certificate {}; \
             ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
    )?;
    // The same over HTTP/2 cleartext (h2c, prior knowledge).
    let h2c_dir = dir.join("h2c");
    std::fs::create_dir_all(&h2c_dir)?;
    let _nginx_h2c = start_nginx(
        &h2c_dir,
        "bench-nginx",
        &format!("127.0.0.1:{NGINX_H2C_PORT} http2"),
        "ok",
        "",
        "worker_connections 1024;",
        "keepalive_requests 1000000; keepalive_timeout 300s;",
    )?;
    wait_port(SINK_PORT)?;
    wait_port(NGINX_PORT)?;
    wait_port(NGINX_TLS_PORT)?;
    wait_port(NGINX_H2C_PORT)?;
    let endpoint = format!("http://127.0.0.1:{SINK_PORT}");
    let nginx_args = [
        "--port".to_string(),
        NGINX_PORT.to_string(),
        "--otlp-endpoint".to_string(),
        endpoint.clone(),
        "--otlp-protocol".to_string(),
        "http/protobuf".to_string(),
    ];
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), machine());
    if let Some(baseline) = &opts.baseline {
        report.insert("comparison".into(), compare(&opts, baseline, &nginx_args)?);
        // A syscall-heavy program with one span per request: the Flask app, side by side.
        report.insert(
            "python_app_comparison".into(),
            python_app(&ws, &endpoint, opts.seconds, Some(baseline))?,
        );
        return write_report(&ws, report, &dir);
    }

    // Time from start to ready.
    let mut ready = Vec::new();
    for _ in 0..3 {
        let agent = Agent::start(&nginx_args)?;
        ready.push(agent.ready_after.as_secs_f64() * 1e3);
        agent.stop();
    }
    let ready_ms = median(&ready);
    println!("time to ready: {ready_ms:.0} ms (median of 3: {ready:.0?})");
    report.insert("ready_ms".into(), json!(ready_ms));

    // Saturation, untraced and traced (both ends: wrk's client spans and nginx's server spans).
    let url = format!("http://127.0.0.1:{NGINX_PORT}/");
    let wrk32 = || wrk(&url, 32, opts.seconds);
    report.insert(
        "saturation".into(),
        saturation(&opts, &nginx_args, &wrk32, "wrk -c32", "nginx", "span")?,
    );
    // Where the added time goes, by kernel function: sampled untraced and with the agent.
    report.insert(
        "profile".into(),
        profile(&opts, &nginx_args, &|s| wrk(&url, 32, s), &dir)?,
    );
    // HTTPS: the same over TLS, both ends traced from their plaintext.
    let mut tls_args = nginx_args.clone();
    tls_args[1] = NGINX_TLS_PORT.to_string();
    let tls_url = format!("https://127.0.0.1:{NGINX_TLS_PORT}/");
    let wrk_tls = || wrk(&tls_url, 32, opts.seconds);
    report.insert(
        "https_saturation".into(),
        saturation(
            &opts,
            &tls_args,
            &wrk_tls,
            "wrk -c32",
            "nginx https",
            "TLS span",
        )?,
    );
    // HTTP/2: the same with h2load, 4 connections of 8 concurrent streams, both ends traced.
    let mut h2c_args = nginx_args.clone();
    h2c_args[1] = NGINX_H2C_PORT.to_string();
    let h2c_url = format!("http://127.0.0.1:{NGINX_H2C_PORT}/");
    let h2 = || h2load(&h2c_url, opts.seconds);
    report.insert(
        "h2c_saturation".into(),
        saturation(
            &opts,
            &h2c_args,
            &h2,
            "h2load -c4 -m8",
            "nginx h2c",
            "HTTP/2 span",
        )?,
    );

    // Completeness: one long traced run at saturation.
    let long = traced_leg(&nginx_args, || wrk(&url, 32, opts.saturation))?;
    println!(
        "completeness ({} s at saturation): {} requests, {} spans = {:.4} of 2 per request; \
         drops: {}",
        opts.saturation,
        long.requests,
        long.spans,
        long.spans as f64 / (2 * long.requests) as f64,
        long.drops
    );
    report.insert("completeness".into(), long.json());

    // Filter misses: the agent watches one idle process while nginx is under load.
    let idle = Guard(Command::new("sleep").arg("3600").spawn()?);
    let miss_args = ["--pid".to_string(), idle.0.id().to_string()];
    let miss = traced_leg(&miss_args, || wrk(&url, 32, opts.seconds))?;
    drop(idle);
    let per_run = miss.bpf.run_ns as f64 / miss.bpf.runs.max(1) as f64;
    let per_request = miss.bpf.run_ns as f64 / miss.requests.max(1) as f64;
    println!(
        "filter miss: {per_run:.0} ns per program run ({} runs in {} s; a read or write runs \
         two: {:.0} ns per syscall; {per_request:.0} ns per nginx request); {:.0} req/s",
        miss.bpf.runs,
        opts.seconds,
        2.0 * per_run,
        miss.rps
    );
    report.insert(
        "filter_miss".into(),
        json!({"ns_per_run": per_run, "ns_per_syscall": 2.0 * per_run,
               "ns_per_request": per_request, "runs": miss.bpf.runs, "rps": miss.rps}),
    );

    // Latency at a fixed moderate rate.
    let (mut lu, mut lt) = (Vec::new(), Vec::new());
    for with_agent in [false, true, true, false] {
        let agent = if with_agent {
            Some(Agent::start(&nginx_args)?)
        } else {
            None
        };
        let l = fixed_rate(NGINX_PORT, 1000, opts.seconds)?;
        if let Some(a) = agent {
            a.stop();
        }
        if with_agent { &mut lt } else { &mut lu }.push(l);
    }
    let p =
        |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let lat = json!({
        "rate": 1000,
        "untraced_p50_us": p(&lu, |l| l.0), "untraced_p99_us": p(&lu, |l| l.1),
        "traced_p50_us": p(&lt, |l| l.0), "traced_p99_us": p(&lt, |l| l.1),
    });
    println!(
        "latency at 1000 req/s: untraced p50 {:.0} us p99 {:.0} us; traced p50 {:.0} us p99 {:.0} us",
        lat["untraced_p50_us"].as_f64().unwrap_or_default(),
        lat["untraced_p99_us"].as_f64().unwrap_or_default(),
        lat["traced_p50_us"].as_f64().unwrap_or_default(),
        lat["traced_p99_us"].as_f64().unwrap_or_default()
    );
    report.insert("latency".into(), lat);

    // Memory with many open keep-alive connections (both ends traced).
    let agent = Agent::start(&nginx_args)?;
    let mut hold = Command::new("python3")
        .arg(ws.join("xtask/scripts/hold.py"))
        .args([NGINX_PORT.to_string(), opts.connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting hold.py")?;
    let mut line = String::new();
    BufReader::new(hold.stdout.take().expect("piped")).read_line(&mut line)?;
    std::thread::sleep(Duration::from_secs(2));
    let peak_kib = crate::proc_status(agent.pid(), "VmHWM:");
    // After the agent's housekeeping (every 5 s) has returned freed memory.
    std::thread::sleep(Duration::from_secs(6));
    let steady_kib = crate::proc_status(agent.pid(), "VmRSS:");
    drop(hold.stdin.take());
    let _ = hold.wait();
    agent.stop();
    println!(
        "agent RSS with {} open keep-alive connections traced at both ends: peak {:.1} MiB, \
         {:.1} MiB once they sit idle ({})",
        opts.connections,
        peak_kib as f64 / 1024.0,
        steady_kib as f64 / 1024.0,
        line.trim()
    );
    report.insert(
        "memory".into(),
        json!({"connections": opts.connections, "peak_rss_mib": peak_kib as f64 / 1024.0,
               "idle_rss_mib": steady_kib as f64 / 1024.0}),
    );

    report.insert(
        "python_app".into(),
        python_app(&ws, &endpoint, opts.seconds, None)?,
    );
    report.insert("userspace_pipeline".into(), criterion()?);
    write_report(&ws, report, &dir)
}

fn write_report(
    ws: &Path,
    report: serde_json::Map<String, serde_json::Value>,
    dir: &Path,
) -> anyhow::Result<()> {
    let out = ws.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join("latest.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!("figures as JSON: {}", file.display());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// This build against `baseline`, both tracing both ends of nginx at saturation, in
/// this/baseline/baseline/this blocks: medians of throughput and of the attributed costs.
fn compare(opts: &Opts, baseline: &Path, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let current = workspace().join("target/release/tracer");
    let url = format!("http://127.0.0.1:{NGINX_PORT}/");
    let mut legs: [Vec<Leg>; 2] = [Vec::new(), Vec::new()];
    for block in 0..opts.pairs {
        for (i, which) in [0, 1, 1, 0].into_iter().enumerate() {
            let bin = if which == 0 { &current } else { baseline };
            let leg = traced_leg_with(bin, args, || wrk(&url, 32, opts.seconds))?;
            println!(
                "  block {block} leg {i}: {:<8} {:>9.0} req/s{}",
                ["this", "baseline"][which],
                leg.rps,
                leg.cost_line()
            );
            legs[which].push(leg);
        }
    }
    let summary = |legs: &[Leg]| {
        let m = |f: fn(&Leg) -> f64| median(&legs.iter().map(f).collect::<Vec<_>>());
        json!({
            "rps": m(|l| l.rps),
            "ebpf_per_span_us": m(Leg::ebpf_ns_per_span) / 1e3,
            "agent_per_span_us": m(Leg::agent_ns_per_span) / 1e3,
            "ebpf_ns_per_run": m(|l| l.bpf.run_ns as f64 / l.bpf.runs.max(1) as f64),
            "spans": legs.iter().map(|l| l.spans).sum::<u64>(),
        })
    };
    let (this, base) = (summary(&legs[0]), summary(&legs[1]));
    for (name, s) in [("this build", &this), ("baseline", &base)] {
        if s["spans"].as_u64() == Some(0) {
            // A stage that exports nothing (`TRACER_BENCH_STAGE`): no cost per span.
            println!(
                "{name:<10}: {:.0} req/s, no spans, {:.0} ns per program run (medians of {} \
                 legs of {} s)",
                s["rps"].as_f64().unwrap_or_default(),
                s["ebpf_ns_per_run"].as_f64().unwrap_or_default(),
                legs[0].len(),
                opts.seconds
            );
            continue;
        }
        println!(
            "{name:<10}: {:.0} req/s, eBPF {:.2} us + agent {:.2} us per span, {:.0} ns per \
             program run (medians of {} legs of {} s)",
            s["rps"].as_f64().unwrap_or_default(),
            s["ebpf_per_span_us"].as_f64().unwrap_or_default(),
            s["agent_per_span_us"].as_f64().unwrap_or_default(),
            s["ebpf_ns_per_run"].as_f64().unwrap_or_default(),
            legs[0].len(),
            opts.seconds
        );
    }
    let untraced_tax = untraced_tax(opts, baseline, &url)?;
    Ok(
        json!({"baseline": baseline.display().to_string(), "this": this, "base": base,
              "untraced_tax": untraced_tax}),
    )
}

/// What each build costs programs it does not trace: nginx and wrk at saturation while the
/// agent watches one idle process, against no agent at all; blocks of none/this/baseline/
/// baseline/this/none. Medians of throughput and of the whole machine's CPU per request.
fn untraced_tax(opts: &Opts, baseline: &Path, url: &str) -> anyhow::Result<serde_json::Value> {
    let current = workspace().join("target/release/tracer");
    let idle = Guard(Command::new("sleep").arg("3600").spawn()?);
    let args = ["--pid".to_string(), idle.0.id().to_string()];
    let mut legs: [Vec<(f64, f64)>; 3] = Default::default();
    for block in 0..opts.pairs {
        for which in [0, 1, 2, 2, 1, 0] {
            let load = || wrk(url, 32, opts.seconds);
            let leg = match [None, Some(current.as_path()), Some(baseline)][which] {
                Some(bin) => traced_leg_with(bin, &args, load)?,
                None => Leg::untraced(load)?,
            };
            let rps = leg.rps;
            let per_request = leg.machine_ns as f64 / leg.requests.max(1) as f64 / 1e3;
            println!(
                "  untraced nginx, block {block}: {:<8} {rps:>9.0} req/s, machine {per_request:.1} \
                 us per request",
                ["no agent", "this", "baseline"][which]
            );
            legs[which].push((rps, per_request));
        }
    }
    let mut out = serde_json::Map::new();
    let rps0 = median(&legs[0].iter().map(|l| l.0).collect::<Vec<_>>());
    for (which, name) in ["no_agent", "this", "baseline"].into_iter().enumerate() {
        let rps = median(&legs[which].iter().map(|l| l.0).collect::<Vec<_>>());
        let cpu = median(&legs[which].iter().map(|l| l.1).collect::<Vec<_>>());
        println!(
            "untraced nginx, {name:<8}: {rps:.0} req/s ({:.3} of no agent), machine {cpu:.1} us \
             per request (medians of {} legs of {} s)",
            rps / rps0.max(1.0),
            legs[which].len(),
            opts.seconds
        );
        out.insert(
            name.into(),
            json!({"rps": rps, "machine_us_per_request": cpu}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// The same small Flask app untraced, traced by us (its server spans) and instrumented by
/// `opentelemetry-instrument`, both exporting to the same receiver; ABCCBA order. With a
/// `baseline` build, that build takes the place of `opentelemetry-instrument`.
fn python_app(
    ws: &Path,
    endpoint: &str,
    seconds: u64,
    baseline: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Mode {
        Untraced,
        Tracer,
        Baseline,
        OtelInstrument,
    }
    let url = format!("http://127.0.0.1:{APP_PORT}/items/7");
    let mut results: HashMap<&str, Vec<(f64, f64, f64)>> = HashMap::new();
    use Mode::*;
    let current = ws.join("target/release/tracer");
    let other = if baseline.is_some() {
        Baseline
    } else {
        OtelInstrument
    };
    for mode in [Untraced, Tracer, other, other, Tracer, Untraced] {
        let mut cmd = if mode == OtelInstrument {
            let mut c = Command::new("opentelemetry-instrument");
            c.arg("python3");
            c.env("OTEL_SERVICE_NAME", "bench-app")
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
            c
        } else {
            Command::new("python3")
        };
        cmd.arg(ws.join("xtask/scripts/app.py"))
            .arg(APP_PORT.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let app = Guard(cmd.spawn().context("starting the Flask app")?);
        wait_port(APP_PORT)?;
        // The app's pid: opentelemetry-instrument execs python in place.
        let pid = app.0.id();
        let _ = wrk(&url, 4, 1)?; // warm up
        let bin = match mode {
            Tracer => Some(current.as_path()),
            Baseline => baseline,
            _ => None,
        };
        let agent = match bin {
            Some(bin) => Some(Agent::start_bin(
                bin,
                &[
                    "--pid".to_string(),
                    pid.to_string(),
                    "--otlp-endpoint".to_string(),
                    endpoint.to_string(),
                    "--otlp-protocol".to_string(),
                    "http/protobuf".to_string(),
                ],
            )?),
            None => None,
        };
        let spans0 = sink_count()?;
        let app0 = cpu_ns(pid);
        let (a0, b0) = agent
            .as_ref()
            .map(|a| (cpu_ns(a.pid()), bpf_stats(a.pid())))
            .unwrap_or_default();
        let (requests, rps) = wrk(&url, 4, seconds)?;
        let spans = settle(spans0)? - spans0;
        let app_cpu = cpu_ns(pid) - app0;
        let tracer_cpu = agent
            .as_ref()
            .map(|a| cpu_ns(a.pid()) - a0 + bpf_stats(a.pid()).run_ns - b0.run_ns)
            .unwrap_or(0);
        if let Some(a) = agent {
            a.stop();
        }
        drop(app);
        let per_request = (app_cpu + tracer_cpu) as f64 / requests.max(1) as f64 / 1e3;
        // Spans counted during the leg; the SDK's exports lag (5 s batches), so its count
        // may include the warm-up's.
        println!(
            "  python app {mode:?}: {rps:.0} req/s, {per_request:.0} us CPU per request \
             (app {:.0} + tracer {:.0}), {spans} spans received for {requests} requests",
            app_cpu as f64 / requests.max(1) as f64 / 1e3,
            tracer_cpu as f64 / requests.max(1) as f64 / 1e3,
        );
        let key = match mode {
            Untraced => "untraced",
            Tracer => "tracer",
            Baseline => "baseline",
            OtelInstrument => "opentelemetry_instrument",
        };
        results.entry(key).or_default().push((
            rps,
            per_request,
            spans as f64 / requests.max(1) as f64,
        ));
    }
    let mut out = serde_json::Map::new();
    let untraced_cpu = results
        .get("untraced")
        .map(|runs| median(&runs.iter().map(|r| r.1).collect::<Vec<_>>()));
    for (key, runs) in &results {
        let rps = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
        let cpu = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
        let spans = median(&runs.iter().map(|r| r.2).collect::<Vec<_>>());
        let added = untraced_cpu.map(|u| cpu - u).unwrap_or_default();
        println!(
            "python app, {key}: {rps:.0} req/s, {cpu:.0} us CPU per request ({added:+.0} us \
             against untraced)"
        );
        out.insert(
            key.to_string(),
            json!({"rps": rps, "cpu_per_request_us": cpu, "spans_per_request": spans,
                   "added_cpu_per_request_us": added}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// The userspace pipeline alone (criterion): events per second on one core, to spans and
/// to encoded OTLP.
fn criterion() -> anyhow::Result<serde_json::Value> {
    let out = Command::new("cargo")
        .current_dir(workspace())
        .args([
            "bench",
            "-p",
            "tracer-userspace",
            "--bench",
            "pipeline",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "5",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("cargo bench failed: {text}");
    }
    let mut result = serde_json::Map::new();
    let mut name = String::new();
    let mut group = "";
    for line in text.lines() {
        for g in ["pipeline/", "metrics/", "encode/"] {
            if let Some(n) = line.trim().strip_prefix(g) {
                group = g;
                name = n.split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        // thrpt:  [low Kelem/s  median Kelem/s  high Kelem/s]
        if let Some(rest) = line.trim().strip_prefix("thrpt:") {
            let parts: Vec<&str> = rest
                .trim_matches(|c| c == ' ' || c == '[' || c == ']')
                .split_whitespace()
                .collect();
            if let (Some(v), Some(unit)) = (parts.get(2), parts.get(3)) {
                let scale = match *unit {
                    "Kelem/s" => 1e3,
                    "Melem/s" => 1e6,
                    "Gelem/s" => 1e9,
                    _ => 1.0,
                };
                let per_s = v.parse::<f64>().unwrap_or(0.0) * scale;
                if group == "metrics/" {
                    // Elements are finished exchanges (spans).
                    let ns = 1e9 / per_s.max(1.0);
                    println!(
                        "metrics, {name}: {ns:.0} ns of agent CPU per exchange (histograms and \
                         service graph, one core)"
                    );
                    result.insert(format!("metrics_{name}_ns_per_exchange"), json!(ns));
                } else if group == "encode/" {
                    // Elements are spans, encoded in batches of the exporter's size.
                    let ns = 1e9 / per_s.max(1.0);
                    println!("OTLP encoding, {name}: {ns:.0} ns of agent CPU per span (one core)");
                    result.insert(format!("encode_{name}_ns_per_span"), json!(ns));
                } else {
                    println!("userspace pipeline, {name}: {per_s:.0} events/s on one core");
                    result.insert(format!("{name}_events_per_s"), json!(per_s));
                }
            }
        }
    }
    Ok(serde_json::Value::Object(result))
}

/// `kernel.bpf_stats_enabled` on for the run, restored after.
struct BpfStatsEnabled(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    fn enable() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling bpf_stats")?;
        Ok(BpfStatsEnabled(before.trim().to_string()))
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// The agent as a child process.
struct Agent {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    ready_after: Duration,
}

impl Agent {
    fn start(args: &[String]) -> anyhow::Result<Agent> {
        Agent::start_bin(&workspace().join("target/release/tracer"), args)
    }

    fn start_bin(bin: &Path, args: &[String]) -> anyhow::Result<Agent> {
        let start = Instant::now();
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("ready:") {
                    let _ = tx.send(());
                }
                lines.lock().expect("not poisoned").push(line);
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            bail!(
                "tracer did not become ready: {:?}",
                stderr.lock().expect("not poisoned")
            );
        }
        let ready_after = start.elapsed();
        Ok(Agent {
            child,
            stderr,
            ready_after,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait, and return the final report line.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stderr.lock().expect("not poisoned");
        lines
            .iter()
            .rev()
            .find(|l| l.contains("stopped:"))
            .cloned()
            .unwrap_or_default()
    }
}

/// CPU time (user + system) of a process, all its threads, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

#[derive(Default, Clone, Copy, Debug)]
struct BpfStats {
    run_ns: u64,
    runs: u64,
}

/// Run time and run count of the eBPF programs a process holds, from its fdinfo.
fn bpf_stats(pid: u32) -> BpfStats {
    let mut by_id: HashMap<u64, (u64, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BpfStats::default();
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            by_id.insert(id, (ns, cnt));
        }
    }
    by_id
        .values()
        .fold(BpfStats::default(), |acc, (ns, cnt)| BpfStats {
            run_ns: acc.run_ns + ns,
            runs: acc.runs + cnt,
        })
}

/// Spans the sink has counted.
fn sink_count() -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", SINK_PORT)).context("asking the sink")?;
    s.write_all(b"GET /count HTTP/1.1\r\nHost: sink\r\n\r\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    reply
        .rsplit("\r\n\r\n")
        .next()
        .and_then(|b| b.trim().parse().ok())
        .context("the sink's count")
}

/// Wait until the sink's count stops growing (the agent has flushed); returns it.
fn settle(from: u64) -> anyhow::Result<u64> {
    let mut last = from;
    let mut still = 0;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        let now = sink_count()?;
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 3 {
            break;
        }
    }
    Ok(last)
}

/// wrk with one thread and `conns` keep-alive connections: (requests, requests per second).
fn wrk(url: &str, conns: u32, seconds: u64) -> anyhow::Result<(u64, f64)> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{seconds}s"), url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .context("wrk's request count")?;
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk's rate")?;
    Ok((requests, rps))
}

/// `seconds` of HTTP/2 load on `url` with h2load: 4 connections of 8 concurrent streams each.
/// Returns (requests, requests per second).
fn h2load(url: &str, seconds: u64) -> anyhow::Result<(u64, f64)> {
    let out = Command::new("h2load")
        .args(["-c4", "-m8", "-t1", "-D", &seconds.to_string(), url])
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: N total, N started, N done, N succeeded, 0 failed, ..."
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(name)?.trim().parse().ok())
    };
    let requests_line = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("h2load's request counts")?;
    let done = field(requests_line, "succeeded").context("h2load's succeeded count")?;
    let failed =
        field(requests_line, "failed").unwrap_or(0) + field(requests_line, "errored").unwrap_or(0);
    if !out.status.success() || failed > 0 || done == 0 {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "finished in 10.00s, 24600.00 req/s, 1.20MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|r| r.trim().strip_suffix(" req/s")?.parse().ok())
        .context("h2load's rate")?;
    Ok((done, rps))
}

/// One load run, with the agent's attributed costs when it ran.
struct Leg {
    requests: u64,
    rps: f64,
    spans: u64,
    bpf: BpfStats,
    agent_cpu_ns: u64,
    /// CPU time of the OTLP sink while it took this leg's spans.
    sink_cpu_ns: u64,
    /// Busy CPU time of the whole machine during the load (`/proc/stat`).
    machine_ns: u64,
    drops: String,
}

impl Leg {
    /// The load alone, no agent.
    fn untraced(load: impl FnOnce() -> anyhow::Result<(u64, f64)>) -> anyhow::Result<Leg> {
        let m0 = machine_busy_ns();
        let (requests, rps) = load()?;
        Ok(Leg {
            requests,
            rps,
            spans: 0,
            bpf: BpfStats::default(),
            agent_cpu_ns: 0,
            sink_cpu_ns: 0,
            machine_ns: machine_busy_ns() - m0,
            drops: String::new(),
        })
    }

    fn ebpf_ns_per_span(&self) -> f64 {
        self.bpf.run_ns as f64 / self.spans.max(1) as f64
    }

    fn agent_ns_per_span(&self) -> f64 {
        self.agent_cpu_ns as f64 / self.spans.max(1) as f64
    }

    fn per_request(&self, ns: u64) -> f64 {
        ns as f64 / self.requests.max(1) as f64
    }

    fn cost_line(&self) -> String {
        let machine = format!(
            ", machine {:.1} us per request",
            self.per_request(self.machine_ns) / 1e3
        );
        if self.spans == 0 {
            return machine;
        }
        format!(
            "{machine}, {} spans / {} requests, eBPF {:.2} us + agent {:.2} us per span",
            self.spans,
            self.requests,
            self.ebpf_ns_per_span() / 1e3,
            self.agent_ns_per_span() / 1e3
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "requests": self.requests, "rps": self.rps, "spans": self.spans,
            "ebpf_run_ns": self.bpf.run_ns, "ebpf_runs": self.bpf.runs,
            "agent_cpu_ns": self.agent_cpu_ns, "machine_busy_ns": self.machine_ns,
            "sink_cpu_ns": self.sink_cpu_ns,
            "ebpf_per_span_us": self.ebpf_ns_per_span() / 1e3,
            "agent_per_span_us": self.agent_ns_per_span() / 1e3,
            "agent_final_report": self.drops,
        })
    }
}

/// The breakdown's levels: each adds one part of tracing to the one before.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Untraced,
    /// The tracepoints and uprobes attached, every program returning at once.
    Return,
    /// The same, with one program at the raw `sys_enter`/`sys_exit` tracepoints in place of
    /// the syscall tracepoints: what raw tracepoints would save.
    ReturnRaw,
    /// The programs run their filters, which match nothing (`--pid` of an idle process).
    FilterMiss,
    /// Capture into the ring buffer as usual; the agent takes each event and drops it.
    Discard,
    Full,
}

impl Level {
    const ALL: [Level; 6] = [
        Level::Untraced,
        Level::Return,
        Level::ReturnRaw,
        Level::FilterMiss,
        Level::Discard,
        Level::Full,
    ];

    fn key(self) -> &'static str {
        match self {
            Level::Untraced => "untraced",
            Level::Return => "return",
            Level::ReturnRaw => "return_raw",
            Level::FilterMiss => "filter_miss",
            Level::Discard => "discard",
            Level::Full => "full",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Untraced => "untraced",
            Level::Return => "programs return at once",
            Level::ReturnRaw => "same, raw tracepoints",
            Level::FilterMiss => "filters only, no match",
            Level::Discard => "capture, agent discards",
            Level::Full => "full agent",
        }
    }

    /// The agent's arguments at this level (`args` are the full agent's), if it runs.
    fn args(self, args: &[String], idle_pid: u32) -> Option<Vec<String>> {
        let mut out = args.to_vec();
        match self {
            Level::Untraced => return None,
            Level::Return => out.extend(["--bench-stage".into(), "return".into()]),
            Level::ReturnRaw => out.extend(["--bench-stage".into(), "return-raw".into()]),
            Level::FilterMiss => out.extend(["--pid".into(), idle_pid.to_string()]),
            Level::Discard => out.extend(["--bench-stage".into(), "discard".into()]),
            Level::Full => {}
        }
        Some(out)
    }
}

/// The breakdown at saturation (`load`, described as `how`): every [`Level`] in one run, in
/// ABBA order (each block runs the levels forwards, then backwards), medians. Prints each
/// leg and a table, returns them for the report.
fn saturation(
    opts: &Opts,
    args: &[String],
    load: &dyn Fn() -> anyhow::Result<(u64, f64)>,
    how: &str,
    what: &str,
    span: &str,
) -> anyhow::Result<serde_json::Value> {
    let idle = Guard(Command::new("sleep").arg("3600").spawn()?);
    let mut legs: Vec<(Level, Leg)> = Vec::new();
    for block in 0..opts.pairs {
        let order = Level::ALL.iter().chain(Level::ALL.iter().rev());
        for (i, &level) in order.enumerate() {
            let leg = match level.args(args, idle.0.id()) {
                Some(a) => traced_leg(&a, load)?,
                None => Leg::untraced(load)?,
            };
            println!(
                "  {what} block {block} leg {i}: {:<24} {:>9.0} req/s{}",
                level.label(),
                leg.rps,
                leg.cost_line()
            );
            legs.push((level, leg));
        }
    }
    drop(idle);
    let of = |level: Level| -> Vec<&Leg> {
        legs.iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, leg)| leg)
            .collect()
    };
    let med = |level: Level, f: &dyn Fn(&Leg) -> f64| {
        median(&of(level).into_iter().map(f).collect::<Vec<_>>())
    };
    let u_rps = med(Level::Untraced, &|l| l.rps);
    let u_cpu = med(Level::Untraced, &|l| l.per_request(l.machine_ns));
    println!(
        "{what} breakdown ({how}, both ends traced, {} s legs, medians of {}): per request, \
         whole machine and attributed",
        opts.seconds,
        2 * opts.pairs
    );
    let mut levels = serde_json::Map::new();
    for level in Level::ALL {
        let rps = med(level, &|l| l.rps);
        let cpu = med(level, &|l| l.per_request(l.machine_ns));
        let ebpf = med(level, &|l| l.per_request(l.bpf.run_ns));
        let agent = med(level, &|l| l.per_request(l.agent_cpu_ns));
        let sink = med(level, &|l| l.per_request(l.sink_cpu_ns));
        let added = cpu - u_cpu;
        println!(
            "  {:<24} {rps:>9.0} req/s  ratio {:.2}  machine {:>5.1} us (+{:>4.1})  eBPF \
             {:>4.2} us  agent {:>4.2} us  OTLP sink {:>4.2} us  not attributed {:>4.1} us",
            level.label(),
            rps / u_rps.max(1.0),
            cpu / 1e3,
            added / 1e3,
            ebpf / 1e3,
            agent / 1e3,
            sink / 1e3,
            (added - ebpf - agent - sink) / 1e3
        );
        levels.insert(
            level.key().into(),
            json!({"rps": rps, "ratio": rps / u_rps.max(1.0),
                   "machine_us_per_request": cpu / 1e3, "added_us_per_request": added / 1e3,
                   "ebpf_us_per_request": ebpf / 1e3, "agent_us_per_request": agent / 1e3,
                   "sink_us_per_request": sink / 1e3}),
        );
    }
    let full = of(Level::Full);
    let t_rps = med(Level::Full, &|l| l.rps);
    let ebpf = median(
        &full
            .iter()
            .map(|l| l.ebpf_ns_per_span())
            .collect::<Vec<_>>(),
    );
    let agent = median(
        &full
            .iter()
            .map(|l| l.agent_ns_per_span())
            .collect::<Vec<_>>(),
    );
    println!(
        "{what} saturation ({how}, {} s legs, medians of {}): untraced {u_rps:.0} req/s, \
         traced {t_rps:.0} req/s ({:.2}); added CPU per {span} {:.2} us = eBPF {:.2} us + \
         agent {:.2} us",
        opts.seconds,
        full.len(),
        t_rps / u_rps.max(1.0),
        (ebpf + agent) / 1e3,
        ebpf / 1e3,
        agent / 1e3
    );
    Ok(json!({
        "untraced_rps": u_rps, "traced_rps": t_rps,
        "cpu_per_span_us": (ebpf + agent) / 1e3,
        "ebpf_per_span_us": ebpf / 1e3, "agent_per_span_us": agent / 1e3,
        "levels": levels,
        "legs": legs.iter().map(|(l, leg)| {
            let mut j = leg.json();
            j["level"] = json!(l.key());
            j
        }).collect::<Vec<_>>(),
    }))
}

/// What a sampled function's time is counted as.
fn category(comm: &str, user: bool, sym: &str) -> &'static str {
    let has = |parts: &[&str]| parts.iter().any(|p| sym.contains(p));
    if comm.starts_with("swapper") {
        "idle"
    } else if comm == "tracer" || comm.starts_with("tokio-rt") {
        "agent process"
    } else if comm == "otlp-sink" {
        "OTLP sink"
    } else if sym.starts_with("bpf_prog_") {
        "eBPF programs (JIT code)"
    } else if has(&[
        "htab",
        "bpf_lru",
        "lookup_nulls",
        "pcpu_freelist",
        "array_map",
    ]) {
        "eBPF maps (hash/LRU)"
    } else if has(&["ringbuf", "irq_work"]) {
        "eBPF ring buffer"
    } else if has(&[
        "nofault",
        "bpf_probe_read",
        "bpf_get_current",
        "bpf_ktime",
        "strncpy_from",
        "bpf_tail",
    ]) {
        "eBPF helpers (probe reads)"
    } else if has(&[
        "trace_call_bpf",
        "perf_syscall",
        "perf_trace",
        "syscall_trace_enter",
        "syscall_exit_work",
        "__traceiter",
        "bpf_trace_run",
        "uprobe",
    ]) {
        "tracepoint dispatch"
    } else if has(&["read_tsc", "ktime_get", "sched_clock"]) {
        "clock reads (bpf_stats, timestamps)"
    } else if has(&[
        "schedule",
        "finish_task_switch",
        "try_to_wake_up",
        "enqueue_",
        "dequeue_",
        "pick_next",
        "update_curr",
        "select_task_rq",
    ]) {
        "scheduler"
    } else if user {
        "load, user space"
    } else {
        "load, kernel (network, syscalls)"
    }
}

/// `perf record -a` (software clock: this VM has no hardware counters) over one load run,
/// untraced and with the full agent, each sample put in a [`category`]; prints per request
/// what each category costs and how that changed.
fn profile(
    opts: &Opts,
    args: &[String],
    load: &(dyn Fn(u64) -> anyhow::Result<(u64, f64)> + Sync),
    dir: &Path,
) -> anyhow::Result<serde_json::Value> {
    const HZ: u32 = 999;
    let seconds = opts.seconds.max(6);
    let window = seconds - 4;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut sides = Vec::new();
    for traced in [false, true] {
        let agent = if traced {
            Some(Agent::start(args)?)
        } else {
            None
        };
        let data = dir.join(format!("perf-{traced}.data"));
        let (requests, rps) = std::thread::scope(|s| -> anyhow::Result<(u64, f64)> {
            let running = s.spawn(|| load(seconds));
            std::thread::sleep(Duration::from_secs(2));
            crate::status(
                Command::new("perf")
                    .args(["record", "-q", "-F", &HZ.to_string(), "-a", "-o"])
                    .arg(&data)
                    .args(["--", "sleep", &window.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            running.join().expect("the load thread")
        })?;
        if let Some(a) = agent {
            a.stop();
        }
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--sort",
                "comm,sym",
                "--percent-limit",
                "0",
            ])
            .arg("-i")
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .context("running perf report")?;
        let mut by: std::collections::BTreeMap<&'static str, f64> = Default::default();
        for line in String::from_utf8_lossy(&report.stdout).lines() {
            // "    12.34%  nginx  [k] tcp_sendmsg"
            let mut fields = line.split_whitespace();
            let (Some(pct), Some(comm), Some(kind)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some(pct) = pct.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) else {
                continue;
            };
            let sym = fields.collect::<Vec<_>>().join(" ");
            *by.entry(category(comm, kind == "[.]", &sym)).or_default() += pct;
        }
        let _ = std::fs::remove_file(&data);
        // Share of the machine's time over the window, per request.
        let per_request: std::collections::BTreeMap<&'static str, f64> = by
            .iter()
            .map(|(k, pct)| (*k, pct / 100.0 * cores * 1e6 / rps.max(1.0)))
            .collect();
        sides.push((requests, rps, per_request));
    }
    let (_, u_rps, untraced) = &sides[0];
    let (_, t_rps, traced) = &sides[1];
    let mut names: Vec<&'static str> = untraced.keys().chain(traced.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    names.sort_by(|a, b| {
        let d = |n: &str| traced.get(n).unwrap_or(&0.0) - untraced.get(n).unwrap_or(&0.0);
        d(b).total_cmp(&d(a))
    });
    println!(
        "where the time goes (perf, {HZ} Hz software clock on all {cores} CPUs, {window} s of \
         nginx at saturation, both ends traced): per request, untraced {u_rps:.0} req/s, \
         traced {t_rps:.0} req/s"
    );
    let mut rows = serde_json::Map::new();
    for name in names {
        let (u, t) = (
            untraced.get(name).copied().unwrap_or(0.0),
            traced.get(name).copied().unwrap_or(0.0),
        );
        println!("  {name:<38} {u:>6.2} us -> {t:>6.2} us ({:+.2})", t - u);
        rows.insert(
            name.into(),
            json!({"untraced_us_per_request": u, "traced_us_per_request": t}),
        );
    }
    Ok(json!({"untraced_rps": u_rps, "traced_rps": t_rps, "categories": rows}))
}

/// Start the agent, run the load, wait for every span to reach the sink, stop the agent.
fn traced_leg(
    args: &[String],
    load: impl FnOnce() -> anyhow::Result<(u64, f64)>,
) -> anyhow::Result<Leg> {
    traced_leg_with(&workspace().join("target/release/tracer"), args, load)
}

/// [`traced_leg`] with the agent binary `bin`.
fn traced_leg_with(
    bin: &Path,
    args: &[String],
    load: impl FnOnce() -> anyhow::Result<(u64, f64)>,
) -> anyhow::Result<Leg> {
    let agent = Agent::start_bin(bin, args)?;
    let pid = agent.pid();
    let spans0 = sink_count()?;
    let sink = SINK_PID.get().copied().unwrap_or(0);
    let (cpu0, bpf0, sink0) = (cpu_ns(pid), bpf_stats(pid), cpu_ns(sink));
    let m0 = machine_busy_ns();
    let (requests, rps) = load()?;
    let machine_ns = machine_busy_ns() - m0;
    let spans = settle(spans0)? - spans0;
    let (cpu1, bpf1) = (cpu_ns(pid), bpf_stats(pid));
    let report = agent.stop();
    let drops = report
        .split_once("stopped: ")
        .map(|(_, r)| r.to_string())
        .unwrap_or(report);
    Ok(Leg {
        requests,
        rps,
        spans,
        bpf: BpfStats {
            run_ns: bpf1.run_ns - bpf0.run_ns,
            runs: bpf1.runs - bpf0.runs,
        },
        agent_cpu_ns: cpu1 - cpu0,
        sink_cpu_ns: cpu_ns(sink).saturating_sub(sink0),
        machine_ns,
        drops,
    })
}

/// Busy CPU time of the whole machine since boot, all CPUs (`/proc/stat`: everything but
/// idle and iowait), in nanoseconds.
fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

/// One keep-alive connection sending `rate` requests per second for `seconds`; latency from
/// each request's scheduled time (so a stall counts against every request it delays):
/// (p50, p99) in microseconds.
fn fixed_rate(port: u16, rate: u64, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    let total = rate * seconds;
    let mut latencies = Vec::with_capacity(total as usize);
    let mut buf = vec![0u8; 4096];
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        s.write_all(b"GET /latency HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            got.extend_from_slice(&buf[..n]);
            if response_complete(&got) {
                break;
            }
        }
        latencies.push(due.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

/// Whether `got` holds a whole response with a Content-Length body.
fn response_complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    got.len() >= end + 4 + length
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Where the figures came from.
fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn complete_responses() {
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"
        ));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Len"));
    }
}
