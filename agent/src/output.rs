//! Output files, opened as root next to users and containers that are not
//! trusted.
//!
//! Every output is checked before anything is attached, and every later
//! operation goes through a descriptor of its directory (`openat`,
//! `renameat`, `unlinkat`), so a name planted in that directory after the
//! check cannot redirect a write:
//!
//! - `--json FILE` must be a regular file or not exist yet. Each report is
//!   written to a new temporary file with an unpredictable name created
//!   with `O_CREAT | O_EXCL | O_NOFOLLOW`, synced, then renamed over FILE.
//!   Nothing is ever opened or truncated through FILE itself.
//! - `--events FILE` is opened once with `O_NOFOLLOW` (a planted symlink is
//!   an error, never followed); it may be a regular file (truncated through
//!   the descriptor just opened, after checking what it is), a FIFO or a
//!   character device, and `-` is standard output. An existing file with
//!   other links, or one owned by another user in a directory others can
//!   write, is refused.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Writes to standard error, ignoring failure: a closed or broken stderr
/// (`cowtrace 2>&1 | head`, a dropped terminal) must never end a run or
/// panic as `eprint!` does.
pub fn err_text(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(s.as_bytes());
    let _ = e.flush();
}

/// [`err_text`] with a newline.
pub fn err_line(s: &str) {
    err_text(&format!("{s}\n"));
}

/// Why an output cannot be used: one line, for exit status 2.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn errno(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

/// The directory an output lives in and the output's own name there.
fn split(path: &Path) -> Result<(PathBuf, &OsStr), String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("an empty path".into());
    }
    // `x/` and `x/.` name a directory; Path::file_name would hide that.
    if bytes.ends_with(b"/") || bytes.ends_with(b"/.") || bytes.ends_with(b"/..") {
        return Err("is a directory".into());
    }
    let name = match path.file_name() {
        Some(n) => n,
        None => return Err("is a directory".into()),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((dir, name))
}

/// Opens the directory by the path the user gave (the user's own choice of
/// directory; only names inside it are treated as hostile).
fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a regular file",
    }
}

/// What is at `name` in `dir` now, without following a symlink.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// A name nobody can predict: `.NAME.cowtrace-<16 random hex>.tmp`.
fn temp_name(name: &OsStr) -> std::io::Result<Vec<u8>> {
    let mut r = [0u8; 8];
    let mut filled = 0;
    while filled < r.len() {
        filled += rustix::rand::getrandom(&mut r[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(errno)?;
    }
    let mut n = Vec::with_capacity(name.len() + 32);
    n.push(b'.');
    // Keep the temporary name within NAME_MAX.
    n.extend_from_slice(&name.as_bytes()[..name.len().min(200)]);
    n.extend_from_slice(b".cowtrace-");
    for b in r {
        n.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    n.extend_from_slice(b".tmp");
    Ok(n)
}

/// Creates a new file that did not exist, never through a symlink.
fn create_new(dir: &OwnedFd, name: &[u8], mode: u32) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(errno)
}

/// `--json FILE`: replaced atomically, through its directory's descriptor.
pub struct JsonTarget {
    path: PathBuf,
    dir: OwnedFd,
    name: Vec<u8>,
}

impl JsonTarget {
    /// Checks FILE before anything is attached: a regular file or nothing
    /// yet, in a directory where a file can be created.
    pub fn open(path: &Path) -> Result<Self, Refused> {
        let shown = path.display();
        let (dir_path, name) =
            split(path).map_err(|why| Refused(format!("--json {shown}: {why}")))?;
        let dir = open_dir(&dir_path).map_err(|e| Refused(format!("cannot write {shown}: {e}")))?;
        match kind_at(&dir, name) {
            Ok(None) | Ok(Some(FileType::RegularFile)) => {}
            Ok(Some(t)) => {
                return Err(Refused(format!(
                    "--json {shown} is {}: give a regular file (it is replaced atomically)",
                    kind_name(t)
                )))
            }
            Err(e) => return Err(Refused(format!("cannot write {shown}: {e}"))),
        }
        let t = JsonTarget {
            path: path.to_path_buf(),
            dir,
            name: name.as_bytes().to_vec(),
        };
        // Can a file be created there? The same exclusive, unpredictable
        // creation as every real write, then removed again.
        let tmp = temp_name(name).map_err(|e| Refused(format!("cannot write {shown}: {e}")))?;
        create_new(&t.dir, &tmp, 0o600)
            .map_err(|e| Refused(format!("cannot write {shown}: {e}")))?;
        let _ = rustix::fs::unlinkat(&t.dir, OsStr::from_bytes(&tmp), AtFlags::empty());
        Ok(t)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what `fill` writes (through a buffer: a report need not be
    /// in memory all at once) as the new content of FILE: a new temporary
    /// file (exclusive, unpredictable name, never through a symlink),
    /// fsync, `renameat` over FILE, fsync of the directory.
    pub fn write_with(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let name = OsStr::from_bytes(&self.name);
        let tmp = temp_name(name)?;
        let fd = create_new(&self.dir, &tmp, 0o644)?;
        let res = (|| -> std::io::Result<()> {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, File::from(fd));
            fill(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            // Whatever took FILE's place meanwhile: a regular file or a
            // symlink someone planted is replaced (a rename never follows
            // a symlink, so nothing is written through it); anything else
            // (a device node, a FIFO, a directory) is left alone.
            match kind_at(&self.dir, name)? {
                None | Some(FileType::RegularFile) | Some(FileType::Symlink) => {}
                Some(t) => {
                    return Err(std::io::Error::other(format!(
                        "{} is now {}, not replacing it",
                        self.path.display(),
                        kind_name(t)
                    )))
                }
            }
            rustix::fs::renameat(&self.dir, OsStr::from_bytes(&tmp), &self.dir, name)
                .map_err(errno)?;
            Ok(())
        })();
        if res.is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, OsStr::from_bytes(&tmp), AtFlags::empty());
        }
        res?;
        // The rename is durable once the directory is.
        let _ = rustix::fs::fsync(&self.dir);
        Ok(())
    }
}

/// Where `--events` goes.
pub enum EventsTarget {
    Stdout,
    File { path: PathBuf, file: File },
}

impl EventsTarget {
    /// `-` is standard output; anything else is opened now, before anything
    /// is attached (see the module documentation for what is accepted).
    pub fn open(arg: &str) -> Result<Self, Refused> {
        if arg == "-" {
            return Ok(EventsTarget::Stdout);
        }
        let path = Path::new(arg);
        let refuse = |why: String| Refused(format!("cannot write {arg}: {why}"));
        let (dir_path, name) =
            split(path).map_err(|why| Refused(format!("--events {arg}: {why}")))?;
        let dir = open_dir(&dir_path).map_err(|e| refuse(e.to_string()))?;
        let dir_st = rustix::fs::fstat(&dir).map_err(|e| refuse(errno(e).to_string()))?;
        // O_NONBLOCK so a FIFO without a reader is an error now rather than
        // a hang; cleared again below.
        let fd = match rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => {
                return Err(refuse("it is a symbolic link (not followed)".into()))
            }
            Err(rustix::io::Errno::ISDIR) => return Err(refuse("it is a directory".into())),
            // In a sticky directory the kernel refuses (EACCES) to open
            // another user's symlink before O_NOFOLLOW's ELOOP: say what
            // was there.
            Err(_) if matches!(kind_at(&dir, name), Ok(Some(FileType::Symlink))) => {
                return Err(refuse("it is a symbolic link (not followed)".into()))
            }
            Err(rustix::io::Errno::NXIO) => {
                return Err(refuse(
                    "it is a FIFO without a reader (start the reader first)".into(),
                ))
            }
            Err(e) => return Err(refuse(errno(e).to_string())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| refuse(errno(e).to_string()))?;
        let t = FileType::from_raw_mode(st.st_mode);
        let euid = rustix::process::geteuid().as_raw();
        // Like fs.protected_regular and protected_fifos: in a directory
        // others may write, only our own files.
        let others_write = dir_st.st_mode & 0o022 != 0;
        if st.st_uid != euid && others_write && matches!(t, FileType::RegularFile | FileType::Fifo)
        {
            return Err(refuse(format!(
                "it belongs to uid {} in a directory others can write",
                st.st_uid
            )));
        }
        match t {
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    return Err(refuse(format!(
                        "it has {} hard links (another name could be a file that matters)",
                        st.st_nlink
                    )));
                }
                rustix::fs::ftruncate(&fd, 0).map_err(|e| refuse(errno(e).to_string()))?;
            }
            FileType::Fifo | FileType::CharacterDevice => {}
            other => {
                return Err(refuse(format!(
                    "it is {} (give a regular file, a FIFO or -)",
                    kind_name(other)
                )))
            }
        }
        let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| refuse(errno(e).to_string()))?;
        rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)
            .map_err(|e| refuse(errno(e).to_string()))?;
        Ok(EventsTarget::File {
            path: path.to_path_buf(),
            file: File::from(fd),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cowtrace-out-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn json_must_be_a_regular_file_or_new() {
        let d = tmpdir("kinds");
        assert!(JsonTarget::open(&d.join("new.json")).is_ok());
        std::fs::write(d.join("old.json"), b"{}").unwrap();
        assert!(JsonTarget::open(&d.join("old.json")).is_ok());
        let e = JsonTarget::open(&d).err().unwrap().0;
        assert!(e.contains("is a directory"), "{e}");
        let e = JsonTarget::open(Path::new(".")).err().unwrap().0;
        assert!(e.contains("is a directory"), "{e}");
        let e = JsonTarget::open(Path::new("/dev/null")).err().unwrap().0;
        assert!(e.contains("a character device"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", d.join("link.json")).unwrap();
        let e = JsonTarget::open(&d.join("link.json")).err().unwrap().0;
        assert!(e.contains("a symbolic link"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn json_write_replaces_and_leaves_no_temporary_file() {
        let d = tmpdir("write");
        let p = d.join("r.json");
        let t = JsonTarget::open(&p).unwrap();
        t.write_with(|w| w.write_all(b"1\n")).unwrap();
        t.write_with(|w| w.write_all(b"2\n")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2\n");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsStr::new("r.json")]);
        // A symlink put in FILE's place after the check is replaced, never
        // followed.
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/null", &p).unwrap();
        t.write_with(|w| w.write_all(b"3\n")).unwrap();
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let a = temp_name(OsStr::new("r.json")).unwrap();
        let b = temp_name(OsStr::new("r.json")).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(b".r.json.cowtrace-"));
        let long = "x".repeat(255);
        assert!(temp_name(OsStr::new(&long)).unwrap().len() <= 255);
    }

    #[test]
    fn events_refuses_symlinks_directories_and_linked_files() {
        let d = tmpdir("events");
        std::fs::write(d.join("victim"), b"precious").unwrap();
        std::os::unix::fs::symlink(d.join("victim"), d.join("e.ndjson")).unwrap();
        let e = EventsTarget::open(d.join("e.ndjson").to_str().unwrap())
            .err()
            .unwrap()
            .0;
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"precious");
        std::fs::hard_link(d.join("victim"), d.join("h.ndjson")).unwrap();
        let e = EventsTarget::open(d.join("h.ndjson").to_str().unwrap())
            .err()
            .unwrap()
            .0;
        assert!(e.contains("hard links"), "{e}");
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"precious");
        let e = EventsTarget::open(d.to_str().unwrap()).err().unwrap().0;
        assert!(e.contains("is a directory"), "{e}");
        let e = EventsTarget::open(&format!("{}/", d.display()))
            .err()
            .unwrap()
            .0;
        assert!(e.contains("is a directory"), "{e}");
        // A plain file of ours is truncated and written.
        std::fs::write(d.join("mine"), b"old").unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        match EventsTarget::open(d.join("mine").to_str().unwrap()).unwrap() {
            EventsTarget::File { mut file, .. } => file.write_all(b"new").unwrap(),
            EventsTarget::Stdout => panic!("not stdout"),
        }
        assert_eq!(std::fs::read(d.join("mine")).unwrap(), b"new");
        assert!(matches!(EventsTarget::open("-"), Ok(EventsTarget::Stdout)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn events_fifo_needs_a_reader() {
        let d = tmpdir("fifo");
        let p = d.join("p");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = EventsTarget::open(p.to_str().unwrap()).err().unwrap().0;
        assert!(e.contains("without a reader"), "{e}");
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&p)
            .unwrap();
        assert!(EventsTarget::open(p.to_str().unwrap()).is_ok());
        drop(reader);
        std::fs::remove_dir_all(&d).unwrap();
    }

    trait NonBlock {
        fn custom_flags_nonblock(&mut self) -> &mut Self;
    }
    impl NonBlock for std::fs::OpenOptions {
        fn custom_flags_nonblock(&mut self) -> &mut Self {
            use std::os::unix::fs::OpenOptionsExt;
            self.custom_flags(libc::O_NONBLOCK)
        }
    }
}
