//! The agent under test, run as a child process.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// The agent binary: `TRACER_BIN`, or the workspace's release build.
pub fn binary() -> PathBuf {
    match std::env::var_os("TRACER_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/tracer"
        )),
    }
}

/// A running agent with its output collected.
pub struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The agent's `--prometheus-port`, when it was given one.
    metrics_port: Option<u16>,
}

fn collect(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

impl Agent {
    /// Start the agent with `args` and extra environment, and wait for its `ready` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The tests' own OTLP settings must not leak in from the caller's environment.
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .spawn()
            .expect("starting the tracer binary (build it first)");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        collect(child.stdout.take().unwrap(), stdout.clone());
        let mut agent = Agent {
            child: Some(child),
            stderr,
            stdout,
            metrics_port: prometheus_port(args),
        };
        // A bound, not a wait: under the kernel matrix's emulation, start-up on 6.1 (its
        // verifier is slower) has taken from 25 s to more than 90 s (with Node's executable
        // to probe for TLS), against well under a second on this host.
        let ready = crate::wait_for(Duration::from_secs(240), || {
            if let Ok(Some(status)) = agent.child.as_mut().unwrap().try_wait() {
                panic!(
                    "tracer exited with {status} before ready: {:?}",
                    agent.stderr()
                );
            }
            agent
                .stderr()
                .iter()
                .any(|l| l.contains("ready"))
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "tracer never said ready: {:?}",
            agent.stderr()
        );
        agent
    }

    /// Start the agent with `args`, exporting to `receiver` over gRPC.
    pub fn exporting(receiver: &crate::receiver::Receiver, args: &[&str]) -> Agent {
        let endpoint = receiver.grpc_url();
        let mut full = args.to_vec();
        full.extend(["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"]);
        Agent::start(&full, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Ids of the eBPF programs the agent holds, from its descriptors' fdinfo.
    pub fn program_ids(&self) -> Vec<u64> {
        program_ids_of(self.pid())
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Send SIGTERM and wait for the exit; panics if it takes longer than `limit`.
    pub fn stop_within(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = crate::wait_for(limit, || child.try_wait().ok().flatten());
        match status {
            Some(s) => {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                s
            }
            None => {
                let _ = child.kill();
                panic!(
                    "tracer did not exit within {limit:?} of SIGTERM: {:?}",
                    self.stderr()
                );
            }
        }
    }

    /// Stop and require a clean exit.
    pub fn stop(&mut self) {
        let status = self.stop_within(Duration::from_secs(10));
        assert!(
            status.success(),
            "tracer exited with {status}: {:?}",
            self.stderr()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `--prometheus-port` in `args`.
fn prometheus_port(args: &[&str]) -> Option<u16> {
    args.iter().enumerate().find_map(|(i, a)| {
        let v = match a.strip_prefix("--prometheus-port") {
            Some("") => args.get(i + 1)?,
            Some(rest) => rest.strip_prefix('=')?,
            None => return None,
        };
        v.parse().ok()
    })
}

impl Agent {
    /// One scrape of the agent's `/metrics` (it must have been started with
    /// `--prometheus-port`): every sample, `name{labels}` -> value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let port = self
            .metrics_port
            .expect("the agent was started without --prometheus-port");
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        assert!(body.ends_with("# EOF\n"), "a whole exposition: {body}");
        parse_metrics(&body)
    }

    /// Scrape until `done` holds or `limit` passes; the last scrape either way, for the
    /// caller's assertions to show.
    pub fn metrics_when(
        &self,
        limit: Duration,
        done: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let mut last = BTreeMap::new();
        crate::wait_for(limit, || {
            last = self.metrics();
            done(&last).then_some(())
        });
        last
    }
}

/// A sample of a scrape, which must be there.
pub fn sample(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in the scrape: {m:?}"))
}

/// The samples of an OpenMetrics or Prometheus text exposition, `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            // Labels may hold spaces; the value follows them (or the name).
            let end = l.rfind('}').map_or(0, |i| i + 1);
            let split = end
                + l[end..]
                    .find(' ')
                    .unwrap_or_else(|| panic!("no value: {l}"));
            let value = l[split..].split_whitespace().next().unwrap_or_default();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("no value: {l}"));
            (l[..split].to_string(), value)
        })
        .collect()
}

/// `GET path` on 127.0.0.1:`port` with `Connection: close`: the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending a request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the response");
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {out:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    (status, body.to_string())
}

/// Ids of the eBPF programs process `pid` holds descriptors of.
pub fn program_ids_of(pid: u32) -> Vec<u64> {
    fdinfo_ids(pid, "prog_id:")
}

/// The values of the fdinfo field `field` (`prog_id:`, `map_id:`) over `pid`'s descriptors.
fn fdinfo_ids(pid: u32, field: &str) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = fds
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Ids of every eBPF program loaded in the kernel (bpftool).
pub fn loaded_program_ids() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("running bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

impl Agent {
    /// Ids of the eBPF maps the agent holds, from its descriptors' fdinfo.
    pub fn map_ids(&self) -> Vec<u64> {
        fdinfo_ids(self.pid(), "map_id:")
    }

    /// The id of the agent's map called `name` (bpftool).
    pub fn map_id(&self, name: &str) -> u64 {
        self.map_ids()
            .into_iter()
            .find(|id| {
                bpftool(&["map", "show", "id", &id.to_string()])
                    .get("name")
                    .and_then(|n| n.as_str())
                    == Some(name)
            })
            .unwrap_or_else(|| panic!("the agent holds no map called {name}"))
    }

    /// Every entry of the agent's hash map `name`, as (key, value) bytes.
    pub fn map_entries(&self, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let id = self.map_id(name).to_string();
        let dump = bpftool(&["map", "dump", "id", &id]);
        dump.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys of the agent's map `name` (for maps whose values user space cannot read, such
    /// as a sock hash).
    pub fn map_keys(&self, name: &str) -> Vec<Vec<u8>> {
        let id = self.map_id(name).to_string();
        let mut keys = Vec::new();
        let mut args: Vec<String> = vec!["map".into(), "getnext".into(), "id".into(), id];
        loop {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = Command::new("bpftool")
                .arg("-j")
                .args(&refs)
                .output()
                .expect("running bpftool");
            // bpftool fails at the end of the map.
            let Ok(next) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                break;
            };
            let key = hex_bytes(&next["next_key"]);
            if !out.status.success() || key.is_empty() || keys.contains(&key) {
                break;
            }
            args.truncate(4);
            args.push("key".into());
            args.extend(key.iter().map(|b| format!("0x{b:02x}")));
            keys.push(key);
        }
        keys
    }

    /// Remove one entry of the agent's map `name`, as the kernel does when it evicts it.
    pub fn map_delete(&self, name: &str, key: &[u8]) {
        let id = self.map_id(name).to_string();
        let hex: Vec<String> = key.iter().map(|b| format!("0x{b:02x}")).collect();
        let mut args = vec!["map", "delete", "id", &id, "key"];
        args.extend(hex.iter().map(String::as_str));
        bpftool(&args);
    }

    /// A kernel-side counter (an index of `tracer_common::counter`), summed over CPUs, read
    /// from the agent's `COUNTERS` map.
    pub fn kernel_counter(&self, index: u32) -> u64 {
        let id = self.map_id("COUNTERS").to_string();
        let key: Vec<String> = index
            .to_le_bytes()
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect();
        let mut args = vec!["map", "lookup", "id", &id, "key"];
        args.extend(key.iter().map(String::as_str));
        let found = bpftool(&args);
        found["values"]
            .as_array()
            .map(|cpus| {
                cpus.iter()
                    .filter_map(|c| hex_bytes(&c["value"]).try_into().ok())
                    .map(u64::from_le_bytes)
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Run bpftool with JSON output.
fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("bpftool's JSON")
}

fn hex_bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str())
                .filter_map(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .collect()
        })
        .unwrap_or_default()
}
