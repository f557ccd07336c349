//! Two test hosts on this machine: network namespaces joined by a veth pair, removed when
//! dropped. Addresses are the namespaces' own (10.201.x.0/24), reachable only between them.

use std::process::Command;

/// A pair of namespaces, `a` at [`Hosts::A_ADDR`] and `b` at [`Hosts::B_ADDR`].
pub struct Hosts {
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?} failed");
}

impl Hosts {
    pub const A_ADDR: &'static str = "10.201.7.1";
    pub const B_ADDR: &'static str = "10.201.7.2";

    pub fn new() -> Hosts {
        let tag = std::process::id() % 100_000;
        let hosts = Hosts {
            a: format!("trc{tag}a"),
            b: format!("trc{tag}b"),
        };
        let (va, vb) = (format!("v{tag}a"), format!("v{tag}b"));
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &hosts.a]);
        ip(&["link", "set", &vb, "netns", &hosts.b]);
        for (ns, dev, addr) in [(&hosts.a, &va, Self::A_ADDR), (&hosts.b, &vb, Self::B_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// A command that runs `program` inside namespace `ns` (the same process: `ip netns exec`
    /// execs it).
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Default for Hosts {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
