//! Who caused an event, and whose filesystem it happened in, answered from
//! memory on the event path while a worker thread of its own keeps the
//! answers current.
//!
//! The event path ([`Attribution`]) only reads a shared [`Directory`]: a
//! cgroup id maps to a container id (or the host), an overlay device to the
//! container whose root filesystem it is. What it does not know yet it asks
//! the worker for and reports as pending, so the caller can hold the event
//! briefly instead of booking it to the host by a race.
//!
//! The worker owns everything slow: walking cgroupfs (the cgroup id is the
//! inode of the cgroup's directory; the runtimes' cgroup names carry the
//! container id), reading `/proc/PID/mountinfo` for a container's root
//! device, and the runtime API ([`crate::runtime`]): the list at start, an
//! inspect per new container, and the runtime's lifecycle events, so that
//! starts, restarts, renames and exits are seen as they happen. A container
//! is known by its id; its name and image are filled in when the runtime
//! answers.

use crate::cgroup::{cgroup_v2_of_pid, container_id_from_cgroup_path, CgroupIndex, CgroupMode};
use crate::runtime::{Change, ContainerInfo, DockerEngine, Runtime, Source};
use crate::stats::Owner;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// At most this many cgroup ids are remembered (a container can create
/// cgroups of its own): past it, host answers are forgotten first.
const MAX_CGROUPS: usize = 65_536;
/// Exited containers stay this long (their events arrive late, and the
/// final report names them); then only what the report needs remains.
const EXITED_GRACE: Duration = Duration::from_secs(60);
/// How often the worker lists containers when the event feed is down.
const RELIST_EVERY: Duration = Duration::from_secs(5);

/// The root overlay device `pid` sees (kernel encoding).
pub fn root_overlay_dev(pid: u32) -> Option<u32> {
    crate::mountinfo::read_mountinfo(&pid.to_string())
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.is_overlay() && m.mount_point == "/")
        .map(|m| m.kernel_dev())
}

/// One container the directory knows.
#[derive(Clone, Debug)]
pub struct Entry {
    pub info: ContainerInfo,
    /// Its root overlay device and init's cgroup, while it runs.
    pub root_dev: Option<u32>,
    pub cgroup_id: Option<u64>,
    /// Whether the runtime has described it (else: named by its id).
    pub described: bool,
    pub exited_at: Option<Instant>,
}

impl Entry {
    /// A rootless container whose processes sit in a cgroup that is not
    /// its own: only its filesystem says an event is its.
    fn shares_a_cgroup(&self) -> bool {
        self.info.source == Source::UserFiles && self.cgroup_id.is_none()
    }

    fn owner(&self) -> Owner {
        Owner {
            id: self.info.id.clone(),
            name: if self.info.name.is_empty() {
                short_id(&self.info.id).to_string()
            } else {
                self.info.name.clone()
            },
            image: self.info.image.clone(),
            pod: self.info.pod.clone(),
        }
    }
}

/// The first 12 characters of an id (by character, never mid-UTF-8).
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// What a cgroup id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attributed {
    Container(String),
    Host,
}

/// What the event path reads; the worker writes.
#[derive(Default)]
pub struct Directory {
    containers: HashMap<String, Entry>,
    by_cgroup: HashMap<u64, Attributed>,
    by_dev: HashMap<u32, String>,
    /// The runtime's first list is in (or there is no runtime).
    ready: bool,
    /// Containers gone for longer than [`EXITED_GRACE`], not yet handed
    /// to the main loop (which compacts their statistics), and every id
    /// ever handed over (so each goes once).
    exited: Vec<String>,
    handed_over: HashSet<String>,
    /// Warnings not yet shown (the main loop prints each once).
    warnings: Vec<String>,
    /// The host's cgroup mode: on all but v2 an event's overlay device
    /// decides whose it is when its cgroup names no container.
    mode: CgroupMode,
    /// Overlay devices the last list found to be no running container's
    /// root (forgotten whenever a container starts: it may take one).
    not_containers: HashSet<u32>,
    /// A hybrid host's container without a cgroup v2 id was reported.
    hybrid_warned: bool,
    /// Containers an event's cgroup named, being described (their root
    /// device, hence whose filesystem their events are in, is not known
    /// until then).
    undescribed: HashSet<String>,
}

impl Directory {
    fn upsert(&mut self, info: ContainerInfo, described: bool) -> &Entry {
        let root_dev = info.pid.and_then(root_overlay_dev);
        let cgroup_id = info.pid.and_then(|p| self.own_cgroup(p, &info));
        if let Some(dev) = root_dev {
            // Devices are reused lowest-first: the newest owner wins.
            self.by_dev.insert(dev, info.id.clone());
            self.not_containers.remove(&dev);
        }
        if let Some(cg) = cgroup_id {
            self.by_cgroup
                .insert(cg, Attributed::Container(info.id.clone()));
        }
        if info.pid.is_some() {
            // Running again: compacted again when it next exits.
            self.handed_over.remove(&info.id);
        }
        let id = info.id.clone();
        if described {
            self.undescribed.remove(&id);
        }
        let e = self.containers.entry(id).or_insert_with(|| Entry {
            info: ContainerInfo::default(),
            root_dev: None,
            cgroup_id: None,
            described: false,
            exited_at: None,
        });
        if described || !e.described {
            e.info = info;
            e.described |= described;
        }
        e.root_dev = root_dev.or(e.root_dev);
        e.cgroup_id = cgroup_id.or(e.cgroup_id);
        if e.info.pid.is_some() {
            e.exited_at = None;
        }
        e
    }

    /// The cgroup v2 id of container `info`'s process `pid`, if that cgroup
    /// is the container's own. On v2 it always is; on a hybrid host only if
    /// the runtime put the container in the unified hierarchy too (else the
    /// process sits in a cgroup it shares, such as the root or the engine's
    /// service, which must never be booked to it); on v1 there is none.
    fn own_cgroup(&mut self, pid: u32, info: &ContainerInfo) -> Option<u64> {
        match self.mode {
            CgroupMode::V2 if info.source != Source::UserFiles => {
                cgroup_v2_of_pid(pid).ok().map(|(_, id)| id)
            }
            // A rootless container without a delegated cgroup shares its
            // user's (or the root cgroup): never booked to it.
            CgroupMode::V2 => {
                let (path, id) = cgroup_v2_of_pid(pid).ok()?;
                container_id_from_cgroup_path(&path)
                    .is_some_and(|(_, c)| c == info.id)
                    .then_some(id)
            }
            CgroupMode::Hybrid => {
                let (path, id) = cgroup_v2_of_pid(pid).ok()?;
                let named = container_id_from_cgroup_path(&path).is_some_and(|(_, c)| c == info.id);
                if !named && !self.hybrid_warned {
                    self.hybrid_warned = true;
                    let name = if info.name.is_empty() {
                        short_id(&info.id)
                    } else {
                        &info.name
                    };
                    self.warnings.push(CgroupMode::hybrid_warning(name));
                }
                named.then_some(id)
            }
            CgroupMode::V1 | CgroupMode::None => None,
        }
    }

    /// A rootless container found behind overlay device `f.dev`. Not
    /// taken where another source already described that id (a user's
    /// store can claim any id). Returns whether it was taken.
    fn rootless(&mut self, f: crate::rootless::Found) -> bool {
        if self
            .containers
            .get(&f.info.id)
            .is_some_and(|e| e.described && e.info.source != Source::UserFiles)
        {
            self.not_containers.insert(f.dev);
            return false;
        }
        let id = f.info.id.clone();
        self.upsert(f.info, true);
        self.by_dev.insert(f.dev, id.clone());
        self.not_containers.remove(&f.dev);
        if let Some(e) = self.containers.get_mut(&id) {
            e.root_dev = Some(f.dev);
            e.exited_at = None;
        }
        true
    }

    /// A container stopped; returns it, with the root device it gave up.
    fn stopped(&mut self, id: &str, now: Instant) -> Option<(Entry, Option<u32>)> {
        let e = self.containers.get_mut(id)?;
        e.exited_at.get_or_insert(now);
        e.info.pid = None;
        // Its device may go to the next container: forget the mapping.
        let dev = e.root_dev.take();
        let e = e.clone();
        if let Some(dev) = dev {
            if self.by_dev.get(&dev).is_some_and(|o| o == id) {
                self.by_dev.remove(&dev);
            }
        }
        Some((e, dev))
    }

    /// Containers described from a bundle have no lifecycle events: one
    /// whose init is gone has ended. (A pid reused within one tick of
    /// [`RELIST_EVERY`] keeps it running until that process ends.)
    fn end_bundle_containers(&mut self, now: Instant) {
        let ended: Vec<String> = self
            .containers
            .values()
            .filter(|e| {
                e.exited_at.is_none() && matches!(e.info.source, Source::Files | Source::UserFiles)
            })
            .filter(|e| {
                e.info
                    .pid
                    .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            })
            .map(|e| e.info.id.clone())
            .collect();
        for id in ended {
            self.stopped(&id, now);
        }
    }

    /// Forget what has been gone long enough (keeping exited containers'
    /// own entries: the report names them).
    fn prune(&mut self, now: Instant) {
        if self.by_cgroup.len() > MAX_CGROUPS {
            self.by_cgroup.retain(|_, a| *a != Attributed::Host);
        }
        if self.by_cgroup.len() > MAX_CGROUPS {
            self.by_cgroup.clear();
        }
        let gone: HashSet<String> = self
            .containers
            .values()
            .filter(|e| {
                e.exited_at
                    .is_some_and(|t| now.duration_since(t) > EXITED_GRACE)
            })
            .map(|e| e.info.id.clone())
            .collect();
        if !gone.is_empty() {
            self.by_cgroup.retain(|_, a| match a {
                Attributed::Container(id) => !gone.contains(id),
                Attributed::Host => true,
            });
        }
        for id in gone {
            if self.handed_over.insert(id.clone()) {
                self.exited.push(id);
            }
        }
    }

    fn owner_of(&self, a: &Attributed) -> Owner {
        match a {
            Attributed::Host => Owner::host(),
            Attributed::Container(id) => match self.containers.get(id) {
                Some(e) => e.owner(),
                None => Owner {
                    id: id.clone(),
                    name: short_id(id).to_string(),
                    image: String::new(),
                    pod: None,
                },
            },
        }
    }
}

/// A change to the kernel filter for a followed container: `--container`
/// follows it across restarts (new cgroup, new root device), and a device
/// it gave up stops passing (overlay devices are reused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterUpdate {
    Add {
        cgroup_id: Option<u64>,
        root_dev: Option<u32>,
    },
    RemoveDev(u32),
}

/// The kernel's cgroup id -> names map (see `agent_ebpf::CgroupName`).
pub type KernelCgroupNames = aya::maps::HashMap<aya::maps::MapData, u64, agent_ebpf::CgroupName>;

enum Request {
    Cgroup(u64),
    /// Whose root filesystem is this overlay device (asked where the
    /// device decides an event's owner: not on v2).
    Dev(u32),
    KernelNames(Box<KernelCgroupNames>),
}

/// `parent/leaf` of a kernel-recorded cgroup name, as a cgroup path tail.
fn kernel_cgroup_path(names: &KernelCgroupNames, cg: u64) -> Option<String> {
    let n = names.get(&cg, 0).ok()?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let (parent, leaf) = (text(&n.parent), text(&n.leaf));
    (!leaf.is_empty()).then(|| format!("/{parent}/{leaf}"))
}

/// The event path's handle.
pub struct Attribution {
    dir: Arc<Mutex<Directory>>,
    requests: mpsc::UnboundedSender<Request>,
    asked: HashSet<u64>,
    asked_devs: HashSet<u32>,
    mode: CgroupMode,
    /// Filter updates for followed containers, for the main loop.
    pub filter_updates: mpsc::UnboundedReceiver<FilterUpdate>,
    follow: Arc<Mutex<HashSet<String>>>,
    _worker: std::thread::JoinHandle<()>,
}

impl Attribution {
    /// Starts the worker with the runtime found on this host (if any), on
    /// a host whose cgroups are mounted as `mode` says.
    pub fn start(mode: CgroupMode) -> Self {
        match DockerEngine::discover() {
            Some(Ok(engine)) => Self::start_with(Some(engine), mode),
            Some(Err(e)) => {
                let a = Self::start_with(None::<DockerEngine>, mode);
                a.lock()
                    .warnings
                    .push(format!("{e:#}: containers are named by their id"));
                a
            }
            None => {
                let a = Self::start_with(None::<DockerEngine>, mode);
                a.lock().warnings.push(
                    "no Docker/podman API socket found: containers are named by their id".into(),
                );
                a
            }
        }
    }

    /// Starts the worker with `runtime` (None: ids only).
    pub fn start_with<R: Runtime>(runtime: Option<R>, mode: CgroupMode) -> Self {
        let dir = Arc::new(Mutex::new(Directory {
            mode,
            warnings: mode.warning().into_iter().collect(),
            ..Default::default()
        }));
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (filter_tx, filter_rx) = mpsc::unbounded_channel();
        let follow = Arc::new(Mutex::new(HashSet::new()));
        let worker = {
            let dir = dir.clone();
            let follow = follow.clone();
            std::thread::Builder::new()
                .name("attribution".into())
                .spawn(move || {
                    // Capabilities are per thread: this one needs no more
                    // than the run keeps after attaching, so it gives up
                    // the rest at once.
                    if let Err(e) = crate::privileges::drop_after_attach() {
                        let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
                        d.warnings.push(format!("attribution worker: {e:#}"));
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
                            d.warnings.push(format!("attribution worker: {e}"));
                            d.ready = true;
                            return;
                        }
                    };
                    rt.block_on(work(runtime, dir, req_rx, filter_tx, follow));
                })
                .expect("spawn the attribution thread")
        };
        Attribution {
            dir,
            requests: req_tx,
            asked: HashSet::new(),
            asked_devs: HashSet::new(),
            mode,
            filter_updates: filter_rx,
            follow,
            _worker: worker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Directory> {
        // A panic elsewhere while holding it leaves consistent data.
        self.dir.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `timeout`) for the runtime's first list.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.lock().ready {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Warnings not shown yet (each is returned once).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().warnings)
    }

    /// The host's cgroup mode, as detected at start.
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// Running containers, as last seen.
    pub fn containers(&self) -> Vec<Entry> {
        self.lock()
            .containers
            .values()
            .filter(|e| e.exited_at.is_none())
            .cloned()
            .collect()
    }

    /// A running container by name or unambiguous id prefix (4+ chars).
    pub fn find(&self, name_or_id: &str) -> Option<Entry> {
        let wanted = name_or_id.trim_start_matches('/');
        let running = self.containers();
        if let Some(e) = running.iter().find(|e| e.info.name == wanted) {
            return Some(e.clone());
        }
        let mut m = running
            .into_iter()
            .filter(|e| wanted.len() >= 4 && e.info.id.starts_with(wanted));
        let first = m.next();
        if m.next().is_some() {
            None
        } else {
            first
        }
    }

    /// Follow containers named so: each start or restart of one sends a
    /// [`FilterUpdate`].
    pub fn follow(&self, names: impl IntoIterator<Item = String>) {
        self.follow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names);
    }

    /// The owner of cgroup `id`, or None while the worker resolves it (the
    /// caller holds the event and asks again). Always the host where cgroup
    /// ids name nobody (v1).
    pub fn owner_of_cgroup(&mut self, cgroup_id: u64) -> Option<Owner> {
        if !self.mode.has_v2_ids() {
            return Some(Owner::host());
        }
        {
            let d = self.lock();
            if let Some(a) = d.by_cgroup.get(&cgroup_id) {
                return Some(d.owner_of(a));
            }
        }
        if self.asked.len() >= MAX_CGROUPS {
            self.asked.clear();
        }
        if self.asked.insert(cgroup_id) {
            // The worker is gone only when the process is ending.
            let _ = self.requests.send(Request::Cgroup(cgroup_id));
        }
        None
    }

    /// Hands the kernel's cgroup names to the worker: cgroups already gone
    /// from cgroupfs (a container that lived for a moment) are still named.
    pub fn use_kernel_names(&self, names: KernelCgroupNames) {
        let _ = self.requests.send(Request::KernelNames(Box::new(names)));
    }

    /// The container whose root filesystem is overlay device `dev`.
    pub fn owner_of_dev(&self, dev: u32) -> Option<Owner> {
        let d = self.lock();
        let id = d.by_dev.get(&dev)?;
        d.containers.get(id).map(Entry::owner)
    }

    /// Whose root filesystem overlay device `dev` is: `Some(None)` for no
    /// container's, `None` while the worker finds out. An unknown device
    /// is asked about once and waited for: where the device decides an
    /// event's owner (not on v2), by a fresh list of the runtime's
    /// containers; on v2, by looking for a rootless container behind it
    /// ([`crate::rootless`]: an engine's containers are known by their
    /// cgroups, a rootless one's overlay and cgroup may show nowhere else).
    pub fn filesystem_of(&mut self, dev: u32) -> Option<Option<Owner>> {
        {
            let d = self.lock();
            if let Some(id) = d.by_dev.get(&dev) {
                let owner = d.containers.get(id).map(Entry::owner);
                drop(d);
                self.asked_devs.remove(&dev);
                return Some(owner);
            }
            if d.not_containers.contains(&dev) {
                drop(d);
                self.asked_devs.remove(&dev);
                return Some(None);
            }
        }
        if self.asked_devs.len() >= MAX_CGROUPS {
            self.asked_devs.clear();
        }
        if self.asked_devs.insert(dev) {
            let _ = self.requests.send(Request::Dev(dev));
        }
        None
    }

    /// Whether container `id` was named by an event's cgroup and is still
    /// being described: an event of its that happened in an overlay
    /// nobody owns yet may be in its root filesystem (the caller holds it).
    pub fn describing(&self, id: &str) -> bool {
        self.lock().undescribed.contains(id)
    }

    /// Who an event (or a write total) is booked to: the container of its
    /// cgroup; where cgroups do not tell (v1, or a hybrid host's container
    /// without a v2 cgroup of its own), the container whose root
    /// filesystem it happened in; else the host.
    pub fn owner(&self, by_cgroup: Owner, filesystem: Option<&Owner>) -> Owner {
        let fs_cgroup = match filesystem {
            Some(fs) if by_cgroup.id == Owner::host().id => {
                match self.lock().containers.get(&fs.id) {
                    Some(e) if e.cgroup_id.is_some() => FsCgroup::Own,
                    Some(e) if e.shares_a_cgroup() => FsCgroup::Shared,
                    _ => FsCgroup::Unknown,
                }
            }
            _ => FsCgroup::Unknown,
        };
        decide(self.mode, by_cgroup, filesystem, fs_cgroup)
    }

    /// Containers that exited more than [`EXITED_GRACE`] ago and were not
    /// returned before: no event of theirs is still on the way, so their
    /// per-file state can go (their totals stay for the final report).
    pub fn take_exited(&self) -> Vec<Owner> {
        let mut d = self.lock();
        let ids = std::mem::take(&mut d.exited);
        ids.into_iter()
            .map(|id| d.owner_of(&Attributed::Container(id)))
            .collect()
    }

    /// The owner with its current name and image (for rendering: a name
    /// learned after the first event replaces the id-derived one).
    pub fn describe(&self, owner: &Owner) -> Owner {
        if owner.id == Owner::host().id {
            return owner.clone();
        }
        self.lock()
            .containers
            .get(&owner.id)
            .map(Entry::owner)
            .unwrap_or_else(|| owner.clone())
    }

    /// Ids of the containers that exited at least `age` ago and have not
    /// started again.
    pub fn exited_for(&self, age: Duration) -> HashSet<String> {
        let now = Instant::now();
        self.lock()
            .containers
            .values()
            .filter(|e| e.exited_at.is_some_and(|t| now.duration_since(t) >= age))
            .map(|e| e.info.id.clone())
            .collect()
    }
}

/// What is known of the cgroup of the container whose filesystem an event
/// happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FsCgroup {
    /// A cgroup v2 id of its own (which names it).
    Own,
    /// None of its own: a rootless container left in its user's cgroup
    /// (or the root one), so a cgroup saying "host" may be it.
    Shared,
    /// Not known (not described yet, or no container's filesystem).
    Unknown,
}

/// See [`Attribution::owner`]. Who an event is booked to: the container
/// its cgroup names; else, where cgroups cannot tell, the container whose
/// root filesystem it happened in. They cannot tell on a v1 host; on a
/// hybrid host, for a container the runtime did not put in the unified
/// hierarchy; anywhere, for a container without a cgroup of its own (a
/// rootless one). Where they can, a host process writing into a
/// container's filesystem (`docker cp`) stays the host's.
fn decide(
    mode: CgroupMode,
    by_cgroup: Owner,
    filesystem: Option<&Owner>,
    fs_cgroup: FsCgroup,
) -> Owner {
    let cgroups_cannot_tell = match mode {
        CgroupMode::V2 => fs_cgroup == FsCgroup::Shared,
        CgroupMode::Hybrid => fs_cgroup != FsCgroup::Own,
        CgroupMode::V1 | CgroupMode::None => true,
    };
    match filesystem {
        Some(fs) if cgroups_cannot_tell && by_cgroup.id == Owner::host().id => fs.clone(),
        _ => by_cgroup,
    }
}

/// What the worker's runtime tasks send back.
enum Answer {
    /// The answer to a list: every running container.
    Listed(anyhow::Result<Vec<ContainerInfo>>),
    /// One container described.
    Described(ContainerInfo),
    /// No runtime could describe this container.
    Undescribed(String),
    /// Whose rootless container an overlay device is (None: nobody's).
    Rootless(u32, Option<crate::rootless::Found>),
}

/// The worker: resolves cgroup ids, follows the runtime. Runtime requests
/// run as tasks of their own, so a runtime that never answers delays
/// names, never cgroup resolution.
async fn work<R: Runtime>(
    runtime: Option<R>,
    dir: Arc<Mutex<Directory>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    filters: mpsc::UnboundedSender<FilterUpdate>,
    follow: Arc<Mutex<HashSet<String>>>,
) {
    let with = |f: &mut dyn FnMut(&mut Directory)| {
        let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d)
    };
    let mode = dir.lock().unwrap_or_else(|p| p.into_inner()).mode;
    // Rootless containers running now, and fuse-overlayfs mounts (said
    // once, at start: nothing in them can be traced), before the first
    // list makes attribution ready.
    let (found, fuse) = crate::rootless::scan();
    with(&mut |d| {
        for f in found.iter().cloned() {
            d.rootless(f);
        }
        d.warnings
            .extend(fuse.iter().map(crate::rootless::FuseMount::warning));
    });
    // Where cgroup ids name nobody, cgroupfs is not walked (see
    // `CgroupMode::warning`, said at start).
    let mut cgroups = if mode.has_v2_ids() {
        crate::cgroup::default_root().and_then(|r| CgroupIndex::scan(r).ok())
    } else {
        None
    };
    let runtime = runtime.map(Arc::new);
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    // One list at a time (`listing`).
    let mut listing = false;
    let spawn_list = |rt: &Arc<R>, listing: &mut bool| {
        if std::mem::replace(listing, true) {
            return;
        }
        let (rt, tx) = (rt.clone(), answers_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Answer::Listed(rt.list().await));
        });
    };
    // The runtime API first; a container it does not know (containerd's
    // own, the kubelet's, podman's without its API service) is described
    // from the runtime's files.
    let spawn_describe = |rt: Option<&Arc<R>>, id: String| {
        let (rt, tx) = (rt.cloned(), answers_tx.clone());
        tokio::spawn(async move {
            let known = match rt {
                Some(rt) => rt.inspect(&id).await.ok().flatten(),
                None => None,
            };
            let info = match known {
                Some(info) => Some(info),
                None => tokio::task::spawn_blocking({
                    let id = id.clone();
                    move || {
                        crate::bundle::describe(&id).or_else(|| crate::podman_store::describe(&id))
                    }
                })
                .await
                .ok()
                .flatten(),
            };
            let _ = tx.send(match info {
                Some(info) => Answer::Described(info),
                None => Answer::Undescribed(id),
            });
        });
    };
    let mut feed = match &runtime {
        Some(rt) => {
            spawn_list(rt, &mut listing);
            Some(rt.changes())
        }
        None => {
            with(&mut |d| d.ready = true);
            None
        }
    };
    let mut relist =
        tokio::time::interval_at(tokio::time::Instant::now() + RELIST_EVERY, RELIST_EVERY);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut new_ids = Vec::new();
    let mut names = None;
    // Overlay devices asked about (v1 and hybrid hosts): a container that
    // started a moment ago may own one, so each is answered by a list
    // started after it was asked (`devs_new` wait for the running list to
    // end; `devs_listing` for the list running now).
    let mut devs_new: HashSet<u32> = HashSet::new();
    let mut devs_listing: HashSet<u32> = HashSet::new();
    loop {
        tokio::select! {
            req = requests.recv() => {
                let Some(req) = req else { return };
                handle_request(&dir, req, &mut cgroups, &mut names, &mut new_ids, &mut devs_new);
                while let Ok(req) = requests.try_recv() {
                    handle_request(&dir, req, &mut cgroups, &mut names, &mut new_ids, &mut devs_new);
                }
                // On v2 an engine's containers are known by their cgroups:
                // an unknown overlay is a rootless container's or nobody's.
                if mode == CgroupMode::V2 {
                    for dev in devs_new.drain() {
                        let tx = answers_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.send(Answer::Rootless(dev, crate::rootless::find_dev(dev, None)));
                        });
                    }
                }
                match &runtime {
                    Some(rt) if !listing && !devs_new.is_empty() => {
                        devs_listing.extend(devs_new.drain());
                        spawn_list(rt, &mut listing);
                    }
                    Some(_) => {}
                    // Nobody to ask: no container's.
                    None => with(&mut |d| d.not_containers.extend(devs_new.drain())),
                }
            }
            Some(answer) = answers.recv() => match answer {
                Answer::Listed(result) => {
                    listing = false;
                    listed(&dir, result, runtime.as_deref(), &mut devs_listing);
                    if let (Some(rt), false) = (&runtime, devs_new.is_empty()) {
                        devs_listing.extend(devs_new.drain());
                        spawn_list(rt, &mut listing);
                    }
                }
                Answer::Undescribed(id) => with(&mut |d| {
                    d.undescribed.remove(&id);
                }),
                Answer::Rootless(dev, mut found) => with(&mut |d| {
                    let taken = match found.take() {
                        Some(f) => d.rootless(f),
                        None => false,
                    };
                    if !taken {
                        if d.not_containers.len() > MAX_CGROUPS {
                            d.not_containers.clear();
                        }
                        d.not_containers.insert(dev);
                    }
                }),
                Answer::Described(info) => {
                    let running = info.pid.is_some();
                    let mut update = None;
                    with(&mut |d| {
                        let e = d.upsert(info.clone(), true);
                        update = Some(FilterUpdate::Add { cgroup_id: e.cgroup_id, root_dev: e.root_dev });
                    });
                    let followed = follow
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&info.name);
                    if let (true, true, Some(u)) = (followed, running, update) {
                        let _ = filters.send(u);
                    }
                }
            },
            change = async { feed.as_mut().unwrap().next().await }, if feed.is_some() => match change {
                Some(Ok(Change::Started(id))) => {
                    // It may have taken a device a list found free.
                    with(&mut |d| d.not_containers.clear());
                    new_ids.push(id);
                }
                Some(Ok(Change::Updated(id))) => new_ids.push(id),
                Some(Ok(Change::Stopped(id))) => {
                    let mut gone = None;
                    with(&mut |d| gone = d.stopped(&id, Instant::now()));
                    if let Some((e, Some(dev))) = gone {
                        if follow.lock().unwrap_or_else(|p| p.into_inner()).contains(&e.info.name) {
                            let _ = filters.send(FilterUpdate::RemoveDev(dev));
                        }
                    }
                }
                // The feed broke: relist and resubscribe on the next tick.
                Some(Err(_)) | None => feed = None,
            },
            _ = relist.tick() => {
                with(&mut |d| {
                    d.end_bundle_containers(Instant::now());
                    d.prune(Instant::now());
                });
                if let (Some(rt), None) = (&runtime, &feed) {
                    feed = Some(rt.changes());
                    spawn_list(rt, &mut listing);
                }
            }
        }
        for id in new_ids.drain(..) {
            spawn_describe(runtime.as_ref(), id);
        }
    }
}

/// A list of the running containers came back: containers gone since
/// the last are stopped, the listed ones (re)described with their root
/// devices, and the devices asked about that none of them owns are no
/// container's.
fn listed<R: Runtime>(
    dir: &Arc<Mutex<Directory>>,
    result: anyhow::Result<Vec<ContainerInfo>>,
    runtime: Option<&R>,
    devs: &mut HashSet<u32>,
) {
    let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(list) => {
            let now = Instant::now();
            let running: HashSet<&str> = list.iter().map(|c| c.id.as_str()).collect();
            let stale: Vec<String> = d
                .containers
                .values()
                // Containers described from a runtime's files are not in
                // the engine's list; their end is seen from their init.
                .filter(|e| {
                    e.exited_at.is_none()
                        && e.described
                        && e.info.source == Source::Engine
                        && !running.contains(e.info.id.as_str())
                })
                .map(|e| e.info.id.clone())
                .collect();
            for id in stale {
                d.stopped(&id, now);
            }
            for c in &list {
                d.upsert(c.clone(), true);
            }
        }
        Err(e) => {
            if !d.ready {
                let msg = format!(
                    "{} unavailable ({e:#}): containers are named by their id until it answers",
                    runtime.map(|r| r.describe()).unwrap_or_default()
                );
                d.warnings.push(msg);
            }
        }
    }
    d.ready = true;
    if d.not_containers.len() > MAX_CGROUPS {
        d.not_containers.clear();
    }
    for dev in devs.drain() {
        if !d.by_dev.contains_key(&dev) {
            d.not_containers.insert(dev);
        }
    }
}

/// Resolve one cgroup id from cgroupfs, or from the names the kernel
/// recorded when the cgroup is gone; a container the directory does not
/// know yet is added by id and queued to be described. Devices asked about
/// go to `devs` (answered by the next list).
fn handle_request(
    dir: &Arc<Mutex<Directory>>,
    req: Request,
    cgroups: &mut Option<CgroupIndex>,
    names: &mut Option<Box<KernelCgroupNames>>,
    to_describe: &mut Vec<String>,
    devs: &mut HashSet<u32>,
) {
    let cg = match req {
        Request::Cgroup(cg) => cg,
        Request::Dev(dev) => {
            devs.insert(dev);
            return;
        }
        Request::KernelNames(map) => {
            *names = Some(map);
            return;
        }
    };
    let path = cgroups
        .as_mut()
        .and_then(|c| c.lookup(cg).map(str::to_string))
        .or_else(|| kernel_cgroup_path(names.as_ref()?, cg));
    let attributed = match path.as_deref().and_then(container_id_from_cgroup_path) {
        Some((_runtime, id)) => Attributed::Container(id),
        None => Attributed::Host,
    };
    let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
    if let Attributed::Container(id) = &attributed {
        if !d.containers.contains_key(id) {
            d.upsert(
                ContainerInfo {
                    id: id.clone(),
                    ..Default::default()
                },
                false,
            );
            to_describe.push(id.clone());
            d.undescribed.insert(id.clone());
        }
    }
    d.by_cgroup.insert(cg, attributed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_never_split_a_character() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short_id("ab"), "ab");
    }

    #[test]
    fn a_name_learned_later_keeps_the_identity() {
        let mut d = Directory::default();
        let id = "a".repeat(64);
        d.upsert(
            ContainerInfo {
                id: id.clone(),
                ..Default::default()
            },
            false,
        );
        let before = d.owner_of(&Attributed::Container(id.clone()));
        assert_eq!(before.name, "aaaaaaaaaaaa");
        d.upsert(
            ContainerInfo {
                id: id.clone(),
                name: "nginx".into(),
                image: "nginx:1".into(),
                ..Default::default()
            },
            true,
        );
        let after = d.owner_of(&Attributed::Container(id.clone()));
        assert_eq!(after.name, "nginx");
        assert_eq!(before, after, "one container, one identity");
        // An id-only sighting never overwrites what the runtime said.
        d.upsert(
            ContainerInfo {
                id: id.clone(),
                ..Default::default()
            },
            false,
        );
        assert_eq!(d.owner_of(&Attributed::Container(id)).name, "nginx");
    }

    #[test]
    fn a_stopped_container_gives_up_its_device() {
        let mut d = Directory::default();
        d.by_dev.insert(7, "x".into());
        d.containers.insert(
            "x".into(),
            Entry {
                info: ContainerInfo {
                    id: "x".into(),
                    ..Default::default()
                },
                root_dev: Some(7),
                cgroup_id: None,
                described: true,
                exited_at: None,
            },
        );
        d.stopped("x", Instant::now());
        assert!(!d.by_dev.contains_key(&7));
        assert!(d.containers["x"].exited_at.is_some());
    }

    #[test]
    fn an_exited_container_is_handed_over_once_after_its_grace() {
        let mut d = Directory::default();
        for id in ["old", "new"] {
            d.upsert(
                ContainerInfo {
                    id: id.into(),
                    ..Default::default()
                },
                true,
            );
        }
        let now = Instant::now();
        let Some(long_ago) = now.checked_sub(EXITED_GRACE + Duration::from_secs(1)) else {
            return; // a machine up for less than the grace period
        };
        d.stopped("old", long_ago);
        d.stopped("new", now);
        d.prune(now);
        assert_eq!(d.exited, ["old"]);
        d.exited.clear();
        d.prune(now);
        assert!(d.exited.is_empty(), "handed over twice");
    }

    fn owner(id: &str) -> Owner {
        Owner {
            id: id.into(),
            name: format!("{id}-name"),
            image: String::new(),
            pod: None,
        }
    }

    #[test]
    fn where_cgroups_name_nobody_the_filesystem_decides() {
        let (host, web) = (Owner::host(), owner("web"));
        for mode in [CgroupMode::V1, CgroupMode::None, CgroupMode::Hybrid] {
            assert_eq!(
                decide(mode, host.clone(), Some(&web), FsCgroup::Unknown),
                web,
                "{mode:?}"
            );
            assert_eq!(
                decide(mode, host.clone(), None, FsCgroup::Unknown),
                host,
                "{mode:?}"
            );
        }
        // v2: the cgroup is right, `docker cp` into web is the host's; so
        // on a hybrid host where web has a cgroup v2 id of its own.
        assert_eq!(
            decide(CgroupMode::V2, host.clone(), Some(&web), FsCgroup::Unknown),
            host
        );
        assert_eq!(
            decide(CgroupMode::Hybrid, host.clone(), Some(&web), FsCgroup::Own),
            host
        );
        // A container's own cgroup always wins.
        let db = owner("db");
        for mode in [CgroupMode::V2, CgroupMode::Hybrid] {
            for fs in [FsCgroup::Own, FsCgroup::Shared, FsCgroup::Unknown] {
                assert_eq!(decide(mode, db.clone(), Some(&web), fs), db);
            }
        }
    }

    #[test]
    fn a_rootless_container_without_its_own_cgroup_is_known_by_its_filesystem() {
        let (host, rl) = (Owner::host(), owner("rl"));
        // Its cgroup (its user's, or the root one) says host: on v2 too,
        // an event in its overlay is its.
        assert_eq!(
            decide(CgroupMode::V2, host.clone(), Some(&rl), FsCgroup::Shared),
            rl
        );
        let mut d = Directory::default();
        let found = |id: &str, dev| crate::rootless::Found {
            info: ContainerInfo {
                id: id.into(),
                name: "rlpm".into(),
                source: Source::UserFiles,
                ..Default::default()
            },
            dev,
            storage: "/home/u/s".into(),
            uid: 1000,
        };
        d.not_containers.insert(40);
        assert!(d.rootless(found("r", 40)));
        assert_eq!(d.by_dev[&40], "r");
        assert!(!d.not_containers.contains(&40));
        assert!(d.containers["r"].shares_a_cgroup());
        // A user's store claiming the id of a container another source
        // described does not rename it, nor take its device.
        d.upsert(
            ContainerInfo {
                id: "web".into(),
                name: "web".into(),
                ..Default::default()
            },
            true,
        );
        assert!(!d.rootless(found("web", 41)));
        assert_eq!(d.containers["web"].info.name, "web");
        assert!(!d.by_dev.contains_key(&41) && d.not_containers.contains(&41));
    }

    #[test]
    fn a_list_answers_the_devices_asked_about() {
        let mut d = Directory {
            mode: CgroupMode::V1,
            ..Default::default()
        };
        d.by_dev.insert(7, "web".into());
        let dir = Arc::new(Mutex::new(d));
        let mut asked = HashSet::from([7, 9]);
        listed::<DockerEngine>(&dir, Ok(Vec::new()), None, &mut asked);
        let d = dir.lock().unwrap();
        // 7 belongs to a container the list did not describe (it stays
        // until a stop says otherwise); 9 is no container's.
        assert!(d.not_containers.contains(&9) && !d.not_containers.contains(&7));
        assert!(asked.is_empty() && d.ready);
    }

    #[test]
    fn cgroup_memory_is_bounded() {
        let mut d = Directory::default();
        for i in 0..(MAX_CGROUPS as u64 + 10) {
            d.by_cgroup.insert(i, Attributed::Host);
        }
        d.prune(Instant::now());
        assert!(d.by_cgroup.len() <= MAX_CGROUPS);
    }
}
