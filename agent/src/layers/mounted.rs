//! A container's layers when no runtime says what they are (containerd's
//! own containers, started with `ctr` or by the kubelet through the CRI
//! plugin): the lower directories of its root overlay, as the kernel shows
//! them in its init's `/proc/PID/mountinfo` (`lowerdir=`, topmost first).
//! Each is one layer, numbered from the bottom (0 = the lowest lower
//! directory), which is the image's `RootFS.Layers` position when the
//! runtime stacks exactly the image's layers (containerd's overlayfs
//! snapshotter does; a runtime that adds a layer of its own, as Docker's
//! `-init`, would have it counted). Neither the diff id nor the
//! instruction is known: both are `None`.
//!
//! The paths are the runtime's, but the kernel shows whatever the mount
//! was given: each is opened with `openat2(RESOLVE_NO_SYMLINKS)`, and used
//! only if no symlink is on its way. The one symlink form accepted is
//! containers-storage's short link (`overlay/l/<short>` ->
//! `../<layer id>/diff`), read with `readlinkat` and never followed: the
//! directory it names is opened the same way.

use super::image::{plain_absolute, ImageLayers, Lower, MAX_LOWERS};
use super::LayerRef;
use crate::bundle::is_identifier;
use crate::mountinfo::Mount;
use anyhow::{anyhow, bail, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open_no_symlinks(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// `path` as a directory reached with no symlink on the way, or the
/// directory a containers-storage short link at `path` names.
fn resolve(path: &str) -> Result<PathBuf> {
    let p =
        plain_absolute(path).ok_or_else(|| anyhow!("lower dir {path:?} is not a plain path"))?;
    match open_no_symlinks(&p) {
        Ok(_) => return Ok(p),
        // A symlink on the way (ELOOP), or as the last component (ENOTDIR
        // with O_NOFOLLOW): maybe a short link, read below.
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {}
        Err(e) => bail!("{}: {e}", p.display()),
    }
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        bail!("{}: a symlink", p.display());
    };
    let dir = open_no_symlinks(parent).map_err(|e| anyhow!("{}: {e}", parent.display()))?;
    let target = rustix::fs::readlinkat(&dir, name, Vec::new())
        .map_err(|e| anyhow!("{}: {e}", p.display()))?;
    let target = target.to_string_lossy();
    let layer = target
        .strip_prefix("../")
        .and_then(|t| t.strip_suffix("/diff"))
        .filter(|id| is_identifier(id))
        .ok_or_else(|| anyhow!("{}: a symlink to {target:?}", p.display()))?;
    let real = parent
        .parent()
        .ok_or_else(|| anyhow!("{}: a symlink at the root", p.display()))?
        .join(layer)
        .join("diff");
    open_no_symlinks(&real).map_err(|e| anyhow!("{}: {e}", real.display()))?;
    Ok(real)
}

/// The layers of the overlay `m`: its lower directories, numbered from
/// the bottom.
pub fn from_mount(m: &Mount) -> Result<ImageLayers> {
    let dirs = m.lowerdirs();
    if dirs.is_empty() {
        bail!("the overlay shows no lower directory");
    }
    if dirs.len() > MAX_LOWERS {
        bail!("more than {MAX_LOWERS} lower directories");
    }
    let n = dirs.len();
    let lowers = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(Lower {
                dir: resolve(d)?,
                layer: Some(Arc::new(LayerRef {
                    index: (n - 1 - i) as u32,
                    diff_id: None,
                    created_by: None,
                })),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // What the container changed: only a plain path with no symlink.
    let upper = m
        .super_opt("upperdir")
        .and_then(plain_absolute)
        .filter(|u| open_no_symlinks(u).is_ok());
    // No image id: containers of one image share its lower directories,
    // which stand for it (the advice groups copy-ups by image).
    let image_id = Some(format!("lowerdir={}", dirs.join(":")));
    Ok(ImageLayers {
        lowers,
        upper,
        image_id,
    })
}

/// The layers of the root overlay of process `pid` (a container's init).
pub fn of_pid(pid: u32) -> Result<ImageLayers> {
    let mounts = crate::mountinfo::read_mountinfo(&pid.to_string())?;
    let root = mounts
        .iter()
        .rev()
        .find(|m| m.is_overlay() && m.mount_point == "/")
        .ok_or_else(|| anyhow!("process {pid}'s root is no overlay"))?;
    from_mount(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cowtrace-mounted-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn overlay(lower: &str, upper: &Path) -> Mount {
        Mount::parse_line(&format!(
            "40 20 0:52 / / rw,relatime - overlay overlay rw,lowerdir={lower},upperdir={},workdir=/w",
            upper.display()
        ))
        .unwrap()
    }

    #[test]
    fn lower_dirs_are_layers_counted_from_the_bottom() {
        let d = root("order");
        let dirs: Vec<PathBuf> = ["3", "2", "1"]
            .iter()
            .map(|n| d.join(n).join("fs"))
            .collect();
        for x in &dirs {
            std::fs::create_dir_all(x).unwrap();
        }
        std::fs::create_dir_all(d.join("up")).unwrap();
        let lower: Vec<String> = dirs.iter().map(|x| x.display().to_string()).collect();
        let l = from_mount(&overlay(&lower.join(":"), &d.join("up"))).unwrap();
        let got: Vec<(PathBuf, u32)> = l
            .lowers
            .iter()
            .map(|x| (x.dir.clone(), x.layer.as_ref().unwrap().index))
            .collect();
        assert_eq!(
            got,
            [
                (dirs[0].clone(), 2),
                (dirs[1].clone(), 1),
                (dirs[2].clone(), 0)
            ]
        );
        let top = l.lowers[0].layer.as_ref().unwrap();
        assert_eq!(
            (top.diff_id.as_ref(), top.created_by.as_ref()),
            (None, None)
        );
        assert_eq!(l.upper, Some(d.join("up")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn short_links_are_read_never_followed_and_other_symlinks_refused() {
        let d = root("links");
        let store = d.join("overlay");
        let layer = "a".repeat(64);
        std::fs::create_dir_all(store.join(&layer).join("diff")).unwrap();
        std::fs::create_dir_all(store.join("l")).unwrap();
        symlink(format!("../{layer}/diff"), store.join("l/SHORT")).unwrap();
        let l = from_mount(&overlay(
            &store.join("l/SHORT").display().to_string(),
            &d.join("none"),
        ))
        .unwrap();
        assert_eq!(l.lowers[0].dir, store.join(&layer).join("diff"));
        // An upper directory that does not resolve plainly is not used.
        assert_eq!(l.upper, None);
        // A link anywhere else, or to anything else, is refused.
        let outside = root("outside");
        symlink(&outside, store.join("l/ABS")).unwrap();
        symlink("../../../etc", store.join("l/UP")).unwrap();
        symlink(&store, d.join("linked")).unwrap();
        for bad in [
            store.join("l/ABS"),
            store.join("l/UP"),
            d.join("linked").join(&layer).join("diff"),
        ] {
            assert!(
                from_mount(&overlay(&bad.display().to_string(), &d)).is_err(),
                "{}",
                bad.display()
            );
        }
        assert!(from_mount(&overlay("relative/x", &d)).is_err());
        assert!(from_mount(&overlay("/a/../b", &d)).is_err());
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
