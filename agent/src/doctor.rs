//! What the running kernel offers, checked before anything is attached, so
//! that every "cannot run here" is one clear line instead of an aya error.

use crate::overlay_opts::{ModuleDefaults, OverlayOptions, FUSE_OVERLAYFS};
use crate::points::{Method, Missing, Planned};
use crate::probes::{plan, Kallsyms, KernelBtf, ProbeOptions, OVERLAY_BTF};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// One finding; `fatal` ones stop `cowtrace` before it attaches.
pub struct Finding {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fatal: bool,
}

fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

const CAP_SYS_ADMIN: u64 = 21;
const CAP_PERFMON: u64 = 38;
const CAP_BPF: u64 = 39;

/// Missing capabilities, by name (empty when cowtrace may load probes).
pub fn missing_capabilities() -> Vec<&'static str> {
    let caps = cap_eff();
    let has = |c: u64| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

fn overlay_loaded() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

fn overlay_builtin(release: &str) -> Option<bool> {
    let builtin =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin")).ok()?;
    Some(builtin.lines().any(|l| l.ends_with("/overlay.ko")))
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What [`check`] found: the findings, and what the run attaches with.
pub struct Checked {
    pub findings: Vec<Finding>,
    /// Opened; read where BTF does not answer, and beside the run once it
    /// is attached (see [`Kallsyms`]).
    pub kallsyms: Kallsyms,
    pub btf: Option<KernelBtf>,
    /// The attach plan: what doctor shows is what the run attaches.
    pub plan: Vec<Result<Planned, Missing>>,
    /// How long reading BTF and making the plan took (`--verbose`).
    pub stages: Vec<(String, Duration)>,
}

/// Runs every check. BTF is loaded here so `doctor` can show it even when
/// something else is missing; kallsyms is read only where BTF does not
/// answer.
pub fn check(opts: &ProbeOptions) -> Checked {
    let mut checked = check_kernel(opts);
    // Last: the probes' lines come first, the mounts' after them.
    checked.findings.extend(mount_findings());
    checked
}

/// The checks a run needs before it attaches: [`check`] without the
/// mounts, whose findings are never fatal and which read every process's
/// mount table (seconds on a node with thousands of processes, before
/// the run is ready).
pub fn check_kernel(opts: &ProbeOptions) -> Checked {
    let kallsyms = Kallsyms::open();
    // Without overlay's module BTF (Debian 5.10, or overlay not loaded)
    // the plan asks kallsyms: read it while BTF is read.
    if !std::path::Path::new(OVERLAY_BTF).exists() {
        kallsyms.read_beside();
    }
    let mut stages: Vec<(String, Duration)> = Vec::new();
    let mut f = Vec::new();
    let missing = missing_capabilities();
    f.push(Finding {
        what: "privileges",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "can load BPF programs".into()
        } else {
            format!("missing {}: run cowtrace with sudo", missing.join(" and "))
        },
        fatal: true,
    });
    let t = Instant::now();
    let btf = KernelBtf::load();
    stages.push(("BTF read (vmlinux, overlay)".into(), t.elapsed()));
    f.push(Finding {
        what: "BTF",
        ok: btf.is_ok(),
        detail: match &btf {
            Ok(b) => format!(
                "vmlinux BTF present; overlay module BTF {}",
                if b.overlay.is_some() {
                    "present"
                } else {
                    "absent (argument positions from vmlinux BTF)"
                }
            ),
            Err(e) => format!("{e:#}"),
        },
        fatal: true,
    });
    let kp = kprobes_available();
    f.push(Finding {
        what: "kprobes",
        ok: kp,
        detail: if kp {
            "available".into()
        } else {
            "unavailable: this kernel has no kprobes (CONFIG_KPROBES off), cowtrace cannot probe overlayfs here".into()
        },
        fatal: true,
    });
    let release = kernel_release();
    let loaded = overlay_loaded();
    f.push(Finding {
        what: "overlay",
        ok: loaded,
        detail: match (loaded, overlay_builtin(&release)) {
            (true, Some(true)) => "built into the kernel".into(),
            (true, _) => "module loaded".into(),
            (false, _) => {
                "overlayfs is not loaded: run `modprobe overlay` (or start the container engine)"
                    .into()
            }
        },
        fatal: true,
    });
    let btf = btf.ok();
    let t = Instant::now();
    let plan = plan(&kallsyms, btf.as_ref(), opts);
    stages.push((
        "attach plan (BTF; kallsyms only where BTF does not say; a test fentry load)".into(),
        t.elapsed(),
    ));
    if let Some(took) = kallsyms.took() {
        stages.push(("kallsyms read, needed for the plan".into(), took));
    }
    f.push(tracing_finding(&plan));
    for p in &plan {
        f.push(match p {
            Ok(p) => Finding {
                what: p.point.role,
                ok: true,
                detail: match &p.note {
                    Some(note) => format!("{} on {} ({note})", p.method.key(), p.function),
                    None => format!("{} on {}", p.method.key(), p.function),
                },
                fatal: false,
            },
            Err(m) => Finding {
                what: m.role,
                ok: false,
                detail: m.to_string(),
                fatal: loaded && kp,
            },
        });
    }
    Checked {
        findings: f,
        kallsyms,
        btf,
        plan,
        stages,
    }
}

/// Whether fentry/fexit work here, as the plan found for the point that
/// prefers them (never fatal: kprobes are used instead).
fn tracing_finding(plan: &[Result<Planned, Missing>]) -> Finding {
    let preferring = plan
        .iter()
        .flatten()
        .find(|p| p.method == Method::FentryFexit || p.note.is_some());
    let (ok, detail) = match preferring {
        Some(p) if p.method == Method::FentryFexit => {
            (true, format!("fentry/fexit load ({})", p.function))
        }
        Some(p) => {
            let note = p.note.as_deref().unwrap_or_default();
            (
                note.contains("--kprobes-only"),
                format!("{note}: kprobes are used instead"),
            )
        }
        None => (
            false,
            "not known: no attach point that prefers them was found".into(),
        ),
    };
    Finding {
        what: "BPF tracing programs",
        ok,
        detail,
        fatal: false,
    }
}

/// One finding per overlay (and fuse-overlayfs) mount in any mount
/// namespace (a rootless container's is only in its user's): the options
/// that change what overlay does, and whether cowtrace handles them. Never
/// fatal: a mount cowtrace cannot fully read is still traced.
fn mount_findings() -> Vec<Finding> {
    let mounts = crate::rootless::all_overlay_mounts();
    let defaults = ModuleDefaults::read();
    mount_findings_of(&mounts, &defaults)
}

fn mount_findings_of(
    mounts: &[crate::mountinfo::Mount],
    defaults: &ModuleDefaults,
) -> Vec<Finding> {
    let mut f = Vec::new();
    for m in mounts {
        let place = format!(
            "{} ({}:{})",
            crate::event::escape_str(&m.mount_point),
            m.dev.0,
            m.dev.1
        );
        if m.fstype == FUSE_OVERLAYFS {
            f.push(Finding {
                what: "fuse-overlayfs mount",
                ok: false,
                detail: format!("{place}: fuse-overlayfs copies up in a userspace daemon, out of reach of cowtrace's kernel probes: nothing in it is reported"),
                fatal: false,
            });
            continue;
        }
        if !m.is_overlay() {
            continue;
        }
        let opts = OverlayOptions::of(m, defaults);
        let verdicts = opts.verdicts();
        let mut detail = format!("{place}: {}", opts.summary());
        if verdicts.is_empty() {
            detail.push_str("; handled (as Docker mounts overlay)");
        }
        for (_, v) in &verdicts {
            detail.push_str("; ");
            detail.push_str(v);
        }
        f.push(Finding {
            what: "overlay mount",
            ok: verdicts.iter().all(|(ok, _)| *ok),
            detail,
            fatal: false,
        });
    }
    f
}

pub fn render(findings: &[Finding]) -> String {
    let mut s = format!("kernel {}\n", kernel_release());
    for x in findings {
        let _ = writeln!(
            s,
            "{:<4} {:<22} {}",
            if x.ok { "ok" } else { "FAIL" },
            x.what,
            x.detail
        );
    }
    s
}

/// The first fatal problem, as the one line cowtrace exits with.
pub fn first_fatal(findings: &[Finding]) -> Option<String> {
    findings
        .iter()
        .find(|x| x.fatal && !x.ok)
        .map(|x| format!("{}: {}", x.what, x.detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_mountinfo;

    #[test]
    fn each_overlay_mount_is_listed_with_its_options_and_fuse_is_named() {
        let text = "\
40 20 0:52 / /var/lib/docker/overlay2/a/merged rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,index=off
41 20 0:53 / /m2 rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,metacopy=on,redirect_dir=on
42 20 0:54 / /home/u/.local/share/containers/storage/overlay/b/merged rw - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=1000
43 20 8:1 / / rw - ext4 /dev/sda1 rw
";
        let defaults = crate::overlay_opts::tests::docker_defaults();
        let f = mount_findings_of(&parse_mountinfo(text), &defaults);
        assert_eq!(f.len(), 3);
        assert!(f[0].ok && !f[0].fatal, "{}", f[0].detail);
        assert!(
            f[0].detail.contains("metacopy=off index=off"),
            "{}",
            f[0].detail
        );
        assert!(
            f[1].ok,
            "metacopy and redirect_dir=on are handled: {}",
            f[1].detail
        );
        assert!(f[1].detail.contains("metacopy=on"), "{}", f[1].detail);
        assert!(f[1].detail.contains("redirect_dir=on"), "{}", f[1].detail);
        assert_eq!(f[2].what, "fuse-overlayfs mount");
        assert!(!f[2].ok && !f[2].fatal);
        assert!(f[2].detail.contains("out of reach"), "{}", f[2].detail);
    }
}
