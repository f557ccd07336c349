//! Who a traced process is: the facts that become its OpenTelemetry resource.

use std::{collections::HashMap, sync::Arc};

/// A traced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Kernel task name of the main thread.
    pub comm: String,
    /// Base name of `/proc/PID/exe`, or the task name when that is gone.
    pub executable_name: String,
    pub executable_path: Option<String>,
    /// What the process's own environment says it is.
    pub service: Service,
    /// The container it runs in, from its cgroup (`container.id`).
    pub container_id: Option<String>,
}

/// A service's identity as a process's own OpenTelemetry variables give it:
/// `OTEL_SERVICE_NAME`, and `service.name`, `service.namespace`, `service.version` from
/// `OTEL_RESOURCE_ATTRIBUTES` (`OTEL_SERVICE_NAME` wins for the name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub version: Option<String>,
}

/// The most of `/proc/PID/environ` read: the variables are looked for in this much.
const ENVIRON_MAX: u64 = 256 * 1024;
/// The longest service name, namespace or version kept (longer ones are cut).
const SERVICE_FIELD_MAX: usize = 256;

impl Service {
    /// From the NUL-separated `KEY=value` entries of an environment; every other variable is
    /// passed over and not kept.
    pub fn from_environ(environ: &[u8]) -> Self {
        let mut service = Service::default();
        let mut from_attributes = Service::default();
        for entry in environ.split(|&b| b == 0) {
            if let Some(v) = entry.strip_prefix(b"OTEL_SERVICE_NAME=") {
                service.name = field(&String::from_utf8_lossy(v));
            } else if let Some(v) = entry.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
                from_attributes = Self::from_resource_attributes(&String::from_utf8_lossy(v));
            }
        }
        Service {
            name: service.name.or(from_attributes.name),
            namespace: from_attributes.namespace,
            version: from_attributes.version,
        }
    }

    /// `service.*` of an `OTEL_RESOURCE_ATTRIBUTES` value: comma-separated `key=value` pairs,
    /// values percent-decoded; malformed pairs are skipped.
    fn from_resource_attributes(text: &str) -> Self {
        let mut s = Service::default();
        for pair in text.split(',') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let value = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            let slot = match k.trim() {
                "service.name" => &mut s.name,
                "service.namespace" => &mut s.namespace,
                "service.version" => &mut s.version,
                _ => continue,
            };
            *slot = field(&value);
        }
        s
    }
}

/// A service field: trimmed, not empty, at most [`SERVICE_FIELD_MAX`] bytes (cut at a
/// character boundary).
fn field(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let mut end = v.len().min(SERVICE_FIELD_MAX);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Some(v[..end].to_string())
}

/// The OpenTelemetry variables of `pid`'s environment (as it was at its start).
fn read_service(pid: u32) -> Service {
    use std::io::Read as _;
    let mut environ = Vec::new();
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/environ")) {
        let _ = f.take(ENVIRON_MAX).read_to_end(&mut environ);
    }
    Service::from_environ(&environ)
}

impl Process {
    /// Describe `pid`, reading `/proc` once.
    pub fn read(pid: u32, comm: &str) -> Self {
        let path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            });
        let executable_name = path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or(comm)
            .to_string();
        Process {
            pid,
            comm: comm.to_string(),
            executable_name,
            executable_path: path,
            service: read_service(pid),
            container_id: std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| crate::filter::cgroup::container_id(&text)),
        }
    }

    /// The service name spans of this process are reported under: its own
    /// `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else its
    /// executable's name.
    pub fn service_name(&self) -> &str {
        self.service
            .name
            .as_deref()
            .unwrap_or(&self.executable_name)
    }
}

/// Cache of [`Process`] by pid, bounded.
pub struct Processes {
    known: HashMap<u32, Arc<Process>>,
    /// False when replaying: `/proc` describes this machine now, not the recorded one.
    read_proc: bool,
}

const MAX_PROCESSES: usize = 8192;

impl Default for Processes {
    fn default() -> Self {
        Self::new()
    }
}

impl Processes {
    pub fn new() -> Self {
        Processes {
            known: HashMap::new(),
            read_proc: true,
        }
    }

    /// A cache that never reads `/proc`: unknown processes are named by their task name.
    pub fn offline() -> Self {
        Processes {
            known: HashMap::new(),
            read_proc: false,
        }
    }

    /// The process `pid`, as named `comm` in the event at hand. A changed name means the pid
    /// was reused or the process exec'd: it is read again.
    pub fn get(&mut self, pid: u32, comm: &str) -> Arc<Process> {
        if let Some(p) = self.known.get(&pid)
            && (p.comm == comm || !self.read_proc)
        {
            return p.clone();
        }
        if self.known.len() >= MAX_PROCESSES {
            self.known.clear();
        }
        let p = Arc::new(self.describe(pid, comm));
        self.known.insert(pid, p.clone());
        p
    }

    /// `pid` as `/proc` describes it, or (offline) by its task name alone.
    fn describe(&self, pid: u32, comm: &str) -> Process {
        if self.read_proc {
            Process::read(pid, comm)
        } else {
            Process {
                pid,
                comm: comm.to_string(),
                executable_name: comm.to_string(),
                executable_path: None,
                service: Service::default(),
                container_id: None,
            }
        }
    }

    /// What the kernel said the executable of `pid` is called (when it opened a connection,
    /// so surely while it existed). It wins over `/proc`, which may be gone by the time a
    /// span of a short-lived process is assembled.
    pub fn learn(&mut self, pid: u32, comm: &str, executable_name: &str) {
        if executable_name.is_empty() {
            return;
        }
        if let Some(p) = self.known.get(&pid)
            && p.comm == comm
            && p.executable_name == executable_name
        {
            return;
        }
        let mut p = self.describe(pid, comm);
        if p.executable_name != executable_name {
            p.executable_name = executable_name.to_string();
            p.executable_path = None;
        }
        if self.known.len() >= MAX_PROCESSES {
            self.known.clear();
        }
        self.known.insert(pid, Arc::new(p));
    }

    /// The task name `pid` is known by, as the kernel's events carry it (zero-padded): from
    /// the cache, else (live) from `/proc`; zeros when neither knows.
    pub fn comm_of(&self, pid: u32) -> [u8; tracer_common::COMM_LEN] {
        let mut comm = [0; tracer_common::COMM_LEN];
        let name = match self.known.get(&pid) {
            Some(p) => p.comm.clone(),
            None if self.read_proc => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end_matches('\n').to_string())
                .unwrap_or_default(),
            None => String::new(),
        };
        let n = name.len().min(comm.len() - 1);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        comm
    }

    /// Put a known process in the cache (from a recording).
    pub fn insert(&mut self, p: Process) {
        self.known.insert(p.pid, Arc::new(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_name_outlives_the_process() {
        // A pid that does not exist: /proc has nothing to say.
        let pid = u32::MAX - 7;
        let mut ps = Processes::new();
        assert_eq!(
            ps.get(pid, "python3").executable_name,
            "python3",
            "falls back to comm"
        );
        ps.learn(pid, "python3", "python3.11");
        assert_eq!(ps.get(pid, "python3").executable_name, "python3.11");
        // A new program under the same pid (exec, or reuse) is named afresh.
        ps.learn(pid, "node", "node");
        assert_eq!(ps.get(pid, "node").executable_name, "node");
    }

    #[test]
    fn the_service_comes_from_the_process_environment() {
        let env = |entries: &[&str]| -> Vec<u8> { entries.join("\0").into_bytes() };
        let s = Service::from_environ(&env(&[
            "PATH=/usr/bin",
            "OTEL_RESOURCE_ATTRIBUTES=service.name=ignored, service.namespace = shop ,\
             service.version=1.2%2E3,deployment.environment=prod,broken,=x",
            "SECRET_TOKEN=hunter2",
            "OTEL_SERVICE_NAME=checkout",
        ]));
        assert_eq!(
            s,
            Service {
                name: Some("checkout".into()),
                namespace: Some("shop".into()),
                version: Some("1.2.3".into()),
            }
        );
        let s = Service::from_environ(&env(&["OTEL_RESOURCE_ATTRIBUTES=service.name=cart%20api"]));
        assert_eq!(s.name.as_deref(), Some("cart api"));
        assert_eq!(Service::from_environ(b""), Service::default());
        let s = Service::from_environ(&env(&[
            "OTEL_SERVICE_NAME=  ",
            "OTEL_RESOURCE_ATTRIBUTES=%",
        ]));
        assert_eq!(
            s,
            Service::default(),
            "blank and malformed values give nothing"
        );
        let long = format!("OTEL_SERVICE_NAME={}", "\u{e9}".repeat(300));
        let s = Service::from_environ(long.as_bytes());
        assert!(s.name.as_ref().unwrap().len() <= SERVICE_FIELD_MAX);
        let s = Service::from_environ(b"OTEL_SERVICE_NAME=a\xff\xfeb");
        assert_eq!(s.name.as_deref(), Some("a\u{fffd}\u{fffd}b"));
    }

    #[test]
    fn a_process_is_named_by_its_own_service_name() {
        let mut p = Process::read(std::process::id(), "x");
        p.service = Service::default();
        assert_eq!(p.service_name(), p.executable_name);
        p.service.name = Some("svc".into());
        assert_eq!(p.service_name(), "svc");
    }
}
