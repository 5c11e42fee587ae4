//! The terminal view: one line per event, a per-container summary every
//! interval, and at exit copy-up versus write histograms and top files.

use crate::event::{escape_str, CopyUpKind, KernelEvent, Kind};
use crate::hist::LogHist;
use crate::stats::{Owner, OwnerStats, WriteTotals};
use hdrhistogram::Histogram;
use std::fmt::Write as _;

pub fn event_header() -> String {
    format!(
        "{:<12} {:<16} {:>7} {:<15} {:<10} {:<8} {:>10} {:>9}  {}",
        "TIME", "CONTAINER", "PID", "COMM", "KIND", "TRIGGER", "LATENCY", "BYTES", "PATH"
    )
}

pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

pub fn fmt_bytes(b: u64) -> String {
    match b {
        0..=1023 => format!("{b}B"),
        1024..=1_048_575 => format!("{:.1}KiB", b as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1}MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.1}GiB", b as f64 / 1_073_741_824.0),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

/// `wall` is the local wall-clock time of the event as HH:MM:SS.mmm.
/// The CONTAINER column is who caused it, with `>name` appended when it
/// happened in another container's filesystem (e.g. `docker cp`).
pub fn event_line(
    wall: &str,
    owner: &Owner,
    fs: Option<&Owner>,
    trigger: Option<&str>,
    ev: &KernelEvent,
) -> String {
    let (kind, trig, lat, bytes) = match &ev.kind {
        Kind::CopyUp(c) => {
            let kind = match (c.kind, c.ancestor) {
                (_, true) => "copy_up^",
                (CopyUpKind::Full, false) => "copy_up",
                (CopyUpKind::MetadataOnly, false) => "copy_meta",
                (CopyUpKind::DeferredData, false) => "copy_data",
            };
            (
                kind,
                trigger.unwrap_or("other"),
                fmt_ns(c.latency_ns),
                fmt_bytes(c.bytes),
            )
        }
        Kind::Whiteout { cause } => ("whiteout", cause.key(), "-".into(), "-".into()),
        Kind::OpaqueDir => ("opaque", "mkdir", "-".into(), "-".into()),
        Kind::Redirect => ("redirect", "rename", "-".into(), "-".into()),
    };
    // Names come from the runtime, i.e. from whoever named the container.
    let who = match fs {
        Some(f) if f.id != owner.id => {
            format!("{}>{}", escape_str(&owner.label()), escape_str(&f.label()))
        }
        _ => escape_str(&owner.label()),
    };
    format!(
        "{:<12} {:<16} {:>7} {:<15} {:<10} {:<8} {:>10} {:>9}  {}",
        wall,
        clip(&who, 16),
        ev.pid,
        clip(&ev.comm, 15),
        kind,
        trig,
        lat,
        bytes,
        ev.path_display()
    )
}

fn pct(h: &LogHist, q: f64) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        fmt_ns(h.value_at_quantile(q))
    }
}

/// The per-container table of the interval and exit summaries. META and
/// DEFER split the copy-ups of `metacopy=on`; REDIR counts renames of
/// image directories done as redirects (`redirect_dir=on`), which copy no
/// tree.
pub fn summary_table(rows: &[(&Owner, &OwnerStats, &WriteTotals)], drops: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}",
        "CONTAINER",
        "COPYUPS",
        "META",
        "DEFER",
        "BYTES",
        "P50",
        "P99",
        "MAX",
        "WRITES",
        "W-P50",
        "W-P99",
        "WHTOUT",
        "OPAQUE",
        "REDIR",
        "RATIO"
    );
    for (o, st, w) in rows {
        let ratio = if st.copy_up.is_empty() || w.latency.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.1}x",
                st.copy_up.value_at_quantile(0.5) as f64
                    / w.latency.value_at_quantile(0.5).max(1) as f64
            )
        };
        let _ = writeln!(
            s,
            "{:<16} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}",
            clip(&escape_str(&o.label()), 16),
            st.copy_up_count,
            st.by_kind[CopyUpKind::MetadataOnly as usize].count,
            st.by_kind[CopyUpKind::DeferredData as usize].count,
            fmt_bytes(st.copy_up_bytes),
            pct(&st.copy_up, 0.5),
            pct(&st.copy_up, 0.99),
            if st.copy_up.is_empty() {
                "-".into()
            } else {
                fmt_ns(st.copy_up.max())
            },
            w.count,
            pct(&w.latency, 0.5),
            pct(&w.latency, 0.99),
            st.whiteouts,
            st.opaque_dirs,
            st.redirects,
            ratio
        );
    }
    let _ = writeln!(s, "dropped events: {drops}");
    s
}

/// A log2 histogram of two distributions side by side, bpftrace style.
pub fn histogram_pair(copy_up: &Histogram<u64>, writes: &Histogram<u64>) -> String {
    let mut s = String::new();
    let max = copy_up.max().max(writes.max());
    if copy_up.is_empty() && writes.is_empty() {
        return s;
    }
    let mut lo = 1u64;
    let mut rows = Vec::new();
    while lo <= max {
        let hi = lo.saturating_mul(2);
        let c = if copy_up.is_empty() {
            0
        } else {
            copy_up.count_between(lo, hi - 1)
        };
        let w = if writes.is_empty() {
            0
        } else {
            writes.count_between(lo, hi - 1)
        };
        rows.push((lo, hi, c, w));
        lo = hi;
    }
    let first = rows.iter().position(|r| r.2 + r.3 > 0).unwrap_or(0);
    let cmax = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    let wmax = rows.iter().map(|r| r.3).max().unwrap_or(1).max(1);
    let _ = writeln!(
        s,
        "{:>21}  {:<32} {:<32}",
        "latency", "copy-up (per object)", "write"
    );
    for (lo, hi, c, w) in &rows[first..] {
        let bar = |n: u64, m: u64| "@".repeat(((n * 24).div_ceil(m)) as usize);
        let _ = writeln!(
            s,
            "[{:>8}, {:>8})  {:>7} {:<24} {:>7} {:<24}",
            fmt_ns(*lo),
            fmt_ns(*hi),
            c,
            bar(*c, cmax),
            w,
            bar(*w, wmax)
        );
    }
    s
}

/// The exit summary: the table, then per container with activity its
/// copy-up versus write histogram and its top files.
pub fn exit_summary(rows: &[(&Owner, &OwnerStats, &WriteTotals)], drops: u64) -> String {
    let mut text = summary_table(rows, drops);
    for (o, s, w) in rows {
        if s.copy_up.is_empty() && w.latency.is_empty() {
            continue;
        }
        let _ = writeln!(
            text,
            "\n{} ({}): copy-up vs write latency",
            escape_str(&o.label()),
            escape_str(crate::attribution::short_id(&o.id))
        );
        text.push_str(&histogram_pair(&s.copy_up.to_hdr(), &w.latency.to_hdr()));
        if !s.files.is_empty() {
            let _ = writeln!(text, "\n{}: top files by copy-up time", escape_str(&o.name));
            text.push_str(&top_files_table(s, 10));
        }
    }
    text
}

pub fn top_files_table(st: &OwnerStats, n: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:>10} {:>6} {:>10}  FILE", "TOTAL", "COUNT", "BYTES");
    for f in st.files.top(n) {
        let c = &f.cost;
        let _ = writeln!(
            s,
            "{:>10} {:>6} {:>10}  {}",
            fmt_ns(c.total_ns),
            c.count,
            fmt_bytes(c.bytes),
            f.path
        );
    }
    let c = st.files.other(n);
    if c.count > 0 {
        let _ = writeln!(
            s,
            "{:>10} {:>6} {:>10}  (other files)",
            fmt_ns(c.total_ns),
            c.count,
            fmt_bytes(c.bytes)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(12_345), "12.3us");
        assert_eq!(fmt_ns(12_345_678), "12.3ms");
        assert_eq!(fmt_bytes(4096), "4.0KiB");
        assert_eq!(fmt_bytes(64 << 20), "64.0MiB");
    }

    #[test]
    fn container_names_are_escaped_in_the_live_view() {
        let evil = Owner {
            id: "x\u{202e}y".into(),
            name: "ng\u{202e}xni\x1b[2J".into(),
            image: String::new(),
            pod: None,
        };
        let ev = crate::event::KernelEvent {
            kind: Kind::OpaqueDir,
            ts_ns: 0,
            pid: 1,
            tid: 1,
            comm: "sh".into(),
            cgroup_id: 0,
            dev: 0,
            file_type: crate::event::FileType::Dir,
            path: b"d".to_vec(),
            path_cut: false,
            names_cut: vec![false],
            ino: 0,
        };
        let line = event_line("00:00:00.000", &evil, Some(&evil), None, &ev);
        assert!(
            !line.contains('\u{202e}') && !line.contains('\x1b'),
            "{line:?}"
        );
        assert!(line.contains("ng\\xe2\\x80"), "{line:?}");
        let st = OwnerStats::default();
        let w = WriteTotals::default();
        let table = summary_table(&[(&evil, &st, &w)], 0);
        assert!(
            !table.contains('\u{202e}') && !table.contains('\x1b'),
            "{table:?}"
        );
    }

    #[test]
    fn the_summary_shows_redirects_per_container_in_their_column() {
        let web = Owner {
            id: "w".into(),
            name: "web".into(),
            image: String::new(),
            pod: None,
        };
        let db = Owner {
            name: "db".into(),
            id: "d".into(),
            ..web.clone()
        };
        let mut stats = crate::stats::Stats::default();
        let mut ev = crate::event::KernelEvent::plain(Kind::Redirect, "srv/old");
        for _ in 0..3 {
            stats.record(&web, &ev);
        }
        ev.kind = Kind::OpaqueDir;
        stats.record(&db, &ev);
        let w = WriteTotals::default();
        let rows: Vec<_> = stats.owners.iter().map(|(o, s)| (o, s, &w)).collect();
        let table = summary_table(&rows, 0);
        let lines: Vec<&str> = table.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        let col = header.iter().position(|h| *h == "REDIR").unwrap();
        assert_eq!(header[col - 1], "OPAQUE", "{table}");
        let cells = |name: &str| -> Vec<String> {
            let l = lines.iter().find(|l| l.starts_with(name)).unwrap();
            l.split_whitespace().map(str::to_string).collect()
        };
        // Every cell is one word here, so columns line up by position.
        assert_eq!(cells("web").len(), header.len(), "{table}");
        assert_eq!(cells("web")[col], "3", "{table}");
        assert_eq!(cells("web")[col - 1], "0", "{table}");
        assert_eq!(cells("db")[col], "0", "{table}");
        assert_eq!(cells("db")[col - 1], "1", "{table}");
    }

    #[test]
    fn histogram_pair_has_a_row_per_octave_with_counts() {
        let mut a = crate::stats::new_hist();
        let mut b = crate::stats::new_hist();
        a.record(1_000_000).unwrap();
        b.record(1_000).unwrap();
        b.record(1_001).unwrap();
        let out = histogram_pair(&a, &b);
        assert!(
            out.lines().any(|l| l.contains(" 2 ") && l.contains("@")),
            "{out}"
        );
        assert!(out.lines().count() > 10);
    }
}
