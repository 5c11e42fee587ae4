//! The overlay mount options that change what overlayfs does on a copy-up,
//! a removal or a rename, read from a mount's super options, and what
//! cowtrace makes of each (for the JSON's `overlays` and `cowtrace doctor`).
//!
//! Why the module's parameters too: overlay shows an option in mountinfo
//! only where it differs from the module's default
//! (`/sys/module/overlay/parameters/*`), and a distribution may build or
//! boot overlay with `index` or `redirect_dir` on by default. A mount
//! without `metacopy=` therefore runs with whatever the module says.

use crate::mountinfo::Mount;
use serde_json::{json, Value};

/// fstype of fuse-overlayfs (rootless podman without kernel overlay):
/// a FUSE daemon, not overlayfs, so no kernel probe of cowtrace sees it.
pub const FUSE_OVERLAYFS: &str = "fuse.fuse-overlayfs";

/// The options that matter, as the kernel applies them to one mount.
/// `None`: neither the mount nor the module's parameters say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    pub metacopy: Option<bool>,
    pub index: Option<bool>,
    /// `on`, `off`, `follow` or `nofollow`.
    pub redirect_dir: Option<String>,
    pub userxattr: bool,
    pub volatile: bool,
    pub nfs_export: Option<bool>,
    /// `on`, `off` or `auto`.
    pub xino: Option<String>,
}

/// The overlay module's defaults, as `/sys/module/overlay/parameters`
/// holds them (`Y`/`N`); a parameter that cannot be read is `None`.
#[derive(Clone, Debug, Default)]
pub struct ModuleDefaults {
    pub metacopy: Option<bool>,
    pub index: Option<bool>,
    pub redirect_dir: Option<bool>,
    pub redirect_always_follow: Option<bool>,
    pub nfs_export: Option<bool>,
    pub xino_auto: Option<bool>,
}

impl ModuleDefaults {
    /// Reads the running kernel's overlay module parameters.
    pub fn read() -> Self {
        Self::from_dir(std::path::Path::new("/sys/module/overlay/parameters"))
    }

    pub fn from_dir(dir: &std::path::Path) -> Self {
        let p = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|s| match s.trim() {
                    "Y" | "y" | "1" => Some(true),
                    "N" | "n" | "0" => Some(false),
                    _ => None,
                })
        };
        ModuleDefaults {
            metacopy: p("metacopy"),
            index: p("index"),
            redirect_dir: p("redirect_dir"),
            redirect_always_follow: p("redirect_always_follow"),
            nfs_export: p("nfs_export"),
            xino_auto: p("xino_auto"),
        }
    }

    /// The kernel's `ovl_redirect_mode_def()`.
    fn redirect_mode(&self) -> Option<String> {
        match (self.redirect_dir?, self.redirect_always_follow) {
            (true, _) => Some("on".into()),
            (false, Some(true)) => Some("follow".into()),
            (false, Some(false)) => Some("nofollow".into()),
            (false, None) => None,
        }
    }
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

impl OverlayOptions {
    /// The options `m` runs with: its own where mountinfo shows them, the
    /// module's defaults otherwise.
    pub fn of(m: &Mount, defaults: &ModuleDefaults) -> Self {
        let flag = |k: &str, def: Option<bool>| m.super_opt(k).map_or(def, on_off);
        OverlayOptions {
            metacopy: flag("metacopy", defaults.metacopy),
            index: flag("index", defaults.index),
            redirect_dir: m
                .super_opt("redirect_dir")
                .map(str::to_string)
                .or_else(|| defaults.redirect_mode()),
            userxattr: m.has_super_opt("userxattr"),
            volatile: volatile(m),
            nfs_export: flag("nfs_export", defaults.nfs_export),
            xino: m.super_opt("xino").map(str::to_string).or_else(|| {
                defaults
                    .xino_auto
                    .map(|a| if a { "auto" } else { "off" }.to_string())
            }),
        }
    }

    /// The JSON `overlay_options` object.
    pub fn json(&self) -> Value {
        json!({
            "metacopy": self.metacopy,
            "index": self.index,
            "redirect_dir": self.redirect_dir,
            "userxattr": self.userxattr,
            "volatile": self.volatile,
            "nfs_export": self.nfs_export,
            "xino": self.xino,
        })
    }

    /// One line per option that is on, saying what cowtrace does with it;
    /// `(handled, line)`. Options left at what Docker uses say nothing.
    pub fn verdicts(&self) -> Vec<(bool, String)> {
        let mut v = Vec::new();
        if self.metacopy == Some(true) {
            v.push((true, "metacopy=on: chown/chmod copy up metadata only (reported as metadata_only, 0 bytes); the data follows on the first open for write (reported as deferred_data)".into()));
        }
        if self.index == Some(true) || self.nfs_export == Some(true) {
            v.push((true, "index=on: a hard-linked lower file is copied up once for all its names (links in the event); an unlinked indexed file is copied up first (trigger remove); index-directory cleanups are not whiteouts".into()));
        }
        if matches!(self.redirect_dir.as_deref(), Some("on")) {
            v.push((true, "redirect_dir=on: renaming a lower directory is reported as a redirect (its tree is not copied)".into()));
        }
        if self.userxattr {
            v.push((true, "userxattr (rootless): user.overlay.* attributes recognised; the container is named from its user's containers-storage (the overlay's upper directory), attributed by its filesystem where its cgroup is not its own".into()));
        }
        if self.volatile {
            v.push((
                true,
                "volatile: copy-ups counted as usual (no fsync, so shorter latencies)".into(),
            ));
        }
        v
    }

    /// Compact `key=value` text for `doctor`.
    pub fn summary(&self) -> String {
        let b = |v: Option<bool>| match v {
            Some(true) => "on",
            Some(false) => "off",
            None => "?",
        };
        let mut s = format!(
            "metacopy={} index={} redirect_dir={} nfs_export={} xino={}",
            b(self.metacopy),
            b(self.index),
            self.redirect_dir.as_deref().unwrap_or("?"),
            b(self.nfs_export),
            self.xino.as_deref().unwrap_or("?"),
        );
        if self.userxattr {
            s.push_str(" userxattr");
        }
        if self.volatile {
            s.push_str(" volatile");
        }
        s
    }
}

/// Whether `m` is a volatile mount. Kernels differ in how they show it
/// (`volatile`; `fsync=volatile` where overlay has the `fsync=` option),
/// so the sign every volatile mount leaves counts too: overlay creates
/// `work/incompat/volatile` in its workdir while mounted volatile (and
/// refuses to mount over a workdir that still has it). Looked at without
/// following symlinks.
fn volatile(m: &Mount) -> bool {
    if m.has_super_opt("volatile") || m.super_opt("fsync") == Some("volatile") {
        return true;
    }
    m.super_opt("workdir").is_some_and(|w| {
        std::path::Path::new(w)
            .join("work/incompat/volatile")
            .symlink_metadata()
            .is_ok_and(|md| md.is_dir())
    })
}

/// The mount of overlay device `dev` (kernel encoding) in `mounts`.
pub fn find_overlay(mounts: &[Mount], dev: u32) -> Option<&Mount> {
    mounts
        .iter()
        .rev()
        .find(|m| m.is_overlay() && m.kernel_dev() == dev)
}

/// At most this many overlays are listed in a report (one per container
/// root filesystem that had events, plus the host's own overlays).
pub const MAX_OVERLAYS: usize = 4096;

/// One overlay filesystem events happened in.
#[derive(Clone, Debug)]
struct Seen {
    mount_point: Option<String>,
    options: Option<OverlayOptions>,
    /// The container whose root filesystem it is, once known.
    owner: Option<crate::stats::Owner>,
}

/// The overlays a run's events happened in, each looked up once, when its
/// first event arrives (a container's overlay may be unmounted by the time
/// the report is written).
#[derive(Default)]
pub struct Overlays {
    seen: std::collections::BTreeMap<u32, Seen>,
    defaults: Option<ModuleDefaults>,
}

impl Overlays {
    /// Notes an event on overlay `dev` by `pid`, whose filesystem owner is
    /// `owner`. The mount is looked for in cowtrace's own mount namespace
    /// first (where the engines mount containers' overlays), then in the
    /// event process's, then in any process's.
    pub fn note(&mut self, dev: u32, pid: u32, owner: Option<&crate::stats::Owner>) {
        if let Some(s) = self.seen.get_mut(&dev) {
            if s.owner.is_none() {
                s.owner = owner.cloned();
            }
            return;
        }
        if self.seen.len() >= MAX_OVERLAYS {
            return;
        }
        let defaults = self.defaults.get_or_insert_with(ModuleDefaults::read);
        let lookup = |who: &str| {
            let mounts = crate::mountinfo::read_mountinfo(who).ok()?;
            find_overlay(&mounts, dev)
                .map(|m| (m.mount_point.clone(), OverlayOptions::of(m, defaults)))
        };
        // A rootless container's overlay is only in its user's mount
        // namespace, and the event's process may be gone: a container's
        // overlay is looked for in every process's (an engine's is in ours,
        // so this look, on the event path, is only ever a rootless one's).
        let found = lookup("self")
            .or_else(|| lookup(&pid.to_string()))
            .or_else(|| {
                owner?;
                let m = crate::rootless::find_mount(dev)?;
                Some((m.mount_point.clone(), OverlayOptions::of(&m, defaults)))
            });
        self.seen.insert(
            dev,
            Seen {
                mount_point: found.as_ref().map(|f| f.0.clone()),
                options: found.map(|f| f.1),
                owner: owner.cloned(),
            },
        );
    }

    /// The JSON `overlays` array, by device.
    pub fn json(&self) -> Value {
        Value::Array(
            self.seen
                .iter()
                .map(|(dev, s)| {
                    json!({
                        "dev": format!("{}:{}", dev >> 20, dev & 0xfffff),
                        "mount_point": s.mount_point.as_deref().map(crate::event::escape_str),
                        "filesystem": s.owner.as_ref().map(|o| json!({"id": o.id, "name": o.name})),
                        "overlay_options": s.options.as_ref().map(OverlayOptions::json),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn mount(opts: &str) -> Mount {
        Mount::parse_line(&format!(
            "40 20 0:52 / /m rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w{opts}"
        ))
        .unwrap()
    }

    /// The overlay module's defaults on Debian's kernels (what Docker's
    /// mounts inherit); doctor's tests use them too.
    pub(crate) fn docker_defaults() -> ModuleDefaults {
        ModuleDefaults {
            metacopy: Some(false),
            index: Some(false),
            redirect_dir: Some(false),
            redirect_always_follow: Some(true),
            nfs_export: Some(false),
            xino_auto: Some(false),
        }
    }

    #[test]
    fn explicit_options_win_and_the_rest_come_from_the_module() {
        let o = OverlayOptions::of(
            &mount(",index=off,metacopy=on,volatile"),
            &ModuleDefaults {
                index: Some(true),
                ..docker_defaults()
            },
        );
        assert_eq!(o.metacopy, Some(true));
        assert_eq!(o.index, Some(false));
        assert_eq!(o.redirect_dir.as_deref(), Some("follow"));
        assert!(o.volatile);
        assert!(!o.userxattr);
        assert_eq!(o.xino.as_deref(), Some("off"));
        let v = o.json();
        assert_eq!(v["metacopy"], true);
        assert_eq!(v["volatile"], true);
        assert_eq!(v["redirect_dir"], "follow");
    }

    #[test]
    fn volatile_is_read_in_both_spellings() {
        for opts in [",volatile", ",fsync=volatile"] {
            assert!(
                OverlayOptions::of(&mount(opts), &docker_defaults()).volatile,
                "{opts}"
            );
        }
        for opts in ["", ",fsync=strict", ",fsync=auto"] {
            assert!(
                !OverlayOptions::of(&mount(opts), &docker_defaults()).volatile,
                "{opts}"
            );
        }
    }

    #[test]
    fn volatile_is_seen_in_its_workdir_too() {
        let w = std::env::temp_dir().join(format!("ct-ovl-work-{}", std::process::id()));
        std::fs::create_dir_all(w.join("work/incompat/volatile")).unwrap();
        let m = Mount::parse_line(&format!(
            "40 20 0:52 / /m rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir={}",
            w.display()
        ))
        .unwrap();
        assert!(OverlayOptions::of(&m, &docker_defaults()).volatile);
        std::fs::remove_dir_all(w.join("work/incompat")).unwrap();
        assert!(!OverlayOptions::of(&m, &docker_defaults()).volatile);
        std::fs::remove_dir_all(&w).unwrap();
    }

    #[test]
    fn unknown_defaults_stay_unknown() {
        let o = OverlayOptions::of(&mount(",userxattr"), &ModuleDefaults::default());
        assert_eq!(o.metacopy, None);
        assert!(o.json()["metacopy"].is_null());
        assert!(o.userxattr);
        assert!(o.summary().contains("metacopy=?"));
    }

    #[test]
    fn docker_mounts_need_no_word_and_others_get_one_each() {
        let plain = OverlayOptions::of(&mount(",index=off"), &docker_defaults());
        assert!(plain.verdicts().is_empty());
        let all = OverlayOptions::of(
            &mount(",index=on,metacopy=on,redirect_dir=on,userxattr,volatile"),
            &docker_defaults(),
        );
        let v = all.verdicts();
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v.iter().any(|(ok, l)| *ok && l.starts_with("metacopy")));
        assert!(v.iter().any(|(ok, l)| *ok && l.starts_with("index")));
        assert!(v.iter().any(|(ok, l)| *ok && l.starts_with("redirect_dir")));
        assert!(v.iter().any(|(ok, l)| *ok && l.starts_with("userxattr")));
    }

    #[test]
    fn reads_module_parameters() {
        let d = std::env::temp_dir().join(format!("ct-ovl-params-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("metacopy"), "Y\n").unwrap();
        std::fs::write(d.join("index"), "N\n").unwrap();
        let m = ModuleDefaults::from_dir(&d);
        assert_eq!(m.metacopy, Some(true));
        assert_eq!(m.index, Some(false));
        assert_eq!(m.xino_auto, None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn finds_the_overlay_of_a_device() {
        let ms = vec![mount(""), mount(",metacopy=on")];
        let m = find_overlay(&ms, crate::mountinfo::kernel_dev(0, 52)).unwrap();
        assert_eq!(m.super_opt("metacopy"), Some("on"));
        assert!(find_overlay(&ms, 1).is_none());
    }
}
