//! TLS plaintext: uprobes on the entry and on every `ret` instruction of a TLS library's read
//! and write functions. No return probe is used: a return probe rewrites the caller's return
//! address on the stack (Go moves its stacks and crashes), and from Linux 6.11 returns through
//! a system call that seccomp filters written before it kill (where the kernel does not let
//! it through seccomp). A probe on a `ret` only reads registers.
//!
//! Which connection an OpenSSL call serves is learnt without reading OpenSSL's private structs
//! (their layout changes between releases):
//! - the first data syscall the same thread makes on a traced TCP socket during the call names
//!   it (OpenSSL on a socket, as in curl, nginx, Python): exact;
//! - else the connection its `SSL *` was last seen with, while that descriptor still names the
//!   same socket (a call served from OpenSSL's own buffer);
//! - else, for OpenSSL on memory buffers (Node.js: its event loop reads the ciphertext, hands it
//!   to OpenSSL and writes what OpenSSL produced, all outside the TLS call), the socket the
//!   thread read from since its previous TLS call returned. That is inferred, so the event says
//!   so ([`tracer_common::flag::FD_INFERRED`]), it is kept for the `SSL *` only from a call that
//!   moved plaintext, and it replaces an inferred connection only when the agent already knows
//!   the new one not to carry plaintext HTTP (muted) and the old one not.
//!
//! Go keeps the descriptor in structs whose layout has been stable for years: see [`go_enter`].

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{map, tracepoint, uprobe},
    maps::LruHashMap,
    programs::{ProbeContext, TracePointContext},
};
use tracer_common::{FileKey, conn_state, direction, flag, kind, source, syscall};

use crate::{
    config, conn, emit, filter,
    maps::{ConnInfo, Inflight, MODE_PLAIN},
};

/// A TLS call between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    pub ts_enter: u64,
    /// The connection object: OpenSSL's `SSL *`, Go's `*tls.Conn`.
    pub object: u64,
    pub buf: u64,
    /// `_ex` forms: where the function stores the byte count (its return value is 1 or 0).
    pub count_at: u64,
    /// The stack pointer at entry (pointing at the return address): a `ret` with the same
    /// stack pointer returns from this call, not from a function it called.
    pub sp: u64,
    /// The descriptor of the first data syscall made during the call on a traced TCP socket,
    /// or -1.
    pub fd: i32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// A thread that has called OpenSSL: its call in progress, and the socket it last read from
/// outside a TLS call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsThread {
    pub call: TlsCall,
    /// The `struct file` of the descriptor `call.fd` named at the syscall.
    pub call_file: u64,
    /// The socket read from since the thread's last TLS call returned: descriptor (-1 when
    /// none) and file.
    pub read_fd: i32,
    /// Whether `call` is in progress.
    pub active: u8,
    pub _pad: [u8; 3],
    pub read_file: u64,
}

/// Threads that have called OpenSSL (entries stay after a call: they carry `read_fd`).
#[map]
static TLS_THREADS: LruHashMap<u64, TlsThread> = LruHashMap::with_max_entries(16384, 0);

/// Go calls in progress, by goroutine: a goroutine may leave its thread while it waits.
#[map]
static GO_CALLS: LruHashMap<ObjectKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ObjectKey {
    pub tgid: u32,
    pub _pad: u32,
    pub object: u64,
}

impl ObjectKey {
    /// `object` (a connection object, or a goroutine) of the current thread's process.
    #[inline(always)]
    fn of(pid_tgid: u64, object: u64) -> ObjectKey {
        ObjectKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            object,
        }
    }
}

/// The connection an OpenSSL object (`SSL *`) was last seen with.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SeenWith {
    /// The socket's `struct file`: the descriptor counts only while it still names it.
    pub file: u64,
    pub fd: i32,
    /// Learnt from a syscall inside a call (1), or inferred (0).
    pub exact: u8,
    pub _pad: [u8; 3],
}

#[map]
static TLS_FDS: LruHashMap<ObjectKey, SeenWith> = LruHashMap::with_max_entries(65536, 0);

/// A data syscall of a traced thread on `fd`, a traced or muted TCP socket: inside a TLS call
/// that has not yet named its descriptor, this one is it; outside one, a read is remembered.
#[inline(always)]
pub fn data_syscall(pid_tgid: u64, fd: i32, info: &ConnInfo, dir: u8) {
    let Some(t) = TLS_THREADS.get_ptr_mut(pid_tgid) else {
        return;
    };
    let t = unsafe { &mut *t };
    if t.active != 0 {
        if t.call.fd < 0 {
            t.call.fd = fd;
            t.call_file = info.file;
        }
    } else if dir == direction::INGRESS {
        t.read_fd = fd;
        t.read_file = info.file;
    }
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    unsafe { &*ctx.regs }
}

/// Entry of an OpenSSL function: `(ssl, buf, num[, &count])`.
#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, dir: u8, ex: bool) -> Option<()> {
    let pid_tgid = filter::traced_task()?;
    let r = regs(ctx);
    let call = TlsCall {
        ts_enter: unsafe { bpf_ktime_get_ns() },
        object: r.rdi,
        buf: r.rsi,
        count_at: if ex { r.rcx } else { 0 },
        sp: r.rsp,
        fd: -1,
        direction: dir,
        _pad: [0; 3],
    };
    match TLS_THREADS.get_ptr_mut(pid_tgid) {
        Some(t) => unsafe {
            (*t).call = call;
            (*t).active = 1;
        },
        None => {
            let t = TlsThread {
                call,
                call_file: 0,
                read_fd: -1,
                active: 1,
                _pad: [0; 3],
                read_file: 0,
            };
            TLS_THREADS.insert(pid_tgid, t, 0).ok()?;
        }
    }
    Some(())
}

#[uprobe]
pub fn tracer_ssl_read(ctx: ProbeContext) -> u32 {
    let _ = ssl_enter(&ctx, direction::INGRESS, false);
    0
}

#[uprobe]
pub fn tracer_ssl_read_ex(ctx: ProbeContext) -> u32 {
    let _ = ssl_enter(&ctx, direction::INGRESS, true);
    0
}

#[uprobe]
pub fn tracer_ssl_write(ctx: ProbeContext) -> u32 {
    let _ = ssl_enter(&ctx, direction::EGRESS, false);
    0
}

#[uprobe]
pub fn tracer_ssl_write_ex(ctx: ProbeContext) -> u32 {
    let _ = ssl_enter(&ctx, direction::EGRESS, true);
    0
}

/// A `ret` of an OpenSSL function: the call returns if the stack pointer is the entry's.
#[uprobe]
pub fn tracer_ssl_return(ctx: ProbeContext) -> u32 {
    let _ = ssl_return(&ctx);
    0
}

#[inline(always)]
fn ssl_return(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !filter::maybe_traced(pid_tgid) {
        return None;
    }
    let r = regs(ctx);
    let t = TLS_THREADS.get_ptr_mut(pid_tgid)?;
    let t = unsafe { &mut *t };
    if t.active == 0 || t.call.sp != r.rsp {
        return None;
    }
    t.active = 0;
    let call = &t.call;
    // A read counts for the next call only if made after this one.
    let (read_fd, read_file) = (t.read_fd, t.read_file);
    t.read_fd = -1;
    let tgid = (pid_tgid >> 32) as u32;
    let key = ObjectKey::of(pid_tgid, call.object);
    if call.fd >= 0 {
        // Seen: kept whether or not this call moved bytes (a handshake's WANT_READ says it
        // as well).
        let seen = SeenWith {
            file: t.call_file,
            fd: call.fd,
            exact: 1,
            _pad: [0; 3],
        };
        let _ = TLS_FDS.insert(key, seen, 0);
    }
    let moved = moved(r, call)?;
    let (fd, file, inferred) = if call.fd >= 0 {
        (call.fd, t.call_file, false)
    } else {
        let known = unsafe { TLS_FDS.get(key) }.copied();
        let known_state = known.and_then(|s| conn::cached_state(tgid, s.fd, s.file));
        match (known, known_state) {
            (Some(s), Some(_)) if s.exact != 0 => (s.fd, s.file, false),
            _ => {
                let read_state = conn::cached_state(tgid, read_fd, read_file);
                let (fd, file) = match (known, known_state, read_state) {
                    (Some(_), Some(kept), Some(read))
                        if read == conn_state::MUTED && kept != conn_state::MUTED =>
                    {
                        (read_fd, read_file)
                    }
                    (Some(s), Some(_), _) => (s.fd, s.file),
                    (_, _, Some(_)) => (read_fd, read_file),
                    _ => return None,
                };
                let seen = SeenWith {
                    file,
                    fd,
                    exact: 0,
                    _pad: [0; 3],
                };
                let _ = TLS_FDS.insert(key, seen, 0);
                (fd, file, true)
            }
        }
    };
    let conn = conn::lookup_open(tgid, fd).filter(|c| c.file == file)?;
    emit_plaintext(call, fd, &conn, inferred, moved)
}

/// The plaintext bytes a returning OpenSSL call moved, if it succeeded.
#[inline(always)]
fn moved(r: &aya_ebpf::bindings::pt_regs, call: &TlsCall) -> Option<u64> {
    let ret = r.rax as i32;
    if call.count_at != 0 {
        if ret != 1 {
            return None;
        }
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }.ok()
    } else if ret <= 0 {
        None
    } else {
        Some(ret as u64)
    }
}

/// Entry of Go's `(*Conn).Read(b []byte)` / `Write`: register ABI, receiver in RAX, the
/// slice's pointer in RBX; the goroutine in R14.
///
/// A goroutine may wait on another thread than it started on, and Go reads ahead (the first
/// request of a connection often arrives with the handshake's last read), so the descriptor
/// is not learnt from syscalls but read where Go keeps it: the connection's `net.Conn` (the
/// struct's first field, an interface) points to a `*net.TCPConn`, whose first word is its
/// `*netFD`, whose `poll.FD` starts with a 16-byte mutex and then `Sysfd`. These layouts have
/// not changed since Go 1.9; what is read is used only if it names a TCP socket of the
/// process.
#[inline(always)]
fn go_enter(ctx: &ProbeContext, dir: u8) -> Option<()> {
    let pid_tgid = filter::traced_task()?;
    let r = regs(ctx);
    let key = ObjectKey::of(pid_tgid, r.r14);
    let tcp_conn: u64 = unsafe { bpf_probe_read_user((r.rax + 8) as *const u64) }.ok()?;
    let net_fd: u64 = unsafe { bpf_probe_read_user(tcp_conn as *const u64) }.ok()?;
    let sysfd: i64 = unsafe { bpf_probe_read_user((net_fd + 16) as *const i64) }.ok()?;
    if !(0..=i32::MAX as i64).contains(&sysfd) {
        return None;
    }
    let call = TlsCall {
        ts_enter: unsafe { bpf_ktime_get_ns() },
        object: r.rax,
        buf: r.rbx,
        count_at: 0,
        sp: r.rsp,
        fd: sysfd as i32,
        direction: dir,
        _pad: [0; 3],
    };
    GO_CALLS.insert(key, call, 0).ok()
}

#[uprobe]
pub fn tracer_go_tls_read(ctx: ProbeContext) -> u32 {
    let _ = go_enter(&ctx, direction::INGRESS);
    0
}

#[uprobe]
pub fn tracer_go_tls_write(ctx: ProbeContext) -> u32 {
    let _ = go_enter(&ctx, direction::EGRESS);
    0
}

/// A `ret` of Go's functions: `n` in RAX. Matched by goroutine, not stack pointer: Go moves
/// a goroutine's stack when it grows, and these functions do not call themselves.
#[uprobe]
pub fn tracer_go_tls_return(ctx: ProbeContext) -> u32 {
    let _ = go_return(&ctx);
    0
}

#[inline(always)]
fn go_return(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !filter::maybe_traced(pid_tgid) {
        return None;
    }
    let r = regs(ctx);
    let key = ObjectKey::of(pid_tgid, r.r14);
    let call = *unsafe { GO_CALLS.get(key) }?;
    let _ = GO_CALLS.remove(key);
    let n = r.rax as i64;
    if n <= 0 {
        return None;
    }
    // A TLS connection's own bytes are muted once recognised; its plaintext is not.
    let conn = conn::lookup_open((pid_tgid >> 32) as u32, call.fd)?;
    emit_plaintext(&call, call.fd, &conn, false, n as u64)
}

/// Send `moved` bytes of plaintext of a returned call as an event of the connection `conn`
/// (descriptor `fd`).
#[inline(always)]
fn emit_plaintext(
    call: &TlsCall,
    fd: i32,
    conn: &ConnInfo,
    inferred: bool,
    moved: u64,
) -> Option<()> {
    let syscall = if call.direction == direction::INGRESS {
        syscall::TLS_READ
    } else {
        syscall::TLS_WRITE
    };
    let buf = emit::start(kind::DATA, call.direction, syscall, fd, conn)?;
    let copy = Inflight {
        ts_enter: call.ts_enter,
        file: conn.file,
        buf: call.buf,
        iovcnt: 0,
        fd,
        mode: MODE_PLAIN,
        syscall,
        _pad: [0; 2],
    };
    unsafe {
        (*buf).header.ts_enter_ns = call.ts_enter;
        (*buf).header.total_len = moved;
        (*buf).header.source = source::TLS;
        (*buf).header.flags = if inferred { flag::FD_INFERRED } else { 0 };
    }
    let copied = emit::copy_payload(buf, &copy, moved);
    emit::submit(buf, copied);
    Some(())
}

/// Executable files the agent has looked at: mapping them again is not reported. Filled by
/// the agent.
#[map(name = "SEEN_FILES")]
static SEEN_FILES: LruHashMap<FileKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// A traced process started a program: the agent looks for TLS libraries in it.
#[tracepoint]
pub fn tracer_exec(_ctx: TracePointContext) -> u32 {
    let _ = exec();
    0
}

#[inline(always)]
fn exec() -> Option<()> {
    filter::traced_task()?;
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm: *const u8 = kernel(task, config!(offsets.task_mm))?;
    let exe: *const u8 = kernel(mm, config!(offsets.mm_exe_file))?;
    mapped(exe)
}

/// `mmap(addr, len, prot, flags, fd, off)` of a file, executable: a library being loaded.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    const PROT_EXEC: u64 = 4;
    // mmap(addr, len, prot, flags, fd, off)
    let prot: u64 = crate::arg(&ctx, 2);
    let fd: i64 = crate::arg(&ctx, 4);
    if prot & PROT_EXEC != 0 && (0..=i32::MAX as i64).contains(&fd) {
        let _ = mmap(fd as u32);
    }
    0
}

#[inline(always)]
fn mmap(fd: u32) -> Option<()> {
    filter::traced_task()?;
    mapped(conn::fd_file(fd).ok()?)
}

#[inline(always)]
fn kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast()) }.ok()
}

/// Report `file` being mapped by a traced process, unless the agent has looked at it.
#[inline(always)]
fn mapped(file: *const u8) -> Option<()> {
    let inode: *const u8 = kernel(file, config!(offsets.file_f_inode))?;
    let sb: *const u8 = kernel(inode, config!(offsets.inode_i_sb))?;
    let key = FileKey {
        dev: kernel(sb, config!(offsets.sb_s_dev))?,
        _pad: 0,
        ino: kernel(inode, config!(offsets.inode_i_ino))?,
    };
    if unsafe { SEEN_FILES.get(&key) }.is_some() {
        return None;
    }
    let none = tracer_common::ConnInfo::default();
    let buf = emit::start(kind::MAPPED, 0, 0, -1, &none)?;
    // The agent attaches to new libraries at once: the process does not wait for it.
    emit::submit_now(buf, 0, tracer_common::counter::FILES_REPORTED);
    Some(())
}
