//! `cowtrace report` on the terminal: the live view's exit summary from a
//! saved report, and the before/after comparison.

use super::layers::layer_rows;
use crate::compare::{self, Change, FileChange, MatchedBy, Pair};
use crate::live::{self, fmt_bytes, fmt_ns};
use crate::report::read::{Loaded, Run, TOP_FILES};
use std::fmt::Write as _;

fn run_header(run: &Run) -> String {
    let r = &run.report;
    format!(
        "{}: kernel {}, started {}, {:.1} s, dropped events {}",
        run.source,
        r.kernel,
        r.started,
        r.duration_s,
        r.drops.total()
    )
}

/// The same text the live view prints at exit, from a saved report.
pub fn report(run: &Run) -> String {
    let mut s = format!("--- cowtrace report: {} ---\n", run_header(run));
    let rows: Vec<_> = run
        .containers
        .iter()
        .map(|c| (&c.owner, &c.stats, &c.writes))
        .collect();
    s.push_str(&live::exit_summary(&rows, run.report.drops.total()));
    for c in &run.containers {
        s.push_str(&layers(c));
    }
    s
}

/// The per-layer table when the report has layers.
fn layers(c: &Loaded) -> String {
    let Some(layers) = &c.raw.layers else {
        return String::new();
    };
    let (cols, rows) = layer_rows(layers);
    let mut widths: Vec<usize> = cols.iter().map(|c| c.chars().count()).collect();
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.chars().count()).min(48);
        }
    }
    let mut s = format!("\n{}: per layer\n", c.owner.name);
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{:<w$}", clip_left(v, *w), w = *w))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(s, "{}", line(&cols).to_uppercase().trim_end());
    for r in &rows {
        let _ = writeln!(s, "{}", line(r).trim_end());
    }
    s
}

/// The end of `s` when it is longer than `n` characters (paths matter at
/// their end).
pub fn clip_left(s: &str, n: usize) -> String {
    let len = s.chars().count();
    if len <= n {
        s.to_string()
    } else {
        let tail: String = s.chars().skip(len - n + 1).collect();
        format!("…{tail}")
    }
}

fn opt(unit: compare::Unit, v: Option<u64>) -> String {
    v.map(|v| compare::fmt_value(unit, v))
        .unwrap_or_else(|| "-".into())
}

pub fn change_text(c: &Change) -> String {
    match (c.before, c.after, c.pct()) {
        (Some(b), Some(a), _) if a == b => "=".into(),
        // Two decimals where one would round a real change to ±100%.
        (_, _, Some(p)) if p.abs() >= 99.95 && p.abs() < 100.0 => format!("{p:+.2}%"),
        (_, _, Some(p)) => format!("{p:+.1}%"),
        (Some(0), Some(_), _) => "new".into(),
        _ => "-".into(),
    }
}

/// `yes`/`no` with the two value ranges for a latency, empty otherwise.
pub fn resolution_text(c: &Change) -> String {
    match (c.resolved(), c.ranges) {
        (Some(r), Some(((b0, b1), (a0, a1)))) => format!(
            "{} ({}..{} vs {}..{})",
            if r { "yes" } else { "no" },
            fmt_ns(b0),
            fmt_ns(b1),
            fmt_ns(a0),
            fmt_ns(a1)
        ),
        _ => String::new(),
    }
}

fn file_cell(c: &Option<crate::stats::FileCost>) -> (String, String, String) {
    match c {
        Some(c) => (
            c.count.to_string(),
            fmt_bytes(c.bytes),
            if c.count == 0 {
                "-".into()
            } else {
                fmt_ns(c.total_ns)
            },
        ),
        None => ("?".into(), "?".into(), "?".into()),
    }
}

pub fn matched_text(p: &Pair) -> &'static str {
    match p.matched_by {
        MatchedBy::Name => "matched by name",
        MatchedBy::Image => "matched by image",
        MatchedBy::BeforeOnly => "only in the first report",
        MatchedBy::AfterOnly => "only in the second report",
    }
}

/// BEFORE against AFTER, per container and per top file.
pub fn comparison(before: &Run, after: &Run, pairs: &[Pair]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "--- cowtrace comparison ---");
    let _ = writeln!(s, "before: {}", run_header(before));
    let _ = writeln!(s, "after:  {}", run_header(after));
    for p in pairs {
        let _ = writeln!(s, "\n{} ({})", p.label(), matched_text(p));
        let _ = writeln!(
            s,
            "{:<20} {:>10} {:>10} {:>9}  LATENCY DIFFERENCE LARGER THAN RESOLUTION",
            "METRIC", "BEFORE", "AFTER", "CHANGE"
        );
        for c in compare::container_changes(p) {
            let _ = writeln!(
                s,
                "{:<20} {:>10} {:>10} {:>9}  {}",
                c.metric,
                opt(c.unit, c.before),
                opt(c.unit, c.after),
                change_text(&c),
                resolution_text(&c)
            );
        }
        let files = compare::file_changes(p);
        if !files.is_empty() {
            let _ = writeln!(
                s,
                "\n{}: top files by copy-up time, before -> after (? = not among that run's top {TOP_FILES})",
                p.label()
            );
            let _ = writeln!(s, "{:>15} {:>21} {:>21}  FILE", "COUNT", "BYTES", "TOTAL");
            for f in &files {
                s.push_str(&file_line(f));
            }
        }
        for side in [p.before, p.after].into_iter().flatten() {
            s.push_str(&layers(side));
        }
    }
    s
}

fn file_line(f: &FileChange) -> String {
    let (bc, bb, bt) = file_cell(&f.before);
    let (ac, ab, at) = file_cell(&f.after);
    format!(
        "{:>15} {:>21} {:>21}  {}\n",
        format!("{bc} -> {ac}"),
        format!("{bb} -> {ab}"),
        format!("{bt} -> {at}"),
        f.path
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::read::parse;

    const BEFORE: &str = include_str!("../../tests/data/demo-before.json");
    const AFTER: &str = include_str!("../../tests/data/demo-after.json");

    #[test]
    fn saved_report_renders_like_the_live_exit_summary() {
        let run = parse("demo.json", BEFORE).unwrap();
        let text = report(&run);
        let nginx = run
            .containers
            .iter()
            .find(|c| c.owner.name == "nginx")
            .unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("nginx "))
            .expect("summary row");
        let count = nginx.raw.copy_up.count.to_string();
        assert!(
            row.split_whitespace().nth(1) == Some(count.as_str()),
            "{row}"
        );
        assert!(text.contains("copy-up vs write latency"), "{text}");
        assert!(text.contains("top files by copy-up time"), "{text}");
        assert!(text.contains(&nginx.raw.top_files[0].path), "{text}");
        assert!(!text.contains("per layer"), "no layers in v1 reports yet");
    }

    #[test]
    fn layers_are_shown_when_a_report_has_them() {
        let mut v: serde_json::Value = serde_json::from_str(BEFORE).unwrap();
        // Only the shape matters here: the layers issue defines the fields.
        v["containers"][0]["layers"] =
            serde_json::json!([{"index": 0, "diff_id": "sha256:ab", "copy_up": {"count": 3}}]);
        let run = parse("r.json", &v.to_string()).unwrap();
        let text = report(&run);
        assert!(text.contains("per layer"), "{text}");
        assert!(text.contains("COPY_UP.COUNT"), "{text}");
        assert!(text.contains("sha256:ab"), "{text}");
    }

    #[test]
    fn a_saved_reports_redirects_are_in_the_redir_column() {
        let mut v: serde_json::Value = serde_json::from_str(BEFORE).unwrap();
        v["containers"][0]["redirects"] = serde_json::json!({"count": 7});
        let name = v["containers"][0]["name"].as_str().unwrap().to_string();
        let text = report(&parse("r.json", &v.to_string()).unwrap());
        let mut lines = text.lines().skip_while(|l| !l.starts_with("CONTAINER"));
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = header.iter().position(|h| *h == "REDIR").expect("REDIR");
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(row.len(), header.len(), "{text}");
        assert_eq!(row[col], "7", "{text}");
    }

    #[test]
    fn comparison_lists_every_metric_and_file() {
        let (b, a) = (
            parse("before.json", BEFORE).unwrap(),
            parse("after.json", AFTER).unwrap(),
        );
        let pairs = compare::match_containers(&b, &a);
        let text = comparison(&b, &a, &pairs);
        for m in ["copy-ups", "copy-up p99", "write p50", "whiteouts"] {
            assert!(text.lines().any(|l| l.starts_with(m)), "{m}: {text}");
        }
        assert!(text.contains("nginx (matched by name)"), "{text}");
        for f in &b.containers[0].raw.top_files {
            assert!(text.contains(&f.path), "{}", f.path);
        }
        let p99 = text.lines().find(|l| l.starts_with("copy-up p99")).unwrap();
        assert!(p99.contains(" yes (") || p99.contains(" no ("), "{p99}");
    }

    #[test]
    fn clip_left_keeps_the_end() {
        assert_eq!(clip_left("usr/share/nginx", 6), "…nginx");
        assert_eq!(clip_left("etc", 6), "etc");
    }
}
