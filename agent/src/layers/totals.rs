//! Copy-on-write cost per image layer, per container: exact counts,
//! bytes and time, a copy-up latency histogram per layer, and the events
//! whose layer could not be known. Booked to the container whose root
//! filesystem the event happened in (its image's layers). Memory grows
//! with containers and their layers (an image has at most 127), never
//! with paths.

use super::worker::{Sums, UnchangedReport, UnchangedTotals};
use super::{LayerAnswer, LayerRef, Unknown};
use crate::event::{escape_str, CopyUpKind, KernelEvent, Kind};
use crate::hist::LogHist;
use crate::live::{fmt_bytes, fmt_ns};
use crate::report::latency_block;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

/// One layer's numbers in one container.
#[derive(Clone, Debug, Default)]
pub struct LayerTotals {
    pub copy_up_count: u64,
    pub copy_up_bytes: u64,
    pub copy_up_ns: u64,
    pub copy_up: LogHist,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Copy-ups a chown/chmod caused (trigger `setattr`), for the advice.
    pub setattr_count: u64,
    pub setattr_bytes: u64,
    pub setattr_ns: u64,
    /// Of those, whole files copied with their data (not metadata only,
    /// `metacopy=on`), for the metacopy advice.
    pub setattr_data_count: u64,
    pub setattr_data_bytes: u64,
    pub setattr_data_ns: u64,
}

/// One container's layers.
#[derive(Clone, Debug, Default)]
pub struct ContainerLayers {
    /// By layer index.
    pub layers: BTreeMap<u32, (Arc<LayerRef>, LayerTotals)>,
    /// Events in this container's filesystem whose layer is not known.
    pub unknown: u64,
    /// The same by reason, indexed like [`Unknown::ALL`].
    pub unknown_why: [u64; 4],
}

/// Every container's layers, by container id.
#[derive(Default)]
pub struct PerLayer {
    pub containers: HashMap<String, ContainerLayers>,
}

impl PerLayer {
    /// Books one event of the filesystem of container `fs_id`; `setattr`:
    /// a copy-up caused by a chown or chmod.
    pub fn record(&mut self, fs_id: &str, answer: &LayerAnswer, ev: &KernelEvent, setattr: bool) {
        // A redirect copies nothing (its directory's own copy-up, if any,
        // is booked as one): no layer cost, no layer entry.
        if ev.kind == Kind::Redirect {
            return;
        }
        let c = match self.containers.get_mut(fs_id) {
            Some(c) => c,
            None => self.containers.entry(fs_id.to_string()).or_default(),
        };
        let layer = match answer {
            LayerAnswer::Layer(l) => l,
            LayerAnswer::NoLayer => return,
            LayerAnswer::Unknown(why) => {
                c.unknown += 1;
                c.unknown_why[*why as usize] += 1;
                return;
            }
        };
        let (_, t) = c
            .layers
            .entry(layer.index)
            .or_insert_with(|| (layer.clone(), LayerTotals::default()));
        match &ev.kind {
            Kind::CopyUp(cu) => {
                t.copy_up_count += 1;
                t.copy_up_bytes += cu.bytes;
                t.copy_up_ns += cu.latency_ns;
                t.copy_up.record(cu.latency_ns.max(1));
                if setattr && !cu.ancestor {
                    t.setattr_count += 1;
                    t.setattr_bytes += cu.bytes;
                    t.setattr_ns += cu.latency_ns;
                    if cu.kind == CopyUpKind::Full && cu.bytes > 0 {
                        t.setattr_data_count += 1;
                        t.setattr_data_bytes += cu.bytes;
                        t.setattr_data_ns += cu.latency_ns;
                    }
                }
            }
            Kind::Whiteout { .. } => t.whiteouts += 1,
            Kind::OpaqueDir => t.opaque_dirs += 1,
            Kind::Redirect => {}
        }
    }

    /// The container's `layers` array (base layer first) and
    /// `layers_unknown` count.
    pub fn json(&self, container_id: &str, unchanged: &UnchangedReport) -> (Value, Value) {
        let Some(c) = self.containers.get(container_id) else {
            return (json!([]), json!(0));
        };
        let none = UnchangedTotals::default();
        let u = unchanged.get(container_id).unwrap_or(&none);
        let layers = c
            .layers
            .values()
            .map(|(l, t)| {
                let block = latency_block(t.copy_up_count, t.copy_up_bytes, &t.copy_up);
                let mut v = l.json();
                v["copy_up"] = json!({
                    "count": t.copy_up_count,
                    "bytes": t.copy_up_bytes,
                    "total_ns": t.copy_up_ns,
                    "latency_ns": block["latency_ns"],
                });
                v["whiteouts"] = json!({"count": t.whiteouts});
                v["opaque_dirs"] = json!({"count": t.opaque_dirs});
                v["copy_up_unchanged"] = sums_json(u.by_layer.get(&l.index));
                v
            })
            .collect();
        (Value::Array(layers), json!(c.unknown))
    }

    /// Adds `layers` and `layers_unknown` to a container's report entry.
    pub fn add_to_container_json(
        &self,
        container_id: &str,
        unchanged: &UnchangedReport,
        v: &mut Value,
    ) {
        let (layers, unknown) = self.json(container_id, unchanged);
        v["layers"] = layers;
        v["layers_unknown"] = unknown;
        let why = self
            .containers
            .get(container_id)
            .map(|c| c.unknown_why)
            .unwrap_or_default();
        v["layers_unknown_why"] = Unknown::ALL
            .iter()
            .zip(why)
            .map(|(u, n)| (u.as_str().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let none = UnchangedTotals::default();
        let u = unchanged.get(container_id).unwrap_or(&none);
        let mut block = sums_json(Some(&u.sums));
        block["checked"] = json!(u.checked);
        block["not_checked"] = json!(u.not_checked);
        block["paths"] = json!(u.paths);
        v["copy_up_unchanged"] = block;
        let advice = super::advice::for_container(container_id, self, unchanged);
        v["advice"] = Value::Array(advice.iter().map(|a| a.json()).collect());
    }

    /// The live summary's per-layer table of one container (empty when it
    /// had no layer activity).
    pub fn table(&self, container_id: &str, name: &str, unchanged: &UnchangedReport) -> String {
        let none = UnchangedTotals::default();
        let u = unchanged.get(container_id).unwrap_or(&none);
        let Some(c) = self.containers.get(container_id) else {
            return String::new();
        };
        if c.layers.is_empty() && c.unknown == 0 && u.sums.count == 0 {
            return String::new();
        }
        let mut s = format!(
            "layers of {} (copy-up cost by image layer):\n",
            escape_str(name)
        );
        let _ = writeln!(
            s,
            "  {:>5} {:>10} {:>8} {:>10} {:>9} {:>9}  instruction",
            "layer", "time", "copy-ups", "bytes", "whiteouts", "unchanged"
        );
        for (l, t) in c.layers.values().rev() {
            let _ = writeln!(
                s,
                "  {:>5} {:>10} {:>8} {:>10} {:>9} {:>9}  {}",
                l.index,
                fmt_ns(t.copy_up_ns),
                t.copy_up_count,
                fmt_bytes(t.copy_up_bytes),
                t.whiteouts,
                u.by_layer.get(&l.index).map_or(0, |s| s.count),
                cut(&instruction(l), 60),
            );
        }
        if c.unknown > 0 {
            let _ = writeln!(s, "  {} events of unknown layer", c.unknown);
        }
        if u.sums.count > 0 {
            let _ = writeln!(
                s,
                "  {} copy-ups changed nothing ({}, {}), e.g. {}",
                u.sums.count,
                fmt_bytes(u.sums.bytes),
                fmt_ns(u.sums.total_ns),
                u.paths
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s
    }
}

fn sums_json(s: Option<&Sums>) -> Value {
    let s = s.copied().unwrap_or_default();
    json!({"count": s.count, "bytes": s.bytes, "total_ns": s.total_ns})
}

/// A layer's instruction for display: escaped, Docker's `/bin/sh -c #(nop) `
/// prefix dropped, spaces squeezed.
pub fn instruction(l: &LayerRef) -> String {
    // An imported base layer's history entry has an empty instruction.
    let Some(c) = l.created_by.as_ref().filter(|c| !c.trim().is_empty()) else {
        return "(instruction unknown)".into();
    };
    let c = c.trim();
    let c = c
        .strip_prefix("/bin/sh -c #(nop)")
        .map(|r| r.trim_start().to_string())
        .or_else(|| {
            c.strip_prefix("/bin/sh -c ")
                .map(|r| format!("RUN {}", r.trim_start()))
        })
        .unwrap_or_else(|| c.to_string());
    let squeezed: Vec<&str> = c.split_whitespace().collect();
    escape_str(&squeezed.join(" "))
}

/// `s` cut to `n` characters, with `…` when cut.
pub fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CopyUp;

    fn ev(kind: Kind) -> KernelEvent {
        KernelEvent::plain(kind, "x")
    }

    fn up(ns: u64, bytes: u64) -> KernelEvent {
        ev(Kind::CopyUp(CopyUp {
            latency_ns: ns,
            op_latency_ns: Some(ns),
            parents: 0,
            bytes,
            data: true,
            kind: crate::event::CopyUpKind::Full,
            ancestor: false,
            removed: false,
            links: 1,
            stack: Vec::new(),
        }))
    }

    #[test]
    fn totals_per_layer_are_exact() {
        let l1 = LayerAnswer::Layer(Arc::new(LayerRef {
            index: 1,
            diff_id: Some("sha256:b".into()),
            created_by: Some("/bin/sh -c echo hi > /x".into()),
        }));
        let l0 = LayerAnswer::Layer(Arc::new(LayerRef {
            index: 0,
            diff_id: Some("sha256:a".into()),
            created_by: None,
        }));
        let mut p = PerLayer::default();
        p.record("c", &l1, &up(100, 10), false);
        p.record("c", &l1, &up(300, 20), true);
        p.record(
            "c",
            &l0,
            &ev(Kind::Whiteout {
                cause: crate::event::WhiteoutCause::Unlink,
            }),
            false,
        );
        p.record("c", &LayerAnswer::NoLayer, &up(5, 5), false);
        p.record(
            "c",
            &LayerAnswer::Unknown(Unknown::TooSlow),
            &up(5, 5),
            false,
        );
        let (layers, unknown) = p.json("c", &UnchangedReport::new());
        assert_eq!(unknown, 1);
        let mut v = json!({});
        p.add_to_container_json("c", &UnchangedReport::new(), &mut v);
        assert_eq!(v["layers_unknown"], 1);
        assert_eq!(
            v["layers_unknown_why"],
            json!({"path_cut": 0, "no_layer_data": 0, "lookup_failed": 0, "too_slow": 1})
        );
        assert_eq!(layers[0]["index"], 0);
        assert_eq!(layers[0]["whiteouts"]["count"], 1);
        assert_eq!(layers[0]["copy_up"]["count"], 0);
        assert!(layers[0]["created_by"].is_null());
        assert_eq!(layers[1]["copy_up"]["count"], 2);
        assert_eq!(layers[1]["copy_up"]["bytes"], 30);
        assert_eq!(layers[1]["copy_up"]["total_ns"], 400);
        // At the histogram's resolution (1/128).
        let max = layers[1]["copy_up"]["latency_ns"]["max"].as_u64().unwrap();
        assert!((300..=303).contains(&max), "{max}");
        let t = p.table("c", "web", &UnchangedReport::new());
        assert!(t.contains("RUN echo hi > /x"), "{t}");
        assert!(t.contains("1 events of unknown layer"), "{t}");
        assert_eq!(p.json("other", &UnchangedReport::new()).0, json!([]));
    }

    #[test]
    fn instructions_are_escaped_and_cut() {
        let l = LayerRef {
            index: 0,
            diff_id: None,
            created_by: Some("/bin/sh -c #(nop) COPY file:abc in /x\u{202e} ".into()),
        };
        assert_eq!(instruction(&l), "COPY file:abc in /x\\xe2\\x80\\xae");
        let imported = LayerRef {
            created_by: Some(" ".into()),
            ..l.clone()
        };
        assert_eq!(instruction(&imported), "(instruction unknown)");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
