//! Running one QEMU guest to completion, streaming its serial ports.
//!
//! Serial ports (see [`protocol`](super::protocol)): the kernel console,
//! the command's stdout and stderr, and the init's control lines. Each
//! port goes to a file in the run directory that the host tails while QEMU
//! runs. QEMU is killed on timeout and gets SIGKILL if this process dies,
//! so it never outlives the command.

use super::protocol::Control;
use crate::util::{self, note};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// A guest timeout sized for TCG, scaled for this accelerator: KVM
    /// runs guests several times faster, so a hang shows sooner (never
    /// under two minutes, for the boot itself).
    pub fn timeout(self, for_tcg: Duration) -> Duration {
        match self {
            Accel::Tcg => for_tcg,
            Accel::Kvm => (for_tcg / 4).max(Duration::from_secs(120)).min(for_tcg),
        }
    }
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// A virtio disk: (image, format).
    pub disk: Option<(PathBuf, &'static str)>,
    /// Logs go here.
    pub run_dir: PathBuf,
    pub timeout: Duration,
    pub accel: Accel,
    /// Under TCG, both vCPUs on one host thread (`thread=single`) instead
    /// of one thread each. Multi-threaded TCG races the kernel's live code
    /// patching: during the storm test, which detaches its probes while
    /// three threads run through them, the kernel guests oopsed at patch
    /// sites (a stray int3 in `do_exit`, `vfs_write+0x5` and a BPF
    /// trampoline, a jump to nowhere at `ovl_nlink_end+0x0`) or locked up,
    /// seven times in one day's 40 boots of that test. With one thread the
    /// vCPUs take turns and see each other's code changes as CPUs do; the
    /// kernel tests took as long (latest: 162 s, against 160-170 s).
    pub one_tcg_thread: bool,
    pub clock: Clock,
    pub memory_mb: u32,
}

/// The guest kernel's clocksource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Whatever the kernel picks. Under TCG it finds the vCPUs' TSCs
    /// unsynchronized and reads the emulated HPET instead, so every clock
    /// read (the kernel's, a program's `bpf_ktime_get_ns`, a benchmark's
    /// `clock_gettime`) is an emulated device access.
    #[default]
    KernelChoice,
    /// `tsc=reliable`: the TSC, as on the hosts cowtrace runs on (QEMU
    /// derives every vCPU's TSC from the host's, so they agree).
    Tsc,
}

impl Clock {
    fn kernel_args(self) -> &'static str {
        match self {
            Clock::KernelChoice => "",
            Clock::Tsc => " tsc=reliable",
        }
    }
}

/// Where the command's output goes on the host.
pub struct Sinks {
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl Sinks {
    /// The host's own stdout and stderr.
    pub fn inherit() -> Self {
        Sinks {
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
    /// Discard everything.
    pub fn null() -> Self {
        Sinks {
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(std::io::sink()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this status.
    Exited(i32),
    /// Killed after the timeout.
    TimedOut,
    /// The kernel panicked (the panic line).
    Panicked(String),
    /// The kernel's watchdog found a vCPU stuck for [`LOCKED_UP_S`]
    /// seconds or more (its soft-lockup line): QEMU was killed then rather
    /// than at the timeout.
    LockedUp(String),
    /// The guest init reported a failure before the command.
    InitFailed(String),
    /// QEMU stopped without an exit status (boot failure, crash).
    NoStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_stuck_long_enough_is_a_lockup() {
        let early = "[   56.413542] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [runc:213]";
        let late = "[  120.498557] watchdog: BUG: soft lockup - CPU#1 stuck for 105s! [exe:219]";
        assert_eq!(locked_up(early), None);
        assert_eq!(locked_up(&format!("boot\n{early}\n{late}\n")), Some(late));
        assert_eq!(
            locked_up("x stuck for 500s! without the watchdog's words"),
            None
        );
    }

    #[test]
    fn timeouts_scale_with_the_accelerator() {
        let t = Duration::from_secs(900);
        assert_eq!(Accel::Tcg.timeout(t), t);
        assert_eq!(Accel::Kvm.timeout(t), Duration::from_secs(225));
        assert_eq!(
            Accel::Kvm.timeout(Duration::from_secs(300)),
            Duration::from_secs(120)
        );
        assert_eq!(
            Accel::Kvm.timeout(Duration::from_secs(20)),
            Duration::from_secs(20)
        );
    }
}

#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// Base64-decoded tar of the guest's /out, if it wrote anything.
    pub out_tar: Option<Vec<u8>>,
    /// From QEMU start to `COWTRACE-READY` (docker) ...
    pub ready_after: Option<Duration>,
    /// ... and to `COWTRACE-START` (the command starts).
    pub start_after: Option<Duration>,
    pub elapsed: Duration,
    pub console_log: PathBuf,
    pub qemu_log: PathBuf,
}

impl Report {
    /// The last `n` lines of the console log.
    pub fn console_tail(&self, n: usize) -> String {
        let text = fs::read(&self.console_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A vCPU stuck this long ends the guest: no test survives it, and
/// waiting for the timeout would cost the rest of the run's time.
pub const LOCKED_UP_S: u64 = 90;

/// The first soft-lockup line of `console` whose vCPU had been stuck for
/// [`LOCKED_UP_S`] seconds or more (`watchdog: BUG: soft lockup - CPU#1
/// stuck for 105s! [runc:213]`).
pub fn locked_up(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        l.split_once("soft lockup - CPU#")
            .and_then(|(_, rest)| rest.split_once("stuck for "))
            .and_then(|(_, rest)| rest.split_once("s!"))
            .and_then(|(secs, _)| secs.parse::<u64>().ok())
            .is_some_and(|s| s >= LOCKED_UP_S)
    })
}

struct Tail {
    file: File,
}

impl Tail {
    fn open(path: &Path) -> Result<Self> {
        File::create(path)?;
        Ok(Tail {
            file: File::open(path)?,
        })
    }
    fn read_new(&mut self, buf: &mut Vec<u8>) -> usize {
        let before = buf.len();
        let _ = self.file.read_to_end(buf);
        buf.len() - before
    }
}

/// Boot, stream ttyS1/ttyS2 into `sinks` until QEMU stops or times out.
pub fn boot(b: &Boot, sinks: &mut Sinks) -> Result<Report> {
    fs::create_dir_all(&b.run_dir)?;
    let console_log = b.run_dir.join("console.log");
    let qemu_log = b.run_dir.join("qemu.log");
    let mut console = Tail::open(&console_log)?;
    let mut out = Tail::open(&b.run_dir.join("stdout.log"))?;
    let mut err = Tail::open(&b.run_dir.join("stderr.log"))?;
    let mut ctl = Tail::open(&b.run_dir.join("control.log"))?;

    let mut cmd = Command::new("qemu-system-x86_64");
    match b.accel {
        Accel::Tcg if b.one_tcg_thread => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
    };
    cmd.args(["-smp", "2", "-m", &b.memory_mb.to_string()])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&b.vmlinuz)
        .arg("-initrd")
        .arg(&b.initrd)
        // `oops=panic`: a kernel oops ends the guest (and the run says
        // so) instead of killing one process and letting its tests go on
        // against a damaged kernel.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet loglevel=3{}",
            b.clock.kernel_args()
        ));
    for name in ["console.log", "stdout.log", "stderr.log", "control.log"] {
        cmd.arg("-serial")
            .arg(format!("file:{}", b.run_dir.join(name).display()));
    }
    if let Some((disk, format)) = &b.disk {
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format={format},discard=unmap",
            disk.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(File::create(&qemu_log)?)
        .stderr(File::create(&qemu_log)?.try_clone()?);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    fs::write(b.run_dir.join("qemu.cmdline"), util::describe(&cmd))?;
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;

    let mut c = Control::default();
    let mut buf = Vec::new();
    let mut console_text = Vec::new();
    let mut lockup = None;
    let mut timed_out = false;
    let mut exit_seen_at: Option<Instant> = None;
    loop {
        let status = child.try_wait()?;
        let mut moved = 0;
        buf.clear();
        if out.read_new(&mut buf) > 0 {
            moved += buf.len();
            let _ = sinks.stdout.write_all(&buf);
            let _ = sinks.stdout.flush();
        }
        buf.clear();
        if err.read_new(&mut buf) > 0 {
            moved += buf.len();
            let _ = sinks.stderr.write_all(&buf);
            let _ = sinks.stderr.flush();
        }
        buf.clear();
        if ctl.read_new(&mut buf) > 0 {
            moved += buf.len();
            c.feed(&buf, t0.elapsed());
        }
        if console.read_new(&mut console_text) > 0 {
            if let Some(l) = locked_up(&String::from_utf8_lossy(&console_text)) {
                lockup = Some(l.trim().to_string());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
        if status.is_some() {
            break;
        }
        if c.exit.is_some() && exit_seen_at.is_none() {
            exit_seen_at = Some(Instant::now());
        }
        // The guest powers itself off after the exit line; don't wait long.
        if exit_seen_at.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
            note("guest did not power off after the command; killing QEMU");
            let _ = child.kill();
        }
        if t0.elapsed() > b.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Final drain (QEMU has exited and flushed its files).
    for (tail, sink) in [(&mut out, &mut sinks.stdout), (&mut err, &mut sinks.stderr)] {
        buf.clear();
        if tail.read_new(&mut buf) > 0 {
            let _ = sink.write_all(&buf);
            let _ = sink.flush();
        }
    }
    buf.clear();
    ctl.read_new(&mut buf);
    c.feed(&buf, t0.elapsed());
    c.feed(b"\n", t0.elapsed());
    console.read_new(&mut console_text);
    let log = String::from_utf8_lossy(&console_text);
    let panic = log
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .map(|l| l.trim().to_string());

    let outcome = if let Some(rc) = c.exit {
        Outcome::Exited(rc)
    } else if let Some(l) = lockup {
        Outcome::LockedUp(l)
    } else if timed_out {
        Outcome::TimedOut
    } else if let Some(p) = panic {
        Outcome::Panicked(p)
    } else if let Some(f) = c.fail.clone() {
        Outcome::InitFailed(f)
    } else {
        Outcome::NoStatus
    };
    let out_tar = if c.out_done {
        use base64::Engine;
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(&c.out_b64)
                .context("the guest's /out archive is corrupt")?,
        )
    } else {
        None
    };
    Ok(Report {
        outcome,
        out_tar,
        ready_after: c.ready,
        start_after: c.start,
        elapsed: t0.elapsed(),
        console_log,
        qemu_log,
    })
}
