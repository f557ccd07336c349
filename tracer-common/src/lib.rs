//! The kernel/user contract: the records the eBPF programs write and the agent reads, the
//! read-only configuration the agent hands the programs, and the names of maps and programs.
//!
//! Every struct is `#[repr(C)]` with explicit padding so both sides agree byte for byte; the
//! sizes are asserted at compile time.
#![no_std]

/// Largest number of payload bytes one event can carry (the `--capture-bytes` ceiling).
pub const MAX_CAPTURE: usize = 8192;
/// Payload bytes captured per syscall unless the user asks for another window.
pub const DEFAULT_CAPTURE: u32 = 2048;
/// iovecs walked per readv/writev/sendmsg/recvmsg; later ones are counted, not copied.
pub const MAX_IOV: u32 = 64;
/// Length of a kernel task name (`comm`), NUL padding included.
pub const COMM_LEN: usize = 16;

/// Names of the maps, shared so that neither side repeats a string literal.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const COMM_FILTER: &str = "COMM_FILTER";
    pub const PORT_FILTER: &str = "PORT_FILTER";
    pub const CGROUP_FILTER: &str = "CGROUP_FILTER";
    pub const CONFIG: &str = "CONFIG";
    pub const CONNS: &str = "CONNS";
    pub const MUTED: &str = "MUTED";
    pub const SEEN_FILES: &str = "SEEN_FILES";
    pub const AFTER_COPY: &str = "AFTER_COPY";
    pub const PROPAGATED: &str = "PROPAGATED";
    pub const LOST: &str = "LOST";
}

/// The program the exit programs tail-call when an event may start a request: it searches the
/// head (the far `traceparent`, `--propagate`'s trace context) and sends the event. It needs
/// `bpf_loop` (Linux 5.17); without it, events go out without those searches.
pub const AFTER_COPY_PROGRAM: &str = "tracer_after_copy";

/// A descriptor of a traced process: the key of the `CONNS` cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// [`ConnInfo::state`]: what the programs do with a descriptor's traffic.
pub mod conn_state {
    /// Not a TCP connection, or filtered out: nothing is captured.
    pub const IGNORED: u32 = 0;
    /// Captured.
    pub const TRACED: u32 = 1;
    /// A connection the agent found not to carry HTTP/1.x (or that switched protocols): its
    /// bytes are no longer captured, but its close still is.
    pub const MUTED: u32 = 2;
}

/// What a descriptor is, resolved by the programs and cached until it is closed.
///
/// A descriptor number can come to name another file without a `close()` the programs see
/// (`dup2`, `close_range`, close-on-exec, a later process with the same pid), so every use of
/// an entry first checks that the descriptor still names `file` and, for a socket, that
/// `socket` still belongs to `file` (the kernel clears that link when it releases a socket, so
/// a new file that reuses the old one's memory fails it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// Address of the kernel `struct sock` (0 when the descriptor is not a TCP socket).
    pub sock: u64,
    /// Address of the `struct file` the descriptor named when it was resolved.
    pub file: u64,
    /// Address of its `struct socket` (0 when it is not a socket).
    pub socket: u64,
    pub tuple: ConnTuple,
    /// One of [`conn_state`].
    pub state: u32,
    /// Non-zero once an event of this entry carried the process's name: the agent keeps a
    /// connection's name from its first event, so later data events leave it out (zeros).
    pub named: u32,
}

/// The programs on TLS libraries' plaintext functions (uprobes): one at each function's entry,
/// and one on every `ret` instruction of those functions, never a return probe.
pub mod tls {
    /// OpenSSL's `SSL_read(ssl, buf, num)` and `SSL_read_ex(ssl, buf, num, &readbytes)`.
    pub const SSL_READ: &str = "tracer_ssl_read";
    pub const SSL_READ_EX: &str = "tracer_ssl_read_ex";
    /// `SSL_write(ssl, buf, num)` and `SSL_write_ex(ssl, buf, num, &written)`.
    pub const SSL_WRITE: &str = "tracer_ssl_write";
    pub const SSL_WRITE_EX: &str = "tracer_ssl_write_ex";
    /// On each `ret` of the OpenSSL functions.
    pub const SSL_RETURN: &str = "tracer_ssl_return";
    /// Go's `crypto/tls.(*Conn).Read` and `Write`, at entry and on each `ret`.
    pub const GO_READ: &str = "tracer_go_tls_read";
    pub const GO_WRITE: &str = "tracer_go_tls_write";
    pub const GO_RETURN: &str = "tracer_go_tls_return";
    /// The programs that see traced processes start programs and map executable files.
    pub const EXEC: (&str, &str) = ("sched", "sched_process_exec");
    pub const EXEC_PROGRAM: &str = "tracer_exec";
    pub const MMAP_PROGRAM: &str = "sys_enter_mmap";
}

/// An executable file the agent has looked at for TLS libraries (the key of `SEEN_FILES`): the
/// programs report only files not yet looked at being mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The kernel's device number: major << 20 | minor.
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Tracepoint category of the syscall programs.
pub const SYSCALLS: &str = "syscalls";

/// The program that sees processes exit, and its tracepoint (category `sched`).
pub const PROCESS_EXIT: (&str, &str) = ("sched", "sched_process_exit");

/// The syscall programs, each named after the tracepoint it attaches to.
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
];

/// Bits of [`Config::filter_flags`]: which filter sets are active. An inactive set matches all.
pub const FILTER_PID: u32 = 1;
pub const FILTER_COMM: u32 = 2;
pub const FILTER_PORT: u32 = 4;
pub const FILTER_CGROUP: u32 = 8;

/// Most cgroups the cgroup filter holds: the chosen ones and their descendants.
pub const MAX_CGROUPS: u32 = 4096;

/// Number of `u64` words in the port bitmap (one bit per port).
pub const PORT_BITMAP_WORDS: u32 = 65536 / 64;
/// Number of `u64` words in the pid bitmap: one bit per possible process id (the kernel's
/// `PID_MAX_LIMIT`, 2^22). An array lookup costs a fraction of a hash lookup, and every
/// syscall of every process pays it when a pid filter is set.
pub const PID_BITMAP_WORDS: u32 = (1 << 22) / 64;

/// Byte offsets of the kernel struct fields the programs walk, computed by the agent from the
/// running kernel's BTF (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_mode: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    /// The following are offsets from the start of `struct sock`.
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    /// `socket.file`: the socket's file, cleared when the socket is released.
    pub socket_file: u32,
    /// The path to the executable's name: task->mm->exe_file->f_path.dentry->d_name.name.
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_f_path_dentry: u32,
    pub dentry_d_name_name: u32,
    /// A file's identity, as `/proc/PID/maps` shows it: inode->i_ino, and the device
    /// inode->i_sb->s_dev.
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub _pad: u32,
}

/// Read-only configuration, written into the programs' `.rodata` before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The agent's own process id: never traced, so its exports do not trace themselves.
    pub self_tgid: u32,
    /// Payload bytes copied per syscall, at most [`MAX_CAPTURE`].
    pub capture_bytes: u32,
    /// [`FILTER_PID`] | [`FILTER_COMM`] | [`FILTER_PORT`] | [`FILTER_CGROUP`].
    pub filter_flags: u32,
    /// Pending ring-buffer bytes above which a writer wakes the reader at once.
    pub wakeup_bytes: u32,
    pub offsets: KernelOffsets,
    /// Non-zero with `--propagate`: server requests get their trace context in the kernel, and
    /// the sk_msg program injects `traceparent` into outgoing requests.
    pub propagate: u32,
    /// Non-zero when TLS libraries may be probed: the data syscalls then look for a TLS call
    /// in progress on their thread, to learn which connection it serves.
    pub tls: u32,
    /// With `--propagate`, a trace started in the kernel is sampled when its id's last 56
    /// bits are at least this (0: every trace; 2^56: none), as the agent's sampler decides.
    pub sample_threshold: u64,
    /// Non-zero for the parent-based samplers: an incoming `traceparent`'s sampled flag
    /// stands; otherwise the trace id decides for it too.
    pub sample_parent_based: u32,
    pub _pad: u32,
}

/// A TCP connection's endpoints, as seen from the traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnTuple {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 in the first four bytes, or IPv6; network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// What an event reports.
pub mod kind {
    /// Bytes moved by a read/write-family syscall.
    pub const DATA: u8 = 1;
    /// A connection the process accepted or connected. The payload is the base name of the
    /// process's executable (read while the process surely exists).
    pub const OPEN: u8 = 2;
    /// The process closed the connection's descriptor.
    pub const CLOSE: u8 = 3;
    /// The process exited (its connections closed without close calls).
    pub const EXIT: u8 = 4;
    /// With `--propagate`: the trace context the kernel gave the request that the next `DATA`
    /// event of the connection starts (a server request). Payload: [`super::TraceIds`]. Sent
    /// just before that event, with the same time.
    pub const CONTEXT: u8 = 5;
    /// With `--propagate`: a `traceparent` the kernel wrote into the request that the next
    /// `DATA` event of the connection starts (a client request). Payload: [`super::TraceIds`].
    /// Its `ts_exit_ns` is the send's entry time, so that it sorts just before that event.
    pub const INJECT: u8 = 6;
    /// A `traceparent` value found in a request head beyond the capture window of the read
    /// that the next `DATA` event of the connection reports. Payload: the value's
    /// [`super::TRACEPARENT_VALUE_LEN`] bytes. Sent just before that event, with the same time.
    pub const TRACEPARENT: u8 = 7;
    /// A traced process started a program or mapped an executable file: the agent looks for
    /// TLS libraries in it. No connection, no payload.
    pub const MAPPED: u8 = 8;
    /// HTTP/2 frames found past the capture window of the syscall that the next `DATA` event
    /// of the connection reports, in the same direction. Payload: pieces, each its offset in
    /// that syscall's bytes (u32, little-endian), its length (u16), and the bytes found
    /// there (a frame's header, and its payload when it carries a header block, settings or
    /// a stream's end). Sent just before that event, with the same time.
    pub const FRAMES: u8 = 9;
}

/// The most bytes of pieces one `FRAMES` event carries.
pub const FRAMES_MAX: usize = 8192;

/// Length of a version-00 `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_VALUE_LEN: usize = 55;
/// Bytes of a read beyond the capture window searched for a request's `traceparent`.
pub const FAR_SCAN_MAX: u32 = 32 * 1024;

/// The W3C trace context of one request, as the kernel chose or read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags.
    pub flags: u8,
    /// For `CONTEXT`: 1 when the trace id came from the request's own `traceparent`.
    pub from_header: u8,
    pub _pad: [u8; 6],
}

/// Bytes of the header line the kernel injects: `traceparent: 00-<32>-<16>-<2>\r\n`.
pub const TRACEPARENT_LINE_LEN: usize = 70;

/// [`EventHeader::direction`]: which way the bytes went, for `DATA`; the role, for `OPEN`.
pub mod direction {
    /// Into the traced process (read family), or an accepted connection.
    pub const INGRESS: u8 = 1;
    /// Out of the traced process (write family), or a connection it opened.
    pub const EGRESS: u8 = 2;
}

/// Which syscall produced an event (diagnostics and recordings).
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const SENDTO: u8 = 5;
    pub const RECVFROM: u8 = 6;
    pub const SENDMSG: u8 = 7;
    pub const RECVMSG: u8 = 8;
    pub const ACCEPT: u8 = 9;
    pub const CONNECT: u8 = 10;
    pub const CLOSE: u8 = 11;
    /// Bytes sent from a file: counted, never copied.
    pub const SENDFILE: u8 = 12;
    /// A TLS library's read or write of plaintext (`SSL_read`, `SSL_write`, their `_ex` forms,
    /// Go's `(*tls.Conn).Read`/`Write`).
    pub const TLS_READ: u8 = 13;
    pub const TLS_WRITE: u8 = 14;
}

/// One ring-buffer record: this header, then `captured_len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Kernel monotonic time at syscall entry (ns).
    pub ts_enter_ns: u64,
    /// Kernel monotonic time at syscall exit (ns).
    pub ts_exit_ns: u64,
    /// Address of the kernel `struct sock`: the connection's identity while it is open.
    pub sock: u64,
    /// Bytes the syscall moved (its return value); may exceed `captured_len`.
    pub total_len: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub captured_len: u32,
    pub kind: u8,
    pub direction: u8,
    pub syscall: u8,
    /// Where the bytes come from ([`source`]).
    pub source: u8,
    /// Bits of [`flag`].
    pub flags: u8,
    pub _pad: [u8; 3],
    pub tuple: ConnTuple,
    /// Name of the process (its main thread), NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// Where an event's bytes come from. One TCP connection can carry both: its ciphertext
/// crosses the socket, its plaintext passes through a TLS library. The agent keeps them apart.
pub mod source {
    /// The socket syscalls: the bytes as they cross the socket.
    pub const SOCKET: u8 = 0;
    /// A TLS library's plaintext of the connection.
    pub const TLS: u8 = 1;
}

/// Bits of [`EventHeader::flags`].
pub mod flag {
    /// TLS plaintext whose connection was inferred, not observed: the TLS library moved no
    /// bytes on a socket during the call (it works on memory buffers, as Node's does), and the
    /// connection is the one the thread read from just before, or that its object was last
    /// seen with. The agent drops such an event when that connection is known to carry
    /// something else than TLS.
    pub const FD_INFERRED: u8 = 1;
}

/// Size of [`EventHeader`] in bytes.
pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Indices into the per-CPU `COUNTERS` array: every loss on the kernel side is counted.
pub mod counter {
    /// Events written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 1;
    /// Payload reads from user memory that failed (event sent without payload).
    pub const READ_USER_FAILED: u32 = 2;
    /// Syscalls not followed because their slot in the in-flight table (one per thread id
    /// modulo its size) was taken by another thread's call.
    pub const INFLIGHT_FULL: u32 = 3;
    /// Descriptors whose socket could not be resolved from the task's file table.
    pub const CONN_RESOLVE_FAILED: u32 = 4;
    /// Connections not cached because the connection table was full.
    pub const CONN_TABLE_FULL: u32 = 5;
    /// Syscalls with more iovecs than are walked (payload cut short, counts still exact).
    pub const IOV_TRUNCATED: u32 = 6;
    /// Connections `--propagate` stopped following that could not be queued for the agent to
    /// take out of the sock hash (they stay there, unchanged, until they close).
    pub const LOST_QUEUE_FULL: u32 = 7;
    /// Executable files that traced processes started or mapped, not yet looked at by the
    /// agent (for TLS libraries): reported to it, not counted as events.
    pub const FILES_REPORTED: u32 = 8;
    /// Syscalls with HTTP/2 frames past their copied bytes that the kernel's walk could not
    /// all copy (its room or its steps ran out): the agent sees a gap there.
    pub const FRAMES_NOT_COPIED: u32 = 9;
    pub const COUNT: u32 = 10;

    /// Whether a counter counts something lost (not events or reports).
    pub const fn is_loss(index: u32) -> bool {
        index != EVENTS && index != FILES_REPORTED
    }

    /// Names for reports, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "events",
        "ringbuf_full",
        "read_user_failed",
        "inflight_full",
        "conn_resolve_failed",
        "conn_table_full",
        "iov_truncated",
        "lost_queue_full",
        "files_reported",
        "frames_not_copied",
    ];
}

const _: () = assert!(core::mem::size_of::<ConnTuple>() == 40);
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 72);
const _: () = assert!(core::mem::size_of::<FdKey>() == 8);
const _: () = assert!(EVENT_HEADER_LEN == 112);
const _: () = assert!(EVENT_HEADER_LEN.is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 112);
const _: () = assert!(core::mem::size_of::<Config>() == 152);
const _: () = assert!(core::mem::size_of::<TraceIds>() == 32);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ConnTuple {}
    unsafe impl aya::Pod for super::TraceIds {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::FdKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::FileKey {}
}
