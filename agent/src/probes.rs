//! Loading and attaching the kernel side, chosen by what the running kernel
//! has (the libbpf-tools way: fentry where it works, kprobe otherwise).
//!
//! Everything kernel-specific is decided here and only here: struct offsets
//! and argument positions come from the running kernel's BTF ([`layout`]),
//! each attach point picks a symbol that exists and a method that works, and
//! the result is described in a [`ProbeReport`] for `doctor` and the JSON.

use crate::btf::Btf;
use crate::kallsyms::{Line, SymbolsBuilder};
use crate::kretprobe::{self, TracefsKretprobe};
use crate::points::{Facts, Method, Missing, Planned, Probe};
use agent_ebpf::{Config, DIRECT};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{FEntry, FExit, KProbe, TracePoint},
    Ebpf,
};
use serde::Serialize;
use std::collections::HashSet;

/// The eBPF object, built by `build.rs` from `agent-ebpf`.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cowtrace-probes"));

/// How one attach point was attached.
#[derive(Clone, Debug, Serialize)]
pub struct AttachedPoint {
    /// What it observes, e.g. `copy_up_object`.
    pub role: &'static str,
    /// Kernel function it is attached to.
    pub function: String,
    /// `fentry`, `fexit`, `kprobe`, `kretprobe`, or `fentry+fexit` style pairs.
    pub method: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeReport {
    pub points: Vec<AttachedPoint>,
}

/// Options the user controls.
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Only kprobes, even where fentry would work (for comparison and tests).
    pub force_kprobes: bool,
    /// Filter in the kernel (ids put in the filter maps afterwards).
    pub filter: bool,
    /// Size of the kernel's write histogram map (`WRITES`): how many
    /// (cgroup, overlay) pairs it keeps; `None` keeps the built-in size.
    pub write_keys: Option<u32>,
    /// Time one write in `2^write_sample_shift` (all are counted).
    pub write_sample_shift: u32,
    /// The programs' diagnostics (aya-log) on: `--verbose`.
    pub bpf_log: bool,
}

/// The kernel's function symbols, read once from /proc/kallsyms: which
/// attach candidates exist, and the address table that turns a copy-up's
/// stack into its trigger.
pub struct KernelSymbols {
    present: HashSet<String>,
    /// The kretprobe trampoline has its pre-5.15 name: the stack unwinder
    /// of such a kernel stops at a return probe's trampoline instead of
    /// recovering the real return address (fixed with the rename).
    pub unwind_stops_at_kretprobe: bool,
    pub table: crate::kallsyms::Symbols,
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms` a line at a time (see [`SymbolsBuilder`]).
    pub fn load() -> Result<Self> {
        let file = std::fs::File::open(KALLSYMS).context("reading /proc/kallsyms")?;
        Self::read(file)
    }

    /// Reads an opened `/proc/kallsyms`.
    fn read(file: std::fs::File) -> Result<Self> {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
        let mut scan = Scan::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .context("reading /proc/kallsyms")?
                == 0
            {
                break;
            }
            scan.line(&line);
        }
        Ok(scan.finish())
    }

    pub fn parse(text: &str) -> Self {
        let mut scan = Scan::new();
        for line in text.lines() {
            scan.line(line.as_bytes());
        }
        scan.finish()
    }

    pub fn has(&self, name: &str) -> bool {
        self.present.contains(name)
    }
}

/// One pass over kallsyms: which attach points exist, and the symbol table.
struct Scan {
    wanted: HashSet<&'static str>,
    /// Bit `n` set: some wanted name is `n` bytes long (a name of another
    /// length is not hashed: kallsyms has 100k+ of them).
    wanted_lengths: u128,
    present: HashSet<String>,
    table: SymbolsBuilder<fn(&str, Option<&str>) -> bool>,
}

impl Scan {
    fn new() -> Self {
        let wanted: HashSet<&'static str> = crate::points::all_candidates()
            .chain([OLD_KRETPROBE_TRAMPOLINE])
            .collect();
        let wanted_lengths = wanted
            .iter()
            .filter(|n| n.len() < 128)
            .fold(0u128, |m, n| m | 1 << n.len());
        Self {
            wanted,
            wanted_lengths,
            present: HashSet::new(),
            table: SymbolsBuilder::new(crate::kallsyms::default_keep),
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(line) = Line::split(line) else {
            return;
        };
        let name = line.name;
        if line.is_text()
            && name.len() < 128
            && self.wanted_lengths & (1 << name.len()) != 0
            && self.wanted.contains(name)
        {
            self.present.insert(name.to_string());
        }
        self.table.line(&line);
    }

    fn finish(self) -> KernelSymbols {
        KernelSymbols {
            unwind_stops_at_kretprobe: self.present.contains(OLD_KRETPROBE_TRAMPOLINE),
            present: self.present,
            table: self.table.finish(),
        }
    }
}

/// The kernel's symbol table.
const KALLSYMS: &str = "/proc/kallsyms";

/// Renamed `__kretprobe_trampoline` in 5.15, when x86's unwinder learnt to
/// see through it.
const OLD_KRETPROBE_TRAMPOLINE: &str = "kretprobe_trampoline";

/// The functions with which, since 5.15, the unwinder finds a return
/// probe's real return address (the second where return probes run on
/// rethook): a kernel whose BTF has one need not be asked kallsyms for
/// the trampoline's name.
pub const RETURN_ADDRESS_RECOVERY: [&str; 2] = ["kretprobe_find_ret_addr", "rethook_find_ret_addr"];

/// `/proc/kallsyms`, opened at the start and read when it is first needed
/// or on a thread of its own (up to a second or more on a slow machine):
/// a run waits for it only where BTF cannot answer (a kernel without
/// overlay's module BTF, a candidate BTF does not list), and to name a
/// copy-up's trigger from its stack. A run starts the thread at its first
/// copy-up ([`Kallsyms::read_beside`]): read during start-up it took CPU
/// from verifying the programs on a two-CPU machine, and the kernel takes
/// 0.1 s of system time to write the file (6.1 guest), which a run
/// without copy-ups need not pay.
pub struct Kallsyms {
    state: std::sync::Mutex<Reading>,
    read: std::sync::OnceLock<Read>,
}

/// Where reading kallsyms is.
enum Reading {
    /// Opened, not read yet (None: it could not be opened).
    Opened(Option<std::fs::File>),
    /// Being read on its own thread.
    Beside(std::thread::JoinHandle<Read>),
    /// Taken by [`Kallsyms::finished`].
    Done,
}

/// What reading kallsyms gave, and how long it took.
struct Read {
    symbols: Option<KernelSymbols>,
    took: std::time::Duration,
}

impl Read {
    fn from(file: Option<std::fs::File>) -> Read {
        let t = std::time::Instant::now();
        let symbols = file.and_then(|f| KernelSymbols::read(f).ok());
        Read {
            symbols,
            took: t.elapsed(),
        }
    }
}

impl Kallsyms {
    /// Opens kallsyms with the capabilities of now (the kernel shows
    /// addresses by the opener's credentials, so it may be read after
    /// they are dropped), to be read when first needed.
    pub fn open() -> Self {
        let file = std::fs::File::open(KALLSYMS).ok();
        Kallsyms {
            state: std::sync::Mutex::new(Reading::Opened(file)),
            read: std::sync::OnceLock::new(),
        }
    }

    /// Opens kallsyms and starts reading it beside the caller.
    pub fn start() -> Self {
        let k = Kallsyms::open();
        k.read_beside();
        k
    }

    /// Starts reading on a thread of its own, unless it is read or being
    /// read already. A thread inherits its maker's capabilities: a run
    /// calls this after giving up its own, which the read does not need
    /// (the file was opened with them).
    pub fn read_beside(&self) {
        let mut state = self.lock();
        // Called again while being read (a run calls it for every copy-up
        // until one is named), it must leave the thread's handle in place.
        let file = match &mut *state {
            Reading::Opened(file) => file.take(),
            Reading::Beside(_) | Reading::Done => return,
        };
        // The same open file (and so the same opener's credentials), kept
        // in case no thread can be made: the closure takes the other.
        let spare = file.as_ref().and_then(|f| f.try_clone().ok());
        let spawned = std::thread::Builder::new()
            .name("cowtrace-kallsyms".into())
            .spawn(move || Read::from(file));
        *state = match spawned {
            Ok(handle) => Reading::Beside(handle),
            // No thread: read when first needed.
            Err(_) => Reading::Opened(spare),
        };
    }

    /// Neither being read nor read (asked, it gives no symbols).
    #[cfg(test)]
    fn unread() -> Self {
        Kallsyms {
            state: std::sync::Mutex::new(Reading::Opened(None)),
            read: std::sync::OnceLock::new(),
        }
    }

    /// Already read: kallsyms from a string (tests).
    #[cfg(test)]
    fn parsed(text: &str) -> Self {
        let k = Kallsyms::unread();
        let _ = k.read.set(Read {
            symbols: Some(KernelSymbols::parse(text)),
            took: std::time::Duration::ZERO,
        });
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finished(&self) -> &Read {
        self.read.get_or_init(
            || match std::mem::replace(&mut *self.lock(), Reading::Done) {
                Reading::Opened(file) => Read::from(file),
                Reading::Beside(h) => h.join().unwrap_or_else(|_| Read::from(None)),
                Reading::Done => Read::from(None),
            },
        )
    }

    /// The symbols, reading them or waiting for the read to finish if it
    /// has not (None: kallsyms could not be read).
    pub fn get(&self) -> Option<&KernelSymbols> {
        self.finished().symbols.as_ref()
    }

    /// How long the read took, once it was waited for (`--verbose`).
    pub fn took(&self) -> Option<std::time::Duration> {
        self.read.get().map(|r| r.took)
    }
}

/// Overlay's module BTF, where the kernel has it (Debian 6.1 and later).
pub const OVERLAY_BTF: &str = "/sys/kernel/btf/overlay";

/// The kernel's BTF: vmlinux, and the overlay module's if it has one,
/// read by cowtrace's own reader (aya's parse is `loader`'s business).
pub struct KernelBtf {
    pub vmlinux: Btf,
    pub overlay: Option<Btf>,
    /// The attach candidates and [`RETURN_ADDRESS_RECOVERY`] functions
    /// that BTF lists. BTF lists only functions the kernel has a symbol
    /// for, so each of them is in kallsyms too; one it does not list may
    /// still be (5.10 has no module BTF; pahole leaves out functions whose
    /// name two static functions share).
    pub functions: HashSet<&'static str>,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let vmlinux = Btf::from_file("/sys/kernel/btf/vmlinux").context(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux): cowtrace needs CONFIG_DEBUG_INFO_BTF=y",
        )?;
        let overlay = Btf::split_from_file(OVERLAY_BTF, &vmlinux).ok();
        let wanted: HashSet<&'static str> = crate::points::all_candidates()
            .chain(RETURN_ADDRESS_RECOVERY)
            .collect();
        // The split object looks at vmlinux's types too.
        let functions = overlay.as_ref().unwrap_or(&vmlinux).funcs_among(&wanted);
        Ok(Self {
            vmlinux,
            overlay,
            functions,
        })
    }
}

/// Whether the kernel's stack unwinder stops at a return probe's
/// trampoline (then the probes take the stack at an operation's start):
/// not where BTF has a [`RETURN_ADDRESS_RECOVERY`] function; else as
/// kallsyms says, by the trampoline's name.
pub fn unwind_stops_at_kretprobe(btf: &KernelBtf, kallsyms: &Kallsyms) -> bool {
    unwind_stops(&btf.functions, kallsyms)
}

fn unwind_stops(btf_functions: &HashSet<&str>, kallsyms: &Kallsyms) -> bool {
    if RETURN_ADDRESS_RECOVERY
        .iter()
        .any(|f| btf_functions.contains(f))
    {
        return false;
    }
    kallsyms.get().is_some_and(|s| s.unwind_stops_at_kretprobe)
}

/// What kallsyms would say of `function`: where BTF lists it, it is there
/// (kallsyms is not waited for); else as kallsyms says.
fn has_symbol(btf_functions: Option<&HashSet<&str>>, kallsyms: &Kallsyms, function: &str) -> bool {
    btf_functions.is_some_and(|f| f.contains(function))
        || kallsyms.get().is_some_and(|s| s.has(function))
}

/// `vfs_rename` took its flags directly until 5.11, then in a struct.
pub(crate) fn rename_flags(v: &Btf, function: &str, cfg: &mut Config) -> Result<()> {
    let params = v
        .func_params(function)
        .with_context(|| format!("kernel BTF has no {function}"))?;
    if let Some(i) = params
        .iter()
        .position(|p| p.type_desc.is_ptr_to_struct("renamedata"))
    {
        cfg.vfs_rename_flags_arg = i as u32;
        cfg.vfs_rename_flags_off = v
            .member_offset("renamedata", "flags")
            .context("kernel BTF has no renamedata.flags")?;
    } else {
        cfg.vfs_rename_flags_arg =
            v.param_index(function, "flags")
                .ok_or_else(|| anyhow!("{function} has no flags parameter"))? as u32;
        cfg.vfs_rename_flags_off = DIRECT;
    }
    Ok(())
}

/// Computes [`Config`] from BTF: every struct offset the programs use, and
/// the argument positions of the planned points.
pub fn layout(btf: &KernelBtf, plan: &[Result<Planned, Missing>]) -> Result<Config> {
    let v = &btf.vmlinux;
    let off = |s: &str, m: &str| {
        v.member_offset(s, m)
            .with_context(|| format!("kernel BTF has no {s}.{m}"))
    };
    let d_name = off("dentry", "d_name")?;
    let mut cfg = Config {
        dentry_d_parent: off("dentry", "d_parent")?,
        dentry_d_name_name: d_name + off("qstr", "name")?,
        dentry_d_name_len: d_name + off("qstr", "len")?,
        dentry_d_inode: off("dentry", "d_inode")?,
        dentry_d_sb: off("dentry", "d_sb")?,
        inode_i_mode: off("inode", "i_mode")?,
        inode_i_ino: off("inode", "i_ino")?,
        // In an anonymous union with `__i_nlink`.
        inode_i_nlink: off("inode", "i_nlink")?,
        inode_i_sb: off("inode", "i_sb")?,
        sb_s_dev: off("super_block", "s_dev")?,
        sb_s_magic: off("super_block", "s_magic")?,
        file_f_inode: off("file", "f_inode")?,
        kiocb_ki_filp: off("kiocb", "ki_filp")?,
        task_cgroups: off("task_struct", "cgroups")?,
        css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
        cgroup_kn: off("cgroup", "kn")?,
        kernfs_node_name: off("kernfs_node", "name")?,
        // Renamed `__parent` in 6.15 (RCU-protected since).
        kernfs_node_parent: off("kernfs_node", "parent")
            .or_else(|_| off("kernfs_node", "__parent"))?,
        ..Default::default()
    };

    // Argument positions: per point of the plan (see `points::Arg`).
    // With module BTF (6.1 and later in Debian) they come from the
    // prototypes; without it (Debian 5.10) from sound fallbacks.
    crate::points::arg_positions(v, btf.overlay.as_ref(), plan, &mut cfg)?;
    Ok(cfg)
}

/// An attachment whose drop detaches it.
type Link = Box<dyn Send>;

/// Loaded and attached probes. Dropping it detaches everything, one after
/// the other; [`Probes::detach`] does it in parallel.
pub struct Probes {
    /// Held for their Drop; declared first so they go before the programs.
    _kretprobes: Vec<TracefsKretprobe>,
    links: Vec<Link>,
    pub ebpf: Ebpf,
    pub report: ProbeReport,
    /// How long each part of loading and attaching took (`--verbose`).
    pub stages: Vec<(String, std::time::Duration)>,
    /// The kernel verified [`crate::kernel_names::PROGRAM`].
    pub kernel_names: bool,
}

/// The kernel's answers to what [`crate::points::plan`] asks: kallsyms, and
/// a test load of a tracing program (both doctor and the run use this).
pub struct KernelFacts<'a> {
    pub kallsyms: &'a Kallsyms,
    pub btf: Option<&'a KernelBtf>,
}

impl Facts for KernelFacts<'_> {
    /// What kallsyms would say: where BTF lists the function it is there,
    /// and kallsyms is waited for only where BTF does not.
    fn has_symbol(&self, function: &str) -> bool {
        has_symbol(self.btf.map(|b| &b.functions), self.kallsyms, function)
    }

    fn fentry(&self, function: &str) -> std::result::Result<(), String> {
        match self.btf {
            Some(b) => crate::points::fentry_loads(&b.vmlinux, function),
            None => Err("no vmlinux BTF".into()),
        }
    }
}

/// The plan for this kernel and these options (see [`crate::points::plan`]).
pub fn plan(
    kallsyms: &Kallsyms,
    btf: Option<&KernelBtf>,
    opts: &ProbeOptions,
) -> Vec<Result<Planned, Missing>> {
    crate::points::plan(&KernelFacts { kallsyms, btf }, opts.force_kprobes)
}

impl Probes {
    /// Loads the object with this kernel's layout and attaches every point
    /// of `plan` as planned (the plan `doctor` shows). Every program but
    /// the fentry/fexit pair is verified first, two at a time (the kernel
    /// verifies privileged loads in parallel); the pair waits for aya's
    /// BTF, which `prepared` parses meanwhile.
    pub fn attach(
        plan: &[Result<Planned, Missing>],
        kallsyms: &Kallsyms,
        btf: &KernelBtf,
        prepared: &crate::loader::Prepared,
        opts: &ProbeOptions,
    ) -> Result<Self> {
        let mut stages = Vec::new();
        let mut t = std::time::Instant::now();
        let mut lap = |what: String, stages: &mut Vec<_>| {
            let now = std::time::Instant::now();
            stages.push((what, now - t));
            t = now;
        };
        if let Some(m) = plan.iter().find_map(|p| p.as_ref().err()) {
            bail!(
                "attaching {}: the kernel has {m} (overlay not loaded?)",
                m.role
            );
        }
        let mut cfg = layout(btf, plan)?;
        cfg.filter = opts.filter as u32;
        cfg.write_sample_shift = opts.write_sample_shift;
        cfg.stack_at_op_start = unwind_stops_at_kretprobe(btf, kallsyms) as u32;
        lap("layout from BTF".into(), &mut stages);
        let (mut loader, made) = prepared.loader();
        stages.push(("aya's loader made (beside the checks)".into(), made));
        lap("waited for aya's loader".into(), &mut stages);
        // aya-log's level: 0 turns every diagnostic off in the kernel.
        let log_level: u8 = if opts.bpf_log {
            aya_log::Level::Warn as u8
        } else {
            0
        };
        loader
            .override_global("CONFIG", &cfg, true)
            .override_global(aya_log::LEVEL, &log_level, true);
        if let Some(n) = opts.write_keys {
            loader.map_max_entries("WRITES", n);
        }
        let mut ebpf = loader
            .load(PROBES_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object (maps) failed: {e}"))?;
        lap("object parsed, maps created".into(), &mut stages);
        load_in_parallel(&mut ebpf, plan)?;
        lap(
            "kprobe and tracepoint programs verified".into(),
            &mut stages,
        );
        let kernel_names = crate::kernel_names::load(&mut ebpf);
        lap(
            match &kernel_names {
                Ok(()) => "the kernel names copy-up stacks (program verified)".into(),
                Err(e) => format!(
                    "kallsyms names copy-up stacks (the kernel refused the naming program: {e})"
                ),
            },
            &mut stages,
        );
        let mut report = ProbeReport::default();
        let mut att = Attacher {
            tracefs: kretprobe::tracefs(),
            kretprobes: Vec::new(),
            links: Vec::new(),
        };
        if let Some(t) = &att.tracefs {
            kretprobe::remove_stale(t);
        }
        // fentry last: aya's BTF is parsed meanwhile.
        let (fentry, others): (Vec<&Planned>, Vec<&Planned>) = plan
            .iter()
            .flatten()
            .partition(|p| p.method == Method::FentryFexit);
        let mut aya_btf = None;
        for planned in others.into_iter().chain(fentry) {
            if planned.method == Method::FentryFexit && aya_btf.is_none() {
                let (b, took) = prepared.btf();
                stages.push(("aya's vmlinux BTF parsed (beside)".into(), took));
                lap("waited for aya's BTF".into(), &mut stages);
                aya_btf = Some(b);
            }
            let attached = att
                .attach_point(
                    &mut ebpf,
                    planned,
                    aya_btf.as_ref().and_then(|b| b.as_ref()),
                )
                .with_context(|| format!("attaching {}", planned.point.role))?;
            lap(
                format!(
                    "{} attached ({} on {})",
                    attached.role, attached.method, attached.function
                ),
                &mut stages,
            );
            report.points.push(attached);
        }
        // The JSON lists points in the table's order.
        report.points.sort_by_key(|a| {
            crate::points::POINTS
                .iter()
                .position(|p| p.role == a.role)
                .unwrap_or(usize::MAX)
        });
        Ok(Self {
            _kretprobes: att.kretprobes,
            links: att.links,
            ebpf,
            report,
            stages,
            kernel_names: kernel_names.is_ok(),
        })
    }

    /// Ends the run in the kernel: no program adds an event, a drop or a
    /// write from now on (they stay attached until [`Probes::detach`]).
    pub fn stop_events(&mut self) -> Result<()> {
        let map = self.ebpf.map_mut("STOP").context("STOP map")?;
        let mut stop: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
        stop.set(0, 1, 0).context("setting STOP")?;
        Ok(())
    }

    /// Detaches every probe at once. Each detach waits for the kernel
    /// (an RCU grace period to unregister a kprobe, a trampoline update for
    /// fentry/fexit); one after the other they took 4.8 s on a busy 2-CPU
    /// guest, side by side they overlap.
    pub fn detach(self) {
        let Probes {
            _kretprobes,
            links,
            ebpf,
            ..
        } = self;
        std::thread::scope(|s| {
            let mut inline: Vec<Link> = Vec::new();
            for k in _kretprobes {
                let k: Link = Box::new(k);
                if let Some(k) = spawn_drop(s, k) {
                    inline.push(k);
                }
            }
            for l in links {
                if let Some(l) = spawn_drop(s, l) {
                    inline.push(l);
                }
            }
            // Where no thread could be made, here and now.
            drop(inline);
        });
        drop(ebpf);
    }
}

/// Drops `l` on a new scoped thread; gives it back if none can be made.
fn spawn_drop<'s>(s: &'s std::thread::Scope<'s, '_>, l: Link) -> Option<Link> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(l)));
    let theirs = slot.clone();
    match std::thread::Builder::new()
        .name("cowtrace-detach".into())
        .spawn_scoped(s, move || {
            let l = theirs.lock().ok().and_then(|mut g| g.take());
            drop(l);
        }) {
        Ok(_) => None,
        Err(_) => slot.lock().ok().and_then(|mut g| g.take()),
    }
}

/// Attaches points one by one, keeping what must live as long as they do.
struct Attacher {
    /// Return probes go through tracefs when it is mounted (see
    /// [`kretprobe`]); otherwise through perf with the kernel's default
    /// number of instances.
    tracefs: Option<std::path::PathBuf>,
    kretprobes: Vec<TracefsKretprobe>,
    links: Vec<Link>,
}

impl Attacher {
    /// Attaches one planned point, exactly as planned: a planned fentry
    /// that fails here is an error, not a silent kprobe (doctor said fentry).
    fn attach_point(
        &mut self,
        ebpf: &mut Ebpf,
        planned: &Planned,
        btf: Option<&aya::Btf>,
    ) -> Result<AttachedPoint> {
        let function = planned.function.as_str();
        let done = |method: String| AttachedPoint {
            role: planned.point.role,
            function: function.to_string(),
            method,
        };
        match (&planned.point.probe, planned.method) {
            (Probe::Kprobe { entry }, Method::Kprobe) => {
                self.links.push(kprobe(ebpf, entry, function)?);
                Ok(done(Method::Kprobe.key().into()))
            }
            (Probe::KprobePair { entry, ret }, Method::KprobeKretprobe) => {
                self.links.push(kprobe(ebpf, entry, function)?);
                let how = self.kretprobe(ebpf, ret, function)?;
                Ok(done(format!("kprobe+{how}")))
            }
            (Probe::Traced { fentry, fexit, .. }, Method::FentryFexit) => {
                let btf = btf
                    .ok_or_else(|| anyhow!("fentry planned but aya could not read vmlinux BTF"))?;
                let hint = "(--kprobes-only avoids fentry)";
                self.links.push(
                    fentry_attach(ebpf, fentry, function, btf)
                        .with_context(|| format!("fentry {hint}"))?,
                );
                self.links.push(
                    fexit_attach(ebpf, fexit, function, btf)
                        .with_context(|| format!("fexit {hint}"))?,
                );
                Ok(done(Method::FentryFexit.key().into()))
            }
            (
                Probe::Tracepoint {
                    category,
                    name,
                    program: prog,
                },
                Method::Tracepoint,
            ) => {
                let p: &mut TracePoint = program(ebpf, prog)?;
                let id = p
                    .attach(category, name)
                    .map_err(|e| anyhow!("tracepoint {category}:{name}: {e}"))?;
                self.links.push(Box::new(p.take_link(id)?));
                Ok(done(Method::Tracepoint.key().into()))
            }
            (_, m) => bail!("{} cannot be attached by {}", planned.point.role, m.key()),
        }
    }

    /// Returns the method used: `kretprobe` (tracefs, many instances) or
    /// `kretprobe(perf)` (kernel default instances).
    fn kretprobe(&mut self, ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<&'static str> {
        let p: &mut KProbe = program(ebpf, prog)?;
        if let Some(t) = &self.tracefs {
            use std::os::fd::{AsFd, AsRawFd};
            let fd = p.fd()?.as_fd().as_raw_fd();
            match TracefsKretprobe::attach(t, function, fd) {
                Ok(k) => {
                    self.kretprobes.push(k);
                    return Ok("kretprobe");
                }
                Err(e) => crate::output::err_line(&format!(
                    "cowtrace: warning: {e:#}; using a perf kretprobe (may miss returns under load)"
                )),
            }
        }
        let id = p
            .attach(function, 0)
            .map_err(|e| anyhow!("kretprobe on {function}: {e}"))?;
        self.links.push(Box::new(p.take_link(id)?));
        Ok("kretprobe(perf)")
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.try_into()?)
}

/// Verifies every kprobe and tracepoint program of `plan`, on two threads
/// (each program is loaded once; attaching them follows). The threads
/// take the programs from one queue, biggest first: the verifier's work
/// grows with a program's size, and the biggest (6.1: 23k of the 48k
/// instructions it walks) takes a thread's whole share, so dealing the
/// programs out in aya's (random) order could leave one thread with two
/// thirds of the work.
fn load_in_parallel(ebpf: &mut Ebpf, plan: &[Result<Planned, Missing>]) -> Result<()> {
    use aya::programs::Program;
    let wanted: HashSet<&str> = plan
        .iter()
        .flatten()
        .flat_map(|p| match &p.point.probe {
            Probe::Kprobe { entry } => vec![*entry],
            Probe::KprobePair { entry, ret } => vec![*entry, *ret],
            Probe::Tracepoint { program, .. } => vec![*program],
            Probe::Traced { .. } => vec![],
        })
        .collect();
    let sizes = program_sizes(PROBES_OBJECT);
    let mut progs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| wanted.contains(name))
        .collect();
    progs.sort_by_key(|(name, _)| std::cmp::Reverse(sizes.get(*name).copied().unwrap_or(0)));
    let queue = std::sync::Mutex::new(progs.into_iter());
    let load_all = || -> Result<()> {
        loop {
            // Taken and released before verifying, so the other thread
            // can take the next one meanwhile.
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some((name, p)) = next else {
                return Ok(());
            };
            let r = match p {
                Program::KProbe(k) => k.load(),
                Program::TracePoint(t) => t.load(),
                _ => continue,
            };
            r.map_err(|e| anyhow!("loading {name}: {}", verifier_error(&e)))?;
        }
    };
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("cowtrace-verify".into())
            .spawn_scoped(s, load_all);
        let mine = load_all();
        match other {
            Ok(h) => h
                .join()
                .map_err(|_| anyhow!("a verifying thread panicked"))??,
            Err(e) => bail!("no thread to verify programs on: {e}"),
        }
        mine
    })
}

/// Each program's size in bytes, by the function symbol that bears its
/// name in the object (empty if the object does not parse: the order is
/// then aya's).
fn program_sizes(object: &[u8]) -> std::collections::HashMap<String, u64> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let Ok(file) = object::File::parse(object) else {
        return Default::default();
    };
    file.symbols()
        .filter(|s| s.kind() == SymbolKind::Text)
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.size())))
        .collect()
}

/// Attaches an already loaded kprobe program.
fn kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<Link> {
    let p: &mut KProbe = program(ebpf, prog)?;
    let id = p
        .attach(function, 0)
        .map_err(|e| anyhow!("kprobe on {function}: {e}"))?;
    Ok(Box::new(p.take_link(id)?))
}

fn fentry_attach(ebpf: &mut Ebpf, prog: &str, function: &str, btf: &aya::Btf) -> Result<Link> {
    let p: &mut FEntry = program(ebpf, prog)?;
    p.load(function, btf)
        .map_err(|e| anyhow!("loading {prog}: {}", verifier_error(&e)))?;
    let id = p
        .attach()
        .map_err(|e| anyhow!("fentry on {function}: {e}"))?;
    Ok(Box::new(p.take_link(id)?))
}

fn fexit_attach(ebpf: &mut Ebpf, prog: &str, function: &str, btf: &aya::Btf) -> Result<Link> {
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(function, btf)
        .map_err(|e| anyhow!("loading {prog}: {}", verifier_error(&e)))?;
    let id = p
        .attach()
        .map_err(|e| anyhow!("fexit on {function}: {e}"))?;
    Ok(Box::new(p.take_link(id)?))
}

/// Keeps the verifier log's last lines: the whole log is pages long.
fn verifier_error(e: &aya::programs::ProgramError) -> String {
    let text = format!("{e:#}");
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.len().saturating_sub(12);
    lines[tail..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::points::ProgramKind;
    use aya_obj::ProgramSection;

    /// The loader is given no target BTF (`loader`): that is only sound
    /// while the object has no CO-RE relocation, i.e. relocating it against
    /// an empty BTF changes no instruction.
    #[test]
    fn the_object_needs_no_target_btf() {
        let mut obj = aya_obj::Object::parse(PROBES_OBJECT).expect("the embedded object parses");
        let before = format!("{:?}", obj.functions);
        obj.relocate_btf(&aya_obj::btf::Btf::new())
            .expect("nothing to relocate");
        assert_eq!(before, format!("{:?}", obj.functions));
    }

    /// The table names programs; the object defines them: both must list
    /// the same programs, each of the kind the table attaches it as.
    #[test]
    fn the_attach_point_table_and_the_objects_programs_agree() {
        let obj = aya_obj::Object::parse(PROBES_OBJECT).expect("the embedded object parses");
        let table = crate::points::programs();
        for (name, kind) in &table {
            let p = obj.programs.get(*name).unwrap_or_else(|| {
                panic!("the table names {name}, the object has no such program")
            });
            let matches = matches!(
                (kind, &p.section),
                (ProgramKind::Kprobe, ProgramSection::KProbe)
                    | (ProgramKind::Kretprobe, ProgramSection::KRetProbe)
                    | (ProgramKind::Fentry, ProgramSection::FEntry { .. })
                    | (ProgramKind::Fexit, ProgramSection::FExit { .. })
                    | (ProgramKind::Tracepoint, ProgramSection::TracePoint)
            );
            assert!(
                matches,
                "{name}: the table attaches it as {kind:?}, the object has {:?}",
                p.section
            );
        }
        for name in obj.programs.keys() {
            assert!(
                table.iter().any(|(n, _)| n == name) || name == crate::kernel_names::PROGRAM,
                "the object's program {name} is in no attach point"
            );
        }
    }

    #[test]
    fn each_programs_size_is_its_instructions() {
        let obj = aya_obj::Object::parse(PROBES_OBJECT).expect("the embedded object parses");
        let sizes = program_sizes(PROBES_OBJECT);
        for (name, p) in &obj.programs {
            let insns = obj.functions[&p.function_key()].instructions.len() as u64;
            assert_eq!(sizes.get(name), Some(&(insns * 8)), "{name}");
        }
    }

    #[test]
    fn btf_answers_for_the_functions_it_lists_and_kallsyms_for_the_others() {
        let btf: HashSet<&str> = ["ovl_copy_up_one"].into();
        // Listed by BTF: there, without kallsyms.
        assert!(has_symbol(
            Some(&btf),
            &Kallsyms::unread(),
            "ovl_copy_up_one"
        ));
        // Not listed: kallsyms says, either way.
        assert!(!has_symbol(
            Some(&btf),
            &Kallsyms::unread(),
            "ovl_copy_up_file"
        ));
        let k = Kallsyms::parsed("ffffffffc0000000 t ovl_copy_up_file\t[overlay]\n");
        assert!(has_symbol(Some(&btf), &k, "ovl_copy_up_file"));
        assert!(has_symbol(None, &k, "ovl_copy_up_file"));
        assert!(!has_symbol(None, &k, "ovl_copy_up_one"));
    }

    /// A run asks for the read at every copy-up until one is named: asking
    /// again while the thread reads must not lose what it reads.
    #[test]
    fn reading_kallsyms_asked_again_while_it_reads_still_gives_the_symbols() {
        let path = std::env::temp_dir().join(format!("cowtrace-kallsyms-{}", std::process::id()));
        std::fs::write(&path, "ffffffffc0000000 t ovl_open\t[overlay]\n").unwrap();
        let k = Kallsyms {
            state: std::sync::Mutex::new(Reading::Opened(Some(
                std::fs::File::open(&path).unwrap(),
            ))),
            read: std::sync::OnceLock::new(),
        };
        std::fs::remove_file(&path).unwrap();
        for _ in 0..3 {
            k.read_beside();
        }
        let symbols = k.get().expect("the symbols read on the thread");
        assert_eq!(symbols.table.resolve(0xffffffffc0000010), Some("ovl_open"));
    }

    #[test]
    fn a_kernel_whose_btf_has_the_return_address_recovery_does_not_stop_at_the_trampoline() {
        let old = Kallsyms::parsed("ffffffff81000000 T kretprobe_trampoline\n");
        assert!(unwind_stops(&HashSet::new(), &old));
        for f in RETURN_ADDRESS_RECOVERY {
            assert!(!unwind_stops(&[f].into(), &Kallsyms::unread()));
        }
        let new = Kallsyms::parsed("ffffffff81000000 T __kretprobe_trampoline\n");
        assert!(!unwind_stops(&HashSet::new(), &new));
    }

    #[test]
    fn the_old_kretprobe_trampoline_name_means_the_unwinder_stops_there() {
        let old = KernelSymbols::parse("ffffffff81000000 T kretprobe_trampoline\n");
        assert!(old.unwind_stops_at_kretprobe);
        let new = KernelSymbols::parse("ffffffff81000000 T __kretprobe_trampoline\n");
        assert!(!new.unwind_stops_at_kretprobe);
        let rethook = KernelSymbols::parse("ffffffff81000000 T arch_rethook_trampoline\n");
        assert!(!rethook.unwind_stops_at_kretprobe);
    }
}
