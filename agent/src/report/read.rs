//! Reading a saved `cowtrace/v1` report back: typed serde structs for every
//! field docs/json-schema.md lists, and the HDR histograms decoded into the
//! same [`OwnerStats`] / [`WriteTotals`] the live view renders. Nothing here
//! needs root or a kernel.
//!
//! Fields added later within v1 (the schema only bumps on a removal or a
//! rename) are ignored by the typed structs, except `layers`, which is kept
//! as written when present (its shape belongs to the layers issue).

use super::SCHEMA;
use crate::hist::LogHist;
use crate::stats::{Owner, OwnerStats, TopFiles, WriteTotals};
use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// A nullable field that must be present (`null`, never missing).
fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub kernel: String,
    pub started: String,
    pub duration_s: f64,
    pub write_sample_every: u64,
    /// Added within v1 after the first reports: absent in older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    /// Added within v1: absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Cgroup>,
    pub probes: Vec<Probe>,
    /// Added within v1 (issue 12): `kernel` or `kallsyms`; absent in
    /// older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_names: Option<String>,
    pub drops: Drops,
    /// Added within v1: absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_maps: Option<std::collections::BTreeMap<String, KernelMap>>,
    /// Added within v1 (overlay modes, issue 17): kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlays: Option<Value>,
    pub containers: Vec<Container>,
}

/// One entry of `kernel_maps` (keyed by [`agent_ebpf::MapFull::key`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelMap {
    pub entries: u64,
    pub max_entries: u64,
}

/// `cgroup`: the host's cgroup mode and how events were attributed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cgroup {
    pub mode: String,
    pub attribution: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Clock {
    pub monotonic_to_unix_ns: i64,
}

/// Documented fields that a v1 report written before they were added
/// lacks (the reader takes them as optional).
pub const ADDED_WITHIN_V1: &[&str] = &[
    "clock",
    "clock.monotonic_to_unix_ns",
    "cgroup",
    "cgroup.mode",
    "cgroup.attribution",
    "containers[].top_files[].error_ns",
    "containers[].top_files_other",
    "containers[].top_files_other.count",
    "containers[].top_files_other.total_ns",
    "containers[].top_files_other.bytes",
    "drops.map_full",
    "drops.map_full.writes",
    "drops.map_full.write_starts",
    "drops.map_full.copy_ops",
    "drops.map_full.copy_objs",
    "drops.map_full.ovl_ops",
    "kernel_maps",
    "kernel_maps.writes",
    "kernel_maps.writes.entries",
    "kernel_maps.writes.max_entries",
    "kernel_maps.write_starts",
    "kernel_maps.write_starts.entries",
    "kernel_maps.write_starts.max_entries",
    "kernel_maps.copy_ops",
    "kernel_maps.copy_ops.entries",
    "kernel_maps.copy_ops.max_entries",
    "kernel_maps.copy_objs",
    "kernel_maps.copy_objs.entries",
    "kernel_maps.copy_objs.max_entries",
    "kernel_maps.ovl_ops",
    "kernel_maps.ovl_ops.entries",
    "kernel_maps.ovl_ops.max_entries",
    // Who named copy-up stacks' frames (issue 12).
    "trigger_names",
    // The agent's own cost (issue 10).
    "agent",
    "agent.rss_kib",
    "agent.peak_rss_kib",
    "agent.rss_anon_kib",
    "agent.rss_file_kib",
    "agent.rss_shmem_kib",
    "agent.cpu_s",
    "agent.heap_kib",
    "agent.heap_free_kib",
    "agent.held_events",
    "agent.held_events.now",
    "agent.held_events.peak",
    "agent.held_events.peak_kib",
    "agent.held_events.released_early",
    "agent.layer_questions",
    "agent.layer_questions.now",
    "agent.layer_questions.peak",
    // Overlay modes (issue 17); `overlays` is kept as written.
    "drops.redirect",
    "containers[].redirects",
    "containers[].redirects.count",
    "containers[].copy_up.by_kind",
    "containers[].copy_up.by_kind.full",
    "containers[].copy_up.by_kind.full.count",
    "containers[].copy_up.by_kind.full.bytes",
    "containers[].copy_up.by_kind.full.total_ns",
    "containers[].copy_up.by_kind.metadata_only",
    "containers[].copy_up.by_kind.metadata_only.count",
    "containers[].copy_up.by_kind.metadata_only.bytes",
    "containers[].copy_up.by_kind.metadata_only.total_ns",
    "containers[].copy_up.by_kind.deferred_data",
    "containers[].copy_up.by_kind.deferred_data.count",
    "containers[].copy_up.by_kind.deferred_data.bytes",
    "containers[].copy_up.by_kind.deferred_data.total_ns",
    "overlays",
    "overlays[].dev",
    "overlays[].mount_point",
    "overlays[].filesystem",
    "overlays[].filesystem.id",
    "overlays[].filesystem.name",
    "overlays[].overlay_options",
    "overlays[].overlay_options.metacopy",
    "overlays[].overlay_options.index",
    "overlays[].overlay_options.redirect_dir",
    "overlays[].overlay_options.userxattr",
    "overlays[].overlay_options.volatile",
    "overlays[].overlay_options.nfs_export",
    "overlays[].overlay_options.xino",
    // Kubernetes names (issue 14).
    "containers[].pod",
    "containers[].namespace",
    // Image layers (issue 13); `layers` is kept as written.
    "containers[].layers",
    "containers[].layers[].index",
    "containers[].layers[].diff_id",
    "containers[].layers[].created_by",
    "containers[].layers[].copy_up",
    "containers[].layers[].copy_up.count",
    "containers[].layers[].copy_up.bytes",
    "containers[].layers[].copy_up.total_ns",
    "containers[].layers[].copy_up.latency_ns",
    "containers[].layers[].copy_up.latency_ns.min",
    "containers[].layers[].copy_up.latency_ns.p50",
    "containers[].layers[].copy_up.latency_ns.p90",
    "containers[].layers[].copy_up.latency_ns.p99",
    "containers[].layers[].copy_up.latency_ns.p999",
    "containers[].layers[].copy_up.latency_ns.max",
    "containers[].layers[].copy_up.latency_ns.mean",
    "containers[].layers[].whiteouts",
    "containers[].layers[].whiteouts.count",
    "containers[].layers[].opaque_dirs",
    "containers[].layers[].opaque_dirs.count",
    "containers[].layers_unknown",
    "containers[].layers_unknown_why",
    "containers[].layers_unknown_why.path_cut",
    "containers[].layers_unknown_why.no_layer_data",
    "containers[].layers_unknown_why.lookup_failed",
    "containers[].layers_unknown_why.too_slow",
    "containers[].advice",
    "containers[].advice[].rule",
    "containers[].advice[].what",
    "containers[].advice[].path",
    "containers[].advice[].layer",
    "containers[].advice[].count",
    "containers[].advice[].bytes",
    "containers[].advice[].total_ns",
    "containers[].advice[].unchanged",
    "containers[].layers[].copy_up_unchanged",
    "containers[].layers[].copy_up_unchanged.count",
    "containers[].layers[].copy_up_unchanged.bytes",
    "containers[].layers[].copy_up_unchanged.total_ns",
    "containers[].copy_up_unchanged",
    "containers[].copy_up_unchanged.count",
    "containers[].copy_up_unchanged.bytes",
    "containers[].copy_up_unchanged.total_ns",
    "containers[].copy_up_unchanged.checked",
    "containers[].copy_up_unchanged.not_checked",
    "containers[].copy_up_unchanged.paths",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub role: String,
    pub function: String,
    pub method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drops {
    pub copy_up: u64,
    pub whiteout: u64,
    pub opaque_dir: u64,
    /// Added with `redirect_dir=on` support (issue 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<u64>,
    /// Added within v1: inserts refused by full kernel maps, keyed by
    /// [`agent_ebpf::MapFull::key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_full: Option<std::collections::BTreeMap<String, u64>>,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.copy_up + self.whiteout + self.opaque_dir + self.redirect.unwrap_or(0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Kubernetes pod and namespace; absent in reports of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub copy_up: CopyUp,
    pub writes: Writes,
    pub whiteouts: Count,
    pub opaque_dirs: Count,
    /// Added with `redirect_dir=on` support (issue 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<Count>,
    pub copy_up_vs_write: Ratios,
    pub top_files: Vec<TopFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_files_other: Option<FileTotals>,
    /// Per image layer, once the agent writes it; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Map<String, Value>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    #[serde(deserialize_with = "nullable")]
    pub min: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub p50: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub p90: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub p99: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub p999: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub max: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub mean: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    pub min: u64,
    pub max: u64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyUp {
    pub count: u64,
    pub bytes: u64,
    pub latency_ns: Quantiles,
    pub operation_latency_ns: Quantiles,
    /// Added within v1: absent in older reports (all `full` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_kind: Option<std::collections::BTreeMap<String, KindTotals>>,
    pub buckets: Vec<Bucket>,
    pub hdr: String,
}

/// One entry of `copy_up.by_kind` (keyed by [`crate::event::CopyUpKind::key`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct KindTotals {
    pub count: u64,
    pub bytes: u64,
    pub total_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Writes {
    pub count: u64,
    pub bytes: u64,
    pub timed: u64,
    pub latency_ns: Quantiles,
    pub buckets: Vec<Bucket>,
    pub hdr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Count {
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ratios {
    #[serde(deserialize_with = "nullable")]
    pub p50_ratio: Option<f64>,
    #[serde(deserialize_with = "nullable")]
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopFile {
    pub path: String,
    pub count: u64,
    pub total_ns: u64,
    pub bytes: u64,
    /// Added within v1 with bounded top files: how much copy-up time the
    /// path may have had before it was tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ns: Option<u64>,
}

/// Every copy-up not in `top_files` (added within v1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileTotals {
    pub count: u64,
    pub total_ns: u64,
    pub bytes: u64,
}

/// The report's own length limit for `top_files` (see the schema).
pub const TOP_FILES: usize = 10;

/// One container of a saved report, with its histograms decoded.
pub struct Loaded {
    pub owner: Owner,
    /// The numbers as the live view holds them (for its exit summary).
    pub stats: OwnerStats,
    pub writes: WriteTotals,
    /// The saved histograms as written, at their own precision (for
    /// comparisons and plots).
    pub copy_up_hdr: Histogram<u64>,
    pub writes_hdr: Histogram<u64>,
    pub raw: Container,
}

impl Loaded {
    /// True when `top_files` lists every file copied up (fewer than the
    /// limit), so a file missing from it was not copied up at all.
    pub fn top_files_complete(&self) -> bool {
        self.raw.top_files.len() < TOP_FILES
    }
}

/// A saved report, ready to render.
pub struct Run {
    /// Where it was read from, as given.
    pub source: String,
    pub report: Report,
    pub containers: Vec<Loaded>,
}

/// Why a file is not a report this cowtrace can read: one line.
#[derive(Debug)]
pub struct ReadError(pub String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

/// Reads and checks a saved report.
pub fn load(path: &Path) -> Result<Run, ReadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ReadError(format!("{name}: {e}")))?;
    parse(&name, &text)
}

/// Parses report text; `name` only labels errors.
pub fn parse(name: &str, text: &str) -> Result<Run, ReadError> {
    let err = |m: String| ReadError(format!("{name}: {m}"));
    // The schema first, so a newer report says so instead of naming
    // whatever field moved.
    let v: Value = serde_json::from_str(text)
        .map_err(|e| err(format!("not a cowtrace report: invalid JSON ({e})")))?;
    match v.get("schema") {
        Some(Value::String(s)) if s == SCHEMA => {}
        Some(Value::String(s)) => {
            return Err(err(format!(
                "schema {s:?} is not supported: this cowtrace reads {SCHEMA:?}"
            )))
        }
        _ => {
            return Err(err(format!(
                "not a cowtrace report: no \"schema\": {SCHEMA:?} field"
            )))
        }
    }
    let report: Report =
        serde_json::from_str(text).map_err(|e| err(format!("malformed {SCHEMA} report: {e}")))?;
    let mut containers = Vec::new();
    for (i, c) in report.containers.iter().enumerate() {
        let at = |field: &str, e: String| err(format!("containers[{i}].{field}.hdr: {e}"));
        let copy_up = decode_hdr(&c.copy_up.hdr).map_err(|e| at("copy_up", e))?;
        let writes = decode_hdr(&c.writes.hdr).map_err(|e| at("writes", e))?;
        if copy_up.len() != c.copy_up.count {
            return Err(at(
                "copy_up",
                format!(
                    "holds {} values but copy_up.count is {}",
                    copy_up.len(),
                    c.copy_up.count
                ),
            ));
        }
        // The top files as the live view's bounded table holds them: each
        // row's copy-ups recorded again, so its totals come back exactly.
        let mut files = TopFiles::default();
        for f in &c.top_files {
            let n = f.count.max(1);
            for i in 0..n {
                let share = |total: u64| total / n + u64::from(i < total % n);
                files.record(&f.path, share(f.total_ns), share(f.bytes));
            }
        }
        let stats = OwnerStats {
            copy_up_count: c.copy_up.count,
            copy_up_bytes: c.copy_up.bytes,
            copy_up: LogHist::from_hdr(&copy_up),
            // The report keeps only this distribution's quantiles.
            copy_up_op: LogHist::new(),
            whiteouts: c.whiteouts.count,
            opaque_dirs: c.opaque_dirs.count,
            redirects: c.redirects.as_ref().map_or(0, |r| r.count),
            files,
            by_kind: by_kind(&c.copy_up),
        };
        let writes_totals = WriteTotals {
            count: c.writes.count,
            bytes: c.writes.bytes,
            timed: c.writes.timed,
            latency: LogHist::from_hdr(&writes),
        };
        containers.push(Loaded {
            owner: Owner {
                id: c.id.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                pod: match (&c.pod, &c.namespace) {
                    (Some(name), Some(namespace)) => Some(crate::kube::Pod {
                        name: name.clone(),
                        namespace: namespace.clone(),
                    }),
                    _ => None,
                },
            },
            stats,
            writes: writes_totals,
            copy_up_hdr: copy_up,
            writes_hdr: writes,
            raw: c.clone(),
        });
    }
    Ok(Run {
        source: name.to_string(),
        report,
        containers,
    })
}

/// base64 of an HdrHistogram V2 serialization (plain or deflated).
pub fn decode_hdr(b64: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not base64 ({e})"))?;
    if bytes.is_empty() {
        return Err("empty".into());
    }
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("not an HdrHistogram V2 serialization ({e:?})"))?;
    // Kept at the precision it declares: that is the resolution the
    // comparison reports. The agent never records above 2^40 ns.
    if h.max() > 1 << 40 {
        return Err(format!("a value of {} ns is above 2^40 ns", h.max()));
    }
    Ok(h)
}

/// Who a saved event belongs to (`container` of an `--events` line).
#[derive(Debug, Clone, Deserialize)]
pub struct EventOwner {
    pub id: String,
    pub name: String,
}

/// The fields of an `--events` line that the timeline uses.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub ts_ns: u64,
    pub container: EventOwner,
    pub path: String,
    /// Copy-ups only.
    #[serde(default)]
    pub latency_ns: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Reads an `--events` NDJSON file; a bad line is a one-line error naming
/// its line number.
pub fn load_events(path: &Path) -> Result<Vec<SavedEvent>, ReadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ReadError(format!("{name}: {e}")))?;
    parse_events(&name, &text)
}

pub fn parse_events(name: &str, text: &str) -> Result<Vec<SavedEvent>, ReadError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ev: SavedEvent = serde_json::from_str(line).map_err(|e| {
            ReadError(format!(
                "{name}:{}: not a cowtrace --events line ({e})",
                i + 1
            ))
        })?;
        if ev.kind == "copy_up" && ev.latency_ns.is_none() {
            return Err(ReadError(format!(
                "{name}:{}: copy_up event without latency_ns",
                i + 1
            )));
        }
        out.push(ev);
    }
    Ok(out)
}

/// The per-kind copy-up totals of a report's container, as the live view
/// keeps them; a report written before they existed counts all as `full`.
fn by_kind(c: &CopyUp) -> [crate::stats::KindTotals; 3] {
    use crate::event::CopyUpKind;
    let mut out = [crate::stats::KindTotals::default(); 3];
    match &c.by_kind {
        Some(m) => {
            for k in CopyUpKind::ALL {
                if let Some(t) = m.get(k.key()) {
                    out[k as usize] = crate::stats::KindTotals {
                        count: t.count,
                        bytes: t.bytes,
                        total_ns: t.total_ns,
                    };
                }
            }
        }
        None => {
            out[CopyUpKind::Full as usize].count = c.count;
            out[CopyUpKind::Full as usize].bytes = c.bytes;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report: `cargo xtask demo` on this machine (see
    /// agent/tests/data/README.md).
    const DEMO: &str = include_str!("../../tests/data/demo-before.json");

    #[test]
    fn typed_structs_hold_every_field_of_a_real_report() {
        let run = parse("demo", DEMO).unwrap();
        let original: Value = serde_json::from_str(DEMO).unwrap();
        let again = serde_json::to_value(&run.report).unwrap();
        assert_eq!(original, again, "a field was lost or changed on the way");
        let nginx = run
            .containers
            .iter()
            .find(|c| c.owner.name == "nginx")
            .unwrap();
        assert_eq!(nginx.copy_up_hdr.len(), nginx.raw.copy_up.count);
        // The decoded histograms give the report's own quantiles back.
        for (q, want) in [
            (0.5, nginx.raw.copy_up.latency_ns.p50),
            (0.99, nginx.raw.copy_up.latency_ns.p99),
        ] {
            assert_eq!(Some(nginx.copy_up_hdr.value_at_quantile(q)), want);
        }
        assert_eq!(
            Some(nginx.writes_hdr.value_at_quantile(0.5)),
            nginx.raw.writes.latency_ns.p50
        );
    }

    #[test]
    fn typed_structs_cover_the_schema_document() {
        let run = parse("demo", DEMO).unwrap();
        let v = serde_json::to_value(&run.report).unwrap();
        let have = super::super::json_paths(&v);
        let documented = super::super::documented_paths(super::super::SCHEMA_DOC);
        let undocumented: Vec<_> = have.difference(&documented).collect();
        assert!(undocumented.is_empty(), "{undocumented:?}");
        // What the real report lacks is only what was added later.
        let missing: Vec<_> = documented
            .difference(&have)
            .filter(|p| !ADDED_WITHIN_V1.contains(&p.as_str()))
            .collect();
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn fields_added_within_v1_are_read() {
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["clock"] = serde_json::json!({"monotonic_to_unix_ns": 1_764_000_000_000_000_000i64});
        v["cgroup"] = serde_json::json!({"mode": "v1", "attribution": "filesystem"});
        v["containers"][0]["top_files"][0]["error_ns"] = 0.into();
        v["containers"][0]["top_files_other"] =
            serde_json::json!({"count": 3, "total_ns": 9, "bytes": 12});
        v["containers"][0]["pod"] = "web".into();
        v["containers"][0]["namespace"] = "shop".into();
        v["trigger_names"] = "kernel".into();
        let run = parse("r.json", &v.to_string()).unwrap();
        assert_eq!(run.report.trigger_names.as_deref(), Some("kernel"));
        assert_eq!(run.report.containers[0].top_files[0].error_ns, Some(0));
        let owner = &run.containers[0].owner;
        assert_eq!(owner.label(), "shop/web/nginx");
        assert_eq!(
            run.report.clock,
            Some(Clock {
                monotonic_to_unix_ns: 1_764_000_000_000_000_000
            })
        );
        assert_eq!(run.report.cgroup.as_ref().unwrap().mode, "v1");
        assert_eq!(serde_json::to_value(&run.report).unwrap(), v);
    }

    fn err_of(text: &str) -> String {
        match parse("r.json", text) {
            Ok(_) => panic!("accepted: {text:.80}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn wrong_schema_and_malformed_reports_are_one_line_errors() {
        let e = err_of(&DEMO.replacen("cowtrace/v1", "cowtrace/v2", 1));
        assert_eq!(
            e,
            "r.json: schema \"cowtrace/v2\" is not supported: this cowtrace reads \"cowtrace/v1\""
        );
        assert!(err_of("{}").contains("no \"schema\""));
        assert!(err_of("[1,2]").contains("not a cowtrace report"));
        assert!(err_of("{\"schema\": \"cowtrace/v1\"").contains("invalid JSON"));
        assert!(err_of(&DEMO[..DEMO.len() / 2]).contains("invalid JSON"));
        // A required field gone, a nullable one missing, a wrong type.
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["containers"][0]["copy_up"]
            .as_object_mut()
            .unwrap()
            .remove("bytes");
        assert!(err_of(&v.to_string()).contains("missing field `bytes`"));
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["containers"][0]["writes"]["latency_ns"]
            .as_object_mut()
            .unwrap()
            .remove("p50");
        assert!(err_of(&v.to_string()).contains("missing field `p50`"));
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["duration_s"] = Value::String("long".into());
        assert!(err_of(&v.to_string()).contains("malformed cowtrace/v1 report"));
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["containers"][0]["copy_up"]["hdr"] = Value::String("!!".into());
        assert!(err_of(&v.to_string()).contains("containers[0].copy_up.hdr: not base64"));
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["containers"][0]["copy_up"]["hdr"] = Value::String("AAAA".into());
        assert!(err_of(&v.to_string()).contains("not an HdrHistogram"));
        for e in [err_of("{}"), err_of("nonsense")] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn later_v1_fields_are_accepted_and_layers_kept() {
        let mut v: Value = serde_json::from_str(DEMO).unwrap();
        v["some_later_field"] = Value::Bool(true);
        v["containers"][0]["layers"] = serde_json::json!([{"index": 0}]);
        let run = parse("r.json", &v.to_string()).unwrap();
        assert_eq!(run.containers[0].raw.layers.as_ref().unwrap().len(), 1);
        assert!(run.containers[1..].iter().all(|c| c.raw.layers.is_none()));
    }
}
