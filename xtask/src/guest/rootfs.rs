//! Root filesystems: the busybox applet tree (for initramfs and for the
//! `cowtrace/busybox` image) and debootstrapped Debian trees (the Docker
//! guest's rootfs, the demo's nginx image), cached as tarballs.

use super::spec::Init;
use crate::apt;
use crate::util::{self, note, KeyHasher};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub const SUITE: &str = "bookworm";

/// The Docker guest's packages on top of minbase.
pub const PACKAGES: &[&str] = &[
    "docker.io",
    "containerd",
    "runc",
    "iptables",
    "iproute2",
    "attr",
    "kmod",
    "procps",
    "util-linux",
    "e2fsprogs",
    "ca-certificates",
    "busybox-static",
    // `cargo xtask bench` compares cowtrace with it.
    "bpftrace",
    // Rootful podman (no daemon). Its containers-common needs the virtual
    // `container-network-stack`, which debootstrap does not resolve: the
    // CNI plugins provide it (the tests use `--network none`).
    "podman",
    "containernetworking-plugins",
    // Rootless podman: newuidmap/newgidmap map the user's /etc/subuid and
    // /etc/subgid ranges into its user namespace.
    "uidmap",
    // A real fuse-overlayfs mount, which cowtrace must say it cannot see.
    "fuse-overlayfs",
];

/// What a systemd Docker guest adds: systemd as /sbin/init; the D-Bus
/// system bus through which Docker's and containerd's systemd cgroup
/// drivers (runc) ask systemd for scopes; and AppArmor's parser, which
/// Docker needs once systemd has mounted securityfs and the kernel's
/// AppArmor shows (as on Debian and Ubuntu hosts).
pub const SYSTEMD_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "apparmor"];

/// The demo's nginx image (see `disk::NGINX_IMAGE`).
const NGINX_PACKAGES: &[&str] = &["nginx", "busybox-static"];

/// Bump when the way the rootfs is made changes.
const ROOTFS_RECIPE: &str = "1";

/// The debootstrapped rootfs tarball of the Docker guest with this init
/// (built once, needs root).
pub fn rootfs_tarball(cache: &Path, init: Init) -> Result<PathBuf> {
    match init {
        Init::Shell => debootstrap_tarball(cache, "docker", PACKAGES),
        Init::Systemd => {
            let packages: Vec<&str> = PACKAGES.iter().chain(SYSTEMD_PACKAGES).copied().collect();
            debootstrap_tarball(cache, "docker-systemd", &packages)
        }
    }
}

/// The rootfs of the demo's nginx image.
pub fn nginx_rootfs_tarball(cache: &Path) -> Result<PathBuf> {
    debootstrap_tarball(cache, "nginx", NGINX_PACKAGES)
}

/// `debootstrap --variant=minbase --include=PACKAGES`, trimmed, as a
/// tarball cached under a key of its package list.
fn debootstrap_tarball(cache: &Path, name: &str, packages: &[&str]) -> Result<PathBuf> {
    let mut h = KeyHasher::new();
    h.str(SUITE).str(ROOTFS_RECIPE);
    for p in packages {
        h.str(p);
    }
    let dir = cache.join("rootfs");
    let tar = dir.join(format!("{SUITE}-{name}-{}.tar", h.hex()));
    let _lock = util::lock(&dir.join("rootfs.lock"))?;
    if tar.is_file() {
        return Ok(tar);
    }
    if !util::is_root() {
        bail!("building the docker rootfs needs root (debootstrap); run as root");
    }
    let t = Instant::now();
    note(format!("debootstrap {SUITE} for {name} (about a minute)"));
    let stage = dir.join(format!("stage-{}", h.hex()));
    util::remove_all(&stage)?;
    fs::create_dir_all(&stage)?;
    util::output_quiet(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", packages.join(",")))
            .arg(SUITE)
            .arg(&stage)
            .arg(apt::mirror_uri()?),
    )
    .context("debootstrap failed")?;
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
    ] {
        let p = stage.join(d);
        if p.is_dir() {
            for e in fs::read_dir(&p)? {
                util::remove_all(&e?.path())?;
            }
        }
    }
    let tmp = tar.with_extension("tar.tmp");
    util::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&stage)
            .arg("-cf")
            .arg(&tmp)
            .arg("."),
    )?;
    fs::rename(&tmp, &tar)?;
    util::remove_all(&stage)?;
    note(format!(
        "{name} rootfs built in {:.0}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(tar)
}

/// The host's static busybox, which every guest's tools come from.
pub const BUSYBOX: &str = "/bin/busybox";

/// Paths (relative, such as `usr/bin/awk`) of busybox's applets, each to be
/// a symlink to [`BUSYBOX`].
pub fn busybox_applets() -> Result<Vec<String>> {
    let list = util::output(Command::new(BUSYBOX).arg("--list-full"))?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .map(String::from)
        .collect())
}

/// A tarball of a busybox-static rootfs (for `docker import`).
pub fn busybox_rootfs_tar(dest: &Path) -> Result<()> {
    let stage = dest.with_extension("stage");
    util::remove_all(&stage)?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy(BUSYBOX, stage.join("bin/busybox"))?;
    for applet in busybox_applets()? {
        let p = stage.join(&applet);
        fs::create_dir_all(p.parent().unwrap())?;
        std::os::unix::fs::symlink(BUSYBOX, &p)?;
    }
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(stage.join("etc/group"), "root:x:0:\n")?;
    util::run(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&stage)
            .arg("-cf")
            .arg(dest)
            .arg("."),
    )?;
    util::remove_all(&stage)
}
