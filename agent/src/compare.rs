//! Two saved reports side by side: containers matched by name, then by
//! image; per container and per top file the numbers before and after, the
//! change, and whether a latency difference is larger than the histograms'
//! resolution. Knows nothing of the kernel or of how it is shown.

use crate::report::read::{Loaded, Run};
use crate::stats::{write_value_range, FileCost};
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    Name,
    Image,
    /// Only in the first report.
    BeforeOnly,
    /// Only in the second report.
    AfterOnly,
}

pub struct Pair<'a> {
    pub before: Option<&'a Loaded>,
    pub after: Option<&'a Loaded>,
    pub matched_by: MatchedBy,
}

impl Pair<'_> {
    /// The name to show: the container's, or both when matched by image.
    pub fn label(&self) -> String {
        match (self.before, self.after) {
            (Some(b), Some(a)) if b.owner.name != a.owner.name => {
                format!("{} / {}", b.owner.name, a.owner.name)
            }
            (Some(c), _) | (None, Some(c)) => c.owner.name.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Containers of `before` and `after` paired: same name first, then the
/// remaining ones with the same (non-empty) image, in report order; the
/// rest alone.
pub fn match_containers<'a>(before: &'a Run, after: &'a Run) -> Vec<Pair<'a>> {
    let mut used_after = vec![false; after.containers.len()];
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut unmatched = Vec::new();
    for b in &before.containers {
        let hit = after
            .containers
            .iter()
            .enumerate()
            .find(|(i, a)| !used_after[*i] && a.owner.name == b.owner.name);
        match hit {
            Some((i, a)) => {
                used_after[i] = true;
                pairs.push(Some(Pair {
                    before: Some(b),
                    after: Some(a),
                    matched_by: MatchedBy::Name,
                }));
            }
            None => {
                unmatched.push((pairs.len(), b));
                pairs.push(None);
            }
        }
    }
    for (slot, b) in unmatched {
        let hit = after.containers.iter().enumerate().find(|(i, a)| {
            !used_after[*i] && !b.owner.image.is_empty() && a.owner.image == b.owner.image
        });
        pairs[slot] = Some(match hit {
            Some((i, a)) => {
                used_after[i] = true;
                Pair {
                    before: Some(b),
                    after: Some(a),
                    matched_by: MatchedBy::Image,
                }
            }
            None => Pair {
                before: Some(b),
                after: None,
                matched_by: MatchedBy::BeforeOnly,
            },
        });
    }
    let mut out: Vec<Pair> = pairs.into_iter().flatten().collect();
    for (i, a) in after.containers.iter().enumerate() {
        if !used_after[i] {
            out.push(Pair {
                before: None,
                after: Some(a),
                matched_by: MatchedBy::AfterOnly,
            });
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Nanos,
}

/// One number before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub metric: &'static str,
    pub unit: Unit,
    pub before: Option<u64>,
    pub after: Option<u64>,
    /// For latencies: the value range each side's histogram bucket stands
    /// for; the difference is resolved when the two do not overlap.
    pub ranges: Option<((u64, u64), (u64, u64))>,
}

impl Change {
    /// Relative change in percent; `None` when either side is unknown or
    /// `before` is 0.
    pub fn pct(&self) -> Option<f64> {
        match (self.before, self.after) {
            (Some(b), Some(a)) if b > 0 => Some((a as f64 - b as f64) / b as f64 * 100.0),
            _ => None,
        }
    }

    /// For latencies: is the difference larger than the histograms'
    /// resolution? `None` for counts and for missing values.
    pub fn resolved(&self) -> Option<bool> {
        let ((b0, b1), (a0, a1)) = self.ranges?;
        Some(b1 < a0 || a1 < b0)
    }

    /// Did it grow by more than `pct` percent (and, for a latency, by more
    /// than the resolution)? Growing from 0 counts as worse.
    pub fn worse_than(&self, pct: f64) -> bool {
        let (Some(b), Some(a)) = (self.before, self.after) else {
            return false;
        };
        if a <= b || self.resolved() == Some(false) {
            return false;
        }
        b == 0 || (a as f64 - b as f64) / b as f64 * 100.0 > pct
    }
}

/// Which histogram a latency came from decides its resolution.
#[derive(Clone, Copy)]
enum Source {
    /// Timed per event and recorded at HDR precision.
    CopyUp,
    /// Counted in the kernel's log-linear buckets, recorded at midpoints.
    Write,
}

fn value_range(src: Source, h: &Histogram<u64>, v: u64) -> (u64, u64) {
    match src {
        Source::CopyUp => (h.lowest_equivalent(v), h.highest_equivalent(v)),
        Source::Write => write_value_range(v),
    }
}

fn quantile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

fn max(h: &Histogram<u64>) -> Option<u64> {
    (!h.is_empty()).then(|| h.max())
}

/// Sum of all recorded latencies (to the histogram's precision).
pub fn total_ns(h: &Histogram<u64>) -> u64 {
    h.iter_recorded()
        .map(|v| h.median_equivalent(v.value_iterated_to()) * v.count_at_value())
        .sum()
}

fn latency(
    metric: &'static str,
    src: Source,
    b: Option<&Histogram<u64>>,
    a: Option<&Histogram<u64>>,
    pick: fn(&Histogram<u64>) -> Option<u64>,
) -> Change {
    let bv = b.and_then(pick);
    let av = a.and_then(pick);
    let ranges = match (b, bv, a, av) {
        (Some(bh), Some(bv), Some(ah), Some(av)) => {
            Some((value_range(src, bh, bv), value_range(src, ah, av)))
        }
        _ => None,
    };
    Change {
        metric,
        unit: Unit::Nanos,
        before: bv,
        after: av,
        ranges,
    }
}

fn plain(metric: &'static str, unit: Unit, b: Option<u64>, a: Option<u64>) -> Change {
    Change {
        metric,
        unit,
        before: b,
        after: a,
        ranges: None,
    }
}

/// The per-container numbers of a pair.
pub fn container_changes(p: &Pair) -> Vec<Change> {
    let (b, a) = (p.before, p.after);
    fn cu(l: &Loaded) -> &Histogram<u64> {
        &l.copy_up_hdr
    }
    fn wr(l: &Loaded) -> &Histogram<u64> {
        &l.writes_hdr
    }
    vec![
        plain(
            "copy-ups",
            Unit::Count,
            b.map(|l| l.stats.copy_up_count),
            a.map(|l| l.stats.copy_up_count),
        ),
        plain(
            "copy-up bytes",
            Unit::Bytes,
            b.map(|l| l.stats.copy_up_bytes),
            a.map(|l| l.stats.copy_up_bytes),
        ),
        plain(
            "copy-up time (sum)",
            Unit::Nanos,
            b.map(|l| total_ns(cu(l))),
            a.map(|l| total_ns(cu(l))),
        ),
        latency("copy-up p50", Source::CopyUp, b.map(cu), a.map(cu), |h| {
            quantile(h, 0.5)
        }),
        latency("copy-up p99", Source::CopyUp, b.map(cu), a.map(cu), |h| {
            quantile(h, 0.99)
        }),
        latency("copy-up max", Source::CopyUp, b.map(cu), a.map(cu), max),
        plain(
            "writes",
            Unit::Count,
            b.map(|l| l.writes.count),
            a.map(|l| l.writes.count),
        ),
        latency("write p50", Source::Write, b.map(wr), a.map(wr), |h| {
            quantile(h, 0.5)
        }),
        latency("write p99", Source::Write, b.map(wr), a.map(wr), |h| {
            quantile(h, 0.99)
        }),
        latency("write max", Source::Write, b.map(wr), a.map(wr), max),
        plain(
            "whiteouts",
            Unit::Count,
            b.map(|l| l.stats.whiteouts),
            a.map(|l| l.stats.whiteouts),
        ),
        plain(
            "opaque dirs",
            Unit::Count,
            b.map(|l| l.stats.opaque_dirs),
            a.map(|l| l.stats.opaque_dirs),
        ),
    ]
}

/// A top file before and after. `None` on a side means unknown: the file
/// is not in that report's top files, and that list was cut at its limit.
/// A file missing from a complete list was not copied up (zeros).
pub struct FileChange {
    pub path: String,
    pub before: Option<FileCost>,
    pub after: Option<FileCost>,
}

impl FileChange {
    pub fn mean_ns(c: &FileCost) -> Option<u64> {
        c.total_ns.checked_div(c.count)
    }
}

pub fn file_changes(p: &Pair) -> Vec<FileChange> {
    let mut paths: Vec<(u64, String)> = Vec::new();
    for l in [p.before, p.after].into_iter().flatten() {
        for f in &l.raw.top_files {
            match paths.iter_mut().find(|(_, q)| *q == f.path) {
                Some(e) => e.0 = e.0.max(f.total_ns),
                None => paths.push((f.total_ns, f.path.clone())),
            }
        }
    }
    paths.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let side = |l: Option<&Loaded>, path: &str| -> Option<FileCost> {
        let l = l?;
        match l.raw.top_files.iter().find(|f| f.path == path) {
            Some(f) => Some(FileCost {
                count: f.count,
                total_ns: f.total_ns,
                bytes: f.bytes,
            }),
            None if l.top_files_complete() => Some(FileCost::default()),
            None => None,
        }
    };
    paths
        .into_iter()
        .map(|(_, path)| FileChange {
            before: side(p.before, &path),
            after: side(p.after, &path),
            path,
        })
        .collect()
}

/// The metrics `--fail-if-worse` looks at: what an image change is meant
/// to reduce. Write latency is the baseline, not gated.
pub const GATED: &[&str] = &[
    "copy-ups",
    "copy-up bytes",
    "copy-up time (sum)",
    "copy-up p50",
    "copy-up p99",
];

/// One line per gated metric of a matched container that got worse by
/// more than `pct` percent (latencies: and by more than the resolution).
pub fn worse(pairs: &[Pair], pct: f64) -> Vec<String> {
    let mut out = Vec::new();
    for p in pairs
        .iter()
        .filter(|p| p.before.is_some() && p.after.is_some())
    {
        for c in container_changes(p) {
            if GATED.contains(&c.metric) && c.worse_than(pct) {
                let (b, a) = (c.before.unwrap_or(0), c.after.unwrap_or(0));
                let change = match c.pct() {
                    Some(x) => format!("{x:+.1}%"),
                    None => "from 0".into(),
                };
                out.push(format!(
                    "{}: {} {} ({} -> {}), more than {pct}%",
                    p.label(),
                    c.metric,
                    change,
                    fmt_value(c.unit, b),
                    fmt_value(c.unit, a)
                ));
            }
        }
    }
    out
}

pub fn fmt_value(unit: Unit, v: u64) -> String {
    match unit {
        Unit::Count => v.to_string(),
        Unit::Bytes => crate::live::fmt_bytes(v),
        Unit::Nanos => crate::live::fmt_ns(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::read::parse;

    /// Two real demo runs (see agent/tests/data/README.md).
    const BEFORE: &str = include_str!("../tests/data/demo-before.json");
    const AFTER: &str = include_str!("../tests/data/demo-after.json");

    fn runs() -> (Run, Run) {
        (
            parse("before", BEFORE).unwrap(),
            parse("after", AFTER).unwrap(),
        )
    }

    #[test]
    fn a_run_against_itself_changes_nothing_and_is_never_worse() {
        let (b, _) = runs();
        let pairs = match_containers(&b, &b);
        assert!(pairs.iter().all(|p| p.matched_by == MatchedBy::Name));
        for p in &pairs {
            for c in container_changes(p) {
                assert_eq!(c.before, c.after, "{}", c.metric);
                assert_ne!(c.resolved(), Some(true), "{}", c.metric);
            }
            for f in file_changes(p) {
                assert_eq!(
                    f.before.as_ref().map(|c| c.total_ns),
                    f.after.as_ref().map(|c| c.total_ns)
                );
            }
        }
        assert!(worse(&pairs, 0.0).is_empty());
    }

    #[test]
    fn the_demo_change_is_seen_in_both_directions() {
        let (b, a) = runs();
        let pairs = match_containers(&b, &a);
        let nginx = pairs.iter().find(|p| p.label() == "nginx").unwrap();
        let ch = container_changes(nginx);
        let get = |m: &str| ch.iter().find(|c| c.metric == m).unwrap().clone();
        // The improved image copies up less (see the data README).
        assert!(get("copy-up bytes").after < get("copy-up bytes").before);
        assert!(get("copy-ups").after < get("copy-ups").before);
        assert!(worse(&pairs, 10.0).is_empty(), "{:?}", worse(&pairs, 10.0));
        // The same two files the other way round: worse.
        let back = match_containers(&a, &b);
        let w = worse(&back, 10.0);
        assert!(
            w.iter().any(|l| l.starts_with("nginx: copy-up bytes +")),
            "{w:?}"
        );
    }

    #[test]
    fn resolution_decides_whether_a_latency_moved() {
        let mut h = crate::stats::new_hist();
        h.record(1_000_000).unwrap();
        let near = h.highest_equivalent(1_000_000);
        let c = latency("x", Source::CopyUp, Some(&h), Some(&h), max);
        assert_eq!(c.resolved(), Some(false));
        let mut g = crate::stats::new_hist();
        g.record(near + 1).unwrap();
        let c = latency("x", Source::CopyUp, Some(&h), Some(&g), max);
        assert_eq!(c.resolved(), Some(true));
        // Writes: two values in one kernel bucket are not told apart.
        let mut w1 = crate::stats::new_hist();
        let mut w2 = crate::stats::new_hist();
        w1.record(170_000).unwrap();
        w2.record(175_000).unwrap();
        let c = latency("w", Source::Write, Some(&w1), Some(&w2), max);
        assert_eq!(c.resolved(), Some(false));
        assert!(!c.worse_than(1.0));
        let c = latency("c", Source::CopyUp, Some(&w1), Some(&w2), max);
        assert!(c.worse_than(1.0));
        assert!(!c.worse_than(5.0));
    }

    #[test]
    fn files_missing_from_a_cut_list_are_unknown_not_zero() {
        let (b, a) = runs();
        let pairs = match_containers(&b, &a);
        let nginx = pairs.iter().find(|p| p.label() == "nginx").unwrap();
        for f in file_changes(nginx) {
            let listed_b = nginx
                .before
                .unwrap()
                .raw
                .top_files
                .iter()
                .any(|x| x.path == f.path);
            if !listed_b {
                assert_eq!(
                    f.before.is_none(),
                    !nginx.before.unwrap().top_files_complete(),
                    "{}",
                    f.path
                );
            }
        }
    }

    #[test]
    fn containers_match_by_name_then_image() {
        let (b, a) = runs();
        let mut a2 = parse("after", AFTER).unwrap();
        for c in &mut a2.containers {
            c.owner.name = format!("{}-2", c.owner.name);
        }
        let pairs = match_containers(&b, &a2);
        let nginx = pairs
            .iter()
            .find(|p| p.before.is_some_and(|x| x.owner.name == "nginx"))
            .unwrap();
        assert_eq!(nginx.matched_by, MatchedBy::Image);
        assert_eq!(nginx.label(), "nginx / nginx-2");
        let pairs = match_containers(&b, &a);
        assert!(pairs.iter().any(|p| p.matched_by == MatchedBy::Name));
    }
}
