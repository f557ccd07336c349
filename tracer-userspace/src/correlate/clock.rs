//! Kernel timestamps (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` reads it) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The current kernel monotonic time (ns).
pub fn monotonic_now() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic kernel times to wall-clock times with one offset, refreshed now and then
/// so that wall-clock adjustments are followed.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock minus monotonic, in ns.
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset: real as i128 - mono as i128,
        }
    }

    /// A clock with a fixed offset (replays).
    pub fn fixed(offset_ns: i64) -> Self {
        Clock {
            offset: offset_ns as i128,
        }
    }

    /// Wall-clock minus monotonic time, in ns.
    pub fn offset_ns(self) -> i64 {
        self.offset as i64
    }

    /// Nanoseconds since the Unix epoch of a kernel monotonic time.
    pub fn to_unix_nanos(self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset).max(0) as u64
    }

    pub fn to_system(self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.offset).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }
}
