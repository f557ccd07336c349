//! From a descriptor to its TCP connection: walk the task's file table once per descriptor and
//! cache the socket and 4-tuple until the descriptor is closed; every use of the cache checks
//! that the descriptor still names the same file.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use tracer_common::{ConnTuple, conn_state, counter};

use crate::{
    config,
    filter::ports_pass,
    maps::{CONNS, ConnInfo, FdKey, MUTED, PROCS, count},
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The cached connection behind `fd` when it is traced or muted (a TLS connection's own bytes
/// are muted, its plaintext is still wanted), resolving it on a miss or when the descriptor no
/// longer names the file it named when cached. `None` for anything that is not a traced or
/// muted TCP connection.
#[inline(always)]
pub fn lookup_open(tgid: u32, fd: i32) -> Option<ConnInfo> {
    lookup_state(tgid, fd).filter(|info| info.state != conn_state::IGNORED)
}

#[inline(always)]
fn lookup_state(tgid: u32, fd: i32) -> Option<ConnInfo> {
    if fd < 0 {
        return None;
    }
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    let info = match unsafe { CONNS.get(key) } {
        Some(info) if still_names(fd as u32, info) => *info,
        _ => resolve(key, false)?,
    };
    Some(info)
}

/// The state of the cached connection of `fd` while the descriptor still names `file`,
/// without resolving anything: `None` when it is not cached, not a traced or muted TCP socket,
/// or names another file now.
#[inline(always)]
pub fn cached_state(tgid: u32, fd: i32, file: u64) -> Option<u32> {
    let state = cached_state_of(tgid, fd, file);
    (state != NO_STATE).then_some(state)
}

const NO_STATE: u32 = u32::MAX;

/// [`cached_state`] as a function of its own, returning [`NO_STATE`] for none: inlined into
/// callers that ask twice, the compiler merged paths so that one register held the map value
/// on one and a number on the other, which the verifier refuses.
#[inline(never)]
fn cached_state_of(tgid: u32, fd: i32, file: u64) -> u32 {
    if fd < 0 {
        return NO_STATE;
    }
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    let Some(info) = (unsafe { CONNS.get(key) }) else {
        return NO_STATE;
    };
    if info.file != file || info.state == conn_state::IGNORED || !still_names(fd as u32, info) {
        return NO_STATE;
    }
    info.state
}

/// The cached, traced connection of a descriptor already checked to name `file`, in place.
#[inline(always)]
pub fn cached(tgid: u32, fd: i32, file: u64) -> Option<&'static mut ConnInfo> {
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    let info = unsafe { &mut *CONNS.get_ptr_mut(key)? };
    (info.file == file && info.state == conn_state::TRACED).then_some(info)
}

/// Whether descriptor `fd` of the current task still names the file `info` was resolved from,
/// and (for a socket) that file is still that socket's. A released socket's file link is
/// cleared by the kernel, so a new file that reuses the old one's memory does not pass.
#[inline(always)]
fn still_names(fd: u32, info: &ConnInfo) -> bool {
    let Ok(file) = fd_file(fd) else {
        return false;
    };
    if file as u64 != info.file {
        return false;
    }
    if info.socket == 0 {
        return true;
    }
    let socket = info.socket as *const u8;
    matches!(read::<u64>(socket, config!(offsets.socket_file)), Ok(f) if f == info.file)
}

/// The `struct file` that descriptor `fd` of the current task names (null when none).
#[inline(always)]
pub fn fd_file(fd: u32) -> Result<*const u8, ()> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, config!(offsets.task_files)).map_err(|_| ())?;
    let fdt: *const u8 = read(files, config!(offsets.files_fdt)).map_err(|_| ())?;
    // `max_fds` and the `fd` array pointer 8 bytes after it (the agent checks this layout),
    // in one read: each read of kernel memory is a helper call.
    let [max_fds, fd_array]: [u64; 2] = read(fdt, config!(offsets.fdt_max_fds)).map_err(|_| ())?;
    if fd >= max_fds as u32 {
        return Err(());
    }
    read(fd_array as *const u8, fd * 8).map_err(|_| ())
}

/// Walk the file table for `key` and cache what is found (negative answers too, so that reads
/// of plain files cost one lookup and one check after the first). A descriptor the agent muted
/// stays muted as long as it names the same file. `named`: the caller's event carries the
/// process's name.
#[inline(always)]
pub fn resolve(key: FdKey, named: bool) -> Option<ConnInfo> {
    let mut info = ConnInfo {
        sock: 0,
        file: 0,
        socket: 0,
        tuple: ConnTuple::default(),
        state: conn_state::IGNORED,
        named: named as u32,
    };
    match walk(key.fd, &mut info) {
        Ok(()) => {}
        Err(Walk::Failed) => {
            count(counter::CONN_RESOLVE_FAILED);
            return None;
        }
        Err(Walk::NotTcp) => {}
    }
    if info.sock != 0 && ports_pass(info.tuple.local_port, info.tuple.remote_port) {
        info.state = conn_state::TRACED;
        if let Some(&muted) = unsafe { MUTED.get(&key) } {
            if muted == info.file {
                info.state = conn_state::MUTED;
            } else {
                let _ = MUTED.remove(&key);
            }
        }
        // A lookup costs less than an update: once known, the process stays as it is.
        if unsafe { PROCS.get(&key.tgid) }.is_none() {
            let _ = PROCS.insert(&key.tgid, &0, 0);
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
    if let Some(info) = info {
        let _ = CONNS.remove(key);
        if info.state == conn_state::MUTED {
            let _ = MUTED.remove(&key);
        }
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

/// The `struct sock` of descriptor `fd` of the current task when it is a stream socket, without
/// caching anything (a socket about to connect has no tuple yet).
#[inline(always)]
pub fn fd_sock(fd: u32) -> Option<u64> {
    let file = fd_file(fd).ok()?;
    let socket = file_socket(file).ok()?;
    stream_sock(socket).ok().map(|sk| sk as u64)
}

/// The `struct socket` of a file that is a socket.
#[inline(always)]
fn file_socket(file: *const u8) -> Result<*const u8, Walk> {
    if file.is_null() {
        return Err(Walk::Failed);
    }
    let inode: *const u8 = read(file, config!(offsets.file_f_inode))?;
    let mode: u16 = read(inode, config!(offsets.inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(Walk::NotTcp);
    }
    read(file, config!(offsets.file_private_data))
}

/// The `struct sock` of a stream socket.
#[inline(always)]
fn stream_sock(socket: *const u8) -> Result<*const u8, Walk> {
    let sock_type: u16 = read(socket, config!(offsets.socket_type))?;
    if sock_type != SOCK_STREAM {
        return Err(Walk::NotTcp);
    }
    let sk: *const u8 = read(socket, config!(offsets.socket_sk))?;
    if sk.is_null() {
        return Err(Walk::Failed);
    }
    Ok(sk)
}

#[inline(always)]
fn walk(fd: u32, info: &mut ConnInfo) -> Result<(), Walk> {
    let file = fd_file(fd).map_err(|_| Walk::Failed)?;
    if file.is_null() {
        return Err(Walk::Failed);
    }
    info.file = file as u64;
    let socket = file_socket(file)?;
    info.socket = socket as u64;
    let sk = stream_sock(socket)?;
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
