//! Running a [`GuestSpec`]: the top of the harness. Prepares the kernel,
//! chooses the accelerator, gets the Docker disk (preparing it with a boot
//! of its own the first time), builds the initramfs, boots the VM and turns
//! its report into the command's exit status or a [`GuestFailure`]
//! (exit code 124 for a timeout, 125 otherwise) naming the console log.
//!
//! Build the agent/tests *before* calling this: never run cargo while a
//! guest runs.

use super::accel;
use super::disk;
use super::init;
use super::initramfs::{initramfs, payload};
use super::rundir::new_run_dir;
use super::spec::{Cgroups, GuestKind, GuestSpec, Init};
use super::vm::{self, Accel, Boot, Outcome, Report, Sinks};
use crate::kernel::{self, Kernel};
use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a guest did not report the command's exit status.
#[derive(Debug)]
pub struct GuestFailure {
    pub outcome: Outcome,
    pub message: String,
    pub console_log: PathBuf,
}

impl GuestFailure {
    /// 124 for a timeout, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::TimedOut => 124,
            _ => 125,
        }
    }
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (console log: {})",
            self.message,
            self.console_log.display()
        )
    }
}

impl std::error::Error for GuestFailure {}

/// Run the command, streaming to this process's stdout/stderr.
pub fn run(spec: &GuestSpec) -> Result<i32> {
    run_with(spec, &mut Sinks::inherit())
}

/// Run the command, streaming into `sinks`.
pub fn run_with(spec: &GuestSpec, sinks: &mut Sinks) -> Result<i32> {
    if spec.kind == GuestKind::Docker(Init::Systemd) && spec.cgroups != Cgroups::V2 {
        bail!(
            "the systemd guest mounts its own cgroups (v2): cgroup {} needs the shell init",
            spec.cgroups
        );
    }
    let cache = util::cache_dir()?;
    let kernel = kernel::prepare(&cache, spec.kernel)?;
    let choice = accel::choose(&cache, &kernel)?;
    note_accel_once(&choice);
    let accel = choice.accel;
    let run_dir = new_run_dir(&cache)?;
    let initrd = run_dir.join("initrd.gz");
    initramfs(spec.kind, &kernel, &payload(spec, false)?)?.write_gz(&initrd)?;
    let report = match spec.kind {
        GuestKind::Docker(guest_init) => {
            let prepare = |raw: &Path, command: &[String], timeout: Duration| {
                prepare_disk(&cache, &kernel, guest_init, accel, raw, command, timeout)
            };
            let base = disk::base_image(
                &cache,
                &kernel,
                guest_init,
                &init::init_script(spec.kind, true),
                &prepare,
            )?;
            let disk = run_dir.join("disk.qcow2");
            util::output_quiet(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(&base)
                    .arg(&disk),
            )?;
            let r = boot(
                spec,
                &kernel,
                &initrd,
                Some((disk.clone(), "qcow2")),
                &run_dir,
                accel,
                sinks,
            )?;
            let _ = fs::remove_file(&disk);
            r
        }
        GuestKind::Small => boot(spec, &kernel, &initrd, None, &run_dir, accel, sinks)?,
    };
    let _ = fs::remove_file(run_dir.join("initrd.gz"));
    finish(spec, &kernel, report)
}

fn boot(
    spec: &GuestSpec,
    kernel: &Kernel,
    initrd: &Path,
    disk: Option<(PathBuf, &'static str)>,
    run_dir: &Path,
    accel: Accel,
    sinks: &mut Sinks,
) -> Result<Report> {
    let one_tcg_thread = disk.is_none();
    let b = Boot {
        vmlinuz: kernel.vmlinuz(),
        initrd: initrd.to_path_buf(),
        disk,
        run_dir: run_dir.to_path_buf(),
        timeout: accel.timeout(spec.timeout),
        accel,
        clock: spec.clock,
        // The kernel guests (no disk), where the probes are detached under
        // load; the Docker guests keep a thread per vCPU for their speed.
        one_tcg_thread,
        memory_mb: 2048,
    };
    let r = vm::boot(&b, sinks)?;
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    fs::write(
        run_dir.join("timing"),
        format!(
            "kernel {} accel {:?}\nready {}\nstart {}\ntotal {:.1}s\n",
            kernel.version,
            accel,
            ms(r.ready_after),
            ms(r.start_after),
            r.elapsed.as_secs_f64()
        ),
    )?;
    if std::env::var_os("COWTRACE_TIMING").is_some() {
        note(format!(
            "kernel {} ({:?}): docker ready {}, command start {}, total {:.1}s",
            kernel.version,
            accel,
            ms(r.ready_after),
            ms(r.start_after),
            r.elapsed.as_secs_f64()
        ));
    }
    Ok(r)
}

fn finish(spec: &GuestSpec, kernel: &Kernel, r: Report) -> Result<i32> {
    let what = format!("{} guest (kernel {})", spec.kind, kernel.version);
    let message = match &r.outcome {
        Outcome::Exited(rc) => {
            if let (Some(out), Some(tar)) = (&spec.out, &r.out_tar) {
                extract_tar(tar, out)?;
            } else if let Some(out) = &spec.out {
                fs::create_dir_all(out)?;
            }
            return Ok(*rc);
        }
        Outcome::TimedOut => format!(
            "{what}: timed out after {}s{}",
            r.elapsed.as_secs(),
            if r.start_after.is_some() {
                " while the command ran"
            } else {
                " before the command started"
            }
        ),
        Outcome::Panicked(line) => format!("{what}: kernel panic: {line}"),
        Outcome::LockedUp(line) => format!("{what}: stopped at a soft lockup: {line}"),
        Outcome::InitFailed(why) => format!("{what}: guest init failed: {why}"),
        Outcome::NoStatus => {
            let qemu_err = fs::read_to_string(&r.qemu_log).unwrap_or_default();
            let qemu_err = qemu_err.trim();
            if r.start_after.is_some() {
                format!("{what}: stopped while the command ran, without an exit status")
            } else if !qemu_err.is_empty() {
                format!("{what}: QEMU failed: {qemu_err}")
            } else {
                format!("{what}: failed to boot (no command started)")
            }
        }
    };
    let tail = r.console_tail(25);
    if !tail.trim().is_empty() {
        eprintln!(
            "---- last lines of {} ----\n{tail}\n----",
            r.console_log.display()
        );
    }
    Err(GuestFailure {
        outcome: r.outcome,
        message,
        console_log: r.console_log,
    }
    .into())
}

fn extract_tar(tar: &[u8], out: &Path) -> Result<()> {
    use std::io::Write;
    fs::create_dir_all(out)?;
    let mut child = Command::new("tar")
        .args(["-x", "--no-same-owner", "-f", "-", "-C"])
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .context("run tar")?;
    child.stdin.take().unwrap().write_all(tar)?;
    let st = child.wait()?;
    if !st.success() {
        bail!("extracting the guest's /out into {} failed", out.display());
    }
    Ok(())
}

/// Boot `disk` (raw, writable) with `command` and a clean shutdown; used to
/// prepare cached disk images. Output goes to the run directory's logs.
fn prepare_disk(
    cache: &Path,
    kernel: &Kernel,
    guest_init: Init,
    accel: Accel,
    disk: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<()> {
    let run_dir = new_run_dir(cache)?;
    let kind = GuestKind::Docker(guest_init);
    let mut spec = GuestSpec::new(kernel.series, kind, command.to_vec());
    spec.timeout = timeout;
    let initrd = run_dir.join("initrd.gz");
    initramfs(kind, kernel, &payload(&spec, true)?)?.write_gz(&initrd)?;
    let mut sinks = Sinks {
        stdout: Box::new(fs::File::create(run_dir.join("prepare.stdout"))?),
        stderr: Box::new(fs::File::create(run_dir.join("prepare.stderr"))?),
    };
    let r = boot(
        &spec,
        kernel,
        &initrd,
        Some((disk.to_path_buf(), "raw")),
        &run_dir,
        accel,
        &mut sinks,
    )?;
    match finish(&spec, kernel, r)? {
        0 => Ok(()),
        rc => bail!(
            "preparing {} failed: `{}` exited {rc} (see {})",
            disk.display(),
            command.join(" "),
            run_dir.display()
        ),
    }
}

/// Say once per xtask process how guests run, and why.
fn note_accel_once(choice: &accel::Choice) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        note(format!(
            "guests run under {:?}: {}",
            choice.accel, choice.reason
        ))
    });
}
