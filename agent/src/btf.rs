//! A small, std-only reader for the kernel's BTF type information.
//!
//! Why it exists: our eBPF programs are written in Rust and cannot use CO-RE
//! relocations, so they read kernel structs with `bpf_probe_read_kernel` at
//! byte offsets that the agent computes at startup from the *running*
//! kernel's BTF (`/sys/kernel/btf/vmlinux`, and module BTF such as
//! `/sys/kernel/btf/overlay` when it exists) and passes in as globals. The
//! same data tells us which argument of a kernel function is which on this
//! kernel (parameters move between versions), including for function
//! pointers in `inode_operations` when the overlay module has no BTF
//! (Debian 5.10).
//!
//! We do not use btf-rs (LGPL) and aya-obj's parser is crate-private, so
//! this is a deliberately small reader following the format described in
//! the kernel's `Documentation/bpf/btf.rst`: it parses the header and every
//! type kind well enough to skip it, and resolves struct member offsets
//! (through anonymous struct/union members, typedefs and modifiers, and
//! `kind_flag` bitfield encodings) and function parameter types. Split BTF
//! (module BTF on top of vmlinux) is supported: its type ids continue after
//! the base's last id and its string offsets after the base's string
//! section.
//!
//! Lookups by name go through an index of each blob's named structs,
//! unions, typedefs and functions, made at the first lookup: the layout
//! asks a few dozen names, and scanning vmlinux's 125,000 types for each
//! (for a module's function, all of them before the module's own) was
//! most of its 156 ms under emulation. The index is a sorted list of
//! 64-bit name hashes (16 bytes per name, about 1 MiB for vmlinux, freed
//! with the BTF after attaching); every hit is checked against the name.

use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bound on typedef/modifier chains and nested anonymous members, to stay
/// safe on malformed (cyclic) input.
const MAX_DEPTH: usize = 64;
/// BTF does not record the pointer size; every target we support is 64-bit.
const PTR_SIZE: u32 = 8;

/// BTF type kinds (`BTF_KIND_*`). `Void` stands for type id 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data following the 12-byte `btf_type`.
    fn extra_len(self, vlen: usize) -> usize {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
            Kind::Enum | Kind::FuncProto => 8 * vlen,
            _ => 0,
        }
    }

    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

/// One BTF blob (vmlinux, or a module's split BTF).
struct Part {
    data: Vec<u8>,
    /// Absolute byte range of the string section in `data`.
    str_start: usize,
    str_len: usize,
    /// Type id of the first type of this blob.
    first_id: u32,
    /// String offsets >= this belong to this blob (0 for a base blob).
    str_base: u32,
    /// Absolute byte offset in `data` of each type's `btf_type`.
    offsets: Vec<u32>,
    /// (`name_key`, type id) of each named type of an [`INDEXED`] kind,
    /// sorted, the first id of a key only; made at the first lookup.
    names: OnceLock<Vec<(u64, u32)>>,
}

/// The kinds looked up by name (structs, unions, typedefs, functions);
/// others are found by a scan.
const INDEXED: [Kind; 4] = [Kind::Struct, Kind::Union, Kind::Typedef, Kind::Func];

/// FNV-1a over the kind and the name: a hash, not an identity, so every
/// hit is checked against the type's real kind and name.
fn name_key(kind: Kind, name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&(kind as u8)).chain(name) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Parsed BTF: a base blob, optionally followed by split (module) blobs.
/// Cloning is cheap (the blobs are shared).
#[derive(Clone)]
pub struct Btf {
    parts: Vec<Arc<Part>>,
    big_endian: bool,
}

/// A function parameter from a `FUNC`'s prototype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Parameter name; `"..."` for a variadic tail, may be empty.
    pub name: String,
    pub type_desc: TypeDesc,
}

/// A resolved struct member (see [`Btf::member`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset in bits from the start of the outer struct.
    pub bit_offset: u32,
    /// Bitfield width in bits, 0 if the member is not a bitfield.
    pub bitfield_size: u32,
    /// Size in bytes of the member's type, if it has one.
    pub size: Option<u32>,
    pub type_desc: TypeDesc,
}

/// A type description detached from the BTF, with modifiers
/// (`const`, `volatile`, `restrict`, type tags) dropped. Struct/union/enum
/// types are named, not expanded, so descriptions are always finite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeDesc {
    Void,
    Int {
        name: String,
        size: u32,
    },
    Float {
        name: String,
        size: u32,
    },
    Ptr(Box<TypeDesc>),
    Array {
        elem: Box<TypeDesc>,
        len: u32,
    },
    Struct(String),
    Union(String),
    Enum(String),
    /// Forward declaration (`struct x;` / `union x;`).
    Fwd {
        name: String,
        is_union: bool,
    },
    Typedef {
        name: String,
        target: Box<TypeDesc>,
    },
    FuncProto,
    /// Anything else (or a chain too deep to describe).
    Other,
}

impl TypeDesc {
    /// This type with typedefs removed at the top level.
    pub fn strip_typedefs(&self) -> &TypeDesc {
        let mut t = self;
        while let TypeDesc::Typedef { target, .. } = t {
            t = target;
        }
        t
    }

    /// For `struct X *` (through typedefs, or a forward-declared struct),
    /// the struct's name `X`.
    pub fn pointee_struct(&self) -> Option<&str> {
        match self.strip_typedefs() {
            TypeDesc::Ptr(inner) => match inner.strip_typedefs() {
                TypeDesc::Struct(n) => Some(n),
                TypeDesc::Fwd {
                    name,
                    is_union: false,
                } => Some(name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Is this `struct <name> *`?
    pub fn is_ptr_to_struct(&self, name: &str) -> bool {
        self.pointee_struct() == Some(name)
    }
}

impl fmt::Display for TypeDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeDesc::Void => write!(f, "void"),
            TypeDesc::Int { name, .. } | TypeDesc::Float { name, .. } => write!(f, "{name}"),
            TypeDesc::Ptr(inner) => write!(f, "{inner} *"),
            TypeDesc::Array { elem, len } => write!(f, "{elem}[{len}]"),
            TypeDesc::Struct(n) => write!(f, "struct {n}"),
            TypeDesc::Union(n) => write!(f, "union {n}"),
            TypeDesc::Enum(n) => write!(f, "enum {n}"),
            TypeDesc::Fwd { name, is_union } => {
                write!(f, "{} {name}", if *is_union { "union" } else { "struct" })
            }
            TypeDesc::Typedef { name, .. } => write!(f, "{name}"),
            TypeDesc::FuncProto => write!(f, "fn(..)"),
            TypeDesc::Other => write!(f, "?"),
        }
    }
}

/// Raw view of one `btf_type` and its trailing data.
struct RawType<'a> {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    extra: &'a [u8],
    big_endian: bool,
}

impl RawType<'_> {
    fn kind(&self) -> Kind {
        // Validated at parse time.
        Kind::from_raw((self.info >> 24) & 0x1f).unwrap_or(Kind::Void)
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
    /// The `i`-th u32 of the trailing data.
    fn word(&self, i: usize) -> u32 {
        read_u32(self.extra, i * 4, self.big_endian).unwrap_or(0)
    }
}

fn read_u32(data: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let b: [u8; 4] = data.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

struct Header {
    big_endian: bool,
    type_start: usize,
    type_end: usize,
    str_start: usize,
    str_len: usize,
}

fn parse_header(data: &[u8]) -> Result<Header> {
    if data.len() < HEADER_LEN {
        bail!("BTF blob too short ({} bytes)", data.len());
    }
    let big_endian = match [data[0], data[1]] {
        m if u16::from_le_bytes(m) == BTF_MAGIC => false,
        m if u16::from_be_bytes(m) == BTF_MAGIC => true,
        m => bail!("bad BTF magic {:02x}{:02x}", m[0], m[1]),
    };
    if data[2] != 1 {
        bail!("unsupported BTF version {}", data[2]);
    }
    let w = |off| read_u32(data, off, big_endian).unwrap_or(0) as usize;
    let hdr_len = w(4);
    if hdr_len < HEADER_LEN || hdr_len > data.len() {
        bail!("bad BTF header length {hdr_len}");
    }
    let (type_off, type_len, str_off, str_len) = (w(8), w(12), w(16), w(20));
    let type_start = hdr_len + type_off;
    let type_end = type_start + type_len;
    let str_start = hdr_len + str_off;
    if type_end > data.len() || str_start + str_len > data.len() {
        bail!(
            "BTF sections out of bounds (types {type_start}..{type_end}, strings {str_start}+{str_len}, blob {})",
            data.len()
        );
    }
    Ok(Header {
        big_endian,
        type_start,
        type_end,
        str_start,
        str_len,
    })
}

/// Byte offsets of each type in `data[start..end]`, validating kinds and
/// lengths.
fn index_types(data: &[u8], start: usize, end: usize, big_endian: bool) -> Result<Vec<u32>> {
    let mut offsets = Vec::new();
    let mut off = start;
    while off < end {
        if off + 12 > end {
            bail!("truncated BTF type at byte {off}");
        }
        let info = read_u32(data, off + 4, big_endian).unwrap_or(0);
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind)
            .ok_or_else(|| anyhow!("unknown BTF kind {raw_kind} at byte {off}"))?;
        let next = off + 12 + kind.extra_len((info & 0xffff) as usize);
        if next > end {
            bail!("truncated BTF {kind:?} type at byte {off}");
        }
        offsets.push(u32::try_from(off).context("BTF blob too large")?);
        off = next;
    }
    Ok(offsets)
}

impl Btf {
    /// Reads base BTF, e.g. `/sys/kernel/btf/vmlinux`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Btf> {
        let path = path.as_ref();
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Btf::from_bytes(data).with_context(|| format!("parsing BTF {}", path.display()))
    }

    /// Reads split BTF (e.g. `/sys/kernel/btf/overlay`) on top of `base`.
    pub fn split_from_file(path: impl AsRef<Path>, base: &Btf) -> Result<Btf> {
        let path = path.as_ref();
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Btf::split_from_bytes(data, base)
            .with_context(|| format!("parsing split BTF {}", path.display()))
    }

    /// Parses a base BTF blob.
    pub fn from_bytes(data: Vec<u8>) -> Result<Btf> {
        let part = Self::parse_part(data, 1, 0, None)?;
        let big_endian = part.1;
        Ok(Btf {
            parts: vec![Arc::new(part.0)],
            big_endian,
        })
    }

    /// Parses a split BTF blob whose type ids and string offsets continue
    /// those of `base`.
    pub fn split_from_bytes(data: Vec<u8>, base: &Btf) -> Result<Btf> {
        let last = base.parts.last().expect("a Btf has at least one part");
        let first_id = last.first_id + last.offsets.len() as u32;
        let str_base = last.str_base + last.str_len as u32;
        let (part, _) = Self::parse_part(data, first_id, str_base, Some(base.big_endian))?;
        let mut parts = base.parts.clone();
        parts.push(Arc::new(part));
        Ok(Btf {
            parts,
            big_endian: base.big_endian,
        })
    }

    fn parse_part(
        data: Vec<u8>,
        first_id: u32,
        str_base: u32,
        want_endian: Option<bool>,
    ) -> Result<(Part, bool)> {
        let h = parse_header(&data)?;
        if want_endian.is_some_and(|be| be != h.big_endian) {
            bail!("split BTF endianness differs from its base");
        }
        let offsets = index_types(&data, h.type_start, h.type_end, h.big_endian)?;
        Ok((
            Part {
                data,
                str_start: h.str_start,
                str_len: h.str_len,
                first_id,
                str_base,
                offsets,
                names: OnceLock::new(),
            },
            h.big_endian,
        ))
    }

    /// Highest valid type id (types are numbered 1..=last; 0 is void).
    pub fn last_type_id(&self) -> u32 {
        let p = self.parts.last().expect("a Btf has at least one part");
        p.first_id + p.offsets.len() as u32 - 1
    }

    fn raw(&self, id: u32) -> Result<RawType<'_>> {
        let part = self
            .parts
            .iter()
            .rev()
            .find(|p| id >= p.first_id)
            .ok_or_else(|| anyhow!("BTF type id {id} is void or invalid"))?;
        let off = *part
            .offsets
            .get((id - part.first_id) as usize)
            .ok_or_else(|| anyhow!("BTF type id {id} out of range"))? as usize;
        let be = self.big_endian;
        let w = |o| read_u32(&part.data, off + o, be).unwrap_or(0);
        let info = w(4);
        let kind = Kind::from_raw((info >> 24) & 0x1f).unwrap_or(Kind::Void);
        let extra_len = kind.extra_len((info & 0xffff) as usize);
        Ok(RawType {
            name_off: w(0),
            info,
            size_or_type: w(8),
            extra: &part.data[off + 12..off + 12 + extra_len],
            big_endian: be,
        })
    }

    /// String at `off` in the (combined) string section.
    fn string(&self, off: u32) -> Result<&str> {
        let part = self
            .parts
            .iter()
            .rev()
            .find(|p| off >= p.str_base)
            .expect("base part has str_base 0");
        let local = (off - part.str_base) as usize;
        if local >= part.str_len {
            bail!("BTF string offset {off} out of range");
        }
        let s = &part.data[part.str_start + local..part.str_start + part.str_len];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).map_err(|_| anyhow!("BTF string at {off} is not UTF-8"))
    }

    /// Whether the string at `off` is `name`: compared as bytes up to the
    /// first difference (lookups compare every type of a kind, and
    /// validating each name as UTF-8 first made them the slowest part of
    /// the layout under emulation).
    fn name_is(&self, off: u32, name: &str) -> bool {
        let Some(part) = self.parts.iter().rev().find(|p| off >= p.str_base) else {
            return false;
        };
        let local = (off - part.str_base) as usize;
        if local >= part.str_len {
            return false;
        }
        let s = &part.data[part.str_start + local..part.str_start + part.str_len];
        let n = name.len();
        s.len() > n && &s[..n] == name.as_bytes() && s[n] == 0
    }

    /// The bytes of the string at `off`, up to its NUL (not checked as
    /// UTF-8).
    fn name_bytes(&self, off: u32) -> Option<&[u8]> {
        let part = self.parts.iter().rev().find(|p| off >= p.str_base)?;
        let local = (off - part.str_base) as usize;
        if local >= part.str_len {
            return None;
        }
        let s = &part.data[part.str_start + local..part.str_start + part.str_len];
        let end = s.iter().position(|&b| b == 0)?;
        Some(&s[..end])
    }

    fn kind_of(&self, id: u32) -> Result<Kind> {
        if id == 0 {
            return Ok(Kind::Void);
        }
        Ok(self.raw(id)?.kind())
    }

    /// Name of type `id` ("" for anonymous types and void).
    pub fn type_name(&self, id: u32) -> Result<&str> {
        if id == 0 {
            return Ok("");
        }
        self.string(self.raw(id)?.name_off)
    }

    /// The first type id of one of `kinds` named `name`.
    pub fn find_type(&self, kinds: &[Kind], name: &str) -> Option<u32> {
        if !kinds.iter().all(|k| INDEXED.contains(k)) {
            return self.scan_for_type(kinds, name);
        }
        for part in &self.parts {
            let index = part.names.get_or_init(|| self.name_index(part));
            let mut first = None;
            for &kind in kinds {
                let key = name_key(kind, name.as_bytes());
                let at = index.partition_point(|&(k, _)| k < key);
                let Some(&(k, id)) = index.get(at) else {
                    continue;
                };
                if k != key {
                    continue;
                }
                // Two names of one hash: only the first is indexed.
                if !self.is_named(id, kind, name) {
                    return self.scan_for_type(kinds, name);
                }
                first = Some(first.map_or(id, |f: u32| f.min(id)));
            }
            if first.is_some() {
                return first;
            }
        }
        None
    }

    /// `part`'s index (see [`Part::names`]): one pass over its types.
    fn name_index(&self, part: &Part) -> Vec<(u64, u32)> {
        let mut index: Vec<(u64, u32)> = self
            .kinds_and_names(part)
            .filter(|(_, kind, _)| INDEXED.contains(kind))
            .filter_map(|(id, kind, name_off)| {
                let name = self.name_bytes(name_off).filter(|n| !n.is_empty())?;
                Some((name_key(kind, name), id))
            })
            .collect();
        // Ids ascend within a key after the sort, so dedup keeps the first.
        index.sort_unstable();
        index.dedup_by_key(|e| e.0);
        index.shrink_to_fit();
        index
    }

    /// Whether type `id` is of `kind` and called `name`.
    fn is_named(&self, id: u32, kind: Kind, name: &str) -> bool {
        self.raw(id)
            .is_ok_and(|t| t.kind() == kind && self.name_is(t.name_off, name))
    }

    /// [`Self::find_type`] by reading every type (kinds not indexed).
    fn scan_for_type(&self, kinds: &[Kind], name: &str) -> Option<u32> {
        self.parts.iter().find_map(|part| {
            self.kinds_and_names(part)
                .find(|(_, kind, name_off)| kinds.contains(kind) && self.name_is(*name_off, name))
                .map(|(id, _, _)| id)
        })
    }

    /// (type id, kind, name offset) of each type of `part`, in order.
    fn kinds_and_names<'p>(&self, part: &'p Part) -> impl Iterator<Item = (u32, Kind, u32)> + 'p {
        let be = self.big_endian;
        part.offsets
            .iter()
            .enumerate()
            .filter_map(move |(i, &off)| {
                let off = off as usize;
                let info = read_u32(&part.data, off + 4, be).unwrap_or(0);
                let kind = Kind::from_raw((info >> 24) & 0x1f)?;
                let name_off = read_u32(&part.data, off, be).unwrap_or(0);
                Some((part.first_id + i as u32, kind, name_off))
            })
    }

    /// Which of `names` are functions (`FUNC`) here.
    pub fn funcs_among<'n>(
        &self,
        names: &std::collections::HashSet<&'n str>,
    ) -> std::collections::HashSet<&'n str> {
        names.iter().copied().filter(|n| self.has_func(n)).collect()
    }

    /// Type id of the struct or union called `name` (or of a typedef of
    /// one).
    pub fn find_struct(&self, name: &str) -> Option<u32> {
        self.find_type(&[Kind::Struct, Kind::Union], name)
            .or_else(|| {
                let td = self.find_type(&[Kind::Typedef], name)?;
                let id = self.skip_modifiers(td).ok()?;
                matches!(self.kind_of(id).ok()?, Kind::Struct | Kind::Union).then_some(id)
            })
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn skip_modifiers(&self, mut id: u32) -> Result<u32> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let t = self.raw(id)?;
            if !t.kind().is_modifier() {
                return Ok(id);
            }
            id = t.size_or_type;
        }
        bail!("BTF type chain too deep at id {id}")
    }

    /// Size in bytes of type `id`, if it has one.
    pub fn type_size(&self, id: u32) -> Option<u32> {
        let id = self.skip_modifiers(id).ok()?;
        if id == 0 {
            return None;
        }
        let t = self.raw(id).ok()?;
        match t.kind() {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Some(t.size_or_type)
            }
            Kind::Ptr => Some(PTR_SIZE),
            Kind::Array => self.type_size(t.word(0))?.checked_mul(t.word(2)),
            _ => None,
        }
    }

    /// Describes type `id` (modifiers dropped, typedefs kept by name).
    pub fn describe(&self, id: u32) -> TypeDesc {
        self.describe_depth(id, 0)
    }

    fn describe_depth(&self, id: u32, depth: usize) -> TypeDesc {
        if id == 0 {
            return TypeDesc::Void;
        }
        if depth > MAX_DEPTH {
            return TypeDesc::Other;
        }
        let Ok(t) = self.raw(id) else {
            return TypeDesc::Other;
        };
        let name = || self.string(t.name_off).unwrap_or("").to_string();
        match t.kind() {
            Kind::Int => TypeDesc::Int {
                name: name(),
                size: t.size_or_type,
            },
            Kind::Float => TypeDesc::Float {
                name: name(),
                size: t.size_or_type,
            },
            Kind::Ptr => TypeDesc::Ptr(Box::new(self.describe_depth(t.size_or_type, depth + 1))),
            Kind::Array => TypeDesc::Array {
                elem: Box::new(self.describe_depth(t.word(0), depth + 1)),
                len: t.word(2),
            },
            Kind::Struct => TypeDesc::Struct(name()),
            Kind::Union => TypeDesc::Union(name()),
            Kind::Enum | Kind::Enum64 => TypeDesc::Enum(name()),
            Kind::Fwd => TypeDesc::Fwd {
                name: name(),
                is_union: t.kind_flag(),
            },
            Kind::Typedef => TypeDesc::Typedef {
                name: name(),
                target: Box::new(self.describe_depth(t.size_or_type, depth + 1)),
            },
            Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag => {
                self.describe_depth(t.size_or_type, depth + 1)
            }
            Kind::FuncProto => TypeDesc::FuncProto,
            _ => TypeDesc::Other,
        }
    }

    /// Finds member `name` directly in struct/union `id`, or inside its
    /// anonymous struct/union members. Returns (bit offset, bitfield size,
    /// member type id).
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<(u32, u32, u32)>> {
        if depth > MAX_DEPTH {
            bail!("anonymous members nested too deep");
        }
        let t = self.raw(id)?;
        for i in 0..t.vlen() {
            let (m_name, m_type, m_off) = (t.word(3 * i), t.word(3 * i + 1), t.word(3 * i + 2));
            let (bit_off, bits) = if t.kind_flag() {
                (m_off & 0xff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            let m_name = self.string(m_name)?;
            if m_name == name {
                return Ok(Some((bit_off, bits, m_type)));
            }
            if m_name.is_empty() {
                let inner = self.skip_modifiers(m_type)?;
                if matches!(self.kind_of(inner)?, Kind::Struct | Kind::Union) {
                    if let Some((o, b, ty)) = self.find_member(inner, name, depth + 1)? {
                        return Ok(Some((bit_off + o, b, ty)));
                    }
                }
            }
        }
        Ok(None)
    }

    fn struct_id(&self, struct_name: &str) -> Result<u32> {
        self.find_struct(struct_name)
            .ok_or_else(|| anyhow!("struct {struct_name} not found in BTF"))
    }

    /// Resolves a dotted member path (`"d_name.name"`) in struct
    /// `struct_name`; anonymous struct/union members are searched
    /// transparently. Returns (bit offset, bitfield size, type id).
    fn resolve_path(&self, struct_name: &str, path: &str) -> Result<(u32, u32, u32)> {
        let mut cur = self.struct_id(struct_name)?;
        let mut bit_offset = 0u32;
        let mut bits = 0;
        let mut done = String::from(struct_name);
        for comp in path.split('.') {
            if bits != 0 {
                bail!("{done} is a bitfield, it has no member {comp}");
            }
            let c = self.skip_modifiers(cur)?;
            if !matches!(self.kind_of(c)?, Kind::Struct | Kind::Union) {
                bail!(
                    "{done} is not a struct or union ({}), cannot find member {comp}",
                    self.describe(cur)
                );
            }
            let (o, b, ty) = self.find_member(c, comp, 0)?.ok_or_else(|| {
                let what = self.describe(c);
                if done == struct_name {
                    anyhow!("struct {struct_name} has no member {comp}")
                } else {
                    anyhow!(
                        "{done} ({what}) has no member {comp} (looking up {struct_name}.{path})"
                    )
                }
            })?;
            bit_offset = bit_offset
                .checked_add(o)
                .ok_or_else(|| anyhow!("member offset overflow"))?;
            bits = b;
            cur = ty;
            done.push('.');
            done.push_str(comp);
        }
        Ok((bit_offset, bits, cur))
    }

    /// Full information about member `path` of struct `struct_name`.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member> {
        let (bit_offset, bitfield_size, ty) = self.resolve_path(struct_name, path)?;
        Ok(Member {
            bit_offset,
            bitfield_size,
            size: self.type_size(ty),
            type_desc: self.describe(ty),
        })
    }

    /// Byte offset of member `path` (dotted, e.g. `"d_name.name"`) in struct
    /// `struct_name`. Fails for bitfields and members not byte aligned.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32> {
        let (bit_offset, bits, _) = self.resolve_path(struct_name, path)?;
        if bits != 0 || bit_offset % 8 != 0 {
            bail!("{struct_name}.{path} is a bitfield (bit offset {bit_offset}, {bits} bits)");
        }
        Ok(bit_offset / 8)
    }

    /// Is there a `FUNC` called `name`?
    pub fn has_func(&self, name: &str) -> bool {
        self.find_type(&[Kind::Func], name).is_some()
    }

    /// Parameters of function `func_name` (the first `FUNC` of that name:
    /// static functions of different files can share a name).
    pub fn func_params(&self, func_name: &str) -> Result<Vec<Param>> {
        let id = self
            .find_type(&[Kind::Func], func_name)
            .ok_or_else(|| anyhow!("function {func_name} not found in BTF"))?;
        let proto = self.raw(id)?.size_or_type;
        self.proto_params(proto)
            .with_context(|| format!("prototype of {func_name}"))
    }

    fn proto_params(&self, proto: u32) -> Result<Vec<Param>> {
        let proto = self.skip_modifiers(proto)?;
        let t = self.raw(proto)?;
        if t.kind() != Kind::FuncProto {
            bail!("type {proto} is {:?}, not a function prototype", t.kind());
        }
        (0..t.vlen())
            .map(|i| {
                let (name_off, ty) = (t.word(2 * i), t.word(2 * i + 1));
                let name = self.string(name_off)?;
                Ok(if ty == 0 && name.is_empty() {
                    Param {
                        name: "...".into(),
                        type_desc: TypeDesc::Void,
                    }
                } else {
                    Param {
                        name: name.to_string(),
                        type_desc: self.describe(ty),
                    }
                })
            })
            .collect()
    }

    /// 0-based position of parameter `param` of function `func`.
    pub fn param_index(&self, func: &str, param: &str) -> Option<usize> {
        self.func_params(func)
            .ok()?
            .iter()
            .position(|p| p.name == param)
    }

    /// Parameter types of the function-pointer member `member` of struct
    /// `struct_name`, e.g. `("inode_operations", "rename")`.
    pub fn member_fn_params(&self, struct_name: &str, member: &str) -> Result<Vec<TypeDesc>> {
        let (_, _, ty) = self.resolve_path(struct_name, member)?;
        let ptr = self.skip_modifiers(ty)?;
        if self.kind_of(ptr)? != Kind::Ptr {
            bail!(
                "{struct_name}.{member} is {}, not a function pointer",
                self.describe(ty)
            );
        }
        let params = self
            .proto_params(self.raw(ptr)?.size_or_type)
            .with_context(|| format!("{struct_name}.{member} is not a function pointer"))?;
        Ok(params.into_iter().map(|p| p.type_desc).collect())
    }

    /// Positions (0-based) of the `struct <pointee> *` parameters of the
    /// function-pointer member `member` of `struct_name`.
    pub fn member_fn_ptr_param_positions(
        &self,
        struct_name: &str,
        member: &str,
        pointee: &str,
    ) -> Result<Vec<usize>> {
        Ok(self
            .member_fn_params(struct_name, member)?
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_ptr_to_struct(pointee))
            .map(|(i, _)| i)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand, in either byte order, base or split.
    struct Builder {
        types: Vec<u8>,
        strs: Vec<u8>,
        next_id: u32,
        str_base: u32,
        be: bool,
    }

    impl Builder {
        fn new(be: bool) -> Builder {
            Builder {
                types: vec![],
                strs: vec![0],
                next_id: 1,
                str_base: 0,
                be,
            }
        }
        /// A split blob continuing `base` (first id, string length).
        fn split(base: &Builder) -> Builder {
            Builder {
                types: vec![],
                strs: vec![],
                next_id: base.next_id,
                str_base: base.str_base + base.strs.len() as u32,
                be: base.be,
            }
        }
        fn u32s(&mut self, vals: &[u32]) {
            for &v in vals {
                let b = if self.be {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                self.types.extend_from_slice(&b);
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strs.len() as u32;
            self.strs.extend_from_slice(name.as_bytes());
            self.strs.push(0);
            off
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) -> u32 {
            let n = self.s(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            self.u32s(&[n, info, st]);
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.ty(name, 1, 0, false, size);
            self.u32s(&[size * 8]);
            id
        }
        fn ptr(&mut self, to: u32) -> u32 {
            self.ty("", 2, 0, false, to)
        }
        fn modifier(&mut self, kind: u32, name: &str, to: u32) -> u32 {
            self.ty(name, kind, 0, false, to)
        }
        /// members: (name, type, offset-in-bits or kflag encoding)
        fn comp(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            kflag: bool,
            ms: &[(&str, u32, u32)],
        ) -> u32 {
            let names: Vec<u32> = ms.iter().map(|m| self.s(m.0)).collect();
            let id = self.ty(
                name,
                if union { 5 } else { 4 },
                ms.len() as u32,
                kflag,
                size,
            );
            for (m, n) in ms.iter().zip(names) {
                self.u32s(&[n, m.1, m.2]);
            }
            id
        }
        fn proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
            let names: Vec<u32> = params.iter().map(|p| self.s(p.0)).collect();
            let id = self.ty("", 13, params.len() as u32, false, ret);
            for (p, n) in params.iter().zip(names) {
                self.u32s(&[n, p.1]);
            }
            id
        }
        fn func(&mut self, name: &str, proto: u32) -> u32 {
            self.ty(name, 12, 1, false, proto)
        }
        /// One of every other kind, to check that parsing skips them right.
        fn noise(&mut self, int: u32) {
            let arr = self.ty("", 3, 0, false, 0);
            self.u32s(&[int, int, 16]);
            let (a, b) = (self.s("A"), self.s("B"));
            self.ty("e", 6, 2, false, 4);
            self.u32s(&[a, 0, b, 1]);
            self.ty("fwd_s", 7, 0, false, 0);
            self.modifier(9, "", int);
            self.modifier(11, "", int);
            let var = self.ty("v", 14, 0, false, arr);
            self.u32s(&[1]);
            self.ty(".data", 15, 1, false, 64);
            self.u32s(&[var, 0, 64]);
            self.ty("double", 16, 0, false, 8);
            self.ty("tag", 17, 0, false, var);
            self.u32s(&[u32::MAX]);
            self.modifier(18, "user", int);
            let c = self.s("C");
            self.ty("e64", 19, 1, true, 8);
            self.u32s(&[c, 0xffff_ffff, 0x1]);
        }
        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            let w16 = |v: u16| {
                if self.be {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let w32 = |v: u32| {
                if self.be {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            out.extend_from_slice(&w16(BTF_MAGIC));
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&w32(24));
            out.extend_from_slice(&w32(0));
            out.extend_from_slice(&w32(self.types.len() as u32));
            out.extend_from_slice(&w32(self.types.len() as u32));
            out.extend_from_slice(&w32(self.strs.len() as u32));
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strs);
            out
        }
    }

    /// A miniature kernel: qstr with its anonymous union/struct, a dentry
    /// whose d_name sits in an anonymous union (6.x+ layout), a bitfield
    /// struct, a function and an ops struct with function pointers.
    fn base(be: bool) -> Builder {
        let mut b = Builder::new(be);
        let u32_t = b.int("unsigned int", 4); // 1
        let u64_t = b.int("long long unsigned int", 8);
        let uchar = b.int("unsigned char", 1);
        b.noise(u32_t);
        let cuchar = b.modifier(10, "", uchar);
        let name_ptr = b.ptr(cuchar);
        let hl = b.comp(
            false,
            "",
            8,
            false,
            &[("hash", u32_t, 0), ("len", u32_t, 32)],
        );
        let un = b.comp(true, "", 8, false, &[("", hl, 0), ("hash_len", u64_t, 0)]);
        let qstr = b.comp(
            false,
            "qstr",
            16,
            false,
            &[("", un, 0), ("name", name_ptr, 64)],
        );
        let cqstr = b.modifier(10, "", qstr);
        let dentry_fwd_ptr_target = b.ty("dentry", 7, 0, false, 0); // fwd decl
        let parent = b.ptr(dentry_fwd_ptr_target);
        let dname_un = b.comp(
            true,
            "",
            16,
            false,
            &[("d_name", cqstr, 0), ("__d_name", qstr, 0)],
        );
        let dentry = b.comp(
            false,
            "dentry",
            64,
            false,
            &[
                ("d_flags", u32_t, 0),
                ("d_parent", parent, 192),
                ("", dname_un, 256),
            ],
        );
        let dptr = b.ptr(dentry);
        let td = b.modifier(8, "dentry_t", dentry);
        let td_ptr = b.ptr(td);
        // Bitfields: flags:3 at bit 0, mode:5 at bit 3, then a u32 at byte 4.
        b.comp(
            false,
            "bits",
            8,
            true,
            &[
                ("flags", u32_t, 3 << 24),
                ("mode", u32_t, (5 << 24) | 3),
                ("word", u32_t, 32),
            ],
        );
        let int_t = b.int("int", 4);
        let proto = b.proto(
            int_t,
            &[
                ("parent", dptr),
                ("dentry", td_ptr),
                ("flags", int_t),
                ("", 0),
            ],
        );
        b.func("do_thing", proto);
        let op_proto = b.proto(int_t, &[("", u32_t), ("", dptr), ("", u64_t), ("", td_ptr)]);
        let op_ptr = b.ptr(op_proto);
        let cop = b.modifier(10, "", op_ptr);
        b.comp(
            false,
            "ops",
            16,
            false,
            &[("rename", cop, 0), ("count", u32_t, 64)],
        );
        b
    }

    fn check_base(btf: &Btf) {
        assert_eq!(btf.member_offset("qstr", "len").unwrap(), 4);
        assert_eq!(btf.member_offset("qstr", "hash").unwrap(), 0);
        assert_eq!(btf.member_offset("qstr", "hash_len").unwrap(), 0);
        assert_eq!(btf.member_offset("qstr", "name").unwrap(), 8);
        assert_eq!(btf.member_offset("dentry", "d_parent").unwrap(), 24);
        assert_eq!(btf.member_offset("dentry", "d_name").unwrap(), 32);
        assert_eq!(btf.member_offset("dentry", "d_name.name").unwrap(), 40);
        assert_eq!(btf.member_offset("dentry", "d_name.len").unwrap(), 36);
        assert_eq!(btf.member_offset("dentry", "__d_name.len").unwrap(), 36);
        // typedef of a struct is accepted as the struct
        assert_eq!(btf.member_offset("dentry_t", "d_name.name").unwrap(), 40);
        let m = btf.member("dentry", "d_name.name").unwrap();
        assert_eq!(m.size, Some(8));
        assert_eq!(m.type_desc.to_string(), "unsigned char *");
        assert!(btf
            .member("dentry", "d_parent")
            .unwrap()
            .type_desc
            .is_ptr_to_struct("dentry"));
    }

    #[test]
    fn hand_built_blob_offsets() {
        for be in [false, true] {
            let btf = Btf::from_bytes(base(be).build()).unwrap();
            check_base(&btf);
        }
    }

    #[test]
    fn hand_built_blob_errors_name_the_member() {
        let btf = Btf::from_bytes(base(false).build()).unwrap();
        let e = btf
            .member_offset("dentry", "d_nam")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dentry") && e.contains("d_nam"), "{e}");
        let e = btf
            .member_offset("dentry", "d_name.nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("d_name") && e.contains("nope"), "{e}");
        let e = btf.member_offset("nosuch", "x").unwrap_err().to_string();
        assert!(e.contains("struct nosuch not found"), "{e}");
        let e = btf
            .member_offset("dentry", "d_flags.x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a struct"), "{e}");
        assert!(btf.func_params("nope").is_err());
    }

    #[test]
    fn hand_built_bitfields() {
        let btf = Btf::from_bytes(base(false).build()).unwrap();
        let m = btf.member("bits", "mode").unwrap();
        assert_eq!((m.bit_offset, m.bitfield_size), (3, 5));
        assert!(btf.member_offset("bits", "mode").is_err());
        assert!(btf.member_offset("bits", "flags").is_err());
        assert_eq!(btf.member_offset("bits", "word").unwrap(), 4);
    }

    #[test]
    fn hand_built_funcs() {
        let btf = Btf::from_bytes(base(false).build()).unwrap();
        assert!(btf.has_func("do_thing"));
        assert!(!btf.has_func("qstr"));
        let p = btf.func_params("do_thing").unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["parent", "dentry", "flags", "..."]);
        // through a forward declaration and through a typedef
        assert!(p[0].type_desc.is_ptr_to_struct("dentry"));
        assert!(p[1].type_desc.is_ptr_to_struct("dentry"));
        assert!(!p[2].type_desc.is_ptr_to_struct("dentry"));
        assert_eq!(p[1].type_desc.pointee_struct(), Some("dentry"));
        assert_eq!(btf.param_index("do_thing", "flags"), Some(2));
        assert_eq!(btf.param_index("do_thing", "nope"), None);
        assert_eq!(
            btf.member_fn_ptr_param_positions("ops", "rename", "dentry")
                .unwrap(),
            [1, 3]
        );
        assert_eq!(btf.member_fn_params("ops", "rename").unwrap().len(), 4);
        let e = btf
            .member_fn_params("ops", "count")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ops.count") && e.contains("not a function pointer"),
            "{e}"
        );
    }

    #[test]
    fn split_blob_continues_base_ids_and_strings() {
        for be in [false, true] {
            let b = base(be);
            let btf_base = Btf::from_bytes(b.build()).unwrap();
            assert_eq!(btf_base.last_type_id(), b.next_id - 1);
            let mut s = Builder::split(&b);
            let dentry = btf_base.find_struct("dentry").unwrap();
            let int_t = btf_base.find_type(&[Kind::Int], "int").unwrap();
            let dptr = s.ptr(dentry);
            let u16_t = s.int("u16", 2);
            s.noise(u16_t);
            let inode = s.comp(
                false,
                "ovl_inode",
                48,
                false,
                &[("flags", u16_t, 16), ("parent", dptr, 128)],
            );
            let proto = s.proto(
                int_t,
                &[("parent", dptr), ("dentry", dptr), ("flags", int_t)],
            );
            s.func("ovl_copy_up_one", proto);
            let iptr = s.ptr(inode);
            let proto2 = s.proto(0, &[("oi", iptr)]);
            s.func("ovl_other", proto2);
            let split = Btf::split_from_bytes(s.build(), &btf_base).unwrap();
            assert_eq!(split.last_type_id(), s.next_id - 1);
            // base lookups still work through the split object
            check_base(&split);
            assert!(!btf_base.has_func("ovl_copy_up_one"));
            assert!(split.has_func("ovl_copy_up_one"));
            // One pass finds the functions of both parts, and only them.
            let asked: std::collections::HashSet<&str> = [
                "ovl_copy_up_one",
                "ovl_other",
                "do_thing",
                "dentry",
                "missing",
            ]
            .into();
            let mut found: Vec<_> = split.funcs_among(&asked).into_iter().collect();
            found.sort();
            assert_eq!(found, ["do_thing", "ovl_copy_up_one", "ovl_other"]);
            assert_eq!(
                btf_base.funcs_among(&asked).into_iter().collect::<Vec<_>>(),
                ["do_thing"]
            );
            let p = split.func_params("ovl_copy_up_one").unwrap();
            assert!(p[0].type_desc.is_ptr_to_struct("dentry"));
            assert!(p[1].type_desc.is_ptr_to_struct("dentry"));
            assert_eq!(p[2].type_desc.to_string(), "int");
            assert_eq!(split.param_index("ovl_copy_up_one", "flags"), Some(2));
            assert_eq!(split.member_offset("ovl_inode", "flags").unwrap(), 2);
            // offsets do not add up through a pointer: that must be an error
            let e = split
                .member_offset("ovl_inode", "parent.d_name")
                .unwrap_err();
            assert!(e.to_string().contains("struct dentry *"), "{e}");
            let p = split.func_params("ovl_other").unwrap();
            assert_eq!(p[0].type_desc.pointee_struct(), Some("ovl_inode"));
        }
    }

    #[test]
    fn rejects_malformed_blobs() {
        let good = base(false).build();
        assert!(Btf::from_bytes(good[..20].to_vec()).is_err());
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(Btf::from_bytes(bad).is_err());
        // truncate the type section by 4 bytes: the last type is cut short
        let mut b = base(false);
        b.types.truncate(b.types.len() - 4);
        assert!(Btf::from_bytes(b.build()).is_err());
        // unknown kind 31
        let mut b = Builder::new(false);
        b.ty("x", 31, 0, false, 0);
        assert!(Btf::from_bytes(b.build()).is_err());
        // endianness mismatch between split and base
        let base_le = Btf::from_bytes(good).unwrap();
        let s = Builder::split(&base(true));
        assert!(Btf::split_from_bytes(s.build(), &base_le).is_err());
    }

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn vmlinux() -> Btf {
        assert!(
            Path::new(VMLINUX).exists(),
            "{VMLINUX} is missing: this test needs a kernel with CONFIG_DEBUG_INFO_BTF"
        );
        Btf::from_file(VMLINUX).unwrap()
    }

    #[test]
    fn vmlinux_offsets() {
        let btf = vmlinux();
        assert_eq!(btf.member_offset("dentry", "d_name").unwrap(), 32);
        assert_eq!(btf.member_offset("dentry", "d_name.name").unwrap(), 40);
        assert_eq!(btf.member_offset("dentry", "d_inode").unwrap(), 48);
        assert_eq!(btf.member_offset("dentry", "d_parent").unwrap(), 24);
        assert_eq!(btf.member_offset("dentry", "d_sb").unwrap(), 104);
        assert_eq!(btf.member_offset("qstr", "len").unwrap(), 4);
        assert_eq!(btf.member_offset("super_block", "s_dev").unwrap(), 16);
        assert_eq!(btf.member_offset("super_block", "s_magic").unwrap(), 96);
        assert_eq!(btf.member("super_block", "s_dev").unwrap().size, Some(4));
        assert_eq!(btf.member_offset("inode", "i_mode").unwrap(), 0);
        assert!(btf.member_offset("inode", "i_sb").is_ok());
        assert!(btf.member_offset("file", "f_inode").is_ok());
        assert!(btf.member_offset("renamedata", "flags").is_ok());
        let e = btf.member_offset("dentry", "no_such_field").unwrap_err();
        assert!(e.to_string().contains("no_such_field"));
    }

    #[test]
    fn vmlinux_functions() {
        let btf = vmlinux();
        assert!(btf.has_func("vfs_rename"));
        let p = btf.func_params("vfs_rename").unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].type_desc.is_ptr_to_struct("renamedata"), "{:?}", p[0]);
        assert!(btf.param_index("notify_change", "dentry").is_some());
        // inode_operations.rename(mnt_idmap *, inode *, dentry *, inode *, dentry *, flags)
        assert_eq!(
            btf.member_fn_ptr_param_positions("inode_operations", "rename", "dentry")
                .unwrap(),
            [2, 4]
        );
        let setattr = btf.member_fn_params("inode_operations", "setattr").unwrap();
        let iattr: Vec<usize> = (0..setattr.len())
            .filter(|&i| setattr[i].is_ptr_to_struct("iattr"))
            .collect();
        assert_eq!(iattr, [2]);
        assert_eq!(
            btf.member_fn_ptr_param_positions("inode_operations", "mkdir", "dentry")
                .unwrap(),
            [2]
        );
    }

    /// Overlay functions come from module BTF (split) when overlay is a
    /// module, or from vmlinux when it is built in (as on this host).
    #[test]
    fn overlay_functions_from_running_kernel() {
        let base = vmlinux();
        let module = Path::new("/sys/kernel/btf/overlay");
        let btf = if module.exists() {
            Btf::split_from_file(module, &base).unwrap()
        } else {
            base
        };
        if !btf.has_func("ovl_copy_up_one") {
            eprintln!("overlayfs BTF not available on this kernel; nothing to check");
            return;
        }
        let p = btf.func_params("ovl_copy_up_one").unwrap();
        let shown: Vec<String> = p
            .iter()
            .map(|p| format!("{} {}", p.type_desc, p.name))
            .collect();
        assert_eq!(
            shown,
            [
                "struct dentry * parent",
                "struct dentry * dentry",
                "int flags"
            ]
        );
        assert_eq!(btf.param_index("ovl_copy_up_flags", "flags"), Some(1));
    }

    #[test]
    fn lookups_by_name_find_the_first_of_each_kind_and_nothing_else() {
        let mut b = Builder::new(false);
        let int_t = b.int("int", 4);
        let s1 = b.comp(false, "thing", 4, false, &[("a", int_t, 0)]);
        let proto = b.proto(int_t, &[("x", int_t)]);
        // Static functions of different files share names: the first wins.
        let f1 = b.func("dup", proto);
        let _f2 = b.func("dup", proto);
        // A typedef and a function called like the struct.
        let td = b.modifier(8, "thing_t", s1);
        let f3 = b.func("thing", proto);
        let btf = Btf::from_bytes(b.build()).unwrap();
        assert_eq!(btf.find_type(&[Kind::Func], "dup"), Some(f1));
        assert_eq!(
            btf.find_type(&[Kind::Struct, Kind::Union], "thing"),
            Some(s1)
        );
        assert_eq!(btf.find_type(&[Kind::Func], "thing"), Some(f3));
        assert_eq!(
            btf.find_type(&[Kind::Func, Kind::Struct], "thing"),
            Some(s1)
        );
        assert_eq!(btf.find_type(&[Kind::Typedef], "thing_t"), Some(td));
        assert_eq!(btf.find_struct("thing_t"), Some(s1));
        // Not indexed: found by a scan all the same.
        assert_eq!(btf.find_type(&[Kind::Int], "int"), Some(int_t));
        for missing in ["", "thin", "things", "dup2", "int"] {
            assert_eq!(btf.find_type(&[Kind::Func, Kind::Typedef], missing), None);
        }
    }

    /// The index against a scan, over every named struct, union, typedef
    /// and function of this machine's own kernel (when it has BTF).
    #[test]
    fn the_index_finds_what_a_scan_finds_in_this_machines_vmlinux() {
        let Ok(btf) = Btf::from_file("/sys/kernel/btf/vmlinux") else {
            println!("no /sys/kernel/btf/vmlinux here: nothing to compare");
            return;
        };
        // The scan's answers for every name at once: the first id of each.
        let mut first = std::collections::HashMap::new();
        for id in 1..=btf.last_type_id() {
            let t = btf.raw(id).unwrap();
            if INDEXED.contains(&t.kind()) && t.name_off != 0 {
                let name = btf.string(t.name_off).unwrap().to_string();
                first.entry((t.kind() as u8, name)).or_insert(id);
            }
        }
        assert!(first.len() > 1000, "{} named types", first.len());
        for ((kind, name), id) in &first {
            let kind = INDEXED.into_iter().find(|k| *k as u8 == *kind).unwrap();
            assert_eq!(btf.find_type(&[kind], name), Some(*id), "{kind:?} {name}");
        }
        assert_eq!(
            btf.find_type(&[Kind::Func], "no such function, surely"),
            None
        );
    }
}
