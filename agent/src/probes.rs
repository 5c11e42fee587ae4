//! Loading and attaching the kernel side, chosen by what the running kernel
//! has (the libbpf-tools way: fentry where it works, kprobe otherwise).
//!
//! Everything kernel-specific is decided here and only here: struct offsets
//! and argument positions come from the running kernel's BTF ([`layout`]),
//! each attach point picks a symbol that exists and a method that works, and
//! the result is described in a [`ProbeReport`] for `doctor` and the JSON.

use crate::btf::Btf;
use crate::kallsyms::SymbolsBuilder;
use crate::kretprobe::{self, TracefsKretprobe};
use agent_ebpf::{Config, DIRECT};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{FEntry, FExit, KProbe, TracePoint},
    Ebpf, EbpfLoader,
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
        use std::io::BufRead;
        let file = std::fs::File::open("/proc/kallsyms").context("reading /proc/kallsyms")?;
        let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
        let mut scan = Scan::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader
                .read_line(&mut line)
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
            scan.line(line);
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
    present: HashSet<String>,
    table: SymbolsBuilder<fn(&str, Option<&str>) -> bool>,
}

impl Scan {
    fn new() -> Self {
        Self {
            wanted: POINTS
                .iter()
                .chain([&WRITE_FALLBACK])
                .flat_map(|p| p.candidates.iter().copied())
                .collect(),
            present: HashSet::new(),
            table: SymbolsBuilder::new(crate::kallsyms::default_keep),
        }
    }

    fn line(&mut self, line: &str) {
        let mut it = line.split_whitespace();
        if let (Some(_addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) {
            if matches!(ty, "t" | "T")
                && (self.wanted.contains(name) || name == OLD_KRETPROBE_TRAMPOLINE)
            {
                self.present.insert(name.to_string());
            }
        }
        self.table.line(line);
    }

    fn finish(self) -> KernelSymbols {
        KernelSymbols {
            unwind_stops_at_kretprobe: self.present.contains(OLD_KRETPROBE_TRAMPOLINE),
            present: self.present,
            table: self.table.finish(),
        }
    }
}

/// Renamed `__kretprobe_trampoline` in 5.15, when x86's unwinder learnt to
/// see through it.
const OLD_KRETPROBE_TRAMPOLINE: &str = "kretprobe_trampoline";

/// The kernel's BTF: vmlinux, and the overlay module's if it has one.
pub struct KernelBtf {
    pub vmlinux: Btf,
    pub overlay: Option<Btf>,
    /// vmlinux BTF once more, as aya's loader needs it (its own type):
    /// parsed on another thread while ours is, and only once.
    pub loader: Option<aya::Btf>,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        std::thread::scope(|s| {
            let loader = s.spawn(|| aya::Btf::from_sys_fs().ok());
            let vmlinux = Btf::from_file("/sys/kernel/btf/vmlinux").context(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): cowtrace needs CONFIG_DEBUG_INFO_BTF=y",
            )?;
            let overlay = Btf::split_from_file("/sys/kernel/btf/overlay", &vmlinux).ok();
            let loader = loader.join().ok().flatten();
            Ok(Self {
                vmlinux,
                overlay,
                loader,
            })
        })
    }
}

/// Computes [`Config`] from BTF: every offset and argument position the
/// programs use.
pub fn layout(btf: &KernelBtf) -> Result<Config> {
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

    // Overlay's own functions. With module BTF (6.1 and later in Debian)
    // positions come from their prototypes. Without it (Debian 5.10 builds
    // no module BTF) two sound sources remain: the VFS operation tables in
    // vmlinux BTF fix the prototypes of ovl_rename and ovl_mkdir (they are
    // assigned to inode_operations.rename/.mkdir), and the internal copy-up
    // and remove helpers have had the same parameter order in every kernel
    // from 4.19 to 7.2 (checked against module BTF by the guest tests).
    let ovl = btf.overlay.as_ref();
    let ovl_param = |func: &str, name: &str, fallback: u32| -> u32 {
        ovl.and_then(|b| b.param_index(func, name))
            .map(|i| i as u32)
            .unwrap_or(fallback)
    };
    cfg.copy_up_flags_dentry_arg = ovl_param("ovl_copy_up_flags", "dentry", 0);
    cfg.copy_up_one_dentry_arg = ovl_param("ovl_copy_up_one", "dentry", 1);
    cfg.copy_data_len_arg = 3;
    cfg.do_remove_dentry_arg = ovl_param("ovl_do_remove", "dentry", 0);
    cfg.do_remove_is_dir_arg = ovl_param("ovl_do_remove", "is_dir", 1);

    let iop_dentries = |member: &str| -> Result<Vec<u32>> {
        let pos = v
            .member_fn_ptr_param_positions("inode_operations", member, "dentry")
            .with_context(|| format!("kernel BTF has no inode_operations.{member}"))?;
        Ok(pos.into_iter().map(|p| p as u32).collect())
    };
    match ovl.and_then(|b| {
        Some((
            b.param_index("ovl_rename", "old")?,
            b.param_index("ovl_rename", "new")?,
        ))
    }) {
        Some((o, n)) => {
            cfg.rename_old_arg = o as u32;
            cfg.rename_new_arg = n as u32;
        }
        None => {
            let d = iop_dentries("rename")?;
            if d.len() < 2 {
                bail!("inode_operations.rename has fewer than two dentry parameters");
            }
            cfg.rename_old_arg = d[0];
            cfg.rename_new_arg = d[1];
        }
    }
    cfg.mkdir_dentry_arg = match ovl.and_then(|b| b.param_index("ovl_mkdir", "dentry")) {
        Some(i) => i as u32,
        None => *iop_dentries("mkdir")?
            .first()
            .ok_or_else(|| anyhow!("inode_operations.mkdir has no dentry parameter"))?,
    };

    // vfs_rename took its flags directly until 5.11, then in a struct.
    let params = v
        .func_params("vfs_rename")
        .context("kernel BTF has no vfs_rename")?;
    if let Some(i) = params
        .iter()
        .position(|p| p.type_desc.is_ptr_to_struct("renamedata"))
    {
        cfg.vfs_rename_flags_arg = i as u32;
        cfg.vfs_rename_flags_off = off("renamedata", "flags")?;
    } else {
        cfg.vfs_rename_flags_arg =
            v.param_index("vfs_rename", "flags")
                .ok_or_else(|| anyhow!("vfs_rename has no flags parameter"))? as u32;
        cfg.vfs_rename_flags_off = DIRECT;
    }
    cfg.vfs_setxattr_name_arg =
        v.param_index("vfs_setxattr", "name")
            .ok_or_else(|| anyhow!("vfs_setxattr has no name parameter"))? as u32;
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
    pub stages: Vec<(&'static str, std::time::Duration)>,
}

/// One attach point: which programs, which kernel functions to try in order.
struct Point {
    role: &'static str,
    candidates: &'static [&'static str],
    kind: PointKind,
}

enum PointKind {
    /// kprobe only: module functions (stock aya cannot fentry into modules)
    /// and vmlinux functions where fentry does not fit (see each point).
    Kprobe { entry: &'static str },
    KprobePair {
        entry: &'static str,
        ret: &'static str,
    },
    /// fentry+fexit where vmlinux BTF has the function, else `fallback`.
    TracedPair {
        fentry: &'static str,
        fexit: &'static str,
        fallback: &'static Point,
    },
}

static WRITE_FALLBACK: Point = Point {
    role: "write",
    candidates: &["ovl_write_iter"],
    kind: PointKind::KprobePair {
        entry: "ovl_write_iter",
        ret: "ovl_write_iter_ret",
    },
};

static POINTS: &[Point] = &[
    Point {
        role: "copy_up_operation",
        candidates: &["ovl_copy_up_flags"],
        kind: PointKind::Kprobe {
            entry: "ovl_copy_up_flags",
        },
    },
    Point {
        role: "copy_up_object",
        candidates: &["ovl_copy_up_one"],
        kind: PointKind::KprobePair {
            entry: "ovl_copy_up_one",
            ret: "ovl_copy_up_one_ret",
        },
    },
    Point {
        role: "copy_up_data",
        candidates: &["ovl_copy_up_file", "ovl_copy_up_data"],
        kind: PointKind::Kprobe {
            entry: "ovl_copy_up_data",
        },
    },
    Point {
        role: "copy_up_done",
        candidates: &["security_inode_copy_up"],
        // kprobe: see the program's comment (fentry misses under preemption).
        kind: PointKind::Kprobe {
            entry: "security_inode_copy_up",
        },
    },
    Point {
        role: "remove",
        candidates: &["ovl_do_remove"],
        // No return probe: see the program's comment.
        kind: PointKind::Kprobe {
            entry: "ovl_do_remove",
        },
    },
    Point {
        role: "remove_end",
        // A remove's end, before `index=on` cleans up its index entry
        // (see the program's comment).
        candidates: &["ovl_nlink_end"],
        kind: PointKind::Kprobe {
            entry: "ovl_nlink_end",
        },
    },
    Point {
        role: "whiteout",
        candidates: &["ovl_cleanup_and_whiteout"],
        kind: PointKind::Kprobe {
            entry: "ovl_cleanup_and_whiteout",
        },
    },
    Point {
        role: "rename",
        candidates: &["ovl_rename"],
        kind: PointKind::KprobePair {
            entry: "ovl_rename",
            ret: "ovl_rename_ret",
        },
    },
    Point {
        role: "rename_whiteout",
        candidates: &["vfs_rename"],
        // kprobe even where fentry works: the argument holding the flags
        // moved between kernels, and tracing contexts only allow constant
        // argument positions. Renames are rare, so the cost is irrelevant.
        kind: PointKind::Kprobe {
            entry: "vfs_rename",
        },
    },
    Point {
        role: "mkdir",
        candidates: &["ovl_mkdir"],
        kind: PointKind::KprobePair {
            entry: "ovl_mkdir",
            ret: "ovl_mkdir_ret",
        },
    },
    Point {
        role: "opaque_dir",
        candidates: &["vfs_setxattr"],
        // kprobe for the same reason as vfs_rename.
        kind: PointKind::Kprobe {
            entry: "vfs_setxattr",
        },
    },
    Point {
        role: "write",
        candidates: &["vfs_write"],
        kind: PointKind::TracedPair {
            fentry: "vfs_write_fentry",
            fexit: "vfs_write_fexit",
            fallback: &WRITE_FALLBACK,
        },
    },
];

/// What `doctor` shows before anything is loaded: the plan per point.
pub fn plan(
    syms: &KernelSymbols,
    btf: Option<&KernelBtf>,
    opts: &ProbeOptions,
) -> Vec<AttachedPoint> {
    POINTS
        .iter()
        .map(|p| {
            let function = p.candidates.iter().find(|c| syms.has(c));
            let Some(function) = function else {
                return AttachedPoint {
                    role: p.role,
                    function: format!("none of {} (inlined or missing)", p.candidates.join(", ")),
                    method: "unavailable".into(),
                };
            };
            let fentry_ok =
                !opts.force_kprobes && btf.is_some_and(|b| b.vmlinux.has_func(function));
            let method = match &p.kind {
                PointKind::Kprobe { .. } => "kprobe",
                PointKind::KprobePair { .. } => "kprobe+kretprobe",
                PointKind::TracedPair { .. } if fentry_ok => "fentry+fexit",
                PointKind::TracedPair { fallback, .. } => {
                    return AttachedPoint {
                        role: p.role,
                        function: fallback.candidates[0].to_string(),
                        method: "kprobe+kretprobe".into(),
                    }
                }
            };
            AttachedPoint {
                role: p.role,
                function: function.to_string(),
                method: method.into(),
            }
        })
        .collect()
}

impl Probes {
    /// Loads the object with this kernel's layout and attaches every point.
    pub fn attach(syms: &KernelSymbols, btf: &KernelBtf, opts: &ProbeOptions) -> Result<Self> {
        let mut stages = Vec::new();
        let mut t = std::time::Instant::now();
        let mut lap = |what: &'static str, stages: &mut Vec<_>| {
            let now = std::time::Instant::now();
            stages.push((what, now - t));
            t = now;
        };
        let mut cfg = layout(btf)?;
        cfg.filter = opts.filter as u32;
        cfg.write_sample_shift = opts.write_sample_shift;
        cfg.stack_at_op_start = syms.unwind_stops_at_kretprobe as u32;
        lap("layout from BTF", &mut stages);
        let aya_btf = btf.loader.as_ref();
        let mut loader = EbpfLoader::new();
        // aya-log's level: 0 turns every diagnostic off in the kernel.
        let log_level: u8 = if opts.bpf_log {
            aya_log::Level::Warn as u8
        } else {
            0
        };
        loader
            .btf(aya_btf)
            .override_global("CONFIG", &cfg, true)
            .override_global(aya_log::LEVEL, &log_level, true);
        if let Some(n) = opts.write_keys {
            loader.map_max_entries("WRITES", n);
        }
        let mut ebpf = loader
            .load(PROBES_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object (maps) failed: {e}"))?;
        lap("maps created", &mut stages);
        let mut report = ProbeReport::default();
        let mut att = Attacher {
            syms,
            btf: aya_btf,
            opts,
            tracefs: kretprobe::tracefs(),
            kretprobes: Vec::new(),
            links: Vec::new(),
        };
        if let Some(t) = &att.tracefs {
            kretprobe::remove_stale(t);
        }
        for point in POINTS {
            let attached = att
                .attach_point(&mut ebpf, point)
                .with_context(|| format!("attaching {}", point.role))?;
            report.points.push(attached);
        }
        att.links.push(thread_exit(&mut ebpf)?);
        report.points.push(AttachedPoint {
            role: "thread_exit",
            function: "sched:sched_process_exit".into(),
            method: "tracepoint".into(),
        });
        lap("programs verified and attached", &mut stages);
        Ok(Self {
            _kretprobes: att.kretprobes,
            links: att.links,
            ebpf,
            report,
            stages,
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
struct Attacher<'a> {
    syms: &'a KernelSymbols,
    btf: Option<&'a aya::Btf>,
    opts: &'a ProbeOptions,
    /// Return probes go through tracefs when it is mounted (see
    /// [`kretprobe`]); otherwise through perf with the kernel's default
    /// number of instances.
    tracefs: Option<std::path::PathBuf>,
    kretprobes: Vec<TracefsKretprobe>,
    links: Vec<Link>,
}

impl Attacher<'_> {
    fn attach_point(&mut self, ebpf: &mut Ebpf, point: &Point) -> Result<AttachedPoint> {
        let function = point
            .candidates
            .iter()
            .find(|c| self.syms.has(c))
            .ok_or_else(|| {
                anyhow!(
                    "the kernel has none of {} (inlined or overlay not loaded)",
                    point.candidates.join(", ")
                )
            })?;
        let done = |method: &str| AttachedPoint {
            role: point.role,
            function: function.to_string(),
            method: method.into(),
        };
        match &point.kind {
            PointKind::Kprobe { entry } => {
                self.links.push(kprobe(ebpf, entry, function)?);
                Ok(done("kprobe"))
            }
            PointKind::KprobePair { entry, ret } => {
                self.links.push(kprobe(ebpf, entry, function)?);
                let method = self.kretprobe(ebpf, ret, function)?;
                Ok(done(&format!("kprobe+{method}")))
            }
            PointKind::TracedPair {
                fentry,
                fexit,
                fallback,
            } => {
                if let (false, Some(btf)) = (self.opts.force_kprobes, self.btf) {
                    if let Ok(l) = fentry_attach(ebpf, fentry, function, btf) {
                        self.links.push(l);
                        self.links.push(fexit_attach(ebpf, fexit, function, btf)?);
                        return Ok(done("fentry+fexit"));
                    }
                }
                self.attach_point(ebpf, fallback)
            }
        }
    }

    /// Returns the method used: `kretprobe` (tracefs, many instances) or
    /// `kretprobe(perf)` (kernel default instances).
    fn kretprobe(&mut self, ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<&'static str> {
        let p: &mut KProbe = program(ebpf, prog)?;
        p.load()
            .map_err(|e| anyhow!("loading {prog}: {}", verifier_error(&e)))?;
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

fn kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<Link> {
    let p: &mut KProbe = program(ebpf, prog)?;
    p.load()
        .map_err(|e| anyhow!("loading {prog}: {}", verifier_error(&e)))?;
    let id = p
        .attach(function, 0)
        .map_err(|e| anyhow!("kprobe on {function}: {e}"))?;
    Ok(Box::new(p.take_link(id)?))
}

/// Per-thread state is released when a thread exits (see the program).
fn thread_exit(ebpf: &mut Ebpf) -> Result<Link> {
    let p: &mut TracePoint = program(ebpf, "sched_process_exit")?;
    p.load()
        .map_err(|e| anyhow!("loading sched_process_exit: {}", verifier_error(&e)))?;
    let id = p
        .attach("sched", "sched_process_exit")
        .map_err(|e| anyhow!("tracepoint sched:sched_process_exit: {e}"))?;
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

/// Whether this kernel loads BPF tracing programs (fentry/fexit).
pub fn tracing_programs_supported() -> Result<bool> {
    Ok(aya::sys::is_program_supported(
        aya::programs::ProgramType::Tracing,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
