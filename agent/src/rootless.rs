//! Rootless podman: containers an unprivileged user runs from a
//! containers-storage of their own (`~/.local/share/containers/storage`),
//! mounted with kernel overlay (`userxattr`, 5.11+) inside the user's own
//! user and mount namespaces, or with fuse-overlayfs.
//!
//! Neither the mount nor, often, the cgroup tells the host about them:
//! the overlay is mounted in the user's mount namespace (the host's
//! mountinfo does not show it), and without a systemd user session that
//! delegates a cgroup podman leaves the container in its user's cgroup
//! (or the root one). So a rootless container is found from an event in
//! an overlay nobody owns: the overlay's mount, in the mountinfo of the
//! event's process or, once it is gone, of any process, has its upper
//! directory at `<storage>/overlay/<layer>/diff`; the store's
//! `overlay-containers/containers.json` names the container whose
//! read-write layer that is. The container's init is the oldest process
//! whose root is that overlay (its end ends the container).
//!
//! Everything here is the user's: the store's files are read with the
//! rules of [`crate::bundle`] (no symlink followed, bounded, regular
//! files only, ids checked before they name a path); a store owned by
//! root is never taken for a rootless one (that is rootful podman's,
//! named by its cgroup); and a rootless description never replaces one
//! from another source (an id the user copied from another container).

use crate::mountinfo::{parse_mountinfo, Mount};
use crate::overlay_opts::FUSE_OVERLAYFS;
use crate::runtime::ContainerInfo;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// At most this many processes are looked at per scan.
const MAX_PROCESSES: usize = 8192;
/// A process's mountinfo is read up to this size (a namespace with
/// thousands of mounts; past it, the mounts listed first are kept).
const MAX_MOUNTINFO: u64 = 4 << 20;
/// Storage roots remembered for the layer worker.
const MAX_ROOTS: usize = 4096;

/// A rootless container found behind an overlay device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub info: ContainerInfo,
    /// Its root overlay (kernel encoding).
    pub dev: u32,
    /// Its user's storage root, and that user (the root's owner).
    pub storage: PathBuf,
    pub uid: u32,
}

/// A fuse-overlayfs mount, which no kernel probe sees into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount {
    pub mount_point: String,
    /// `major:minor` as mountinfo shows it.
    pub dev: (u32, u32),
    /// The container whose root it is, if its store names one.
    pub container: Option<String>,
}

impl FuseMount {
    /// The one-line warning said at start.
    pub fn warning(&self) -> String {
        let who = match &self.container {
            Some(name) => format!("container {name} on a fuse-overlayfs mount"),
            None => "a fuse-overlayfs mount".to_string(),
        };
        format!(
            "{who} ({}, {}:{}): fuse-overlayfs copies up in a userspace daemon, out of reach of kernel probes: its copy-ups and whiteouts are not reported",
            crate::event::escape_str(&self.mount_point),
            self.dev.0,
            self.dev.1
        )
    }
}

static ROOTS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The storage root of rootless container `id`, once attribution has
/// found it (for its image layers, [`crate::layers::storage`]).
pub fn storage_root_of(id: &str) -> Option<PathBuf> {
    ROOTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()?
        .get(id)
        .cloned()
}

fn remember_root(id: &str, root: &Path) {
    let mut g = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    if m.len() >= MAX_ROOTS && !m.contains_key(id) {
        m.clear();
    }
    m.insert(id.to_string(), root.to_path_buf());
}

/// The storage root and read-write layer of a containers-storage
/// overlay, from its upper directory (`<root>/overlay/<layer>/diff`) or,
/// where containers-storage mounted with relative paths (very long
/// options), from its mount point (`<root>/overlay/<layer>/merged`).
pub fn storage_of(m: &Mount) -> Option<(PathBuf, String)> {
    let by = |p: &str, leaf: &str| {
        let p = Path::new(p);
        if !p.is_absolute() || p.file_name()? != leaf {
            return None;
        }
        let layer = p.parent()?;
        let overlay = layer.parent()?;
        if overlay.file_name()? != "overlay" {
            return None;
        }
        let layer = layer.file_name()?.to_str()?;
        crate::bundle::is_identifier(layer)
            .then(|| (overlay.parent().map(Path::to_path_buf), layer.to_string()))
            .and_then(|(r, l)| Some((r?, l)))
    };
    m.super_opt("upperdir")
        .and_then(|u| by(u, "diff"))
        .or_else(|| by(&m.mount_point, "merged"))
}

/// `/proc/<pid>/mountinfo`, bounded.
fn mountinfo_of(pid: u32) -> Option<Vec<Mount>> {
    let f = std::fs::File::open(format!("/proc/{pid}/mountinfo")).ok()?;
    let mut text = String::new();
    f.take(MAX_MOUNTINFO).read_to_string(&mut text).ok()?;
    Some(parse_mountinfo(&text))
}

/// The running processes, lowest pid first, at most [`MAX_PROCESSES`].
fn pids() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .take(MAX_PROCESSES)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The owner of `root` (not followed if a symlink), if it is a
/// directory that is not root's.
fn user_of(root: &Path) -> Option<u32> {
    let md = std::fs::symlink_metadata(root).ok()?;
    (md.is_dir() && md.uid() != 0).then(|| md.uid())
}

/// Whose rootless container overlay device `dev` is, looked for first in
/// the mounts `pid` (an event's process, if known) sees, then in every
/// process's.
/// `None`: no rootless container's (the host's own, an engine's, or a
/// store without that container).
pub fn find_dev(dev: u32, pid: Option<u32>) -> Option<Found> {
    let mut seen_storage = None;
    let mut init = None;
    // The event's process first, then every process, oldest first.
    let order = pid
        .map(|p| (true, p))
        .into_iter()
        .chain(pids().into_iter().map(|p| (false, p)));
    for (event_pid, p) in order {
        let Some(mounts) = mountinfo_of(p) else {
            continue;
        };
        let of_dev: Vec<&Mount> = mounts
            .iter()
            .filter(|m| m.is_overlay() && m.kernel_dev() == dev)
            .collect();
        let Some(first) = of_dev.first() else {
            continue;
        };
        if seen_storage.is_none() {
            match of_dev.iter().find_map(|m| storage_of(m)) {
                Some(s) if user_of(&s.0).is_some() => seen_storage = Some(s),
                // Root's store (rootful podman), or a user's directory
                // named like one but not theirs to name.
                Some(_) => return None,
                // An overlay with absolute paths that are no store's: the
                // host's own, or an engine's.
                None if first
                    .super_opt("upperdir")
                    .is_some_and(|u| u.starts_with('/')) =>
                {
                    return None
                }
                // Relative paths: another namespace may show its mount point.
                None => {}
            }
        }
        let is_root = mounts
            .iter()
            .any(|m| m.mount_point == "/" && m.is_overlay() && m.kernel_dev() == dev);
        // The oldest process whose root this overlay is: the container's
        // init (the event's own process only if none is found).
        if is_root && !event_pid && init.is_none() {
            init = Some(p);
        }
        if seen_storage.is_some() && init.is_some() {
            break;
        }
    }
    let (root, layer) = seen_storage?;
    let uid = user_of(&root)?;
    let mut info = crate::podman_store::describe_by_layer(&root, &layer)
        .ok()
        .flatten()?;
    info.pid = init.or_else(|| {
        let pid = pid?;
        mountinfo_of(pid)?
            .iter()
            .any(|m| m.mount_point == "/" && m.kernel_dev() == dev)
            .then_some(pid)
    });
    remember_root(&info.id, &root);
    Some(Found {
        info,
        dev,
        storage: root,
        uid,
    })
}

/// The mount of overlay device `dev` in any process's mount namespace
/// (where it is mounted somewhere other than a container's root, that
/// mount: it says more), for an overlay whose event's process is gone and
/// which is not in our own namespace (a rootless container's).
pub fn find_mount(dev: u32) -> Option<Mount> {
    let mut root = None;
    for p in pids() {
        let Some(mounts) = mountinfo_of(p) else {
            continue;
        };
        for m in mounts {
            if m.is_overlay() && m.kernel_dev() == dev {
                if m.mount_point != "/" {
                    return Some(m);
                }
                root.get_or_insert(m);
            }
        }
    }
    root
}

/// The overlay and fuse-overlayfs mounts of every mount namespace (ours
/// first, then every process's), once per device: rootless podman's are
/// only in its user's namespace (for `cowtrace doctor`).
pub fn all_overlay_mounts() -> Vec<Mount> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let own = mountinfo_of(std::process::id());
    for mounts in own
        .into_iter()
        .chain(pids().into_iter().filter_map(mountinfo_of))
    {
        for m in mounts {
            if (m.is_overlay() || m.fstype == FUSE_OVERLAYFS) && seen.insert(m.dev) {
                out.push(m);
            }
        }
    }
    out
}

/// What a look at every process's mounts finds at start: rootless
/// containers running (by their root overlay) and fuse-overlayfs mounts.
pub fn scan() -> (Vec<Found>, Vec<FuseMount>) {
    let mut found: HashMap<u32, Found> = HashMap::new();
    let mut fuse: HashMap<(u32, u32), FuseMount> = HashMap::new();
    let mut looked: HashMap<u32, ()> = HashMap::new();
    for p in pids() {
        let Some(mounts) = mountinfo_of(p) else {
            continue;
        };
        for m in &mounts {
            if m.fstype == FUSE_OVERLAYFS {
                fuse.entry(m.dev).or_insert_with(|| FuseMount {
                    mount_point: m.mount_point.clone(),
                    dev: m.dev,
                    container: storage_of(m).and_then(|(root, layer)| {
                        user_of(&root)?;
                        let c = crate::podman_store::describe_by_layer(&root, &layer).ok()??;
                        Some(if c.name.is_empty() {
                            crate::attribution::short_id(&c.id).to_string()
                        } else {
                            c.name
                        })
                    }),
                });
                continue;
            }
            if !(m.is_overlay() && m.mount_point == "/") {
                continue;
            }
            let dev = m.kernel_dev();
            if looked.insert(dev, ()).is_some() {
                continue;
            }
            // The oldest process with this root is its container's init.
            if let Some(mut f) = find_dev(dev, Some(p)) {
                f.info.pid = f.info.pid.or(Some(p));
                found.insert(dev, f);
            }
        }
    }
    let mut fuse: Vec<FuseMount> = fuse.into_values().collect();
    fuse.sort_by_key(|f| f.dev);
    (found.into_values().collect(), fuse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rootless podman container's root, as the container's own
    /// mountinfo shows it (captured in the shell-init Docker guest, podman
    /// 4.3 on 6.1, user `rl`).
    const NATIVE: &str = "75 57 0:29 / / rw,relatime - overlay overlay rw,lowerdir=/home/rl/.local/share/containers/storage/overlay/l/GLA5CLR4Y6JFO43XDWFUWSPYBR:/home/rl/.local/share/containers/storage/overlay/l/35REQXA4DW3LIWMVSJY23QY253:/home/rl/.local/share/containers/storage/overlay/l/C2QGNINUR6V2XR7XERTXZI7GXC,upperdir=/home/rl/.local/share/containers/storage/overlay/9e431cb2e002486034a4a86ce48e2587df026c0c58807e0d0f33dc47e93ae336/diff,workdir=/home/rl/.local/share/containers/storage/overlay/9e431cb2e002486034a4a86ce48e2587df026c0c58807e0d0f33dc47e93ae336/work,userxattr";
    /// A real fuse-overlayfs mount (captured in the same guest, mounted by
    /// root with Debian's fuse-overlayfs 1.10): no upperdir shown.
    const FUSE: &str = "52 29 0:46 / /tmp/f/m rw,nodev,noatime shared:14 - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0,group_id=0,default_permissions,allow_other";

    #[test]
    fn a_containers_storage_overlay_names_its_store_and_layer() {
        let m = Mount::parse_line(NATIVE).unwrap();
        let (root, layer) = storage_of(&m).unwrap();
        assert_eq!(root, Path::new("/home/rl/.local/share/containers/storage"));
        assert_eq!(
            layer,
            "9e431cb2e002486034a4a86ce48e2587df026c0c58807e0d0f33dc47e93ae336"
        );
        assert!(
            crate::overlay_opts::OverlayOptions::of(
                &m,
                &crate::overlay_opts::ModuleDefaults::default()
            )
            .userxattr
        );
        // fuse-overlayfs shows no upperdir: only a mount point in a store
        // (`<root>/overlay/<layer>/merged`, as containers-storage mounts
        // it) says whose it is.
        let f = Mount::parse_line(FUSE).unwrap();
        assert_eq!(f.fstype, FUSE_OVERLAYFS);
        assert_eq!(f.dev, (0, 46));
        assert_eq!(storage_of(&f), None);
        let f = Mount::parse_line(
            &FUSE.replace("/tmp/f/m", "/home/rl/fstore/overlay/7c1e5b2a9d3f/merged"),
        )
        .unwrap();
        assert_eq!(
            storage_of(&f),
            Some((PathBuf::from("/home/rl/fstore"), "7c1e5b2a9d3f".to_string()))
        );
        // Docker's layout, relative paths and climbing names are not a store.
        for opts in [
            "upperdir=/var/lib/docker/overlay2/abc/diff",
            "upperdir=abc/diff",
            "upperdir=/s/overlay/../diff",
            "upperdir=/s/overlay/a:b/diff",
        ] {
            let m = Mount::parse_line(&format!(
                "1 0 0:60 / /x rw - overlay overlay rw,lowerdir=/l,{opts},workdir=/w"
            ))
            .unwrap();
            assert_eq!(storage_of(&m), None, "{opts}");
        }
    }

    #[test]
    fn the_fuse_warning_names_mount_and_container() {
        let f = FuseMount {
            mount_point: "/home/rl/fstore/overlay/x/merged".into(),
            dev: (0, 64),
            container: Some("rlf".into()),
        };
        let w = f.warning();
        assert!(
            w.starts_with(
                "container rlf on a fuse-overlayfs mount (/home/rl/fstore/overlay/x/merged, 0:64)"
            ),
            "{w}"
        );
        assert!(w.contains("out of reach of kernel probes"), "{w}");
        assert!(!w.contains('\n'));
    }

    #[test]
    fn a_store_owned_by_root_is_not_a_users() {
        let d = std::env::temp_dir().join(format!("cowtrace-rootless-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let uid = std::fs::metadata(&d).unwrap().uid();
        assert_eq!(user_of(&d), (uid != 0).then_some(uid));
        let link = d.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert_eq!(user_of(&link), None, "a symlinked root is not followed");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn storage_roots_are_remembered_for_the_layers() {
        let id = "d".repeat(64);
        assert_eq!(storage_root_of(&id), None);
        remember_root(&id, Path::new("/home/u/s"));
        assert_eq!(storage_root_of(&id), Some(PathBuf::from("/home/u/s")));
    }
}
