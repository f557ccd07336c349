//! TLS plaintext: uprobes on the entry and on every `ret` instruction of a TLS library's read
//! and write functions. No return probe is used: a return probe rewrites the caller's return
//! address on the stack (Go moves its stacks and crashes), and from Linux 6.11 returns through
//! a system call that seccomp filters written before it kill (where the kernel does not let
//! it through seccomp). A probe on a `ret` only reads registers.
//!
//! Which connection an OpenSSL call serves is learnt without reading OpenSSL's private structs
//! (their layout changes between releases): the first data syscall the same thread makes on a
//! descriptor during the call names it. A call served from OpenSSL's own buffer makes no
//! syscall; it takes the descriptor its `SSL *` was last seen with. Go keeps the descriptor
//! in structs whose layout has been stable for years: see [`go_enter`].

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{map, tracepoint, uprobe},
    maps::LruHashMap,
    programs::{ProbeContext, TracePointContext},
};
use tracer_common::{FileKey, direction, kind, source, syscall};

use crate::{
    config, conn, emit, filter,
    maps::{Inflight, MODE_PLAIN},
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
    /// The descriptor of the first data syscall made during the call, or -1.
    pub fd: i32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// OpenSSL calls in progress, by thread.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

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

/// The descriptor each OpenSSL connection (`SSL *`) was last seen with.
#[map]
static TLS_FDS: LruHashMap<ObjectKey, i64> = LruHashMap::with_max_entries(65536, 0);

/// A data syscall of a traced thread on `fd`: if the thread is inside a TLS call that has not
/// yet named its descriptor, this one is it.
#[inline(always)]
pub fn syscall_inside(pid_tgid: u64, fd: i32) {
    if let Some(call) = TLS_CALLS.get_ptr_mut(pid_tgid) {
        unsafe {
            if (*call).fd < 0 {
                (*call).fd = fd;
            }
        }
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
    TLS_CALLS.insert(pid_tgid, call, 0).ok()
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
    let call = *unsafe { TLS_CALLS.get(pid_tgid) }?;
    if call.sp != r.rsp {
        return None;
    }
    let _ = TLS_CALLS.remove(pid_tgid);
    let ret = r.rax as i32;
    let moved = if call.count_at != 0 {
        if ret != 1 {
            return None;
        }
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }.ok()?
    } else {
        if ret <= 0 {
            return None;
        }
        ret as u64
    };
    let key = ObjectKey::of(pid_tgid, call.object);
    let fd = if call.fd >= 0 {
        let _ = TLS_FDS.insert(key, call.fd as i64, 0);
        call.fd
    } else {
        *unsafe { TLS_FDS.get(key) }? as i32
    };
    emit_plaintext(pid_tgid, &call, fd, moved)
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
    emit_plaintext(pid_tgid, &call, call.fd, n as u64)
}

/// Send `moved` bytes of plaintext of a returned call as an event of the connection `fd`.
#[inline(always)]
fn emit_plaintext(pid_tgid: u64, call: &TlsCall, fd: i32, moved: u64) -> Option<()> {
    let tgid = (pid_tgid >> 32) as u32;
    // A TLS connection's own bytes are muted once recognised; its plaintext is not.
    let conn = conn::lookup_open(tgid, fd)?;
    let syscall = if call.direction == direction::INGRESS {
        syscall::TLS_READ
    } else {
        syscall::TLS_WRITE
    };
    let buf = emit::start(kind::DATA, call.direction, syscall, fd, &conn)?;
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
    let prot: u64 = unsafe { ctx.read_at(16 + 2 * 8) }.unwrap_or(0);
    let fd: i64 = unsafe { ctx.read_at(16 + 4 * 8) }.unwrap_or(-1);
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
