//! Kernel struct field offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the agent reads the offsets the programs need once at
//! start-up and hands them over as read-only globals. Only the parts of the BTF format needed
//! to find a named member of a named struct (through anonymous unions and structs) are parsed.

use std::collections::HashMap;

use tracer_common::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source} (the kernel must be built with CONFIG_DEBUG_INFO_BTF)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel struct `{0}` has no member `{1}`")]
    NoMember(String, String),
    #[error("kernel struct `{0}` member `{1}` is a bitfield; it cannot be read directly")]
    Bitfield(String, String),
    #[error("kernel struct `{0}` is laid out unlike any known kernel's: {1}")]
    Layout(&'static str, &'static str),
}

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
enum Type {
    Composite { name_off: u32, members: Vec<Member> },
    Modifier { type_id: u32 },
    Other,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Read and parse the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        let bytes = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read {
            path: VMLINUX_BTF.to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parse a little-endian BTF blob.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if u16_at(b, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();

        // Type id 0 is void.
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < types_bytes.len() {
            let name_off = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_bytes, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24 != 0)
                        } else {
                            (offset, false)
                        };
                        members.push(Member {
                            name_off: u32_at(types_bytes, m)?,
                            type_id: u32_at(types_bytes, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    at += vlen * 12;
                    Type::Composite { name_off, members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Modifier {
                        type_id: size_or_type,
                    }
                }
                _ => {
                    at += match kind {
                        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                        KIND_ARRAY => 12,
                        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                        KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                        0..=19 => 0,
                        _ => return Err(BtfError::Malformed("unknown type kind")),
                    };
                    Type::Other
                }
            };
            types.push(ty);
        }

        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            if let Type::Composite { name_off, members } = &btf.types[id]
                && *name_off != 0
                && !members.is_empty()
            {
                let name = btf.name(*name_off).to_string();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Modifier { type_id }) => id = *type_id,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous members.
    pub fn offset_of(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        match self.find(id, member, 0)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield(strukt.to_string(), member.to_string())),
            None => Err(BtfError::NoMember(strukt.to_string(), member.to_string())),
        }
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>, BtfError> {
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize)
        else {
            return Ok(None);
        };
        for m in members {
            if m.name_off == 0 {
                if depth < 8
                    && let Some(inner) = self.find(m.type_id, member, depth + 1)?
                {
                    return Ok(Some(m.bit_offset + inner));
                }
            } else if self.name(m.name_off) == member {
                if m.bitfield {
                    return Ok(Some(1)); // reported as a bitfield by the caller
                }
                return Ok(Some(m.bit_offset));
            }
        }
        Ok(None)
    }
}

/// The offsets the programs need to go from the current task to a socket's 4-tuple.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let common = btf.offset_of("sock", "__sk_common")?;
    let sk = |member: &str| btf.offset_of("sock_common", member).map(|o| common + o);
    let (fdt_max_fds, fdt_fd) = (
        btf.offset_of("fdtable", "max_fds")?,
        btf.offset_of("fdtable", "fd")?,
    );
    // The programs read both in one 16-byte read.
    if fdt_fd != fdt_max_fds + 8 {
        return Err(BtfError::Layout(
            "fdtable",
            "`fd` does not follow `max_fds` by 8 bytes",
        ));
    }
    Ok(KernelOffsets {
        task_files: btf.offset_of("task_struct", "files")?,
        task_group_leader: btf.offset_of("task_struct", "group_leader")?,
        task_comm: btf.offset_of("task_struct", "comm")?,
        files_fdt: btf.offset_of("files_struct", "fdt")?,
        fdt_max_fds,
        fdt_fd,
        file_f_inode: btf.offset_of("file", "f_inode")?,
        file_private_data: btf.offset_of("file", "private_data")?,
        inode_i_mode: btf.offset_of("inode", "i_mode")?,
        socket_type: btf.offset_of("socket", "type")?,
        socket_sk: btf.offset_of("socket", "sk")?,
        sk_family: sk("skc_family")?,
        sk_protocol: btf.offset_of("sock", "sk_protocol")?,
        sk_num: sk("skc_num")?,
        sk_dport: sk("skc_dport")?,
        sk_rcv_saddr: sk("skc_rcv_saddr")?,
        sk_daddr: sk("skc_daddr")?,
        sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
        sk_v6_daddr: sk("skc_v6_daddr")?,
        socket_file: btf.offset_of("socket", "file")?,
        task_mm: btf.offset_of("task_struct", "mm")?,
        mm_exe_file: btf.offset_of("mm_struct", "exe_file")?,
        file_f_path_dentry: btf.offset_of("file", "f_path")? + btf.offset_of("path", "dentry")?,
        dentry_d_name_name: btf.offset_of("dentry", "d_name")? + btf.offset_of("qstr", "name")?,
        inode_i_ino: btf.offset_of("inode", "i_ino")?,
        inode_i_sb: btf.offset_of("inode", "i_sb")?,
        sb_s_dev: btf.offset_of("super_block", "s_dev")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; union { int b; struct { int c; int d; }; }; }`,
    /// with `int d` behind a typedef.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0myint\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: typedef myint -> 1
        push(&[s("myint"), KIND_TYPEDEF << 24, 1]);
        // 3: anonymous struct { c @0, d @32 }
        push(&[0, (KIND_STRUCT << 24) | 2, 8, s("c"), 1, 0, s("d"), 2, 32]);
        // 4: anonymous union { b, <3> }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("b"), 1, 0, 0, 3, 0]);
        // 5: struct outer { a @0, <4> @64 }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            s("a"),
            1,
            0,
            0,
            4,
            64,
        ]);
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset_of("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "b").unwrap(), 8);
        assert_eq!(btf.offset_of("outer", "c").unwrap(), 8);
        assert_eq!(btf.offset_of("outer", "d").unwrap(), 12);
    }

    #[test]
    fn reports_missing_names() {
        let btf = Btf::parse(&blob()).unwrap();
        assert!(matches!(
            btf.offset_of("outer", "zz"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.offset_of("nope", "a"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly").is_err());
        assert!(Btf::parse(&[]).is_err());
    }
}
