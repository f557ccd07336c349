//! What to trace: process ids, process names, cgroups and ports, as given on the command
//! line, in the form the kernel-side filters take them. Repeating a flag widens its set (OR);
//! different flags narrow each other (AND). An empty set matches everything.

pub mod cgroup;

use std::{fmt, str::FromStr};

use tracer_common::{COMM_LEN, PORT_BITMAP_WORDS};

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("`{p}` is not a TCP port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        let (low, high) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if low > high {
            return Err(format!("port range `{s}` is empty: {low} is above {high}"));
        }
        Ok(PortRange { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// The selection of traffic to trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<PortRange>,
    /// cgroup v2 directories: their processes and those of every cgroup below them.
    pub cgroups: Vec<cgroup::Cgroup>,
}

impl Filter {
    /// The kernel's key for a process name: the first 15 bytes, NUL padded, as `comm` holds it.
    pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
        let mut key = [0u8; COMM_LEN];
        let bytes = name.as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&bytes[..n]);
        key
    }

    /// Whether the process, name and cgroup filters select process `pid` named `comm` (its
    /// main thread's name, as the kernel-side filter sees it); the cgroup is read from
    /// `/proc/PID/cgroup`. Ports select traffic, not processes.
    pub fn selects_process(&self, pid: u32, comm: &str) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty()
                || self
                    .comms
                    .iter()
                    .any(|c| Self::comm_key(c) == Self::comm_key(comm)))
            && (self.cgroups.is_empty()
                || cgroup::of_process(pid)
                    .is_some_and(|path| self.cgroups.iter().any(|c| c.holds(&path))))
    }

    /// Whether the process, name and cgroup filters are all empty (every process is traced).
    pub fn every_process(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty()
    }

    /// One bit per port, set for every port in any range.
    pub fn port_bitmap(&self) -> Vec<u64> {
        let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
        for range in &self.ports {
            for port in range.low..=range.high {
                words[port as usize / 64] |= 1 << (port % 64);
            }
        }
        words
    }

    /// A one-line description for the start-up log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let join = |items: Vec<String>| items.join(" or ");
        if !self.pids.is_empty() {
            parts.push(format!(
                "pid {}",
                join(self.pids.iter().map(u32::to_string).collect())
            ));
        }
        if !self.comms.is_empty() {
            parts.push(format!("process name {}", join(self.comms.clone())));
        }
        if !self.cgroups.is_empty() {
            parts.push(format!(
                "cgroup {} (and below)",
                join(self.cgroups.iter().map(|c| c.path.clone()).collect())
            ));
        }
        if !self.ports.is_empty() {
            parts.push(format!(
                "port {}",
                join(self.ports.iter().map(|p| p.to_string()).collect())
            ));
        }
        if parts.is_empty() {
            "every process except tracer itself".to_string()
        } else {
            parts.join(", and ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { low: 80, high: 80 }
        );
        assert_eq!(
            "8000-8080".parse::<PortRange>().unwrap(),
            PortRange {
                low: 8000,
                high: 8080
            }
        );
        for bad in ["0", "65536", "http", "90-80", "-", "1-", ""] {
            assert!(
                bad.parse::<PortRange>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn bitmap_sets_exactly_the_ports() {
        let f = Filter {
            ports: vec!["80".parse().unwrap(), "127-129".parse().unwrap()],
            ..Default::default()
        };
        let bits = f.port_bitmap();
        let set = |p: usize| bits[p / 64] & (1 << (p % 64)) != 0;
        let all: Vec<usize> = (0..65536).filter(|&p| set(p)).collect();
        assert_eq!(all, vec![80, 127, 128, 129]);
    }

    #[test]
    fn comm_keys_are_truncated_like_the_kernel() {
        let key = Filter::comm_key("a-very-long-process-name");
        assert_eq!(&key[..15], b"a-very-long-pro");
        assert_eq!(key[15], 0);
        assert_eq!(&Filter::comm_key("nginx")[..6], b"nginx\0");
    }

    #[test]
    fn process_filters_select_processes() {
        let every = Filter::default();
        assert!(every.every_process() && every.selects_process(7, "anything"));
        let f = Filter {
            pids: vec![10, 11],
            comms: vec!["python3".into()],
            ..Filter::default()
        };
        assert!(!f.every_process());
        assert!(f.selects_process(10, "python3"));
        assert!(!f.selects_process(12, "python3"), "another pid");
        assert!(!f.selects_process(10, "node"), "another name");
        // Names compare as the kernel keeps them: 15 bytes.
        let long = Filter {
            comms: vec!["a-very-long-process-name".into()],
            ..Filter::default()
        };
        assert!(long.selects_process(1, "a-very-long-pro"));
        // Ports select traffic, not processes.
        let ports = Filter {
            ports: vec!["80".parse().unwrap()],
            ..Filter::default()
        };
        assert!(ports.every_process() && ports.selects_process(1, "x"));
    }
}
