//! TLS libraries in running processes: which mapped files hold the functions whose plaintext
//! a probe can read. Each file is looked at once however many processes map it (the same
//! device and inode is one library), and through `/proc/PID/map_files`, so a file inside a
//! container's own file system is the one found, whatever its path means here.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use object::Object as _;

pub mod returns;

/// OpenSSL's (and BoringSSL's) plaintext functions: curl and nginx call the first two, CPython
/// on OpenSSL 3 only the `_ex` forms.
pub const OPENSSL_FUNCTIONS: [&str; 4] = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"];

/// Go's `crypto/tls` connection methods.
pub const GO_FUNCTIONS: [&str; 2] = ["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"];

/// Which TLS implementation a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// OpenSSL or BoringSSL, as a shared library or linked into an executable.
    OpenSsl,
    /// A Go executable (its `crypto/tls`).
    Go,
}

/// A file's identity: one attachment per library, however many processes map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    /// The device as `/proc/PID/maps` shows it (major:minor, hex).
    pub dev: (u32, u32),
    pub inode: u64,
}

/// An executable mapping of a file, as one line of `/proc/PID/maps` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `START-END`, the name of the mapping in `/proc/PID/map_files`.
    pub range: String,
    pub file: FileId,
    /// The path as the process sees it.
    pub path: PathBuf,
}

/// A line of `/proc/PID/maps` when it maps a file executable:
/// `START-END PERMS OFFSET MAJ:MIN INODE PATH`.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    // The path is the rest of the line, spaces included (but not " (deleted)").
    let path = line.splitn(6, |c: char| c.is_ascii_whitespace()).nth(5)?;
    let path = path.trim_start();
    if perms.as_bytes().get(2) != Some(&b'x') || inode == 0 || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    Some(Mapping {
        range: range.to_string(),
        file: FileId {
            dev: (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            ),
            inode,
        },
        path: PathBuf::from(path.strip_suffix(" (deleted)").unwrap_or(path)),
    })
}

/// The files process `pid` maps executable (its program and shared libraries), once each.
pub fn mapped_files(pid: u32) -> io::Result<Vec<Mapping>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut seen = std::collections::HashSet::new();
    Ok(maps
        .lines()
        .filter_map(parse_maps_line)
        .filter(|m| seen.insert(m.file))
        .collect())
}

/// A plaintext function found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: &'static str,
    /// Where the file links it (a virtual address), and its length in bytes.
    pub address: u64,
    pub size: u64,
    /// Where its first byte is in the file: the offset a probe is attached at.
    pub file_offset: Option<u64>,
    /// How it returns, from its code (`None` when its code could not be read).
    pub exits: Option<returns::Exits>,
}

/// What a file offers: the implementation and which of its plaintext functions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub functions: Vec<Function>,
    /// A Go executable without a symbol table (`-ldflags=-s`): its functions were found in
    /// `.gopclntab`, the table Go keeps for its own stack traces.
    pub stripped: bool,
}

impl Found {
    pub fn names(&self) -> Vec<&'static str> {
        self.functions.iter().map(|f| f.name).collect()
    }

    /// Whether every function found leaves only through `ret` instructions a probe can sit
    /// on (see [`returns`]).
    pub fn returns_probeable(&self) -> bool {
        self.functions
            .iter()
            .all(|f| f.exits.as_ref().is_some_and(returns::Exits::complete))
    }
}

/// Go's function table (`.gopclntab`, Go 1.18 and later): the functions named in `wanted`,
/// as (name, address, size). Empty for a layout this does not know.
pub fn gopclntab_functions(tab: &[u8], wanted: &[&'static str]) -> Vec<(&'static str, u64, u64)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(tab.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(tab.get(at..at + 8)?.try_into().ok()?))
    };
    let header = || -> Option<(usize, u64, usize, usize)> {
        // 0xfffffff0: Go 1.18 and 1.19; 0xfffffff1: 1.20 and later (the same header).
        if !matches!(u32_at(0)?, 0xffff_fff0 | 0xffff_fff1) || tab.get(7) != Some(&8) {
            return None;
        }
        let nfunc = usize::try_from(u64_at(8)?).ok()?;
        let text_start = u64_at(24)?;
        let names = usize::try_from(u64_at(32)?).ok()?;
        let functab = usize::try_from(u64_at(64)?).ok()?;
        Some((nfunc, text_start, names, functab))
    };
    let Some((nfunc, text_start, names, functab)) = header() else {
        return Vec::new();
    };
    let name_at = |off: usize| -> Option<&[u8]> {
        let rest = tab.get(names.checked_add(off)?..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    let mut found = Vec::new();
    // Each entry: the function's offset from the start of text, and where its record is.
    for i in 0..nfunc {
        let Some(entry) = functab.checked_add(i * 8) else {
            break;
        };
        let (Some(entry_off), Some(func_off)) = (u32_at(entry), u32_at(entry + 4)) else {
            break;
        };
        // The record: its entry offset again, then its name's offset.
        let Some(name_off) = functab.checked_add(func_off as usize + 4).and_then(&u32_at) else {
            continue;
        };
        let Some(name) = name_at(name_off as usize) else {
            continue;
        };
        if let Some(w) = wanted.iter().find(|w| w.as_bytes() == name) {
            // A function ends where the next one (or, after the last, the text) starts.
            let next = u32_at(entry + 8).unwrap_or(entry_off);
            let size = u64::from(next.saturating_sub(entry_off));
            found.push((*w, text_start + u64::from(entry_off), size));
            if found.len() == wanted.len() {
                break;
            }
        }
    }
    found
}

/// Look at an ELF file for TLS functions. Reads only what the symbol tables need, so a large
/// executable costs little. `None` when it has none (or is not ELF).
pub fn inspect(file: &File) -> Option<Found> {
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let with_exits = |found: Vec<(&'static str, u64, u64)>| -> Vec<Function> {
        found
            .into_iter()
            .map(|(name, address, size)| Function {
                name,
                address,
                size,
                file_offset: file_offset(&elf, address),
                exits: code(&elf, address, size).map(|c| returns::exits(c, address)),
            })
            .collect()
    };
    let reads = |found: &[(&'static str, u64, u64)]| {
        found
            .iter()
            .any(|(n, _, _)| *n == "SSL_read" || *n == "SSL_read_ex")
    };
    // OpenSSL exports its functions (a shared libssl, or node's): the dynamic symbols are
    // enough, and far fewer than a large executable's full table.
    let mut openssl = find_symbols(elf.dynamic_symbols(), &OPENSSL_FUNCTIONS);
    if !reads(&openssl) {
        openssl = find_symbols(elf.symbols(), &OPENSSL_FUNCTIONS);
    }
    if reads(&openssl) {
        return Some(Found {
            kind: Kind::OpenSsl,
            functions: with_exits(openssl),
            stripped: false,
        });
    }
    let pclntab = elf.section_by_name(".gopclntab")?;
    let go = find_symbols(elf.symbols(), &GO_FUNCTIONS);
    if !go.is_empty() {
        return Some(Found {
            kind: Kind::Go,
            functions: with_exits(go),
            stripped: false,
        });
    }
    let go = gopclntab_functions(object::ObjectSection::data(&pclntab).ok()?, &GO_FUNCTIONS);
    (!go.is_empty()).then(|| Found {
        kind: Kind::Go,
        functions: with_exits(go),
        stripped: true,
    })
}

/// The definitions of the `wanted` names among `symbols` (address and size), in `wanted`'s
/// order; the scan stops once all are found.
fn find_symbols<'d, S: object::ObjectSymbol<'d>>(
    symbols: impl Iterator<Item = S>,
    wanted: &[&'static str],
) -> Vec<(&'static str, u64, u64)> {
    let mut found: Vec<(&'static str, u64, u64)> = Vec::new();
    for symbol in symbols {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name_bytes() else {
            continue;
        };
        let Some(w) = wanted.iter().find(|w| w.as_bytes() == name) else {
            continue;
        };
        if found.iter().all(|(n, _, _)| n != w) {
            found.push((*w, symbol.address(), symbol.size()));
            if found.len() == wanted.len() {
                break;
            }
        }
    }
    found.sort_by_key(|(n, _, _)| wanted.iter().position(|w| w == n));
    found
}

/// The bytes of `size` at `address` in the section that holds them.
fn code<'d, R: object::ReadRef<'d>>(
    elf: &object::File<'d, R>,
    address: u64,
    size: u64,
) -> Option<&'d [u8]> {
    use object::ObjectSection as _;
    if size == 0 {
        return None;
    }
    elf.sections()
        .find(|s| s.address() <= address && address + size <= s.address() + s.size())?
        .data_range(address, size)
        .ok()
        .flatten()
}

/// The file offset of the byte linked at `address`, from the section that holds it.
fn file_offset<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>, address: u64) -> Option<u64> {
    use object::ObjectSection as _;
    let section = elf
        .sections()
        .find(|s| s.address() <= address && address < s.address() + s.size())?;
    let (offset, _) = section.file_range()?;
    Some(address - section.address() + offset)
}

/// A library found, and the processes that map it.
#[derive(Debug, Clone)]
pub struct Library {
    pub path: PathBuf,
    pub found: Found,
    pub pids: Vec<u32>,
}

/// The TLS libraries of the given processes, one entry per file. Processes that vanish or
/// cannot be read are skipped.
pub fn libraries(pids: impl IntoIterator<Item = u32>) -> Vec<Library> {
    let mut looked: BTreeMap<FileId, Option<Library>> = BTreeMap::new();
    for pid in pids {
        let Ok(maps) = mapped_files(pid) else {
            continue;
        };
        for m in maps {
            let entry = looked.entry(m.file).or_insert_with(|| {
                let (file, _) = open_mapped(pid, &m).ok()?;
                inspect(&file).map(|found| Library {
                    path: m.path.clone(),
                    found,
                    pids: Vec::new(),
                })
            });
            if let Some(lib) = entry {
                lib.pids.push(pid);
            }
        }
    }
    looked.into_values().flatten().collect()
}

/// The mapped file itself: through `map_files` (the exact file, also in another mount
/// namespace), else through the process's root.
pub fn open_mapped(pid: u32, m: &Mapping) -> io::Result<(File, PathBuf)> {
    let direct = PathBuf::from(format!("/proc/{pid}/map_files/{}", m.range));
    match File::open(&direct) {
        Ok(f) => Ok((f, direct)),
        Err(_) => {
            let rel = m.path.strip_prefix("/").unwrap_or(&m.path);
            let rooted = Path::new(&format!("/proc/{pid}/root")).join(rel);
            Ok((File::open(&rooted)?, rooted))
        }
    }
}

/// The processes `filter` selects by pid and name (every process when it selects none that
/// way), as they run now.
pub fn selected_pids(filter: &crate::filter::Filter) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            filter.every_process() || {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                filter.selects_process(pid, comm.trim_end_matches('\n'))
            }
        })
        .collect()
}

/// Every process on the host.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_are_parsed() {
        let m = parse_maps_line(
            "7f1c2a400000-7f1c2a47b000 r-xp 00026000 fd:01 1837093                    \
             /usr/lib/x86_64-linux-gnu/libssl.so.3",
        )
        .unwrap();
        assert_eq!(m.range, "7f1c2a400000-7f1c2a47b000");
        assert_eq!(
            m.file,
            FileId {
                dev: (0xfd, 0x01),
                inode: 1837093
            }
        );
        assert_eq!(m.path, Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        // A path with spaces; a file deleted since it was mapped.
        let m = parse_maps_line("1000-2000 r-xp 00000000 08:02 42 /opt/my app/bin/srv").unwrap();
        assert_eq!(m.path, Path::new("/opt/my app/bin/srv"));
        let m = parse_maps_line("1000-2000 r-xp 00000000 08:02 42 /usr/bin/old (deleted)").unwrap();
        assert_eq!(m.path, Path::new("/usr/bin/old"));
    }

    #[test]
    fn other_mappings_are_not_files_to_look_at() {
        for line in [
            // Not executable.
            "7f1c2a47b000-7f1c2a4d7000 r--p 000a1000 fd:01 1837093 /usr/lib/libssl.so.3",
            // Anonymous, the stack, the vdso.
            "7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0",
            "7ffc1b3f0000-7ffc1b411000 rw-p 00000000 00:00 0                          [stack]",
            "7ffc1b5e2000-7ffc1b5e4000 r-xp 00000000 00:00 0                          [vdso]",
            // Garbage.
            "",
            "not a maps line",
            "1000-2000 r-xp 00000000 zz:01 7 /bin/x",
        ] {
            assert_eq!(parse_maps_line(line), None, "{line:?}");
        }
    }

    /// A `.gopclntab` as Go 1.18+ lays it out, with the given functions (name, offset from
    /// the start of text), text starting at `text`.
    fn pclntab(magic: u32, text: u64, functions: &[(&str, u32)]) -> Vec<u8> {
        const HEADER: usize = 72;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in functions {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let names_at = HEADER;
        let functab_at = names_at + names.len();
        let n = functions.len();
        // The function table (n entries and an end marker), then each function's record.
        let records_at = (n + 1) * 8;
        let mut tab = vec![0u8; HEADER];
        tab[0..4].copy_from_slice(&magic.to_le_bytes());
        tab[6] = 1;
        tab[7] = 8;
        tab[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        tab[24..32].copy_from_slice(&text.to_le_bytes());
        tab[32..40].copy_from_slice(&(names_at as u64).to_le_bytes());
        tab[64..72].copy_from_slice(&(functab_at as u64).to_le_bytes());
        tab.extend_from_slice(&names);
        for (i, (_, entry)) in functions.iter().enumerate() {
            tab.extend_from_slice(&entry.to_le_bytes());
            tab.extend_from_slice(&((records_at + i * 8) as u32).to_le_bytes());
        }
        // The end marker: where the text ends.
        let end = functions.last().map_or(0, |(_, e)| e + 0x100);
        tab.extend_from_slice(&end.to_le_bytes());
        tab.extend_from_slice(&[0; 4]);
        for (i, (_, entry)) in functions.iter().enumerate() {
            tab.extend_from_slice(&entry.to_le_bytes());
            tab.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        tab
    }

    #[test]
    fn go_functions_are_found_in_gopclntab() {
        // In address order, as Go writes them.
        let functions = [
            ("runtime.main", 0x100),
            ("crypto/tls.(*Conn).Read", 0x2000),
            ("crypto/tls.(*Conn).Write", 0x2340),
            ("net/http.(*conn).serve", 0x5000),
        ];
        for magic in [0xffff_fff0, 0xffff_fff1] {
            let tab = pclntab(magic, 0x401000, &functions);
            let mut found = gopclntab_functions(&tab, &GO_FUNCTIONS);
            found.sort();
            assert_eq!(
                found,
                vec![
                    ("crypto/tls.(*Conn).Read", 0x403000, 0x340),
                    ("crypto/tls.(*Conn).Write", 0x403340, 0x2cc0)
                ]
            );
        }
        // Another layout (Go 1.16's magic), a truncated table, garbage: nothing, no panic.
        let tab = pclntab(0xffff_fffa, 0x401000, &functions);
        assert!(gopclntab_functions(&tab, &GO_FUNCTIONS).is_empty());
        let tab = pclntab(0xffff_fff0, 0x401000, &functions);
        for cut in [0, 7, 40, 80, tab.len() - 30, tab.len() - 1] {
            let _ = gopclntab_functions(&tab[..cut], &GO_FUNCTIONS);
        }
        let mut noise = tab.clone();
        for (i, b) in noise.iter_mut().enumerate().skip(8) {
            *b = (i as u8).wrapping_mul(151);
        }
        let _ = gopclntab_functions(&noise, &GO_FUNCTIONS);
    }

    #[test]
    fn a_file_without_tls_functions_is_not_a_library() {
        // This test's own executable: ELF, no OpenSSL, not Go.
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(inspect(&exe), None);
        // Not ELF at all.
        let text = File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/src/tls/mod.rs")).unwrap();
        assert_eq!(inspect(&text), None);
    }

    #[test]
    fn this_process_maps_its_own_executable() {
        let files = mapped_files(std::process::id()).unwrap();
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert!(files.iter().any(|m| m.path == exe), "{files:?}");
        let mut ids: Vec<_> = files.iter().map(|m| m.file).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), files.len(), "each file once");
    }
}
