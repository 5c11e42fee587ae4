//! The agent's own cost, in every report (the JSON's `agent`): memory and
//! CPU as the kernel counts them, the heap as the allocator counts it, and
//! how full the agent's own queues got. A platform team leaving cowtrace on
//! a node sees what it takes; when its memory grows, the queues and the
//! heap say whether it was events waiting, questions waiting, or the
//! allocator keeping freed memory.

use crate::held::HeldStats;
use serde_json::{json, Value};

/// This process's memory and CPU now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessCost {
    /// Resident now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Resident at most so far (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// What is resident now, by kind (`RssAnon`: the heap, stacks;
    /// `RssFile`: the program's own pages and the ring buffer's, mapped
    /// from the kernel; `RssShmem`), KiB.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
    /// User and system CPU seconds.
    pub cpu_s: f64,
    /// Heap bytes in use as the allocator counts them (glibc's
    /// `mallinfo2`: small blocks in use plus mmapped blocks), KiB; RSS
    /// far above it is memory the allocator keeps after it was freed.
    pub heap_kib: Option<u64>,
    /// Freed heap the allocator still holds (`mallinfo2`'s `fordblks`),
    /// KiB: resident where it was touched before it was freed.
    pub heap_free_kib: Option<u64>,
}

/// Reads [`ProcessCost`] for this process.
pub fn measure() -> ProcessCost {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| status_kib(&status, key).unwrap_or(0);
    let heap = heap_kib();
    ProcessCost {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        rss_anon_kib: kib("RssAnon:"),
        rss_file_kib: kib("RssFile:"),
        rss_shmem_kib: kib("RssShmem:"),
        cpu_s: cpu_seconds(),
        heap_kib: heap.map(|h| h.0),
        heap_free_kib: heap.map(|h| h.1),
    }
}

/// This process's peak resident memory (`VmHWM`), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "VmHWM:")
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// (in use, free) KiB of every arena.
fn heap_kib() -> Option<(u64, u64)> {
    // Safe to call at any time; it walks the allocator's arenas under
    // their locks (microseconds for a heap of this size).
    let m = unsafe { libc::mallinfo2() };
    Some((
        ((m.uordblks + m.hblkhd) / 1024) as u64,
        (m.fordblks / 1024) as u64,
    ))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_kib() -> Option<(u64, u64)> {
    None
}

/// Big blocks (the report's buffers, which grow with the containers seen)
/// get pages of their own from this size on, given back when freed.
/// glibc's default moves this threshold up to the largest block freed
/// so far (up to 32 MiB), after which such buffers are carved from the
/// heap, where a freed one leaves a hole glibc keeps (with the report
/// built as one tree, the soak's agent held 11.5 MiB of freed heap next
/// to 3.1 MiB in use after 120 containers).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Sets the allocator up for a process that runs for weeks: a fixed
/// threshold for blocks of their own (see [`MMAP_THRESHOLD`]).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; called
    // once at start, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the pages of freed heap back to the kernel (all arenas, not
/// only the top of each, which is all glibc trims by itself). Called
/// after each report, when the report's own tree has just been freed:
/// a few milliseconds, once an interval.
pub fn give_back_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The JSON's `agent` object.
pub fn json(p: &ProcessCost, held: &HeldStats, questions: (usize, usize)) -> Value {
    json!({
        "rss_kib": p.rss_kib,
        "peak_rss_kib": p.peak_rss_kib,
        "rss_anon_kib": p.rss_anon_kib,
        "rss_file_kib": p.rss_file_kib,
        "rss_shmem_kib": p.rss_shmem_kib,
        "cpu_s": (p.cpu_s * 100.0).round() / 100.0,
        "heap_kib": p.heap_kib,
        "heap_free_kib": p.heap_free_kib,
        "held_events": {
            "now": held.now,
            "peak": held.peak,
            "peak_kib": held.peak_bytes.div_ceil(1024),
            "released_early": held.released_early,
        },
        "layer_questions": {"now": questions.0, "peak": questions.1},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_read_in_kib() {
        let status = "Name:\tcowtrace\nVmHWM:\t   36840 kB\nVmRSS:\t   21444 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(36840));
        assert_eq!(status_kib(status, "VmRSS:"), Some(21444));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn the_process_measures_itself() {
        // Hold 8 MiB, touched, so RSS and the heap must both see it.
        let block = vec![1u8; 8 << 20];
        let p = measure();
        assert!(p.rss_kib >= 8 * 1024, "{p:?}");
        assert!(p.rss_anon_kib >= 8 * 1024, "{p:?}");
        assert!(p.peak_rss_kib >= p.rss_kib, "{p:?}");
        if let Some(h) = p.heap_kib {
            assert!(h >= 8 * 1024, "{p:?}");
        }
        assert_eq!(block.iter().map(|&b| b as usize).sum::<usize>(), 8 << 20);
    }

    #[test]
    fn the_json_names_every_part() {
        let p = ProcessCost {
            rss_kib: 2,
            peak_rss_kib: 3,
            rss_anon_kib: 1,
            rss_file_kib: 1,
            rss_shmem_kib: 0,
            cpu_s: 1.234,
            heap_kib: Some(1),
            heap_free_kib: Some(0),
        };
        let held = HeldStats {
            now: 1,
            peak: 5,
            peak_bytes: 1025,
            released_early: 7,
        };
        let v = json(&p, &held, (2, 9));
        assert_eq!(v["cpu_s"], 1.23);
        assert_eq!(v["held_events"]["peak_kib"], 2);
        assert_eq!(v["held_events"]["released_early"], 7);
        assert_eq!(v["layer_questions"]["peak"], 9);
    }
}
