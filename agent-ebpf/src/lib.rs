//! The wire between cowtrace's kernel side and its agent: every type that
//! crosses from the eBPF programs (`main.rs`) to userspace lives here, once.
//!
//! This is cowtrace's equivalent of libbpf-tools' `fsdist.h`. It is
//! `no_std`, `#[repr(C)]` and free of kernel knowledge: struct offsets and
//! argument positions are *not* constants here, they are read from the
//! running kernel's BTF by the agent and handed to the programs in
//! [`Config`] at load time.
#![no_std]

/// Kernel `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Path components walked up from a dentry before the path is marked cut
/// ([`flags::PATH_CUT`]).
pub const PATH_DEPTH: usize = 16;
/// Bytes kept per path component, NUL included; a longer name keeps its
/// first `NAME_LEN - 1` bytes and its bit in [`Path::name_cut`].
pub const NAME_LEN: usize = 64;
/// Kernel stack frames kept with a copy-up, for classifying its trigger:
/// taken in `security_inode_copy_up`, overlay's entry point is at most the
/// sixth frame on 5.10-7.2 and a truncate's `do_truncate` two further.
pub const STACK_DEPTH: usize = 12;

/// Bytes kept of a cgroup's directory name and of its parent's, NUL
/// included (`cri-containerd-<64 hex>.scope` is 85).
pub const CGROUP_NAME_LEN: usize = 96;

/// Bytes kept of a kernel address's name as `%ps` writes it (`name`, or
/// `name [module]` for a module's), NUL included.
pub const SYMBOL_LEN: usize = 128;

/// Kernel code addresses for `name_kernel_addresses` to name: one
/// copy-up's stack at most (unused slots 0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SymbolAddrs {
    pub addrs: [u64; STACK_DEPTH],
}

/// What `name_kernel_addresses` wrote for each of [`SymbolAddrs`]: the
/// symbol's name, or the address in hex where the kernel has none.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SymbolNames {
    pub names: [[u8; SYMBOL_LEN]; STACK_DEPTH],
}

/// The kernfs names of a cgroup and of its parent, as the kernel saw them
/// when an event came from it: the container id survives the cgroup's
/// removal (a short-lived container is gone before userspace looks).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupName {
    pub parent: [u8; CGROUP_NAME_LEN],
    pub leaf: [u8; CGROUP_NAME_LEN],
}

/// What an [`Event`] is. Also the index into the drop counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    CopyUp = 0,
    Whiteout = 1,
    OpaqueDir = 2,
    /// A lower directory (or metacopy file) renamed with
    /// `redirect_dir=on`: overlay records the move in an
    /// `overlay.redirect` attribute of its upper copy instead of copying
    /// the tree.
    Redirect = 3,
}
/// Number of [`EventKind`]s (size of the `DROPS` map).
pub const EVENT_KINDS: u32 = 4;

impl EventKind {
    pub const ALL: [EventKind; EVENT_KINDS as usize] = [
        EventKind::CopyUp,
        EventKind::Whiteout,
        EventKind::OpaqueDir,
        EventKind::Redirect,
    ];

    /// Its key in the JSON (`drops.<key>`, each event's `kind`), the
    /// metrics and the kernel's diagnostics: one table for all of them.
    pub const fn key(self) -> &'static str {
        match self {
            EventKind::CopyUp => "copy_up",
            EventKind::Whiteout => "whiteout",
            EventKind::OpaqueDir => "opaque_dir",
            EventKind::Redirect => "redirect",
        }
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::CopyUp),
            1 => Some(Self::Whiteout),
            2 => Some(Self::OpaqueDir),
            3 => Some(Self::Redirect),
            _ => None,
        }
    }
}

/// Something the kernel side saw but could not keep track of because one
/// of its maps was full. Also the index into the `MAP_FULL` counters: one
/// table for the kernel (which counts), the agent (which reads every kind
/// into the JSON `drops.map_full` and the live view) and the docs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFull {
    /// `WRITES`: a write from a (cgroup, overlay) pair beyond the map's
    /// size, not counted.
    Writes = 0,
    /// `WRITE_STARTS`: a write whose start could not be noted, not counted.
    WriteStarts = 1,
    /// `COPY_OPS`: a copy-up operation without its trigger, operation
    /// latency and parent count.
    CopyOps = 2,
    /// `COPY_OBJS`: an object copy-up not recorded.
    CopyObjs = 3,
    /// `OVL_OPS`: a remove, rename or mkdir whose whiteout or opaque
    /// directory was not looked for.
    OvlOps = 4,
}

/// Number of [`MapFull`] kinds (size of the `MAP_FULL` map).
pub const MAP_FULL_KINDS: u32 = 5;

impl MapFull {
    pub const ALL: [MapFull; MAP_FULL_KINDS as usize] = [
        MapFull::Writes,
        MapFull::WriteStarts,
        MapFull::CopyOps,
        MapFull::CopyObjs,
        MapFull::OvlOps,
    ];

    /// The kernel map that was full (its name in the eBPF object).
    pub const fn map_name(self) -> &'static str {
        match self {
            MapFull::Writes => "WRITES",
            MapFull::WriteStarts => "WRITE_STARTS",
            MapFull::CopyOps => "COPY_OPS",
            MapFull::CopyObjs => "COPY_OBJS",
            MapFull::OvlOps => "OVL_OPS",
        }
    }

    /// Its key in the JSON (`drops.map_full.<key>`, `kernel_maps.<key>`).
    pub const fn key(self) -> &'static str {
        match self {
            MapFull::Writes => "writes",
            MapFull::WriteStarts => "write_starts",
            MapFull::CopyOps => "copy_ops",
            MapFull::CopyObjs => "copy_objs",
            MapFull::OvlOps => "ovl_ops",
        }
    }

    /// What is lost per count (for the docs and the live view).
    pub const fn lost(self) -> &'static str {
        match self {
            MapFull::Writes => "writes not counted: more (cgroup, overlay) pairs wrote than the kernel keeps histograms for (--write-keys)",
            MapFull::WriteStarts => "writes not counted: more threads were writing at once than the kernel tracks",
            MapFull::CopyOps => "copy-up operations without trigger, operation latency and parent count: more threads were copying up at once than the kernel tracks",
            MapFull::CopyObjs => "object copy-ups not recorded: more threads were copying up at once than the kernel tracks",
            MapFull::OvlOps => "removes, renames or mkdirs whose whiteout or opaque directory was not looked for: more threads at once than the kernel tracks",
        }
    }
}

/// What a copy-up copied ([`Event::copy_kind`]). With `metacopy=on` a
/// regular file's copy-up comes in two parts: a chown/chmod/utimes copies
/// up its inode and attributes only, marked with the `overlay.metacopy`
/// attribute, its data staying in the lower layer; the first open for
/// write (or truncate) later copies the data into that upper file
/// (`ovl_copy_up_meta_inode_data`, inside a second `ovl_copy_up_one`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyUpKind {
    /// The object with its data at once (every copy-up without metacopy;
    /// directories, symlinks and opens for write with it).
    Full = 0,
    /// Inode and attributes only, no data (`metacopy=on`).
    MetadataOnly = 1,
    /// The data of a file copied up metadata-only earlier.
    DeferredData = 2,
}

impl CopyUpKind {
    pub const ALL: [CopyUpKind; 3] = [
        CopyUpKind::Full,
        CopyUpKind::MetadataOnly,
        CopyUpKind::DeferredData,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Full),
            1 => Some(Self::MetadataOnly),
            2 => Some(Self::DeferredData),
            _ => None,
        }
    }

    /// Its name in the JSON and the event lines.
    pub const fn key(self) -> &'static str {
        match self {
            CopyUpKind::Full => "full",
            CopyUpKind::MetadataOnly => "metadata_only",
            CopyUpKind::DeferredData => "deferred_data",
        }
    }
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// Copy-up: file data was copied (the data function ran with len > 0).
    pub const DATA: u32 = 1 << 0;
    /// Copy-up: this object is a parent directory copied up on the way to
    /// the operation's target, not the target itself.
    pub const ANCESTOR: u32 = 1 << 1;
    /// Copy-up: the operation timing (`op_latency_ns`, `parents`) is known.
    pub const OP_TARGET: u32 = 1 << 2;
    /// Whiteout / opaque dir: the object is a directory.
    pub const DIR: u32 = 1 << 3;
    /// The path was cut at the top: deeper than [`crate::PATH_DEPTH`]
    /// components. (A name cut is [`crate::Path::name_cut`].)
    pub const PATH_CUT: u32 = 1 << 4;
    /// Copy-up: the object being unlinked or removed itself, copied up
    /// first so that `index=on` can keep its link count (overlay's
    /// `ovl_nlink_start`), not its parent.
    pub const REMOVED: u32 = 1 << 5;
}

/// Why a whiteout was made ([`Event::cause`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutCause {
    Unlink = 0,
    Rmdir = 1,
    Rename = 2,
}

impl WhiteoutCause {
    /// Its name in the JSON (`cause`) and the live view.
    pub const fn key(self) -> &'static str {
        match self {
            WhiteoutCause::Unlink => "unlink",
            WhiteoutCause::Rmdir => "rmdir",
            WhiteoutCause::Rename => "rename",
        }
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Unlink),
            1 => Some(Self::Rmdir),
            2 => Some(Self::Rename),
            _ => None,
        }
    }
}

/// A dentry's path relative to its overlay mount root, leaf first:
/// `names[0]` is the object's own name, `names[depth-1]` the child of the
/// root. Each name is NUL-terminated (a name of `NAME_LEN` bytes or more
/// keeps its first `NAME_LEN - 1`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Path {
    pub depth: u32,
    /// Bit `i` set: `names[i]` is the start of a longer name.
    pub name_cut: u32,
    pub names: [[u8; NAME_LEN]; PATH_DEPTH],
}

/// One copy-up, whiteout or opaque directory, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// [`EventKind`] as u32.
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event ended.
    pub ts_ns: u64,
    /// Thread group id (what userspace calls the pid) and thread id.
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// Overlay superblock `s_dev`, kernel encoding (major << 20 | minor).
    pub dev: u32,
    /// Inode mode (file type bits) of the object.
    pub mode: u32,
    pub comm: [u8; COMM_LEN],
    /// Inode number of the object (tells apart objects whose names were
    /// cut to the same bytes).
    pub ino: u64,
    /// Copy-up: time spent copying this one object.
    pub latency_ns: u64,
    /// Copy-up (target only): the whole operation, parents included.
    pub op_latency_ns: u64,
    /// Copy-up: data bytes requested from the data-copy function.
    pub bytes: u64,
    /// Copy-up (target only): parent directories copied up with it.
    pub parents: u32,
    /// Whiteout: [`WhiteoutCause`] as u32.
    pub cause: u32,
    /// Copy-up: valid frames in `stack`.
    pub stack_len: u32,
    /// Copy-up: [`CopyUpKind`] as u32.
    pub copy_kind: u32,
    /// Copy-up: the object's link count in overlay when its copy-up began:
    /// the lower file's where overlay keeps its hard links together
    /// (`index=on`, or a single link), 1 for a lower hard link that
    /// `index=off` breaks (the copy gets one name); 1 for a directory.
    pub links: u32,
    pub _pad: u32,
    /// Copy-up: kernel return addresses, innermost first.
    pub stack: [u64; STACK_DEPTH],
    pub path: Path,
}

impl Event {
    /// A record's bytes before its path's names: every record has them.
    pub const FIXED_LEN: usize =
        core::mem::offset_of!(Event, path) + core::mem::offset_of!(Path, names);

    /// A record's length in the ring: the fixed part and the `depth` names
    /// its path has. The names past the depth are not sent (a path a few
    /// names deep is about a third of the whole [`Event`]).
    pub const fn wire_len(depth: usize) -> usize {
        Self::FIXED_LEN + depth * NAME_LEN
    }
}

/// Key of the in-kernel write histograms: who wrote, into which overlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteKey {
    pub cgroup_id: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Log-linear latency histogram: values below [`HIST_LINEAR`] get a bucket
/// each, then every power of two is split into [`HIST_SUB`] buckets, up to
/// 2^[`HIST_MAX_EXP`] ns (about 18 minutes); larger values share the last.
pub const HIST_SUB_BITS: u32 = 3;
pub const HIST_SUB: usize = 1 << HIST_SUB_BITS;
pub const HIST_LINEAR: usize = 2 * HIST_SUB;
pub const HIST_MAX_EXP: u32 = 40;
pub const HIST_BUCKETS: usize =
    HIST_LINEAR + (HIST_MAX_EXP as usize - (HIST_SUB_BITS as usize + 1)) * HIST_SUB;

/// Aggregate of normal writes for one [`WriteKey`], added to atomically from every CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WriteStats {
    pub count: u64,
    pub bytes: u64,
    /// Writes whose latency went into `buckets` (all of them, or a sample).
    pub timed: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

/// floor(log2(v)) for v > 0, without loops (the verifier prefers it).
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket index of a latency in ns.
#[inline(always)]
pub fn hist_bucket(v: u64) -> usize {
    if v < HIST_LINEAR as u64 {
        return v as usize;
    }
    let e = log2(v);
    if e >= HIST_MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let sub = ((v >> (e - HIST_SUB_BITS)) as usize) & (HIST_SUB - 1);
    HIST_LINEAR + (e - HIST_SUB_BITS - 1) as usize * HIST_SUB + sub
}

/// The inclusive value range `[lo, hi]` a bucket stands for.
pub fn hist_bucket_range(i: usize) -> (u64, u64) {
    if i < HIST_LINEAR {
        return (i as u64, i as u64);
    }
    let e = (i - HIST_LINEAR) / HIST_SUB + HIST_SUB_BITS as usize + 1;
    let sub = ((i - HIST_LINEAR) % HIST_SUB) as u64;
    let width = 1u64 << (e - HIST_SUB_BITS as usize);
    let lo = (1u64 << e) + sub * width;
    if i == HIST_BUCKETS - 1 {
        return (lo, u64::MAX);
    }
    (lo, lo + width - 1)
}

/// Sentinel for "this argument is passed directly, not through a pointer".
pub const DIRECT: u32 = u32::MAX;

/// Everything kernel-specific the programs need, computed by the agent from
/// the running kernel's BTF and written into the `CONFIG` global at load.
/// Offsets are byte offsets; `*_arg` fields are 0-based argument positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Filter bits: 1 = only cgroup ids in `CGROUP_FILTER` or devices in
    /// `DEV_FILTER` pass. 0 = trace everything.
    pub filter: u32,
    /// Time one write in `2^write_sample_shift` (0 = every write); every
    /// write is counted either way. The sample is deterministic: the
    /// writes whose per-CPU sequence number is a multiple of the period.
    pub write_sample_shift: u32,
    /// 1: take a copy-up's stack when its operation starts
    /// (`ovl_copy_up_flags`), not when an object is copied. For kernels
    /// whose unwinder stops at a kretprobe trampoline (before 5.15): from
    /// `security_inode_copy_up` the walk would end at `ovl_copy_up_one`'s
    /// return probe, below the frames that tell the trigger.
    pub stack_at_op_start: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name_name: u32,
    pub dentry_d_name_len: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub sb_s_magic: u32,
    pub file_f_inode: u32,
    pub kiocb_ki_filp: u32,
    /// `ovl_copy_up_flags(dentry, flags)`: the dentry.
    pub copy_up_flags_dentry_arg: u32,
    /// `ovl_copy_up_one(parent, dentry, flags)`: the dentry.
    pub copy_up_one_dentry_arg: u32,
    /// The data-copy function's `len`.
    pub copy_data_len_arg: u32,
    /// `ovl_do_remove(dentry, is_dir)`.
    pub do_remove_dentry_arg: u32,
    pub do_remove_is_dir_arg: u32,
    /// `ovl_rename(..., olddir, old, newdir, new, flags)`: old and new.
    pub rename_old_arg: u32,
    pub rename_new_arg: u32,
    /// `ovl_mkdir(..., dir, dentry, mode)`: the new dentry.
    pub mkdir_dentry_arg: u32,
    /// `vfs_rename`: the argument that holds the rename flags, and if it is
    /// a `struct renamedata *`, the offset of `flags` in it (else [`DIRECT`]).
    pub vfs_rename_flags_arg: u32,
    pub vfs_rename_flags_off: u32,
    /// `vfs_setxattr`: the xattr name.
    pub vfs_setxattr_name_arg: u32,
    /// The current task's cgroup v2 directory: `task_struct.cgroups`,
    /// `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.name` and `.parent`.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_name: u32,
    pub kernfs_node_parent: u32,
}

/// `OVERLAYFS_SUPER_MAGIC`: a uapi constant, not a layout detail.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
/// uapi `RENAME_WHITEOUT`.
pub const RENAME_WHITEOUT: u32 = 1 << 2;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and arrays, no padding holes that
    // matter (explicit `_pad` fields), valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::WriteKey {}
    unsafe impl aya::Pod for super::WriteStats {}
    unsafe impl aya::Pod for super::CgroupName {}
    unsafe impl aya::Pod for super::SymbolAddrs {}
    unsafe impl aya::Pod for super::SymbolNames {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 39, (1 << 40) - 1, 1 << 40, u64::MAX]) {
            let b = hist_bucket(v);
            assert!(b < HIST_BUCKETS, "{v} -> {b}");
            assert!(b >= last, "{v} went backwards");
            let (lo, hi) = hist_bucket_range(b);
            assert!(lo <= v && v <= hi, "{v} not in bucket {b} = [{lo}, {hi}]");
            last = b;
        }
    }

    #[test]
    fn eight_buckets_per_power_of_two() {
        let first = hist_bucket(1 << 20);
        let next = hist_bucket(1 << 21);
        assert_eq!(next - first, HIST_SUB);
        assert_eq!(
            hist_bucket_range(first),
            (1 << 20, (1 << 20) + (1 << 17) - 1)
        );
    }

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [1u64, 2, 3, 4, 255, 256, 1 << 33, u64::MAX] {
            assert_eq!(log2(v), 63 - v.leading_zeros());
        }
    }
}
