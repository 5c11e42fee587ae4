//! Host setup: the apt packages, the nightly `rust-src` component and a
//! `bpf-linker` built against the nightly toolchain's own libLLVM.
//!
//! [`ensure`] is called first by every other command. When everything is
//! present it only looks (no network, well under a second); as root it
//! installs what is missing, otherwise it names the command to run.

use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the guests need on the host.
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
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

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
    ensure_apt_packages()?;
    ensure_rust_src()?;
    let bpf_linker_bin = ensure_bpf_linker(&cache)?;
    Ok(Tooling {
        cache,
        bpf_linker_bin,
    })
}

fn missing_apt_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &p in APT_PACKAGES {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .context("cannot run dpkg-query (is this a Debian system?)")?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push(p);
        }
    }
    Ok(missing)
}

fn ensure_apt_packages() -> Result<()> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !util::is_root() {
        bail!(
            "missing packages: {}\nrun as root:\n  {cmd}",
            missing.join(" ")
        );
    }
    note(format!("installing {}", missing.join(" ")));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
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
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
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
    util::run(
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
    )?;
    if !bin.join("bpf-linker").is_file() {
        bail!(
            "cargo install finished but {} is missing",
            bin.join("bpf-linker").display()
        );
    }
    Ok(bin)
}
