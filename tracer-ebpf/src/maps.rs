//! Every map and the configuration global the programs share.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use tracer_common::{
    COMM_LEN, Config, EventHeader, MAX_CAPTURE, PID_BITMAP_WORDS, PORT_BITMAP_WORDS,
};
pub use tracer_common::{ConnInfo, FdKey};

/// Written by the agent before load (see `tracer_common::Config`). Read field by field through
/// [`config!`]: copying the whole struct would cost stack on every use.
#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

/// One field of [`CONFIG`], read so the compiler cannot fold the zero it was compiled with.
#[macro_export]
macro_rules! config {
    ($($field:ident).+) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) }
    };
}

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tracer_common::counter::COUNT, 0);

/// One bit per process id; the agent sets the bits of the pids to trace.
#[map(name = "PID_FILTER")]
pub static PID_FILTER: Array<u64> = Array::with_max_entries(PID_BITMAP_WORDS, 0);

#[map(name = "COMM_FILTER")]
pub static COMM_FILTER: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

/// cgroup v2 ids (a cgroup directory's inode number) of the chosen cgroups and their
/// descendants, kept current by the agent.
#[map(name = "CGROUP_FILTER")]
pub static CGROUP_FILTER: HashMap<u64, u8> =
    HashMap::with_max_entries(tracer_common::MAX_CGROUPS, 0);

/// One bit per port; the agent sets the bits of the ports to trace.
#[map(name = "PORT_FILTER")]
pub static PORT_FILTER: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

#[map(name = "CONNS")]
pub static CONNS: LruHashMap<FdKey, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// Descriptors the agent muted, with the `struct file` each named then. Not an LRU map: an
/// entry of `CONNS` may be evicted, and the connection, resolved afresh, must stay muted. The
/// programs remove an entry at `close()`, or when its descriptor names another file; the
/// agent removes those of processes that exited.
#[map(name = "MUTED")]
pub static MUTED: HashMap<FdKey, u64> = HashMap::with_max_entries(65536, 0);

/// Processes with at least one traced connection: only their exits are reported. The value is
/// the executable file whose name the agent was last sent with a new connection (0 for none
/// yet): the name goes out again only after an exec.
#[map]
pub static PROCS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// How the payload of an in-flight syscall is laid out in user memory.
pub const MODE_PLAIN: u8 = 0;
pub const MODE_IOV: u8 = 1;
/// No payload in user memory (sendfile): the bytes are counted only.
pub const MODE_NONE: u8 = 3;

/// A data syscall between its entry and its exit, keyed by thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub ts_enter: u64,
    /// The `struct file` the descriptor named at entry (checked again at exit).
    pub file: u64,
    /// The buffer, or the iovec array.
    pub buf: u64,
    /// The iovec count in `MODE_IOV`.
    pub iovcnt: u64,
    pub fd: i32,
    pub mode: u8,
    pub syscall: u8,
    pub _pad: [u8; 2],
}

/// Slots of the in-flight table: one per thread id modulo this.
pub const INFLIGHT_SLOTS: u32 = 65536;

/// The in-flight call of the thread whose id is this slot's index modulo [`INFLIGHT_SLOTS`].
/// An array, not a hash: its lookup is inlined into the program, where a hash's insert,
/// lookup and delete are three helper calls per syscall. Two threads whose ids share a slot and are
/// in a traced call at the same time lose the first's (counted); a record the slot's readers
/// could see half-written fails its check and is dropped.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InflightSlot {
    /// The thread's `pid_tgid`; 0 for none.
    pub pid_tgid: u64,
    /// [`inflight_check`] of `pid_tgid` and `call`, written with them.
    pub check: u64,
    pub call: Inflight,
}

#[map]
pub static INFLIGHT: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);

/// A hash of a slot's contents: a record mixed from two threads' writes does not match it.
#[inline(always)]
fn inflight_check(pid_tgid: u64, c: &Inflight) -> u64 {
    let small = (c.fd as u32 as u64) | ((c.mode as u64) << 32) | ((c.syscall as u64) << 40);
    (pid_tgid ^ c.ts_enter.rotate_left(17) ^ c.file.rotate_left(31))
        ^ (c.buf.rotate_left(43) ^ c.iovcnt.rotate_left(7) ^ small.rotate_left(53))
}

/// The slot of thread `pid_tgid`.
#[inline(always)]
fn inflight_slot(pid_tgid: u64) -> Option<*mut InflightSlot> {
    INFLIGHT.get_ptr_mut(pid_tgid as u32 % INFLIGHT_SLOTS)
}

/// Remember the current thread's call until its exit.
#[inline(always)]
pub fn inflight_put(pid_tgid: u64, call: Inflight) {
    let Some(slot) = inflight_slot(pid_tgid) else {
        return;
    };
    unsafe {
        let held = core::ptr::read_volatile(&raw const (*slot).pid_tgid);
        if held != 0 && held != pid_tgid {
            count(tracer_common::counter::INFLIGHT_FULL);
        }
        core::ptr::write_volatile(&raw mut (*slot).pid_tgid, pid_tgid);
        core::ptr::write_volatile(&raw mut (*slot).call, call);
        core::ptr::write_volatile(&raw mut (*slot).check, inflight_check(pid_tgid, &call));
    }
}

/// The current thread's call, left in place (`take` false) or taken out.
#[inline(always)]
pub fn inflight_get(pid_tgid: u64, take: bool) -> Option<Inflight> {
    let slot = inflight_slot(pid_tgid)?;
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).pid_tgid) != pid_tgid {
            return None;
        }
        // Read once: what is checked is what is used.
        let call = core::ptr::read_volatile(&raw const (*slot).call);
        let check = core::ptr::read_volatile(&raw const (*slot).check);
        if take {
            core::ptr::write_volatile(&raw mut (*slot).pid_tgid, 0);
        }
        (check == inflight_check(pid_tgid, &call)).then_some(call)
    }
}

/// Forget the current thread's call, if it has one (it exited inside it).
#[inline(always)]
pub fn inflight_forget(pid_tgid: u64) {
    if let Some(slot) = inflight_slot(pid_tgid) {
        unsafe {
            if core::ptr::read_volatile(&raw const (*slot).pid_tgid) == pid_tgid {
                core::ptr::write_volatile(&raw mut (*slot).pid_tgid, 0);
            }
        }
    }
}

/// An event under construction: header and payload, contiguous so one `output` sends both.
/// Twice the capture ceiling, so that bounded-but-unknown offsets stay provably in range.
#[repr(C)]
pub struct EventBuf {
    pub header: EventHeader,
    pub data: [u8; MAX_CAPTURE * 2],
}

/// Slot 0: the program that finishes an exit program's event when it may start a request
/// (`tracer_common::AFTER_COPY_PROGRAM`), filled by the agent where the kernel can load it.
#[map(name = "AFTER_COPY")]
pub static AFTER_COPY: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
pub static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

/// Add one to a loss or activity counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU value: no other writer can race this increment.
        unsafe { *slot += 1 };
    }
}
