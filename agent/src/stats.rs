//! Attributed events and write snapshots turned into per-owner numbers:
//! HDR histograms (ns) for copy-ups per object, per operation and for
//! normal writes, counts, bytes and the files that cost the most.

use crate::event::{KernelEvent, Kind};
use agent_ebpf::{hist_bucket, hist_bucket_range, WriteStats, HIST_BUCKETS};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};

/// Who an event belongs to: a container, or `host`. Its identity is its
/// id: the name and image are descriptions, filled in when known.
#[derive(Clone, Debug)]
pub struct Owner {
    pub id: String,
    pub name: String,
    pub image: String,
}

impl PartialEq for Owner {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Owner {}

impl std::hash::Hash for Owner {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

impl PartialOrd for Owner {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Owner {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl Owner {
    pub fn host() -> Self {
        Owner {
            id: "host".into(),
            name: "host".into(),
            image: String::new(),
        }
    }
}

pub fn new_hist() -> Histogram<u64> {
    // 1 ns .. ~18 min at 3 significant digits: finer than the kernel's
    // 8 buckets per power of two, so merging loses nothing.
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid histogram bounds")
}

#[derive(Clone, Debug, Default)]
pub struct FileCost {
    pub count: u64,
    pub total_ns: u64,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct OwnerStats {
    pub copy_up_count: u64,
    pub copy_up_bytes: u64,
    /// Each object copied up (files and parent directories).
    pub copy_up: Histogram<u64>,
    /// Each operation as the caller waited for it, parents included.
    pub copy_up_op: Histogram<u64>,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub files: HashMap<String, FileCost>,
}

impl Default for OwnerStats {
    fn default() -> Self {
        Self {
            copy_up_count: 0,
            copy_up_bytes: 0,
            copy_up: new_hist(),
            copy_up_op: new_hist(),
            whiteouts: 0,
            opaque_dirs: 0,
            files: HashMap::new(),
        }
    }
}

/// Normal writes of one owner, rebuilt from the kernel's cumulative maps.
#[derive(Clone)]
pub struct WriteTotals {
    pub count: u64,
    pub bytes: u64,
    pub timed: u64,
    pub latency: Histogram<u64>,
}

impl Default for WriteTotals {
    fn default() -> Self {
        Self {
            count: 0,
            bytes: 0,
            timed: 0,
            latency: new_hist(),
        }
    }
}

impl WriteTotals {
    /// Adds one kernel histogram: each bucket's count at its midpoint.
    pub fn add_kernel(&mut self, s: &WriteStats) {
        self.count += s.count;
        self.bytes += s.bytes;
        self.timed += s.timed;
        for (i, &n) in s.buckets.iter().enumerate().take(HIST_BUCKETS) {
            if n == 0 {
                continue;
            }
            let (lo, hi) = hist_bucket_range(i);
            let hi = hi.min(1 << 40);
            let mid = (lo + (hi - lo) / 2).max(1);
            self.latency.saturating_record_n(mid, n);
        }
    }
}

/// The value range `[lo, hi]` a write latency from [`WriteTotals`] can
/// stand for: the kernel bucket it was counted in (values are recorded at
/// the bucket's midpoint, 8 buckets per power of two).
pub fn write_value_range(v: u64) -> (u64, u64) {
    let (lo, hi) = hist_bucket_range(hist_bucket(v));
    (lo, hi.min(1 << 40))
}

#[derive(Default)]
pub struct Stats {
    pub owners: BTreeMap<Owner, OwnerStats>,
}

impl Stats {
    pub fn record(&mut self, owner: &Owner, ev: &KernelEvent) {
        let s = self.owners.entry(owner.clone()).or_default();
        match &ev.kind {
            Kind::CopyUp(c) => {
                s.copy_up_count += 1;
                s.copy_up_bytes += c.bytes;
                s.copy_up.saturating_record(c.latency_ns.max(1));
                if let Some(op) = c.op_latency_ns {
                    s.copy_up_op.saturating_record(op.max(1));
                }
                let f = s.files.entry(ev.path_display()).or_default();
                f.count += 1;
                f.total_ns += c.latency_ns;
                f.bytes += c.bytes;
            }
            Kind::Whiteout { .. } => s.whiteouts += 1,
            Kind::OpaqueDir => s.opaque_dirs += 1,
        }
    }

    /// Makes sure an owner appears even before it has events.
    pub fn touch(&mut self, owner: &Owner) {
        self.owners.entry(owner.clone()).or_default();
    }
}

/// Top files by total copy-up time.
pub fn top_files(files: &HashMap<String, FileCost>, n: usize) -> Vec<(&String, &FileCost)> {
    let mut v: Vec<_> = files.iter().collect();
    v.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_buckets_merge_keeps_count_and_resolution() {
        let mut s: WriteStats = unsafe { std::mem::zeroed() };
        for v in [1_000u64, 1_100, 50_000, 2_000_000] {
            s.buckets[hist_bucket(v)] += 1;
            s.count += 1;
            s.timed += 1;
            s.bytes += 4096;
        }
        let mut t = WriteTotals::default();
        t.add_kernel(&s);
        t.add_kernel(&s);
        assert_eq!(t.count, 8);
        assert_eq!(t.bytes, 8 * 4096);
        assert_eq!(t.latency.len(), 8);
        // Each value lands within its kernel bucket's 1/8-octave width.
        let p50 = t.latency.value_at_quantile(0.5);
        assert!((1_000..=1_200).contains(&p50), "p50 {p50}");
        let max = t.latency.max();
        assert!((2_000_000..2_300_000).contains(&max), "max {max}");
    }

    #[test]
    fn a_merged_write_value_maps_back_to_its_kernel_bucket() {
        let mut s: WriteStats = unsafe { std::mem::zeroed() };
        s.buckets[hist_bucket(170_000)] += 1;
        let mut t = WriteTotals::default();
        t.add_kernel(&s);
        let v = t.latency.value_at_quantile(0.5);
        let (lo, hi) = write_value_range(v);
        assert!(lo <= 170_000 && 170_000 <= hi, "{lo}..{hi}");
        // 8 buckets per octave: about 1/8 of the value wide.
        assert_eq!(hi - lo + 1, 1 << 14);
    }

    #[test]
    fn top_files_orders_by_total_time() {
        let mut files = HashMap::new();
        files.insert(
            "a".to_string(),
            FileCost {
                count: 1,
                total_ns: 5,
                bytes: 0,
            },
        );
        files.insert(
            "b".to_string(),
            FileCost {
                count: 2,
                total_ns: 50,
                bytes: 0,
            },
        );
        let top = top_files(&files, 1);
        assert_eq!(top[0].0, "b");
    }
}
