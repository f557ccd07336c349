//! From a descriptor to its TCP connection: walk the task's file table once per descriptor and
//! cache the socket and 4-tuple until the descriptor is closed.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::{ConnTuple, conn_state, counter};

use crate::{
    config,
    filter::{ports_pass, process_start_time},
    maps::{CONNS, ConnInfo, FdKey, PROCS, count},
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The cached connection behind `fd`, resolving it on a miss. `None` for anything that is not
/// a traced TCP connection.
#[inline(always)]
pub fn lookup(tgid: u32, fd: i32) -> Option<ConnInfo> {
    if fd < 0 {
        return None;
    }
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    let info = match unsafe { CONNS.get(key) } {
        Some(info) => *info,
        None => resolve(key)?,
    };
    if info.state == conn_state::TRACED {
        Some(info)
    } else {
        None
    }
}

/// Walk the file table for `key` and cache what is found (negative answers too, so that reads
/// of plain files cost one lookup after the first).
#[inline(always)]
pub fn resolve(key: FdKey) -> Option<ConnInfo> {
    let mut info = ConnInfo {
        sock: 0,
        owner: process_start_time(),
        tuple: ConnTuple::default(),
        state: conn_state::IGNORED,
        _pad: 0,
    };
    match walk(key.fd, &mut info) {
        Ok(()) => {}
        Err(Walk::Failed) => {
            count(counter::CONN_RESOLVE_FAILED);
            return None;
        }
        Err(Walk::NotTcp) => {}
    }
    if info.sock != 0 {
        if ports_pass(info.tuple.local_port, info.tuple.remote_port) {
            info.state = conn_state::TRACED;
            let _ = PROCS.insert(key.tgid, 1, 0);
        }
    }
    if CONNS.insert(key, info, 0).is_err() {
        count(counter::CONN_TABLE_FULL);
    }
    Some(info)
}

/// Forget a descriptor, returning what it was.
#[inline(always)]
pub fn forget(tgid: u32, fd: i32) -> Option<ConnInfo> {
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    let info = unsafe { CONNS.get(key) }.copied();
    if info.is_some() {
        let _ = CONNS.remove(key);
    }
    info
}

enum Walk {
    /// A kernel read failed: the layout is not what the offsets say, or the fd vanished.
    Failed,
    /// A descriptor, but not a TCP socket.
    NotTcp,
}

#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, Walk> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast()) }.map_err(|_| Walk::Failed)
}

#[inline(always)]
fn walk(fd: u32, info: &mut ConnInfo) -> Result<(), Walk> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, config!(offsets.task_files))?;
    let fdt: *const u8 = read(files, config!(offsets.files_fdt))?;
    let max_fds: u32 = read(fdt, config!(offsets.fdt_max_fds))?;
    if fd >= max_fds {
        return Err(Walk::Failed);
    }
    let fd_array: *const u8 = read(fdt, config!(offsets.fdt_fd))?;
    let file: *const u8 = read(fd_array, fd * 8)?;
    if file.is_null() {
        return Err(Walk::Failed);
    }
    let inode: *const u8 = read(file, config!(offsets.file_f_inode))?;
    let mode: u16 = read(inode, config!(offsets.inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(Walk::NotTcp);
    }
    let socket: *const u8 = read(file, config!(offsets.file_private_data))?;
    let sock_type: u16 = read(socket, config!(offsets.socket_type))?;
    if sock_type != SOCK_STREAM {
        return Err(Walk::NotTcp);
    }
    let sk: *const u8 = read(socket, config!(offsets.socket_sk))?;
    if sk.is_null() {
        return Err(Walk::Failed);
    }
    let family: u16 = read(sk, config!(offsets.sk_family))?;
    let protocol: u16 = read(sk, config!(offsets.sk_protocol))?;
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return Err(Walk::NotTcp);
    }
    let t = &mut info.tuple;
    t.family = family;
    t.local_port = read(sk, config!(offsets.sk_num))?;
    t.remote_port = u16::from_be(read(sk, config!(offsets.sk_dport))?);
    if family == AF_INET {
        let local: [u8; 4] = read(sk, config!(offsets.sk_rcv_saddr))?;
        let remote: [u8; 4] = read(sk, config!(offsets.sk_daddr))?;
        t.local_addr[..4].copy_from_slice(&local);
        t.remote_addr[..4].copy_from_slice(&remote);
    } else {
        t.local_addr = read(sk, config!(offsets.sk_v6_rcv_saddr))?;
        t.remote_addr = read(sk, config!(offsets.sk_v6_daddr))?;
    }
    info.sock = sk as u64;
    Ok(())
}
