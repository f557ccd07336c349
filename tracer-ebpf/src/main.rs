//! tracer's eBPF programs: syscall tracepoints that follow TCP connections of traced processes
//! and copy the first bytes of what they send and receive into a ring buffer.
//!
//! Entry programs check the filters, resolve the descriptor (cached) and remember the call;
//! exit programs read the result and emit the event. Only tracepoints are used: they work on
//! kernels without kprobes or fentry.
#![no_std]
#![no_main]

mod check;
mod conn;
mod emit;
mod filter;
mod frames;
mod maps;
mod propagate;
mod tls;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{conn_state, direction, kind, syscall};

use crate::maps::{
    Inflight, MODE_IOV, MODE_NONE, MODE_PLAIN, inflight_forget, inflight_get, inflight_put,
};

/// Offsets in the syscall tracepoints' records: arguments after the 16-byte common header and
/// syscall number; the return value in the same place on exit.
const ARG0: usize = 16;
const RET: usize = 16;
const EINPROGRESS: i64 = 115;
const MSG_PEEK: u64 = 0x2;
/// Room for an executable's base name (a file name is at most 255 bytes).
const EXE_NAME_MAX: u32 = 256;

/// Argument `n` of the syscall, from the tracepoint's record.
#[inline(always)]
fn arg<T: Copy>(ctx: &TracePointContext, n: usize) -> T {
    field(ctx, ARG0 + n * 8)
}

/// A field of the tracepoint's record, loaded in place: a tracepoint program may read its
/// context directly, at a constant, aligned offset, with no helper call (`read_at` calls
/// `bpf_probe_read_kernel` for each field, which costs more than the load).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Remember a data syscall of a traced connection until its exit.
#[inline(always)]
fn enter_data(ctx: &TracePointContext, syscall: u8, mode: u8, dir: u8) -> Result<u32, u32> {
    let pid_tgid = filter::traced_task().ok_or(0u32)?;
    let fd: i64 = arg(ctx, 0);
    let fd = fd as i32;
    // Traced or muted: a TLS connection's own bytes are muted, its syscalls still name it.
    let info = conn::lookup_open((pid_tgid >> 32) as u32, fd).ok_or(0u32)?;
    if config!(tls) != 0 {
        tls::data_syscall(pid_tgid, fd, &info, dir);
    }
    if info.state != conn_state::TRACED {
        return Ok(0);
    }
    // A peek leaves the bytes queued for the read that takes them: recorded twice, they would
    // shift everything after them (curl peeks one byte to check a connection it reuses).
    let flags = match syscall {
        syscall::RECVFROM => arg::<u64>(ctx, 3),
        syscall::RECVMSG => arg::<u64>(ctx, 2),
        _ => 0,
    };
    if flags & MSG_PEEK != 0 {
        return Ok(0);
    }
    let file = info.file;
    let buf: u64 = arg(ctx, 1);
    let (buf, iovcnt) = match mode {
        MODE_PLAIN | MODE_NONE => (buf, 0),
        MODE_IOV => (buf, arg::<u64>(ctx, 2)),
        // sendmsg/recvmsg: the iovecs hang off a user `struct msghdr`.
        _ => {
            let iov: u64 =
                unsafe { bpf_probe_read_user((buf + 16) as *const u64) }.map_err(|_| 0u32)?;
            let cnt: u64 =
                unsafe { bpf_probe_read_user((buf + 24) as *const u64) }.map_err(|_| 0u32)?;
            (iov, cnt)
        }
    };
    let call = Inflight {
        ts_enter: unsafe { bpf_ktime_get_ns() },
        file,
        buf,
        iovcnt,
        fd,
        mode: match mode {
            MODE_PLAIN | MODE_NONE => mode,
            _ => MODE_IOV,
        },
        syscall,
        _pad: [0; 2],
    };
    inflight_put(pid_tgid, call);
    Ok(0)
}

/// Emit the event of a data syscall (`syscall`) that moved bytes.
#[inline(always)]
fn exit_data(ctx: &TracePointContext, syscall: u8, dir: u8) -> Result<u32, u32> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if !filter::maybe_traced(pid_tgid) {
        return Ok(0);
    }
    let call = inflight_get(pid_tgid, true).ok_or(0u32)?;
    // The entry must be this call's: one left by a call whose return was not seen (its exit
    // program was not attached yet) names another buffer and another length.
    if call.syscall != syscall {
        return Ok(0);
    }
    let ret: i64 = field(ctx, RET);
    if ret <= 0 {
        return Ok(0);
    }
    // The descriptor must still name the socket's file it named at entry: the bytes of any
    // other file are never copied.
    if conn::fd_file(call.fd as u32) != Ok(call.file as *const u8) {
        return Ok(0);
    }
    let conn = conn::cached((pid_tgid >> 32) as u32, call.fd, call.file).ok_or(0u32)?;
    // The process's name with the connection's first event only: the agent keeps it.
    let named = conn.named != 0;
    conn.named = 1;
    let buf =
        emit::start_named(kind::DATA, dir, call.syscall, call.fd, conn, !named).ok_or(0u32)?;
    unsafe {
        (*buf).header.ts_enter_ns = call.ts_enter;
        (*buf).header.total_len = ret as u64;
    }
    let copied = emit::copy_payload(buf, &call, ret as u64);
    unsafe { (*buf).header.captured_len = copied as u32 };
    if config!(propagate) != 0 || ret as u64 > copied {
        propagate::set_user_buffer(if call.mode == MODE_PLAIN { call.buf } else { 0 });
        frames::set_source(call.buf, call.mode, call.iovcnt);
        // The searches of a request's head, and of HTTP/2 frames past the copied bytes, run
        // in a program of their own, which sends the event: they need `bpf_loop` (Linux
        // 5.17) and a stack of their own. Where that
        // program is not loaded the tail call returns, and the event goes out as it is.
        unsafe { maps::AFTER_COPY.tail_call(ctx, 0) };
    }
    emit::submit(buf, copied);
    Ok(0)
}

/// The tail of an exit program whose event may start a request or hold frames past its
/// copied bytes: the walk of [`frames::beyond_window`] and the searches of
/// [`propagate::after_copy`], then the event (left in the scratch buffer) is sent.
#[tracepoint]
pub fn tracer_after_copy(_ctx: TracePointContext) -> u32 {
    frames::beyond_window();
    propagate::after_copy();
    if let Some(buf) = maps::SCRATCH.get_ptr_mut(0) {
        let copied = unsafe { (*buf).header.captured_len } as u64;
        emit::submit(buf, copied);
    }
    0
}

/// A connection was accepted or connected: resolve it afresh and announce it.
#[inline(always)]
fn opened(fd: i32, role: u8, syscall: u8) -> Result<u32, u32> {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let info = conn::resolve(
        maps::FdKey {
            tgid,
            fd: fd as u32,
        },
        true,
    )
    .ok_or(0u32)?;
    if info.state != conn_state::TRACED {
        return Ok(0);
    }
    let buf = emit::start(kind::OPEN, role, syscall, fd, &info).ok_or(0u32)?;
    // The executable's name, with the process's first connection and again after an exec
    // (the agent keeps it; an empty one says "as before").
    let mut name_len = 0;
    if let Some(exe) = filter::exe_file()
        && let Some(sent) = maps::PROCS.get_ptr_mut(&tgid)
        && unsafe { *sent } != exe as u64
    {
        name_len = filter::exe_name(exe, unsafe { (*buf).data.as_mut_ptr() }, EXE_NAME_MAX);
        if name_len > 0 {
            unsafe { *sent = exe as u64 };
        }
    }
    emit::submit(buf, name_len as u64);
    Ok(0)
}

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $syscall:expr, $mode:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            match enter_data(&ctx, $syscall, $mode, $dir) {
                Ok(v) | Err(v) => v,
            }
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            match exit_data(&ctx, $syscall, $dir) {
                Ok(v) | Err(v) => v,
            }
        }
    };
}

/// `struct msghdr` indirection, resolved on entry.
const MODE_MSG: u8 = 2;

data_syscall!(
    sys_enter_read,
    sys_exit_read,
    syscall::READ,
    MODE_PLAIN,
    direction::INGRESS
);
data_syscall!(
    sys_enter_write,
    sys_exit_write,
    syscall::WRITE,
    MODE_PLAIN,
    direction::EGRESS
);
data_syscall!(
    sys_enter_readv,
    sys_exit_readv,
    syscall::READV,
    MODE_IOV,
    direction::INGRESS
);
data_syscall!(
    sys_enter_writev,
    sys_exit_writev,
    syscall::WRITEV,
    MODE_IOV,
    direction::EGRESS
);
data_syscall!(
    sys_enter_sendto,
    sys_exit_sendto,
    syscall::SENDTO,
    MODE_PLAIN,
    direction::EGRESS
);
data_syscall!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    syscall::RECVFROM,
    MODE_PLAIN,
    direction::INGRESS
);
data_syscall!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    syscall::SENDMSG,
    MODE_MSG,
    direction::EGRESS
);
data_syscall!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    syscall::RECVMSG,
    MODE_MSG,
    direction::INGRESS
);
// sendfile(out_fd, in_fd, offset, count): the socket is the first argument, as for write.
data_syscall!(
    sys_enter_sendfile64,
    sys_exit_sendfile64,
    syscall::SENDFILE,
    MODE_NONE,
    direction::EGRESS
);

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    filter::traced_task().ok_or(0u32)?;
    let ret: i64 = field(ctx, RET);
    if ret < 0 {
        return Ok(0);
    }
    opened(ret as i32, direction::INGRESS, syscall::ACCEPT)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    match accept_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    match accept_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn connect_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = filter::traced_task().ok_or(0u32)?;
    let fd: i64 = arg(ctx, 0);
    let call = Inflight {
        ts_enter: 0,
        file: 0,
        // The socket marked for `--propagate`'s sock_ops program, until the call returns.
        buf: propagate::connect_called(fd as i32),
        iovcnt: 0,
        fd: fd as i32,
        mode: MODE_PLAIN,
        syscall: syscall::CONNECT,
        _pad: [0; 2],
    };
    inflight_put(pid_tgid, call);
    Ok(0)
}

#[inline(always)]
fn connect_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let call = inflight_get(pid_tgid, true).ok_or(0u32)?;
    if call.syscall != syscall::CONNECT {
        return Ok(0);
    }
    propagate::connect_returned(call.buf);
    let ret: i64 = field(ctx, RET);
    if ret != 0 && ret != -EINPROGRESS {
        return Ok(0);
    }
    opened(call.fd, direction::EGRESS, syscall::CONNECT)
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match connect_enter(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    match connect_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn close_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // Every close on the machine comes here. A process outside the pid filter (fixed at load)
    // never had a descriptor cached: the array check spares it the hash lookup.
    if !filter::maybe_traced(pid_tgid) {
        return Ok(0);
    }
    let fd: i64 = arg(ctx, 0);
    let info = conn::forget((pid_tgid >> 32) as u32, fd as i32).ok_or(0u32)?;
    // Muted connections still report their close, so the agent can forget them.
    if info.state == conn_state::IGNORED {
        return Ok(0);
    }
    let buf = emit::start(kind::CLOSE, 0, syscall::CLOSE, fd as i32, &info).ok_or(0u32)?;
    emit::submit(buf, 0);
    Ok(0)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    match close_enter(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// A thread exited; when it was a traced process's last, the kernel closes its sockets
/// without close calls.
#[inline(always)]
fn process_exit() -> Result<u32, u32> {
    // A call the thread was in when it exited has no exit to remove its record.
    inflight_forget(aya_ebpf::helpers::bpf_get_current_pid_tgid());
    let pid_tgid = filter::traced_task().ok_or(0u32)?;
    // Once per process: when its main thread exits, and only if it had traced connections.
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid || unsafe { maps::PROCS.get(tgid) }.is_none() {
        return Ok(0);
    }
    let _ = maps::PROCS.remove(tgid);
    let none = maps::ConnInfo {
        sock: 0,
        file: 0,
        socket: 0,
        tuple: tracer_common::ConnTuple::default(),
        state: conn_state::IGNORED,
        named: 0,
    };
    let buf = emit::start(kind::EXIT, 0, 0, -1, &none).ok_or(0u32)?;
    emit::submit(buf, 0);
    Ok(0)
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    match process_exit() {
        Ok(v) | Err(v) => v,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
