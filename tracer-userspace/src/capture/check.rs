//! `tracer check`: what this machine offers the agent, each item pass or fail, with the fix
//! when something is missing. The agent's own programs are loaded (through the verifier) but
//! not attached, so the verdict is the agent's; the hook types of features to come are tried
//! with do-nothing programs, attached where that cannot affect anyone.

use std::fmt;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupSkb, FEntry, KProbe, RawTracePoint, SkMsg, SockOps, TracePoint, UProbe,
        uprobe::UProbeScope,
    },
};

use tracer_common::{AFTER_COPY_PROGRAM, DEFAULT_CAPTURE, PROCESS_EXIT, TRACEPOINTS};

use super::{EBPF_OBJECT, btf, tracefs};

/// The verdict on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not needed by the agent; reported for information.
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// Whether the agent cannot run without it.
    pub required: bool,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
        };
        let need = match (self.required, self.verdict) {
            (false, Verdict::Pass | Verdict::Fail) => " (optional)",
            _ => "",
        };
        write!(f, "{v:4}  {:<15} {}{need}", self.name, self.detail)
    }
}

fn item(name: &'static str, ok: bool, detail: String, required: bool) -> Item {
    Item {
        name,
        verdict: if ok { Verdict::Pass } else { Verdict::Fail },
        detail,
        required,
    }
}

/// The gist of an error: its first line, without an empty verifier log.
fn first_line(e: impl fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.split(". Verifier output")
        .next()
        .unwrap_or(line)
        .trim()
        .to_string()
}

fn kernel() -> Item {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::uname(&mut u) } == 0;
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).to_string()
    };
    Item {
        name: "kernel",
        verdict: Verdict::Info,
        detail: if ok {
            format!("Linux {} ({})", field(&u.release), field(&u.machine))
        } else {
            "uname failed".into()
        },
        required: false,
    }
}

fn privileges() -> Item {
    if unsafe { libc::geteuid() } == 0 {
        return item("privileges", true, "running as root".into(), true);
    }
    // CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39) in the effective set.
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let have = |bit: u32| caps & (1 << bit) != 0;
    let ok = have(21) && have(38) && have(39);
    item(
        "privileges",
        ok,
        if ok {
            "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN".into()
        } else {
            "not root: run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)".into()
        },
        true,
    )
}

fn kernel_btf() -> Item {
    match btf::Btf::from_kernel().and_then(|b| btf::kernel_offsets(&b)) {
        Ok(_) => item(
            "btf",
            true,
            format!("{} (struct offsets resolved)", btf::VMLINUX_BTF),
            true,
        ),
        Err(e) => item(
            "btf",
            false,
            format!("{e}; tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF"),
            true,
        ),
    }
}

fn tracefs_item() -> Item {
    match tracefs::ensure_mounted() {
        Ok(()) => item(
            "tracefs",
            true,
            "syscall tracepoints are listed".into(),
            true,
        ),
        Err(e) => item("tracefs", false, e, true),
    }
}

fn cgroup_v2() -> Item {
    match crate::filter::cgroup::v2_root() {
        Some(path) => item(
            "cgroup v2",
            true,
            format!("mounted at {}", path.display()),
            false,
        ),
        None => item("cgroup v2", false, "not mounted".into(), false),
    }
}

fn lockdown() -> Item {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let mode = text
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_else(|| "unknown (securityfs not mounted)".into());
    Item {
        name: "lockdown",
        verdict: Verdict::Info,
        detail: format!("{mode} (tracer only reads; it needs no bpf_probe_write_user)"),
        required: false,
    }
}

/// What a verifier refused, in one line: the last line of its log that says why (the error
/// itself when there is no log).
fn verifier_gist(e: impl fmt::Display) -> String {
    let text = e.to_string();
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return first_line(&text);
    };
    log.lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .map(str::to_string)
        .unwrap_or_else(|| first_line(head))
}

/// Load a program of the agent's object (not attached); the verifier's gist when refused.
fn load_agent_program<P>(
    ebpf: &mut Ebpf,
    name: &str,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), String>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("{name} is missing from the object"))?;
    let program: &mut P = program
        .try_into()
        .map_err(|_| format!("{name} has an unexpected type"))?;
    load(program).map_err(|e| format!("{name} is refused: {}", verifier_gist(e)))
}

/// How much of the verifier's budget (a million instructions processed per program) the
/// heaviest of `names` took, as `" (the verifier's work: at most N of 1,000,000 instructions,
/// NAME)"`; empty where the kernel does not say (before 5.16).
fn verifier_work<'n>(ebpf: &Ebpf, names: impl IntoIterator<Item = &'n str>) -> String {
    let heaviest = names
        .into_iter()
        .filter_map(|name| {
            let info = ebpf.program(name)?.info().ok()?;
            Some((info.verified_instruction_count()?, name))
        })
        .max();
    match heaviest {
        Some((n, name)) => format!(
            " (the verifier's work: at most {} of 1,000,000 instructions, {name})",
            thousands(n)
        ),
        None => String::new(),
    }
}

/// `12345` as `12,345`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The agent's own programs, loaded as the agent loads them (with this kernel's struct
/// offsets): the syscall capture (required), the search of request heads, and `--propagate`.
fn agent_programs() -> Vec<Item> {
    let filter = crate::filter::Filter::default();
    let mut ebpf = match super::open_object(
        &filter,
        DEFAULT_CAPTURE,
        true,
        true,
        &crate::correlate::sample::Sampler::default(),
    ) {
        Ok(e) => e,
        Err(e) => {
            return vec![item(
                "capture",
                false,
                format!("the agent's object does not load: {}", verifier_gist(e)),
                true,
            )];
        }
    };
    let names = || TRACEPOINTS.iter().copied().chain([PROCESS_EXIT.1]);
    let capture = names()
        .try_for_each(|name| load_agent_program::<TracePoint>(&mut ebpf, name, |p| p.load()));
    let count = TRACEPOINTS.len() + 1;
    let mut out = vec![match capture {
        Ok(()) => item(
            "capture",
            true,
            format!(
                "the agent's {count} tracepoint programs load{}",
                verifier_work(&ebpf, names())
            ),
            true,
        ),
        Err(e) => item("capture", false, e, true),
    }];
    out.push(match super::install_after_copy(&mut ebpf) {
        Ok(()) => item(
            "head search",
            true,
            format!(
                "loads (traceparent and HTTP/2 frames past the capture window; --propagate's context){}",
                verifier_work(&ebpf, [AFTER_COPY_PROGRAM])
            ),
            false,
        ),
        Err(e) => item(
            "head search",
            false,
            format!("{} (needs Linux 5.17: bpf_loop)", verifier_gist(e)),
            false,
        ),
    });
    let propagation = load_agent_program::<SkMsg>(&mut ebpf, "tracer_sk_msg", |p| p.load())
        .and_then(|()| load_agent_program::<SockOps>(&mut ebpf, "tracer_sock_ops", |p| p.load()));
    out.push(match propagation {
        Ok(()) => item(
            "propagate",
            true,
            format!(
                "the sk_msg and sock_ops programs load (not attached by check){}",
                verifier_work(&ebpf, ["tracer_sk_msg", "tracer_sock_ops"])
            ),
            false,
        ),
        Err(e) => item("propagate", false, e, false),
    });
    out.push(match super::tls::load_programs(&mut ebpf) {
        Ok(()) => {
            let names = super::tls::UPROBES
                .into_iter()
                .chain(super::tls::DISCOVERY.map(|(_, _, p)| p));
            item(
                "tls",
                true,
                format!(
                    "the {} uprobe programs on TLS libraries load (HTTPS plaintext; no return \
                     probe){}",
                    super::tls::UPROBES.len(),
                    verifier_work(&ebpf, names)
                ),
                false,
            )
        }
        Err(e) => item(
            "tls",
            false,
            format!("{}: HTTPS will not be traced", verifier_gist(e)),
            false,
        ),
    });
    out
}

/// Attaches a loaded check program and detaches it again; says where, or why not.
type Attach<'f, P> = &'f dyn Fn(&mut P) -> Result<String, String>;

/// Load one check program and, where `attach` is given, attach and detach it again.
fn hook<P>(
    ebpf: &mut Ebpf,
    name: &'static str,
    program: &'static str,
    required: bool,
    load: impl FnOnce(&mut P) -> Result<(), String>,
    attach: Option<Attach<'_, P>>,
) -> Item
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let Some(p) = ebpf.program_mut(program) else {
        return item(
            name,
            false,
            format!("{program} is missing from the object"),
            required,
        );
    };
    let Ok(p): Result<&mut P, _> = p.try_into() else {
        return item(
            name,
            false,
            format!("{program} has an unexpected type"),
            required,
        );
    };
    if let Err(e) = load(p) {
        return item(name, false, format!("does not load: {e}"), required);
    }
    match attach {
        None => item(name, true, "loads (not attached by check)".into(), required),
        Some(f) => match f(p) {
            Ok(what) => item(name, true, format!("loads and attaches ({what})"), required),
            Err(e) => item(
                name,
                false,
                format!("loads, but does not attach: {e}"),
                required,
            ),
        },
    }
}

fn hooks() -> Vec<Item> {
    let mut ebpf = match EbpfLoader::new().load(EBPF_OBJECT) {
        Ok(e) => e,
        Err(e) => {
            return vec![item(
                "ebpf",
                false,
                format!("the programs do not load: {}", first_line(e)),
                true,
            )];
        }
    };
    let mut out = Vec::new();
    out.push(hook::<TracePoint>(
        &mut ebpf,
        "tracepoint",
        "check_tracepoint",
        true,
        |p| p.load().map_err(first_line),
        Some(&|p: &mut TracePoint| {
            let id = p
                .attach("syscalls", "sys_enter_getpid")
                .map_err(first_line)?;
            p.detach(id).map_err(first_line)?;
            Ok("syscalls/sys_enter_getpid".into())
        }),
    ));
    out.push(hook::<RawTracePoint>(
        &mut ebpf,
        "raw_tracepoint",
        "check_raw_tracepoint",
        false,
        |p| p.load().map_err(first_line),
        Some(&|p: &mut RawTracePoint| {
            let id = p.attach("sys_enter").map_err(first_line)?;
            p.detach(id).map_err(first_line)?;
            Ok("sys_enter".into())
        }),
    ));
    out.push(hook::<KProbe>(
        &mut ebpf,
        "kprobe",
        "check_kprobe",
        false,
        |p| p.load().map_err(first_line),
        Some(&|p: &mut KProbe| {
            let id = p.attach("do_sys_openat2", 0).map_err(|e| {
                let e = first_line(e);
                if e.contains("kprobe/type") {
                    format!("no kprobe event source ({e}): the kernel lacks CONFIG_KPROBES")
                } else {
                    e
                }
            })?;
            p.detach(id).map_err(first_line)?;
            Ok("do_sys_openat2".into())
        }),
    ));
    let btf = Btf::from_sys_fs().ok();
    out.push(hook::<FEntry>(
        &mut ebpf,
        "fentry",
        "check_fentry",
        false,
        |p| match &btf {
            Some(btf) => p.load("do_sys_openat2", btf).map_err(first_line),
            None => Err("no kernel BTF".into()),
        },
        Some(&|p: &mut FEntry| {
            let id = p.attach().map_err(first_line)?;
            p.detach(id).map_err(first_line)?;
            Ok("do_sys_openat2".into())
        }),
    ));
    out.push(hook::<UProbe>(
        &mut ebpf,
        "uprobe",
        "check_uprobe",
        false,
        |p| p.load().map_err(first_line),
        Some(&|p: &mut UProbe| {
            let id = p
                .attach("getpid", "libc", UProbeScope::CallingProcess)
                .map_err(first_line)?;
            p.detach(id).map_err(first_line)?;
            Ok("libc getpid, this process only".into())
        }),
    ));
    out.push(hook::<SockOps>(
        &mut ebpf,
        "sock_ops",
        "check_sock_ops",
        false,
        |p| p.load().map_err(first_line),
        None,
    ));
    out.push(hook::<SkMsg>(
        &mut ebpf,
        "sk_msg",
        "check_sk_msg",
        false,
        |p| p.load().map_err(first_line),
        None,
    ));
    out.push(hook::<CgroupSkb>(
        &mut ebpf,
        "cgroup_skb",
        "check_cgroup_skb",
        false,
        |p| p.load().map_err(first_line),
        None,
    ));
    out
}

/// Run every check. Hook types are tried only with the privileges to try them.
pub fn run(filter: &crate::filter::Filter) -> Vec<Item> {
    let mut items = vec![
        kernel(),
        privileges(),
        kernel_btf(),
        tracefs_item(),
        cgroup_v2(),
        lockdown(),
    ];
    if items[1].verdict == Verdict::Pass {
        items.extend(agent_programs());
        items.extend(hooks());
        let pids = crate::tls::selected_pids(filter);
        let whose = if filter.every_process() {
            "the running processes"
        } else {
            "the processes --pid and --comm select"
        };
        items.extend(tls_libraries(&crate::tls::libraries(pids), whose));
    }
    items
}

/// Libraries listed one per line; past this many, the rest are counted.
const TLS_SHOWN: usize = 12;

/// The TLS libraries of `whose` (the processes looked at), one line each: what the agent would
/// probe in them.
fn tls_libraries(libraries: &[crate::tls::Library], whose: &str) -> Vec<Item> {
    let info = |detail: String| Item {
        name: "tls library",
        verdict: Verdict::Info,
        detail,
        required: false,
    };
    if libraries.is_empty() {
        return vec![info(format!("none found in {whose}"))];
    }
    let mut sorted: Vec<&crate::tls::Library> = libraries.iter().collect();
    sorted.sort_by(|a, b| b.pids.len().cmp(&a.pids.len()).then(a.path.cmp(&b.path)));
    let mut out: Vec<Item> = sorted
        .iter()
        .take(TLS_SHOWN)
        .map(|lib| {
            let f = &lib.found;
            let what = match f.kind {
                crate::tls::Kind::OpenSsl => "OpenSSL",
                crate::tls::Kind::Go => "Go crypto/tls",
            };
            let mut functions = f.names().join(", ");
            if f.stripped {
                functions.push_str("; stripped, found in .gopclntab");
            }
            functions.push_str(if f.returns_probeable() {
                "; each returns only by ret"
            } else {
                "; not each returns by ret"
            });
            let n = lib.pids.len();
            let processes = if n == 1 {
                format!("process {}", lib.pids[0])
            } else {
                format!("{n} processes")
            };
            info(format!(
                "{what} in {} ({functions}), {processes}",
                lib.path.display()
            ))
        })
        .collect();
    if sorted.len() > TLS_SHOWN {
        out.push(info(format!("and {} more", sorted.len() - TLS_SHOWN)));
    }
    out
}

/// Whether the agent can run, given a report.
pub fn can_run(items: &[Item]) -> bool {
    items
        .iter()
        .all(|i| !i.required || i.verdict != Verdict::Fail)
        && items
            .iter()
            .any(|i| i.name == "capture" && i.verdict == Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(16240), "16,240");
        assert_eq!(thousands(1000000), "1,000,000");
    }
}
