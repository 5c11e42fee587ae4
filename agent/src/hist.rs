//! A sparse latency histogram that stores only its non-empty buckets.
//!
//! Its buckets are exactly those of an HdrHistogram with bounds 1..2^40 ns
//! and 2 significant digits ([`hdr`]): every value below 256 ns has a
//! bucket of its own, and above that each power of two is split into 128
//! equal buckets, so a bucket's width is at most 1/128 (0.8 %) of the
//! values in it. [`LogHist::to_hdr`] therefore gives the very histogram
//! that recording the same values into [`hdr`] would have given, and the
//! queries here ([`LogHist::value_at_quantile`], [`LogHist::max`], ...)
//! answer what that HdrHistogram would answer.
//!
//! Why not the HdrHistogram itself: it is dense, 4,480 counters (35 KiB)
//! at this resolution and 31,744 (254 KiB) at 3 digits, allocated whole
//! for every container however few events it had. This one costs nothing
//! while empty, 2 bytes per value while it holds few values spread over
//! many buckets, then 6 bytes per non-empty bucket (10 once a bucket passes
//! 2^32 counts), whichever is smaller: at most 4,480 buckets (27 KiB)
//! however many values it holds. The `histogram` crate's `SparseHistogram` cannot be recorded
//! into (it is built from a dense histogram) and keys buckets by `usize`.

use hdrhistogram::Histogram;

/// Significant decimal digits of the equivalent HdrHistogram.
pub const SIGNIFICANT_DIGITS: u8 = 2;
/// Largest value kept as itself; larger ones are clamped to it, as
/// HdrHistogram's `saturating_record` does.
pub const HIGHEST: u64 = 1 << 40;
/// log2 of the buckets per power of two (above 256 ns).
const SUB_BITS: u32 = 7;
/// Values at or above this are clamped (the HdrHistogram's counts array
/// ends just below it).
const UNTRACKABLE: u64 = 1 << 41;

/// An empty HdrHistogram with the same buckets as [`LogHist`].
pub fn hdr() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// Bucket index of a value: the index HdrHistogram gives it.
fn index_of(v: u64) -> u16 {
    let v = if v >= UNTRACKABLE { HIGHEST } else { v };
    // Power-of-two group: 0 for v < 256, then one more per doubling.
    let b = (64 - (v | ((1 << (SUB_BITS + 1)) - 1)).leading_zeros()) - (SUB_BITS + 1);
    ((b << SUB_BITS) as u64 + (v >> b)) as u16
}

/// Lowest value and width of a bucket.
fn bucket(idx: u16) -> (u64, u64) {
    let idx = idx as u64;
    let b = if idx < 2 << SUB_BITS {
        0
    } else {
        (idx >> SUB_BITS) - 1
    };
    let sub = idx - (b << SUB_BITS);
    (sub << b, 1 << b)
}

fn lowest(idx: u16) -> u64 {
    bucket(idx).0
}

fn highest(idx: u16) -> u64 {
    let (lo, w) = bucket(idx);
    lo + w - 1
}

fn median(idx: u16) -> u64 {
    let (lo, w) = bucket(idx);
    lo + (w >> 1)
}

/// How bucket counts are kept.
#[derive(Clone, Debug)]
enum Counts {
    /// None: `keys` holds one entry per value, repeated for equal
    /// buckets (2 bytes a value), while that is smaller than the others.
    Unit,
    /// 32 bits per non-empty bucket until one would overflow,
    Narrow(Vec<u32>),
    /// then 64.
    Wide(Vec<u64>),
}

/// At most this many values are kept one by one (8 KiB).
const MAX_UNIT: usize = 4096;

/// Sparse log-linear histogram of nanoseconds; see the module comment.
#[derive(Clone, Debug)]
pub struct LogHist {
    /// Bucket indexes, ascending: distinct, or with repeats in `Unit`.
    keys: Vec<u16>,
    /// Count of each bucket in `keys`, never 0.
    counts: Counts,
    total: u64,
}

impl Default for LogHist {
    fn default() -> Self {
        Self::new()
    }
}

/// (bucket index, count) of each non-empty bucket, ascending.
struct Buckets<'a> {
    h: &'a LogHist,
    at: usize,
}

impl Iterator for Buckets<'_> {
    type Item = (u16, u64);

    fn next(&mut self) -> Option<(u16, u64)> {
        let k = *self.h.keys.get(self.at)?;
        let n = match &self.h.counts {
            Counts::Unit => self.h.keys[self.at..]
                .iter()
                .take_while(|&&x| x == k)
                .count() as u64,
            Counts::Narrow(c) => c[self.at] as u64,
            Counts::Wide(c) => c[self.at],
        };
        self.at += match self.h.counts {
            Counts::Unit => n as usize,
            _ => 1,
        };
        Some((k, n))
    }
}

/// Grows `v` by a quarter (at least 4), not double: these are many and small.
fn grow<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(4));
    }
}

impl LogHist {
    /// An empty histogram; allocates nothing until the first value.
    pub const fn new() -> Self {
        LogHist {
            keys: Vec::new(),
            counts: Counts::Unit,
            total: 0,
        }
    }

    fn iter(&self) -> Buckets<'_> {
        Buckets { h: self, at: 0 }
    }

    /// From one entry per value to one per bucket.
    fn make_counted(&mut self) {
        if let Counts::Unit = self.counts {
            let (keys, counts): (Vec<u16>, Vec<u32>) =
                self.iter().map(|(k, n)| (k, n as u32)).unzip();
            self.keys = keys;
            self.counts = Counts::Narrow(counts);
        }
    }

    /// True when one entry per bucket would take less room than one per
    /// value (6 bytes a bucket against 2 a value).
    fn counted_is_smaller(&self) -> bool {
        let distinct = self.keys.windows(2).filter(|w| w[0] != w[1]).count() + 1;
        self.keys.len() > 3 * distinct
    }

    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    /// Adds `n` values `v`; `v` above [`HIGHEST`]'s bucket range is
    /// clamped to [`HIGHEST`].
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let k = index_of(v);
        if let Counts::Unit = self.counts {
            let len = self.keys.len();
            if n > 4
                || len + n as usize > MAX_UNIT
                || (len == self.keys.capacity() && len > 0 && self.counted_is_smaller())
            {
                self.make_counted();
            } else {
                let at = self.keys.partition_point(|&x| x <= k);
                for _ in 0..n {
                    grow(&mut self.keys);
                    self.keys.insert(at, k);
                }
                self.total += n;
                return;
            }
        }
        let pos = self.keys.binary_search(&k);
        if let Counts::Narrow(c) = &self.counts {
            let now = pos.map_or(0, |i| c[i] as u64);
            if now.saturating_add(n) > u32::MAX as u64 {
                self.counts = Counts::Wide(c.iter().map(|&x| x as u64).collect());
            }
        }
        match (pos, &mut self.counts) {
            (Ok(i), Counts::Narrow(c)) => c[i] += n as u32,
            (Ok(i), Counts::Wide(c)) => c[i] = c[i].saturating_add(n),
            (Err(i), Counts::Narrow(c)) => {
                grow(&mut self.keys);
                grow(c);
                self.keys.insert(i, k);
                c.insert(i, n as u32);
            }
            (Err(i), Counts::Wide(c)) => {
                grow(&mut self.keys);
                grow(c);
                self.keys.insert(i, k);
                c.insert(i, n);
            }
            (_, Counts::Unit) => unreachable!("counted above"),
        }
        self.total = self.total.saturating_add(n);
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Non-empty buckets as (lowest value, count), ascending.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.iter().map(|(k, n)| (lowest(k), n))
    }

    /// The HdrHistogram ([`hdr`]) holding the same values.
    /// The values of an HdrHistogram (a saved report's `hdr`), bucketed as
    /// here: exact for one made by [`LogHist::to_hdr`].
    pub fn from_hdr(h: &Histogram<u64>) -> LogHist {
        let mut l = LogHist::new();
        for v in h.iter_recorded() {
            l.record_n(v.value_iterated_to().max(1), v.count_at_value());
        }
        l
    }

    pub fn to_hdr(&self) -> Histogram<u64> {
        let mut h = hdr();
        for (v, n) in self.buckets() {
            h.saturating_record_n(v, n);
        }
        h
    }

    /// The values as the report's `hdr` field has them: base64 of the
    /// equivalent HdrHistogram's V2 serialization (empty if it cannot be
    /// serialized). Not kept between reports: about 4 us a histogram, and
    /// kept it cost 4 MiB more at 10,000 containers.
    pub fn hdr_base64(&self) -> String {
        use base64::Engine as _;
        use hdrhistogram::serialization::{Serializer, V2Serializer};
        let mut bytes = Vec::new();
        match V2Serializer::new().serialize(&self.to_hdr(), &mut bytes) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
            Err(_) => String::new(),
        }
    }

    /// As `Histogram::value_at_quantile`: the highest value equivalent to
    /// the value below which `q` of the values lie (0 when empty).
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let q = q.min(1.0);
        let at = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (k, n) in self.iter() {
            seen += n;
            if seen >= at {
                return if q == 0.0 { lowest(k) } else { highest(k) };
            }
        }
        0
    }

    /// As `Histogram::max`: highest value equivalent to the largest (0
    /// when empty).
    pub fn max(&self) -> u64 {
        self.keys.last().map_or(0, |&k| highest(k))
    }

    /// As `Histogram::min`: lowest value equivalent to the smallest (0
    /// when empty).
    pub fn min(&self) -> u64 {
        self.keys.first().map_or(0, |&k| lowest(k))
    }

    /// As `Histogram::mean`: each bucket at its median.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.iter().fold(0.0, |acc, (k, n)| {
            acc + median(k) as f64 * n as f64 / self.total as f64
        })
    }

    /// Values in `lo..=hi` counted by whole buckets, as
    /// `Histogram::count_between`: every bucket from `lo`'s to `hi`'s.
    pub fn count_between(&self, lo: u64, hi: u64) -> u64 {
        let (a, b) = (index_of(lo), index_of(hi));
        self.iter()
            .filter(|&(k, _)| k >= a && k <= b)
            .map(|(_, n)| n)
            .sum()
    }

    /// Gives back spare capacity, in the smaller of the two encodings.
    pub fn shrink_to_fit(&mut self) {
        if matches!(self.counts, Counts::Unit) && !self.keys.is_empty() && self.counted_is_smaller()
        {
            self.make_counted();
        }
        self.keys.shrink_to_fit();
        match &mut self.counts {
            Counts::Unit => {}
            Counts::Narrow(c) => c.shrink_to_fit(),
            Counts::Wide(c) => c.shrink_to_fit(),
        }
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 2
            + match &self.counts {
                Counts::Unit => 0,
                Counts::Narrow(c) => c.capacity() * 4,
                Counts::Wide(c) => c.capacity() * 8,
            }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_encoding_decodes_to_the_values() {
        use base64::Engine as _;
        use hdrhistogram::serialization::Deserializer;
        let mut h = LogHist::new();
        h.record(5_000);
        let first = h.hdr_base64();
        h.record(9_000_000);
        let second = h.hdr_base64();
        assert_ne!(first, second);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&second)
            .unwrap();
        let back: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(LogHist::from_hdr(&back).max(), h.max());
    }

    /// xorshift64*: deterministic values without a dependency.
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
    fn buckets_are_hdrhistograms() {
        let h = hdr();
        let mut next = rng(7);
        let mut vals: Vec<u64> = (0..600).collect();
        vals.extend((0..20_000).map(|_| {
            let bits = next() % 44;
            next() & ((1u64 << bits) - 1)
        }));
        vals.extend([255, 256, 257, 511, 512, HIGHEST - 1, HIGHEST, HIGHEST + 1]);
        vals.extend([UNTRACKABLE - 1, UNTRACKABLE, u64::MAX]);
        for v in vals {
            let k = index_of(v);
            let c = if v >= UNTRACKABLE { HIGHEST } else { v };
            assert_eq!(lowest(k), h.lowest_equivalent(c), "lowest of {v}");
            assert_eq!(highest(k), h.highest_equivalent(c), "highest of {v}");
            assert_eq!(median(k), h.median_equivalent(c), "median of {v}");
            assert!(lowest(k) <= c && c <= highest(k));
        }
        // Resolution: a bucket is at most 1/128 of its lowest value wide.
        for k in 256..=index_of(HIGHEST) {
            let (lo, w) = bucket(k);
            assert!(w * 128 <= lo, "bucket {k}: {lo} + {w}");
        }
    }

    #[test]
    fn same_answers_as_the_dense_histogram() {
        for seed in 1..10u64 {
            let mut next = rng(seed);
            let mut dense = hdr();
            let mut sparse = LogHist::new();
            // Few values (kept one by one) and many (counted per bucket).
            let n = 1 + next() % if seed % 2 == 0 { 100 } else { 5_000 };
            for _ in 0..n {
                // Log-uniform over 1 ns .. 2^42 ns (some clamped).
                let bits = 1 + next() % 42;
                let v = (next() & ((1u64 << bits) - 1)).max(1);
                let times = 1 + next() % 3;
                dense.saturating_record_n(v, times);
                sparse.record_n(v, times);
            }
            let back = sparse.to_hdr();
            assert!(back == dense, "seed {seed}: histograms differ");
            assert_eq!(sparse.len(), dense.len());
            for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    sparse.value_at_quantile(q),
                    dense.value_at_quantile(q),
                    "seed {seed} q {q}"
                );
            }
            assert_eq!(sparse.max(), dense.max());
            assert_eq!(sparse.min(), dense.min());
            assert_eq!(sparse.mean(), dense.mean());
            let mut lo = 1u64;
            while lo < HIGHEST {
                assert_eq!(
                    sparse.count_between(lo, lo * 2 - 1),
                    dense.count_between(lo, lo * 2 - 1),
                    "octave from {lo}"
                );
                lo *= 2;
            }
        }
    }

    #[test]
    fn empty_answers_like_an_empty_hdr_histogram() {
        let (s, d) = (LogHist::new(), hdr());
        assert!(s.is_empty() && d.is_empty());
        assert_eq!(s.value_at_quantile(0.5), d.value_at_quantile(0.5));
        assert_eq!(s.max(), d.max());
        assert_eq!(s.min(), d.min());
        assert_eq!(s.mean(), d.mean());
        assert_eq!(s.heap_bytes(), 0);
        assert!(s.to_hdr() == d);
    }

    #[test]
    fn counts_widen_past_32_bits_without_loss() {
        let mut s = LogHist::new();
        s.record_n(1_000, u32::MAX as u64 - 1);
        s.record(5);
        assert_eq!(s.heap_bytes() % 6, 0, "still narrow: {}", s.heap_bytes());
        s.record_n(1_000, 3);
        assert_eq!(s.len(), u32::MAX as u64 + 3);
        let b: Vec<_> = s.buckets().collect();
        assert_eq!(b, vec![(5, 1), (1_000, u32::MAX as u64 + 2)]);
        assert_eq!(s.to_hdr().count_at(1_000), u32::MAX as u64 + 2);
    }

    #[test]
    fn few_values_cost_two_bytes_each() {
        let mut s = LogHist::new();
        let mut next = rng(5);
        for _ in 0..100 {
            s.record(20_000 + next() % 180_000);
        }
        s.shrink_to_fit();
        assert!(matches!(s.counts, Counts::Unit));
        assert_eq!(s.heap_bytes(), 200);
        // One bucket many times: counted, whatever the order of arrival.
        for _ in 0..1_000 {
            s.record(30_000);
        }
        assert!(matches!(s.counts, Counts::Narrow(_)));
        assert_eq!(s.len(), 1_100);
        s.shrink_to_fit();
        assert!(s.heap_bytes() < 100 * 6 + 6, "{}", s.heap_bytes());
    }

    #[test]
    fn memory_follows_the_buckets_used() {
        let mut s = LogHist::new();
        for _ in 0..100_000 {
            s.record(50_000);
        }
        assert!(s.heap_bytes() <= 4 * 6, "{}", s.heap_bytes());
        let mut next = rng(3);
        for _ in 0..1_000_000 {
            s.record(next());
        }
        // Every bucket used at most once, whatever the number of values.
        let cap = index_of(HIGHEST) as usize + 1;
        assert!(s.keys.len() <= cap);
        s.shrink_to_fit();
        assert_eq!(s.heap_bytes(), s.keys.len() * 6);
    }
}
