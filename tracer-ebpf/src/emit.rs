//! Building events in the per-CPU scratch buffer and handing them to the ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_probe_read_user},
};
use tracer_common::{EVENT_HEADER_LEN, MAX_CAPTURE, MAX_IOV, counter};

use crate::{
    config,
    filter::process_comm,
    maps::{ConnInfo, EVENTS, EventBuf, Inflight, MODE_IOV, MODE_NONE, SCRATCH, count},
};

/// Masks that keep lengths and offsets provably inside `EventBuf::data` for the verifier; for
/// values already within the capture ceiling they change nothing.
const LEN_MASK: u64 = (MAX_CAPTURE as u64 * 2) - 1;
const OFF_MASK: u64 = MAX_CAPTURE as u64 - 1;

/// The scratch buffer with its header filled in for `conn`; the payload is left empty. Fields
/// are written in place: a header built on the stack would not fit beside the callers' frames.
#[inline(always)]
pub fn start(
    kind: u8,
    direction: u8,
    syscall: u8,
    fd: i32,
    conn: &ConnInfo,
) -> Option<*mut EventBuf> {
    start_named(kind, direction, syscall, fd, conn, true)
}

/// [`start`], with the process's name (two kernel reads) only when `name` is set, zeros
/// otherwise.
#[inline(always)]
pub fn start_named(
    kind: u8,
    direction: u8,
    syscall: u8,
    fd: i32,
    conn: &ConnInfo,
    name: bool,
) -> Option<*mut EventBuf> {
    let buf = SCRATCH.get_ptr_mut(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let now = unsafe { bpf_ktime_get_ns() };
    let h = unsafe { &mut (*buf).header };
    h.ts_enter_ns = now;
    h.ts_exit_ns = now;
    h.sock = conn.sock;
    h.total_len = 0;
    h.tgid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.fd = fd;
    h.captured_len = 0;
    h.kind = kind;
    h.direction = direction;
    h.syscall = syscall;
    h.source = tracer_common::source::SOCKET;
    h.flags = 0;
    h.tuple = conn.tuple;
    h.comm = if name {
        process_comm().unwrap_or_default()
    } else {
        [0; tracer_common::COMM_LEN]
    };
    Some(buf)
}

/// Copy up to the capture window of the syscall's payload from user memory. Returns the number
/// of bytes copied.
#[inline(always)]
pub fn copy_payload(buf: *mut EventBuf, call: &Inflight, moved: u64) -> u64 {
    let window = core::cmp::min(moved, config!(capture_bytes) as u64);
    let data = unsafe { (*buf).data.as_mut_ptr() };
    if call.mode == MODE_NONE {
        return 0;
    }
    if call.mode != MODE_IOV {
        let n = window & LEN_MASK;
        let ok = unsafe { bpf_probe_read_user(data.cast(), n as u32, call.buf as *const _) } == 0;
        if !ok {
            count(counter::READ_USER_FAILED);
            return 0;
        }
        return n;
    }
    let mut copied: u64 = 0;
    let mut i: u32 = 0;
    while i < MAX_IOV {
        if (i as u64) >= call.iovcnt || copied >= window {
            break;
        }
        let iov_ptr = (call.buf + i as u64 * 16) as *const [u64; 2];
        let Ok(iov) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(iov_ptr) }) else {
            count(counter::READ_USER_FAILED);
            break;
        };
        // Clamped twice: the verifier does not carry `copied < window` through the subtraction.
        let n = core::cmp::min(core::cmp::min(iov[1], window - copied), MAX_CAPTURE as u64);
        let dst = unsafe { data.add((copied & OFF_MASK) as usize) };
        if unsafe { bpf_probe_read_user(dst.cast(), n as u32, iov[0] as *const _) } != 0 {
            count(counter::READ_USER_FAILED);
            break;
        }
        copied += n;
        i += 1;
    }
    if i == MAX_IOV && (i as u64) < call.iovcnt && copied < window {
        count(counter::IOV_TRUNCATED);
    }
    copied
}

/// Send the event with `payload` bytes of data. Wakes the reader only when enough is pending:
/// the agent also polls, and a wakeup per event costs more than the event.
#[inline(always)]
pub fn submit(buf: *mut EventBuf, payload: u64) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let wake = pending >= config!(wakeup_bytes) as u64;
    output(buf, payload, wake, counter::EVENTS);
}

/// Send a report the agent must act on soon (a file to look at), waking it at once; counted
/// under `counted`, not as an event.
#[inline(always)]
pub fn submit_now(buf: *mut EventBuf, payload: u64, counted: u32) {
    output(buf, payload, true, counted);
}

#[inline(always)]
fn output(buf: *mut EventBuf, payload: u64, wake: bool, counted: u32) {
    let payload = payload & LEN_MASK;
    unsafe { (*buf).header.captured_len = payload as u32 };
    let len = EVENT_HEADER_LEN + payload as usize;
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
    let flags = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.output::<[u8]>(bytes, flags as u64) {
        Ok(()) => count(counted),
        Err(_) => count(counter::RINGBUF_FULL),
    }
}
