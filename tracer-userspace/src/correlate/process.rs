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
        }
    }

    /// The service name spans of this process are reported under.
    pub fn service_name(&self) -> &str {
        &self.executable_name
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
}
