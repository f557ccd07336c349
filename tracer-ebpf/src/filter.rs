//! Which tasks are traced: the checks that run first in every program, before any copy.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
    bpf_probe_read_kernel,
};
use tracer_common::{
    COMM_LEN, FILTER_CGROUP, FILTER_COMM, FILTER_PID, FILTER_PORT, PID_BITMAP_WORDS,
    PORT_BITMAP_WORDS,
};

use crate::{
    config,
    maps::{CGROUP_FILTER, COMM_FILTER, PID_FILTER, PORT_FILTER},
};

/// The current `pid_tgid` if the current process is traced.
#[inline(always)]
pub fn traced_task() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config!(self_tgid) {
        return None;
    }
    let flags = config!(filter_flags);
    if flags & FILTER_PID != 0 && !pid_set(tgid) {
        return None;
    }
    if flags & FILTER_COMM != 0 {
        let comm = process_comm()?;
        unsafe { COMM_FILTER.get(comm) }?;
    }
    if flags & FILTER_CGROUP != 0 {
        // The task's cgroup in the v2 hierarchy, whatever thread of the process runs.
        let id = unsafe { bpf_get_current_cgroup_id() };
        unsafe { CGROUP_FILTER.get(&id) }?;
    }
    Some(pid_tgid)
}

/// Whether `tgid` is in the pid filter.
#[inline(always)]
fn pid_set(tgid: u32) -> bool {
    let word = tgid / 64;
    if word >= PID_BITMAP_WORDS {
        return false;
    }
    match PID_FILTER.get(word) {
        Some(bits) => bits & (1u64 << (tgid % 64)) != 0,
        None => false,
    }
}

/// False when the current process surely is not traced (the pid filter says so); a cheap
/// first test for exit programs, which otherwise look up the call they follow.
#[inline(always)]
pub fn maybe_traced(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    tgid != config!(self_tgid) && (config!(filter_flags) & FILTER_PID == 0 || pid_set(tgid))
}

/// The name of the current process: its main thread's `comm`, which worker threads that rename
/// themselves (Java, Node) do not change.
#[inline(always)]
pub fn process_comm() -> Option<[u8; COMM_LEN]> {
    let leader_off = config!(offsets.task_group_leader) as usize;
    let comm_off = config!(offsets.task_comm) as usize;
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe {
        let leader: *const u8 = bpf_probe_read_kernel(task.add(leader_off).cast()).ok()?;
        bpf_probe_read_kernel(leader.add(comm_off).cast()).ok()
    }
}

/// The current process's executable file (`mm->exe_file`); `None` when it has none (a kernel
/// thread) or it cannot be read.
#[inline(always)]
pub fn exe_file() -> Option<*const u8> {
    let mm_off = config!(offsets.task_mm) as usize;
    let exe_off = config!(offsets.mm_exe_file) as usize;
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe {
        let mm = bpf_probe_read_kernel::<*const u8>(task.add(mm_off).cast()).ok()?;
        if mm.is_null() {
            return None;
        }
        let exe = bpf_probe_read_kernel::<*const u8>(mm.add(exe_off).cast()).ok()?;
        (!exe.is_null()).then_some(exe)
    }
}

/// Copy the base name of executable file `exe` into `dst` (NUL-terminated); returns its
/// length, 0 when it cannot be read.
#[inline(always)]
pub fn exe_name(exe: *const u8, dst: *mut u8, cap: u32) -> u32 {
    let dentry_off = config!(offsets.file_f_path_dentry) as usize;
    let name_off = config!(offsets.dentry_d_name_name) as usize;
    unsafe {
        let Ok(dentry) = bpf_probe_read_kernel::<*const u8>(exe.add(dentry_off).cast()) else {
            return 0;
        };
        let Ok(name) = bpf_probe_read_kernel::<*const u8>(dentry.add(name_off).cast()) else {
            return 0;
        };
        let n =
            aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(dst.cast(), cap, name.cast());
        if n > 1 { (n - 1) as u32 } else { 0 }
    }
}

/// Whether a connection with these ports passes the port filter (local or remote port).
#[inline(always)]
pub fn ports_pass(local: u16, remote: u16) -> bool {
    if config!(filter_flags) & FILTER_PORT == 0 {
        return true;
    }
    port_set(local) || port_set(remote)
}

#[inline(always)]
fn port_set(port: u16) -> bool {
    let word = (port as u32 / 64) % PORT_BITMAP_WORDS;
    match PORT_FILTER.get(word) {
        Some(bits) => bits & (1u64 << (port % 64)) != 0,
        None => false,
    }
}
