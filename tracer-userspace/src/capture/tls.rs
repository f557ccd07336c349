//! Attaching the TLS programs to the libraries traced processes map: once per file (the same
//! device and inode is one attachment, however many processes map it, now or later), at each
//! plaintext function's entry and on each of its `ret` instructions.

use std::{
    collections::{BTreeSet, HashSet},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeScope},
};
use tracer_common::{FileKey, maps, tls};

use super::{CaptureError, program, program_err};
use crate::tls::{FileId, Found, Kind, mapped_files, open_mapped};

/// The TLS side of the probes: which files were looked at.
#[derive(Default)]
pub struct TlsProbes {
    /// Every executable file looked at, TLS or not: each is read once (once per process
    /// with `per_process`).
    seen: HashSet<(FileId, u32)>,
    /// Probes fire only in the process they were attached for: when processes are chosen by
    /// pid, no other process stops at them.
    per_process: bool,
    /// The benchmark's `--bench-stage return`: a do-nothing program at every probe.
    stand_in: bool,
}

/// The uprobe programs.
pub(crate) const UPROBES: [&str; 8] = [
    tls::SSL_READ,
    tls::SSL_READ_EX,
    tls::SSL_WRITE,
    tls::SSL_WRITE_EX,
    tls::SSL_RETURN,
    tls::GO_READ,
    tls::GO_WRITE,
    tls::GO_RETURN,
];

/// The tracepoints that report programs started and files mapped by traced processes:
/// (category, tracepoint, program).
pub(crate) const DISCOVERY: [(&str, &str, &str); 2] = [
    (tls::EXEC.0, tls::EXEC.1, tls::EXEC_PROGRAM),
    ("syscalls", tls::MMAP_PROGRAM, tls::MMAP_PROGRAM),
];

/// Load the TLS programs and attach the tracepoints that report programs started and files
/// mapped by traced processes. With `bench_return` (the benchmark's `--bench-stage return`),
/// do-nothing programs stand in for them: the uprobe is loaded, the tracepoints get the
/// capture's stand-in, already loaded.
pub(crate) fn load(ebpf: &mut Ebpf, bench_return: bool) -> Result<(), CaptureError> {
    if bench_return {
        let name = super::BENCH_UPROBE;
        let program: &mut UProbe = program(ebpf, name)?;
        program.load().map_err(|e| program_err(name, e))?;
    } else {
        load_programs(ebpf)?;
    }
    for (category, tracepoint, name) in DISCOVERY {
        let name = if bench_return {
            super::BENCH_TRACEPOINT
        } else {
            name
        };
        let program = super::tracepoint(ebpf, name)?;
        program
            .attach(category, tracepoint)
            .map_err(|e| program_err(name, e))?;
    }
    Ok(())
}

/// Load the TLS programs without attaching any.
pub(crate) fn load_programs(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    for name in UPROBES {
        let program: &mut UProbe = program(ebpf, name)?;
        program.load().map_err(|e| program_err(name, e))?;
    }
    for (_, _, name) in DISCOVERY {
        let program = super::tracepoint(ebpf, name)?;
        program.load().map_err(|e| program_err(name, e))?;
    }
    Ok(())
}

impl TlsProbes {
    /// `per_process` when the traced processes are chosen by pid.
    /// With `stand_in`, every probe gets the do-nothing program of `--bench-stage return`.
    pub fn new(per_process: bool, stand_in: bool) -> TlsProbes {
        TlsProbes {
            per_process,
            stand_in,
            ..TlsProbes::default()
        }
    }

    /// Look at the executable files of `pids` and attach to the TLS libraries among them not
    /// seen before. Returns how many libraries this call attached to. Processes that vanish
    /// or cannot be read are skipped.
    pub fn discover(&mut self, ebpf: &mut Ebpf, pids: impl IntoIterator<Item = u32>) -> usize {
        let mut new = 0;
        for pid in pids.into_iter().collect::<BTreeSet<_>>() {
            let Ok(maps) = mapped_files(pid) else {
                continue;
            };
            let scope = if self.per_process { pid } else { 0 };
            for m in maps {
                if self.seen.contains(&(m.file, scope)) {
                    continue;
                }
                // Not looked at if it cannot be opened: looked at again when mapped next.
                let Ok((file, _)) = open_mapped(pid, &m) else {
                    continue;
                };
                let origin = format!("process {pid}");
                new += usize::from(self.look_at(ebpf, (m.file, scope), &file, &m.path, &origin));
            }
        }
        new
    }

    /// Probe the system's shared OpenSSL libraries (`libssl.so*` in the usual library
    /// directories) before any process maps them: a program that starts later and is done
    /// in a few milliseconds is then traced from its first call.
    /// Returns how many it attached to.
    pub fn discover_system(&mut self, ebpf: &mut Ebpf) -> usize {
        let mut new = 0;
        for dir in LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().starts_with("libssl.so") {
                    continue;
                }
                let path = entry.path();
                // Symbolic links lead to the file itself, met by its own name too.
                let Ok(file) = std::fs::File::open(&path) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                use std::os::unix::fs::MetadataExt as _;
                let id = FileId {
                    dev: (libc::major(meta.dev()), libc::minor(meta.dev())),
                    inode: meta.ino(),
                };
                if self.seen.contains(&(id, 0)) {
                    continue;
                }
                let real = std::fs::canonicalize(&path).unwrap_or(path);
                new += usize::from(self.look_at(ebpf, (id, 0), &file, &real, "installed"));
            }
        }
        new
    }

    /// Look at one file (once; for process `scope`, 0 for all), and attach to it if it is a
    /// TLS library. Returns whether it attached.
    fn look_at(
        &mut self,
        ebpf: &mut Ebpf,
        (id, scope): (FileId, u32),
        file: &std::fs::File,
        shown: &Path,
        origin: &str,
    ) -> bool {
        self.seen.insert((id, scope));
        // Mapping it again is no longer reported by the kernel. Per process, the next
        // process's mapping must still be reported (the few processes chosen by pid report
        // little).
        if scope == 0 {
            remember(ebpf, id);
        }
        let Some(found) = crate::tls::inspect(file) else {
            return false;
        };
        // Attached through the descriptor held here: the file stays reachable even if the
        // process that mapped it has already exited.
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let scope = match std::num::NonZeroU32::new(scope) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        match attach_file(ebpf, &found, &path, scope, self.stand_in) {
            Ok(probes) if probes > 0 => {
                log::info!(
                    "TLS: probing {} in {} ({probes} probes; {origin})",
                    found.names().join(", "),
                    shown.display(),
                );
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!(
                    "TLS: cannot probe {} ({origin}): {e}; its HTTPS is not traced",
                    shown.display()
                );
                false
            }
        }
    }
}

/// Where shared libraries are installed, on Debian-like and other distributions.
const LIBRARY_DIRS: [&str; 7] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
];

/// Tell the programs that `file` was looked at.
fn remember(ebpf: &mut Ebpf, file: FileId) {
    let Some(map) = ebpf.map_mut(maps::SEEN_FILES) else {
        return;
    };
    let Ok(mut seen) = aya::maps::HashMap::<_, FileKey, u8>::try_from(map) else {
        return;
    };
    let key = FileKey {
        dev: (file.dev.0 << 20) | file.dev.1,
        _pad: 0,
        ino: file.inode,
    };
    if let Err(e) = seen.insert(key, 1, 0) {
        log::debug!("remembering a file looked at failed: {e}");
    }
}

/// Attach the entry and return programs to each plaintext function of a file. Functions that
/// do not leave only through `ret` instructions are left alone (a return would go unseen and
/// its call's state would linger), and said so. Returns the probes attached.
fn attach_file(
    ebpf: &mut Ebpf,
    found: &Found,
    path: &Path,
    scope: UProbeScope,
    stand_in: bool,
) -> Result<usize, CaptureError> {
    let mut probes = 0;
    for f in &found.functions {
        let (entry, ret) = match (found.kind, f.name) {
            (Kind::OpenSsl, "SSL_read") => (tls::SSL_READ, tls::SSL_RETURN),
            (Kind::OpenSsl, "SSL_read_ex") => (tls::SSL_READ_EX, tls::SSL_RETURN),
            (Kind::OpenSsl, "SSL_write") => (tls::SSL_WRITE, tls::SSL_RETURN),
            (Kind::OpenSsl, "SSL_write_ex") => (tls::SSL_WRITE_EX, tls::SSL_RETURN),
            (Kind::Go, n) if n.ends_with(").Read") => (tls::GO_READ, tls::GO_RETURN),
            (Kind::Go, n) if n.ends_with(").Write") => (tls::GO_WRITE, tls::GO_RETURN),
            _ => continue,
        };
        let (entry, ret) = if stand_in {
            (super::BENCH_UPROBE, super::BENCH_UPROBE)
        } else {
            (entry, ret)
        };
        let (Some(start), Some(exits)) = (f.file_offset, f.exits.as_ref()) else {
            log::warn!("TLS: the code of {} could not be read; not probed", f.name);
            continue;
        };
        if !exits.complete() {
            log::warn!(
                "TLS: {} does not return only through ret instructions; not probed",
                f.name
            );
            continue;
        }
        // The returns first: a call whose entry is seen must have its return seen too.
        for off in &exits.returns {
            attach_one(ebpf, ret, start + off, path, scope)?;
            probes += 1;
        }
        attach_one(ebpf, entry, start, path, scope)?;
        probes += 1;
    }
    Ok(probes)
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    offset: u64,
    path: &Path,
    scope: UProbeScope,
) -> Result<(), CaptureError> {
    program::<UProbe>(ebpf, name)?
        .attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)
        .map_err(|e| program_err(name, e))?;
    Ok(())
}
