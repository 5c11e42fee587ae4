//! Which lower directory holds a path, looked up the way overlayfs would
//! see it, as root, beside containers that are not trusted.
//!
//! The path comes from a container, and so does the content of every
//! lower layer: each component is opened relative to the previous one
//! with `O_NOFOLLOW` (a symlink anywhere is never followed, and a
//! component `..` or `.` is refused), so nothing outside the lower
//! directory can be reached. The lower directories themselves are the
//! runtime's (under its data root).
//!
//! Overlay rules respected, topmost lower first: a whiteout (a character
//! device 0/0) hides the name in every layer below; a directory marked
//! opaque (`trusted.overlay.opaque` = `y`) hides what the layers below
//! have under it; a non-directory where a directory is needed hides the
//! layers below too. Only entries the container could see are ever
//! asked about, so these rules matter only for entries no layer above
//! holds; reading `trusted.*` needs CAP_SYS_ADMIN, which the agent gives
//! up after attaching, so without it an opaque mark is not seen.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where a path was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// In this lower (index into the list, topmost first).
    In(usize),
    /// In no lower layer (or hidden from all of them).
    Nowhere,
}

/// Why a lookup could not be done.
#[derive(Debug)]
pub enum LookupError {
    /// A component is empty, `.` or `..`.
    BadPath,
    /// A lower directory, or a directory in it, could not be read.
    Io(std::io::Error),
}

fn open_dir_at(dir: Option<&OwnedFd>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match dir {
        Some(d) => rustix::fs::openat(d, name, flags, Mode::empty()),
        None => rustix::fs::openat(rustix::fs::CWD, name, flags, Mode::empty()),
    }
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let mut v = [0u8; 2];
    matches!(
        rustix::fs::fgetxattr(dir, "trusted.overlay.opaque", &mut v),
        Ok(1) if v[0] == b'y'
    )
}

/// What one lower says about a path.
enum InLower {
    Holds,
    /// Not here; the layers below may have it.
    Absent,
    /// Not here, and the layers below are hidden (whiteout, opaque
    /// directory, a non-directory on the way).
    Hidden,
}

fn in_lower(lower: &Path, parts: &[&[u8]]) -> Result<InLower, LookupError> {
    let mut dir = open_dir_at(None, lower.as_os_str()).map_err(|e| LookupError::Io(e.into()))?;
    let mut opaque_above = false;
    for (i, part) in parts.iter().enumerate() {
        let name = OsStr::from_bytes(part);
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                return Ok(if opaque_above {
                    InLower::Hidden
                } else {
                    InLower::Absent
                })
            }
            Err(e) => return Err(LookupError::Io(e.into())),
        };
        let t = FileType::from_raw_mode(st.st_mode);
        if t == FileType::CharacterDevice && st.st_rdev == 0 {
            return Ok(InLower::Hidden);
        }
        if i + 1 == parts.len() {
            return Ok(InLower::Holds);
        }
        if t != FileType::Directory {
            return Ok(InLower::Hidden);
        }
        dir = match open_dir_at(Some(&dir), name) {
            Ok(d) => d,
            // Replaced by a symlink since the stat: not followed.
            Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                return Ok(InLower::Hidden)
            }
            Err(e) => return Err(LookupError::Io(e.into())),
        };
        opaque_above |= is_opaque(&dir);
    }
    // An empty path is the root directory, which every layer has.
    Ok(InLower::Holds)
}

/// A kernel-reported path (relative to the overlay's root,
/// `/`-separated) as components; an empty, `.` or `..` component is
/// refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, LookupError> {
    let parts: Vec<&[u8]> = if path.is_empty() {
        Vec::new()
    } else {
        path.split(|&b| b == b'/').collect()
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(LookupError::BadPath);
    }
    Ok(parts)
}

/// The directory holding `parts`' last component under `root`, each
/// component opened with `O_NOFOLLOW` (and the last one's name).
pub fn open_parent<'a>(
    root: &Path,
    parts: &[&'a [u8]],
) -> Result<(OwnedFd, &'a OsStr), LookupError> {
    let io = |e: rustix::io::Errno| LookupError::Io(e.into());
    let mut dir = open_dir_at(None, root.as_os_str()).map_err(io)?;
    let Some((last, above)) = parts.split_last() else {
        return Err(LookupError::BadPath);
    };
    for part in above {
        dir = open_dir_at(Some(&dir), OsStr::from_bytes(part)).map_err(io)?;
    }
    Ok((dir, OsStr::from_bytes(last)))
}

/// The topmost of `lowers` (topmost first) that holds `path` (relative to
/// the overlay's root, `/`-separated as the kernel reported it).
pub fn topmost_holding<P: AsRef<Path>>(lowers: &[P], path: &[u8]) -> Result<Found, LookupError> {
    let parts = components(path)?;
    for (i, lower) in lowers.iter().enumerate() {
        match in_lower(lower.as_ref(), &parts)? {
            InLower::Holds => return Ok(Found::In(i)),
            InLower::Absent => continue,
            InLower::Hidden => return Ok(Found::Nowhere),
        }
    }
    Ok(Found::Nowhere)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn layers(tag: &str) -> (PathBuf, Vec<PathBuf>) {
        let root =
            std::env::temp_dir().join(format!("cowtrace-lookup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ls: Vec<PathBuf> = ["top", "mid", "base"]
            .iter()
            .map(|n| root.join(n))
            .collect();
        for l in &ls {
            std::fs::create_dir_all(l).unwrap();
        }
        (root, ls)
    }

    fn file(p: PathBuf) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn the_topmost_layer_holding_the_entry_wins() {
        let (root, ls) = layers("top");
        file(ls[2].join("etc/a"));
        file(ls[2].join("etc/b"));
        file(ls[1].join("etc/b"));
        assert_eq!(topmost_holding(&ls, b"etc/a").unwrap(), Found::In(2));
        assert_eq!(topmost_holding(&ls, b"etc/b").unwrap(), Found::In(1));
        // A directory: the topmost that has it.
        assert_eq!(topmost_holding(&ls, b"etc").unwrap(), Found::In(1));
        assert_eq!(topmost_holding(&ls, b"etc/none").unwrap(), Found::Nowhere);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed_and_climbing_is_refused() {
        let (root, ls) = layers("links");
        let outside = root.join("outside");
        file(outside.join("secret"));
        std::os::unix::fs::symlink(&outside, ls[0].join("evil")).unwrap();
        // The symlink itself is an entry of the top layer; what is behind it
        // is not looked at.
        assert_eq!(topmost_holding(&ls, b"evil").unwrap(), Found::In(0));
        assert_eq!(
            topmost_holding(&ls, b"evil/secret").unwrap(),
            Found::Nowhere
        );
        assert!(matches!(
            topmost_holding(&ls, b"../outside/secret"),
            Err(LookupError::BadPath)
        ));
        assert!(matches!(
            topmost_holding(&ls, b"a//b"),
            Err(LookupError::BadPath)
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_non_directory_hides_the_layers_below() {
        let (root, ls) = layers("shadow");
        file(ls[2].join("d/x"));
        file(ls[1].join("d"));
        assert_eq!(topmost_holding(&ls, b"d/x").unwrap(), Found::Nowhere);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_whiteout_hides_the_layers_below() {
        // Making a 0/0 character device needs CAP_MKNOD (root on the host
        // running the unit tests; skipped elsewhere, the guest tests cover
        // real whiteouts).
        let (root, ls) = layers("whiteout");
        file(ls[2].join("etc/gone"));
        std::fs::create_dir_all(ls[1].join("etc")).unwrap();
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            ls[1].join("etc/gone"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0),
            0,
        );
        if made.is_ok() {
            assert_eq!(topmost_holding(&ls, b"etc/gone").unwrap(), Found::Nowhere);
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
