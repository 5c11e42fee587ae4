//! Kernel records decoded into the agent's own types. After this module
//! nothing in the agent looks at wire layouts.

use agent_ebpf::{flags, Event, EventKind};
pub use agent_ebpf::{CopyUpKind, WhiteoutCause};
use std::fmt::Write as _;

/// What happened, with the kind-specific facts.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    CopyUp(CopyUp),
    Whiteout {
        cause: WhiteoutCause,
    },
    OpaqueDir,
    /// A lower directory (or metacopy file) renamed with
    /// `redirect_dir=on`: recorded as a redirect, its tree not copied.
    Redirect,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CopyUp {
    pub latency_ns: u64,
    /// The whole operation, parents included (`None` for an ancestor).
    pub op_latency_ns: Option<u64>,
    pub parents: u32,
    pub bytes: u64,
    pub data: bool,
    /// Whole, metadata only (`metacopy=on`), or a metacopy file's data.
    pub kind: CopyUpKind,
    /// A parent directory copied up on the way to the operation's target.
    pub ancestor: bool,
    /// The object an unlink or rmdir removes, copied up first by
    /// `index=on` to keep its link count (not the removal's parent).
    pub removed: bool,
    /// Its link count in overlay when the copy-up began (see
    /// `agent_ebpf::Event::links`).
    pub links: u32,
    /// Kernel stack at the start of the operation, innermost first.
    pub stack: Vec<u64>,
}

/// One event, attributed to nobody yet.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelEvent {
    pub kind: Kind,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Overlay device, kernel encoding (major << 20 | minor).
    pub dev: u32,
    pub file_type: FileType,
    /// Raw path bytes relative to the overlay root (may be invalid UTF-8);
    /// a cut name holds its first bytes only (see `names_cut`).
    pub path: Vec<u8>,
    /// Cut at the top: deeper than the kernel walks.
    pub path_cut: bool,
    /// Root first, one per component of `path`: that name was longer than
    /// the kernel keeps.
    pub names_cut: Vec<bool>,
    /// Inode number of the object.
    pub ino: u64,
}

impl KernelEvent {
    /// An event of `kind` at `path` with every other field plain (pid and
    /// cgroup 1, device 0, a directory for an opaque one and a file
    /// otherwise, no name cut): for tests of what comes after decoding.
    pub fn plain(kind: Kind, path: &str) -> Self {
        let file_type = match kind {
            Kind::OpaqueDir => FileType::Dir,
            _ => FileType::File,
        };
        KernelEvent {
            kind,
            ts_ns: 0,
            pid: 1,
            tid: 1,
            comm: "t".into(),
            cgroup_id: 1,
            dev: 0,
            file_type,
            path: path.as_bytes().to_vec(),
            path_cut: false,
            names_cut: vec![false; path.split('/').count()],
            ino: 0,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::CopyUp(_) => EventKind::CopyUp,
            Kind::Whiteout { .. } => EventKind::Whiteout,
            Kind::OpaqueDir => EventKind::OpaqueDir,
            Kind::Redirect => EventKind::Redirect,
        }
        .key()
    }

    /// The path for display and JSON: control characters, format
    /// characters, backslashes and invalid UTF-8 escaped (`\xNN`), so a
    /// raw backslash can only be one of these markers:
    ///
    /// - `\…/` first: the path was deeper than the kernel walks (its top
    ///   is missing);
    /// - `\…` after a name: the name was longer than the kernel keeps
    ///   (this is its start), and the path then ends in `\#INODE`, so two
    ///   objects whose names start alike are never one path.
    pub fn path_display(&self) -> String {
        let mut s = String::new();
        if self.path_cut {
            s.push_str("\\…/");
        }
        let mut any_cut = false;
        for (i, part) in self.path.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                s.push('/');
            }
            s.push_str(&escape_bytes(part));
            if self.names_cut.get(i).copied().unwrap_or(false) {
                s.push_str("\\…");
                any_cut = true;
            }
        }
        if any_cut {
            s.push_str(&format!("\\#{}", self.ino));
        }
        s
    }
}

/// Characters that change how text around them looks without being seen
/// themselves: Unicode format characters (general category Cf: bidi
/// overrides and isolates such as U+202E, zero-width characters, the BOM,
/// tag characters, ...) and the line and paragraph separators (Zl, Zp).
/// A name holding one could pass for another name on a terminal.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// [`escape_bytes`] for text that is already a string (container names,
/// ids, runtime messages).
pub fn escape_str(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// Escapes control characters (C0, DEL, C1), invisible format characters
/// ([`is_invisible_format`]), backslashes and invalid UTF-8 as `\xNN` per
/// byte, so what is shown is exactly what the bytes were.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' || is_invisible_format(c) {
                for b in c.to_string().bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// What kind of object an event is about, from its inode's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
    Unknown,
}

impl FileType {
    pub fn of_mode(mode: u32) -> Self {
        match mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Dir,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDev,
            0o060000 => FileType::BlockDev,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// Its name in the JSON (`file_type`).
    pub const fn key(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::CharDev => "chardev",
            FileType::BlockDev => "blockdev",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::Unknown => "unknown",
        }
    }
}

/// The kind of a ring-buffer record without decoding the rest (to count
/// records that are dropped unread).
pub fn record_kind(bytes: &[u8]) -> Option<EventKind> {
    let head: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    EventKind::from_u32(u32::from_ne_bytes(head))
}

/// Decodes one ring-buffer record ([`Event::wire_len`] bytes: an [`Event`]
/// up to its path's last name); `None` if it is not a whole one.
pub fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    const FULL: usize = std::mem::size_of::<Event>();
    if bytes.len() < Event::FIXED_LEN || bytes.len() > FULL {
        return None;
    }
    let mut whole = [0u8; FULL];
    whole[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a whole Event's bytes; Event is plain old data valid for any bits.
    let ev: Event = unsafe { std::ptr::read_unaligned(whole.as_ptr() as *const Event) };
    let depth = (ev.path.depth as usize).min(agent_ebpf::PATH_DEPTH);
    if bytes.len() < Event::wire_len(depth) {
        return None;
    }
    let mut path = Vec::new();
    let mut names_cut = Vec::with_capacity(depth);
    for i in (0..depth).rev() {
        if i + 1 != depth {
            path.push(b'/');
        }
        path.extend_from_slice(cstr(&ev.path.names[i]));
        names_cut.push(ev.path.name_cut & (1 << i) != 0);
    }
    let kind = match EventKind::from_u32(ev.kind)? {
        EventKind::CopyUp => Kind::CopyUp(CopyUp {
            latency_ns: ev.latency_ns,
            op_latency_ns: (ev.flags & flags::OP_TARGET != 0).then_some(ev.op_latency_ns),
            parents: ev.parents,
            bytes: ev.bytes,
            data: ev.flags & flags::DATA != 0,
            kind: CopyUpKind::from_u32(ev.copy_kind)?,
            ancestor: ev.flags & flags::ANCESTOR != 0,
            removed: ev.flags & flags::REMOVED != 0,
            links: ev.links,
            stack: ev.stack[..(ev.stack_len as usize).min(agent_ebpf::STACK_DEPTH)].to_vec(),
        }),
        EventKind::Whiteout => Kind::Whiteout {
            // A cause this agent does not know is a record it cannot
            // trust: rejected like an unknown kind.
            cause: WhiteoutCause::from_u32(ev.cause)?,
        },
        EventKind::OpaqueDir => Kind::OpaqueDir,
        EventKind::Redirect => Kind::Redirect,
    };
    Some(KernelEvent {
        kind,
        ts_ns: ev.ts_ns,
        pid: ev.pid,
        tid: ev.tid,
        comm: escape_bytes(cstr(&ev.comm)),
        cgroup_id: ev.cgroup_id,
        dev: ev.dev,
        file_type: if ev.flags & flags::DIR != 0 {
            FileType::Dir
        } else {
            FileType::of_mode(ev.mode)
        },
        path,
        path_cut: ev.flags & flags::PATH_CUT != 0,
        names_cut,
        ino: ev.ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Event {
        unsafe { std::mem::zeroed() }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        let p = ev as *const Event as *const u8;
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn copy_kind_is_carried_and_an_unknown_one_rejected() {
        let mut ev = blank();
        ev.kind = EventKind::CopyUp as u32;
        for k in CopyUpKind::ALL {
            ev.copy_kind = k as u32;
            match decode(&bytes(&ev)).unwrap().kind {
                Kind::CopyUp(c) => assert_eq!(c.kind, k),
                other => panic!("{other:?}"),
            }
        }
        ev.copy_kind = 7;
        assert!(decode(&bytes(&ev)).is_none());
    }

    #[test]
    fn link_count_removal_and_redirect_are_carried() {
        let mut ev = blank();
        ev.kind = EventKind::CopyUp as u32;
        ev.flags = flags::OP_TARGET | flags::REMOVED;
        ev.links = 3;
        match decode(&bytes(&ev)).unwrap().kind {
            Kind::CopyUp(c) => {
                assert_eq!(c.links, 3);
                assert!(c.removed);
            }
            other => panic!("{other:?}"),
        }
        ev.flags = flags::OP_TARGET;
        match decode(&bytes(&ev)).unwrap().kind {
            Kind::CopyUp(c) => assert!(!c.removed),
            other => panic!("{other:?}"),
        }
        ev.kind = EventKind::Redirect as u32;
        ev.flags = flags::DIR;
        let e = decode(&bytes(&ev)).unwrap();
        assert_eq!(e.kind, Kind::Redirect);
        assert_eq!(e.kind_name(), "redirect");
        assert_eq!(e.file_type, FileType::Dir);
        ev.kind = agent_ebpf::EVENT_KINDS;
        assert!(decode(&bytes(&ev)).is_none());
    }

    #[test]
    fn path_is_joined_root_first() {
        let mut ev = blank();
        ev.kind = EventKind::CopyUp as u32;
        ev.flags = flags::OP_TARGET | flags::DATA;
        ev.path.depth = 4;
        for (i, n) in ["f", "c", "b", "a"].iter().enumerate() {
            ev.path.names[i][..n.len()].copy_from_slice(n.as_bytes());
        }
        ev.parents = 3;
        ev.mode = 0o100644;
        let e = decode(&bytes(&ev)).unwrap();
        assert_eq!(e.path, b"a/b/c/f");
        assert_eq!(e.file_type, FileType::File);
        match e.kind {
            Kind::CopyUp(c) => {
                assert_eq!(c.parents, 3);
                assert!(c.data);
                assert!(!c.ancestor);
                assert_eq!(c.op_latency_ns, Some(0));
            }
            k => panic!("wrong kind {k:?}"),
        }
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert!(decode(&[0u8; 16]).is_none());
        let mut ev = blank();
        ev.kind = 99;
        assert!(decode(&bytes(&ev)).is_none());
    }

    /// The kernel sends a record up to its path's last name.
    #[test]
    fn a_record_ends_after_its_paths_names() {
        let mut ev = blank();
        ev.kind = EventKind::Whiteout as u32;
        ev.cause = WhiteoutCause::Unlink as u32;
        ev.path.depth = 2;
        ev.path.names[0][..1].copy_from_slice(b"f");
        ev.path.names[1][..1].copy_from_slice(b"d");
        let whole = bytes(&ev);
        let sent = &whole[..Event::wire_len(2)];
        assert!(sent.len() < whole.len() / 2);
        let e = decode(sent).unwrap();
        assert_eq!(e.path, b"d/f");
        assert_eq!(
            e.kind,
            Kind::Whiteout {
                cause: WhiteoutCause::Unlink
            }
        );
        assert_eq!(decode(&whole).unwrap().path, b"d/f");
        // A name short, or more than an Event: not a record.
        assert!(decode(&whole[..Event::wire_len(2) - 1]).is_none());
        assert!(decode(&whole[..Event::FIXED_LEN]).is_none());
        let mut longer = whole.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        // A path of no names (the overlay's root) is the fixed part alone.
        ev.path.depth = 0;
        assert_eq!(decode(&bytes(&ev)[..Event::FIXED_LEN]).unwrap().path, b"");
    }

    #[test]
    fn escaping_control_and_invalid_bytes() {
        assert_eq!(escape_bytes(b"a\nb"), "a\\x0ab");
        assert_eq!(escape_bytes(b"caf\xc3\xa9"), "café");
        assert_eq!(escape_bytes(b"x\xffy"), "x\\xffy");
        assert_eq!(escape_bytes(b"\x1b[31m"), "\\x1b[31m");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\x5cslash");
    }

    #[test]
    fn escaping_invisible_format_characters() {
        // Right-to-left override: "evil\u{202e}txt.sh" shows as "evilhs.txt".
        assert_eq!(
            escape_str("evil\u{202e}txt.sh"),
            "evil\\xe2\\x80\\xaetxt.sh"
        );
        assert_eq!(escape_str("a\u{200b}b"), "a\\xe2\\x80\\x8bb");
        assert_eq!(escape_str("a\u{2028}b"), "a\\xe2\\x80\\xa8b");
        assert_eq!(escape_str("\u{feff}x"), "\\xef\\xbb\\xbfx");
        assert_eq!(
            escape_str("\u{2066}x\u{2069}"),
            "\\xe2\\x81\\xa6x\\xe2\\x81\\xa9"
        );
        assert_eq!(escape_str("tag\u{e0041}"), "tag\\xf3\\xa0\\x81\\x81");
        // C1 controls, e.g. U+009B (CSI).
        assert_eq!(escape_str("a\u{9b}31m"), "a\\xc2\\x9b31m");
        // Ordinary non-ASCII text stays readable.
        assert_eq!(escape_str("données/日本語/ü"), "données/日本語/ü");
    }

    #[test]
    fn cut_path_is_marked() {
        let mut ev = blank();
        ev.kind = EventKind::Whiteout as u32;
        ev.flags = flags::PATH_CUT | flags::DIR;
        ev.cause = WhiteoutCause::Rmdir as u32;
        ev.path.depth = 1;
        ev.path.names[0][0] = b'z';
        let e = decode(&bytes(&ev)).unwrap();
        assert_eq!(e.path_display(), "\\…/z");
        assert_eq!(e.file_type, FileType::Dir);
        assert_eq!(
            e.kind,
            Kind::Whiteout {
                cause: WhiteoutCause::Rmdir
            }
        );
    }

    #[test]
    fn long_names_that_start_alike_stay_apart_and_cuts_are_unambiguous() {
        let long = |ino: u64| {
            let mut ev = blank();
            ev.kind = EventKind::CopyUp as u32;
            ev.path.depth = 2;
            ev.path.names[0][..63].copy_from_slice(&[b'L'; 63]);
            ev.path.names[1][..4].copy_from_slice(b"data");
            ev.path.name_cut = 1;
            ev.ino = ino;
            decode(&bytes(&ev)).unwrap()
        };
        let a = long(1001).path_display();
        let b = long(1002).path_display();
        assert_ne!(a, b);
        assert_eq!(a, format!("data/{}\\…\\#1001", "L".repeat(63)));
        // A directory really named `…`, or with a backslash, is no marker.
        let mut ev = blank();
        ev.kind = EventKind::OpaqueDir as u32;
        ev.path.depth = 2;
        ev.path.names[0][..1].copy_from_slice(b"x");
        ev.path.names[1][..3].copy_from_slice("…".as_bytes());
        let real = decode(&bytes(&ev)).unwrap().path_display();
        assert_eq!(real, "…/x");
        ev.path.names[1][..4].copy_from_slice(b"\\#12");
        let real = decode(&bytes(&ev)).unwrap().path_display();
        assert_eq!(real, "\\x5c#12/x");
        // A depth cut and a name cut are told apart.
        ev.flags = flags::PATH_CUT;
        let deep = decode(&bytes(&ev)).unwrap().path_display();
        assert!(deep.starts_with("\\…/"), "{deep}");
        assert!(!deep.contains("\\#"), "{deep}");
    }
}
