//! Small shared helpers: the cache directory, running commands with useful
//! errors, stable content hashes for cache keys, and shell quoting.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cache directory: `$COWTRACE_CACHE`, default `$HOME/.cache/cowtrace`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COWTRACE_CACHE") {
        if !dir.is_empty() {
            return Ok(PathBuf::from(dir));
        }
    }
    let home = std::env::var_os("HOME").context("HOME is not set (or set COWTRACE_CACHE)")?;
    Ok(PathBuf::from(home).join(".cache/cowtrace"))
}

/// `$CARGO_HOME`, default `$HOME/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")),
    }
}

/// Progress message on stderr (never stdout: that belongs to guest output).
pub fn note(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// A readable rendering of a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(&a.to_string_lossy()));
    }
    s
}

/// Run a command with its stdout sent to our stderr (our stdout is
/// reserved for guest output); fail if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Run a command with its output appended to `log`; on failure print the
/// whole log to stderr and fail with a line naming the command and the log.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        if let Ok(text) = fs::read_to_string(log) {
            eprintln!("{}", text.trim_end());
        }
        bail!(
            "`{}` failed ({status}); its output is above and in {}",
            describe(cmd),
            log.display()
        );
    }
    Ok(())
}

/// Run a command, capture its stdout (stderr inherited); fail if not 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command quietly, capture stdout and stderr together; fail if not 0.
pub fn output_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            describe(cmd),
            out.status,
            text.trim_end()
        );
    }
    Ok(text)
}

/// Quote a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// FNV-1a 64-bit: a stable (across Rust releases) hash for cache keys.
#[derive(Clone)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf29ce484222325)
    }
}

impl KeyHasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        // Separate fields so ("ab","c") and ("a","bc") differ.
        self.0 ^= data.len() as u64;
        self.0 = self.0.wrapping_mul(0x100000001b3);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                self.0 ^= b as u64;
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
        Ok(self.str("<eof>"))
    }
    /// 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Age of a file's modification time (None if it does not exist).
pub fn age(path: &Path) -> Option<Duration> {
    let m = fs::metadata(path).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(m).unwrap_or_default())
}

/// PATH with `dir` in front.
pub fn path_with(dir: &Path) -> OsString {
    let mut parts = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(parts).expect("PATH entries contain no ':'")
}

/// Remove a path (file or tree) if present.
pub fn remove_all(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("remove {}", path.display())),
    }
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive lock on a file in the cache (released on drop), so
/// concurrent xtask runs don't build the same cached thing twice.
pub struct Lock(#[allow(dead_code)] fs::File);

pub fn lock(path: &Path) -> Result<Lock> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open lock {}", path.display()))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        note(format!("waiting for another xtask ({})", path.display()));
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}", path.display());
        }
    }
    Ok(Lock(f))
}
