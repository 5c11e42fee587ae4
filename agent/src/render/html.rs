//! `cowtrace report --html`: one self-contained page (inline CSS and SVG,
//! no network: its Content-Security-Policy forbids every fetch) with plots
//! of the reports' HDR histograms, readable in light and dark mode.
//!
//! A small inline script records page errors (script errors, blocked
//! resources, `console.error`) into the page itself, so a headless browser
//! run can read them back from the DOM.

use super::layers::{layer_cost, layer_rows};
use super::plots::{self, BarRow, Series};
use super::terminal::{change_text, matched_text, resolution_text};
use crate::compare::{self, Pair};
use crate::live::fmt_bytes;
use crate::report::read::{Loaded, Quantiles, Run, SavedEvent, TOP_FILES};
use std::fmt::Write as _;

/// A latency as the terminal writes it, with a real micro sign.
fn fmt_ns(ns: u64) -> String {
    micro(crate::live::fmt_ns(ns))
}

/// `us` to `µs` in text made only of latencies.
fn micro(s: String) -> String {
    s.replace("us", "µs")
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = r##"
:root { --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --grid: #818b98; --card: #f6f8fa; --border: #d1d9e0; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --grid: #7d8590; --card: #151b23; --border: #3d444d; }
}
html { background: var(--bg); color: var(--fg); }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1400px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--border); padding-bottom: 4px; }
h2 small, .meta { color: var(--muted); font-weight: normal; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--border); padding: 3px 8px; text-align: right; }
th { background: var(--card); }
td.l, th.l { text-align: left; }
td.path { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 12px; }
.plots figure.plot { flex: 1 1 520px; max-width: 680px; }
figure.plot { margin: 0 0 12px; padding: 8px; background: var(--card); border: 1px solid var(--border); border-radius: 6px; box-sizing: border-box; }
figure.plot svg { display: block; width: 100%; height: auto; }
figure.plot.wide { max-width: 900px; }
figcaption { color: var(--muted); font-size: 12px; max-width: 640px; }
.note { color: var(--muted); }
.better { color: #1a7f37; } .worse { color: #cf222e; }
@media (prefers-color-scheme: dark) { .better { color: #3fb950; } .worse { color: #f85149; } }
#page-errors { color: #cf222e; border: 2px solid #cf222e; padding: 8px; white-space: pre-wrap; }
svg [fill="#010203"] { fill: var(--fg); }
svg [stroke="#010203"] { stroke: var(--fg); }
svg [fill="#040506"] { fill: var(--grid); }
svg [stroke="#040506"] { stroke: var(--grid); }
"##;

/// Records errors into `#page-errors` and `data-page-errors` on <html>.
const ERROR_RECORDER: &str = r#"
(function () {
  var errors = [];
  function show() {
    document.documentElement.setAttribute("data-page-errors", String(errors.length));
    var box = document.getElementById("page-errors");
    if (box && errors.length) { box.textContent = errors.join("\n"); box.hidden = false; }
  }
  function record(m) { errors.push(String(m)); show(); }
  window.addEventListener("error", function (ev) {
    var t = ev.target;
    record(ev.message || ("failed to load " + ((t && (t.src || t.href)) || "a resource")));
  }, true);
  window.addEventListener("unhandledrejection", function (ev) { record("unhandled rejection: " + ev.reason); });
  document.addEventListener("securitypolicyviolation", function (ev) {
    record("blocked " + ev.blockedURI + " (" + ev.violatedDirective + ")");
  });
  var consoleError = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  document.addEventListener("DOMContentLoaded", show);
})();
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <title>{}</title>\n<script>{ERROR_RECORDER}</script>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <pre id=\"page-errors\" hidden></pre>\n{body}\
         <footer class=\"note\"><p>Made by <code>cowtrace report</code> from the JSON of <code>cowtrace --json</code> \
         (schema cowtrace/v1). Latencies are per object copied up and per write; plots are drawn from the \
         reports' HDR histograms.</p></footer>\n</body>\n</html>\n",
        esc(title)
    )
}

/// A plot, or a note saying why there is none.
fn figure(kind: &str, svg: Result<String, String>, caption: &str) -> String {
    match svg {
        Ok(svg) => format!(
            "<figure class=\"plot{}\" data-plot=\"{kind}\">{svg}<figcaption>{}</figcaption></figure>\n",
            if kind.ends_with("files") || kind == "layers" || kind == "timeline" {
                " wide"
            } else {
                ""
            },
            esc(caption)
        ),
        Err(why) => format!("<p class=\"note\">{}: {}</p>\n", esc(kind), esc(&why)),
    }
}

fn run_meta(run: &Run) -> String {
    let r = &run.report;
    format!(
        "<p class=\"meta\"><code>{}</code>: kernel {}, started {}, traced {:.1} s, dropped events {}, \
         write latency sampled 1 in {}</p>\n",
        esc(&run.source),
        esc(&r.kernel),
        esc(&r.started),
        r.duration_s,
        r.drops.total(),
        r.write_sample_every
    )
}

fn q(v: Option<u64>) -> String {
    v.map(fmt_ns).unwrap_or_else(|| "-".into())
}

fn quantile_cells(qs: &Quantiles) -> String {
    [qs.p50, qs.p90, qs.p99, qs.p999, qs.max, qs.mean]
        .iter()
        .map(|v| format!("<td>{}</td>", q(*v)))
        .collect()
}

fn summary_table(c: &Loaded) -> String {
    let r = &c.raw;
    let ratio = |x: Option<f64>| x.map(|x| format!("{x:.1}×")).unwrap_or_else(|| "-".into());
    format!(
        "<table class=\"summary\"><tr><th class=\"l\"></th><th>count</th><th>bytes</th><th>p50</th><th>p90</th>\
         <th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>\n\
         <tr><td class=\"l\">copy-up (per object)</td><td>{}</td><td>{}</td>{}</tr>\n\
         <tr><td class=\"l\">copy-up (per operation, parents included)</td><td></td><td></td>{}</tr>\n\
         <tr><td class=\"l\">write</td><td>{}</td><td>{}</td>{}</tr>\n</table>\n\
         <p>{} whiteouts, {} opaque directories; copy-up/write ratio p50 {}, p99 {}.</p>\n",
        r.copy_up.count,
        fmt_bytes(r.copy_up.bytes),
        quantile_cells(&r.copy_up.latency_ns),
        quantile_cells(&r.copy_up.operation_latency_ns),
        r.writes.count,
        fmt_bytes(r.writes.bytes),
        quantile_cells(&r.writes.latency_ns),
        r.whiteouts.count,
        r.opaque_dirs.count,
        ratio(r.copy_up_vs_write.p50_ratio),
        ratio(r.copy_up_vs_write.p99_ratio),
    )
}

fn copy_up_vs_write(c: &Loaded) -> String {
    let series = [
        Series {
            label: "copy-up".into(),
            color: plots::COPY_UP,
            hist: &c.copy_up_hdr,
        },
        Series {
            label: "write".into(),
            color: plots::WRITE,
            hist: &c.writes_hdr,
        },
    ];
    let name = &c.owner.name;
    let mut s = String::from("<div class=\"plots\">\n");
    s.push_str(&figure(
        "latency-histogram",
        plots::latency_histogram(&format!("{name}: copy-up vs write latency"), &series),
        "Share of each kind's operations per power-of-two latency bucket; the number above a bar is its count.",
    ));
    s.push_str(&figure(
        "latency-cdf",
        plots::latency_cdf(&format!("{name}: cumulative latency"), &series),
        "Fraction of operations at or below each latency; dots mark p50 and p99.",
    ));
    s.push_str("</div>\n");
    s
}

fn file_text(count: u64, total_ns: u64, bytes: u64) -> String {
    if count == 0 {
        return "not copied up".into();
    }
    format!("{} · {} · {}×", fmt_ns(total_ns), fmt_bytes(bytes), count)
}

fn top_files(c: &Loaded) -> String {
    let files = &c.raw.top_files;
    if files.is_empty() {
        return "<p class=\"note\">No file was copied up.</p>\n".into();
    }
    let rows: Vec<BarRow> = files
        .iter()
        .map(|f| BarRow {
            label: f.path.clone(),
            bars: vec![Some((f.total_ns, file_text(f.count, f.total_ns, f.bytes)))],
        })
        .collect();
    let mut s = figure(
        "top-files",
        plots::hbars(
            &format!("{}: top files by copy-up time", c.owner.name),
            "total copy-up time",
            &[("copy-up", plots::COPY_UP)],
            &rows,
            &|v| plots::fmt_tick(v as f64),
        ),
        &format!(
            "Total copy-up time per file (beside each bar: time · bytes · copy-ups). The report keeps the top {TOP_FILES}."
        ),
    );
    s.push_str("<table><tr><th class=\"l\">file</th><th>copy-ups</th><th>bytes</th><th>total</th><th>mean</th></tr>\n");
    for f in files {
        let _ = writeln!(
            s,
            "<tr><td class=\"path\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.path),
            f.count,
            fmt_bytes(f.bytes),
            fmt_ns(f.total_ns),
            f.total_ns
                .checked_div(f.count)
                .map(fmt_ns)
                .unwrap_or_else(|| "-".into())
        );
    }
    s.push_str("</table>\n");
    s
}

fn layers(c: &Loaded) -> String {
    let Some(layers) = &c.raw.layers else {
        return "<p class=\"note\">Per-layer costs: this report has no <code>layers</code> \
                (the agent does not attribute copy-ups to image layers yet).</p>\n"
            .into();
    };
    let mut s = String::new();
    if let Some((field, bars)) = layer_cost(layers) {
        let is_ns = field.ends_with("_ns");
        let rows: Vec<BarRow> = bars
            .iter()
            .map(|(label, v)| BarRow {
                label: label.clone(),
                bars: vec![Some((*v, if is_ns { fmt_ns(*v) } else { v.to_string() }))],
            })
            .collect();
        let fmt: &dyn Fn(u64) -> String = if is_ns {
            &|v| plots::fmt_tick(v as f64)
        } else {
            &|v| v.to_string()
        };
        s.push_str(&figure(
            "layers",
            plots::hbars(
                &format!("{}: cost per layer", c.owner.name),
                &field,
                &[(field.as_str(), plots::COPY_UP)],
                &rows,
                fmt,
            ),
            &format!("{field} per image layer, as the report gives it."),
        ));
    }
    let (cols, rows) = layer_rows(layers);
    s.push_str("<table><tr>");
    for c in &cols {
        let _ = write!(s, "<th class=\"l\">{}</th>", esc(c));
    }
    s.push_str("</tr>\n");
    for r in rows {
        s.push_str("<tr>");
        for v in r {
            let _ = write!(s, "<td class=\"l\">{}</td>", esc(&v));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

fn timeline(events: &[SavedEvent]) -> String {
    let t0 = events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let mut series: Vec<(String, Vec<(f64, u64)>)> = Vec::new();
    for e in events.iter().filter(|e| e.kind == "copy_up") {
        let (Some(lat), name) = (e.latency_ns, &e.container.name) else {
            continue;
        };
        let pt = ((e.ts_ns - t0) as f64 / 1e9, lat);
        match series.iter_mut().find(|s| &s.0 == name) {
            Some(s) => s.1.push(pt),
            None => series.push((name.clone(), vec![pt])),
        }
    }
    let kinds = |k: &str| events.iter().filter(|e| e.kind == k).count();
    format!(
        "<h2>Timeline <small>{} copy-ups, {} whiteouts, {} opaque directories in the events file</small></h2>\n{}",
        kinds("copy_up"),
        kinds("whiteout"),
        kinds("opaque_dir"),
        figure(
            "timeline",
            plots::timeline("copy-ups over time, per container", &series),
            "One dot per object copied up: when (seconds after the first event) and how long it took.",
        )
    )
}

/// The page for one report (and its events, when given).
pub fn report(run: &Run, events: Option<&[SavedEvent]>) -> String {
    let mut b = format!("<h1>cowtrace report</h1>\n{}", run_meta(run));
    for c in &run.containers {
        let _ = writeln!(
            b,
            "<section class=\"container\" data-container=\"{}\"><h2>{} <small>{} · {}</small></h2>",
            esc(&c.owner.name),
            esc(&c.owner.name),
            esc(if c.owner.image.is_empty() {
                "no image"
            } else {
                &c.owner.image
            }),
            esc(&c.owner.id.chars().take(12).collect::<String>())
        );
        b.push_str(&summary_table(c));
        if c.stats.copy_up.is_empty() && c.writes.latency.is_empty() {
            b.push_str("<p class=\"note\">No copy-up or write latency recorded.</p>\n");
        } else {
            b.push_str(&copy_up_vs_write(c));
        }
        b.push_str(&top_files(c));
        b.push_str(&layers(c));
        b.push_str("</section>\n");
    }
    if let Some(ev) = events {
        b.push_str(&timeline(ev));
    }
    page(&format!("cowtrace report: {}", run.source), &b)
}

fn change_class(c: &compare::Change) -> &'static str {
    match (c.before, c.after, c.resolved()) {
        (_, _, Some(false)) => "",
        (Some(b), Some(a), _) if a < b => "better",
        (Some(b), Some(a), _) if a > b => "worse",
        _ => "",
    }
}

fn comparison_table(p: &Pair) -> String {
    let mut s = String::from(
        "<table class=\"comparison\"><tr><th class=\"l\">metric</th><th>before</th><th>after</th>\
         <th>change</th><th class=\"l\">latency difference larger than the histograms' resolution? \
         (value ranges before vs after)</th></tr>\n",
    );
    for c in compare::container_changes(p) {
        let v = |x: Option<u64>| {
            x.map(|x| compare::fmt_value(c.unit, x))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"l\">{}</td></tr>",
            esc(c.metric),
            micro(v(c.before)),
            micro(v(c.after)),
            change_class(&c),
            esc(&change_text(&c)),
            esc(&micro(resolution_text(&c)))
        );
    }
    s.push_str("</table>\n");
    s
}

fn compare_plots(p: &Pair) -> String {
    let (Some(b), Some(a)) = (p.before, p.after) else {
        return String::new();
    };
    let name = p.label();
    let pair = |hb, ha| {
        [
            Series {
                label: "before".into(),
                color: plots::BEFORE,
                hist: hb,
            },
            Series {
                label: "after".into(),
                color: plots::AFTER,
                hist: ha,
            },
        ]
    };
    let cu = pair(&b.copy_up_hdr, &a.copy_up_hdr);
    let wr = pair(&b.writes_hdr, &a.writes_hdr);
    let mut s = String::from("<div class=\"plots\">\n");
    s.push_str(&figure(
        "compare-copy-up-cdf",
        plots::latency_cdf(&format!("{name}: copy-up latency, before vs after"), &cu),
        "Cumulative copy-up latency per object; dots mark p50 and p99.",
    ));
    s.push_str(&figure(
        "compare-copy-up-histogram",
        plots::latency_histogram(&format!("{name}: copy-up latency histogram"), &cu),
        "Share of each run's copy-ups per power-of-two bucket; numbers are counts.",
    ));
    s.push_str(&figure(
        "compare-write-cdf",
        plots::latency_cdf(&format!("{name}: write latency, before vs after"), &wr),
        "Cumulative latency of writes to files already in the upper layer.",
    ));
    s.push_str("</div>\n");
    let files = compare::file_changes(p);
    if !files.is_empty() {
        let cell = |c: &Option<crate::stats::FileCost>| {
            c.as_ref()
                .map(|c| (c.total_ns, file_text(c.count, c.total_ns, c.bytes)))
        };
        let rows: Vec<BarRow> = files
            .iter()
            .map(|f| BarRow {
                label: f.path.clone(),
                bars: vec![cell(&f.before), cell(&f.after)],
            })
            .collect();
        s.push_str(&figure(
            "compare-top-files",
            plots::hbars(
                &format!("{name}: top files, before vs after"),
                "total copy-up time",
                &[("before", plots::BEFORE), ("after", plots::AFTER)],
                &rows,
                &|v| plots::fmt_tick(v as f64),
            ),
            &format!(
                "Total copy-up time per file in each run (time · bytes · copy-ups). A run that copied up more \
                 than {TOP_FILES} files lists only its top {TOP_FILES}: other files are unknown there, not zero."
            ),
        ));
    }
    s
}

/// The page comparing two reports.
pub fn comparison(before: &Run, after: &Run, pairs: &[Pair]) -> String {
    let mut b = String::from("<h1>cowtrace comparison</h1>\n");
    let _ = write!(
        b,
        "<p>before:</p>{}<p>after:</p>{}",
        run_meta(before),
        run_meta(after)
    );
    for p in pairs {
        let _ = writeln!(
            b,
            "<section class=\"container\" data-container=\"{}\"><h2>{} <small>{}</small></h2>",
            esc(&p.label()),
            esc(&p.label()),
            matched_text(p)
        );
        b.push_str(&comparison_table(p));
        b.push_str(&compare_plots(p));
        for side in [p.before, p.after].into_iter().flatten() {
            if side.raw.layers.is_some() {
                b.push_str(&layers(side));
            }
        }
        b.push_str("</section>\n");
    }
    page(
        &format!("cowtrace comparison: {} vs {}", before.source, after.source),
        &b,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::read::{parse, parse_events};

    const BEFORE: &str = include_str!("../../tests/data/demo-before.json");
    const AFTER: &str = include_str!("../../tests/data/demo-after.json");
    const EVENTS: &str = include_str!("../../tests/data/demo-before.events.ndjson");

    fn svg_count(html: &str) -> usize {
        html.matches("<svg ").count()
    }

    #[test]
    fn report_page_is_self_contained_and_has_its_plots() {
        let run = parse("demo.json", BEFORE).unwrap();
        let ev = parse_events("events", EVENTS).unwrap();
        let html = report(&run, Some(&ev));
        for kind in ["latency-histogram", "latency-cdf", "top-files", "timeline"] {
            assert!(html.contains(&format!("data-plot=\"{kind}\"")), "{kind}");
        }
        // Per container with copy-ups: histogram, CDF, top files; and the
        // timeline.
        let active = run
            .containers
            .iter()
            .filter(|c| !c.stats.copy_up.is_empty())
            .count();
        assert!(active >= 1);
        assert_eq!(svg_count(&html), 3 * active + 1);
        // Nothing to fetch: no external reference of any kind.
        for bad in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "<link",
            "<img",
        ] {
            assert!(!html.contains(bad), "{bad}");
        }
        assert!(html.contains("default-src 'none'"));
    }

    #[test]
    fn comparison_page_has_overlays_and_the_table() {
        let (b, a) = (
            parse("before.json", BEFORE).unwrap(),
            parse("after.json", AFTER).unwrap(),
        );
        let pairs = compare::match_containers(&b, &a);
        let html = comparison(&b, &a, &pairs);
        for kind in [
            "compare-copy-up-cdf",
            "compare-copy-up-histogram",
            "compare-write-cdf",
            "compare-top-files",
        ] {
            assert!(html.contains(&format!("data-plot=\"{kind}\"")), "{kind}");
        }
        assert!(html.contains(&plots::hex(plots::BEFORE)));
        assert!(html.contains(&plots::hex(plots::AFTER)));
        assert!(html.contains("copy-up p99"));
    }

    #[test]
    fn text_from_the_report_is_escaped() {
        let mut v: serde_json::Value = serde_json::from_str(BEFORE).unwrap();
        v["containers"][0]["name"] = "<script>alert(1)</script>".into();
        v["containers"][0]["top_files"][0]["path"] = "a/<b>&\"c\"".into();
        let run = parse("x", &v.to_string()).unwrap();
        let html = report(&run, None);
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("a/<b>"));
    }
}
