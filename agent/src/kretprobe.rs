//! Return probes with room for many concurrent calls.
//!
//! A kretprobe keeps one instance per call in flight; when they run out the
//! return is silently missed. Return probes made through `perf_event_open`
//! (what aya does) get the kernel default of max(10, 2 x CPUs) instances,
//! and a burst of copy-ups from a few threads already exceeds that (measured
//! on 5.10: 1,069 of 2,408 returns seen with 8 threads). The tracefs
//! interface lets the creator choose `maxactive`, so cowtrace creates its
//! return probes there and attaches its programs to them with
//! `PERF_EVENT_IOC_SET_BPF`, the way bcc does.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Instances per return probe: the most tracefs accepts.
pub const MAXACTIVE: u32 = 4096;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE: usize = 112;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Where tracefs is mounted, if it is.
pub fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
}

/// A return probe created in tracefs; removed again on drop.
pub struct TracefsKretprobe {
    /// Lets a second Ctrl-C remove the probe from its signal handler.
    registered: Option<crate::shutdown::Registered>,
    perf: Option<OwnedFd>,
    tracefs: PathBuf,
    event: String,
}

fn write_events(tracefs: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(tracefs.join("kprobe_events"))?;
    f.write_all(line.as_bytes())
}

/// This process's probe names: `cowtrace_<16 random hex>_<function>`. A
/// random instance id rather than the pid: two agents in different pid
/// namespaces (both pid 1, say) must not share names.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut r = [0u8; 8];
        let mut filled = 0;
        while filled < r.len() {
            match rustix::rand::getrandom(&mut r[filled..], rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    // No getrandom (pre-3.17 kernels): time and pid differ
                    // between instances started apart.
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    r = (t ^ ((std::process::id() as u64) << 40)).to_ne_bytes();
                    break;
                }
            }
        }
        r.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Removes cowtrace return probes that no process uses any more (their
/// agent was killed with SIGKILL, so its Drop never ran).
///
/// Which ones are stale is left to the kernel, not guessed from a pid:
/// tracefs refuses (EBUSY) to remove a probe while a perf event of a live
/// agent is attached to it, whatever pid namespace that agent is in, so
/// trying to remove every `cowtrace_` probe removes exactly the stale ones.
pub fn remove_stale(tracefs: &Path) {
    let Ok(text) = std::fs::read_to_string(tracefs.join("kprobe_events")) else {
        return;
    };
    for line in text.lines() {
        // r4096:kprobes/cowtrace_0123456789abcdef_ovl_copy_up_one ovl_copy_up_one
        let Some(event) = line
            .split_whitespace()
            .next()
            .and_then(|h| h.split(':').nth(1))
        else {
            continue;
        };
        if event.starts_with("kprobes/cowtrace_") {
            let _ = write_events(tracefs, &format!("-:{event}\n"));
        }
    }
}

impl TracefsKretprobe {
    /// Creates `r<MAXACTIVE>:kprobes/cowtrace_<instance>_<function>` and
    /// runs the loaded kprobe program `prog_fd` on every return of
    /// `function`.
    pub fn attach(tracefs: &Path, function: &str, prog_fd: RawFd) -> Result<Self> {
        let event = format!("cowtrace_{}_{}", instance_id(), function);
        // Another agent's stale-probe cleanup may remove the probe between
        // its creation and our perf event (the moment it becomes busy):
        // then it is simply made again.
        let mut last = None;
        for _ in 0..5 {
            match Self::try_attach(tracefs, function, &event, prog_fd) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("creating {event}")))
    }

    fn try_attach(tracefs: &Path, function: &str, event: &str, prog_fd: RawFd) -> Result<Self> {
        write_events(
            tracefs,
            &format!("r{MAXACTIVE}:kprobes/{event} {function}\n"),
        )
        .with_context(|| format!("creating a return probe on {function} in tracefs"))?;
        let mut probe = TracefsKretprobe {
            registered: None,
            perf: None,
            tracefs: tracefs.to_path_buf(),
            event: event.to_string(),
        };
        let id_path = tracefs.join("events/kprobes").join(event).join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .with_context(|| format!("reading {}", id_path.display()))?
            .trim()
            .parse()
            .context("tracefs event id")?;

        let mut attr = [0u8; PERF_ATTR_SIZE];
        attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&id.to_ne_bytes()); // config
        attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
        attr[48..52].copy_from_slice(&1u32.to_ne_bytes()); // wakeup_events
                                                           // SAFETY: attr is a valid perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1 as libc::pid_t,
                0 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "perf_event_open for {event}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the syscall returned a new descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: plain ioctls on our own perf event descriptor.
        unsafe {
            if libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog_fd) != 0 {
                return Err(anyhow!(
                    "attaching a program to {event}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
                return Err(anyhow!(
                    "enabling {event}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        probe.registered =
            crate::shutdown::register_probe(&tracefs.join("kprobe_events"), fd.as_raw_fd(), event);
        probe.perf = Some(fd);
        Ok(probe)
    }
}

impl Drop for TracefsKretprobe {
    fn drop(&mut self) {
        // No longer the signal handler's to remove; then the perf event
        // must be closed before tracefs lets the probe go.
        self.registered.take();
        self.perf.take();
        let _ = write_events(&self.tracefs, &format!("-:kprobes/{}\n", self.event));
    }
}
