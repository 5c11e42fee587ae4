//! The files with the most copy-up time, in bounded memory.
//!
//! Weighted Space-Saving (Metwally, Agrawal, El Abbadi, "Efficient
//! computation of frequent and top-k elements in data streams", 2005),
//! weighted by copy-up time: at most `capacity` files are tracked. A file
//! not tracked takes the place of the tracked file with the least time,
//! inheriting that time as its possible error. For a table that has seen
//! copy-ups totalling W ns:
//!
//! - each tracked file's `total_ns` counts exactly its copy-ups since it
//!   entered the table, and its true total lies in
//!   `total_ns ..= total_ns + error_ns`, with `error_ns <= W / capacity`;
//! - every file whose true total exceeds `W / capacity` is tracked;
//! - what is not in the rows returned by [`TopFiles::top`] is summed in
//!   [`TopFiles::other`], so rows and other add up exactly to the totals.
//!
//! Files never evicted have `error_ns == 0` and exact numbers: a container
//! that copied up no more than `capacity` distinct paths has an exact table.
//!
//! Owned rather than taken from a crate: the heavy-hitter crates count
//! occurrences of keys, and here each key carries three sums (count, time,
//! bytes) ranked by one of them; the algorithm is the ~60 lines below.

/// Files tracked per container unless said otherwise.
pub const DEFAULT_CAPACITY: usize = 32;
/// Files shown per container (live view and JSON `top_files`).
pub const SHOWN: usize = 10;

/// Copy-ups of one file, or of several summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCost {
    pub count: u64,
    pub total_ns: u64,
    pub bytes: u64,
}

impl FileCost {
    fn add(&mut self, o: &FileCost) {
        self.count += o.count;
        self.total_ns += o.total_ns;
        self.bytes += o.bytes;
    }

    fn sub(&mut self, o: &FileCost) {
        self.count -= o.count;
        self.total_ns -= o.total_ns;
        self.bytes -= o.bytes;
    }
}

/// One tracked file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: Box<str>,
    /// Copy-ups since the file entered the table (all of them when
    /// `error_ns` is 0).
    pub cost: FileCost,
    /// How much more copy-up time the file may have had before it entered
    /// the table (counted in `other` then).
    pub error_ns: u64,
}

impl FileEntry {
    /// Upper bound of the file's true copy-up time; the table ranks by it.
    pub fn upper_ns(&self) -> u64 {
        self.cost.total_ns + self.error_ns
    }
}

/// Weighted Space-Saving table of one container's files; see the module
/// comment for its guarantees.
#[derive(Clone, Debug)]
pub struct TopFiles {
    entries: Vec<FileEntry>,
    capacity: usize,
    /// No file outside the table has more copy-up time than this.
    floor: u64,
    all: FileCost,
}

impl Default for TopFiles {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TopFiles {
    /// Allocates nothing until the first copy-up. `capacity` is at least 1.
    pub const fn new(capacity: usize) -> Self {
        TopFiles {
            entries: Vec::new(),
            capacity: if capacity == 0 { 1 } else { capacity },
            floor: 0,
            all: FileCost {
                count: 0,
                total_ns: 0,
                bytes: 0,
            },
        }
    }

    pub fn record(&mut self, path: &str, latency_ns: u64, bytes: u64) {
        let c = FileCost {
            count: 1,
            total_ns: latency_ns,
            bytes,
        };
        self.all.add(&c);
        if let Some(e) = self.entries.iter_mut().find(|e| &*e.path == path) {
            e.cost.add(&c);
            return;
        }
        if self.entries.len() < self.capacity {
            if self.entries.len() == self.entries.capacity() {
                let more = (self.entries.len() / 2).max(4);
                self.entries
                    .reserve_exact(more.min(self.capacity - self.entries.len()));
            }
            self.entries.push(FileEntry {
                path: path.into(),
                cost: c,
                error_ns: self.floor,
            });
            return;
        }
        let (i, min) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.upper_ns()))
            .min_by_key(|&(_, u)| u)
            .expect("a full table has entries");
        self.floor = self.floor.max(min);
        self.entries[i] = FileEntry {
            path: path.into(),
            cost: c,
            error_ns: min,
        };
    }

    /// Every copy-up recorded, exactly.
    pub fn total(&self) -> FileCost {
        self.all
    }

    /// True when no copy-up was recorded.
    pub fn is_empty(&self) -> bool {
        self.all.count == 0
    }

    /// Files tracked now.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The `n` files with the most copy-up time (upper bound), most first,
    /// ties by path.
    pub fn top(&self, n: usize) -> Vec<&FileEntry> {
        let mut v: Vec<&FileEntry> = self.entries.iter().collect();
        v.sort_by(|a, b| b.upper_ns().cmp(&a.upper_ns()).then(a.path.cmp(&b.path)));
        v.truncate(n);
        v
    }

    /// Copy-ups not in `top(n)`: the totals minus its rows.
    pub fn other(&self, n: usize) -> FileCost {
        let mut o = self.all;
        for e in self.top(n) {
            o.sub(&e.cost);
        }
        o
    }

    /// Keeps only `top(n)` and tracks at most `n` files from now on; the
    /// dropped files' copy-ups move to `other`, the guarantees hold with
    /// `n` for `capacity`.
    pub fn compact(&mut self, n: usize) {
        let n = n.max(1);
        if self.entries.len() > n {
            self.entries
                .sort_by(|a, b| b.upper_ns().cmp(&a.upper_ns()).then(a.path.cmp(&b.path)));
            for e in self.entries.drain(n..) {
                self.floor = self.floor.max(e.upper_ns());
            }
        }
        self.capacity = n;
        self.entries.shrink_to_fit();
    }

    /// Heap bytes held, paths included (allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<FileEntry>()
            + self.entries.iter().map(|e| e.path.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.max(1);
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn small_tables_are_exact() {
        let mut t = TopFiles::new(4);
        t.record("a", 5, 1);
        t.record("b", 50, 2);
        t.record("b", 50, 2);
        t.record("c", 7, 0);
        let top = t.top(2);
        assert_eq!(&*top[0].path, "b");
        assert_eq!(
            top[0].cost,
            FileCost {
                count: 2,
                total_ns: 100,
                bytes: 4
            }
        );
        assert_eq!(top[0].error_ns, 0);
        assert_eq!(&*top[1].path, "c");
        assert_eq!(
            t.other(2),
            FileCost {
                count: 1,
                total_ns: 5,
                bytes: 1
            }
        );
        assert_eq!(t.total().count, 4);
    }

    /// Against exact per-file sums: the bounds of the module comment.
    #[test]
    fn bounds_hold_on_a_skewed_stream() {
        let mut next = rng(11);
        let cap = 16;
        let mut t = TopFiles::new(cap);
        let mut exact: HashMap<String, FileCost> = HashMap::new();
        for i in 0..50_000u64 {
            // 5 heavy files among 5,000 light ones.
            let (p, ns) = if i % 10 == 0 {
                (format!("heavy/{}", next() % 5), 10_000 + next() % 1_000)
            } else {
                (format!("light/{}", next() % 5_000), 1 + next() % 2_000)
            };
            let b = next() % 100;
            t.record(&p, ns, b);
            let e = exact.entry(p).or_default();
            e.add(&FileCost {
                count: 1,
                total_ns: ns,
                bytes: b,
            });
        }
        let w = t.total().total_ns;
        assert_eq!(w, exact.values().map(|c| c.total_ns).sum::<u64>());
        for e in t.top(cap) {
            let truth = exact[&*e.path];
            assert!(e.cost.total_ns <= truth.total_ns, "{}", e.path);
            assert!(truth.total_ns <= e.upper_ns(), "{}", e.path);
            assert!(e.cost.count <= truth.count && e.cost.bytes <= truth.bytes);
            assert!(e.error_ns <= w / cap as u64, "{} > W/k", e.error_ns);
        }
        let mut truth: Vec<_> = exact.iter().collect();
        truth.sort_by_key(|(_, c)| std::cmp::Reverse(c.total_ns));
        let shown: Vec<&str> = t.top(5).iter().map(|e| &*e.path).collect();
        for (p, c) in &truth[..5] {
            assert!(c.total_ns > w / cap as u64);
            assert!(shown.contains(&p.as_str()), "{p} missing from {shown:?}");
        }
        // Rows and other add up.
        for n in [0, 1, 5, cap] {
            let mut sum = t.other(n);
            for e in t.top(n) {
                sum.add(&e.cost);
            }
            assert_eq!(sum, t.total(), "n = {n}");
        }
        assert!(t.tracked() <= cap);
    }

    #[test]
    fn compact_keeps_the_top_and_the_bounds() {
        let mut t = TopFiles::new(8);
        for i in 0..8u64 {
            t.record(&format!("f{i}"), (i + 1) * 100, 1);
        }
        let before: Vec<_> = t.top(3).into_iter().cloned().collect();
        t.compact(3);
        assert_eq!(t.tracked(), 3);
        assert_eq!(t.capacity(), 3);
        let after: Vec<_> = t.top(3).into_iter().cloned().collect();
        assert_eq!(before, after);
        assert_eq!(t.other(3).total_ns, (1..=5).map(|i| i * 100).sum::<u64>());
        // f0..f4 (at most 500 ns each) are out; if f4 comes back its error
        // must cover its 500 ns, so the table may not claim it is exact.
        t.record("f4", 1, 0);
        let f4 = t.top(3).into_iter().find(|e| &*e.path == "f4").cloned();
        if let Some(f4) = f4 {
            assert!(f4.upper_ns() >= 501, "{f4:?}");
        }
        let mut sum = t.other(3);
        for e in t.top(3) {
            sum.add(&e.cost);
        }
        assert_eq!(sum, t.total());
    }

    #[test]
    fn schema_document_states_these_numbers() {
        // Whitespace-insensitive: the document is wrapped by hand.
        let doc = crate::report::SCHEMA_DOC
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for said in [
            format!("at most {SHOWN}."),
            format!("at most {DEFAULT_CAPACITY} files per container"),
            format!("at most {DEFAULT_CAPACITY} distinct paths"),
            format!("total copy-up time / {DEFAULT_CAPACITY}"),
            format!("{} significant digits", crate::hist::SIGNIFICANT_DIGITS),
        ] {
            assert!(doc.contains(&said), "docs/json-schema.md lacks {said:?}");
        }
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let mut t = TopFiles::new(32);
        for i in 0..100_000u64 {
            t.record(&format!("some/dir/file-{i}"), i % 977, 0);
        }
        assert_eq!(t.tracked(), 32);
        assert!(t.heap_bytes() <= 32 * (std::mem::size_of::<FileEntry>() + 24));
        assert_eq!(t.total().count, 100_000);
    }
}
