//! Copy-ups that changed nothing: the object in the upper layer is still
//! what it was in the lower layer it was copied from (type, owner, mode,
//! size, modification time, a symlink's target, and a regular file's
//! content up to [`CONTENT_LIMIT`]). Pure cost: typically an entrypoint's
//! `chown -R` to the owner the files already have, a `chmod` to the mode
//! they have, or a file opened for writing and never written.
//!
//! Checked as the report is written, since a copy-up that has changed
//! nothing yet may still be written to. Both sides are reached without
//! following a symlink ([`super::lookup::open_parent`]).

use super::lookup::{components, open_parent, LookupError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Regular files up to this size have their content compared; above it,
/// the metadata only (an unchanged size and modification time).
pub const CONTENT_LIMIT: u64 = 1 << 20;

/// What the upper object is, compared with the lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As it was in the lower layer.
    Unchanged,
    /// Different, or gone from the upper layer (removed or renamed).
    Changed,
}

fn stat_at(
    root: &Path,
    parts: &[&[u8]],
) -> Result<Option<(Stat, std::os::fd::OwnedFd)>, LookupError> {
    let (dir, name) = match open_parent(root, parts) {
        Ok(x) => x,
        Err(LookupError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((st, dir))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(LookupError::Io(e.into())),
    }
}

fn same_meta(a: &Stat, b: &Stat) -> bool {
    let t = |s: &Stat| FileType::from_raw_mode(s.st_mode);
    t(a) == t(b)
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && a.st_mode == b.st_mode
        && (t(a) == FileType::Directory || a.st_size == b.st_size)
        && (t(a) == FileType::Directory
            || (a.st_mtime == b.st_mtime && a.st_mtime_nsec == b.st_mtime_nsec))
}

fn open_file(dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Still a regular file (not swapped for a FIFO or device since the stat).
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    Ok(std::fs::File::from(fd))
}

fn same_content(a: &mut impl Read, b: &mut impl Read, len: u64) -> std::io::Result<bool> {
    // Sized for the file: every report compares each remembered copy-up
    // again (up to 16,384), and most files are small: two 64 KiB buffers
    // zeroed for a 2-byte file is work done for nothing.
    let chunk = len.clamp(1, 64 << 10) as usize;
    let (mut x, mut y) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut left = len;
    while left > 0 {
        let n = left.min(x.len() as u64) as usize;
        a.read_exact(&mut x[..n])?;
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// Sizes of both sides of a copy-up (for the advice: a file that grew
/// was appended to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub lower: u64,
    pub upper: u64,
    pub regular_file: bool,
}

/// Compares `path` in `upper` with the same path in `lower`.
pub fn compare(lower: &Path, upper: &Path, path: &[u8]) -> Result<Verdict, LookupError> {
    examine(lower, upper, path).1
}

/// One look at a copy-up's object, walking each layer once: the sizes of
/// both sides (None if either is gone) and how the upper one compares
/// with the lower one.
pub fn examine(
    lower: &Path,
    upper: &Path,
    path: &[u8],
) -> (Option<Sizes>, Result<Verdict, LookupError>) {
    let parts = match components(path) {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return (None, Err(LookupError::BadPath)),
        Err(e) => return (None, Err(e)),
    };
    let name = std::ffi::OsStr::from_bytes(parts[parts.len() - 1]);
    let up = match stat_at(upper, &parts) {
        Ok(Some(up)) => up,
        Ok(None) => return (None, Ok(Verdict::Changed)),
        Err(e) => return (None, Err(e)),
    };
    let low = match stat_at(lower, &parts) {
        Ok(Some(low)) => low,
        Ok(None) => return (None, Ok(Verdict::Changed)),
        Err(e) => return (None, Err(e)),
    };
    let regular = |s: &Stat| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile;
    let sizes = Sizes {
        lower: low.0.st_size as u64,
        upper: up.0.st_size as u64,
        regular_file: regular(&low.0) && regular(&up.0),
    };
    (Some(sizes), verdict(&low, &up, name))
}

/// How the upper object compares with the lower one, both stat'ed, each
/// with the directory holding it.
fn verdict(
    (low, low_dir): &(Stat, std::os::fd::OwnedFd),
    (up, up_dir): &(Stat, std::os::fd::OwnedFd),
    name: &std::ffi::OsStr,
) -> Result<Verdict, LookupError> {
    if !same_meta(low, up) {
        return Ok(Verdict::Changed);
    }
    let io = |e: std::io::Error| LookupError::Io(e);
    match FileType::from_raw_mode(up.st_mode) {
        FileType::Symlink => {
            let a = rustix::fs::readlinkat(low_dir, name, Vec::new()).map_err(|e| io(e.into()))?;
            let b = rustix::fs::readlinkat(up_dir, name, Vec::new()).map_err(|e| io(e.into()))?;
            Ok(if a == b {
                Verdict::Unchanged
            } else {
                Verdict::Changed
            })
        }
        FileType::RegularFile if (up.st_size as u64) <= CONTENT_LIMIT => {
            let mut a = open_file(low_dir, name).map_err(io)?;
            let mut b = open_file(up_dir, name).map_err(io)?;
            Ok(
                if same_content(&mut a, &mut b, up.st_size as u64).map_err(io)? {
                    Verdict::Unchanged
                } else {
                    Verdict::Changed
                },
            )
        }
        _ => Ok(Verdict::Unchanged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn pair(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("cowtrace-unch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (l, u) = (root.join("lower"), root.join("upper"));
        std::fs::create_dir_all(l.join("d")).unwrap();
        std::fs::create_dir_all(u.join("d")).unwrap();
        (root, l, u)
    }

    /// A copy as overlayfs makes it: same content, mode and times.
    fn copy_up(l: &Path, u: &Path, rel: &str) {
        std::fs::copy(l.join(rel), u.join(rel)).unwrap();
        let m = std::fs::metadata(l.join(rel)).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(u.join(rel))
            .unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
    }

    #[test]
    fn one_look_gives_both_sides_sizes_with_the_verdict() {
        let (root, l, u) = pair("examine");
        std::fs::write(l.join("d/log"), b"hello").unwrap();
        copy_up(&l, &u, "d/log");
        let (sizes, verdict) = examine(&l, &u, b"d/log");
        let same = Sizes {
            lower: 5,
            upper: 5,
            regular_file: true,
        };
        assert_eq!((sizes, verdict.unwrap()), (Some(same), Verdict::Unchanged));
        std::fs::OpenOptions::new()
            .append(true)
            .open(u.join("d/log"))
            .unwrap()
            .write_all(b" world")
            .unwrap();
        let (sizes, verdict) = examine(&l, &u, b"d/log");
        assert_eq!(sizes.map(|s| (s.lower, s.upper)), Some((5, 11)));
        assert_eq!(verdict.unwrap(), Verdict::Changed);
        // Gone from the upper layer: no sizes, a change.
        std::fs::remove_file(u.join("d/log")).unwrap();
        let (sizes, verdict) = examine(&l, &u, b"d/log");
        assert_eq!((sizes, verdict.unwrap()), (None, Verdict::Changed));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_faithful_copy_is_unchanged_and_any_difference_is_a_change() {
        let (root, l, u) = pair("cmp");
        std::fs::write(l.join("d/f"), b"hello").unwrap();
        copy_up(&l, &u, "d/f");
        assert_eq!(compare(&l, &u, b"d/f").unwrap(), Verdict::Unchanged);
        // Same size, same time, other content.
        std::fs::write(l.join("d/g"), b"hello").unwrap();
        copy_up(&l, &u, "d/g");
        let t = std::fs::metadata(u.join("d/g"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(u.join("d/g"), b"HELLO").unwrap();
        std::fs::File::options()
            .write(true)
            .open(u.join("d/g"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(compare(&l, &u, b"d/g").unwrap(), Verdict::Changed);
        // A mode change.
        std::fs::write(l.join("d/h"), b"x").unwrap();
        copy_up(&l, &u, "d/h");
        std::fs::set_permissions(u.join("d/h"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(compare(&l, &u, b"d/h").unwrap(), Verdict::Changed);
        // Gone from the upper layer.
        std::fs::write(l.join("d/i"), b"x").unwrap();
        assert_eq!(compare(&l, &u, b"d/i").unwrap(), Verdict::Changed);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn symlinks_on_the_way_are_not_followed() {
        let (root, l, u) = pair("links");
        std::fs::write(l.join("d/f"), b"x").unwrap();
        std::fs::remove_dir(u.join("d")).unwrap();
        // A symlink planted where the upper directory was: never followed.
        std::os::unix::fs::symlink(l.join("d"), u.join("d")).unwrap();
        assert!(compare(&l, &u, b"d/f").is_err());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn content_is_compared_to_the_last_byte_whatever_the_size() {
        for len in [1usize, 2, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 200_000] {
            let a: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert!(same_content(&mut &a[..], &mut &a[..], len as u64).unwrap());
            for at in [0, len / 2, len - 1] {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(
                    !same_content(&mut &a[..], &mut &b[..], len as u64).unwrap(),
                    "{len} bytes, differing at {at}"
                );
            }
        }
        assert!(same_content(&mut &b""[..], &mut &b""[..], 0).unwrap());
    }
}
