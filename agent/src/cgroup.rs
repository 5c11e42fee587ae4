//! Container attribution from cgroups.
//!
//! Why: every kernel event is tagged with `bpf_get_current_cgroup_id()`,
//! which is the cgroup v2 id of the task, and on cgroup v2 that id is the
//! inode number of the cgroup's directory in cgroupfs. [`CgroupIndex`] maps
//! ids back to cgroup paths by walking cgroupfs (refreshing when an unknown
//! id shows up, and keeping removed cgroups for a few seconds because events
//! of a container that just exited arrive after its cgroup is gone).
//! [`container_id_from_cgroup_path`] then recognises the container runtimes'
//! cgroup naming schemes and extracts the 64-hex container id, which the
//! runtime APIs turn into names.
//!
//! Nested containers (Docker in Docker, kind) have several ids in one path;
//! we take the one nearest the root, the container the host knows about.

use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Container runtime recognised from a cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A container id in a kubelet cgroupfs-driver path
    /// (`/kubepods/<qos>/pod<uid>/<id>`): the path does not say which
    /// runtime; ask the runtimes' sockets.
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "crio",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><id>[.scope]` component prefixes. `crio-conmon-<id>.scope` and
/// `libpod-conmon-<id>.scope` (the runtime monitors) do not match because
/// `conmon-<id>` is not an id.
const PREFIXES: &[(&str, Runtime)] = &[
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("nerdctl-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

fn match_component(prev: Option<&str>, c: &str) -> Option<(Runtime, String)> {
    let stem = c.strip_suffix(".scope").unwrap_or(c);
    for &(prefix, rt) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((rt, id.to_string()));
            }
        }
    }
    // systemd slice + cgroupfs-style name used by kubelet with cgroup v1
    // and the systemd driver:
    // `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`
    if let Some((head, id)) = c.rsplit_once(':') {
        if is_container_id(id) {
            let rt = match head.rsplit(':').next().unwrap_or("") {
                "cri-containerd" | "containerd" => Runtime::Containerd,
                "docker" => Runtime::Docker,
                "crio" | "cri-o" => Runtime::CriO,
                "libpod" | "podman" => Runtime::Podman,
                _ => Runtime::Unknown,
            };
            return Some((rt, id.to_string()));
        }
    }
    if is_container_id(c) {
        return match prev {
            Some("docker") => Some((Runtime::Docker, c.to_string())),
            Some(p) if p.starts_with("pod") => Some((Runtime::Unknown, c.to_string())),
            _ => None,
        };
    }
    None
}

/// The container id in a cgroup path, and the runtime its naming scheme
/// belongs to; the match nearest the root wins (nested containers).
pub fn container_id_from_cgroup_path(path: &str) -> Option<(Runtime, String)> {
    let mut prev = None;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(m) = match_component(prev, c) {
            return Some(m);
        }
        prev = Some(c);
    }
    None
}

/// The cgroup v2 path (the `0::` line) from `/proc/<pid>/cgroup` text.
/// This is the cgroup whose id `bpf_get_current_cgroup_id` returns, also on
/// hybrid hosts (whose v1 lines name other hierarchies).
pub fn cgroup_v2_path_from_proc(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup v2 id (as `bpf_get_current_cgroup_id` sees it) of `pid`:
/// the inode of its `0::` cgroup's directory under [`default_root`].
pub fn cgroup_id_of_pid(pid: u32) -> io::Result<u64> {
    cgroup_v2_of_pid(pid).map(|(_, id)| id)
}

/// The cgroup v2 path of `pid` (its `0::` line) and that cgroup's id.
pub fn cgroup_v2_of_pid(pid: u32) -> io::Result<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = cgroup_v2_path_from_proc(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry"))?;
    let root = default_root()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy"))?;
    let id = std::fs::metadata(root.join(path.trim_start_matches('/')))?.ino();
    Ok((path, id))
}

/// How the host's cgroups are mounted, and so what the kernel's cgroup id
/// of an event can say. `bpf_get_current_cgroup_id` always returns a cgroup
/// v2 id: on a v1 host every task is in the v2 root (id 1), so the id
/// names nobody there, and containers are told apart by the overlay
/// filesystem an event happens in instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup2 at `/sys/fs/cgroup` (unified): ids name containers.
    #[default]
    V2,
    /// v1 controller hierarchies, cgroup2 at `/sys/fs/cgroup/unified`
    /// (systemd's hybrid layout): ids name a container where its runtime
    /// also put it in the unified hierarchy (runc does).
    Hybrid,
    /// Only v1 hierarchies: ids name nobody.
    V1,
    /// No cgroup hierarchy mounted at all: as v1.
    None,
}

impl CgroupMode {
    /// This host's mode (as mounted in this mount namespace).
    pub fn detect() -> CgroupMode {
        let v1 = crate::mountinfo::read_mountinfo("self")
            .map(|ms| ms.iter().any(|m| m.fstype == "cgroup"))
            .unwrap_or(false);
        Self::from_mounts(default_root().as_deref(), v1)
    }

    /// The mode from where cgroup2 is mounted (see [`default_root`]) and
    /// whether any v1 hierarchy is.
    pub fn from_mounts(v2_root: Option<&Path>, v1_mounted: bool) -> CgroupMode {
        match v2_root {
            Some(p) if p == Path::new("/sys/fs/cgroup") => CgroupMode::V2,
            Some(_) => CgroupMode::Hybrid,
            None if v1_mounted => CgroupMode::V1,
            None => CgroupMode::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::V2 => "v2",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::V1 => "v1",
            CgroupMode::None => "none",
        }
    }

    /// Whether the kernel's cgroup ids can name a container at all.
    pub fn has_v2_ids(self) -> bool {
        matches!(self, CgroupMode::V2 | CgroupMode::Hybrid)
    }

    /// Whether an event the cgroup books to the host goes to the container
    /// whose root filesystem it happened in (everywhere but on v2, where
    /// the cgroup is always right: a host process writing into a
    /// container, `docker cp`, is the host's).
    pub fn falls_back_to_filesystem(self) -> bool {
        self != CgroupMode::V2
    }

    /// What the report's `cgroup.attribution` says.
    pub fn attribution(self) -> &'static str {
        match self {
            CgroupMode::V2 => "cgroup",
            CgroupMode::Hybrid => "cgroup_else_filesystem",
            CgroupMode::V1 | CgroupMode::None => "filesystem",
        }
    }

    /// The one-line startup warning: what works here and what does not
    /// (None on v2; on hybrid a warning comes only if a container turns
    /// out to have no cgroup v2 id of its own).
    pub fn warning(self) -> Option<String> {
        let what = match self {
            CgroupMode::V2 | CgroupMode::Hybrid => return None,
            CgroupMode::V1 => "cgroup v1 host (no cgroup v2 hierarchy)",
            CgroupMode::None => "no cgroup hierarchy mounted",
        };
        Some(format!(
            "{what}: the kernel's cgroup id is a cgroup v2 id and names no container here, so \
             each event is attributed to the container whose root overlay filesystem it happened in \
             (mapped from each running container's mounts, found through the runtime's API), \
             and --container filters by that filesystem; what does not work: a process writing \
             into another container's filesystem (docker cp) is booked to that container, writes \
             into volumes and bind mounts are the host's, and --pid and --cgroup cannot filter"
        ))
    }

    /// The warning once a container on a hybrid host turned out to have no
    /// cgroup v2 id of its own (its runtime left it in a shared cgroup of
    /// the unified hierarchy).
    pub fn hybrid_warning(name: &str) -> String {
        format!(
            "cgroup hybrid host whose runtime does not put containers in the unified \
             hierarchy (container {name} has no cgroup v2 id of its own): such containers' events \
             are attributed by the root overlay filesystem they happen in, so a process writing \
             into another container's filesystem (docker cp) is booked to that container"
        )
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is on a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; c is a valid
    // NUL-terminated string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on systemd hybrid hosts (whose ids are
/// what `bpf_get_current_cgroup_id` returns there).
pub fn default_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
}

struct Entry {
    path: String,
    removed_at: Option<Instant>,
}

/// Map from cgroup id (directory inode) to path relative to the cgroupfs
/// root (`"/"` for the root, `"/system.slice/docker-<id>.scope"`...).
pub struct CgroupIndex {
    root: PathBuf,
    max_depth: usize,
    entries: HashMap<u64, Entry>,
    last_refresh: Instant,
    /// Minimum time between refreshes triggered by lookup misses.
    pub min_refresh_interval: Duration,
    /// How long removed cgroups stay resolvable.
    pub keep_removed: Duration,
}

impl Default for CgroupIndex {
    /// An empty index over `/sys/fs/cgroup` (filled by the first refresh).
    fn default() -> CgroupIndex {
        CgroupIndex {
            root: PathBuf::from("/sys/fs/cgroup"),
            max_depth: DEFAULT_MAX_DEPTH,
            entries: HashMap::new(),
            last_refresh: Instant::now(),
            min_refresh_interval: Duration::from_millis(200),
            keep_removed: Duration::from_secs(5),
        }
    }
}

/// Default depth bound: systemd + kubepods nesting is < 10 deep.
pub const DEFAULT_MAX_DEPTH: usize = 16;

impl CgroupIndex {
    /// Walks the cgroup tree at `root` (e.g. `/sys/fs/cgroup`).
    pub fn scan(root: impl AsRef<Path>) -> io::Result<CgroupIndex> {
        Self::scan_with_depth(root, DEFAULT_MAX_DEPTH)
    }

    /// As [`CgroupIndex::scan`], descending at most `max_depth` levels.
    pub fn scan_with_depth(root: impl AsRef<Path>, max_depth: usize) -> io::Result<CgroupIndex> {
        let root = root.as_ref().to_path_buf();
        let now = Instant::now();
        let entries = walk(&root, max_depth)?
            .into_iter()
            .map(|(id, path)| {
                (
                    id,
                    Entry {
                        path,
                        removed_at: None,
                    },
                )
            })
            .collect();
        Ok(CgroupIndex {
            root,
            max_depth,
            entries,
            last_refresh: now,
            min_refresh_interval: Duration::from_millis(200),
            keep_removed: Duration::from_secs(5),
        })
    }

    /// Number of known cgroups (removed ones still kept included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Path of cgroup `id`, rescanning on a miss (at most once per
    /// `min_refresh_interval`).
    pub fn lookup(&mut self, id: u64) -> Option<&str> {
        self.lookup_at(id, Instant::now())
    }

    /// [`CgroupIndex::lookup`] at a given time (for tests and batching).
    pub fn lookup_at(&mut self, id: u64, now: Instant) -> Option<&str> {
        if !self.entries.contains_key(&id)
            && now.saturating_duration_since(self.last_refresh) >= self.min_refresh_interval
        {
            self.refresh_at(now);
        }
        self.entries.get(&id).map(|e| e.path.as_str())
    }

    /// Rescans now. Cgroups that disappeared are kept for `keep_removed`.
    pub fn refresh(&mut self) {
        self.refresh_at(Instant::now())
    }

    /// [`CgroupIndex::refresh`] at a given time.
    pub fn refresh_at(&mut self, now: Instant) {
        self.last_refresh = now;
        // A vanished root (cgroupfs unmounted) looks like "everything
        // removed": the retention below then applies to all entries.
        let fresh = walk(&self.root, self.max_depth).unwrap_or_default();
        let keep = self.keep_removed;
        self.entries.retain(|id, e| {
            if fresh.contains_key(id) {
                return true;
            }
            let removed_at = *e.removed_at.get_or_insert(now);
            now.saturating_duration_since(removed_at) < keep
        });
        for (id, path) in fresh {
            let e = self.entries.entry(id).or_insert(Entry {
                path: String::new(),
                removed_at: None,
            });
            e.path = path;
            e.removed_at = None;
        }
    }
}

/// Walks directories under `root` up to `max_depth` levels, returning
/// inode -> relative path. Only the root must be readable; directories that
/// vanish or cannot be read during the walk are skipped.
fn walk(root: &Path, max_depth: usize) -> io::Result<HashMap<u64, String>> {
    let mut out = HashMap::new();
    out.insert(std::fs::metadata(root)?.ino(), "/".to_string());
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        if depth >= max_depth {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            // file_type() does not follow symlinks: only real directories.
            if !ent.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = ent.file_name();
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            // d_ino from readdir is the cgroup id on cgroupfs, no stat needed.
            out.insert(ent.ino(), child_rel.clone());
            stack.push((ent.path(), child_rel, depth + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f9c2a1e7b6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3";
    const ID2: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    fn cid(p: &str) -> Option<(Runtime, String)> {
        container_id_from_cgroup_path(p)
    }

    #[test]
    fn runtime_path_patterns() {
        let d = Runtime::Docker;
        let cases: Vec<(String, Option<(Runtime, &str)>)> = vec![
            // Docker, systemd driver (cgroup v2) and cgroupfs driver
            (format!("/system.slice/docker-{ID}.scope"), Some((d, ID))),
            (format!("/docker/{ID}"), Some((d, ID))),
            // rootless docker
            (
                format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"),
                Some((d, ID)),
            ),
            // containerd CRI, systemd driver v2
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f90a.slice/cri-containerd-{ID}.scope"),
                Some((Runtime::Containerd, ID)),
            ),
            // containerd CRI, cgroup v1 style systemd name
            (
                format!("/system.slice/containerd.service/kubepods-besteffort-pod1b2c3d4e_5f60.slice:cri-containerd:{ID}"),
                Some((Runtime::Containerd, ID)),
            ),
            // CRI-O
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c.slice/crio-{ID}.scope"),
                Some((Runtime::CriO, ID)),
            ),
            (
                format!("/kubepods/besteffort/pod1b2c3d4e-5f60/crio-{ID}"),
                Some((Runtime::CriO, ID)),
            ),
            // conmon is not the container
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // podman: rootful, rootless with the inner "container" cgroup,
            // cgroupfs manager; conmon excluded
            (format!("/machine.slice/libpod-{ID}.scope"), Some((Runtime::Podman, ID))),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
                Some((Runtime::Podman, ID)),
            ),
            (format!("/libpod_parent/libpod-{ID}"), Some((Runtime::Podman, ID))),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // kubelet cgroupfs driver: runtime unknown from the path
            (
                format!("/kubepods/burstable/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a/{ID}"),
                Some((Runtime::Unknown, ID)),
            ),
            // nested: docker in docker, kind node running CRI containers
            (format!("/docker/{ID}/docker/{ID2}"), Some((d, ID))),
            (
                format!("/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/cri-containerd-{ID2}.scope"),
                Some((d, ID)),
            ),
            // not containers
            ("/".into(), None),
            ("/user.slice/user-1000.slice/session-3.scope".into(), None),
            ("/system.slice/docker.service".into(), None),
            (format!("/system.slice/docker-{}.scope", &ID[..63]), None),
            (format!("/somewhere/{ID}"), None),
            (format!("/system.slice/docker-{ID}x.scope"), None),
        ];
        for (path, want) in cases {
            let want = want.map(|(r, i)| (r, i.to_string()));
            assert_eq!(cid(&path), want, "{path}");
        }
    }

    #[test]
    fn cgroup_modes_from_mounts() {
        use CgroupMode as M;
        let unified = Path::new("/sys/fs/cgroup");
        let hybrid = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(M::from_mounts(Some(unified), false), M::V2);
        assert_eq!(M::from_mounts(Some(unified), true), M::V2);
        assert_eq!(M::from_mounts(Some(hybrid), true), M::Hybrid);
        assert_eq!(M::from_mounts(None, true), M::V1);
        assert_eq!(M::from_mounts(None, false), M::None);
        assert!(M::V2.warning().is_none() && M::Hybrid.warning().is_none());
        for m in [M::V1, M::None] {
            let w = m.warning().unwrap();
            assert!(!w.contains('\n') && w.contains("--container"), "{w}");
            assert_eq!(m.attribution(), "filesystem");
        }
        assert!(!M::V2.falls_back_to_filesystem() && M::V1.falls_back_to_filesystem());
        assert_eq!(serde_json::to_string(&M::Hybrid).unwrap(), "\"hybrid\"");
        // The host tests run where cgroup v2 is mounted (this machine is
        // a hybrid host).
        assert!(M::detect().has_v2_ids());
    }

    #[test]
    fn runtime_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Runtime::CriO).unwrap(), "\"crio\"");
        assert_eq!(Runtime::Containerd.as_str(), "containerd");
    }

    #[test]
    fn own_cgroup_is_readable() {
        let hy = format!("4:memory:/docker/{ID}\n0::/system.slice/x.scope\n");
        assert_eq!(
            cgroup_v2_path_from_proc(&hy).as_deref(),
            Some("/system.slice/x.scope")
        );
        assert_eq!(cgroup_v2_path_from_proc("4:memory:/x\n"), None);
        let root = default_root().expect("no cgroup v2 hierarchy mounted");
        let own = cgroup_v2_path_from_proc(&std::fs::read_to_string("/proc/self/cgroup").unwrap())
            .unwrap();
        assert_eq!(
            cgroup_id_of_pid(std::process::id()).unwrap(),
            ino(&root.join(own.trim_start_matches('/')))
        );
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "cowtrace-cgroup-{tag}-{}-{:?}",
                std::process::id(),
                Instant::now()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn scan_maps_inodes_to_paths() {
        let t = TempDir::new("scan");
        let r = &t.0;
        let scope = format!("system.slice/docker-{ID}.scope");
        for d in [scope.as_str(), "user.slice/user-1000.slice", "a/b/c/d/e"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("system.slice/cgroup.procs"), "").unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("link")).unwrap();
        let mut idx = CgroupIndex::scan(r).unwrap();
        // root + system.slice + scope + user.slice + user-1000.slice + a..e
        assert_eq!(idx.len(), 10);
        assert_eq!(idx.lookup(ino(r)), Some("/"));
        let want = format!("/{scope}");
        assert_eq!(idx.lookup(ino(&r.join(&scope))), Some(want.as_str()));
        assert_eq!(idx.lookup(ino(&r.join("a/b/c/d/e"))), Some("/a/b/c/d/e"));
        // files are not cgroups
        assert_eq!(idx.lookup(ino(&r.join("system.slice/cgroup.procs"))), None);
        // depth bound
        let idx = CgroupIndex::scan_with_depth(r, 2).unwrap();
        assert_eq!(idx.len(), 7);
        assert!(CgroupIndex::scan(r.join("missing")).is_err());
    }

    #[test]
    fn refresh_on_miss_is_rate_limited_and_removed_entries_linger() {
        let t = TempDir::new("refresh");
        let r = &t.0;
        let mut idx = CgroupIndex::scan(r).unwrap();
        let t0 = Instant::now();
        idx.refresh_at(t0);
        std::fs::create_dir(r.join("new")).unwrap();
        let new = ino(&r.join("new"));
        // too soon after the last refresh: no rescan
        assert_eq!(idx.lookup_at(new, t0 + Duration::from_millis(50)), None);
        // later: the miss triggers a rescan
        assert_eq!(
            idx.lookup_at(new, t0 + Duration::from_millis(250)),
            Some("/new")
        );
        // removal: kept for keep_removed after the refresh that noticed it
        std::fs::remove_dir(r.join("new")).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        idx.refresh_at(t1);
        assert_eq!(
            idx.lookup_at(new, t1 + Duration::from_secs(1)),
            Some("/new")
        );
        idx.refresh_at(t1 + Duration::from_secs(4));
        assert_eq!(
            idx.lookup_at(new, t1 + Duration::from_secs(4)),
            Some("/new")
        );
        idx.refresh_at(t1 + Duration::from_secs(6));
        assert_eq!(idx.len(), 1);
        // within the rate limit, so the miss does not rescan either
        assert_eq!(idx.lookup_at(new, t1 + Duration::from_secs(6)), None);
    }

    #[test]
    fn real_cgroup2_hierarchy() {
        let root = default_root().expect("no cgroup v2 hierarchy mounted");
        let mut idx = CgroupIndex::scan(&root).unwrap();
        assert_eq!(idx.lookup(ino(&root)), Some("/"));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("0:: line");
        let dir = root.join(v2.trim_start_matches('/'));
        assert_eq!(idx.lookup(ino(&dir)), Some(v2));
    }
}
