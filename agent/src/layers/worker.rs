//! The event path asks, a worker thread answers: which layer holds an
//! event's path in a container's root filesystem, and which copy-ups
//! changed nothing.
//!
//! The event path ([`Layers::lookup`]) only reads answers from memory and
//! queues questions; the caller holds the event (in order, like events
//! waiting for attribution) until the answer is in or it waited long
//! enough. The worker fetches each container's layers once from the
//! runtime ([`super::image`]; lower layers never change, so answers never
//! go stale) and walks the lower directories ([`super::lookup`]). Each
//! copy-up it placed is remembered, and checked against its lower layer
//! ([`super::unchanged`]) whenever a report is about to be written.
//!
//! Memory is bounded: at most [`MAX_CONTAINERS`] containers' layers are
//! kept; a question and its answer are kept only while a held event waits
//! on them ([`super::pending`]), at most [`MAX_PENDING`] at once; the
//! worker skips questions every asker gave up on; at most [`MAX_TRACKED`]
//! copy-ups are remembered (the others are counted as not checked).

use super::advice::{self, Advice, Rule};
use super::changes::{self, ChangeList};
use super::image::{self, ImageCache, ImageLayers};
use super::lookup::{topmost_holding, Found};
use super::pending::{Pending, Want};
use super::unchanged::{examine, Verdict};
use super::{mounted, storage};
use super::{LayerAnswer, LayerRef, Unknown};
use crate::event::{escape_bytes, KernelEvent, Kind};
use crate::runtime::DockerEngine;
use crate::stats::Owner;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Containers whose layers are kept; past it, all are forgotten (and
/// fetched again when asked about).
pub const MAX_CONTAINERS: usize = 256;
/// Questions some held event waits on (answered or not). Each costs its
/// key (a 64-byte container id and the path, at most 16 names of 64
/// bytes, as the kernel reports them) plus about 150 bytes of strings'
/// and the map's overhead: about 250 bytes for a typical path, 1.2 KiB at
/// most, so 4 MiB typical and 20 MiB at worst. Past it, a new question
/// is not asked and its event goes out at once as unknown (`TooSlow`,
/// counted in `layers_unknown`). Held events bound it before that.
pub const MAX_PENDING: usize = 16_384;
/// Copy-ups remembered to be checked for changing nothing, all
/// containers together.
pub const MAX_TRACKED: usize = 16_384;
/// Paths of copy-ups that changed nothing shown per container.
pub const UNCHANGED_PATHS: usize = 10;
/// A container whose layers could not be fetched is asked about again
/// after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Containers running at start whose layers are fetched before their
/// first event.
const PREFETCH: usize = 64;
/// Copy-ups checked between two looks at the questions waiting.
const CHECK_SLICE: usize = 64;
/// Copy-ups looked at again by one interval's check, in turn (the end's
/// check looks at all). Each look walks two paths (the object in the
/// upper and the lower layer); looking at all [`MAX_TRACKED`] every 5 s
/// interval, twice over, was likely the soak's main CPU cost. The others keep what their
/// last look found.
pub const CHECK_BUDGET: usize = 1_024;

/// (container id, path relative to its root)
type Key = (String, Vec<u8>);

/// What a copy-up cost (for the copy-ups that changed nothing).
#[derive(Clone, Copy, Debug)]
struct Cost {
    latency_ns: u64,
    bytes: u64,
}

enum Request {
    Lookup(Key, Option<Cost>),
    /// Check the remembered copy-ups again (all of them, or the next
    /// [`CHECK_BUDGET`] in turn) and publish the result.
    Evaluate {
        all: bool,
    },
    /// A container's change list, sent back.
    Changes(String, std::sync::mpsc::Sender<Option<ChangeList>>),
}

/// Sums of copy-ups that changed nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub count: u64,
    pub bytes: u64,
    pub total_ns: u64,
}

/// One container's copy-ups that changed nothing, as last checked.
#[derive(Clone, Debug, Default)]
pub struct UnchangedTotals {
    pub sums: Sums,
    /// Copy-ups checked (those whose lower and upper could be compared).
    pub checked: u64,
    /// Copy-ups not checked: past [`MAX_TRACKED`], a side unreadable, or
    /// their event gave up waiting for its layer before the worker came
    /// to it.
    pub not_checked: u64,
    /// The first [`UNCHANGED_PATHS`], escaped as event paths are.
    pub paths: Vec<String>,
    /// By layer index.
    pub by_layer: BTreeMap<u32, Sums>,
    /// What the rules that look at the checked copy-ups advise.
    pub advice: Vec<Advice>,
}

/// Every container's [`UnchangedTotals`], by container id.
pub type UnchangedReport = HashMap<String, UnchangedTotals>;

struct Shared {
    /// Questions held events wait on, and their answers.
    pending: Pending<Key, LayerAnswer>,
    unchanged: Arc<UnchangedReport>,
    /// Bumped each time `unchanged` is published.
    generation: u64,
    /// Copy-ups the worker remembers (and untracked ones counted).
    tracked: usize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            pending: Pending::new(MAX_PENDING),
            unchanged: Arc::default(),
            generation: 0,
            tracked: 0,
        }
    }
}

/// What asking about an event's layer gave.
#[derive(Debug)]
pub enum Asked {
    /// Known without a question: no container's overlay, or a cut path.
    Now(LayerAnswer),
    /// The event waits on a question: [`Layers::take`] until it has the
    /// answer, or [`Layers::give_up`], exactly once either way.
    Waiting(Ticket),
}

/// One event's interest in its question.
#[derive(Debug)]
pub struct Ticket {
    /// The container whose root filesystem the event happened in.
    container: String,
}

/// The event path's side.
pub struct Layers {
    shared: Arc<Mutex<Shared>>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Layers {
    /// Starts the worker (its own thread, with the capabilities the run
    /// keeps after attaching).
    pub fn start() -> Layers {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let theirs = shared.clone();
        // Without the thread no question is answered: events go out as
        // unknown after their hold, counted.
        let _ = std::thread::Builder::new()
            .name("layers".into())
            .spawn(move || {
                let _ = crate::privileges::drop_after_attach();
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let engine = DockerEngine::discover().and_then(Result::ok);
                rt.block_on(work(engine, theirs, rx));
            });
        Layers {
            shared,
            requests: tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks which layer is behind `ev` in the root filesystem of `fs`
    /// (the container whose overlay it is, if any). Asked as soon as the
    /// event's filesystem is known, not when it reaches the front of the
    /// held events: the worker answers the questions of all held events
    /// meanwhile, not one per pass of the event loop.
    pub fn ask(&mut self, fs: Option<&Owner>, ev: &KernelEvent) -> Asked {
        let Some(fs) = fs else {
            return Asked::Now(LayerAnswer::NoLayer);
        };
        if fs.id == Owner::host().id {
            return Asked::Now(LayerAnswer::NoLayer);
        }
        if ev.path_cut || ev.names_cut.iter().any(|&c| c) {
            return Asked::Now(LayerAnswer::Unknown(Unknown::PathCut));
        }
        let key = (fs.id.clone(), ev.path.clone());
        let want = self.lock().pending.want(key.clone());
        match want {
            Want::Full => return Asked::Now(LayerAnswer::Unknown(Unknown::TooSlow)),
            Want::Joined => {}
            Want::Ask => {
                // Only an operation's target is worth checking for changing
                // nothing (a parent directory is copied up for its child).
                let cost = match &ev.kind {
                    Kind::CopyUp(c) if !c.ancestor => Some(Cost {
                        latency_ns: c.latency_ns,
                        bytes: c.bytes,
                    }),
                    _ => None,
                };
                // The worker is gone only when the process is ending.
                let _ = self.requests.send(Request::Lookup(key, cost));
            }
        }
        Asked::Waiting(Ticket {
            container: fs.id.clone(),
        })
    }

    /// The answer `ticket` (asked for `ev`) waits on, if in (its interest
    /// then ends).
    pub fn take(&mut self, ticket: &Ticket, ev: &KernelEvent) -> Option<LayerAnswer> {
        let key = (ticket.container.clone(), ev.path.clone());
        self.lock().pending.take(&key)
    }

    /// Ends the wait of an event that waited long enough: its answer if it
    /// came meanwhile, else unknown (too slow).
    pub fn give_up(&mut self, ticket: Ticket, ev: &KernelEvent) -> LayerAnswer {
        let key = (ticket.container, ev.path.clone());
        self.lock()
            .pending
            .give_up(&key)
            .unwrap_or(LayerAnswer::Unknown(Unknown::TooSlow))
    }

    /// Questions some event waits on (for tests and the end).
    pub fn open_questions(&self) -> usize {
        self.lock().pending.len()
    }

    /// Questions open now and the most open at once (the JSON's
    /// `agent.layer_questions`).
    pub fn question_counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.pending.len(), s.pending.peak())
    }

    /// Asks for the copy-ups to be checked again (for the next report).
    pub fn evaluate(&self) {
        let _ = self.requests.send(Request::Evaluate { all: false });
    }

    /// Asks for a check and waits for it, at most `limit` (the final
    /// report); the last result either way.
    pub fn evaluate_and_wait(&self, limit: Duration) -> Arc<UnchangedReport> {
        let (before, tracked, open) = {
            let s = self.lock();
            (s.generation, s.tracked, s.pending.len())
        };
        // Nothing to check and no question open: no need to wait (a
        // runtime that never answers must not delay the end).
        if tracked == 0 && open == 0 {
            return self.unchanged();
        }
        let _ = self.requests.send(Request::Evaluate { all: true });
        let until = Instant::now() + limit;
        while self.lock().generation == before && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.unchanged()
    }

    /// The copy-ups that changed nothing, as last checked.
    pub fn unchanged(&self) -> Arc<UnchangedReport> {
        self.lock().unchanged.clone()
    }

    /// What container `id` changed, `docker diff`-style (None: its layers
    /// are not known, or no answer within `limit`).
    pub fn changes(&self, id: &str, limit: Duration) -> Option<ChangeList> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.requests
            .send(Request::Changes(id.to_string(), tx))
            .ok()?;
        rx.recv_timeout(limit).ok().flatten()
    }
}

/// What the worker knows of one container.
enum Known {
    Layers(Arc<ImageLayers>),
    Failed(Instant),
}

/// What the last look at a tracked copy-up found (nothing before the
/// first look).
#[derive(Clone, Copy, Debug, Default)]
struct Look {
    sizes: Option<super::unchanged::Sizes>,
    verdict: Option<Verdict>,
}

/// Looks at one copy-up's object in the upper and the lower layer.
fn look(t: &mut Tracked) {
    let lower = &t.layers.lowers[t.lower].dir;
    t.last = match &t.layers.upper {
        Some(upper) => {
            let (sizes, verdict) = examine(lower, upper, &t.path);
            Look {
                sizes,
                verdict: verdict.ok(),
            }
        }
        None => Look::default(),
    };
}

/// A copy-up placed in a lower layer, to be checked.
struct Tracked {
    container: Arc<str>,
    path: Vec<u8>,
    layers: Arc<ImageLayers>,
    lower: usize,
    layer: Option<Arc<LayerRef>>,
    cost: Cost,
    last: Look,
}

struct Worker {
    /// Copy-ups tracked or counted as untracked so far.
    shared_tracked: usize,
    client: Option<Docker>,
    root: Option<PathBuf>,
    containers: HashMap<String, Known>,
    /// Each image's layers, read once for all its containers.
    images: ImageCache,
    tracked: Vec<Tracked>,
    /// Copy-ups past [`MAX_TRACKED`], per container.
    untracked: HashMap<String, u64>,
    /// The copy-up the last check looked at last.
    cursor: usize,
}

impl Worker {
    fn new(client: Option<Docker>) -> Self {
        Worker {
            shared_tracked: 0,
            client,
            root: None,
            containers: HashMap::new(),
            images: ImageCache::default(),
            tracked: Vec::new(),
            untracked: HashMap::new(),
            cursor: 0,
        }
    }

    async fn layers_of(&mut self, id: &str) -> Option<Arc<ImageLayers>> {
        match self.containers.get(id) {
            Some(Known::Layers(l)) => return Some(l.clone()),
            Some(Known::Failed(at)) if at.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        let fetched = self.fetch(id).await;
        if self.containers.len() >= MAX_CONTAINERS {
            self.containers.clear();
        }
        let known = match fetched {
            Some(l) => Known::Layers(Arc::new(l)),
            None => Known::Failed(Instant::now()),
        };
        self.containers.insert(id.to_string(), known);
        match self.containers.get(id) {
            Some(Known::Layers(l)) => Some(l.clone()),
            _ => None,
        }
    }

    /// Container `id`'s layers from whichever runtime keeps it: the
    /// engine's API and layer store; else podman's containers-storage;
    /// else, for a container described from its OCI bundle (containerd),
    /// the lower directories of its init's root overlay, by position only;
    /// else, for a rootless podman container, its user's store.
    /// An engine that knows the container but cannot say its layers, or
    /// does not answer, gives no guess by position (its own layers, such
    /// as Docker's `-init`, would be counted as the image's). A user's
    /// store comes last: it can name any id, and must not describe the
    /// layers of a container a runtime keeps.
    async fn fetch(&mut self, id: &str) -> Option<ImageLayers> {
        if let Some(client) = &self.client {
            if self.root.is_none() {
                self.root = image::data_root(client).await.ok();
            }
            let root = self.root.as_ref()?;
            match image::fetch(client, root, id, &mut self.images).await {
                Ok(l) => return Some(l),
                Err(e) if e.is::<image::UnknownToEngine>() => {}
                Err(_) => return None,
            }
        }
        match storage::fetch(std::path::Path::new(storage::STORAGE_ROOT), id) {
            Ok(Some(l)) => return Some(l),
            Ok(None) => {}
            Err(_) => return None,
        }
        if let Some(c) = crate::bundle::describe(id) {
            return mounted::of_pid(c.pid?).ok();
        }
        let root = crate::rootless::storage_root_of(id)?;
        storage::fetch(&root, id).ok().flatten()
    }

    async fn changes(&mut self, id: &str) -> Option<ChangeList> {
        let layers = self.layers_of(id).await?;
        changes::list(&layers)
    }

    async fn answer(&mut self, (id, path): &Key, cost: Option<Cost>) -> LayerAnswer {
        let Some(layers) = self.layers_of(id).await else {
            return LayerAnswer::Unknown(Unknown::NoLayerData);
        };
        let dirs: Vec<&PathBuf> = layers.lowers.iter().map(|l| &l.dir).collect();
        let found = topmost_holding(&dirs, path);
        if let (Ok(Found::In(i)), Some(cost)) = (&found, cost) {
            self.shared_tracked += 1;
            if self.tracked.len() < MAX_TRACKED {
                self.tracked.push(Tracked {
                    container: Arc::from(id.as_str()),
                    path: path.clone(),
                    layers: layers.clone(),
                    lower: *i,
                    layer: layers.lowers[*i].layer.clone(),
                    cost,
                    last: Look::default(),
                });
            } else {
                *self.untracked.entry(id.clone()).or_default() += 1;
            }
        }
        match found {
            Ok(Found::In(i)) => match &layers.lowers[i].layer {
                Some(l) => LayerAnswer::Layer(l.clone()),
                // Docker's `-init` layer.
                None => LayerAnswer::NoLayer,
            },
            Ok(Found::Nowhere) => LayerAnswer::NoLayer,
            Err(_) => LayerAnswer::Unknown(Unknown::LookupFailed),
        }
    }
}

/// Answers the questions waiting now (between slices of other work); a
/// check asked for meanwhile (`Some(all)`) is left to the caller.
async fn answer_waiting(
    w: &mut Worker,
    shared: &Mutex<Shared>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Option<bool> {
    let mut evaluate = None;
    while let Ok(r) = requests.try_recv() {
        match r {
            Request::Lookup(key, cost) => lookup(w, shared, key, cost).await,
            Request::Evaluate { all } => evaluate = Some(evaluate.unwrap_or(false) | all),
            Request::Changes(id, reply) => {
                let _ = reply.send(w.changes(&id).await);
            }
        }
    }
    evaluate
}

/// (image id, path) -> the containers that copied it up, the bytes they
/// copied, its layer.
type SharedCopies<'a> =
    HashMap<(&'a str, &'a [u8]), (HashSet<&'a str>, u64, Option<&'a Arc<LayerRef>>)>;

/// Looks again at the next [`CHECK_BUDGET`] remembered copy-ups in turn
/// (`all`: at every one), answering questions between slices, and
/// publishes the totals of what each copy-up's last look found.
async fn evaluate(
    w: &mut Worker,
    shared: &Mutex<Shared>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    all: bool,
) {
    let n = w.tracked.len();
    let mut looks = if all { n } else { n.min(CHECK_BUDGET) };
    let mut done = 0;
    while done < looks {
        for _ in 0..CHECK_SLICE.min(looks - done) {
            w.cursor = (w.cursor + 1) % n;
            look(&mut w.tracked[w.cursor]);
            done += 1;
        }
        // A check asked for meanwhile is this one; one of every copy-up
        // (the end's) looks at each from here on.
        if answer_waiting(w, shared, requests).await == Some(true) {
            looks = looks.max(done + n);
        }
    }
    let mut report: UnchangedReport = HashMap::new();
    for (id, n) in &w.untracked {
        report.entry(id.clone()).or_default().not_checked += n;
    }
    // (image, path) -> containers that copied it up, for the advice.
    let mut shared_copies: SharedCopies = HashMap::new();
    for t in &w.tracked {
        let r = report.entry(t.container.to_string()).or_default();
        if let Some(sz) = t.last.sizes {
            if let Some(a) = size_advice(t, sz) {
                if r.advice.iter().filter(|x| x.rule == a.rule).count() < advice::MAX_PER_RULE {
                    r.advice.push(a);
                }
            }
        }
        match t.last.verdict {
            None => r.not_checked += 1,
            Some(Verdict::Changed) => r.checked += 1,
            Some(Verdict::Unchanged) => {
                r.checked += 1;
                add(&mut r.sums, t.cost);
                if r.paths.len() < UNCHANGED_PATHS {
                    r.paths.push(escape_bytes(&t.path));
                }
                if let Some(l) = &t.layer {
                    add(r.by_layer.entry(l.index).or_default(), t.cost);
                }
            }
        }
    }
    for t in &w.tracked {
        if let Some(image) = t.layers.image_id.as_deref() {
            let e = shared_copies.entry((image, &t.path)).or_default();
            if e.0.insert(&t.container) {
                e.1 += t.cost.bytes;
            }
            e.2 = t.layer.as_ref();
        }
    }
    let mut shared_list: Vec<_> = shared_copies
        .into_iter()
        .filter(|(_, (cs, _, _))| cs.len() >= advice::SHARED_MIN_CONTAINERS)
        .collect();
    // Most containers first, then by path.
    shared_list.sort_by(|a, b| b.1 .0.len().cmp(&a.1 .0.len()).then(a.0 .1.cmp(b.0 .1)));
    for ((_, path), (containers, bytes, layer)) in shared_list {
        let a = Advice {
            rule: Rule::BakeIntoImage,
            path: Some(escape_bytes(path)),
            layer: layer.cloned(),
            count: containers.len() as u64,
            bytes,
            total_ns: None,
            unchanged: 0,
            what: format!(
                "/{} was copied up by {} containers of this image ({} in all): bake the change into the image",
                escape_bytes(path),
                containers.len(),
                crate::live::fmt_bytes(bytes)
            ),
        };
        for c in containers {
            let r = report.entry(c.to_string()).or_default();
            if r.advice.iter().filter(|x| x.rule == a.rule).count() < advice::MAX_PER_RULE {
                r.advice.push(a.clone());
            }
        }
    }
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.unchanged = Arc::new(report);
    s.generation += 1;
}

/// The rules that look at one copy-up's sizes: a log-like file that grew
/// after its copy-up; a large copy for a small change.
fn size_advice(t: &Tracked, sz: super::unchanged::Sizes) -> Option<Advice> {
    if !sz.regular_file || t.cost.bytes == 0 {
        return None;
    }
    let path = escape_bytes(&t.path);
    let grew = sz.upper.saturating_sub(sz.lower);
    if advice::log_like(&t.path) && sz.upper > sz.lower {
        let dir = match path.rsplit_once('/') {
            Some((d, _)) => format!("/{d}"),
            None => "/".to_string(),
        };
        return Some(Advice {
            rule: Rule::LogInImage,
            path: Some(path.clone()),
            layer: t.layer.clone(),
            count: 1,
            bytes: t.cost.bytes,
            total_ns: Some(t.cost.latency_ns),
            unchanged: 0,
            what: format!(
                "/{path} came from the image and was copied up ({}) to append {}: mount a volume or a tmpfs at {dir} (or start the log empty)",
                crate::live::fmt_bytes(t.cost.bytes),
                crate::live::fmt_bytes(grew)
            ),
        });
    }
    let change = sz.upper.abs_diff(sz.lower);
    if t.cost.bytes >= advice::LARGE_COPY_BYTES
        && change <= t.cost.bytes / advice::SMALL_CHANGE_RATIO
    {
        return Some(Advice {
            rule: Rule::LargeCopySmallChange,
            path: Some(path.clone()),
            layer: t.layer.clone(),
            count: 1,
            bytes: t.cost.bytes,
            total_ns: Some(t.cost.latency_ns),
            unchanged: 0,
            what: format!(
                "/{path}: {} copied up for a change of its size by {}: keep files that change small, or outside the image (a volume)",
                crate::live::fmt_bytes(t.cost.bytes),
                crate::live::fmt_bytes(change)
            ),
        });
    }
    None
}

fn add(s: &mut Sums, c: Cost) {
    s.count += 1;
    s.bytes += c.bytes;
    s.total_ns += c.latency_ns;
}

async fn work(
    engine: Option<DockerEngine>,
    shared: Arc<Mutex<Shared>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut w = Worker::new(engine.map(|e| e.client().clone()));
    let mut pending_evaluation: Option<bool> = None;
    if let Some(client) = w.client.clone() {
        let listed = tokio::time::timeout(
            Duration::from_secs(3),
            client.list_containers(Some(ListContainersOptions::default())),
        )
        .await;
        if let Ok(Ok(list)) = listed {
            for id in list.into_iter().filter_map(|c| c.id).take(PREFETCH) {
                // Questions asked meanwhile are answered first.
                pending_evaluation =
                    pending_evaluation.max(answer_waiting(&mut w, &shared, &mut requests).await);
                w.layers_of(&id).await;
            }
        }
    }
    // Containers no engine lists (podman's, containerd's own) running at
    // start, likewise: their first events would otherwise wait for the
    // runtime's files to be read, after their container was described.
    let mut others = storage::container_ids(std::path::Path::new(storage::STORAGE_ROOT));
    others.extend(crate::bundle::task_ids(PREFETCH));
    for id in others.into_iter().take(PREFETCH) {
        pending_evaluation =
            pending_evaluation.max(answer_waiting(&mut w, &shared, &mut requests).await);
        w.layers_of(&id).await;
        // An engine that does not answer is asked first for every
        // container: no use waiting on it for each.
        if w.client.is_some() && w.root.is_none() {
            break;
        }
    }
    if let Some(all) = pending_evaluation {
        evaluate(&mut w, &shared, &mut requests, all).await;
    }
    let mut created = match &w.client {
        Some(c) => created(c),
        None => futures_util::stream::empty().boxed(),
    }
    .fuse();
    loop {
        tokio::select! {
            r = requests.recv() => match r {
                Some(Request::Lookup(key, cost)) => lookup(&mut w, &shared, key, cost).await,
                Some(Request::Evaluate { all }) => evaluate(&mut w, &shared, &mut requests, all).await,
                Some(Request::Changes(id, reply)) => {
                    let _ = reply.send(w.changes(&id).await);
                }
                None => break,
            },
            // A container just created: its layers are fetched while it
            // starts, not when its first copy-ups are already waiting.
            Some(id) = created.next() => {
                w.layers_of(&id).await;
            }
        }
    }
}

/// Ids of containers as the runtime creates them (ends when the runtime's
/// event feed does).
fn created(client: &Docker) -> BoxStream<'static, String> {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["create".to_string()]),
    ]);
    client
        .events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| async move { m.ok()?.actor?.id })
        .boxed()
}

/// Answers one question, unless every event that asked it gave up
/// meanwhile: then the answer could only be dropped, and a worker that is
/// behind would stay behind answering questions nobody waits on. A
/// copy-up skipped that way is counted as not checked.
async fn lookup(w: &mut Worker, shared: &Mutex<Shared>, key: Key, cost: Option<Cost>) {
    if !lock(shared).pending.wanted(&key) {
        if cost.is_some() {
            w.shared_tracked += 1;
            *w.untracked.entry(key.0).or_default() += 1;
            lock(shared).tracked = w.shared_tracked;
        }
        return;
    }
    let a = w.answer(&key, cost).await;
    let mut s = lock(shared);
    s.tracked = w.shared_tracked;
    s.pending.answer(&key, a);
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(path: &str) -> KernelEvent {
        KernelEvent::plain(Kind::OpaqueDir, path)
    }

    fn container() -> Owner {
        Owner {
            id: "c".repeat(64),
            name: "c".into(),
            image: "i".into(),
            pod: None,
        }
    }

    /// The real worker thread. No runtime answers on the machine running
    /// unit tests for a container id nobody has, so the answer is "no
    /// layer data", after a lookup through the worker either way.
    #[test]
    fn given_up_questions_leave_nothing_behind_and_a_waiting_event_is_answered() {
        let mut layers = Layers::start();
        let c = container();
        // Every event gives up before any answer (the soak's case): no
        // question or answer is kept for any of them.
        for i in 0..20_000 {
            let e = ev(&format!("data/d{}/f{i}", i % 40));
            let Asked::Waiting(t) = layers.ask(Some(&c), &e) else {
                panic!("a container's event waits for its layer");
            };
            let _ = layers.give_up(t, &e);
        }
        assert_eq!(layers.open_questions(), 0);
        // Two events on one path wait on one question and both get the
        // answer; then nothing is left.
        let e = ev("etc/passwd");
        let (Asked::Waiting(a), Asked::Waiting(b)) =
            (layers.ask(Some(&c), &e), layers.ask(Some(&c), &e))
        else {
            panic!("a container's event waits for its layer");
        };
        assert_eq!(layers.open_questions(), 1);
        let answer = loop {
            if let Some(x) = layers.take(&a, &e) {
                break x;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(answer, LayerAnswer::Unknown(Unknown::NoLayerData));
        assert_eq!(layers.take(&b, &e), Some(answer));
        assert_eq!(layers.open_questions(), 0);
    }

    /// `n` copy-ups of one container, each a faithful copy (unchanged) of
    /// a lower file, remembered by a worker of its own.
    fn worker_with_copies(n: usize) -> (Worker, PathBuf) {
        let root = std::env::temp_dir().join(format!("cowtrace-worker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (lower, upper) = (root.join("lower"), root.join("upper"));
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let layers = Arc::new(ImageLayers {
            lowers: vec![image::Lower {
                dir: lower.clone(),
                layer: None,
            }],
            upper: Some(upper.clone()),
            image_id: None,
        });
        let mut w = Worker::new(None);
        w.shared_tracked = n;
        for i in 0..n {
            let name = format!("f{i}");
            std::fs::write(lower.join(&name), b"x").unwrap();
            std::fs::copy(lower.join(&name), upper.join(&name)).unwrap();
            let t = std::fs::metadata(lower.join(&name))
                .unwrap()
                .modified()
                .unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(upper.join(&name))
                .unwrap();
            f.set_modified(t).unwrap();
            w.tracked.push(Tracked {
                container: Arc::from("c"),
                path: name.into_bytes(),
                layers: layers.clone(),
                lower: 0,
                layer: None,
                cost: Cost {
                    latency_ns: 1,
                    bytes: 1,
                },
                last: Look::default(),
            });
        }
        (w, root)
    }

    #[test]
    fn an_interval_looks_at_a_budget_of_copy_ups_in_turn_and_the_end_at_all() {
        let n = CHECK_BUDGET + 100;
        let (mut w, root) = worker_with_copies(n);
        let shared = Mutex::new(Shared::default());
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let checked = |shared: &Mutex<Shared>| {
            let s = lock(shared);
            let r = &s.unchanged["c"];
            (r.checked, r.not_checked, r.sums.count)
        };
        // One interval: the budget's worth looked at, the rest not yet.
        rt.block_on(evaluate(&mut w, &shared, &mut rx, false));
        let budget = CHECK_BUDGET as u64;
        assert_eq!(checked(&shared), (budget, 100, budget));
        // The next interval goes on from there: every copy-up has been
        // looked at once.
        rt.block_on(evaluate(&mut w, &shared, &mut rx, false));
        assert_eq!(checked(&shared), (n as u64, 0, n as u64));
        // A copy-up changed since: an interval may not have looked again
        // yet, the end's check has.
        std::fs::write(root.join("upper/f0"), b"changed").unwrap();
        rt.block_on(evaluate(&mut w, &shared, &mut rx, true));
        assert_eq!(checked(&shared), (n as u64, 0, n as u64 - 1));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn what_needs_no_question_is_answered_at_once() {
        let mut layers = Layers::start();
        let e = ev("a/b");
        assert!(matches!(
            layers.ask(None, &e),
            Asked::Now(LayerAnswer::NoLayer)
        ));
        assert!(matches!(
            layers.ask(Some(&Owner::host()), &e),
            Asked::Now(LayerAnswer::NoLayer)
        ));
        let mut cut = ev("a/b");
        cut.names_cut[1] = true;
        assert!(matches!(
            layers.ask(Some(&container()), &cut),
            Asked::Now(LayerAnswer::Unknown(Unknown::PathCut))
        ));
        assert_eq!(layers.open_questions(), 0);
    }
}
