//! The attach points: one table ([`POINTS`]) that says, for each thing
//! cowtrace observes, which kernel functions to try, which programs of the
//! eBPF object run there and how they attach, and which [`Config`] argument
//! positions those programs read. `cowtrace doctor`'s plan, the run's
//! attach and the layout all come from [`plan`] over this table; a host
//! test (`probes::tests`) checks it against the object's programs.
//!
//! Struct offsets are not per point: every program reads the same dentry,
//! inode and cgroup fields through shared helpers ([`crate::probes::layout`]).

use crate::btf::{Btf, Kind};
use agent_ebpf::Config;
use std::fmt;

/// One attach point.
pub struct Point {
    /// What it observes, e.g. `copy_up_object` (the JSON's `probes[].role`).
    pub role: &'static str,
    /// Kernel functions, tried in order: the first kallsyms lists is used.
    /// Empty for a tracepoint.
    pub candidates: &'static [&'static str],
    pub probe: Probe,
    /// The argument positions its programs read from `Config`.
    pub args: &'static [Arg],
}

/// Which programs run at a point, and how they attach.
pub enum Probe {
    /// kprobe only: module functions (stock aya cannot fentry into modules)
    /// and vmlinux functions where fentry does not fit (see each point).
    Kprobe { entry: &'static str },
    KprobePair {
        entry: &'static str,
        ret: &'static str,
    },
    /// fentry+fexit where the function can be traced that way (see
    /// [`plan`]), else `fallback`.
    Traced {
        fentry: &'static str,
        fexit: &'static str,
        fallback: &'static Point,
    },
    Tracepoint {
        category: &'static str,
        name: &'static str,
        program: &'static str,
    },
}

/// How a program is attached; its `key` is what doctor and the JSON say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Kprobe,
    KprobeKretprobe,
    FentryFexit,
    Tracepoint,
}

impl Method {
    pub fn key(self) -> &'static str {
        match self {
            Method::Kprobe => "kprobe",
            Method::KprobeKretprobe => "kprobe+kretprobe",
            Method::FentryFexit => "fentry+fexit",
            Method::Tracepoint => "tracepoint",
        }
    }
}

/// Where one of a program's argument positions comes from.
pub enum Arg {
    /// The position of parameter `param` in the attached function's
    /// prototype (module BTF for overlay's functions, vmlinux BTF for the
    /// VFS'), else `fallback`.
    Position {
        param: &'static str,
        field: fn(&mut Config) -> &mut u32,
        fallback: Fallback,
    },
    /// `vfs_rename`'s flags: a parameter until 5.11, then a member of the
    /// `struct renamedata` it takes ([`crate::probes::layout`]).
    RenameFlags,
}

/// Where a prototype is not in BTF (Debian 5.10 builds no module BTF).
#[derive(Clone, Copy, Debug)]
pub enum Fallback {
    /// The same position in every kernel from 4.19 to 7.2 (checked against
    /// module BTF by the guest test `fallback_argument_positions_match_module_btf`).
    Fixed(u32),
    /// The `nth` dentry parameter of `inode_operations.<member>` in vmlinux
    /// BTF: overlay assigns the function to that member, so its prototype
    /// is the member's.
    OpsDentry { member: &'static str, nth: usize },
    /// None: a vmlinux function, whose prototype BTF always has.
    Required,
}

/// `--kprobes-only`'s write point, and the write point's fallback where
/// fentry cannot trace `vfs_write`.
pub static WRITE_FALLBACK: Point = Point {
    role: "write",
    candidates: &["ovl_write_iter"],
    probe: Probe::KprobePair {
        entry: "ovl_write_iter",
        ret: "ovl_write_iter_ret",
    },
    args: &[],
};

pub static POINTS: &[Point] = &[
    Point {
        role: "copy_up_operation",
        candidates: &["ovl_copy_up_flags"],
        probe: Probe::Kprobe {
            entry: "ovl_copy_up_flags",
        },
        args: &[Arg::Position {
            param: "dentry",
            field: |c| &mut c.copy_up_flags_dentry_arg,
            fallback: Fallback::Fixed(0),
        }],
    },
    Point {
        role: "copy_up_object",
        candidates: &["ovl_copy_up_one"],
        probe: Probe::KprobePair {
            entry: "ovl_copy_up_one",
            ret: "ovl_copy_up_one_ret",
        },
        args: &[Arg::Position {
            param: "dentry",
            field: |c| &mut c.copy_up_one_dentry_arg,
            fallback: Fallback::Fixed(1),
        }],
    },
    Point {
        role: "copy_up_data",
        candidates: &["ovl_copy_up_file", "ovl_copy_up_data"],
        probe: Probe::Kprobe {
            entry: "ovl_copy_up_data",
        },
        args: &[Arg::Position {
            param: "len",
            field: |c| &mut c.copy_data_len_arg,
            fallback: Fallback::Fixed(3),
        }],
    },
    Point {
        role: "copy_up_done",
        candidates: &["security_inode_copy_up"],
        // kprobe: see the program's comment (fentry misses under preemption).
        probe: Probe::Kprobe {
            entry: "security_inode_copy_up",
        },
        args: &[],
    },
    Point {
        role: "remove",
        candidates: &["ovl_do_remove"],
        // No return probe: see the program's comment.
        probe: Probe::Kprobe {
            entry: "ovl_do_remove",
        },
        args: &[
            Arg::Position {
                param: "dentry",
                field: |c| &mut c.do_remove_dentry_arg,
                fallback: Fallback::Fixed(0),
            },
            Arg::Position {
                param: "is_dir",
                field: |c| &mut c.do_remove_is_dir_arg,
                fallback: Fallback::Fixed(1),
            },
        ],
    },
    Point {
        role: "remove_end",
        // A remove's end, before `index=on` cleans up its index entry
        // (see the program's comment).
        candidates: &["ovl_nlink_end"],
        probe: Probe::Kprobe {
            entry: "ovl_nlink_end",
        },
        args: &[],
    },
    Point {
        role: "whiteout",
        candidates: &["ovl_cleanup_and_whiteout"],
        probe: Probe::Kprobe {
            entry: "ovl_cleanup_and_whiteout",
        },
        args: &[],
    },
    Point {
        role: "rename",
        candidates: &["ovl_rename"],
        probe: Probe::KprobePair {
            entry: "ovl_rename",
            ret: "ovl_rename_ret",
        },
        args: &[
            Arg::Position {
                param: "old",
                field: |c| &mut c.rename_old_arg,
                fallback: Fallback::OpsDentry {
                    member: "rename",
                    nth: 0,
                },
            },
            Arg::Position {
                param: "new",
                field: |c| &mut c.rename_new_arg,
                fallback: Fallback::OpsDentry {
                    member: "rename",
                    nth: 1,
                },
            },
        ],
    },
    Point {
        role: "rename_whiteout",
        candidates: &["vfs_rename"],
        // kprobe even where fentry works: the argument holding the flags
        // moved between kernels, and tracing contexts only allow constant
        // argument positions. Renames are rare, so the cost is irrelevant.
        probe: Probe::Kprobe {
            entry: "vfs_rename",
        },
        args: &[Arg::RenameFlags],
    },
    Point {
        role: "mkdir",
        candidates: &["ovl_mkdir"],
        probe: Probe::KprobePair {
            entry: "ovl_mkdir",
            ret: "ovl_mkdir_ret",
        },
        args: &[Arg::Position {
            param: "dentry",
            field: |c| &mut c.mkdir_dentry_arg,
            fallback: Fallback::OpsDentry {
                member: "mkdir",
                nth: 0,
            },
        }],
    },
    Point {
        role: "opaque_dir",
        candidates: &["vfs_setxattr"],
        // kprobe for the same reason as vfs_rename.
        probe: Probe::Kprobe {
            entry: "vfs_setxattr",
        },
        args: &[Arg::Position {
            param: "name",
            field: |c| &mut c.vfs_setxattr_name_arg,
            fallback: Fallback::Required,
        }],
    },
    Point {
        role: "write",
        candidates: &["vfs_write"],
        probe: Probe::Traced {
            fentry: "vfs_write_fentry",
            fexit: "vfs_write_fexit",
            fallback: &WRITE_FALLBACK,
        },
        args: &[],
    },
    Point {
        role: "thread_exit",
        candidates: &[],
        probe: Probe::Tracepoint {
            category: "sched",
            name: "sched_process_exit",
            program: "sched_process_exit",
        },
        args: &[],
    },
];

/// Every point of the table, fallbacks included.
pub fn all_points() -> impl Iterator<Item = &'static Point> {
    POINTS
        .iter()
        .chain(POINTS.iter().filter_map(|p| match &p.probe {
            Probe::Traced { fallback, .. } => Some(*fallback),
            _ => None,
        }))
}

/// Every kernel function the table may attach to.
pub fn all_candidates() -> impl Iterator<Item = &'static str> {
    all_points().flat_map(|p| p.candidates.iter().copied())
}

/// Each program of the table with the method it is attached by.
pub fn programs() -> Vec<(&'static str, ProgramKind)> {
    let mut v = Vec::new();
    for p in all_points() {
        match &p.probe {
            Probe::Kprobe { entry } => v.push((*entry, ProgramKind::Kprobe)),
            Probe::KprobePair { entry, ret } => {
                v.push((*entry, ProgramKind::Kprobe));
                v.push((*ret, ProgramKind::Kretprobe));
            }
            Probe::Traced { fentry, fexit, .. } => {
                v.push((*fentry, ProgramKind::Fentry));
                v.push((*fexit, ProgramKind::Fexit));
            }
            Probe::Tracepoint { program, .. } => v.push((*program, ProgramKind::Tracepoint)),
        }
    }
    v
}

/// The kind of program a table entry expects the object to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Kprobe,
    Kretprobe,
    Fentry,
    Fexit,
    Tracepoint,
}

/// How one point will be attached on this kernel.
pub struct Planned {
    /// The point attached: the table's, or its fallback.
    pub point: &'static Point,
    /// The kernel function (for a tracepoint, `category:name`).
    pub function: String,
    pub method: Method,
    /// Why a point that prefers fentry does not use it here.
    pub note: Option<String>,
}

/// A point none of whose functions this kernel has.
pub struct Missing {
    pub role: &'static str,
    pub candidates: &'static [&'static str],
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "none of {} (inlined or missing)",
            self.candidates.join(", ")
        )
    }
}

/// The facts a plan is made of, asked of the running kernel by the
/// caller (doctor and the run ask them the same way).
pub trait Facts {
    /// kallsyms lists `function` as a text symbol.
    fn has_symbol(&self, function: &str) -> bool;
    /// A tracing program can be loaded at `function`'s entry, or why not.
    fn fentry(&self, function: &str) -> Result<(), String>;
}

/// The plan: per point of [`POINTS`], the function and the method, or
/// why it cannot be attached. `cowtrace doctor` shows it; the run attaches
/// exactly it.
pub fn plan(facts: &dyn Facts, force_kprobes: bool) -> Vec<Result<Planned, Missing>> {
    POINTS
        .iter()
        .map(|p| plan_point(p, facts, force_kprobes))
        .collect()
}

fn plan_point(
    p: &'static Point,
    facts: &dyn Facts,
    force_kprobes: bool,
) -> Result<Planned, Missing> {
    if let Probe::Tracepoint { category, name, .. } = &p.probe {
        return Ok(Planned {
            point: p,
            function: format!("{category}:{name}"),
            method: Method::Tracepoint,
            note: None,
        });
    }
    let function = p.candidates.iter().find(|c| facts.has_symbol(c)).copied();
    let method = match &p.probe {
        Probe::Kprobe { .. } => Method::Kprobe,
        Probe::KprobePair { .. } => Method::KprobeKretprobe,
        Probe::Traced { fallback, .. } => {
            let why = match function {
                _ if force_kprobes => Err("off: --kprobes-only".to_string()),
                None => Err(format!("{}: not in kallsyms", p.candidates.join(", "))),
                Some(f) => facts.fentry(f).map_err(|e| format!("on {f}: {e}")),
            };
            match (why, function) {
                (Ok(()), Some(_)) => Method::FentryFexit,
                (why, _) => {
                    let mut planned = plan_point(fallback, facts, force_kprobes)?;
                    planned.note = why.err().map(|e| format!("fentry {e}"));
                    return Ok(planned);
                }
            }
        }
        Probe::Tracepoint { .. } => unreachable!("returned above"),
    };
    match function {
        Some(f) => Ok(Planned {
            point: p,
            function: f.to_string(),
            method,
            note: None,
        }),
        None => Err(Missing {
            role: p.role,
            candidates: p.candidates,
        }),
    }
}

/// Fills the argument positions the planned points' programs read.
pub fn arg_positions(
    vmlinux: &Btf,
    overlay: Option<&Btf>,
    plan: &[Result<Planned, Missing>],
    cfg: &mut Config,
) -> anyhow::Result<()> {
    use anyhow::{anyhow, Context};
    for planned in plan.iter().flatten() {
        let function = planned.function.as_str();
        for arg in planned.point.args {
            match arg {
                Arg::RenameFlags => crate::probes::rename_flags(vmlinux, function, cfg)?,
                Arg::Position {
                    param,
                    field,
                    fallback,
                } => {
                    let found = overlay
                        .and_then(|b| b.param_index(function, param))
                        .or_else(|| vmlinux.param_index(function, param));
                    let pos = match (found, fallback) {
                        (Some(i), _) => i as u32,
                        (None, Fallback::Fixed(i)) => *i,
                        (None, Fallback::OpsDentry { member, nth }) => {
                            let pos = vmlinux
                                .member_fn_ptr_param_positions("inode_operations", member, "dentry")
                                .with_context(|| {
                                    format!("kernel BTF has no inode_operations.{member}")
                                })?;
                            *pos.get(*nth).ok_or_else(|| {
                                anyhow!("inode_operations.{member} has no dentry parameter {nth}")
                            })? as u32
                        }
                        (None, Fallback::Required) => {
                            return Err(anyhow!("{function} has no {param} parameter in BTF"))
                        }
                    };
                    *field(cfg) = pos;
                }
            }
        }
    }
    Ok(())
}

/// Whether a tracing program loads at `function`'s entry (the libbpf-tools
/// way, `fentry_can_attach`): a two-instruction fentry program with the
/// function's vmlinux BTF id, loaded and closed. Needs no parse beyond
/// cowtrace's own BTF reader.
pub fn fentry_loads(vmlinux: &Btf, function: &str) -> Result<(), String> {
    use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
    let id = vmlinux
        .find_type(&[Kind::Func], function)
        .ok_or_else(|| "not in vmlinux BTF".to_string())?;
    // r0 = 0; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    // SAFETY: all-zero is a valid bpf_attr (the kernel requires unused
    // fields to be zero).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the BPF_PROG_LOAD member.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        u.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
        u.expected_attach_type = bpf_attach_type::BPF_TRACE_FENTRY as u32;
        u.attach_btf_id = id;
        u.insns = insns.as_ptr() as u64;
        u.insn_cnt = insns.len() as u32;
        u.license = license.as_ptr() as u64;
    }
    // SAFETY: attr, the instructions and the license outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            &attr as *const bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "refused by this kernel ({})",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptor was just returned to us and is closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kernel {
        symbols: &'static [&'static str],
        fentry: bool,
    }

    impl Facts for Kernel {
        fn has_symbol(&self, f: &str) -> bool {
            self.symbols.contains(&f)
        }
        fn fentry(&self, _: &str) -> Result<(), String> {
            if self.fentry {
                Ok(())
            } else {
                Err("refused".into())
            }
        }
    }

    const ALL: &[&str] = &[
        "ovl_copy_up_flags",
        "ovl_copy_up_one",
        "ovl_copy_up_data",
        "security_inode_copy_up",
        "ovl_do_remove",
        "ovl_nlink_end",
        "ovl_cleanup_and_whiteout",
        "ovl_rename",
        "vfs_rename",
        "ovl_mkdir",
        "vfs_setxattr",
        "vfs_write",
        "ovl_write_iter",
    ];

    fn write(plan: &[Result<Planned, Missing>]) -> &Planned {
        plan.iter()
            .flatten()
            .find(|p| p.point.role == "write")
            .unwrap()
    }

    #[test]
    fn fentry_where_it_loads_kprobes_where_it_does_not_or_is_turned_off() {
        let k = Kernel {
            symbols: ALL,
            fentry: true,
        };
        let p = plan(&k, false);
        assert!(p.iter().all(|p| p.is_ok()));
        assert_eq!(write(&p).method, Method::FentryFexit);
        assert_eq!(write(&p).function, "vfs_write");

        let p = plan(&k, true);
        assert_eq!(write(&p).method, Method::KprobeKretprobe);
        assert_eq!(write(&p).function, "ovl_write_iter");
        assert!(write(&p)
            .note
            .as_deref()
            .unwrap()
            .contains("--kprobes-only"));

        let refused = Kernel {
            symbols: ALL,
            fentry: false,
        };
        let p = plan(&refused, false);
        assert_eq!(write(&p).method, Method::KprobeKretprobe);
        assert!(write(&p).note.as_deref().unwrap().contains("refused"));
    }

    #[test]
    fn the_first_candidate_present_is_chosen_and_a_missing_point_is_named() {
        let k = Kernel {
            symbols: &["ovl_copy_up_data", "ovl_copy_up_file"],
            fentry: true,
        };
        let p = plan(&k, false);
        let data = p
            .iter()
            .flatten()
            .find(|p| p.point.role == "copy_up_data")
            .unwrap();
        assert_eq!(data.function, "ovl_copy_up_file");
        let missing = p
            .iter()
            .filter_map(|p| p.as_ref().err())
            .find(|m| m.role == "whiteout")
            .unwrap();
        assert!(missing.to_string().contains("ovl_cleanup_and_whiteout"));
        // The tracepoint needs no symbol.
        assert!(p.iter().flatten().any(|p| p.method == Method::Tracepoint));
    }

    #[test]
    fn every_role_is_unique_and_every_program_used_once() {
        let mut roles: Vec<_> = POINTS.iter().map(|p| p.role).collect();
        roles.sort();
        roles.dedup();
        assert_eq!(roles.len(), POINTS.len());
        let mut progs: Vec<_> = programs().into_iter().map(|(n, _)| n).collect();
        let n = progs.len();
        progs.sort();
        progs.dedup();
        assert_eq!(progs.len(), n);
    }
}
