//! Per-connection state and its lifetime: a bounded table keyed by (process, kernel socket),
//! with idle eviction. Every connection dropped for room or idleness is counted.

/// Maps on the per-event path: a fast hasher with a per-process random seed.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Where a connection's bytes come from. A TLS connection has both: ciphertext crosses its
/// socket, plaintext passes through its TLS library. Each is a connection of its own to the
/// pipeline, so the two streams never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The socket syscalls.
    Socket,
    /// A TLS library's plaintext.
    Tls,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Socket, Source::Tls];

    /// The source an event header names (`tracer_common::source`); `None` for a value the
    /// kernel side does not write.
    pub fn from_wire(value: u8) -> Option<Source> {
        match value {
            tracer_common::source::SOCKET => Some(Source::Socket),
            tracer_common::source::TLS => Some(Source::Tls),
            _ => None,
        }
    }
}

/// A connection as the kernel identifies it: the process, its `struct sock`, and which of the
/// connection's byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub tgid: u32,
    pub sock: u64,
    pub source: Source,
}

impl ConnKey {
    /// The same connection's other byte stream.
    pub fn with_source(self, source: Source) -> ConnKey {
        ConnKey { source, ..self }
    }
}

/// Limits of a [`Table`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections with no event for this long (kernel ns) are evicted.
    pub idle_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 65_536,
            idle_ns: 300 * 1_000_000_000,
        }
    }
}

struct Entry<S> {
    state: S,
    last_seen: u64,
}

/// The connection table. `S` is whatever the protocol layer keeps per connection.
pub struct Table<S> {
    entries: FastMap<ConnKey, Entry<S>>,
    /// Connections per process, so that a process's exit costs nothing when it had none.
    per_process: FastMap<u32, usize>,
    limits: Limits,
    /// Connections evicted because the table was full.
    pub evicted_full: u64,
    /// Connections evicted after being idle.
    pub evicted_idle: u64,
}

impl<S> Table<S> {
    pub fn new(limits: Limits) -> Self {
        Table {
            entries: FastMap::default(),
            per_process: FastMap::default(),
            limits,
            evicted_full: 0,
            evicted_idle: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When `key` is new and the table is full, evict the least recently seen connection to
    /// make room for it, and return that connection.
    pub fn make_room_for(&mut self, key: &ConnKey) -> Option<(ConnKey, S)> {
        if self.entries.contains_key(key) || self.entries.len() < self.limits.max_connections {
            return None;
        }
        let oldest = *self.entries.iter().min_by_key(|(_, e)| e.last_seen)?.0;
        let state = self.remove(&oldest)?;
        self.evicted_full += 1;
        Some((oldest, state))
    }

    /// The state of `key`, created with `make` if absent. Call [`Table::make_room_for`] first:
    /// this does not enforce the limit.
    pub fn get_or_insert(&mut self, key: ConnKey, now: u64, make: impl FnOnce() -> S) -> &mut S {
        let per_process = &mut self.per_process;
        let entry = self.entries.entry(key).or_insert_with(|| {
            *per_process.entry(key.tgid).or_default() += 1;
            Entry {
                state: make(),
                last_seen: now,
            }
        });
        entry.last_seen = entry.last_seen.max(now);
        &mut entry.state
    }

    /// The connection `key`, if known (not counted as activity).
    pub fn get(&self, key: &ConnKey) -> Option<&S> {
        self.entries.get(key).map(|e| &e.state)
    }

    /// The connection `key`, if known (not counted as activity).
    pub fn get_mut(&mut self, key: &ConnKey) -> Option<&mut S> {
        self.entries.get_mut(key).map(|e| &mut e.state)
    }

    /// Remove a connection (it was closed).
    pub fn remove(&mut self, key: &ConnKey) -> Option<S> {
        let e = self.entries.remove(key)?;
        if let Some(n) = self.per_process.get_mut(&key.tgid) {
            *n -= 1;
            if *n == 0 {
                self.per_process.remove(&key.tgid);
            }
        }
        Some(e.state)
    }

    /// Remove every connection of process `tgid` (it exited).
    pub fn remove_process(&mut self, tgid: u32) -> Vec<(ConnKey, S)> {
        if !self.per_process.contains_key(&tgid) {
            return Vec::new();
        }
        let keys: Vec<ConnKey> = self
            .entries
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.remove(&k).map(|s| (k, s)))
            .collect()
    }

    /// Remove every connection idle since before `now - idle`, handing each to `evicted`.
    pub fn evict_idle(&mut self, now: u64, mut evicted: impl FnMut(ConnKey, S)) {
        let cutoff = now.saturating_sub(self.limits.idle_ns);
        let stale: Vec<ConnKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.last_seen < cutoff)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(state) = self.remove(&key) {
                self.evicted_idle += 1;
                evicted(key, state);
            }
        }
    }

    /// Remove everything (shutdown), handing each connection to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(ConnKey, S)) {
        self.per_process.clear();
        for (k, e) in self.entries.drain() {
            f(k, e.state);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_exit_removes_only_its_connections() {
        let mut t = Table::new(Limits::default());
        for (tgid, sock) in [(1, 10), (1, 11), (2, 20)] {
            t.get_or_insert(
                ConnKey {
                    tgid,
                    sock,
                    source: Source::Socket,
                },
                0,
                || sock,
            );
        }
        let mut gone: Vec<u64> = t.remove_process(1).into_iter().map(|(_, s)| s).collect();
        gone.sort();
        assert_eq!(gone, vec![10, 11]);
        assert_eq!(t.len(), 1);
        assert!(t.remove_process(1).is_empty());
        assert!(t.remove_process(3).is_empty());
    }

    use super::*;

    fn key(sock: u64) -> ConnKey {
        ConnKey {
            tgid: 1,
            sock,
            source: Source::Socket,
        }
    }

    #[test]
    fn full_table_evicts_the_least_recent() {
        let mut t = Table::new(Limits {
            max_connections: 2,
            idle_ns: 100,
        });
        t.get_or_insert(key(1), 10, || 1);
        t.get_or_insert(key(2), 20, || 2);
        assert!(
            t.make_room_for(&key(1)).is_none(),
            "known keys need no room"
        );
        t.get_or_insert(key(1), 30, || 0);
        let gone = t.make_room_for(&key(3)).map(|(k, s)| (k.sock, s));
        assert_eq!(gone, Some((2, 2)));
        t.get_or_insert(key(3), 40, || 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted_full, 1);
    }

    #[test]
    fn idle_connections_are_evicted_and_counted() {
        let mut t = Table::new(Limits {
            max_connections: 10,
            idle_ns: 100,
        });
        t.get_or_insert(key(1), 10, || ());
        t.get_or_insert(key(2), 150, || ());
        let mut gone = Vec::new();
        t.evict_idle(200, |k, _| gone.push(k.sock));
        assert_eq!(gone, vec![1]);
        assert_eq!(t.evicted_idle, 1);
        assert_eq!(t.len(), 1);
    }
}
