//! A newc cpio (initramfs) writer with an in-memory file tree.
//!
//! Build a [`Tree`] of directories, files (from bytes or host paths),
//! symlinks and device nodes, then [`Tree::write_gz`] it as a gzip'd newc
//! archive the kernel unpacks as its initramfs. Owners are always root.

use anyhow::{Context, Result};
use flate2::{write::GzEncoder, Compression};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum Node {
    Dir { mode: u32 },
    Bytes { mode: u32, data: Vec<u8> },
    HostFile { mode: u32, path: PathBuf },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// Paths are relative (no leading `/`); parents are created implicitly.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

fn clean(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: &str, node: Node) -> &mut Self {
        let path = clean(path);
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.nodes.insert(path, node);
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.insert(path, Node::Dir { mode })
    }
    pub fn bytes(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.insert(
            path,
            Node::Bytes {
                mode,
                data: data.into(),
            },
        )
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }
    pub fn chardev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.insert(path, Node::CharDev { mode, major, minor })
    }

    /// Add all of `other`'s entries (they win over existing ones).
    pub fn merge(&mut self, other: &Tree) -> &mut Self {
        self.merge_under("", other)
    }

    /// Add all of `other`'s entries below `prefix`.
    pub fn merge_under(&mut self, prefix: &str, other: &Tree) -> &mut Self {
        for (p, n) in &other.nodes {
            self.insert(&format!("{prefix}/{p}"), n.clone());
        }
        self
    }

    /// Add a host file or directory tree (symlinks kept as symlinks) at `path`.
    pub fn host(&mut self, path: &str, host: &Path) -> Result<&mut Self> {
        let meta = fs::symlink_metadata(host)
            .with_context(|| format!("cannot read {}", host.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let t = fs::read_link(host)?;
            self.symlink(path, &t.to_string_lossy());
        } else if meta.is_dir() {
            self.dir(path, mode);
            let mut entries: Vec<_> = fs::read_dir(host)?.filter_map(|e| e.ok()).collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let child = format!("{}/{}", clean(path), e.file_name().to_string_lossy());
                self.host(&child, &e.path())?;
            }
        } else if meta.is_file() {
            self.insert(
                path,
                Node::HostFile {
                    mode,
                    path: host.to_path_buf(),
                },
            );
        } else {
            anyhow::bail!(
                "{}: only files, directories and symlinks can be copied",
                host.display()
            );
        }
        Ok(self)
    }

    /// Write the archive (gzip, fast level) to `out`.
    pub fn write_gz(&self, out: &Path) -> Result<()> {
        let f = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut gz = GzEncoder::new(io::BufWriter::new(f), Compression::fast());
        self.write_to(&mut gz)?;
        gz.finish()?.flush()?;
        Ok(())
    }

    /// Write the uncompressed newc archive.
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        let mut ino = 1u32;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        for (path, node) in &self.nodes {
            ino += 1;
            match node {
                Node::Dir { mode } => header(w, ino, 0o040000 | mode, 2, 0, (0, 0), now, path)?,
                Node::Bytes { mode, data } => {
                    header(
                        w,
                        ino,
                        0o100000 | mode,
                        1,
                        data.len() as u64,
                        (0, 0),
                        now,
                        path,
                    )?;
                    w.write_all(data)?;
                    pad(w, data.len() as u64)?;
                }
                Node::HostFile { mode, path: host } => {
                    let mut f =
                        fs::File::open(host).with_context(|| format!("open {}", host.display()))?;
                    let meta = f.metadata()?;
                    let size = meta.size();
                    let mtime = meta.mtime().clamp(0, u32::MAX as i64) as u32;
                    header(w, ino, 0o100000 | mode, 1, size, (0, 0), mtime, path)?;
                    let n = io::copy(&mut (&mut f).take(size), w)?;
                    anyhow::ensure!(n == size, "{} changed size while archiving", host.display());
                    pad(w, size)?;
                }
                Node::Symlink { target } => {
                    header(w, ino, 0o120777, 1, target.len() as u64, (0, 0), now, path)?;
                    w.write_all(target.as_bytes())?;
                    pad(w, target.len() as u64)?;
                }
                Node::CharDev { mode, major, minor } => {
                    header(w, ino, 0o020000 | mode, 1, 0, (*major, *minor), now, path)?
                }
            }
        }
        header(w, 0, 0, 1, 0, (0, 0), 0, "TRAILER!!!")?;
        Ok(())
    }
}

use std::io::Read;

#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u64,
    rdev: (u32, u32),
    mtime: u32,
    name: &str,
) -> Result<()> {
    anyhow::ensure!(size <= u32::MAX as u64, "{name}: file too large for cpio");
    let namesize = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, (110 + namesize) as u64)?;
    Ok(())
}

fn pad(w: &mut impl Write, len: u64) -> Result<()> {
    let n = (4 - (len % 4)) % 4;
    w.write_all(&[0u8; 3][..n as usize])?;
    Ok(())
}
