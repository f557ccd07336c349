//! Loading and attaching the eBPF programs, reading their ring buffer and their loss counters.

pub mod btf;
pub mod check;
pub mod event;
pub mod record;
pub mod tls;
mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, Queue, RingBuf, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps, TracePoint},
};
use tracer_common::{
    AFTER_COPY_PROGRAM, COMM_LEN, Config, ConnInfo, FILTER_CGROUP, FILTER_COMM, FILTER_PID,
    FILTER_PORT, FdKey, KernelOffsets, PROCESS_EXIT, SYSCALLS, TRACEPOINTS, conn_state, counter,
    maps,
};

use crate::filter::Filter;

/// The compiled eBPF object, embedded at build time.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Pending ring-buffer bytes at which a program wakes the agent at once; below it the agent
/// finds events on its next poll.
const WAKEUP_BYTES: u32 = 512 * 1024;
/// Do-nothing programs (`tracer check`'s) that stand in for ours with `--bench-stage return`
/// and `return-raw`.
pub(crate) const BENCH_TRACEPOINT: &str = "check_tracepoint";
pub(crate) const BENCH_UPROBE: &str = "check_uprobe";
pub(crate) const BENCH_RAW_TRACEPOINT: &str = "check_raw_tracepoint";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("tracer must run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("tracefs is not available: {0}")]
    Tracefs(String),
    #[error("cannot read kernel struct layouts: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("--propagate cannot work here: {0}")]
    Propagation(String),
    #[error("duplicating a descriptor: {0}")]
    Descriptor(#[source] std::io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map {
        name,
        source: Box::new(source),
    }
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    /// The `--cgroup` choices, and the ids of them and their descendants in the kernel's filter.
    cgroups: Vec<crate::filter::cgroup::Cgroup>,
    cgroup_ids: std::collections::BTreeSet<u64>,
    /// Whether the cgroup filter was ever full (warned once).
    cgroups_full: bool,
    /// Which chosen cgroups were gone at the last look (warned as it changes).
    cgroups_gone: Vec<bool>,
    propagate: bool,
    /// `None` when TLS libraries are not probed (`--no-tls`, or uprobes do not work here).
    tls: Option<tls::TlsProbes>,
}

impl Probes {
    /// Load the programs with `filter` and `capture_bytes`, then attach every tracepoint;
    /// with `propagate`, also the sock_ops program (to the cgroup v2 root) and the sk_msg
    /// program that injects `traceparent`. With `tls`, the programs that read TLS libraries'
    /// plaintext are loaded (and attached to libraries by [`Probes::discover_tls`]).
    pub fn attach(
        filter: &Filter,
        capture_bytes: u32,
        propagate: bool,
        tls: bool,
        sampler: &crate::correlate::sample::Sampler,
        bench_stage: Option<crate::cli::BenchStage>,
    ) -> Result<Self, CaptureError> {
        use crate::cli::BenchStage;
        let bench_raw = bench_stage == Some(BenchStage::ReturnRaw);
        let bench_return = bench_raw || bench_stage == Some(BenchStage::Return);
        if unsafe { libc::geteuid() } != 0 {
            return Err(CaptureError::NotRoot);
        }
        tracefs::ensure_mounted().map_err(CaptureError::Tracefs)?;
        let mut ebpf = open_object(filter, capture_bytes, propagate, tls, sampler)?;
        fill_filters(&mut ebpf, filter)?;
        // Before the exit programs run: they tail-call it.
        if let Err(e) = install_after_copy(&mut ebpf) {
            if propagate {
                return Err(CaptureError::Propagation(format!(
                    "the program that reads request heads does not load here (it needs \
                     Linux 5.17 or later): {e}"
                )));
            }
            log::warn!(
                "a traceparent past the capture window will not be found: the program that \
                 searches for it does not load here (it needs Linux 5.17 or later): {e}"
            );
        }
        // Every program is loaded first, then each call's exit is attached before its entry:
        // an entry seen with its exit not yet attached would leave a record behind for the
        // thread's next call to return into.
        let exits = TRACEPOINTS.iter().filter(|n| !n.starts_with("sys_enter_"));
        let enters = TRACEPOINTS.iter().filter(|n| n.starts_with("sys_enter_"));
        let all: Vec<(&str, &str)> = exits
            .chain(enters)
            .map(|&name| (SYSCALLS, name))
            .chain([(PROCESS_EXIT.0, PROCESS_EXIT.1)])
            .collect();
        // The benchmark's `--bench-stage return`: a program that returns at once stands in
        // for each of ours, so that ours stay exactly as they are loaded for real.
        let program_of = |name: &'static str| if bench_return { BENCH_TRACEPOINT } else { name };
        let all = if bench_raw {
            attach_raw_stand_in(&mut ebpf)?;
            all.into_iter()
                .filter(|&(category, _)| category != SYSCALLS)
                .collect()
        } else {
            all
        };
        for &(_, name) in &all {
            let program = program_of(name);
            if bench_return && tracepoint(&mut ebpf, program)?.fd().is_ok() {
                continue;
            }
            tracepoint(&mut ebpf, program)?
                .load()
                .map_err(|e| CaptureError::Program {
                    name: program,
                    source: Box::new(e),
                })?;
        }
        for (category, name) in all {
            let program = program_of(name);
            tracepoint(&mut ebpf, program)?
                .attach(category, name)
                .map_err(|e| CaptureError::Program {
                    name: program,
                    source: Box::new(e),
                })?;
        }
        if propagate {
            attach_propagation(&mut ebpf)?;
        }
        let tls = if tls {
            match tls::load(&mut ebpf, bench_return) {
                Ok(()) => Some(tls::TlsProbes::new(!filter.pids.is_empty(), bench_return)),
                Err(e) => {
                    log::warn!("HTTPS will not be traced: the TLS programs do not load here: {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut probes = Probes {
            ebpf,
            cgroups: filter.cgroups.clone(),
            cgroup_ids: Default::default(),
            cgroups_full: false,
            cgroups_gone: vec![false; filter.cgroups.len()],
            propagate,
            tls,
        };
        probes.refresh_cgroups()?;
        Ok(probes)
    }

    /// Bring the kernel's cgroup filter up to date with the cgroups below the chosen ones:
    /// new ones added, removed ones taken out. Returns how many ids changed.
    pub fn refresh_cgroups(&mut self) -> Result<usize, CaptureError> {
        if self.cgroups.is_empty() {
            return Ok(0);
        }
        for (c, gone) in self.cgroups.iter().zip(&mut self.cgroups_gone) {
            let now_gone = !c.dir.is_dir();
            if now_gone != *gone {
                if now_gone {
                    log::warn!(
                        "cgroup {} is gone: nothing in it is traced until it exists again",
                        c.path
                    );
                } else {
                    log::info!("cgroup {} exists again: tracing it", c.path);
                }
                *gone = now_gone;
            }
        }
        let cap = tracer_common::MAX_CGROUPS as usize;
        let (now, cut) = crate::filter::cgroup::ids(&self.cgroups, cap);
        if cut && !self.cgroups_full {
            self.cgroups_full = true;
            log::warn!(
                "more than {cap} cgroups are below the chosen ones: processes in the others \
                 are not traced"
            );
        }
        let map = self
            .ebpf
            .map_mut(maps::CGROUP_FILTER)
            .ok_or(CaptureError::Missing(maps::CGROUP_FILTER))?;
        let mut ids: HashMap<_, u64, u8> =
            HashMap::try_from(map).map_err(map_err(maps::CGROUP_FILTER))?;
        let mut changed = 0;
        for gone in self.cgroup_ids.difference(&now) {
            // Already gone from the map is as good.
            let _ = ids.remove(gone);
            changed += 1;
        }
        for new in now.difference(&self.cgroup_ids) {
            ids.insert(new, 1, 0)
                .map_err(map_err(maps::CGROUP_FILTER))?;
            changed += 1;
        }
        self.cgroup_ids = now;
        Ok(changed)
    }

    /// Attach to the system's shared OpenSSL libraries, mapped or not yet; returns how many.
    pub fn discover_system_tls(&mut self) -> usize {
        match &mut self.tls {
            Some(t) => t.discover_system(&mut self.ebpf),
            None => 0,
        }
    }

    /// Attach to the TLS libraries of `pids` not yet probed; returns how many were attached.
    pub fn discover_tls(&mut self, pids: impl IntoIterator<Item = u32>) -> usize {
        match &mut self.tls {
            Some(t) => t.discover(&mut self.ebpf, pids),
            None => 0,
        }
    }

    /// Whether TLS libraries are probed.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Take the ring buffer the programs write events into.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(CaptureError::Missing(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    /// Stop capturing the bytes of a connection the agent has no use for (not HTTP/1.x, or
    /// switched protocols); its close is still reported. A descriptor that meanwhile names
    /// another socket is left alone. The mute is also kept apart from the descriptor cache, so
    /// that the cache evicting the entry does not make the connection copied again.
    pub fn mute(&mut self, tgid: u32, fd: i32, sock: u64) -> Result<(), CaptureError> {
        let key = FdKey {
            tgid,
            fd: fd as u32,
        };
        let file = {
            let map = self
                .ebpf
                .map_mut(maps::CONNS)
                .ok_or(CaptureError::Missing(maps::CONNS))?;
            let mut conns: HashMap<_, FdKey, ConnInfo> =
                HashMap::try_from(map).map_err(map_err(maps::CONNS))?;
            match conns.get(&key, 0) {
                Ok(mut info) if info.sock == sock && info.state == conn_state::TRACED => {
                    info.state = conn_state::MUTED;
                    conns.insert(key, info, 0).map_err(map_err(maps::CONNS))?;
                    info.file
                }
                _ => return Ok(()),
            }
        };
        self.muted()?
            .insert(key, file, 0)
            .map_err(map_err(maps::MUTED))
    }

    /// The mutes kept apart from the descriptor cache: descriptor -> the file it was muted for.
    fn muted(&mut self) -> Result<HashMap<&mut MapData, FdKey, u64>, CaptureError> {
        let map = self
            .ebpf
            .map_mut(maps::MUTED)
            .ok_or(CaptureError::Missing(maps::MUTED))?;
        HashMap::try_from(map).map_err(map_err(maps::MUTED))
    }

    /// Take the connections `--propagate` stopped following out of the sock hash (its sk_msg
    /// program may not do so itself), so their sends no longer pass through it. Returns how
    /// many.
    pub fn release_lost(&mut self) -> Result<usize, CaptureError> {
        if !self.propagate {
            return Ok(0);
        }
        let mut lost = Vec::new();
        {
            let map = self
                .ebpf
                .map_mut(maps::LOST)
                .ok_or(CaptureError::Missing(maps::LOST))?;
            let mut queue: Queue<_, u64> = Queue::try_from(map).map_err(map_err(maps::LOST))?;
            while let Ok(sk) = queue.pop(0) {
                lost.push(sk);
            }
        }
        if lost.is_empty() {
            return Ok(0);
        }
        let map = self
            .ebpf
            .map_mut(maps::PROPAGATED)
            .ok_or(CaptureError::Missing(maps::PROPAGATED))?;
        let mut hash: SockHash<_, u64> =
            SockHash::try_from(map).map_err(map_err(maps::PROPAGATED))?;
        for sk in &lost {
            // Gone already when the connection closed first.
            let _ = hash.remove(sk);
        }
        Ok(lost.len())
    }

    /// Forget the mutes of processes that no longer exist (they closed nothing: the kernel
    /// did). A later process with the same pid is not fooled by one left behind: the
    /// programs check the file a mute was made for.
    pub fn sweep_mutes(&mut self) -> Result<usize, CaptureError> {
        let mut muted = self.muted()?;
        let gone: Vec<FdKey> = muted
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !std::path::Path::new(&format!("/proc/{}", k.tgid)).exists())
            .collect();
        for key in &gone {
            let _ = muted.remove(key);
        }
        Ok(gone.len())
    }

    /// The kernel-side counters, summed over CPUs, indexed as `tracer_common::counter`.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], CaptureError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(CaptureError::Missing(maps::COUNTERS))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err(maps::COUNTERS))?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array.get(&(i as u32), 0).map_err(map_err(maps::COUNTERS))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// The embedded object with its configuration for this kernel, its maps created and no
/// program loaded yet.
pub(crate) fn open_object(
    filter: &Filter,
    capture_bytes: u32,
    propagate: bool,
    tls: bool,
    sampler: &crate::correlate::sample::Sampler,
) -> Result<Ebpf, CaptureError> {
    let offsets = btf::kernel_offsets(&btf::Btf::from_kernel()?)?;
    raise_memlock();
    let mut config = kernel_config(filter, capture_bytes, offsets);
    config.propagate = propagate as u32;
    config.tls = tls as u32;
    config.sample_threshold = sampler.root_threshold();
    config.sample_parent_based = sampler.parent_based() as u32;
    EbpfLoader::new()
        .override_global(maps::CONFIG, &config, true)
        .load(EBPF_OBJECT)
        .map_err(|e| CaptureError::Load(Box::new(e)))
}

/// Load the program that finishes events which may start a request (the searches of the
/// head) and put it in the exit programs' tail-call slot.
pub(crate) fn install_after_copy(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    let name = AFTER_COPY_PROGRAM;
    let wrap = |e| CaptureError::Program {
        name,
        source: Box::new(e),
    };
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(wrap)?;
    program.load().map_err(wrap)?;
    let fd = program
        .fd()
        .map_err(wrap)?
        .try_clone()
        .map_err(CaptureError::Descriptor)?;
    let map = ebpf
        .map_mut(maps::AFTER_COPY)
        .ok_or(CaptureError::Missing(maps::AFTER_COPY))?;
    let mut slots: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(map_err(maps::AFTER_COPY))?;
    slots.set(0, &fd, 0).map_err(map_err(maps::AFTER_COPY))
}

/// sock_ops on the cgroup v2 root puts traced processes' outgoing connections in the sock
/// hash; sk_msg on that hash sees (and may extend) what they send.
fn attach_propagation(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    const SOCK_OPS: &str = "tracer_sock_ops";
    const SK_MSG: &str = "tracer_sk_msg";
    const SOCKHASH: &str = maps::PROPAGATED;
    let root = crate::filter::cgroup::v2_root().ok_or(CaptureError::Propagation(
        "cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup)".into(),
    ))?;
    let cgroup = std::fs::File::open(&root).map_err(|e| {
        CaptureError::Propagation(format!("opening the cgroup root {}: {e}", root.display()))
    })?;
    let wrap = |name: &'static str| {
        move |e| CaptureError::Program {
            name,
            source: Box::new(e),
        }
    };
    let map = ebpf.map(SOCKHASH).ok_or(CaptureError::Missing(SOCKHASH))?;
    let hash: SockHash<_, u64> = SockHash::try_from(map).map_err(map_err(SOCKHASH))?;
    let map_fd = hash.fd().try_clone().map_err(|e| {
        CaptureError::Propagation(format!("duplicating the sock hash descriptor: {e}"))
    })?;
    let msg: &mut SkMsg = ebpf
        .program_mut(SK_MSG)
        .ok_or(CaptureError::Missing(SK_MSG))?
        .try_into()
        .map_err(wrap(SK_MSG))?;
    msg.load().map_err(wrap(SK_MSG))?;
    msg.attach(&map_fd).map_err(wrap(SK_MSG))?;
    let ops: &mut SockOps = ebpf
        .program_mut(SOCK_OPS)
        .ok_or(CaptureError::Missing(SOCK_OPS))?
        .try_into()
        .map_err(wrap(SOCK_OPS))?;
    ops.load().map_err(wrap(SOCK_OPS))?;
    ops.attach(cgroup, CgroupAttachMode::Single)
        .map_err(wrap(SOCK_OPS))?;
    log::info!(
        "propagating trace context: traceparent is added to outgoing HTTP/1.x requests \
         (sock_ops on {})",
        root.display()
    );
    Ok(())
}

fn kernel_config(filter: &Filter, capture_bytes: u32, offsets: KernelOffsets) -> Config {
    let mut flags = 0;
    if !filter.pids.is_empty() {
        flags |= FILTER_PID;
    }
    if !filter.comms.is_empty() {
        flags |= FILTER_COMM;
    }
    if !filter.ports.is_empty() {
        flags |= FILTER_PORT;
    }
    if !filter.cgroups.is_empty() {
        flags |= FILTER_CGROUP;
    }
    Config {
        self_tgid: std::process::id(),
        capture_bytes: capture_bytes.min(tracer_common::MAX_CAPTURE as u32),
        filter_flags: flags,
        wakeup_bytes: WAKEUP_BYTES,
        offsets,
        propagate: 0,
        tls: 0,
        sample_threshold: 0,
        sample_parent_based: 1,
        _pad: 0,
    }
}

fn fill_filters(ebpf: &mut Ebpf, filter: &Filter) -> Result<(), CaptureError> {
    {
        let map = ebpf
            .map_mut(maps::PID_FILTER)
            .ok_or(CaptureError::Missing(maps::PID_FILTER))?;
        let mut bits: Array<_, u64> = Array::try_from(map).map_err(map_err(maps::PID_FILTER))?;
        let mut words: std::collections::BTreeMap<u32, u64> = Default::default();
        // The command line only takes pids below 2^22, the bitmap's size.
        for &pid in filter
            .pids
            .iter()
            .filter(|&&p| p / 64 < tracer_common::PID_BITMAP_WORDS)
        {
            *words.entry(pid / 64).or_default() |= 1 << (pid % 64);
        }
        for (word, value) in words {
            bits.set(word, value, 0)
                .map_err(map_err(maps::PID_FILTER))?;
        }
    }
    {
        let map = ebpf
            .map_mut(maps::COMM_FILTER)
            .ok_or(CaptureError::Missing(maps::COMM_FILTER))?;
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(map).map_err(map_err(maps::COMM_FILTER))?;
        for comm in &filter.comms {
            comms
                .insert(Filter::comm_key(comm), 1, 0)
                .map_err(map_err(maps::COMM_FILTER))?;
        }
    }
    let map = ebpf
        .map_mut(maps::PORT_FILTER)
        .ok_or(CaptureError::Missing(maps::PORT_FILTER))?;
    let mut ports: Array<_, u64> = Array::try_from(map).map_err(map_err(maps::PORT_FILTER))?;
    for (word, bits) in filter.port_bitmap().into_iter().enumerate() {
        if bits != 0 {
            ports
                .set(word as u32, bits, 0)
                .map_err(map_err(maps::PORT_FILTER))?;
        }
    }
    Ok(())
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones to the memory cgroup, where
/// raising the limit may be refused. Either way loading goes on.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK failed ({}); continuing",
            std::io::Error::last_os_error()
        );
    }
}

/// The benchmark's `--bench-stage return-raw`: the do-nothing raw tracepoint program at
/// `sys_exit`, then at `sys_enter`, in place of every syscall tracepoint program.
fn attach_raw_stand_in(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    let name = BENCH_RAW_TRACEPOINT;
    let program: &mut aya::programs::RawTracePoint = program(ebpf, name)?;
    program.load().map_err(|e| program_err(name, e))?;
    for tracepoint in ["sys_exit", "sys_enter"] {
        program
            .attach(tracepoint)
            .map_err(|e| program_err(name, e))?;
    }
    Ok(())
}

/// The program `name` of the object, as the program type `P`.
pub(crate) fn program<'e, P>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut P, CaptureError>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|e| program_err(name, e))
}

/// The tracepoint program `name`.
fn tracepoint<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut TracePoint, CaptureError> {
    program(ebpf, name)
}

pub(crate) fn program_err(name: &'static str, e: aya::programs::ProgramError) -> CaptureError {
    CaptureError::Program {
        name,
        source: Box::new(e),
    }
}
