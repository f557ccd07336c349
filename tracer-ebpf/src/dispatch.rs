//! The two programs at the raw `sys_enter` and `sys_exit` tracepoints, and what the syscall
//! programs they tail-call read: the arguments and the return value.
//!
//! A raw tracepoint program runs for every syscall, but costs less per traced call than the
//! per-syscall tracepoints, whose dispatch builds a record of the arguments before any program
//! runs. Each dispatcher does one thing for a syscall that is not ours: a tail call into an
//! empty slot, which returns.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::ProgramArray,
    programs::RawTracePointContext,
};
use tracer_common::DISPATCH_SLOTS;

use crate::config;

/// The syscall programs at entry, by syscall number; filled by the agent.
#[map(name = "SYS_ENTER")]
static SYS_ENTER: ProgramArray = ProgramArray::with_max_entries(DISPATCH_SLOTS, 0);

/// The syscall programs at return, by syscall number; filled by the agent.
#[map(name = "SYS_EXIT")]
static SYS_EXIT: ProgramArray = ProgramArray::with_max_entries(DISPATCH_SLOTS, 0);

/// `sys_enter(regs, id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn tracer_sys_enter(ctx: RawTracePointContext) -> u32 {
    let id: u64 = ctx.arg(1);
    // -1 (no syscall) and x32's numbers fall outside the table.
    if id < DISPATCH_SLOTS as u64 {
        unsafe {
            let _ = SYS_ENTER.tail_call(&ctx, id as u32);
        }
    }
    0
}

/// `sys_exit(regs, ret)`: the number is the one the kernel's own tracepoint reports,
/// `regs->orig_ax`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn tracer_sys_exit(ctx: RawTracePointContext) -> u32 {
    let regs: *const u8 = ctx.arg(0);
    let id = unsafe {
        bpf_probe_read_kernel::<u64>(regs.add(core::mem::offset_of!(pt_regs, orig_rax)).cast())
    };
    if let Ok(id) = id
        && id < DISPATCH_SLOTS as u64
    {
        unsafe {
            let _ = SYS_EXIT.tail_call(&ctx, id as u32);
        }
    }
    0
}

/// The first three arguments of the syscall being entered.
#[inline(always)]
pub fn args(ctx: &RawTracePointContext) -> Result<[u64; 3], u32> {
    // x86-64 passes them in rdi, rsi and rdx, saved next to each other (in reverse order):
    // one read.
    #[repr(C)]
    struct Saved {
        rdx: u64,
        rsi: u64,
        rdi: u64,
    }
    const _: () = assert!(
        core::mem::offset_of!(pt_regs, rsi) == core::mem::offset_of!(pt_regs, rdx) + 8
            && core::mem::offset_of!(pt_regs, rdi) == core::mem::offset_of!(pt_regs, rdx) + 16
    );
    let regs: *const u8 = ctx.arg(0);
    let saved: Saved =
        unsafe { bpf_probe_read_kernel(regs.add(core::mem::offset_of!(pt_regs, rdx)).cast()) }
            .map_err(|_| 0u32)?;
    Ok([saved.rdi, saved.rsi, saved.rdx])
}

/// The fourth argument of the syscall being entered (x86-64: r10, where the C convention
/// has rcx, which the `syscall` instruction overwrites).
#[inline(always)]
pub fn arg3(ctx: &RawTracePointContext) -> Result<u64, u32> {
    let regs: *const u8 = ctx.arg(0);
    unsafe { bpf_probe_read_kernel(regs.add(core::mem::offset_of!(pt_regs, r10)).cast()) }
        .map_err(|_| 0u32)
}

/// The fifth argument of the syscall being entered (x86-64: r8).
#[inline(always)]
pub fn arg4(ctx: &RawTracePointContext) -> Result<u64, u32> {
    let regs: *const u8 = ctx.arg(0);
    unsafe { bpf_probe_read_kernel(regs.add(core::mem::offset_of!(pt_regs, r8)).cast()) }
        .map_err(|_| 0u32)
}

/// The return value of the syscall returning.
#[inline(always)]
pub fn ret(ctx: &RawTracePointContext) -> i64 {
    ctx.arg(1)
}

/// Whether the current syscall is a 64-bit one. A 32-bit program's syscalls have numbers of
/// their own (its `read` is 64-bit `close`'s number) and arguments in other registers: the
/// per-syscall tracepoints skip them, and so do the programs here.
#[inline(always)]
pub fn native() -> bool {
    const TS_COMPAT: u32 = 0x0002;
    let offset = config!(offsets.task_thread_status);
    if offset == u32::MAX {
        return true;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match unsafe { bpf_probe_read_kernel::<u32>(task.add(offset as usize).cast()) } {
        Ok(status) => status & TS_COMPAT == 0,
        Err(_) => false,
    }
}
