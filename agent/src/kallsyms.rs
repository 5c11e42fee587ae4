//! Kernel symbol resolution from `/proc/kallsyms`, and classification of
//! what triggered an overlayfs copy-up from a kernel stack.
//!
//! Why: the copy-up probes capture the kernel stack (`bpf_get_stack`, in
//! `security_inode_copy_up` once an object is copied, or in
//! `ovl_copy_up_flags` on kernels before 5.15), and the most useful thing to tell a user about a
//! copy-up is *why* it happened (an open for write, a chmod, a rename...).
//! The caller of `ovl_copy_up_flags` cannot be read from a single frame:
//! the copy-up helpers are inlined differently on every kernel, and on older
//! kernels a kretprobe trampoline can replace the direct caller's return
//! address. So we resolve every frame and classify by the *nearest overlay
//! entry point* (an `inode_operations` / `file_operations` / xattr handler
//! of overlayfs), which is stable across versions. From 5.13 the kernel
//! names the frames itself ([`crate::kernel_names`]) and kallsyms is not
//! read for them; the classification ([`classify_frames`]) is the same.
//!
//! Memory: kallsyms has ~200k lines; we keep only overlay symbols and the
//! few vmlinux names the classification needs (truncate paths), but each kept
//! symbol's end is the start of the *next* symbol in the full table, so an
//! address in an unrelated function never resolves to a kept neighbour.

use anyhow::Result;
use serde::{Serialize, Serializer};
use std::fmt;

/// A kernel symbol with its address range `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub start: u64,
    /// Start of the next symbol in kallsyms (`u64::MAX` for the last one).
    pub end: u64,
    /// Name as kallsyms lists it, suffixes such as `.isra.0` included.
    pub name: String,
    /// Module name, `None` for vmlinux.
    pub module: Option<String>,
}

/// A sorted table of kept text symbols.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    syms: Vec<Symbol>,
}

/// Name without compiler-generated suffixes: `ovl_copy_up_one.isra.0`,
/// `ovl_open.cold`, `foo.constprop.0`, `bar.part.1`, `baz.llvm.123` all
/// lose everything from the first dot.
pub fn base_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// One kallsyms line: `ffffffff81000000 T name`, and for a module's
/// symbol `ffffffffc0a01000 t name\t[module]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub addr: u64,
    /// The symbol's type letter (`t`/`T`: text).
    pub ty: u8,
    pub name: &'a str,
    /// The module, without its brackets; `None` for vmlinux.
    pub module: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// Splits one line (its newline optional); `None` if malformed. On
    /// bytes, by the file's fixed layout: reading the file a `String` line
    /// at a time, each checked as UTF-8 and split on Unicode whitespace
    /// twice, was a third of the read's CPU (perf, 6.1 guest), and
    /// splitting it byte by byte still half of what remained (callgrind).
    pub fn split(line: &'a [u8]) -> Option<Self> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let space = memchr::memchr(b' ', line)?;
        let addr = parse_hex(&line[..space])?;
        let (&ty, rest) = line[space + 1..].split_first()?;
        let rest = rest.strip_prefix(b" ")?;
        let (name, module) = match memchr::memchr(b'\t', rest) {
            Some(tab) => (&rest[..tab], Some(&rest[tab + 1..])),
            None => (rest, None),
        };
        let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
        let module = module
            .and_then(|m| std::str::from_utf8(m).ok())
            .map(|m| m.trim().trim_start_matches('[').trim_end_matches(']'));
        Some(Line {
            addr,
            ty,
            name,
            module,
        })
    }

    /// A function (a text symbol).
    pub fn is_text(&self) -> bool {
        matches!(self.ty, b't' | b'T')
    }
}

/// A kallsyms address: 1 to 16 hex digits.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| {
        let d = (d as char).to_digit(16)?;
        Some(v << 4 | u64::from(d))
    })
}

/// Builds a [`Symbols`] one kallsyms line at a time, so the file (10 MB
/// and more with modules) is never held whole: it would be the agent's
/// peak memory, reached while BTF is parsed beside it.
pub struct SymbolsBuilder<K> {
    keep: K,
    /// Every symbol's start bounds the previous one.
    starts: Vec<u64>,
    syms: Vec<Symbol>,
}

impl<K: Fn(&str, Option<&str>) -> bool> SymbolsBuilder<K> {
    pub fn new(keep: K) -> Self {
        Self {
            keep,
            starts: Vec::new(),
            syms: Vec::new(),
        }
    }

    pub fn line(&mut self, line: &Line) {
        if line.addr == 0 {
            return;
        }
        self.starts.push(line.addr);
        if line.is_text() && !line.name.starts_with("__pfx_") && (self.keep)(line.name, line.module)
        {
            self.syms.push(Symbol {
                start: line.addr,
                end: u64::MAX,
                name: line.name.to_string(),
                module: line.module.map(str::to_string),
            });
        }
    }

    pub fn finish(self) -> Symbols {
        let (mut starts, mut syms) = (self.starts, self.syms);
        starts.sort_unstable();
        starts.dedup();
        for s in &mut syms {
            let next = starts.partition_point(|&a| a <= s.start);
            s.end = starts.get(next).copied().unwrap_or(u64::MAX);
        }
        syms.sort_by_key(|s| s.start);
        Symbols { syms }
    }
}

/// The default filter: overlay functions and truncate paths (see
/// [`Symbols::classify_copy_up`]).
pub fn default_keep(name: &str, module: Option<&str>) -> bool {
    let base = base_name(name);
    module == Some("overlay") || base.starts_with("ovl_") || base.contains("truncate")
}

impl Symbols {
    /// Parses kallsyms text keeping overlay symbols and truncate paths.
    pub fn parse(text: &str) -> Symbols {
        Symbols::parse_filtered(text, default_keep)
    }

    /// Parses kallsyms text keeping the text symbols (`t`/`T`) for which
    /// `keep(name, module)` is true. Zero addresses (hidden) are dropped.
    /// `__pfx_` padding symbols are never kept, but bound their neighbours.
    pub fn parse_filtered(text: &str, keep: impl Fn(&str, Option<&str>) -> bool) -> Symbols {
        let mut builder = SymbolsBuilder::new(keep);
        for line in text.lines().filter_map(|l| Line::split(l.as_bytes())) {
            builder.line(&line);
        }
        builder.finish()
    }

    /// Number of kept symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The kept symbol containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Symbol> {
        let i = self.syms.partition_point(|s| s.start <= addr);
        let s = self.syms.get(i.checked_sub(1)?)?;
        (addr < s.end).then_some(s)
    }

    /// Name of the kept function containing `addr` (as listed, suffixes
    /// included; see [`base_name`]).
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        self.lookup(addr).map(|s| s.name.as_str())
    }

    /// Classifies what caused a copy-up from a stack captured inside
    /// `ovl_copy_up_flags` or below it (innermost frame first,
    /// zero-terminated).
    ///
    /// Frames in the copy-up helpers themselves are skipped; the first frame
    /// in a known overlay entry point decides. We do not rely on the direct
    /// caller: helpers like `ovl_copy_up_with_data` or `ovl_maybe_copy_up`
    /// are inlined on some kernels and not others, and kretprobe trampolines
    /// on older kernels can stand in for return addresses. Nearest wins: in
    /// `ovl_link` the new name's parent is copied up from
    /// `ovl_create_object`, which is a parent copy-up, not the link source.
    pub fn classify_copy_up(&self, stack: &[u64]) -> Trigger {
        let frames: Vec<&str> = frame_addresses(stack)
            .map(|a| self.resolve(a).map(base_name).unwrap_or(""))
            .collect();
        classify_frames(&frames)
    }
}

/// The addresses to name in a stack captured in a copy-up (innermost
/// frame first, zero-terminated). Outer frames hold return addresses,
/// which point after the call and may be past the end of a function
/// ending in a call: each is stepped back one byte. Frame 0 is the probed
/// IP, taken as it is.
pub fn frame_addresses(stack: &[u64]) -> impl Iterator<Item = u64> + '_ {
    stack
        .iter()
        .take_while(|&&a| a != 0)
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a - 1 })
}

/// The trigger from the base names of a copy-up's frames (innermost first,
/// "" for a frame without a name); see [`Symbols::classify_copy_up`].
pub fn classify_frames(frames: &[&str]) -> Trigger {
    for (i, name) in frames.iter().enumerate() {
        if is_copy_up_helper(name) {
            continue;
        }
        let Some(t) = entry_point(name) else {
            continue;
        };
        if t == Trigger::Setattr && frames[i + 1..].iter().any(|n| n.contains("truncate")) {
            return Trigger::Truncate;
        }
        return t;
    }
    Trigger::Other
}

fn is_copy_up_helper(name: &str) -> bool {
    name.starts_with("ovl_copy_up") || name.starts_with("ovl_maybe_copy_up")
}

/// The trigger for an overlay entry point, `None` for other functions
/// (including overlay helpers, which are walked through).
fn entry_point(name: &str) -> Option<Trigger> {
    if !name.starts_with("ovl_") {
        return None;
    }
    Some(match name {
        "ovl_open" => Trigger::Open,
        "ovl_setattr" => Trigger::Setattr,
        "ovl_rename" => Trigger::Rename,
        "ovl_link" => Trigger::Link,
        "ovl_create" | "ovl_mkdir" | "ovl_mknod" | "ovl_symlink" | "ovl_create_object"
        | "ovl_create_or_link" | "ovl_unlink" | "ovl_rmdir" | "ovl_do_remove" | "ovl_tmpfile" => {
            Trigger::ParentOfCreateOrRemove
        }
        // chattr & co. (fileattr on 5.13+, ioctls before)
        n if n.starts_with("ovl_fileattr_set") || n.starts_with("ovl_ioctl") => Trigger::Other,
        // ovl_xattr_set, ovl_own_xattr_set, ovl_other_xattr_set,
        // ovl_set_acl, ovl_posix_acl_xattr_set...
        n if n.contains("xattr") || n.contains("acl") => Trigger::Xattr,
        _ => return None,
    })
}

/// What made overlayfs copy a file or directory up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// open for write or with O_TRUNC
    Open,
    /// truncate/ftruncate (setattr below a truncate syscall path)
    Truncate,
    /// chmod, chown, utimes
    Setattr,
    /// setxattr, removexattr, ACLs
    Xattr,
    /// rename source or target parent
    Rename,
    /// link source
    Link,
    /// create, mkdir, mknod, symlink, unlink, rmdir: the parent directory
    ParentOfCreateOrRemove,
    /// unlink or rmdir of the object itself, which `index=on` copies up
    /// first to keep its link count (known from the kernel, not the stack)
    Remove,
    /// ioctls such as chattr, or not recognised
    Other,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Open => "open",
            Trigger::Truncate => "truncate",
            Trigger::Setattr => "setattr",
            Trigger::Xattr => "xattr",
            Trigger::Rename => "rename",
            Trigger::Link => "link",
            Trigger::ParentOfCreateOrRemove => "parent",
            Trigger::Remove => "remove",
            Trigger::Other => "other",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Trigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Synthetic kallsyms in the real format: unsorted module block at the
    // end, data symbols and __pfx_ padding interleaved, suffixes.
    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 t __pfx_do_truncate
ffffffff81100010 T do_truncate
ffffffff81100200 T vfs_truncate
ffffffff81100400 T do_sys_ftruncate
ffffffff81100600 T __x64_sys_ftruncate
ffffffff81100800 T notify_change
ffffffff81100a00 T do_fchmodat
ffffffff81100c00 T vfs_open
ffffffff81100e00 T do_sys_openat2
ffffffff81101000 T vfs_rename
ffffffff81101200 T do_renameat2
ffffffff81101400 T __vfs_setxattr
ffffffff81101600 T path_setxattrat
ffffffff81101800 T vfs_ioctl
ffffffff81101a00 T do_unlinkat
ffffffff81101c00 T vfs_link
ffffffff81101e00 T handle_truncate
ffffffff81102000 T ovl_lookalike_unrelated
ffffffff81200000 D some_data
ffffffffc0100000 t ovl_copy_up_flags\t[overlay]
ffffffffc0100400 t ovl_copy_up_one.isra.0\t[overlay]
ffffffffc0100800 t ovl_open\t[overlay]
ffffffffc0100a00 t ovl_maybe_copy_up\t[overlay]
ffffffffc0100c00 t ovl_setattr\t[overlay]
ffffffffc0100e00 t ovl_copy_up_with_data\t[overlay]
ffffffffc0101000 t ovl_xattr_set.constprop.0\t[overlay]
ffffffffc0101200 t ovl_other_xattr_set\t[overlay]
ffffffffc0101400 t ovl_rename\t[overlay]
ffffffffc0101600 t ovl_link\t[overlay]
ffffffffc0101800 t ovl_create_object\t[overlay]
ffffffffc0101a00 t ovl_do_remove\t[overlay]
ffffffffc0101c00 t ovl_fileattr_set\t[overlay]
ffffffffc0101e00 t ovl_set_acl\t[overlay]
ffffffffc0102000 t ovl_nlink_start.part.0\t[overlay]
ffffffffc0102200 d ovl_dir_inode_operations\t[overlay]
ffffffffc0102400 t ovl_mkdir\t[overlay]
ffffffffc0102600 t ovl_open.cold\t[overlay]
ffffffffc0100300 t ovl_copy_up.cold\t[overlay]
ffffffffc0200000 t ext4_file_open\t[ext4]
";

    fn syms() -> Symbols {
        Symbols::parse(KALLSYMS)
    }

    /// An address 0x20 into the kept function `name`.
    fn at(s: &Symbols, name: &str) -> u64 {
        s.syms
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name} not kept"))
            .start
            + 0x20
    }

    /// Some vmlinux address not kept (between kept symbols).
    fn vm(off: u64) -> u64 {
        0xffffffff81100800 + off
    }

    #[test]
    fn keeps_only_overlay_and_truncate_text() {
        let s = syms();
        let names: Vec<&str> = s.syms.iter().map(|x| x.name.as_str()).collect();
        assert!(names.contains(&"do_truncate"));
        assert!(names.contains(&"handle_truncate"));
        assert!(names.contains(&"ovl_lookalike_unrelated"));
        assert!(!names.contains(&"__pfx_do_truncate"));
        assert!(!names.contains(&"notify_change"));
        assert!(!names.contains(&"ext4_file_open"));
        assert!(!names.contains(&"ovl_dir_inode_operations")); // data
        assert!(s.syms.windows(2).all(|w| w[0].start <= w[1].start));
        let m = s.lookup(at(&s, "ovl_open")).unwrap();
        assert_eq!(m.module.as_deref(), Some("overlay"));
        assert_eq!(s.lookup(at(&s, "do_truncate")).unwrap().module, None);
    }

    #[test]
    fn resolution_uses_full_table_bounds() {
        let s = syms();
        assert_eq!(s.resolve(0xffffffff81100010), Some("do_truncate"));
        assert_eq!(s.resolve(0xffffffff811001ff), Some("do_truncate"));
        // vfs_truncate is kept too
        assert_eq!(s.resolve(0xffffffff81100200), Some("vfs_truncate"));
        // notify_change (not kept) lies right after __x64_sys_ftruncate
        assert_eq!(s.resolve(0xffffffff81100600), Some("__x64_sys_ftruncate"));
        assert_eq!(s.resolve(0xffffffff81100800), None);
        assert_eq!(s.resolve(0xffffffff81100900), None);
        // padding before do_truncate belongs to nobody kept
        assert_eq!(s.resolve(0xffffffff81100005), None);
        // the data symbol bounds ovl_lookalike_unrelated
        assert_eq!(s.resolve(0xffffffff81200001), None);
        // data symbol in the module bounds ovl_nlink_start
        assert_eq!(s.resolve(0xffffffffc0102210), None);
        assert_eq!(
            s.resolve(0xffffffffc0100410),
            Some("ovl_copy_up_one.isra.0")
        );
        // an out-of-order line (ovl_copy_up.cold) still sorted in place and
        // bounds ovl_copy_up_flags
        assert_eq!(s.resolve(0xffffffffc0100310), Some("ovl_copy_up.cold"));
        assert_eq!(s.resolve(0xffffffffc01002ff), Some("ovl_copy_up_flags"));
        // before everything, and another module's function
        assert_eq!(s.resolve(0x1000), None);
        assert_eq!(s.resolve(0xffffffffc0200010), None);
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name("ovl_copy_up_one.isra.0"), "ovl_copy_up_one");
        assert_eq!(base_name("ovl_open.cold"), "ovl_open");
        assert_eq!(base_name("x.constprop.0.isra.0"), "x");
        assert_eq!(base_name("plain"), "plain");
    }

    #[test]
    fn zero_addresses_are_ignored() {
        let s = Symbols::parse("0000000000000000 t ovl_open\t[overlay]\n");
        assert!(s.is_empty());
    }

    fn classify(s: &Symbols, frames: &[u64]) -> Trigger {
        let mut v = frames.to_vec();
        v.extend([0, 0xdead, 0xbeef]); // garbage after the terminator
        s.classify_copy_up(&v)
    }

    #[test]
    fn classify_each_trigger() {
        let s = syms();
        let f = |n: &str| at(&s, n);
        let flags = f("ovl_copy_up_flags");
        let one = f("ovl_copy_up_one.isra.0");
        let cases: Vec<(Vec<u64>, Trigger)> = vec![
            (
                vec![
                    flags,
                    f("ovl_maybe_copy_up"),
                    f("ovl_open"),
                    vm(0x400),
                    vm(0x600),
                ],
                Trigger::Open,
            ),
            // suffixed entry point
            (vec![flags, f("ovl_open.cold"), vm(0x600)], Trigger::Open),
            (
                vec![
                    flags,
                    f("ovl_copy_up_with_data"),
                    f("ovl_setattr"),
                    vm(0x10),
                    vm(0x200),
                ],
                Trigger::Setattr,
            ),
            (
                vec![
                    flags,
                    f("ovl_setattr"),
                    vm(0x10),
                    f("do_truncate"),
                    f("do_sys_ftruncate"),
                    f("__x64_sys_ftruncate"),
                ],
                Trigger::Truncate,
            ),
            (
                vec![
                    flags,
                    f("ovl_setattr"),
                    vm(0x10),
                    f("handle_truncate"),
                    vm(0x600),
                ],
                Trigger::Truncate,
            ),
            (
                vec![flags, f("ovl_xattr_set.constprop.0"), vm(0xc00)],
                Trigger::Xattr,
            ),
            (
                vec![flags, f("ovl_other_xattr_set"), vm(0xc00)],
                Trigger::Xattr,
            ),
            (vec![flags, f("ovl_set_acl"), vm(0xc00)], Trigger::Xattr),
            (vec![flags, f("ovl_rename"), vm(0xa00)], Trigger::Rename),
            (vec![one, flags, f("ovl_link")], Trigger::Link),
            (vec![flags, f("ovl_link"), vm(0x1400)], Trigger::Link),
            // nearest entry point wins: link's new parent copied up inside
            // ovl_create_object
            (
                vec![flags, f("ovl_create_object"), f("ovl_link")],
                Trigger::ParentOfCreateOrRemove,
            ),
            (
                vec![flags, f("ovl_create_object"), f("ovl_mkdir")],
                Trigger::ParentOfCreateOrRemove,
            ),
            (
                vec![flags, f("ovl_do_remove"), vm(0x1200)],
                Trigger::ParentOfCreateOrRemove,
            ),
            // an overlay helper in between is walked through
            (
                vec![flags, f("ovl_nlink_start.part.0"), f("ovl_rename")],
                Trigger::Rename,
            ),
            (
                vec![flags, f("ovl_fileattr_set"), vm(0x1000)],
                Trigger::Other,
            ),
            // unknown frames (kretprobe trampoline, unresolvable) are skipped
            (
                vec![flags, 0xffffffffa0000000, f("ovl_open")],
                Trigger::Open,
            ),
            // nothing recognised
            (vec![flags, vm(0x400), vm(0x600)], Trigger::Other),
            (vec![], Trigger::Other),
            // a truncate frame INSIDE (before) ovl_setattr does not count
            (
                vec![flags, f("do_truncate"), f("ovl_setattr"), vm(0x10)],
                Trigger::Setattr,
            ),
            // frames after the zero terminator are ignored
            (vec![flags, 0, f("ovl_open")], Trigger::Other),
        ];
        for (i, (stack, want)) in cases.iter().enumerate() {
            assert_eq!(classify(&s, stack), *want, "case {i}: {stack:x?}");
        }
    }

    #[test]
    fn return_address_at_function_end_resolves_to_caller() {
        let s = syms();
        // A call as the last instruction of ovl_open: the return address is
        // the first byte of the next symbol (ovl_maybe_copy_up here).
        let end_of_open = 0xffffffffc0100a00;
        assert_eq!(
            classify(&s, &[at(&s, "ovl_copy_up_flags"), end_of_open]),
            Trigger::Open
        );
    }

    #[test]
    fn trigger_strings_and_serde() {
        let all = [
            (Trigger::Open, "open"),
            (Trigger::Truncate, "truncate"),
            (Trigger::Setattr, "setattr"),
            (Trigger::Xattr, "xattr"),
            (Trigger::Rename, "rename"),
            (Trigger::Link, "link"),
            (Trigger::ParentOfCreateOrRemove, "parent"),
            (Trigger::Other, "other"),
        ];
        for (t, s) in all {
            assert_eq!(t.as_str(), s);
            assert_eq!(t.to_string(), s);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn kallsyms_lines_split_into_their_fields() {
        assert_eq!(
            Line::split(b"ffffffff81000000 T _stext\n"),
            Some(Line {
                addr: 0xffff_ffff_8100_0000,
                ty: b'T',
                name: "_stext",
                module: None,
            })
        );
        assert_eq!(
            Line::split(b"ffffffffc0a01000 t ovl_open\t[overlay]\n"),
            Some(Line {
                addr: 0xffff_ffff_c0a0_1000,
                ty: b't',
                name: "ovl_open",
                module: Some("overlay"),
            })
        );
        // Hidden addresses (an unprivileged reader) still split.
        assert_eq!(
            Line::split(b"0000000000000000 t ovl_open\t[overlay]").map(|l| l.addr),
            Some(0)
        );
        for bad in [
            &b""[..],
            b"\n",
            b"ffffffff81000000\n",
            b"ffffffff81000000 T\n",
            b"ffffffff81000000 T \n",
            b"fffffffg81000000 T x\n",
            b"1ffffffff81000000 T x\n",
            b" T x\n",
        ] {
            assert_eq!(Line::split(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The byte splitter against the obvious one, on every line of this
    /// machine's kallsyms.
    #[test]
    fn running_kernel_kallsyms_lines_split_as_by_whitespace() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let mut lines = 0;
        for l in text.lines() {
            let mut f = l.split_whitespace();
            let (addr, ty, name) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let module = f
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']'));
            let want = Line {
                addr: u64::from_str_radix(addr, 16).unwrap(),
                ty: ty.as_bytes()[0],
                name,
                module,
            };
            assert_eq!(Line::split(l.as_bytes()), Some(want), "{l:?}");
            lines += 1;
        }
        assert!(lines > 1000, "{lines} lines");
    }

    #[test]
    fn running_kernel_kallsyms_parses() {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let s = Symbols::parse(&text);
        let visible = text
            .lines()
            .find(|l| l.contains(" ovl_copy_up_flags"))
            .is_some_and(|l| !l.starts_with("0000000000000000"));
        if !visible {
            eprintln!("overlay not loaded or kallsyms addresses hidden; nothing to check");
            return;
        }
        let sym = s
            .syms
            .iter()
            .find(|x| base_name(&x.name) == "ovl_copy_up_flags")
            .expect("ovl_copy_up_flags kept");
        assert_eq!(s.resolve(sym.start), Some(sym.name.as_str()));
        assert!(sym.end > sym.start && sym.end - sym.start < 1 << 20);
        assert!(s.len() < 5000, "kept {} symbols", s.len());
        let stack = [sym.start + 1, 0];
        assert_eq!(s.classify_copy_up(&stack), Trigger::Other);
    }
}
