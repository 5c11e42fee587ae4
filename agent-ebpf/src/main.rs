//! cowtrace's eBPF programs: overlayfs copy-up, whiteouts, opaque
//! directories and the normal-write baseline.
//!
//! Flow, per thread (state keyed by tid in plain hash maps: LRU maps may
//! evict a live entry under concurrency, which loses events silently; every
//! entry is removed when its operation ends, and a tid's next operation
//! overwrites a stale one):
//! - `ovl_copy_up_flags` entry remembers the operation's target dentry, its
//!   start time and the kernel stack (the agent classifies the trigger from
//!   it). Every `ovl_copy_up_one` inside it copies one object: a missing
//!   parent directory or, last, the target.
//! - An object counts as copied up only if `security_inode_copy_up` ran
//!   inside its `ovl_copy_up_one` (that hook runs only when overlayfs really
//!   copies: not when the object was already up or another thread won the
//!   race) and the call returned 0. The data-copy function adds its `len`.
//! - Whiteouts and opaque directories are seen from the upper filesystem's
//!   side (`ovl_cleanup_and_whiteout`, `vfs_rename` with RENAME_WHITEOUT,
//!   `vfs_setxattr` of `*.overlay.opaque`) while an overlay remove, rename or
//!   mkdir is on the thread's stack; the path comes from that overlay
//!   dentry, so it reads as the container sees it.
//! - Writes to overlay files are aggregated here into per-(cgroup, device)
//!   histograms; no per-write record crosses to userspace.
//!
//! Struct offsets and argument positions are not compiled in: they arrive in
//! [`CONFIG`], computed by the agent from the running kernel's BTF.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// `fetch_add`; the intrinsic gives the atomic add itself (see `atomic_add`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("cowtrace-probes is built for the BPF target; the cowtrace agent embeds it");
    std::process::exit(2);
}
