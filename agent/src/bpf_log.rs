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

/// Starts reading the programs' diagnostics (until the process ends).
pub fn start(ebpf: &mut aya::Ebpf) -> Result<()> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, StderrLog)
        .map_err(|e| anyhow!("the probes' diagnostics (aya-log): {e}"))?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and
    // unchanged for as long as the AsyncFd holds it.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow!("polling the probes' diagnostics: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut ready) = logger.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}
