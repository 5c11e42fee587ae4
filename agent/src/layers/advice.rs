//! Rules that turn what was measured into what to change in the image or
//! the way it is run. Each rule has a documented threshold (the constants
//! below, also in docs/json-schema.md) and says where (path or layer) and
//! the numbers behind it.

use super::totals::{cut, instruction, PerLayer};
use super::worker::UnchangedReport;
use super::LayerRef;
use crate::event::escape_str;
use crate::live::fmt_bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// `chown`/`chmod` copy-ups (trigger `setattr`) in one container from
/// which the ownership rule speaks.
pub const CHOWN_MIN_FILES: u64 = 10;
/// A copy-up at least this large whose file changed by at most
/// 1/[`SMALL_CHANGE_RATIO`] of it is a large copy for a small change.
pub const LARGE_COPY_BYTES: u64 = 1 << 20;
pub const SMALL_CHANGE_RATIO: u64 = 100;
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
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::LogInImage => "log_in_image",
            Rule::OwnershipAtBuild => "ownership_at_build_time",
            Rule::LargeCopySmallChange => "large_copy_small_change",
            Rule::BakeIntoImage => "bake_into_image",
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

/// Every piece of advice for one container: the ownership rule and those
/// the worker found when it checked the copy-ups.
pub fn for_container(id: &str, per_layer: &PerLayer, unchanged: &UnchangedReport) -> Vec<Advice> {
    let mut out = ownership(per_layer, id, unchanged);
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

    #[test]
    fn log_like_paths() {
        assert!(log_like(b"var/log/nginx/archive.log"));
        assert!(log_like(b"app/logs/out"));
        assert!(log_like(b"srv/x.log.1"));
        assert!(!log_like(b"etc/nginx/nginx.conf"));
        assert!(!log_like(b"usr/share/catalog"));
    }
}
