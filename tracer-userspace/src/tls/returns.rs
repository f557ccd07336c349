//! Where a function returns, found by decoding its machine code: a probe on each `ret`
//! instruction sees the return value (and the caller's buffer filled) without a return probe,
//! which would rewrite the caller's return address on the stack (Go moves its stacks and
//! crashes), and from Linux 6.11 returns through a system call that seccomp filters written
//! before it kill (where the kernel does not let it through seccomp).

use iced_x86::{Decoder, DecoderOptions, FlowControl};

/// The exits of one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exits {
    /// Offsets from the function's start of its `ret` instructions.
    pub returns: Vec<u64>,
    /// Jumps out of the function (tail calls): it returns from elsewhere, unseen.
    pub tail_calls: usize,
    /// Bytes that did not decode as x86-64 (data in the code, or a wrong size).
    pub invalid: bool,
}

impl Exits {
    /// Whether every way out of the function is a `ret` a probe can sit on.
    pub fn complete(&self) -> bool {
        !self.returns.is_empty() && self.tail_calls == 0 && !self.invalid
    }
}

/// Decode `code`, a whole function linked at `address`, and find its exits.
pub fn exits(code: &[u8], address: u64) -> Exits {
    let end = address + code.len() as u64;
    let mut out = Exits::default();
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for insn in &mut decoder {
        if insn.is_invalid() {
            out.invalid = true;
            break;
        }
        match insn.flow_control() {
            FlowControl::Return => out.returns.push(insn.ip() - address),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                let target = insn.near_branch_target();
                if target < address || target >= end {
                    out.tail_calls += 1;
                }
            }
            // `jmp *%rax` and friends: where it goes is not known here.
            FlowControl::IndirectBranch => out.tail_calls += 1,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL 3.0's `SSL_read_ex` as Debian 12 builds it (call, zeroed registers, one ret).
    const SSL_READ_EX: [u8; 29] = [
        0x48, 0x83, 0xec, 0x08, // sub $0x8,%rsp
        0xe8, 0xc7, 0xfd, 0xff, 0xff, // call (backwards, outside)
        0x31, 0xd2, // xor %edx,%edx
        0x85, 0xc0, // test %eax,%eax
        0x0f, 0x48, 0xc2, // cmovs %edx,%eax
        0x48, 0x83, 0xc4, 0x08, // add $0x8,%rsp
        0x31, 0xd2, // xor %edx,%edx
        0x31, 0xc9, // xor %ecx,%ecx
        0x31, 0xf6, // xor %esi,%esi
        0x31, 0xff, // xor %edi,%edi
        0xc3, // ret
    ];

    #[test]
    fn a_function_with_one_ret() {
        let e = exits(&SSL_READ_EX, 0x354c0);
        assert_eq!(e.returns, vec![28]);
        assert!(e.complete(), "{e:?}");
    }

    #[test]
    fn branches_inside_are_not_exits_and_jumps_out_are() {
        let code = [
            0x85, 0xc0, // test %eax,%eax
            0x74, 0x01, // je +1 (inside: to the ret)
            0x90, // nop
            0xc3, // ret
            0xe9, 0x00, 0x10, 0x00, 0x00, // jmp far away (a tail call)
        ];
        let e = exits(&code, 0x1000);
        assert_eq!(e.returns, vec![5]);
        assert_eq!(e.tail_calls, 1);
        assert!(!e.complete());
        // An indirect jump; and no ret at all.
        assert_eq!(exits(&[0xff, 0xe0], 0).tail_calls, 1);
        assert!(!exits(&[0x90, 0x90], 0).complete());
    }

    #[test]
    fn bytes_that_are_not_code_are_said_to_be() {
        // A truncated instruction (the first bytes of a 5-byte call).
        let e = exits(&[0xc3, 0xe8, 0x00], 0);
        assert!(e.invalid, "{e:?}");
        assert!(!e.complete());
    }
}
