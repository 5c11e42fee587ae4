//! Ending a run: SIGINT, SIGTERM and SIGHUP all ask for an orderly end
//! (final drain, detach, complete JSON); a second one ends the process at
//! once after detaching.
//!
//! The second signal is handled inside the signal handler itself, so it
//! works whatever the agent is doing (waiting on a runtime API, draining,
//! writing). The handler only uses async-signal-safe calls (`close`,
//! `open`, `write`, `shutdown`, `_exit`) on data registered beforehand in
//! fixed atomics: the perf descriptors holding cowtrace's tracefs return
//! probes and the lines that remove those probes. Every other probe is a
//! perf or BPF link descriptor that the kernel removes when the process
//! exits.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

/// Signals that end a run.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static RECEIVED: AtomicU32 = AtomicU32::new(0);
/// The socket of a runtime API request in flight (-1: none); shut down by
/// the first signal so a slow or hung runtime cannot delay the end.
static API_SOCKET: AtomicI32 = AtomicI32::new(-1);

const SLOTS: usize = 32;

struct Slot {
    fd: AtomicI32,
    /// `-:kprobes/NAME\n`, leaked on registration (a few per run).
    line: AtomicPtr<u8>,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    fd: AtomicI32::new(-1),
    line: AtomicPtr::new(std::ptr::null_mut()),
    len: AtomicUsize::new(0),
};
static PROBES: [Slot; SLOTS] = [EMPTY; SLOTS];
/// NUL-terminated path of tracefs's `kprobe_events`, leaked once.
static KPROBE_EVENTS: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the handlers that count signals and act on the second one.
/// The orderly end itself is driven by the caller (tokio signal streams on
/// the same signals see the first one).
pub fn install() -> std::io::Result<()> {
    for sig in SIGNALS {
        // SAFETY: the action only touches atomics and makes
        // async-signal-safe system calls.
        unsafe { signal_hook_registry::register(sig, on_signal)? };
    }
    Ok(())
}

/// Whether an end was asked for.
pub fn requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) > 0
}

fn on_signal() {
    let n = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    let api = API_SOCKET.load(Ordering::SeqCst);
    if api >= 0 {
        // SAFETY: shutdown(2) is async-signal-safe; on a descriptor that
        // was meanwhile reused for something else it fails harmlessly.
        unsafe { libc::shutdown(api, libc::SHUT_RDWR) };
    }
    if n >= 2 {
        emergency_exit();
    }
}

fn emergency_exit() -> ! {
    // SAFETY: only async-signal-safe calls on registered data.
    unsafe {
        let path = KPROBE_EVENTS.load(Ordering::SeqCst);
        for s in &PROBES {
            let fd = s.fd.swap(-1, Ordering::SeqCst);
            if fd < 0 {
                continue;
            }
            // The probe can only be removed once no perf event uses it.
            libc::close(fd);
            let line = s.line.load(Ordering::SeqCst);
            let len = s.len.load(Ordering::SeqCst);
            if !path.is_null() && !line.is_null() {
                let ev = libc::open(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC);
                if ev >= 0 {
                    libc::write(ev, line as *const libc::c_void, len);
                    libc::close(ev);
                }
            }
        }
        let msg = b"cowtrace: second signal: probes detached, ending without the final report\n";
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(130);
    }
}

/// A tracefs return probe the second signal must remove; unregistered
/// (before its own orderly removal) by dropping the handle.
pub struct Registered(usize);

/// Registers the perf descriptor `fd` of tracefs probe `event` (as in
/// `kprobes/EVENT`). `None` when every slot is taken (the probe is then
/// only removed by an orderly end or the next run's stale-probe cleanup).
pub fn register_probe(
    kprobe_events: &std::path::Path,
    fd: RawFd,
    event: &str,
) -> Option<Registered> {
    if KPROBE_EVENTS.load(Ordering::SeqCst).is_null() {
        let c = CString::new(kprobe_events.as_os_str().as_encoded_bytes()).ok()?;
        let p = c.into_raw();
        if KPROBE_EVENTS
            .compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // SAFETY: `p` came from into_raw just above and was not shared.
            drop(unsafe { CString::from_raw(p) });
        }
    }
    let line: &'static mut [u8] = format!("-:kprobes/{event}\n").into_bytes().leak();
    for (i, s) in PROBES.iter().enumerate() {
        if s.fd.load(Ordering::SeqCst) == -1 && s.line.load(Ordering::SeqCst).is_null() {
            s.len.store(line.len(), Ordering::SeqCst);
            s.line.store(line.as_mut_ptr(), Ordering::SeqCst);
            s.fd.store(fd, Ordering::SeqCst);
            return Some(Registered(i));
        }
    }
    None
}

impl Drop for Registered {
    fn drop(&mut self) {
        let s = &PROBES[self.0];
        s.fd.store(-1, Ordering::SeqCst);
        // The line stays allocated (a handler may be reading it); the slot
        // is not reused.
    }
}

/// Marks `fd` as the runtime API socket in flight until the guard drops.
pub struct ApiRequest(());

pub fn api_request(fd: RawFd) -> ApiRequest {
    API_SOCKET.store(fd, Ordering::SeqCst);
    ApiRequest(())
}

impl Drop for ApiRequest {
    fn drop(&mut self) {
        API_SOCKET.store(-1, Ordering::SeqCst);
    }
}
