//! SVG plots drawn with plotters' SVG backend from the reports' HDR
//! histograms. Axes and text use two placeholder colours ([`FG`], [`GRID`])
//! that the page's stylesheet maps to its light or dark theme; data
//! colours are the same in both themes.

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Placeholder for text and axes: the page sets it per theme.
pub const FG: RGBColor = RGBColor(0x01, 0x02, 0x03);
/// Placeholder for grid lines.
pub const GRID: RGBColor = RGBColor(0x04, 0x05, 0x06);
pub const COPY_UP: RGBColor = RGBColor(0xE8, 0x59, 0x0C);
pub const WRITE: RGBColor = RGBColor(0x1C, 0x7E, 0xD6);
pub const BEFORE: RGBColor = RGBColor(0x84, 0x5E, 0xF7);
pub const AFTER: RGBColor = RGBColor(0x0C, 0xA6, 0x78);
/// Series colours for timelines, one per container.
pub const PALETTE: [RGBColor; 6] = [
    COPY_UP,
    WRITE,
    AFTER,
    BEFORE,
    RGBColor(0xD6, 0x33, 0x6C),
    RGBColor(0x99, 0x80, 0x00),
];

/// `#RRGGBB` as plotters writes it into the SVG.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

const W: u32 = 640;
const H: u32 = 380;
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn e<E: std::fmt::Display>(err: E) -> String {
    format!("drawing a plot: {err}")
}

fn svg(w: u32, h: u32, draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<String, String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(e)?;
    }
    Ok(buf)
}

fn style(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&FG)
}

/// Latency for an axis tick: 100ns, 1µs, 10µs, 1ms, 2.5s.
pub fn fmt_tick(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s}{unit}")
}

/// One distribution to draw.
pub struct Series<'h> {
    pub label: String,
    pub color: RGBColor,
    pub hist: &'h Histogram<u64>,
}

/// Powers of two around every recorded value: [2^lo, 2^hi].
fn octaves(series: &[Series]) -> Option<(u32, u32)> {
    let live: Vec<_> = series.iter().filter(|s| !s.hist.is_empty()).collect();
    let min = live.iter().map(|s| s.hist.min().max(1)).min()?;
    let max = live.iter().map(|s| s.hist.max().max(1)).max()?;
    let lo = 63 - min.leading_zeros();
    let hi = (64 - max.leading_zeros()).max(lo + 1);
    Some((lo, hi))
}

/// The smallest range of whole decades around `[lo, hi]`: a log axis
/// then has its labels at 1, 10, 100, ... instead of crowded 2, 3, ... 9.
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(1.0).log10().floor());
    let hi = 10f64.powf(hi.max(1.0).log10().ceil());
    (lo, if hi > lo { hi } else { lo * 10.0 })
}

/// Axis label counts: few on a log axis (one per decade), more on a
/// linear one.
const LOG_LABELS: usize = 6;
const LINEAR_LABELS: usize = 11;

#[allow(clippy::too_many_arguments)]
fn mesh<'a, X, Y, XT, YT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    x_desc: &str,
    y_desc: &str,
    x_fmt: &dyn Fn(&XT) -> String,
    y_fmt: &dyn Fn(&YT) -> String,
    x_labels: usize,
    y_labels: usize,
) -> Result<(), String>
where
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
    Y: Ranged<ValueType = YT> + ValueFormatter<YT>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(x_fmt)
        .y_label_formatter(y_fmt)
        .x_labels(x_labels)
        .y_labels(y_labels)
        .label_style(style(13))
        .axis_desc_style(style(14))
        .axis_style(FG)
        .bold_line_style(GRID.mix(0.6))
        .light_line_style(GRID.mix(0.15))
        .draw()
        .map_err(e)
}

fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    pos: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font(style(13))
        .border_style(GRID)
        .background_style(GRID.mix(0.08))
        .draw()
        .map_err(e)
}

/// Share of each distribution per power-of-two latency bucket, bars side
/// by side, with each bar's count above it. Log-scaled latency axis.
pub fn latency_histogram(caption: &str, series: &[Series]) -> Result<String, String> {
    let Some((lo, hi)) = octaves(series) else {
        return Err("no latencies to plot".into());
    };
    let n = series.len() as f64;
    let mut rows = Vec::new();
    let mut top = 0f64;
    for (i, s) in series.iter().enumerate() {
        let total = s.hist.len().max(1) as f64;
        for k in lo..hi {
            let (a, b) = (1u64 << k, (1u64 << (k + 1)) - 1);
            let c = if s.hist.is_empty() {
                0
            } else {
                s.hist.count_between(a, b)
            };
            let pct = c as f64 / total * 100.0;
            top = top.max(pct);
            rows.push((i, k, c, pct));
        }
    }
    svg(W, H, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, style(16))
            .margin(10)
            .margin_right(28)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(
                ((1u64 << lo) as f64..(1u64 << hi) as f64).log_scale(),
                0f64..(top * 1.15).max(1.0),
            )
            .map_err(e)?;
        mesh(
            &mut chart,
            "latency (log scale)",
            "share of each kind's count (%)",
            &|v| fmt_tick(*v),
            &|v| format!("{v:.0}%"),
            LOG_LABELS,
            LINEAR_LABELS,
        )?;
        for (i, s) in series.iter().enumerate() {
            let color = s.color;
            let bars: Vec<_> = rows.iter().filter(|r| r.0 == i && r.2 > 0).collect();
            // Each octave [2^k, 2^k+1) split evenly (in log space) between
            // the series, with a small gap.
            let x = |k: u32, f: f64| 2f64.powf(k as f64 + f);
            let slot = |k: u32| {
                let a = x(k, (i as f64 + 0.08) / n);
                let b = x(k, (i as f64 + 0.92) / n);
                (a, b)
            };
            chart
                .draw_series(bars.iter().map(|r| {
                    let (a, b) = slot(r.1);
                    Rectangle::new([(a, 0.0), (b, r.3)], color.filled())
                }))
                .map_err(e)?
                .label(format!("{} (n={})", s.label, s.hist.len()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart
                .draw_series(bars.iter().map(|r| {
                    let (a, b) = slot(r.1);
                    let mid = (a * b).sqrt();
                    Text::new(
                        r.2.to_string(),
                        (mid, r.3),
                        style(11).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))
                .map_err(e)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Cumulative distributions on a log-scaled latency axis, with p50 and p99
/// marked and labelled.
pub fn latency_cdf(caption: &str, series: &[Series]) -> Result<String, String> {
    let Some((lo, hi)) = octaves(series) else {
        return Err("no latencies to plot".into());
    };
    let live = series.iter().filter(|s| !s.hist.is_empty());
    let min = live.clone().map(|s| s.hist.min()).min().unwrap_or(1 << lo);
    let max = live.map(|s| s.hist.max()).max().unwrap_or(1 << hi);
    let (x0, x1) = decades(min as f64, max as f64 + 1.0);
    svg(W, H, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, style(16))
            .margin(10)
            .margin_right(28)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d((x0..x1).log_scale(), 0f64..100f64)
            .map_err(e)?;
        mesh(
            &mut chart,
            "latency (log scale)",
            "operations at or below (%)",
            &|v| fmt_tick(*v),
            &|v| format!("{v:.0}%"),
            LOG_LABELS,
            LINEAR_LABELS,
        )?;
        for (i, s) in series.iter().enumerate() {
            if s.hist.is_empty() {
                continue;
            }
            let color = s.color;
            let mut pts = vec![(x0, 0.0)];
            let mut cum = 0f64;
            let total = s.hist.len() as f64;
            for v in s.hist.iter_recorded() {
                let x = v.value_iterated_to() as f64;
                pts.push((x, cum));
                cum += v.count_at_value() as f64 / total * 100.0;
                pts.push((x, cum));
            }
            pts.push((x1, 100.0));
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{} (n={})", s.label, s.hist.len()))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                });
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                let v = s.hist.value_at_quantile(q) as f64;
                let y = q * 100.0;
                chart
                    .draw_series([Circle::new((v, y), 4, color.filled())])
                    .map_err(e)?;
                // Labels of the series stacked so they do not overlap;
                // left of the dot near the right edge, so they stay inside.
                let dy = -6.0 - 8.0 * i as f64;
                let label = format!("{name} {}", fmt_tick(v));
                let right_part = (v / x0).ln() / (x1 / x0).ln() > 0.7;
                let (x, h) = if right_part {
                    (v / 1.15, HPos::Right)
                } else {
                    (v * 1.15, HPos::Left)
                };
                chart
                    .draw_series([Text::new(
                        label,
                        (x, (y + dy).max(2.0)),
                        style(11).pos(Pos::new(h, VPos::Center)),
                    )])
                    .map_err(e)?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// One row of horizontal bars: a label and one bar per group (`None`: not
/// known, drawn as a note instead of a bar).
pub struct BarRow {
    pub label: String,
    pub bars: Vec<Option<(u64, String)>>,
}

/// Horizontal bars (longest first, as given), each with its numbers
/// beside it; `groups` names and colours the bars of a row.
pub fn hbars(
    caption: &str,
    x_desc: &str,
    groups: &[(&str, RGBColor)],
    rows: &[BarRow],
    fmt_x: &dyn Fn(u64) -> String,
) -> Result<String, String> {
    if rows.is_empty() {
        return Err("no bars to plot".into());
    }
    let max = rows
        .iter()
        .flat_map(|r| r.bars.iter().flatten())
        .map(|b| b.0)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let g = groups.len().max(1) as f64;
    let row_h = 14.0 * g + 12.0;
    let h = (90.0 + row_h * rows.len() as f64) as u32;
    let label_w = 250;
    let n = rows.len() as f64;
    svg(W + 200, h, |root| {
        let (left, right) = root.split_horizontally(label_w);
        let mut chart = ChartBuilder::on(&right)
            .caption(caption, style(16))
            .margin(10)
            .margin_right(24)
            .x_label_area_size(42)
            .y_label_area_size(4)
            .build_cartesian_2d(0f64..max * 1.6, 0f64..n)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|v| fmt_x(v.max(0.0) as u64))
            .y_labels(0)
            .disable_y_mesh()
            .label_style(style(13))
            .axis_desc_style(style(14))
            .axis_style(FG)
            .bold_line_style(GRID.mix(0.6))
            .light_line_style(GRID.mix(0.25))
            .draw()
            .map_err(e)?;
        for (gi, (name, color)) in groups.iter().enumerate() {
            let color = *color;
            // Row 0 at the top.
            let span = |ri: usize| {
                let top = n - ri as f64 - 0.1 - gi as f64 * 0.8 / g;
                (top - 0.8 / g + 0.04, top)
            };
            let known: Vec<_> = rows
                .iter()
                .enumerate()
                .filter_map(|(ri, r)| r.bars.get(gi).and_then(|b| b.as_ref()).map(|b| (ri, b)))
                .collect();
            let s = chart
                .draw_series(known.iter().map(|(ri, (v, _))| {
                    let (y0, y1) = span(*ri);
                    Rectangle::new([(0.0, y0), (*v as f64, y1)], color.filled())
                }))
                .map_err(e)?;
            if groups.len() > 1 {
                s.label(*name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            }
            chart
                .draw_series(known.iter().map(|(ri, (v, text))| {
                    let (y0, y1) = span(*ri);
                    Text::new(
                        text.clone(),
                        (*v as f64 + max * 0.01, (y0 + y1) / 2.0),
                        style(11).pos(Pos::new(HPos::Left, VPos::Center)),
                    )
                }))
                .map_err(e)?;
            let unknown: Vec<_> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.bars.get(gi), Some(None)))
                .map(|(ri, _)| ri)
                .collect();
            chart
                .draw_series(unknown.iter().map(|ri| {
                    let (y0, y1) = span(*ri);
                    Text::new(
                        format!("{name}: not among the top files"),
                        (max * 0.01, (y0 + y1) / 2.0),
                        style(11).pos(Pos::new(HPos::Left, VPos::Center)),
                    )
                }))
                .map_err(e)?;
        }
        // Row labels, right-aligned beside their bars.
        for (ri, r) in rows.iter().enumerate() {
            let (_, py) = chart.backend_coord(&(0.0, n - ri as f64 - 0.5));
            left.draw(&Text::new(
                super::terminal::clip_left(&r.label, 36),
                (label_w - 6, py),
                style(12).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
        }
        if groups.len() > 1 {
            legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        Ok(())
    })
}

/// Copy-ups over time: one dot per copy-up at (seconds since the first
/// event, latency on a log scale), one colour per container.
pub fn timeline(caption: &str, series: &[(String, Vec<(f64, u64)>)]) -> Result<String, String> {
    let all: Vec<&(f64, u64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if all.is_empty() {
        return Err("no copy-ups to plot".into());
    }
    let t1 = all.iter().map(|p| p.0).fold(0f64, f64::max).max(0.001);
    let lo = all.iter().map(|p| p.1.max(1)).min().unwrap_or(1);
    let hi = all.iter().map(|p| p.1.max(1)).max().unwrap_or(1);
    let (lo, hi) = decades(lo as f64, hi as f64);
    svg(W + 200, H, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, style(16))
            .margin(10)
            .margin_right(28)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..t1 * 1.02, (lo..hi).log_scale())
            .map_err(e)?;
        mesh(
            &mut chart,
            "time since the first event (s)",
            "copy-up latency (log scale)",
            &|v| format!("{v:.1}s"),
            &|v| fmt_tick(*v),
            8,
            LOG_LABELS,
        )?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(
                    pts.iter()
                        .map(|(t, l)| Circle::new((*t, (*l).max(1) as f64), 3, color.filled())),
                )
                .map_err(e)?
                .label(format!("{name} (n={})", pts.len()))
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_span_whole_decades() {
        assert_eq!(decades(524_288.0, 33_554_432.0), (100_000.0, 100_000_000.0));
        assert_eq!(decades(1_000.0, 1_000.0), (1_000.0, 10_000.0));
        assert_eq!(decades(0.0, 5.0), (1.0, 10.0));
    }

    #[test]
    fn ticks_read_like_latencies() {
        assert_eq!(fmt_tick(100.0), "100ns");
        assert_eq!(fmt_tick(1_000.0), "1µs");
        assert_eq!(fmt_tick(2_500_000.0), "2.5ms");
        assert_eq!(fmt_tick(1e9), "1s");
    }

    #[test]
    fn histogram_has_one_bar_per_nonempty_bucket_in_its_colour() {
        let mut a = crate::stats::new_hist();
        let mut b = crate::stats::new_hist();
        for v in [1_100u64, 1_500, 3_000, 1_000_000] {
            a.record(v).unwrap();
        }
        b.record(200).unwrap();
        let s = [
            Series {
                label: "copy-up".into(),
                color: COPY_UP,
                hist: &a,
            },
            Series {
                label: "write".into(),
                color: WRITE,
                hist: &b,
            },
        ];
        let svg = latency_histogram("t", &s).unwrap();
        let fill = |c| format!("fill=\"{}\"", hex(c));
        // [1024, 2048) twice, [2048, 4096), [2^19, 2^20): 3 copy-up bars
        // + the legend swatch; 1 write bar + swatch.
        assert_eq!(svg.matches(&fill(COPY_UP)).count(), 4, "{svg}");
        assert_eq!(svg.matches(&fill(WRITE)).count(), 2);
        assert!(svg.contains("copy-up (n=4)"));
        let empty = crate::stats::new_hist();
        let none = [Series {
            label: "x".into(),
            color: WRITE,
            hist: &empty,
        }];
        assert!(latency_histogram("t", &none).is_err());
        assert!(latency_cdf("t", &none).is_err());
    }
}
