//! The programs themselves (see `main.rs` for the design).

use agent_ebpf::{
    flags, hist_bucket, CgroupName, Config, CopyUpKind, Event, EventKind, MapFull, SymbolAddrs,
    SymbolNames, WhiteoutCause, WriteKey, WriteStats, CGROUP_NAME_LEN, EVENT_KINDS, HIST_BUCKETS,
    MAP_FULL_KINDS, NAME_LEN, OVERLAYFS_SUPER_MAGIC, PATH_DEPTH, RENAME_WHITEOUT, STACK_DEPTH,
    SYMBOL_LEN,
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_stack, bpf_ktime_get_ns,
            bpf_probe_read_kernel_str, bpf_snprintf,
        },
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext,
};
use aya_log_ebpf::warn;
use core::ffi::c_void;

#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads a field of [`CONFIG`]; volatile so the compiler cannot fold the
/// zero it was compiled with (the loader rewrites it).
macro_rules! conf {
    ($f:ident) => {
        unsafe { core::ptr::read_volatile(&CONFIG.$f) }
    };
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);
/// Inserts refused because a map was full, per [`MapFull`] kind.
#[map]
static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_FULL_KINDS, 0);
#[map]
/// One entry per (cgroup, overlay) pair for all CPUs, added to atomically
/// (as libbpf-tools' histograms are): a per-CPU map preallocates
/// entries x value size x possible CPUs, 1 GiB of kernel memory for 4096
/// pairs on a 96-CPU host.
static WRITES: HashMap<WriteKey, WriteStats> = HashMap::with_max_entries(4096, 0);
#[map]
static CGROUP_FILTER: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static DEV_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Set to 1 by the agent when its run ends: from then on no program adds
/// an event, a drop or a write, so the agent's final drain has an end and
/// its final report a moment, however busy the machine (detaching the
/// probes afterwards takes seconds on a busy small machine).
#[map]
static STOP: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static COPY_OPS: HashMap<u32, CopyOp> = HashMap::with_max_entries(16384, 0);
#[map]
static COPY_OBJS: HashMap<u32, CopyObj> = HashMap::with_max_entries(16384, 0);
#[map]
/// LRU: a remove leaves its entry behind (see [`ovl_do_remove`]); the
/// entries of threads that have exited make room for new ones.
static OVL_OPS: LruHashMap<u32, OvlOp> = LruHashMap::with_max_entries(16384, 0);
#[map]
static WRITE_STARTS: HashMap<u32, WriteStart> = HashMap::with_max_entries(16384, 0);

/// Large values are built here, not on the 512-byte BPF stack.
#[map]
static EVENT_SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ZERO_STATS: Array<WriteStats> = Array::with_max_entries(1, 0);

/// cgroup id -> its kernfs names, for the cgroups events come from (the
/// least recently used go first when it is full).
#[map]
static CGROUP_NAMES: LruHashMap<u64, CgroupName> = LruHashMap::with_max_entries(4096, 0);
#[map]
static CGROUP_NAME_SCRATCH: PerCpuArray<CgroupName> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct CopyOp {
    start_ns: u64,
    target: u64,
    parents: u32,
    stack_len: u32,
    /// The operation copies up the object an overlay remove is removing
    /// (see [`flags::REMOVED`]).
    removed: u32,
    _pad: u32,
    stack: [u64; STACK_DEPTH],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CopyObj {
    start_ns: u64,
    dentry: u64,
    bytes: u64,
    /// `security_inode_copy_up` ran: a new upper object was made.
    did_work: u32,
    /// The data function ran with len > 0.
    data: u32,
    /// The new upper object was marked `overlay.metacopy` (data left in
    /// the lower layer).
    metacopy: u32,
    /// The overlay inode's link count at entry (see [`Event::links`]).
    links: u32,
}

const OVL_REMOVE: u32 = 1;
const OVL_RENAME: u32 = 2;
const OVL_MKDIR: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy)]
struct OvlOp {
    kind: u32,
    is_dir: u32,
    dentry: u64,
    dentry2: u64,
    /// Rename: redirects set so far (an exchange sets one on each side,
    /// `old`'s first).
    redirects: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct WriteStart {
    start_ns: u64,
    dev: u32,
    _pad: u32,
}

// ---------------------------------------------------------------- helpers

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Reads a `T` at `base + off` in kernel memory; zero if unreadable.
#[inline(always)]
fn read<T: Copy>(base: u64, off: u32) -> T {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).unwrap_or(core::mem::zeroed()) }
}

/// A kprobe argument by runtime position (x86_64 calling convention). The
/// verifier only accepts context loads at constant offsets, so every
/// register is loaded (volatile, so the compiler cannot merge the loads
/// into one at a computed address) and the value is picked afterwards.
#[inline(always)]
fn kp_arg(ctx: &ProbeContext, n: u32) -> u64 {
    let regs = ctx.regs;
    let (a0, a1, a2, a3, a4, a5) = unsafe {
        (
            core::ptr::read_volatile(&(*regs).rdi),
            core::ptr::read_volatile(&(*regs).rsi),
            core::ptr::read_volatile(&(*regs).rdx),
            core::ptr::read_volatile(&(*regs).rcx),
            core::ptr::read_volatile(&(*regs).r8),
            core::ptr::read_volatile(&(*regs).r9),
        )
    };
    match n {
        0 => a0,
        1 => a1,
        2 => a2,
        3 => a3,
        4 => a4,
        _ => a5,
    }
}

#[inline(always)]
fn dentry_sb(dentry: u64) -> u64 {
    read(dentry, conf!(dentry_d_sb))
}

#[inline(always)]
fn dentry_dev(dentry: u64) -> u32 {
    read(dentry_sb(dentry), conf!(sb_s_dev))
}

#[inline(always)]
fn dentry_ino(dentry: u64) -> u64 {
    let inode: u64 = read(dentry, conf!(dentry_d_inode));
    if inode == 0 {
        return 0;
    }
    read::<u64>(inode, conf!(inode_i_ino))
}

/// The link count of the dentry's inode (overlay's own inode for an
/// overlay dentry: see [`Event::links`] for what it holds).
#[inline(always)]
fn dentry_nlink(dentry: u64) -> u32 {
    let inode: u64 = read(dentry, conf!(dentry_d_inode));
    if inode == 0 {
        return 0;
    }
    read::<u32>(inode, conf!(inode_i_nlink))
}

#[inline(always)]
fn dentry_mode(dentry: u64) -> u32 {
    let inode: u64 = read(dentry, conf!(dentry_d_inode));
    if inode == 0 {
        return 0;
    }
    read::<u16>(inode, conf!(inode_i_mode)) as u32
}

/// With a filter set, the only cost for unwanted activity is these lookups.
#[inline(always)]
fn wanted(dev: u32) -> bool {
    if conf!(filter) == 0 {
        return true;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    unsafe { CGROUP_FILTER.get(&cgroup).is_some() || DEV_FILTER.get(&dev).is_some() }
}

#[inline(always)]
fn stopped() -> bool {
    matches!(STOP.get(0), Some(v) if *v != 0)
}

// Diagnostics (aya-log): said on the agent's stderr with `--verbose`,
// skipped at the cost of one global load otherwise (the agent sets
// `AYA_LOG_LEVEL` to 0). Only the first loss of each kind on each CPU is
// said: the counters, not the log, are the record of every loss, and a
// full map must not turn into a flood of log records.

#[inline(always)]
fn count_drop(kind: EventKind) {
    if stopped() {
        return;
    }
    if let Some(p) = DROPS.get_ptr_mut(kind as u32) {
        let n = unsafe {
            *p += 1;
            *p
        };
        if n == 1 {
            warn!(
                &(),
                "ring buffer full: a {} event dropped (counted in drops; first on this CPU)",
                kind.key()
            );
        }
    }
}

#[inline(always)]
fn count_map_full(kind: MapFull) {
    if stopped() {
        return;
    }
    if let Some(p) = MAP_FULL.get_ptr_mut(kind as u32) {
        let n = unsafe {
            *p += 1;
            *p
        };
        if n == 1 {
            warn!(
                &(),
                "map {} full: an insert refused (counted in drops.map_full.{}; first on this CPU)",
                kind.map_name(),
                kind.key()
            );
        }
    }
}

/// Starts an event in the per-CPU scratch with the fields every kind has.
#[inline(always)]
fn new_event(kind: EventKind, dentry: u64) -> Option<&'static mut Event> {
    let ev = unsafe { &mut *EVENT_SCRATCH.get_ptr_mut(0)? };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.kind = kind as u32;
    ev.flags = 0;
    ev.ts_ns = now();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    remember_cgroup(ev.cgroup_id);
    ev.dev = dentry_dev(dentry);
    ev.mode = dentry_mode(dentry);
    ev.ino = dentry_ino(dentry);
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.latency_ns = 0;
    ev.op_latency_ns = 0;
    ev.bytes = 0;
    ev.parents = 0;
    ev.cause = 0;
    ev.stack_len = 0;
    ev.copy_kind = CopyUpKind::Full as u32;
    ev.links = 0;
    read_path(dentry, ev);
    Some(ev)
}

/// Notes the current task's cgroup names under `id`, once per cgroup.
#[inline(always)]
fn remember_cgroup(id: u64) {
    if CGROUP_NAMES.get_ptr(id).is_some() {
        return;
    }
    let Some(slot) = CGROUP_NAME_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    let task = unsafe { bpf_get_current_task() };
    let css_set: u64 = read(task, conf!(task_cgroups));
    let cgrp: u64 = read(css_set, conf!(css_set_dfl_cgrp));
    let kn: u64 = read(cgrp, conf!(cgroup_kn));
    if kn == 0 {
        return;
    }
    let parent: u64 = read(kn, conf!(kernfs_node_parent));
    let name_off = conf!(kernfs_node_name);
    slot.leaf[0] = 0;
    slot.parent[0] = 0;
    let leaf: u64 = read(kn, name_off);
    unsafe {
        bpf_probe_read_kernel_str(
            slot.leaf.as_mut_ptr() as *mut c_void,
            CGROUP_NAME_LEN as u32,
            leaf as *const c_void,
        )
    };
    if parent != 0 {
        let pname: u64 = read(parent, name_off);
        unsafe {
            bpf_probe_read_kernel_str(
                slot.parent.as_mut_ptr() as *mut c_void,
                CGROUP_NAME_LEN as u32,
                pname as *const c_void,
            )
        };
    }
    // Full of busier cgroups: the least recently used one makes room.
    let _ = CGROUP_NAMES.insert(id, &*slot, 0);
}

/// Walks `d_parent` up to the overlay root (the dentry that is its own
/// parent), at most [`PATH_DEPTH`] names.
#[inline(always)]
fn read_path(mut dentry: u64, ev: &mut Event) {
    let parent_off = conf!(dentry_d_parent);
    let name_off = conf!(dentry_d_name_name);
    let len_off = conf!(dentry_d_name_len);
    ev.path.depth = 0;
    ev.path.name_cut = 0;
    for i in 0..PATH_DEPTH {
        let parent: u64 = read(dentry, parent_off);
        if parent == dentry || parent == 0 {
            return;
        }
        let name: u64 = read(dentry, name_off);
        let len: u32 = read(dentry, len_off);
        if len as usize >= NAME_LEN {
            ev.path.name_cut |= 1 << i;
        }
        let slot = &mut ev.path.names[i];
        unsafe {
            bpf_probe_read_kernel_str(
                slot.as_mut_ptr() as *mut c_void,
                NAME_LEN as u32,
                name as *const c_void,
            )
        };
        ev.path.depth = i as u32 + 1;
        dentry = parent;
    }
    let parent: u64 = read(dentry, parent_off);
    if parent != dentry {
        ev.flags |= flags::PATH_CUT;
    }
}

/// Unread bytes above which a record wakes the agent at once. Below it the
/// agent is not woken per record (a context switch per copy-up costs the
/// workload on a small machine); it drains the ring on a short timer.
const WAKEUP_BYTES: u64 = 1 << 20;

#[inline(always)]
fn submit(ev: &Event) {
    if stopped() {
        return;
    }
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    // Only the names the path has (the verifier needs the bound spelled out).
    let depth = ev.path.depth as usize;
    let depth = if depth > PATH_DEPTH {
        PATH_DEPTH
    } else {
        depth
    };
    let record = unsafe {
        core::slice::from_raw_parts((ev as *const Event).cast::<u8>(), Event::wire_len(depth))
    };
    if EVENTS.output::<[u8]>(record, flags).is_err() {
        count_drop(unsafe { core::mem::transmute::<u32, EventKind>(ev.kind) });
    }
}

// --------------------------------------------------------------- copy-up

/// No stack here (but see [`Config::stack_at_op_start`]): overlay calls
/// this for the parent on every create, unlink, rename and link, and then
/// usually copies nothing. The stack is taken in `security_inode_copy_up`,
/// once an object is really copied.
#[kprobe]
pub fn ovl_copy_up_flags(ctx: ProbeContext) -> u32 {
    let tid = tid();
    let dentry = kp_arg(&ctx, conf!(copy_up_flags_dentry_arg));
    if !wanted(dentry_dev(dentry)) {
        let _ = COPY_OPS.remove(&tid);
        return 0;
    }
    // With `index=on` (and for every lower object with `nfs_export=on`)
    // overlay copies up the object being removed before whiting it out,
    // to keep its link count in the index (`ovl_nlink_start`, called by
    // `ovl_do_remove` after the parent's copy-up).
    let removed = matches!(current_ovl_op(), Some(o) if o.kind == OVL_REMOVE && o.dentry == dentry);
    let op = CopyOp {
        start_ns: now(),
        target: dentry,
        parents: 0,
        stack_len: 0,
        removed: removed as u32,
        _pad: 0,
        stack: [0; STACK_DEPTH],
    };
    if COPY_OPS.insert(&tid, &op, 0).is_err() {
        count_map_full(MapFull::CopyOps);
        return 0;
    }
    if conf!(stack_at_op_start) != 0 {
        if let Some(p) = COPY_OPS.get_ptr_mut(&tid) {
            take_stack(&ctx, unsafe { &mut *p });
        }
    }
    0
}

/// The current kernel stack, [`STACK_DEPTH`] frames, into `op`.
#[inline(always)]
fn take_stack(ctx: &ProbeContext, op: &mut CopyOp) {
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            op.stack.as_mut_ptr() as *mut c_void,
            (STACK_DEPTH * 8) as u32,
            0,
        )
    };
    if n > 0 {
        op.stack_len = (n / 8) as u32;
    }
}

#[kprobe]
pub fn ovl_copy_up_one(ctx: ProbeContext) -> u32 {
    let tid = tid();
    let dentry = kp_arg(&ctx, conf!(copy_up_one_dentry_arg));
    // Inside an unwanted operation there is no op entry; outside any
    // operation (no known caller does that) decide by the filter.
    if COPY_OPS.get_ptr(&tid).is_none() && !wanted(dentry_dev(dentry)) {
        return 0;
    }
    // A copied object still here means its return was never seen (return
    // probe instances ran out): count it, nothing is lost silently.
    if let Some(prev) = unsafe { COPY_OBJS.get(&tid) } {
        if prev.did_work != 0 {
            count_drop(EventKind::CopyUp);
        }
    }
    let obj = CopyObj {
        start_ns: now(),
        dentry,
        bytes: 0,
        did_work: 0,
        data: 0,
        metacopy: 0,
        links: dentry_nlink(dentry),
    };
    if COPY_OBJS.insert(&tid, &obj, 0).is_err() {
        count_map_full(MapFull::CopyObjs);
    }
    0
}

/// A kprobe even where fentry works: BPF trampolines run programs with
/// preemption enabled and skip a program re-entered on the same CPU, which
/// lost about 0.4% of concurrent copy-ups on 7.2; kprobes run with
/// preemption disabled and are not re-entered that way.
///
/// Runs once per object really copied, so this is where the operation's
/// stack is taken (once per operation: its parents share the trigger),
/// [`STACK_DEPTH`] frames from here, enough to reach overlay's entry point
/// and the truncate frames above `ovl_setattr`.
#[kprobe]
pub fn security_inode_copy_up(ctx: ProbeContext) -> u32 {
    let tid = tid();
    if let Some(p) = COPY_OBJS.get_ptr_mut(&tid) {
        unsafe { (*p).did_work = 1 };
    }
    if let Some(p) = COPY_OPS.get_ptr_mut(&tid) {
        let op = unsafe { &mut *p };
        if op.stack_len == 0 && conf!(stack_at_op_start) == 0 {
            take_stack(&ctx, op);
        }
    }
    0
}

/// Attached to whichever data-copy function the kernel has
/// (`ovl_copy_up_data` on 5.10, `ovl_copy_up_file` later).
///
/// Also the only sign of a metacopy file's deferred data copy-up: that
/// runs inside `ovl_copy_up_one` without `security_inode_copy_up` (the
/// upper inode exists already), so its stack is taken here.
#[kprobe]
pub fn ovl_copy_up_data(ctx: ProbeContext) -> u32 {
    let len = kp_arg(&ctx, conf!(copy_data_len_arg)) as i64;
    let tid = tid();
    let Some(p) = COPY_OBJS.get_ptr_mut(&tid) else {
        return 0;
    };
    let p = unsafe { &mut *p };
    if len > 0 {
        p.bytes += len as u64;
        p.data = 1;
    }
    if p.did_work == 0 && conf!(stack_at_op_start) == 0 {
        if let Some(op) = COPY_OPS.get_ptr_mut(&tid) {
            let op = unsafe { &mut *op };
            if op.stack_len == 0 {
                take_stack(&ctx, op);
            }
        }
    }
    0
}

#[kretprobe]
pub fn ovl_copy_up_one_ret(ctx: RetProbeContext) -> u32 {
    let tid = tid();
    let end = now();
    let obj = match unsafe { COPY_OBJS.get(&tid) } {
        Some(o) => *o,
        None => return 0,
    };
    let _ = COPY_OBJS.remove(&tid);
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    let op = COPY_OPS.get_ptr_mut(&tid);
    let is_target = match op {
        Some(p) => unsafe { (*p).target == obj.dentry },
        None => false,
    };
    // Work is a new upper object, or the deferred data of a metacopy
    // file (data copied into an upper object that was already there).
    if ret != 0 || (obj.did_work == 0 && obj.data == 0) {
        if is_target {
            let _ = COPY_OPS.remove(&tid);
        }
        return 0;
    }
    let ev = match new_event(EventKind::CopyUp, obj.dentry) {
        Some(ev) => ev,
        None => return 0,
    };
    ev.copy_kind = if obj.did_work == 0 {
        CopyUpKind::DeferredData
    } else if obj.metacopy != 0 {
        CopyUpKind::MetadataOnly
    } else {
        CopyUpKind::Full
    } as u32;
    ev.ts_ns = end;
    ev.latency_ns = end - obj.start_ns;
    ev.bytes = obj.bytes;
    ev.links = obj.links;
    if obj.data != 0 {
        ev.flags |= flags::DATA;
    }
    if let Some(p) = op {
        let op = unsafe { &mut *p };
        ev.stack = op.stack;
        ev.stack_len = op.stack_len;
        if is_target {
            ev.op_latency_ns = end - op.start_ns;
            ev.parents = op.parents;
            ev.flags |= flags::OP_TARGET;
            if op.removed != 0 {
                ev.flags |= flags::REMOVED;
            }
        } else {
            op.parents += 1;
            ev.flags |= flags::ANCESTOR;
        }
    }
    submit(ev);
    if is_target {
        let _ = COPY_OPS.remove(&tid);
    }
    0
}

// ------------------------------------------------ whiteouts, opaque dirs

#[inline(always)]
fn begin_ovl_op(kind: u32, dentry: u64, dentry2: u64, is_dir: u32) -> u32 {
    if !wanted(dentry_dev(dentry)) {
        // An earlier operation's entry must not stand for this one.
        let _ = OVL_OPS.remove(&tid());
        return 0;
    }
    let op = OvlOp {
        kind,
        is_dir,
        dentry,
        dentry2,
        redirects: 0,
        _pad: 0,
    };
    if OVL_OPS.insert(&tid(), &op, 0).is_err() {
        count_map_full(MapFull::OvlOps);
    }
    0
}

#[inline(always)]
fn end_ovl_op() -> u32 {
    let _ = OVL_OPS.remove(&tid());
    0
}

#[inline(always)]
fn current_ovl_op() -> Option<OvlOp> {
    unsafe { OVL_OPS.get(&tid()).copied() }
}

/// No return probe: the entry is consumed by the whiteout it leads to, and
/// otherwise replaced by the thread's next overlay remove, rename or mkdir
/// (each begins by writing or removing this thread's entry). What stays
/// behind after a remove that needed no whiteout could only be matched by
/// an `ovl_cleanup_and_whiteout` outside those three, which overlay with
/// `index=off` (as Docker mounts it) never calls. One return probe less
/// per remove: return probes are the dearest kind of hit.
#[kprobe]
pub fn ovl_do_remove(ctx: ProbeContext) -> u32 {
    let dentry = kp_arg(&ctx, conf!(do_remove_dentry_arg));
    let is_dir = kp_arg(&ctx, conf!(do_remove_is_dir_arg)) as u8 != 0;
    begin_ovl_op(OVL_REMOVE, dentry, 0, is_dir as u32)
}

/// The end of an overlay remove's work on its object (also of a rename's
/// and a link's, which are left alone). With `index=on` the last name of
/// an indexed inode gone, overlay cleans up its index entry from here
/// (`ovl_cleanup_index`), and with `nfs_export=on` leaves a whiteout in
/// the index directory (`work/index`) through `ovl_cleanup_and_whiteout`:
/// that is overlay's bookkeeping, not a name removed from a lower layer,
/// so the remove's entry ends here, before it (a name with a lower object
/// got its whiteout already; one without, an upper-only hard link of an
/// indexed file, gets none).
#[kprobe]
pub fn ovl_nlink_end(_ctx: ProbeContext) -> u32 {
    if matches!(current_ovl_op(), Some(o) if o.kind == OVL_REMOVE) {
        end_ovl_op();
    }
    0
}

#[kprobe]
pub fn ovl_rename(ctx: ProbeContext) -> u32 {
    let old = kp_arg(&ctx, conf!(rename_old_arg));
    let new = kp_arg(&ctx, conf!(rename_new_arg));
    begin_ovl_op(OVL_RENAME, old, new, 0)
}

#[kretprobe]
pub fn ovl_rename_ret(_ctx: RetProbeContext) -> u32 {
    end_ovl_op()
}

#[kprobe]
pub fn ovl_mkdir(ctx: ProbeContext) -> u32 {
    let dentry = kp_arg(&ctx, conf!(mkdir_dentry_arg));
    begin_ovl_op(OVL_MKDIR, dentry, 0, 1)
}

#[kretprobe]
pub fn ovl_mkdir_ret(_ctx: RetProbeContext) -> u32 {
    end_ovl_op()
}

#[inline(always)]
fn emit_whiteout(dentry: u64, cause: WhiteoutCause, is_dir: bool) {
    if let Some(ev) = new_event(EventKind::Whiteout, dentry) {
        ev.cause = cause as u32;
        if is_dir {
            ev.flags |= flags::DIR;
        }
        submit(ev);
    }
}

/// Runs only when overlayfs leaves a whiteout for a removed lower object.
#[kprobe]
pub fn ovl_cleanup_and_whiteout(_ctx: ProbeContext) -> u32 {
    if let Some(op) = current_ovl_op() {
        if op.kind == OVL_REMOVE {
            end_ovl_op();
            let cause = if op.is_dir != 0 {
                WhiteoutCause::Rmdir
            } else {
                WhiteoutCause::Unlink
            };
            emit_whiteout(op.dentry, cause, op.is_dir != 0);
        }
    }
    0
}

#[inline(always)]
fn on_vfs_rename(flags_arg: u64) -> u32 {
    let op = match current_ovl_op() {
        Some(op) if op.kind == OVL_RENAME => op,
        _ => return 0,
    };
    let off = conf!(vfs_rename_flags_off);
    let rename_flags: u32 = if off == agent_ebpf::DIRECT {
        flags_arg as u32
    } else {
        read(flags_arg, off)
    };
    if rename_flags & RENAME_WHITEOUT != 0 {
        let is_dir = dentry_mode(op.dentry) & 0o170000 == 0o040000;
        emit_whiteout(op.dentry, WhiteoutCause::Rename, is_dir);
    }
    0
}

#[kprobe]
pub fn vfs_rename(ctx: ProbeContext) -> u32 {
    on_vfs_rename(kp_arg(&ctx, conf!(vfs_rename_flags_arg)))
}

/// `trusted.overlay.opaque`, or `user.overlay.opaque` with `userxattr`.
#[inline(always)]
fn is_opaque_xattr(name: u64) -> bool {
    let mut buf = [0u8; 24];
    let n = unsafe {
        bpf_probe_read_kernel_str(buf.as_mut_ptr() as *mut c_void, 24, name as *const c_void)
    };
    (n == 23 && &buf[..22] == b"trusted.overlay.opaque")
        || (n == 20 && &buf[..19] == b"user.overlay.opaque")
}

/// `trusted.overlay.redirect`, or `user.overlay.redirect` with
/// `userxattr`: overlay records a renamed lower directory's origin in it.
#[inline(always)]
fn is_redirect_xattr(name: u64) -> bool {
    let mut buf = [0u8; 26];
    let n = unsafe {
        bpf_probe_read_kernel_str(buf.as_mut_ptr() as *mut c_void, 26, name as *const c_void)
    };
    (n == 25 && &buf[..24] == b"trusted.overlay.redirect")
        || (n == 22 && &buf[..21] == b"user.overlay.redirect")
}

/// `trusted.overlay.metacopy`, or `user.overlay.metacopy` with
/// `userxattr`: overlay marks a metadata-only copy-up with it.
#[inline(always)]
fn is_metacopy_xattr(name: u64) -> bool {
    let mut buf = [0u8; 26];
    let n = unsafe {
        bpf_probe_read_kernel_str(buf.as_mut_ptr() as *mut c_void, 26, name as *const c_void)
    };
    (n == 25 && &buf[..24] == b"trusted.overlay.metacopy")
        || (n == 22 && &buf[..21] == b"user.overlay.metacopy")
}

#[inline(always)]
fn on_vfs_setxattr(name: u64) -> u32 {
    // Inside an object's copy-up: is it being marked metadata-only?
    if let Some(p) = COPY_OBJS.get_ptr_mut(&tid()) {
        if is_metacopy_xattr(name) {
            unsafe { (*p).metacopy = 1 };
            return 0;
        }
    }
    let op = match current_ovl_op() {
        Some(op) => op,
        None => return 0,
    };
    // `ovl_set_redirect` in `ovl_rename`: the renamed object (still under
    // its old name) gets a redirect instead of its tree being copied.
    if op.kind == OVL_RENAME && is_redirect_xattr(name) {
        let renamed = if op.redirects == 0 {
            op.dentry
        } else {
            op.dentry2
        };
        if let Some(p) = OVL_OPS.get_ptr_mut(&tid()) {
            unsafe { (*p).redirects += 1 };
        }
        if let Some(ev) = new_event(EventKind::Redirect, renamed) {
            let is_dir = dentry_mode(renamed) & 0o170000 == 0o040000;
            if is_dir {
                ev.flags |= flags::DIR;
            }
            submit(ev);
        }
        return 0;
    }
    if !is_opaque_xattr(name) {
        return 0;
    }
    let dentry = match op.kind {
        OVL_MKDIR => op.dentry,
        OVL_RENAME => op.dentry2,
        _ => return 0,
    };
    if let Some(ev) = new_event(EventKind::OpaqueDir, dentry) {
        ev.flags |= flags::DIR;
        submit(ev);
    }
    0
}

#[kprobe]
pub fn vfs_setxattr(ctx: ProbeContext) -> u32 {
    on_vfs_setxattr(kp_arg(&ctx, conf!(vfs_setxattr_name_arg)))
}

// ----------------------------------------------------------------- writes

/// Per-CPU sequence number of overlay writes: the deterministic sample.
#[map]
static WRITE_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The overlay device `file` is on, if it is a wanted overlay.
#[inline(always)]
fn overlay_write_dev(file: u64) -> Option<u32> {
    let inode: u64 = read(file, conf!(file_f_inode));
    let sb: u64 = read(inode, conf!(inode_i_sb));
    let magic: u64 = read(sb, conf!(sb_s_magic));
    if magic != OVERLAYFS_SUPER_MAGIC {
        return None;
    }
    let dev: u32 = read(sb, conf!(sb_s_dev));
    wanted(dev).then_some(dev)
}

/// Whether this write is one of the timed sample (one in
/// `2^write_sample_shift` on this CPU).
#[inline(always)]
fn write_sampled() -> bool {
    let shift = conf!(write_sample_shift);
    if shift == 0 {
        return true;
    }
    let Some(seq) = WRITE_SEQ.get_ptr_mut(0) else {
        return true;
    };
    let n = unsafe { *seq };
    unsafe { *seq = n + 1 };
    n & ((1u64 << (shift & 31)) - 1) == 0
}

/// Notes the start of a timed write (`start_ns` 0: counted, not timed).
/// A stale entry (a write whose exit was not seen) is reused in place.
#[inline(always)]
fn write_start(dev: u32, start_ns: u64) {
    let tid = tid();
    if let Some(p) = WRITE_STARTS.get_ptr_mut(&tid) {
        unsafe {
            (*p).start_ns = start_ns;
            (*p).dev = dev;
        }
        return;
    }
    let start = WriteStart {
        start_ns,
        dev,
        _pad: 0,
    };
    if WRITE_STARTS.insert(&tid, &start, 0).is_err() {
        count_map_full(MapFull::WriteStarts);
    }
}

/// The start noted for this thread's write, removed (entries of threads
/// that exit must not pile up until the map is full).
#[inline(always)]
fn take_write_start() -> Option<WriteStart> {
    let tid = tid();
    let start = unsafe { WRITE_STARTS.get(&tid) }.copied()?;
    let _ = WRITE_STARTS.remove(&tid);
    Some(start)
}

/// Adds one finished write to its histogram: counted always, timed when
/// `start_ns` is not 0.
#[inline(always)]
fn write_done(dev: u32, start_ns: u64, ret: i64) -> u32 {
    if ret < 0 || stopped() {
        return 0;
    }
    let key = WriteKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        dev,
        _pad: 0,
    };
    let stats = match WRITES.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let zero = match ZERO_STATS.get(0) {
                Some(z) => z,
                None => return 0,
            };
            // NOEXIST: another CPU may have inserted the pair meanwhile,
            // and its counts must not be overwritten.
            let inserted = WRITES.insert(&key, zero, BPF_NOEXIST as u64);
            match WRITES.get_ptr_mut(&key) {
                Some(p) => p,
                None => {
                    if inserted.is_err() {
                        count_map_full(MapFull::Writes);
                    }
                    return 0;
                }
            }
        }
    };
    let stats = unsafe { &mut *stats };
    atomic_add(&mut stats.count, 1);
    atomic_add(&mut stats.bytes, ret as u64);
    if start_ns == 0 {
        return 0;
    }
    let latency = now() - start_ns;
    atomic_add(&mut stats.timed, 1);
    // Reloaded through the stack so the bounds check below is made on the
    // very register used as the index (the compiler otherwise checks an
    // intermediate value the verifier cannot relate to it).
    let b = hist_bucket(latency);
    let b = unsafe { core::ptr::read_volatile(&b) };
    if b < HIST_BUCKETS {
        atomic_add(&mut stats.buckets[b], 1);
    }
    0
}

/// `*p += v` from any CPU at once: an atomic add whose result is unused,
/// which the BPF backend emits as the `lock add` every kernel accepts.
#[inline(always)]
fn atomic_add(p: &mut u64, v: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Only a timed write leaves state for its exit; the exit of any other
/// write reads the file again from its arguments (an fexit has them), so
/// an untimed write costs no map update and no clock read here.
#[fentry(function = "vfs_write")]
pub fn vfs_write_fentry(ctx: FEntryContext) -> u32 {
    if let Some(dev) = overlay_write_dev(ctx.arg(0)) {
        if write_sampled() {
            write_start(dev, now());
        }
    }
    0
}

/// `vfs_write(file, buf, count, pos)`: the return value follows the four
/// arguments in a tracing context (bpf_get_func_ret needs 5.17).
#[fexit(function = "vfs_write")]
pub fn vfs_write_fexit(ctx: FExitContext) -> u32 {
    let Some(dev) = overlay_write_dev(ctx.arg(0)) else {
        return 0;
    };
    let ret = ctx.arg::<i64>(4);
    let start_ns = match take_write_start() {
        Some(s) if s.dev == dev => s.start_ns,
        _ => 0,
    };
    write_done(dev, start_ns, ret)
}

/// `--kprobes-only`: the return probe has no arguments, so every write
/// notes its device here (and its start when it is in the sample).
#[kprobe]
pub fn ovl_write_iter(ctx: ProbeContext) -> u32 {
    let iocb = kp_arg(&ctx, 0);
    if let Some(dev) = overlay_write_dev(read(iocb, conf!(kiocb_ki_filp))) {
        let start = if write_sampled() { now() } else { 0 };
        write_start(dev, start);
    }
    0
}

#[kretprobe]
pub fn ovl_write_iter_ret(ctx: RetProbeContext) -> u32 {
    match take_write_start() {
        Some(s) => write_done(s.dev, s.start_ns, ctx.ret::<i64>()),
        None => 0,
    }
}

// ------------------------------------------------------------ thread exit

/// A thread that ends inside an operation (killed, or a return probe that
/// never ran) would leave its per-thread entries behind for good, and
/// overlay enters `ovl_copy_up_flags` for every create or unlink without
/// reaching a copy-up return: every per-thread map forgets an exiting
/// thread here (the tracepoint runs once per exiting task).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let tid = tid();
    let _ = COPY_OPS.remove(&tid);
    let _ = COPY_OBJS.remove(&tid);
    let _ = OVL_OPS.remove(&tid);
    let _ = WRITE_STARTS.remove(&tid);
    0
}

// ------------------------------------------------- naming kernel addresses

/// `%ps`: the name of the kernel symbol an address is in.
static SYMBOL_FORMAT: [u8; 4] = *b"%ps\0";

/// The addresses `name_kernel_addresses` names (written by the agent).
#[map]
static SYMBOL_ADDRS: Array<SymbolAddrs> = Array::with_max_entries(1, 0);

/// Their names (read by the agent).
#[map]
static SYMBOL_NAMES: Array<SymbolNames> = Array::with_max_entries(1, 0);

/// Never attached: the agent runs it (BPF_PROG_TEST_RUN) to have the
/// kernel name the frames of a copy-up's stack, so that it need not read
/// all of /proc/kallsyms for them. `bpf_snprintf` came in 5.13; where the
/// kernel refuses this program the agent reads kallsyms.
#[raw_tracepoint]
pub fn name_kernel_addresses(_ctx: RawTracePointContext) -> i32 {
    let (Some(addrs), Some(names)) = (SYMBOL_ADDRS.get_ptr(0), SYMBOL_NAMES.get_ptr_mut(0)) else {
        return 0;
    };
    for i in 0..STACK_DEPTH {
        // SAFETY: both point into map values the verifier bounds, `i` is
        // below their length, and the helper writes at most SYMBOL_LEN bytes.
        unsafe {
            let addr = core::ptr::addr_of!((*addrs).addrs[i]);
            let name = core::ptr::addr_of_mut!((*names).names[i]);
            bpf_snprintf(
                name.cast(),
                SYMBOL_LEN as u32,
                SYMBOL_FORMAT.as_ptr().cast(),
                addr.cast_mut(),
                8,
            );
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
