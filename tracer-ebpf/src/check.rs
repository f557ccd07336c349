//! Do-nothing programs of each hook type, loaded (and where harmless, attached) by
//! `tracer check` to report what this kernel allows. The agent loads two of them only for the
//! benchmark's `--bench-stage return`, attached in place of its own programs.

use aya_ebpf::{
    macros::{cgroup_skb, fentry, kprobe, raw_tracepoint, sk_msg, sock_ops, tracepoint, uprobe},
    programs::{
        FEntryContext, ProbeContext, RawTracePointContext, SkBuffContext, SkMsgContext,
        SockOpsContext, TracePointContext,
    },
};

#[tracepoint]
pub fn check_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn check_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn check_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "do_sys_openat2")]
pub fn check_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[uprobe]
pub fn check_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[sock_ops]
pub fn check_sock_ops(_ctx: SockOpsContext) -> u32 {
    1
}

#[sk_msg]
pub fn check_sk_msg(_ctx: SkMsgContext) -> u32 {
    1
}

#[cgroup_skb]
pub fn check_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}
