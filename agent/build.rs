//! Builds the eBPF programs (`agent-ebpf`, BPF target, nightly toolchain)
//! so that `cowtrace` embeds them and ships as one self-contained binary.
//!
//! aya-build forwards every line of the inner cargo's output as a
//! `cargo:warning`, which on a cold cache is ~150 "Compiling ..." lines. The
//! build runs with our stdout captured: progress lines are dropped on
//! success, real diagnostics (compiler warnings) kept, and the whole
//! output shown on failure.
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

fn main() {
    if let Err(e) = build() {
        // One line, no backtrace: cargo shows it under "--- stderr".
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    ensure_bpf_linker_on_path()?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let log_path = out_dir.join("aya-build.log");
    let result = with_stdout_to(&log_path, || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "agent-ebpf",
                root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
                ..Default::default()
            }],
            aya_build::Toolchain::Nightly,
        )
    })?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let failed = result.is_err();
    for line in log.lines() {
        match line.strip_prefix("cargo:warning=") {
            // On failure everything goes to stderr below.
            Some(_) if failed => {}
            Some(msg) if is_progress(msg) => {}
            Some(msg) => println!("cargo:warning={msg}"),
            // rerun-if-changed and friends.
            None => println!("{line}"),
        }
    }
    if let Err(e) = result {
        for line in log.lines() {
            eprintln!("{}", line.strip_prefix("cargo:warning=").unwrap_or(line));
        }
        return Err(format!("building the eBPF programs failed: {e:#}"));
    }
    // Nothing more on success: cargo replays a build script's warnings on
    // every later build, so its own `Compiling cowtrace` is the one line.
    Ok(())
}

/// cargo's own progress lines, which say nothing on success.
fn is_progress(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or("");
    line.trim().is_empty()
        || matches!(
            word,
            "Compiling"
                | "Finished"
                | "Fresh"
                | "Running"
                | "Updating"
                | "Locking"
                | "Adding"
                | "Downloading"
                | "Downloaded"
                | "Blocking"
                | "Checking"
        )
}

/// Run `f` with this process's stdout (fd 1) going to `path`.
fn with_stdout_to<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::stdout().flush().ok();
    // SAFETY: dup/dup2/close on fds this process owns; the build script is
    // single-threaded here, and aya-build joins its threads before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return Err("cannot redirect the build script's stdout".into());
    }
    let value = f();
    std::io::stdout().flush().ok();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    Ok(value)
}

/// bpf-linker on PATH, or where `cargo xtask setup` links it
/// (`$CARGO_HOME/bin`, which a shell's PATH may lack).
fn ensure_bpf_linker_on_path() -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
        return Ok(());
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(bin) = cargo_home.map(|h| h.join("bin")) {
        if bin.join("bpf-linker").is_file() {
            let mut dirs = vec![bin];
            dirs.extend(std::env::split_paths(&path));
            let joined = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
            // Only this build script's children read it.
            std::env::set_var("PATH", joined);
            return Ok(());
        }
    }
    Err("bpf-linker is not installed: run `cargo xtask setup` once (it builds bpf-linker and links it into $CARGO_HOME/bin)".into())
}
