//! Trace context in the kernel: `traceparent` found past the capture window, and
//! `--propagate`, W3C trace context carried across hosts.
//!
//! - A traced thread that reads the start of an HTTP request gets a trace context: the trace
//!   id of the request's own `traceparent` when it has one, else a new one, and a new span id
//!   for the server span. The agent is told (a `CONTEXT` event), and uses these ids.
//! - A traced process's outgoing TCP connections are put in a sock hash (sock_ops), so that
//!   the sk_msg program sees what they send. When a send starts a plaintext HTTP/1.x request
//!   without a `traceparent`, the program inserts one after the request line, with the
//!   sending thread's trace id (or a new one) and a new span id, and tells the agent (an
//!   `INJECT` event): the syscall capture sees only the program's own buffer.
//!
//! The sk_msg program changes a request only when it can see the request whole: the send must
//! start at a request boundary and hold the complete head. It follows body lengths across
//! sends and stops for good on a connection at anything it cannot follow (chunked bodies,
//! pipelined requests, heads larger than it scans, bytes that are not HTTP): a missed
//! injection loses a link, a wrong one would corrupt a request.

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB, sk_action},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_msg_pull_data},
    },
    macros::{map, sk_msg, sock_ops},
    maps::{LruHashMap, PerCpuArray, Queue, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use tracer_common::{
    EventHeader, FAR_SCAN_MAX, TRACEPARENT_LINE_LEN, TRACEPARENT_VALUE_LEN, TraceIds, direction,
    kind,
};

use crate::{
    config,
    filter::{ports_pass, process_comm, traced_task},
    maps::{EVENTS, SCRATCH, count, inflight_get},
};

/// Bytes of a head scanned for its end and its headers.
pub const SCAN_MAX: usize = 2048;
const SCAN_MASK: usize = SCAN_MAX * 2 - 1;

/// Outgoing connections of traced processes, keyed by `struct sock` address. A connection
/// leaves it when the program stops following it, so its sends no longer pass through here.
#[map]
pub static PROPAGATED: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// Connections the sk_msg program stopped following, for the agent to take out of the sock
/// hash (`tracer_common::maps::LOST`).
#[map(name = "LOST")]
static LOST: Queue<u64> = Queue::with_max_entries(4096, 0);

/// Sockets of traced tasks inside a connect() call, keyed by `struct sock` address: set and
/// cleared by the connect tracepoints, which know the caller. The sock_ops program runs inside
/// the call but may not ask which task it runs for on older kernels (6.1): it checks the mark.
#[map]
static IN_CONNECT: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Connections between connect() (where the caller is known) and establishment (where the
/// sock hash may be updated), keyed by socket cookie (never reused while the kernel runs).
#[map]
static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// A traced task calls connect() on `fd`: mark its socket for the sock_ops program. Returns
/// the socket's address (0 when `fd` is not a stream socket), for [`connect_returned`].
#[inline(always)]
pub fn connect_called(fd: i32) -> u64 {
    if config!(propagate) == 0 || fd < 0 {
        return 0;
    }
    match crate::conn::fd_sock(fd as u32) {
        Some(sk) => {
            let _ = IN_CONNECT.insert(sk, 1, 0);
            sk
        }
        None => 0,
    }
}

/// The connect() call on socket `sk` returned: by then the SYN (and the sock_ops callback
/// that saw the mark) is behind it.
#[inline(always)]
pub fn connect_returned(sk: u64) {
    if sk != 0 {
        let _ = IN_CONNECT.remove(sk);
    }
}

/// The trace context of the request each thread is serving, keyed by pid_tgid.
#[map]
static THREAD_CTX: LruHashMap<u64, TraceIds> = LruHashMap::with_max_entries(65536, 0);

/// Threads whose request head did not end in the read that started it, and had no
/// `traceparent` so far: the connection (`struct sock`) whose next reads continue it. A head
/// arrives in pieces when the sender's segments do (a slow network, or `--propagate`'s own
/// insertion on the calling side), and its `traceparent` can be in a later piece.
#[map]
static HEAD_OPEN: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Where each propagated connection stands in its request stream, keyed by `struct sock`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Sending {
    /// Body bytes of the current request still to come.
    remaining: u64,
    /// Set for good at anything the program cannot follow.
    lost: u64,
}

#[map]
static SENDING: LruHashMap<u64, Sending> = LruHashMap::with_max_entries(65536, 0);

/// What a head scan found. Kept in map memory with the bytes, so the verifier does not track
/// its values through the loops.
#[repr(C)]
pub struct Scan {
    /// Offset just after the request line's CRLF.
    pub line_end: u32,
    /// Offset just after the empty line; 0 when the head does not end within the scan.
    pub head_end: u32,
    /// Set by the caller: the bytes continue a head begun in an earlier read (no request
    /// line; every line is a header line).
    pub continues: u32,
    pub has_traceparent: u32,
    /// Offset of the `traceparent` value.
    pub traceparent_at: u32,
    pub chunked: u32,
    pub content_length: u64,
    /// Where the line scan starts (after the method), where it ends, and the current line.
    pub from: u32,
    pub n: u32,
    pub last_start: u32,
    pub _pad: u32,
}

#[repr(C)]
pub struct ScanBuf {
    pub data: [u8; SCAN_MAX * 2],
    pub scan: Scan,
    pub ids: TraceIds,
    pub line: [u8; TRACEPARENT_LINE_LEN + 2],
    /// The read's buffer in user memory (0 when it is not one plain buffer), and where the
    /// search beyond the capture window stands.
    pub far_user: u64,
    pub far_from: u32,
    pub far_to: u32,
    /// Offset of a `traceparent` value found there, or 0.
    pub far_found: u32,
    /// Characters of `\ntraceparent:` matched so far, and the last bytes seen (for the head's
    /// end).
    pub far_matched: u32,
    pub far_tail: u32,
    pub _far_pad: u32,
    pub chunk: [u8; FAR_CHUNK * 2],
    pub far_event: FarEvent,
}

/// Bytes read from user memory at a time by the far search.
const FAR_CHUNK: usize = 256;
/// The far search starts this far back in the capture window, so that a header name cut by
/// the window's end is seen whole.
const FAR_OVERLAP: u32 = 16;

/// A `TRACEPARENT` event.
#[repr(C)]
pub struct FarEvent {
    pub header: EventHeader,
    pub value: [u8; 64],
}

/// The scan buffer of the tracepoint programs.
#[map]
static SCAN_BUF: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);

/// The sk_msg program's own scan buffer: it runs inside a send, and must never share a buffer
/// with a tracepoint program it may interleave with on the same CPU.
#[map]
static MSG_SCAN_BUF: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);

/// Which per-CPU scan buffer a scan works in. The `bpf_loop` steps cannot be handed a map
/// pointer, so each buffer gets its own copy of them.
pub trait ScanArea {
    fn buf() -> Option<*mut ScanBuf>;
}

/// The tracepoint programs' buffer.
pub struct Syscalls;
/// The sk_msg program's buffer.
pub struct Sends;

impl ScanArea for Syscalls {
    #[inline(always)]
    fn buf() -> Option<*mut ScanBuf> {
        SCAN_BUF.get_ptr_mut(0)
    }
}

impl ScanArea for Sends {
    #[inline(always)]
    fn buf() -> Option<*mut ScanBuf> {
        MSG_SCAN_BUF.get_ptr_mut(0)
    }
}

/// An event with its trace ids.
#[repr(C)]
struct IdsEvent {
    header: EventHeader,
    ids: TraceIds,
}

#[inline(always)]
fn lower(c: u8) -> u8 {
    if c.is_ascii_uppercase() { c | 0x20 } else { c }
}

/// `d[i]`, masked so the verifier sees it in bounds. The index goes through a volatile read:
/// otherwise the compiler proves the mask redundant from checks the verifier cannot relate.
#[inline(always)]
fn at(d: &[u8; SCAN_MAX * 2], i: u32) -> u8 {
    let i = unsafe { core::ptr::read_volatile(&i) };
    d[i as usize & SCAN_MASK]
}

/// Whether the line at `start` begins with `name` (lower case, with the colon).
#[inline(always)]
fn header_is(d: &[u8; SCAN_MAX * 2], start: u32, n: u32, name: &[u8]) -> bool {
    if start + name.len() as u32 > n {
        return false;
    }
    let mut k = 0;
    while k < name.len() {
        if lower(at(d, start + k as u32)) != name[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Offset of a header's value: after the name and any spaces.
#[inline(always)]
fn value_at(d: &[u8; SCAN_MAX * 2], mut i: u32, n: u32) -> u32 {
    let mut k = 0;
    while k < 8 {
        if i >= n || (at(d, i) != b' ' && at(d, i) != b'\t') {
            break;
        }
        i += 1;
        k += 1;
    }
    i
}

/// One byte of the line scan: `i` counts from `Scan::from`. Each header line is examined as
/// soon as its end is found, however many lines the head has. Returns 1 to stop.
extern "C" fn line_step<A: ScanArea>(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(b) = A::buf() else {
        return 1;
    };
    let b = unsafe { &mut *b };
    let i = (i as u32).wrapping_add(b.scan.from);
    if i + 1 >= b.scan.n || i as usize >= SCAN_MAX {
        return 1;
    }
    if at(&b.data, i) != b'\r' || at(&b.data, i + 1) != b'\n' {
        return 0;
    }
    let start = b.scan.last_start;
    if i == start && (start != 0 || b.scan.continues != 0) {
        b.scan.head_end = i + 2;
        return 1;
    }
    if b.scan.line_end == 0 {
        b.scan.line_end = i + 2;
    } else {
        header_line(b, start);
    }
    b.scan.last_start = i + 2;
    0
}

/// Note what the header line at `start` says, if it is one the programs follow.
#[inline(always)]
fn header_line(b: &mut ScanBuf, start: u32) {
    let n = core::cmp::min(b.scan.n, SCAN_MAX as u32);
    if header_is(&b.data, start, n, b"traceparent:") {
        // The first one counts, as for the agent.
        if b.scan.has_traceparent == 0 {
            b.scan.has_traceparent = 1;
            b.scan.traceparent_at = value_at(&b.data, start + 12, n);
        }
    } else if header_is(&b.data, start, n, b"transfer-encoding:") {
        b.scan.chunked = 1;
    } else if header_is(&b.data, start, n, b"content-length:") {
        let mut i = value_at(&b.data, start + 15, n);
        let mut value = 0u64;
        let mut k = 0;
        while k < 19 {
            if i >= n {
                break;
            }
            let c = at(&b.data, i);
            if !c.is_ascii_digit() {
                break;
            }
            value = value * 10 + (c - b'0') as u64;
            i += 1;
            k += 1;
        }
        b.scan.content_length = value;
    }
}

/// Scan the first `Scan::n` bytes of `b.data` as the start of an HTTP/1.x request (or, with
/// `Scan::continues`, as more of a head begun in an earlier read). Returns false when they do
/// not start one.
///
/// Takes a raw pointer: the bpf_loop step writes the scan through its own pointer to the same
/// map value, so no reference may stay live across that call (the compiler would keep the
/// values it wrote before it).
#[inline(always)]
///
/// `n` is read from map memory (`Scan::n`, where the caller leaves it), not passed: a length
/// in a register shares the verifier's knowledge with the one it came from, and each compare
/// of the scan would split the caller's state (older verifiers, 6.1, then check the bpf_loop
/// step once per split, and give up).
pub fn scan_request<A: ScanArea>(ptr: *mut ScanBuf) -> bool {
    let n = unsafe { core::ptr::read_volatile(&(*ptr).scan.n) };
    let continues = unsafe { core::ptr::read_volatile(&(*ptr).scan.continues) } != 0;
    let b = unsafe { &mut *ptr };
    let n = if n as usize > SCAN_MAX {
        SCAN_MAX as u32
    } else {
        n
    };
    let s = &mut b.scan;
    s.line_end = 0;
    s.head_end = 0;
    s.has_traceparent = 0;
    s.traceparent_at = 0;
    s.chunked = 0;
    s.content_length = 0;
    s.from = 0;
    s.n = n;
    s.last_start = 0;
    if continues {
        // The request line came earlier: the first line ending here ends a header line.
        s.line_end = 1;
    }
    // A method: 1 to 15 upper-case letters, then a space. Where it ends goes to map memory,
    // and nothing after the loop keeps it in a register.
    let mut m = 0u32;
    while !continues {
        if m >= 16 || m >= n {
            return false;
        }
        let c = at(&b.data, m);
        if c == b' ' {
            if m == 0 {
                return false;
            }
            b.scan.from = m;
            break;
        }
        if !c.is_ascii_uppercase() {
            return false;
        }
        m += 1;
    }
    // Older verifiers (6.1) check the bpf_loop step once per state that reaches the call,
    // and compare states only at some instructions, such as the one after a helper call: this
    // call makes the paths out of the method loop (one per method length) meet in one state
    // first, so the step is checked once, not once per method length.
    unsafe { bpf_get_smp_processor_id() };
    // Line ends, through bpf_loop: the verifier checks the step once, not once per byte.
    let count = unsafe {
        core::ptr::read_volatile(&(*ptr).scan.n) - core::ptr::read_volatile(&(*ptr).scan.from)
    };
    unsafe {
        bpf_loop(
            count,
            line_step::<A> as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let continues = unsafe { core::ptr::read_volatile(&(*ptr).scan.continues) } != 0;
    let b = unsafe { &mut *ptr };
    let s = &mut b.scan;
    if s.line_end == 0 || continues {
        return true;
    }
    // The request line must end in an HTTP/1.x version.
    if s.line_end < 12 {
        s.line_end = 0;
        return true;
    }
    let v = s.line_end - 10;
    if at(&b.data, v) != b'H'
        || at(&b.data, v + 1) != b'T'
        || at(&b.data, v + 4) != b'/'
        || at(&b.data, v + 5) != b'1'
    {
        s.line_end = 0;
        return true;
    }
    true
}

/// A hex digit's value; 16 for anything else (no `Option`: its undefined payload becomes a
/// read of an uninitialised register, which the verifier refuses).
#[inline(always)]
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 16,
    }
}

/// The sampled flag of a trace started here: the agent's root decision, the trace id's last
/// 56 bits against the configured threshold.
#[inline(always)]
fn root_sampled(t: &[u8; 16]) -> u8 {
    let random = u64::from_be_bytes([0, t[9], t[10], t[11], t[12], t[13], t[14], t[15]]);
    (random >= config!(sample_threshold)) as u8
}

/// The flags of a trace continued from a `traceparent`: its own for the parent-based
/// samplers, else with the sampled bit decided on the trace id.
#[inline(always)]
fn header_flags(flags: u8, trace_id: &[u8; 16]) -> u8 {
    if config!(sample_parent_based) != 0 {
        flags
    } else {
        (flags & !1) | root_sampled(trace_id)
    }
}

/// Parse `00-<trace>-<span>-<flags>` at `i`: the trace id and flags into `ids`.
#[inline(always)]
fn parse_traceparent(d: &[u8; SCAN_MAX * 2], i: u32, n: u32, ids: &mut TraceIds) -> bool {
    if i + 55 > n || at(d, i + 2) != b'-' || at(d, i + 35) != b'-' || at(d, i + 52) != b'-' {
        return false;
    }
    let mut k = 0u32;
    let mut any = 0u8;
    while k < 16 {
        let hi = hex_value(at(d, i + 3 + 2 * k));
        let lo = hex_value(at(d, i + 4 + 2 * k));
        if hi > 15 || lo > 15 {
            return false;
        }
        ids.trace_id[k as usize & 15] = hi << 4 | lo;
        any |= hi << 4 | lo;
        k += 1;
    }
    let hi = hex_value(at(d, i + 53));
    let lo = hex_value(at(d, i + 54));
    if hi > 15 || lo > 15 {
        return false;
    }
    ids.flags = hi << 4 | lo;
    any != 0
}

#[inline(always)]
fn random_bytes(dst: &mut [u8]) {
    let mut k = 0;
    while k + 4 <= dst.len() {
        let r = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        dst[k] = r[0];
        dst[k + 1] = r[1];
        dst[k + 2] = r[2];
        dst[k + 3] = r[3];
        k += 4;
    }
    // An all-zero id is invalid.
    dst[0] |= 1;
}

/// After a data event's payload is in the scratch buffer (its `captured_len` set), before the
/// event is sent:
/// - a read that starts a request whose head goes on past the capture window is searched
///   further, in user memory, for its `traceparent` (a `TRACEPARENT` event);
/// - with `--propagate`, a read that starts a request gives the thread a trace context (a
///   `CONTEXT` event), and a write that starts a response ends it.
///
/// Not inlined, and reading everything from maps: the verifier checks it once for all callers.
#[inline(never)]
pub fn after_copy() {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let header = unsafe { &(*buf).header };
    let n = core::cmp::min(header.captured_len, SCAN_MAX as u32);
    let propagate = config!(propagate) != 0;
    let large = header.total_len > header.captured_len as u64;
    if n < 5 {
        return;
    }
    let data = unsafe { (*buf).data.as_ptr() };
    if header.direction != direction::INGRESS {
        if !propagate {
            return;
        }
        let Ok(start) =
            (unsafe { aya_ebpf::helpers::bpf_probe_read_kernel::<[u8; 5]>(data.cast()) })
        else {
            return;
        };
        if &start == b"HTTP/" {
            let _ = THREAD_CTX.remove(bpf_get_current_pid_tgid());
            let _ = HEAD_OPEN.remove(bpf_get_current_pid_tgid());
        }
        return;
    }
    if !propagate && !large {
        return;
    }
    let Some(b) = SCAN_BUF.get_ptr_mut(0) else {
        return;
    };
    let ptr = b;
    let b = unsafe { &mut *ptr };
    if unsafe { bpf_probe_read_kernel_buf(data, &mut b.data[..n as usize & (SCAN_MAX * 2 - 1)]) }
        .is_err()
    {
        return;
    }
    // With --propagate, a read on the connection of a head still open continues that head.
    let continues = propagate
        && matches!(unsafe { HEAD_OPEN.get(bpf_get_current_pid_tgid()) }, Some(&sock) if sock == header.sock);
    unsafe {
        core::ptr::write_volatile(&mut (*ptr).scan.n, n);
        core::ptr::write_volatile(&mut (*ptr).scan.continues, u32::from(continues));
    }
    if !scan_request::<Syscalls>(ptr) {
        return;
    }
    if unsafe { core::ptr::read_volatile(&(*ptr).scan.continues) } != 0 {
        head_continued(ptr);
        return;
    }
    // Read again rather than kept across the scan: values live across it split the
    // verifier's state there (see `scan_request`).
    let header = unsafe { &(*buf).header };
    let (captured, total) = unsafe {
        (
            core::ptr::read_volatile(&header.captured_len),
            core::ptr::read_volatile(&header.total_len),
        )
    };
    let n = core::cmp::min(captured, SCAN_MAX as u32);
    let large = total > captured as u64;
    let propagate = config!(propagate) != 0;
    let b = unsafe { &mut *ptr };
    let far = large
        && b.scan.head_end == 0
        && b.scan.has_traceparent == 0
        && b.far_user != 0
        && far_traceparent(ptr, header);
    if !propagate {
        return;
    }
    let b = unsafe { &mut *ptr };
    let ids = &mut b.ids;
    *ids = TraceIds::default();
    let found = if b.scan.has_traceparent != 0 {
        parse_traceparent(&b.data, b.scan.traceparent_at, n, ids)
    } else if far {
        // The value was copied to the start of `data` by the far search.
        parse_traceparent(&b.data, 0, TRACEPARENT_VALUE_LEN as u32, ids)
    } else {
        false
    };
    if found {
        ids.from_header = 1;
        ids.flags = header_flags(ids.flags, &ids.trace_id);
    } else {
        random_bytes(&mut ids.trace_id);
        ids.flags = root_sampled(&ids.trace_id);
    }
    random_bytes(&mut ids.span_id);
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = THREAD_CTX.insert(pid_tgid, *ids, 0);
    // A head that goes on in later reads may still bring its `traceparent`.
    if !found && b.scan.head_end == 0 {
        let _ = HEAD_OPEN.insert(pid_tgid, header.sock, 0);
    } else {
        let _ = HEAD_OPEN.remove(pid_tgid);
    }
    emit_ids(header, kind::CONTEXT, header.ts_exit_ns, ids);
}

/// More of a head whose start had no `traceparent`: one found here gives the thread's
/// context the caller's trace (its span id, already announced, stays), so the calls the
/// thread makes for this request carry it on.
#[inline(always)]
fn head_continued(ptr: *mut ScanBuf) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let b = unsafe { &mut *ptr };
    if b.scan.has_traceparent != 0 {
        let n = core::cmp::min(b.scan.n, SCAN_MAX as u32);
        let mut ids = TraceIds::default();
        if parse_traceparent(&b.data, b.scan.traceparent_at, n, &mut ids) {
            if let Some(ctx) = THREAD_CTX.get_ptr_mut(pid_tgid) {
                unsafe {
                    (*ctx).trace_id = ids.trace_id;
                    (*ctx).flags = header_flags(ids.flags, &ids.trace_id);
                    (*ctx).from_header = 1;
                }
            }
        }
        let _ = HEAD_OPEN.remove(pid_tgid);
    } else if b.scan.head_end != 0 {
        let _ = HEAD_OPEN.remove(pid_tgid);
    }
}

/// Where exit programs leave the read's user buffer for [`after_copy`].
#[inline(always)]
pub fn set_user_buffer(user: u64) {
    if let Some(b) = SCAN_BUF.get_ptr_mut(0) {
        unsafe { (*b).far_user = user };
    }
}

/// One byte of the far search: byte `k` after `far_from`, read from user memory a chunk at a
/// time. A small state machine matches `\ntraceparent:` (any case) and the empty line that
/// ends the head, across chunk boundaries. Returns 1 to stop.
extern "C" fn far_step(k: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(b) = SCAN_BUF.get_ptr_mut(0) else {
        return 1;
    };
    let b = unsafe { &mut *b };
    let off = b.far_from + k as u32;
    if off >= b.far_to {
        return 1;
    }
    let at = k as usize % FAR_CHUNK;
    if at == 0 {
        let len = core::cmp::min(b.far_to - off, FAR_CHUNK as u32) as usize;
        if unsafe {
            aya_ebpf::helpers::bpf_probe_read_user_buf(
                (b.far_user + off as u64) as *const u8,
                &mut b.chunk[..len & (FAR_CHUNK * 2 - 1)],
            )
        }
        .is_err()
        {
            return 1;
        }
    }
    let c = lower(b.chunk[at & (FAR_CHUNK - 1)]);
    // The head ends at "\r\n\r\n": the last three bytes were "\r\n\r".
    if c == b'\n' && b.far_tail == 0x000d_0a0d {
        return 1;
    }
    b.far_tail = ((b.far_tail << 8) | c as u32) & 0x00ff_ffff;
    let pattern = b"\ntraceparent:";
    let m = b.far_matched as usize;
    if m < pattern.len() && c == pattern[m] {
        b.far_matched += 1;
        if b.far_matched as usize == pattern.len() {
            b.far_found = off + 1;
            return 1;
        }
    } else {
        b.far_matched = (c == b'\n') as u32;
    }
    0
}

/// Search the read's bytes past the capture window (up to [`FAR_SCAN_MAX`]) for the head's
/// `traceparent`; if found, send its value to the agent and leave it at the start of
/// `data`.
#[inline(always)]
fn far_traceparent(ptr: *mut ScanBuf, header: &EventHeader) -> bool {
    let b = unsafe { &mut *ptr };
    // Back a little, so that a name cut by the window's end is seen whole.
    b.far_from = header.captured_len.saturating_sub(FAR_OVERLAP);
    b.far_to = core::cmp::min(header.total_len, FAR_SCAN_MAX as u64) as u32;
    b.far_found = 0;
    b.far_matched = 0;
    b.far_tail = 0;
    let steps = b.far_to.saturating_sub(b.far_from);
    unsafe {
        bpf_loop(
            steps,
            far_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let b = unsafe { &mut *ptr };
    if b.far_found == 0 {
        return false;
    }
    // Skip spaces, then take the value.
    if unsafe {
        aya_ebpf::helpers::bpf_probe_read_user_buf(
            (b.far_user + b.far_found as u64) as *const u8,
            &mut b.data[..TRACEPARENT_VALUE_LEN + 8],
        )
    }
    .is_err()
    {
        return false;
    }
    let mut skip = 0usize;
    while skip < 8 {
        if b.data[skip] != b' ' && b.data[skip] != b'\t' {
            break;
        }
        skip += 1;
    }
    let e = &mut b.far_event;
    e.header = *header;
    e.header.kind = kind::TRACEPARENT;
    e.header.total_len = 0;
    e.header.captured_len = TRACEPARENT_VALUE_LEN as u32;
    let mut k = 0;
    while k < TRACEPARENT_VALUE_LEN {
        let c = b.data[(skip + k) & (SCAN_MAX * 2 - 1)];
        e.value[k] = c;
        b.data[k] = c;
        k += 1;
    }
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (e as *const FarEvent).cast::<u8>(),
            core::mem::size_of::<EventHeader>() + TRACEPARENT_VALUE_LEN,
        )
    };
    match EVENTS.output::<[u8]>(bytes, aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64) {
        Ok(()) => count(tracer_common::counter::EVENTS),
        Err(_) => count(tracer_common::counter::RINGBUF_FULL),
    }
    true
}

/// Send an event with `ids` for the connection of `header` (copied), of kind `k`, stamped `ts`.
#[inline(always)]
pub fn emit_ids(header: &EventHeader, k: u8, ts: u64, ids: &TraceIds) {
    let Some(mut entry) = EVENTS.reserve::<IdsEvent>(0) else {
        count(tracer_common::counter::RINGBUF_FULL);
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).header = *header;
        (*e).header.kind = k;
        (*e).header.ts_exit_ns = ts;
        (*e).header.total_len = 0;
        (*e).header.captured_len = core::mem::size_of::<TraceIds>() as u32;
        (*e).ids = *ids;
    }
    entry.submit(aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64);
    count(tracer_common::counter::EVENTS);
}

#[sock_ops]
pub fn tracer_sock_ops(ctx: SockOpsContext) -> u32 {
    if config!(propagate) != 0 {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        match ctx.op() {
            // Inside the connect() call: the tracepoint marked the socket when the caller is
            // traced.
            BPF_SOCK_OPS_TCP_CONNECT_CB => {
                let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64;
                let remote = u32::from_be(ctx.remote_port()) as u16;
                if unsafe { IN_CONNECT.get(sk) }.is_some()
                    && ports_pass(ctx.local_port() as u16, remote)
                {
                    let _ = CONNECTING.insert(cookie, 1, 0);
                }
            }
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
                if unsafe { CONNECTING.get(cookie) }.is_some() {
                    let _ = CONNECTING.remove(cookie);
                    // A new connection may reuse a closed one's `struct sock`: start afresh.
                    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64;
                    let _ = SENDING.insert(
                        sk,
                        Sending {
                            remaining: 0,
                            lost: 0,
                        },
                        0,
                    );
                    let mut key = sk;
                    let _ = PROPAGATED.update(&mut key, unsafe { &mut *ctx.ops }, 0);
                }
            }
            _ => {}
        }
    }
    1
}

#[sk_msg]
pub fn tracer_sk_msg(ctx: SkMsgContext) -> u32 {
    let _ = inject(&ctx);
    sk_action::SK_PASS
}

/// Stop following a connection for good; the agent then takes it out of the sock hash, so
/// this program no longer runs for its sends.
#[inline(always)]
fn lose(sk: u64) {
    let _ = SENDING.insert(
        sk,
        Sending {
            remaining: 0,
            lost: 1,
        },
        0,
    );
    // An sk_msg program may not change a sock hash: the agent takes the socket out.
    if LOST.push(&sk, 0).is_err() {
        count(tracer_common::counter::LOST_QUEUE_FULL);
    }
}

#[inline(always)]
fn inject(ctx: &SkMsgContext) -> Option<()> {
    let pid_tgid = traced_task()?;
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    let size = ctx.size() as u64;
    let mut st = unsafe { SENDING.get(sk) }.copied().unwrap_or(Sending {
        remaining: 0,
        lost: 0,
    });
    if st.lost != 0 {
        return None;
    }
    if st.remaining > 0 {
        if size <= st.remaining {
            st.remaining -= size;
            let _ = SENDING.insert(sk, st, 0);
        } else {
            // The next request starts inside this send: not followed.
            lose(sk);
        }
        return None;
    }
    // A request should start here.
    let ptr = Sends::buf()?;
    // The lengths below are taken from a copy of the size read back from map memory: `size`
    // stays live to the end, and a length linked to it would make each compare of the scan
    // split the verifier's state (see `scan_request`).
    unsafe { core::ptr::write_volatile(&mut (*ptr).scan.n, ctx.size()) };
    let n = core::cmp::min(
        unsafe { core::ptr::read_volatile(&(*ptr).scan.n) },
        SCAN_MAX as u32,
    );
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, n, 0) } != 0 {
        lose(sk);
        return None;
    }
    let b = unsafe { &mut *ptr };
    let avail = (ctx.data_end() - ctx.data()) as u32;
    // The mask is for older verifiers (6.1), which do not carry the bound of `n` through the
    // comparison with `avail`; read through a volatile so the compiler keeps it.
    let n = core::cmp::min(n, avail);
    let n = unsafe { core::ptr::read_volatile(&n) } & (SCAN_MAX as u32 * 2 - 1);
    if unsafe {
        bpf_probe_read_kernel_buf(
            ctx.data() as *const u8,
            &mut b.data[..n as usize & (SCAN_MAX * 2 - 1)],
        )
    }
    .is_err()
    {
        lose(sk);
        return None;
    }
    unsafe {
        core::ptr::write_volatile(&mut (*ptr).scan.n, n);
        core::ptr::write_volatile(&mut (*ptr).scan.continues, 0);
    }
    if !scan_request::<Sends>(ptr) {
        lose(sk);
        return None;
    }
    let b = unsafe { &mut *ptr };
    if b.scan.line_end == 0 || b.scan.head_end == 0 {
        lose(sk);
        return None;
    }
    let total = b.scan.head_end as u64 + b.scan.content_length;
    if b.scan.chunked != 0 || size > total {
        // Chunked bodies and pipelined requests are not followed past this request.
        lose(sk);
    } else {
        st.remaining = total - size;
        let _ = SENDING.insert(sk, st, 0);
    }
    if b.scan.has_traceparent != 0 {
        // The program propagates context itself.
        return None;
    }
    let ids = &mut b.ids;
    *ids = TraceIds::default();
    match unsafe { THREAD_CTX.get(pid_tgid) } {
        Some(serving) => {
            ids.trace_id = serving.trace_id;
            ids.flags = serving.flags;
        }
        None => {
            random_bytes(&mut ids.trace_id);
            ids.flags = root_sampled(&ids.trace_id);
        }
    }
    random_bytes(&mut ids.span_id);
    write_line(&mut b.line, &b.ids);
    let at = b.scan.line_end;
    if ctx.push_data(at, TRACEPARENT_LINE_LEN as u32, 0).is_err() {
        return None;
    }
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + TRACEPARENT_LINE_LEN as u32, 0) } != 0 {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + TRACEPARENT_LINE_LEN > end {
        return None;
    }
    unsafe {
        core::ptr::copy_nonoverlapping(b.line.as_ptr(), data as *mut u8, TRACEPARENT_LINE_LEN)
    };
    // The agent's view: sorted with the send's own event, just before it.
    let ts = match inflight_get(pid_tgid, false) {
        Some(call) => call.ts_enter,
        None => unsafe { bpf_ktime_get_ns() },
    };
    let header = EventHeader {
        ts_enter_ns: ts,
        ts_exit_ns: ts,
        sock: sk,
        total_len: 0,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: -1,
        captured_len: 0,
        kind: kind::INJECT,
        direction: direction::EGRESS,
        syscall: 0,
        source: tracer_common::source::SOCKET,
        flags: 0,
        _pad: [0; 3],
        tuple: Default::default(),
        comm: process_comm().unwrap_or_default(),
    };
    emit_ids(&header, kind::INJECT, ts, &b.ids);
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `traceparent: 00-<trace>-<span>-<flags>\r\n`
#[inline(always)]
fn write_line(line: &mut [u8; TRACEPARENT_LINE_LEN + 2], ids: &TraceIds) {
    let prefix = b"traceparent: 00-";
    let mut k = 0;
    while k < prefix.len() {
        line[k] = prefix[k];
        k += 1;
    }
    let mut o = prefix.len();
    k = 0;
    while k < 16 {
        line[o] = HEX[(ids.trace_id[k] >> 4) as usize];
        line[o + 1] = HEX[(ids.trace_id[k] & 15) as usize];
        o += 2;
        k += 1;
    }
    line[o] = b'-';
    o += 1;
    k = 0;
    while k < 8 {
        line[o] = HEX[(ids.span_id[k] >> 4) as usize];
        line[o + 1] = HEX[(ids.span_id[k] & 15) as usize];
        o += 2;
        k += 1;
    }
    line[o] = b'-';
    line[o + 1] = HEX[(ids.flags >> 4) as usize];
    line[o + 2] = HEX[(ids.flags & 15) as usize];
    line[o + 3] = b'\r';
    line[o + 4] = b'\n';
}
