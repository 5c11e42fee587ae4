//! The Prometheus exposition of a run: per container, copy-up latency as a
//! histogram, copy-up bytes, writes, whiteouts and opaque directories;
//! losses per kind; the agent's own health.
//!
//! The numbers are those of the live summary (exact counts and bytes,
//! histograms at [`crate::hist`]'s resolution), taken as a [`Snapshot`]
//! each `--interval` by the event loop and encoded on each scrape by
//! `prometheus-client`. That crate writes OpenMetrics text only;
//! [`to_classic_text`] turns it into the classic text format (0.0.4) for
//! scrapers and tools that do not ask for OpenMetrics (`promtool check
//! metrics`, `curl`). The HTTP side is [`crate::metrics_server`].

use crate::event::CopyUpKind;
use crate::stats::Row;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashSet;

/// Upper bounds (seconds) of `cowtrace_copy_up_seconds`: a copy-up of an
/// empty file under a fast disk takes tens of microseconds, a large log
/// file seconds.
pub const COPY_UP_BUCKETS_S: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of `cowtrace_write_seconds`: a write to the
/// page cache takes about a microsecond; one that waits for writeback,
/// milliseconds.
pub const WRITE_BUCKETS_S: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
];

/// A histogram ready to encode: per-bucket counts (not cumulative; the
/// encoder accumulates), the last bucket being `+Inf`.
#[derive(Clone, Debug, Default)]
struct Buckets {
    sum_s: f64,
    count: u64,
    per_bucket: Vec<(f64, u64)>,
}

impl Buckets {
    /// Each bucket of `hist` goes to the first bound at or above its lowest
    /// value (the histogram's own resolution is 1/128 of a value).
    fn of(hist: &crate::hist::LogHist, bounds_s: &[f64]) -> Self {
        let mut per_bucket: Vec<(f64, u64)> = bounds_s
            .iter()
            .map(|&b| (b, 0))
            .chain(std::iter::once((f64::MAX, 0)))
            .collect();
        let mut sum_s = 0.0;
        for (lowest_ns, n) in hist.buckets() {
            let s = lowest_ns as f64 / 1e9;
            let i = bounds_s
                .iter()
                .position(|&b| s <= b)
                .unwrap_or(bounds_s.len());
            per_bucket[i].1 += n;
            sum_s += s * n as f64;
        }
        Buckets {
            sum_s,
            count: hist.len(),
            per_bucket,
        }
    }
}

/// The labels of one container's series, escaped for the exposition.
#[derive(Clone, Debug)]
struct Labels {
    container: String,
    container_id: String,
    image: String,
    /// Kubernetes pod and namespace, when known.
    pod: Option<(String, String)>,
}

impl Labels {
    /// `pod` and `namespace` only for containers of a pod (an empty label
    /// value would mean the same to Prometheus, but not to a reader).
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![
            ("container", self.container.as_str()),
            ("container_id", &self.container_id),
            ("image", &self.image),
        ];
        if let Some((pod, namespace)) = &self.pod {
            pairs.extend([("pod", pod.as_str()), ("namespace", namespace)]);
        }
        pairs
    }
}

/// One container's numbers at a snapshot.
#[derive(Clone, Debug)]
struct Series {
    labels: Labels,
    copy_up: Buckets,
    copy_up_bytes: u64,
    writes: u64,
    write_bytes: u64,
    write_latency: Buckets,
    whiteouts: u64,
    opaque_dirs: u64,
    redirects: u64,
    /// Copy-ups per [`CopyUpKind`], indexed by its value.
    copy_ups_by_kind: [u64; 3],
}

/// What `/metrics` shows: taken by the event loop, read by the server.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    series: Vec<Series>,
    drops: Vec<(String, u64)>,
    probes_attached: u64,
    ready_s: f64,
}

impl Snapshot {
    /// Health only, before the first interval.
    pub fn started(probes_attached: usize, ready_s: f64) -> Self {
        Snapshot {
            probes_attached: probes_attached as u64,
            ready_s,
            ..Snapshot::default()
        }
    }

    /// The live summary's rows and losses, as series; the containers in
    /// `forgotten` (exited long enough ago) have none, so that the labels
    /// a scraper sees stay bounded by what runs.
    pub fn update(
        &mut self,
        rows: &[Row<'_>],
        drops: &[(String, u64)],
        forgotten: &HashSet<String>,
    ) {
        self.series = rows
            .iter()
            .filter(|(o, _, _)| !forgotten.contains(&o.id))
            .map(|(o, s, w)| Series {
                labels: Labels {
                    container: escape_label(&o.name),
                    container_id: escape_label(&o.id),
                    image: escape_label(&o.image),
                    pod: o
                        .pod
                        .as_ref()
                        .map(|p| (escape_label(&p.name), escape_label(&p.namespace))),
                },
                copy_up: Buckets::of(&s.copy_up, COPY_UP_BUCKETS_S),
                copy_up_bytes: s.copy_up_bytes,
                writes: w.count,
                write_bytes: w.bytes,
                write_latency: Buckets::of(&w.latency, WRITE_BUCKETS_S),
                whiteouts: s.whiteouts,
                opaque_dirs: s.opaque_dirs,
                redirects: s.redirects,
                copy_ups_by_kind: s.by_kind.map(|k| k.count),
            })
            .collect();
        self.drops = drops.to_vec();
    }
}

/// A label value as the exposition formats need it: backslash, double
/// quote and newline escaped (names come from containers and runtimes;
/// prometheus-client writes label values as given).
fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The exposition format a scraper gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`
    Classic,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (as Prometheus does),
    /// else the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// One counter per container.
fn per_container_counter(
    encoder: &mut DescriptorEncoder,
    series: &[Series],
    name: &str,
    help: &str,
    value: impl Fn(&Series) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for s in series {
        let pairs = s.labels.pairs();
        family
            .encode_family(&pairs)?
            .encode_counter::<NoLabelSet, _, u64>(&value(s), None)?;
    }
    Ok(())
}

/// One histogram per container.
fn per_container_histogram(
    encoder: &mut DescriptorEncoder,
    series: &[Series],
    name: &str,
    help: &str,
    buckets: impl Fn(&Series) -> &Buckets,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for s in series {
        let pairs = s.labels.pairs();
        let b = buckets(s);
        family
            .encode_family(&pairs)?
            .encode_histogram::<NoLabelSet>(b.sum_s, b.count, &b.per_bucket, None)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = &self.0;
        per_container_histogram(
            &mut encoder,
            &snap.series,
            "cowtrace_copy_up_seconds",
            "Latency of each object copied up (files and parent directories).",
            |s| &s.copy_up,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_copy_up_bytes",
            "Bytes copied up into the container's upper layer.",
            |s| s.copy_up_bytes,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_writes",
            "Writes to overlay files, every one counted.",
            |s| s.writes,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_write_bytes",
            "Bytes written to overlay files.",
            |s| s.write_bytes,
        )?;
        per_container_histogram(
            &mut encoder,
            &snap.series,
            "cowtrace_write_seconds",
            "Latency of the timed writes to overlay files.",
            |s| &s.write_latency,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_whiteouts",
            "Whiteouts created (image files deleted).",
            |s| s.whiteouts,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_opaque_dirs",
            "Directories made opaque (image directories replaced).",
            |s| s.opaque_dirs,
        )?;
        per_container_counter(
            &mut encoder,
            &snap.series,
            "cowtrace_redirects",
            "Image directories renamed as a redirect (redirect_dir=on), their tree not copied.",
            |s| s.redirects,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "cowtrace_copy_ups_by_kind",
                "Copy-ups by what they copied: full (data and metadata), metadata_only (metacopy=on's chown or chmod), deferred_data (metacopy=on's data, on the first write).",
                None,
                MetricType::Counter,
            )?;
            for s in &snap.series {
                for kind in CopyUpKind::ALL {
                    let mut pairs = s.labels.pairs();
                    pairs.push(("copy_kind", kind.key()));
                    family
                        .encode_family(&pairs)?
                        .encode_counter::<NoLabelSet, _, u64>(
                            &s.copy_ups_by_kind[kind as usize],
                            None,
                        )?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "cowtrace_dropped_events",
                "Events the kernel could not deliver or record, per kind.",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in &snap.drops {
                let pairs = [("kind", kind.as_str())];
                family
                    .encode_family(&pairs)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "cowtrace_build_info",
                "The cowtrace build serving these metrics.",
                None,
                MetricType::Gauge,
            )?;
            let pairs = [("version", env!("CARGO_PKG_VERSION"))];
            family.encode_family(&pairs)?.encode_gauge(&1i64)?;
        }
        encoder
            .encode_descriptor(
                "cowtrace_probes_attached",
                "Kernel probes attached.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(snap.probes_attached as i64))?;
        encoder
            .encode_descriptor(
                "cowtrace_ready_seconds",
                "Seconds from start to tracing.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&snap.ready_s)?;
        Ok(())
    }
}

/// The exposition of `snap` in `format`.
pub fn encode(snap: &Snapshot, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snap.clone())));
    let mut om = String::new();
    // Writing into a String cannot fail, and every value is a number or an
    // escaped label.
    let _ = prometheus_client::encoding::text::encode(&mut om, &registry);
    match format {
        Format::OpenMetrics => om,
        Format::Classic => to_classic_text(&om),
    }
}

/// OpenMetrics text as the classic text format: no `# EOF` and no
/// `# UNIT` lines, and a counter's `# HELP`/`# TYPE` name the sample
/// (`x_total`) rather than the family (`x`).
pub fn to_classic_text(om: &str) -> String {
    let mut counters = Vec::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .iter()
                .any(|c| c == name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::LogHist;
    use crate::stats::Owner;

    #[test]
    fn a_histogram_bucket_goes_to_the_first_bound_at_or_above_it() {
        let mut h = LogHist::new();
        h.record_n(20_000, 3); // 20 us
        h.record(3_000_000); // 3 ms
        h.record(30_000_000_000); // 30 s: +Inf
        let b = Buckets::of(&h, COPY_UP_BUCKETS_S);
        assert_eq!(b.count, 5);
        assert_eq!(b.per_bucket[0], (0.000_025, 3));
        let ms5 = b.per_bucket.iter().find(|(ub, _)| *ub == 0.005).unwrap();
        assert_eq!(ms5.1, 1);
        assert_eq!(*b.per_bucket.last().unwrap(), (f64::MAX, 1));
        assert_eq!(b.per_bucket.iter().map(|(_, n)| n).sum::<u64>(), 5);
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Classic);
        assert_eq!(Format::from_accept(None), Format::Classic);
    }

    #[test]
    fn copy_ups_are_counted_per_kind_and_container() {
        let owner = Owner::host();
        let mut stats = crate::stats::OwnerStats::default();
        stats.by_kind[CopyUpKind::Full as usize].count = 4;
        stats.by_kind[CopyUpKind::MetadataOnly as usize].count = 5;
        stats.by_kind[CopyUpKind::DeferredData as usize].count = 2;
        let w = crate::stats::WriteTotals::default();
        let mut snap = Snapshot::started(1, 0.1);
        snap.update(&[(&owner, &stats, &w)], &[], &HashSet::new());
        for format in [Format::Classic, Format::OpenMetrics] {
            let text = encode(&snap, format);
            let samples: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("cowtrace_copy_ups_by_kind_total{"))
                .collect();
            assert_eq!(samples.len(), 3, "{text}");
            for (kind, n) in [("full", 4), ("metadata_only", 5), ("deferred_data", 2)] {
                let needle = format!("copy_kind=\"{kind}\"}} {n}");
                assert!(
                    samples
                        .iter()
                        .any(|l| l.ends_with(&needle) && l.contains("container=\"host\"")),
                    "{needle}: {samples:#?}"
                );
            }
        }
    }

    #[test]
    fn redirects_are_a_counter_per_container() {
        let owner = Owner::host();
        let stats = crate::stats::OwnerStats {
            redirects: 2,
            ..Default::default()
        };
        let w = crate::stats::WriteTotals::default();
        let mut snap = Snapshot::started(1, 0.1);
        snap.update(&[(&owner, &stats, &w)], &[], &HashSet::new());
        let text = encode(&snap, Format::Classic);
        let line = text
            .lines()
            .find(|l| l.starts_with("cowtrace_redirects_total{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with(" 2"), "{line}");
    }

    #[test]
    fn counters_are_named_by_their_sample_in_the_classic_format() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_classic_text(om),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
