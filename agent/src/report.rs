//! The latency report (`--json`, schema `cowtrace/v1`, see
//! docs/json-schema.md) and the NDJSON event stream (`--events`). Built
//! from [`crate::stats`] only: nothing here knows about the kernel.

use crate::event::{KernelEvent, Kind};
use crate::hist::LogHist;
use crate::stats::{Owner, OwnerStats, WriteTotals, SHOWN};
use serde_json::{json, Map, Value};

pub mod read;

pub const SCHEMA: &str = "cowtrace/v1";

/// Facts about the run that are not per container.
pub struct RunInfo<'a> {
    pub kernel: &'a str,
    pub started: &'a str,
    pub duration_s: f64,
    pub probes: Value,
    pub drops: crate::kernel_side::Drops,
    /// Inserts the kernel's maps refused, per [`agent_ebpf::MapFull`] kind.
    pub map_full: crate::kernel_maps::MapFullCounts,
    /// How full those maps are now.
    pub kernel_maps: Vec<crate::kernel_maps::Occupancy>,
    pub write_sample_every: u64,
    /// Unix-epoch ns minus CLOCK_MONOTONIC ns, taken once at start.
    pub monotonic_to_unix_ns: i64,
    /// How the host mounts its cgroups, and so how events are attributed.
    pub cgroup_mode: crate::cgroup::CgroupMode,
    /// The overlays events happened in ([`crate::overlay_opts::Overlays::json`]).
    pub overlays: Value,
    /// The agent's own cost ([`crate::agent_cost::json`]).
    pub agent: Value,
    /// Who named copy-up stacks' frames for their triggers.
    pub trigger_names: crate::kernel_names::NamedBy,
}

/// `{count, bytes, latency_ns{...}, buckets, hdr}` for one histogram.
pub fn latency_block(count: u64, bytes: u64, h: &LogHist) -> Value {
    let empty = h.is_empty();
    let q = |q: f64| {
        if empty {
            Value::Null
        } else {
            json!(h.value_at_quantile(q))
        }
    };
    // Log2 buckets like bpftrace's hist(): [lo, hi) ns with counts.
    let buckets: Vec<Value> = if empty {
        Vec::new()
    } else {
        let mut v = Vec::new();
        let mut lo = 1u64;
        while lo <= h.max() {
            let hi = lo.saturating_mul(2);
            let n = h.count_between(lo, hi - 1);
            if n > 0 {
                v.push(json!({"min": lo, "max": hi - 1, "count": n}));
            }
            lo = hi;
        }
        v
    };
    json!({
        "count": count,
        "bytes": bytes,
        "latency_ns": {
            "min": if empty { Value::Null } else { json!(h.min()) },
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": if empty { Value::Null } else { json!(h.max()) },
            "mean": if empty { Value::Null } else { json!(h.mean().round() as u64) },
        },
        "buckets": buckets,
        "hdr": h.hdr_base64(),
    })
}

fn ratio(a: &LogHist, b: &LogHist, q: f64) -> Value {
    if a.is_empty() || b.is_empty() {
        return Value::Null;
    }
    let d = b.value_at_quantile(q).max(1) as f64;
    json!((a.value_at_quantile(q) as f64 / d * 100.0).round() / 100.0)
}

pub fn container_json(owner: &Owner, s: &OwnerStats, w: &WriteTotals) -> Value {
    let top: Vec<Value> = s
        .files
        .top(SHOWN)
        .into_iter()
        .map(|f| json!({"path": f.path, "count": f.cost.count, "total_ns": f.cost.total_ns, "bytes": f.cost.bytes, "error_ns": f.error_ns}))
        .collect();
    let other = s.files.other(SHOWN);
    let (cu, w_lat) = (&s.copy_up, &w.latency);
    let mut copy_up = latency_block(s.copy_up_count, s.copy_up_bytes, cu);
    copy_up["operation_latency_ns"] =
        latency_block(s.copy_up_op.len(), 0, &s.copy_up_op)["latency_ns"].clone();
    copy_up["by_kind"] = crate::event::CopyUpKind::ALL
        .iter()
        .map(|k| {
            let t = &s.by_kind[*k as usize];
            (
                k.key().to_string(),
                json!({"count": t.count, "bytes": t.bytes, "total_ns": t.total_ns}),
            )
        })
        .collect::<Map<String, Value>>()
        .into();
    let mut writes = latency_block(w.count, w.bytes, w_lat);
    writes["timed"] = json!(w.timed);
    json!({
        "id": owner.id,
        "name": owner.name,
        "image": owner.image,
        "pod": owner.pod.as_ref().map(|p| &p.name),
        "namespace": owner.pod.as_ref().map(|p| &p.namespace),
        "copy_up": copy_up,
        "writes": writes,
        "whiteouts": {"count": s.whiteouts},
        "opaque_dirs": {"count": s.opaque_dirs},
        "redirects": {"count": s.redirects},
        "copy_up_vs_write": {
            "p50_ratio": ratio(cu, w_lat, 0.5),
            "p99_ratio": ratio(cu, w_lat, 0.99),
        },
        "top_files": top,
        "top_files_other": {"count": other.count, "total_ns": other.total_ns, "bytes": other.bytes},
    })
}

/// The report as one JSON value (the schema test's, and the shape
/// [`write_report`] streams).
pub fn report_json(run: &RunInfo, containers: Vec<Value>) -> Value {
    let mut head = report_head(run);
    head.insert("containers".into(), Value::Array(containers));
    Value::Object(head)
}

/// Writes the report as [`to_bytes`] of [`report_json`] would, but makes
/// each container's object only when it is written, and drops it before
/// the next: the whole tree at once (about 100 KiB of it per container,
/// for some 7 KB of text) was the agent's peak memory, growing with
/// every container a long run saw.
pub fn write_report(
    out: &mut dyn std::io::Write,
    run: &RunInfo,
    containers: impl Iterator<Item = Value>,
) -> std::io::Result<()> {
    // The keys in the order the map keeps them, `containers` among them.
    let mut head = report_head(run);
    head.insert("containers".into(), Value::Null);
    let doc = Streamed {
        head: &head,
        containers: std::cell::RefCell::new(Some(containers)),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    out.write_all(b"\n")
}

/// [`write_report`]'s document: `head`, with `containers` made as written.
struct Streamed<'a, I> {
    head: &'a Map<String, Value>,
    containers: std::cell::RefCell<Option<I>>,
}

impl<I: Iterator<Item = Value>> serde::Serialize for Streamed<'_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.head.len()))?;
        for (k, v) in self.head {
            if k == "containers" {
                m.serialize_entry(k, &Lazy(&self.containers))?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// A sequence serialized from an iterator, one item at a time.
struct Lazy<'a, I>(&'a std::cell::RefCell<Option<I>>);

impl<I: Iterator<Item = Value>> serde::Serialize for Lazy<'_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.borrow_mut().take() {
            Some(items) => s.collect_seq(items),
            None => s.collect_seq(std::iter::empty::<Value>()),
        }
    }
}

/// Everything in the report but its containers.
fn report_head(run: &RunInfo) -> Map<String, Value> {
    let mut drops: Map<String, Value> = agent_ebpf::EventKind::ALL
        .iter()
        .zip(run.drops)
        .map(|(k, n)| (k.key().to_string(), json!(n)))
        .collect();
    let map_full: Map<String, Value> = agent_ebpf::MapFull::ALL
        .iter()
        .map(|k| (k.key().to_string(), json!(run.map_full[*k as usize])))
        .collect();
    drops.insert("map_full".into(), Value::Object(map_full));
    let kernel_maps: Map<String, Value> = run
        .kernel_maps
        .iter()
        .map(|o| {
            let v = json!({"entries": o.entries, "max_entries": o.max_entries});
            (o.kind.key().to_string(), v)
        })
        .collect();
    let head = json!({
        "schema": SCHEMA,
        "kernel": run.kernel,
        "started": run.started,
        "duration_s": (run.duration_s * 1000.0).round() / 1000.0,
        "probes": run.probes,
        "trigger_names": run.trigger_names,
        "write_sample_every": run.write_sample_every,
        "clock": {"monotonic_to_unix_ns": run.monotonic_to_unix_ns},
        "cgroup": {"mode": run.cgroup_mode, "attribution": run.cgroup_mode.attribution()},
        "drops": drops,
        "kernel_maps": kernel_maps,
        "overlays": run.overlays,
        "agent": run.agent,
    });
    match head {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// One `--events` line.
///
/// `container` is who caused it; `filesystem` is the container whose root
/// filesystem it happened in (`null` for an overlay that is no container's).
///
/// `monotonic_to_unix_ns` places the kernel's CLOCK_MONOTONIC `ts_ns` in
/// wall-clock time (`time_unix_ns`).
pub fn event_json(
    owner: &Owner,
    fs: Option<&Owner>,
    trigger: Option<&str>,
    ev: &KernelEvent,
    monotonic_to_unix_ns: i64,
) -> Value {
    let mut v = json!({
        "type": ev.kind_name(),
        "ts_ns": ev.ts_ns,
        "time_unix_ns": (ev.ts_ns as i64).saturating_add(monotonic_to_unix_ns),
        "container": {"id": owner.id, "name": owner.name},
        "filesystem": fs.map(|f| json!({"id": f.id, "name": f.name})),
        "pid": ev.pid,
        "tid": ev.tid,
        "comm": ev.comm,
        "path": ev.path_display(),
        "file_type": ev.file_type.key(),
        "dev": format!("{}:{}", ev.dev >> 20, ev.dev & 0xfffff),
        "cgroup_id": ev.cgroup_id,
    });
    match &ev.kind {
        Kind::CopyUp(c) => {
            v["bytes"] = json!(c.bytes);
            v["latency_ns"] = json!(c.latency_ns);
            v["op_latency_ns"] = json!(c.op_latency_ns);
            v["parents"] = json!(c.parents);
            v["data"] = json!(c.data);
            v["copy_kind"] = json!(c.kind.key());
            v["ancestor"] = json!(c.ancestor);
            v["links"] = json!(c.links);
            v["trigger"] = json!(trigger.unwrap_or("other"));
        }
        Kind::Whiteout { cause } => {
            v["cause"] = json!(cause.key());
        }
        Kind::OpaqueDir | Kind::Redirect => {}
    }
    v
}

/// The report as written to `--json` (see [`crate::output::JsonTarget`]
/// for how it is written).
pub fn to_bytes(value: &Value) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(value).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Every field path of a JSON value, arrays written `[]`: the shape that
/// docs/json-schema.md documents.
pub fn json_paths(v: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(p.clone());
                    walk(x, &p, out);
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, "", &mut out);
    out
}

/// The field paths the schema document lists (`- \`path\` ...` lines).
pub fn documented_paths(doc: &str) -> std::collections::BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The schema document, for tests of real reports.
pub const SCHEMA_DOC: &str = include_str!("../../docs/json-schema.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_json_has_the_documented_shape() {
        let mut s = OwnerStats {
            copy_up_count: 2,
            copy_up_bytes: 10,
            ..Default::default()
        };
        s.copy_up.record(100_000);
        s.copy_up.record(300_000);
        s.copy_up_op.record(300_000);
        let mut w = WriteTotals {
            count: 3,
            ..Default::default()
        };
        w.latency.record(1_000);
        let v = container_json(&Owner::host(), &s, &w);
        assert_eq!(v["id"], "host");
        assert_eq!(v["copy_up"]["count"], 2);
        for k in ["min", "p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v["copy_up"]["latency_ns"][k].is_u64(), "{k}");
        }
        assert!(v["copy_up"]["hdr"].as_str().unwrap().len() > 8);
        assert!(v["copy_up_vs_write"]["p50_ratio"].as_f64().unwrap() > 50.0);
        assert_eq!(v["writes"]["count"], 3);
        assert_eq!(v["whiteouts"]["count"], 0);
        let empty = latency_block(0, 0, &LogHist::new());
        assert!(empty["latency_ns"]["p50"].is_null());
    }

    /// One copy-up booked to a layer, for the schema test.
    fn layer_sample() -> crate::layers::totals::PerLayer {
        use crate::layers::{LayerAnswer, LayerRef};
        let ev = KernelEvent::plain(
            Kind::CopyUp(crate::event::CopyUp {
                latency_ns: 5_000,
                op_latency_ns: Some(5_000),
                parents: 0,
                bytes: 3,
                data: true,
                kind: crate::event::CopyUpKind::Full,
                ancestor: false,
                removed: false,
                links: 1,
                stack: Vec::new(),
            }),
            "etc/x",
        );
        let layer = LayerAnswer::Layer(std::sync::Arc::new(LayerRef {
            index: 0,
            diff_id: Some("sha256:00".into()),
            created_by: Some("ADD rootfs.tar /".into()),
        }));
        let mut p = crate::layers::totals::PerLayer::default();
        // Enough chown copy-ups for the ownership advice.
        for _ in 0..crate::layers::advice::CHOWN_MIN_FILES {
            p.record("host", &layer, &ev, true);
        }
        p
    }

    /// A run's facts, every field filled.
    fn sample_run() -> RunInfo<'static> {
        RunInfo {
            kernel: "6.1.0",
            started: "2026-11-27T00:00:00Z",
            duration_s: 1.0,
            probes: json!([{"role": "write", "function": "vfs_write", "method": "fentry+fexit"}]),
            drops: [0; agent_ebpf::EVENT_KINDS as usize],
            map_full: [0; agent_ebpf::MAP_FULL_KINDS as usize],
            kernel_maps: agent_ebpf::MapFull::ALL
                .iter()
                .map(|&kind| crate::kernel_maps::Occupancy {
                    kind,
                    entries: 0,
                    max_entries: 1,
                })
                .collect(),
            write_sample_every: 1,
            monotonic_to_unix_ns: 1_700_000_000_000_000_000,
            cgroup_mode: crate::cgroup::CgroupMode::V1,
            overlays: json!([{
                "dev": "0:52",
                "mount_point": "/var/lib/docker/overlay2/x/merged",
                "filesystem": {"id": "c0ffee", "name": "web"},
                "overlay_options": crate::overlay_opts::OverlayOptions::default().json(),
            }]),
            agent: crate::agent_cost::json(
                &crate::agent_cost::measure(),
                &Default::default(),
                (0, 0),
            ),
            trigger_names: crate::kernel_names::NamedBy::Kernel,
        }
    }

    /// A container with every field filled, as the report writes it.
    fn sample_container() -> Value {
        let mut s = OwnerStats {
            copy_up_count: 1,
            ..Default::default()
        };
        s.copy_up.record(5_000);
        s.copy_up_op.record(6_000);
        s.files.record("etc/x", 5_000, 3);
        let mut w = WriteTotals {
            count: 1,
            ..Default::default()
        };
        w.latency.record(100);
        let mut c = container_json(&Owner::host(), &s, &w);
        layer_sample().add_to_container_json(
            "host",
            &crate::layers::worker::UnchangedReport::new(),
            &mut c,
        );
        c
    }

    #[test]
    fn the_streamed_report_is_the_report() {
        let run = sample_run();
        let containers: Vec<Value> = (0..3)
            .map(|i| {
                let mut c = sample_container();
                c["name"] = json!(format!("c{i}"));
                c
            })
            .collect();
        let mut streamed = Vec::new();
        write_report(&mut streamed, &run, containers.clone().into_iter()).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(to_bytes(&report_json(&run, containers))).unwrap()
        );
    }

    #[test]
    fn schema_document_matches_the_report() {
        let run = sample_run();
        let c = sample_container();
        let v = report_json(&run, vec![c]);
        let have = json_paths(&v);
        let documented = documented_paths(SCHEMA_DOC);
        let undocumented: Vec<_> = have.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&have).collect();
        assert!(
            undocumented.is_empty(),
            "fields not in docs/json-schema.md: {undocumented:?}"
        );
        assert!(
            missing.is_empty(),
            "documented but not written: {missing:?}"
        );
    }
}
