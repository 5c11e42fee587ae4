//! Kernel records decoded into the agent's own types. After this module
//! nothing in the agent looks at wire layouts.

use agent_ebpf::{flags, Event, EventKind, WhiteoutCause};
use std::fmt::Write as _;

/// What happened, with the kind-specific facts.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    CopyUp(CopyUp),
    Whiteout { cause: &'static str },
    OpaqueDir,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CopyUp {
    pub latency_ns: u64,
    /// The whole operation, parents included (`None` for an ancestor).
    pub op_latency_ns: Option<u64>,
    pub parents: u32,
    pub bytes: u64,
    pub data: bool,
    /// A parent directory copied up on the way to the operation's target.
    pub ancestor: bool,
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
    pub file_type: &'static str,
    /// Raw path bytes relative to the overlay root (may be invalid UTF-8).
    pub path: Vec<u8>,
    pub path_cut: bool,
}

impl KernelEvent {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::CopyUp(_) => "copy_up",
            Kind::Whiteout { .. } => "whiteout",
            Kind::OpaqueDir => "opaque_dir",
        }
    }

    /// The path for display and JSON: control characters and invalid UTF-8
    /// escaped (`\xNN`), a cut path prefixed with `…/`.
    pub fn path_display(&self) -> String {
        let mut s = String::new();
        if self.path_cut {
            s.push_str("…/");
        }
        s.push_str(&escape_bytes(&self.path));
        s
    }
}

/// Escapes control characters, backslashes and invalid UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
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

fn file_type(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o100000 => "file",
        0o040000 => "dir",
        0o120000 => "symlink",
        0o020000 => "chardev",
        0o060000 => "blockdev",
        0o010000 => "fifo",
        0o140000 => "socket",
        _ => "unknown",
    }
}

/// Decodes one ring-buffer record; `None` if it is not a whole [`Event`].
pub fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data valid for any bits.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) };
    let depth = (ev.path.depth as usize).min(agent_ebpf::PATH_DEPTH);
    let mut path = Vec::new();
    for i in (0..depth).rev() {
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(cstr(&ev.path.names[i]));
    }
    let kind = match EventKind::from_u32(ev.kind)? {
        EventKind::CopyUp => Kind::CopyUp(CopyUp {
            latency_ns: ev.latency_ns,
            op_latency_ns: (ev.flags & flags::OP_TARGET != 0).then_some(ev.op_latency_ns),
            parents: ev.parents,
            bytes: ev.bytes,
            data: ev.flags & flags::DATA != 0,
            ancestor: ev.flags & flags::ANCESTOR != 0,
            stack: ev.stack[..(ev.stack_len as usize).min(agent_ebpf::STACK_DEPTH)].to_vec(),
        }),
        EventKind::Whiteout => Kind::Whiteout {
            cause: match ev.cause {
                c if c == WhiteoutCause::Rmdir as u32 => "rmdir",
                c if c == WhiteoutCause::Rename as u32 => "rename",
                _ => "unlink",
            },
        },
        EventKind::OpaqueDir => Kind::OpaqueDir,
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
            "dir"
        } else {
            file_type(ev.mode)
        },
        path,
        path_cut: ev.flags & flags::PATH_CUT != 0,
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
        assert_eq!(e.file_type, "file");
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

    #[test]
    fn escaping_control_and_invalid_bytes() {
        assert_eq!(escape_bytes(b"a\nb"), "a\\x0ab");
        assert_eq!(escape_bytes(b"caf\xc3\xa9"), "café");
        assert_eq!(escape_bytes(b"x\xffy"), "x\\xffy");
        assert_eq!(escape_bytes(b"\x1b[31m"), "\\x1b[31m");
        assert_eq!(escape_bytes(b"back\\slash"), "back\\x5cslash");
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
        assert_eq!(e.path_display(), "…/z");
        assert_eq!(e.file_type, "dir");
        assert_eq!(e.kind, Kind::Whiteout { cause: "rmdir" });
    }
}
