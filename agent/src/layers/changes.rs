//! A `docker diff`-style list of what a container changed, from its upper
//! directory: `A` added, `C` changed (it is in an image layer below), `D`
//! deleted (a whiteout), each changed or deleted entry with the image
//! layer it came from, and changed entries that are still what they were
//! in that layer marked (copy-ups that changed nothing).
//!
//! Every entry of the upper directory is listed, as Docker 20.10's
//! `docker diff` lists them (the guest test compares the two); unlike it,
//! an opaque directory (a directory removed and made again) is listed as
//! changed, not deleted: its mark is a `trusted.*` attribute, which the
//! agent cannot read after giving up CAP_SYS_ADMIN.
//!
//! The upper directory is the container's, so it is walked without
//! following a symlink, with bounded depth and entries.

use super::image::ImageLayers;
use super::lookup::{topmost_holding, Found};
use super::unchanged::{compare, Verdict};
use super::LayerRef;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// At most this many entries are listed (the rest are counted).
pub const MAX_ENTRIES: usize = 10_000;
/// Directories deeper than this are not walked.
pub const MAX_DEPTH: usize = 64;

/// What happened to an entry, as `docker diff` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One line of the list.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    /// Raw path bytes relative to the root.
    pub path: Vec<u8>,
    /// The image layer the entry came from (changed and deleted entries).
    pub layer: Option<Arc<LayerRef>>,
    /// A changed entry that is still what it was in its layer.
    pub unchanged: bool,
}

/// The list, in path order, and how many entries were left out.
#[derive(Clone, Debug, Default)]
pub struct ChangeList {
    pub changes: Vec<Change>,
    pub left_out: u64,
}

fn open_dir(dir: Option<&OwnedFd>, name: &Path) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match dir {
        Some(d) => rustix::fs::openat(d, name, flags, Mode::empty()),
        None => rustix::fs::openat(rustix::fs::CWD, name, flags, Mode::empty()),
    }
}

/// Walks `layers.upper`; `None` if the runtime named no upper directory
/// or it cannot be opened.
pub fn list(layers: &ImageLayers) -> Option<ChangeList> {
    let upper = layers.upper.as_ref()?;
    let root = open_dir(None, upper).ok()?;
    let mut out = ChangeList::default();
    walk(layers, upper, &root, &mut Vec::new(), 0, &mut out);
    Some(out)
}

/// Lists what is under `dir` (`prefix`).
fn walk(
    layers: &ImageLayers,
    upper: &Path,
    dir: &OwnedFd,
    prefix: &mut Vec<u8>,
    depth: usize,
    out: &mut ChangeList,
) {
    let Ok(entries) = Dir::read_from(dir) else {
        return;
    };
    let mut names: Vec<Vec<u8>> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    let dirs: Vec<&Path> = layers.lowers.iter().map(|l| l.dir.as_path()).collect();
    for name in names {
        if out.changes.len() >= MAX_ENTRIES {
            out.left_out += 1;
            continue;
        }
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        let os = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name);
        let Ok(st) = rustix::fs::statat(dir, os, AtFlags::SYMLINK_NOFOLLOW) else {
            prefix.truncate(len);
            continue;
        };
        let t = FileType::from_raw_mode(st.st_mode);
        let below = match topmost_holding(&dirs, prefix) {
            Ok(Found::In(i)) => Some(i),
            _ => None,
        };
        let layer = below.and_then(|i| layers.lowers[i].layer.clone());
        if t == FileType::CharacterDevice && st.st_rdev == 0 {
            out.changes.push(Change {
                kind: ChangeKind::Deleted,
                path: prefix.clone(),
                layer,
                unchanged: false,
            });
        } else {
            let kind = if below.is_some() {
                ChangeKind::Changed
            } else {
                ChangeKind::Added
            };
            let unchanged = match below {
                // A directory is listed for what is in it: only other
                // objects are judged on their own.
                Some(i) if t != FileType::Directory => matches!(
                    compare(&layers.lowers[i].dir, upper, prefix),
                    Ok(Verdict::Unchanged)
                ),
                _ => false,
            };
            out.changes.push(Change {
                kind,
                path: prefix.clone(),
                layer,
                unchanged,
            });
            if t == FileType::Directory && depth < MAX_DEPTH {
                if let Ok(sub) = open_dir(Some(dir), Path::new(os)) {
                    walk(layers, upper, &sub, prefix, depth + 1, out);
                }
            }
        }
        prefix.truncate(len);
    }
}

/// The list as text: `C /path` lines like `docker diff`, each changed or
/// deleted entry followed by its layer and instruction.
pub fn render(name: &str, list: &ChangeList) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "changes in {} (docker diff style; layer: the image layer the entry came from):\n",
        crate::event::escape_str(name)
    );
    for c in &list.changes {
        let path = format!("/{}", crate::event::escape_bytes(&c.path));
        let _ = write!(s, "{} {path}", c.kind.letter());
        if let Some(l) = &c.layer {
            let _ = write!(
                s,
                "  [layer {}: {}]",
                l.index,
                super::totals::cut(&super::totals::instruction(l), 50)
            );
        }
        if c.unchanged {
            s.push_str("  (copied up, changed nothing)");
        }
        s.push('\n');
    }
    if list.left_out > 0 {
        let _ = writeln!(s, "... {} more entries not listed", list.left_out);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::image::Lower;
    use std::path::PathBuf;

    #[test]
    fn added_changed_and_deleted_like_docker_diff() {
        let root = std::env::temp_dir().join(format!("cowtrace-changes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (l, u) = (root.join("lower"), root.join("upper"));
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::create_dir_all(u.join("etc")).unwrap();
        std::fs::write(l.join("etc/a"), b"1").unwrap();
        std::fs::write(u.join("etc/a"), b"2").unwrap();
        std::fs::write(u.join("etc/new"), b"n").unwrap();
        // A symlink in the upper layer is listed, never followed.
        std::os::unix::fs::symlink("/", u.join("etc/link")).unwrap();
        let layer = Arc::new(LayerRef {
            index: 0,
            diff_id: Some("sha256:x".into()),
            created_by: Some("ADD x".into()),
        });
        let layers = ImageLayers {
            lowers: vec![Lower {
                dir: l.clone(),
                layer: Some(layer),
            }],
            upper: Some(u.clone()),
            image_id: None,
        };
        let got = list(&layers).unwrap();
        let lines: Vec<(char, String)> = got
            .changes
            .iter()
            .map(|c| {
                (
                    c.kind.letter(),
                    String::from_utf8_lossy(&c.path).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                ('C', "etc".to_string()),
                ('C', "etc/a".to_string()),
                ('A', "etc/link".to_string()),
                ('A', "etc/new".to_string()),
            ]
        );
        assert_eq!(got.changes[1].layer.as_ref().unwrap().index, 0);
        let text = render("web", &got);
        assert!(text.contains("C /etc/a  [layer 0: ADD x]"), "{text}");
        let _: PathBuf = root.clone();
        std::fs::remove_dir_all(root).unwrap();
    }
}
