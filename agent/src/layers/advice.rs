//! Rules that turn what was measured into what to change in the image or
//! the way it is run. Each rule has a documented threshold (the constants
//! below, also in docs/json-schema.md) and says where (path or layer) and
//! the numbers behind it.

use super::totals::{cut, instruction, PerLayer};
use super::worker::UnchangedReport;
use super::LayerRef;
use crate::event::escape_str;
use crate::live::{fmt_bytes, fmt_ns};
use serde_json::{json, Value};
use std::sync::Arc;

/// `chown`/`chmod` copy-ups (trigger `setattr`) in one container from
/// which the ownership rule speaks.
pub const CHOWN_MIN_FILES: u64 = 10;
/// A copy-up at least this large whose file changed by at most
/// 1/[`SMALL_CHANGE_RATIO`] of it is a large copy for a small change.
pub const LARGE_COPY_BYTES: u64 = 1 << 20;
pub const SMALL_CHANGE_RATIO: u64 = 100;
/// Data copied by chown/chmod copy-ups (full copies, trigger `setattr`)
/// in one container from which the metacopy rule speaks, with at least
/// [`CHOWN_MIN_FILES`] such files: below a mebibyte the copy costs about
/// what the metadata-only copy-up of the same files would.
pub const METACOPY_MIN_BYTES: u64 = 1 << 20;
/// The same image file copied up by at least this many containers of
/// one image.
pub const SHARED_MIN_CONTAINERS: usize = 2;
/// At most this many pieces of advice per rule and container.
pub const MAX_PER_RULE: usize = 5;

/// Which rule spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A log-like file from the image copied up and then appended to.
    LogInImage,
    /// An entrypoint-style chown/chmod over an image tree.
    OwnershipAtBuild,
    /// A large file copied up for a small change.
    LargeCopySmallChange,
    /// The same image file copied up by several containers of one image.
    BakeIntoImage,
    /// chown/chmod copied whole files' data where `metacopy=on` would
    /// have copied their metadata only.
    MetacopyForChown,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::LogInImage => "log_in_image",
            Rule::OwnershipAtBuild => "ownership_at_build_time",
            Rule::LargeCopySmallChange => "large_copy_small_change",
            Rule::BakeIntoImage => "bake_into_image",
            Rule::MetacopyForChown => "metacopy_for_chown",
        }
    }
}

/// One piece of advice.
#[derive(Clone, Debug)]
pub struct Advice {
    pub rule: Rule,
    /// The path it is about (escaped), if one.
    pub path: Option<String>,
    /// The image layer it is about, if known.
    pub layer: Option<Arc<LayerRef>>,
    /// Objects (copy-ups, or containers for [`Rule::BakeIntoImage`]).
    pub count: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Those copy-ups' latencies summed, where the rule knows them.
    pub total_ns: Option<u64>,
    /// Of `count`, copy-ups that changed nothing.
    pub unchanged: u64,
    /// What to do, in words.
    pub what: String,
}

impl Advice {
    pub fn json(&self) -> Value {
        json!({
            "rule": self.rule.name(),
            "what": self.what,
            "path": self.path,
            "layer": self.layer.as_ref().map(|l| l.index),
            "count": self.count,
            "bytes": self.bytes,
            "total_ns": self.total_ns,
            "unchanged": self.unchanged,
        })
    }
}

/// A path that looks like a log: a `.log` name (or a rotated one such as
/// `x.log.1`), or a file under a `log` or `logs` directory.
pub fn log_like(path: &[u8]) -> bool {
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let Some((name, dirs)) = parts.split_last() else {
        return false;
    };
    let name = String::from_utf8_lossy(name);
    name.ends_with(".log")
        || name.contains(".log.")
        || dirs.iter().any(|d| *d == b"log" || *d == b"logs")
}

fn layer_words(l: &LayerRef) -> String {
    format!("layer {} ({})", l.index, cut(&instruction(l), 60))
}

/// The ownership rule, from the per-layer `setattr` copy-ups of one
/// container.
fn ownership(per_layer: &PerLayer, id: &str, unchanged: &UnchangedReport) -> Vec<Advice> {
    let Some(c) = per_layer.containers.get(id) else {
        return Vec::new();
    };
    let total: u64 = c.layers.values().map(|(_, t)| t.setattr_count).sum();
    if total < CHOWN_MIN_FILES {
        return Vec::new();
    }
    let u = unchanged.get(id);
    let mut out = Vec::new();
    for (l, t) in c.layers.values().rev() {
        if t.setattr_count == 0 {
            continue;
        }
        let same = u
            .and_then(|u| u.by_layer.get(&l.index))
            .map_or(0, |s| s.count);
        let none_changed = if same > 0 {
            format!(", {same} of them changed nothing")
        } else {
            String::new()
        };
        out.push(Advice {
            rule: Rule::OwnershipAtBuild,
            path: None,
            layer: Some(l.clone()),
            count: t.setattr_count,
            bytes: t.setattr_bytes,
            total_ns: Some(t.setattr_ns),
            unchanged: same,
            what: format!(
                "chown/chmod copied up {} objects ({}) of {}{none_changed}: set ownership and modes at build time (COPY --chown, or RUN chown in the layer that creates the files); every start of a container pays this",
                t.setattr_count,
                fmt_bytes(t.setattr_bytes),
                layer_words(l)
            ),
        });
        if out.len() >= MAX_PER_RULE {
            break;
        }
    }
    out
}

/// The metacopy rule: chown/chmod copy-ups that copied whole files
/// (trigger `setattr`, [`crate::event::CopyUpKind::Full`] with data) of at
/// least [`CHOWN_MIN_FILES`] files and [`METACOPY_MIN_BYTES`] in one
/// container. On an overlay mounted with `metacopy=on` the same chown
/// copies metadata only (0 bytes, `metadata_only`), so the rule cannot
/// speak there: it speaks when the measurement shows the data copied.
fn metacopy(per_layer: &PerLayer, id: &str) -> Option<Advice> {
    let c = per_layer.containers.get(id)?;
    let (mut count, mut bytes, mut ns) = (0, 0, 0);
    for (_, t) in c.layers.values() {
        count += t.setattr_data_count;
        bytes += t.setattr_data_bytes;
        ns += t.setattr_data_ns;
    }
    if count < CHOWN_MIN_FILES || bytes < METACOPY_MIN_BYTES {
        return None;
    }
    Some(Advice {
        rule: Rule::MetacopyForChown,
        path: None,
        layer: None,
        count,
        bytes,
        total_ns: Some(ns),
        unchanged: 0,
        what: format!(
            "this chown/chmod (chown -R) cost {} and copied {} of data for {count} files whose metadata only it changed; on an overlay mounted with metacopy=on it copies metadata only (podman, CRI-O: mountopt = \"metacopy=on\" in storage.conf; Docker's overlay2 has no option for it), the data following only on a file's first open for write",
            fmt_ns(ns),
            fmt_bytes(bytes),
        ),
    })
}

/// Every piece of advice for one container: the ownership and metacopy
/// rules and those the worker found when it checked the copy-ups.
pub fn for_container(id: &str, per_layer: &PerLayer, unchanged: &UnchangedReport) -> Vec<Advice> {
    let mut out = ownership(per_layer, id, unchanged);
    out.extend(metacopy(per_layer, id));
    if let Some(u) = unchanged.get(id) {
        out.extend(u.advice.iter().cloned());
    }
    out
}

/// The advice lines of the live summary.
pub fn text(name: &str, advice: &[Advice]) -> String {
    let mut s = String::new();
    if advice.is_empty() {
        return s;
    }
    s.push_str(&format!("advice for {}:\n", escape_str(name)));
    for a in advice {
        s.push_str(&format!("  - [{}] {}\n", a.rule.name(), a.what));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::{CopyUp, CopyUpKind, KernelEvent, Kind};
    use crate::layers::{LayerAnswer, LayerRef};

    fn chown_copy_up(kind: CopyUpKind, bytes: u64, ns: u64) -> KernelEvent {
        KernelEvent::plain(
            Kind::CopyUp(CopyUp {
                latency_ns: ns,
                op_latency_ns: Some(ns),
                parents: 0,
                bytes,
                data: bytes > 0,
                kind,
                ancestor: false,
                removed: false,
                links: 1,
                stack: Vec::new(),
            }),
            "srv/f",
        )
    }

    fn layer(index: u32) -> LayerAnswer {
        LayerAnswer::Layer(Arc::new(LayerRef {
            index,
            diff_id: None,
            created_by: Some("/bin/sh -c mkdir /srv".into()),
        }))
    }

    fn rules(p: &PerLayer) -> Vec<Advice> {
        for_container("c", p, &UnchangedReport::new())
    }

    /// `files` chown copy-ups of `each` bytes in two layers, as `kind`.
    fn chowned(kind: CopyUpKind, files: u64, each: u64) -> PerLayer {
        let mut p = PerLayer::default();
        for i in 0..files {
            let ev = chown_copy_up(kind, each, 1_000_000);
            p.record("c", &layer((i % 2) as u32), &ev, true);
        }
        p
    }

    #[test]
    fn metacopy_rule_speaks_for_data_copied_by_chown_above_both_thresholds() {
        // 16 files of 64 KiB: 1 MiB, 16 ms of copy-ups, over two layers.
        let p = chowned(CopyUpKind::Full, 16, 64 << 10);
        let a = rules(&p);
        let m: Vec<_> = a
            .iter()
            .filter(|a| a.rule == Rule::MetacopyForChown)
            .collect();
        assert_eq!(m.len(), 1, "{a:#?}");
        assert_eq!(m[0].count, 16);
        assert_eq!(m[0].bytes, METACOPY_MIN_BYTES);
        assert_eq!(m[0].total_ns, Some(16_000_000));
        assert!(m[0].layer.is_none());
        assert!(
            m[0].what.contains("cost 16.0ms")
                && m[0].what.contains("1.0MiB")
                && m[0].what.contains("metacopy=on"),
            "{}",
            m[0].what
        );
        let j = m[0].json();
        assert_eq!(j["rule"], "metacopy_for_chown");
        assert_eq!(j["total_ns"], 16_000_000);
        // The ownership rule speaks too, per layer, with the same numbers.
        let own: u64 = a
            .iter()
            .filter(|a| a.rule == Rule::OwnershipAtBuild)
            .map(|a| a.bytes)
            .sum();
        assert_eq!(own, METACOPY_MIN_BYTES);
    }

    #[test]
    fn metacopy_rule_is_silent_below_a_threshold_or_where_metacopy_is_on() {
        let silent = |p: &PerLayer| !rules(p).iter().any(|a| a.rule == Rule::MetacopyForChown);
        // One byte short of 1 MiB.
        let mut p = chowned(CopyUpKind::Full, 15, 64 << 10);
        p.record(
            "c",
            &layer(0),
            &chown_copy_up(CopyUpKind::Full, (64 << 10) - 1, 1),
            true,
        );
        assert!(silent(&p));
        // Enough bytes, too few files.
        assert!(silent(&chowned(
            CopyUpKind::Full,
            CHOWN_MIN_FILES - 1,
            1 << 20
        )));
        // metacopy=on: the same chown copies metadata only.
        let meta = chowned(CopyUpKind::MetadataOnly, 16, 0);
        assert!(silent(&meta));
        assert!(rules(&meta)
            .iter()
            .any(|a| a.rule == Rule::OwnershipAtBuild));
        // Data copied for a write (not a chown) is not this rule's.
        let mut w = PerLayer::default();
        for _ in 0..16 {
            w.record(
                "c",
                &layer(0),
                &chown_copy_up(CopyUpKind::Full, 64 << 10, 1),
                false,
            );
        }
        assert!(silent(&w));
    }

    #[test]
    fn log_like_paths() {
        assert!(log_like(b"var/log/nginx/archive.log"));
        assert!(log_like(b"app/logs/out"));
        assert!(log_like(b"srv/x.log.1"));
        assert!(!log_like(b"etc/nginx/nginx.conf"));
        assert!(!log_like(b"usr/share/catalog"));
    }
}
