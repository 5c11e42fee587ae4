//! The eBPF programs' own diagnostics (aya-log), with `--verbose`.
//!
//! The programs say what they could not do (a full map, a full ring
//! buffer: the first time on each CPU) through aya-log's ring buffer; this
//! task reads it and prints each record as one stderr line. The counters
//! in the JSON stay the record of every loss: these lines say when and
//! where it started. Without `--verbose` the programs' log level is 0 and
//! nothing is written or read.

use crate::output::err_line;
use anyhow::{anyhow, Result};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::unix::AsyncFd;

/// Prints aya-log's records on stderr, one line each.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        err_line(&format!(
            "cowtrace: bpf {}: {}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

type Logger = aya_log::EbpfLogger<StderrLog>;

/// The logger, once started: read by its task as records arrive, and by
/// [`flush`] at the end (records of the last moments would otherwise go
/// with the process, the task having had no turn since they came).
static LOGGER: OnceLock<Arc<Mutex<Logger>>> = OnceLock::new();

/// The logger's ring buffer descriptor, for polling; the logger it belongs
/// to lives in [`LOGGER`] for as long as the process.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Starts reading the programs' diagnostics (until the process ends).
pub fn start(ebpf: &mut aya::Ebpf) -> Result<()> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, StderrLog)
        .map_err(|e| anyhow!("the probes' diagnostics (aya-log): {e}"))?;
    let fd = RingFd(logger.as_raw_fd());
    let logger = LOGGER.get_or_init(|| Arc::new(Mutex::new(logger))).clone();
    // SAFETY: the descriptor belongs to the logger in LOGGER, which is
    // never dropped, so it stays open and unchanged for the AsyncFd.
    let ready = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("polling the probes' diagnostics: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = ready.readable().await {
            if let Ok(mut l) = logger.lock() {
                l.flush();
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Prints the records not read yet (at the end of a run).
pub fn flush() {
    if let Some(l) = LOGGER.get() {
        if let Ok(mut l) = l.lock() {
            l.flush();
        }
    }
}
