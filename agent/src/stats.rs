//! Attributed events and write snapshots turned into per-owner numbers:
//! exact counts and bytes, sparse log-linear histograms (ns, see
//! [`crate::hist`]) for copy-ups per object, per operation and for normal
//! writes, and a bounded table of the files that cost the most (see
//! [`crate::topfiles`]). Memory grows with owners and histogram buckets
//! used, never with distinct paths.

use crate::event::{KernelEvent, Kind};
use crate::hist::LogHist;
pub use crate::topfiles::{FileCost, FileEntry, TopFiles, DEFAULT_CAPACITY, SHOWN};
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
    /// Its Kubernetes pod, when known.
    pub pod: Option<crate::kube::Pod>,
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
    /// How people name it: `namespace/pod/container` in a pod, else its
    /// name.
    pub fn label(&self) -> String {
        match &self.pod {
            Some(p) => format!("{}/{}/{}", p.namespace, p.name, self.name),
            None => self.name.clone(),
        }
    }

    pub fn host() -> Self {
        Owner {
            id: "host".into(),
            name: "host".into(),
            image: String::new(),
            pod: None,
        }
    }
}

/// An empty dense histogram with the buckets of [`LogHist`], for callers
/// that want an HdrHistogram (the JSON `hdr` field, tests).
pub fn new_hist() -> Histogram<u64> {
    crate::hist::hdr()
}

/// One container's numbers. Counts and bytes are exact; histograms are at
/// [`crate::hist`]'s resolution (1/128); files are a bounded
/// [`TopFiles`] table whose rows and `other` add up to the exact totals.
#[derive(Clone, Debug, Default)]
pub struct OwnerStats {
    pub copy_up_count: u64,
    pub copy_up_bytes: u64,
    /// Each object copied up (files and parent directories).
    pub copy_up: LogHist,
    /// Each operation as the caller waited for it, parents included.
    pub copy_up_op: LogHist,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Renames recorded as redirects (`redirect_dir=on`).
    pub redirects: u64,
    pub files: TopFiles,
    /// Copy-ups per [`crate::event::CopyUpKind`] (indexed by its value): they add up to
    /// `copy_up_count` and `copy_up_bytes`.
    pub by_kind: [KindTotals; 3],
}

/// Count, bytes and summed latency of one [`crate::event::CopyUpKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub count: u64,
    pub bytes: u64,
    pub total_ns: u64,
}

impl OwnerStats {
    /// Nothing recorded; `file_capacity` files tracked at most.
    pub const fn new(file_capacity: usize) -> Self {
        OwnerStats {
            copy_up_count: 0,
            copy_up_bytes: 0,
            copy_up: LogHist::new(),
            copy_up_op: LogHist::new(),
            whiteouts: 0,
            opaque_dirs: 0,
            redirects: 0,
            files: TopFiles::new(file_capacity),
            by_kind: [KindTotals {
                count: 0,
                bytes: 0,
                total_ns: 0,
            }; 3],
        }
    }

    /// Heap bytes held (allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        self.copy_up.heap_bytes() + self.copy_up_op.heap_bytes() + self.files.heap_bytes()
    }
}

/// Normal writes of one owner, rebuilt from the kernel's cumulative maps.
#[derive(Clone, Debug, Default)]
pub struct WriteTotals {
    pub count: u64,
    pub bytes: u64,
    pub timed: u64,
    pub latency: LogHist,
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
            self.latency.record_n(mid, n);
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

/// One row of a snapshot: who, their copy-up numbers, their writes.
pub type Row<'a> = (&'a Owner, &'a OwnerStats, &'a WriteTotals);

static NO_STATS: OwnerStats = OwnerStats::new(1);
static NO_WRITES: WriteTotals = WriteTotals {
    count: 0,
    bytes: 0,
    timed: 0,
    latency: LogHist::new(),
};

/// Every owner's numbers. Memory per owner: a few hundred bytes, 6 per
/// non-empty histogram bucket, and at most `file_capacity` tracked files
/// (see [`Stats::compact`] for exited containers).
pub struct Stats {
    pub owners: BTreeMap<Owner, OwnerStats>,
    file_capacity: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self::with_file_capacity(DEFAULT_CAPACITY)
    }
}

impl Stats {
    /// Tracks at most `file_capacity` files per owner (error bound of
    /// the top files: total copy-up time / `file_capacity`).
    pub fn with_file_capacity(file_capacity: usize) -> Self {
        Stats {
            owners: BTreeMap::new(),
            file_capacity: file_capacity.max(1),
        }
    }

    fn entry(&mut self, owner: &Owner) -> &mut OwnerStats {
        // Look up before cloning: the owner is cloned once, not per event.
        if !self.owners.contains_key(owner) {
            self.owners
                .insert(owner.clone(), OwnerStats::new(self.file_capacity));
        }
        self.owners.get_mut(owner).expect("inserted above")
    }

    pub fn record(&mut self, owner: &Owner, ev: &KernelEvent) {
        let s = self.entry(owner);
        match &ev.kind {
            Kind::CopyUp(c) => {
                s.copy_up_count += 1;
                s.copy_up_bytes += c.bytes;
                let k = &mut s.by_kind[c.kind as usize];
                k.count += 1;
                k.bytes += c.bytes;
                k.total_ns += c.latency_ns;
                s.copy_up.record(c.latency_ns.max(1));
                if let Some(op) = c.op_latency_ns {
                    s.copy_up_op.record(op.max(1));
                }
                s.files.record(&ev.path_display(), c.latency_ns, c.bytes);
            }
            Kind::Whiteout { .. } => s.whiteouts += 1,
            Kind::OpaqueDir => s.opaque_dirs += 1,
            Kind::Redirect => s.redirects += 1,
        }
    }

    /// Makes sure an owner appears even before it has events.
    pub fn touch(&mut self, owner: &Owner) {
        self.entry(owner);
    }

    /// Shrinks an owner that will have no more events (an exited
    /// container) to what the final report shows: its counts and
    /// histograms (spare capacity given back) and its [`SHOWN`] top files,
    /// the other files' copy-ups moving to `other`. Events recorded later
    /// are still counted, with at most [`SHOWN`] files tracked. Returns
    /// false if the owner is unknown.
    ///
    /// Call it when the runtime reports the container gone (after any
    /// grace period in which late events may still arrive), e.g.
    /// `stats.compact(&owner)` from the attribution task's exit handling.
    pub fn compact(&mut self, owner: &Owner) -> bool {
        match self.owners.get_mut(owner) {
            Some(s) => {
                s.copy_up.shrink_to_fit();
                s.copy_up_op.shrink_to_fit();
                s.files.compact(SHOWN);
                true
            }
            None => false,
        }
    }

    /// Replaces owners' descriptions (name, image) with what `describe`
    /// says now; the identity (the id) stays, so a container named after
    /// its first events keeps one row.
    pub fn refresh_names(&mut self, describe: impl Fn(&Owner) -> Owner) {
        let renamed: Vec<Owner> = self
            .owners
            .keys()
            .map(&describe)
            .zip(self.owners.keys())
            .filter(|(now, was)| now.name != was.name || now.image != was.image)
            .map(|(now, _)| now)
            .collect();
        for owner in renamed {
            if let Some(s) = self.owners.remove(&owner) {
                self.owners.insert(owner, s);
            }
        }
    }

    /// A snapshot for rendering, by reference: every owner with copy-up
    /// numbers or writes, ordered by owner. Nothing is cloned.
    pub fn rows<'a>(&'a self, writes: &'a HashMap<Owner, WriteTotals>) -> Vec<Row<'a>> {
        let mut rows: Vec<Row<'a>> = self
            .owners
            .iter()
            .map(|(o, s)| (o, s, writes.get(o).unwrap_or(&NO_WRITES)))
            .collect();
        rows.extend(
            writes
                .iter()
                .filter(|(o, _)| !self.owners.contains_key(*o))
                .map(|(o, w)| (o, &NO_STATS, w)),
        );
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows
    }

    /// Heap bytes held by the aggregation (allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        self.owners
            .iter()
            .map(|(o, s)| {
                std::mem::size_of::<(Owner, OwnerStats)>()
                    + o.id.capacity()
                    + o.name.capacity()
                    + o.image.capacity()
                    + s.heap_bytes()
            })
            .sum()
    }
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

    fn copy_up(path: &str, ns: u64, bytes: u64) -> KernelEvent {
        KernelEvent::plain(
            Kind::CopyUp(crate::event::CopyUp {
                latency_ns: ns,
                op_latency_ns: Some(ns + 1),
                parents: 0,
                bytes,
                data: bytes > 0,
                kind: crate::event::CopyUpKind::Full,
                ancestor: false,
                removed: false,
                links: 1,
                stack: Vec::new(),
            }),
            path,
        )
    }

    fn owner(id: &str) -> Owner {
        Owner {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            pod: None,
        }
    }

    #[test]
    fn copy_ups_are_split_by_kind_and_add_up() {
        use crate::event::CopyUpKind;
        let mut st = Stats::default();
        let a = owner("a");
        let with_kind = |path: &str, ns: u64, bytes: u64, k: CopyUpKind| {
            let mut e = copy_up(path, ns, bytes);
            if let Kind::CopyUp(c) = &mut e.kind {
                c.kind = k;
            }
            e
        };
        st.record(&a, &with_kind("d", 7, 0, CopyUpKind::Full));
        st.record(&a, &with_kind("d/f", 3, 0, CopyUpKind::MetadataOnly));
        st.record(&a, &with_kind("d/f", 90, 4096, CopyUpKind::DeferredData));
        let s = &st.owners[&a];
        let k = |k: CopyUpKind| s.by_kind[k as usize];
        assert_eq!(
            k(CopyUpKind::MetadataOnly),
            KindTotals {
                count: 1,
                bytes: 0,
                total_ns: 3
            }
        );
        assert_eq!(
            k(CopyUpKind::DeferredData),
            KindTotals {
                count: 1,
                bytes: 4096,
                total_ns: 90
            }
        );
        assert_eq!(k(CopyUpKind::Full).count, 1);
        let sum = |f: fn(&KindTotals) -> u64| s.by_kind.iter().map(f).sum::<u64>();
        assert_eq!(sum(|t| t.count), s.copy_up_count);
        assert_eq!(sum(|t| t.bytes), s.copy_up_bytes);
    }

    #[test]
    fn records_exactly_and_ranks_files_by_time() {
        let mut st = Stats::default();
        let a = owner("a");
        st.record(&a, &copy_up("x", 5, 1));
        st.record(&a, &copy_up("y", 50, 2));
        st.record(&a, &copy_up("y", 50, 2));
        let mut w = copy_up("gone", 0, 0);
        w.kind = Kind::Whiteout {
            cause: crate::event::WhiteoutCause::Unlink,
        };
        st.record(&a, &w);
        let s = &st.owners[&a];
        assert_eq!((s.copy_up_count, s.copy_up_bytes, s.whiteouts), (3, 5, 1));
        assert_eq!((s.copy_up.len(), s.copy_up_op.len()), (3, 3));
        let top = s.files.top(SHOWN);
        assert_eq!(&*top[0].path, "y");
        assert_eq!(top[0].cost.total_ns, 100);
        assert_eq!(s.files.total().count, s.copy_up_count);
    }

    #[test]
    fn rows_borrow_and_join_writes() {
        let mut st = Stats::default();
        let (a, b) = (owner("a"), owner("b"));
        st.record(&b, &copy_up("x", 5, 1));
        let mut writes = HashMap::new();
        writes.insert(
            a.clone(),
            WriteTotals {
                count: 7,
                ..Default::default()
            },
        );
        let rows = st.rows(&writes);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, &a);
        assert_eq!(rows[0].1.copy_up_count, 0);
        assert_eq!(rows[0].2.count, 7);
        assert_eq!(rows[1].0, &b);
        // The row is the aggregation's own entry, not a copy.
        assert!(std::ptr::eq(rows[1].1, &st.owners[&b]));
        assert_eq!(rows[1].2.count, 0);
    }

    #[test]
    fn compact_keeps_totals_and_the_shown_files() {
        let mut st = Stats::default();
        let a = owner("a");
        for i in 0..DEFAULT_CAPACITY as u64 {
            st.record(&a, &copy_up(&format!("f{i}"), 100 + i, 10));
        }
        let shown: Vec<_> = st.owners[&a]
            .files
            .top(SHOWN)
            .into_iter()
            .cloned()
            .collect();
        let before = st.owners[&a].heap_bytes();
        assert!(st.compact(&a));
        assert!(!st.compact(&owner("nobody")));
        let s = &st.owners[&a];
        assert!(s.heap_bytes() < before, "{} !< {before}", s.heap_bytes());
        assert_eq!(s.files.tracked(), SHOWN);
        let after: Vec<_> = s.files.top(SHOWN).into_iter().cloned().collect();
        assert_eq!(shown, after);
        assert_eq!(s.copy_up_count, DEFAULT_CAPACITY as u64);
        assert_eq!(s.copy_up.len(), DEFAULT_CAPACITY as u64);
        let other = s.files.other(SHOWN);
        assert_eq!(other.count, (DEFAULT_CAPACITY - SHOWN) as u64);
        assert_eq!(other.bytes, 10 * other.count);
    }
}
