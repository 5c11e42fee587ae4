//! The `--docker` guest: a Debian bookworm rootfs with Docker on an ext4
//! disk image, with a local base image `cowtrace/busybox:latest`.
//!
//! * [`rootfs_tarball`]: `debootstrap --variant=minbase` with [`PACKAGES`],
//!   trimmed and cached as a tarball keyed by the package list.
//! * [`base_image`]: per kernel, the rootfs plus that kernel's modules on
//!   an ext4 image (`mkfs.ext4 -d`), booted once to `docker import` the
//!   busybox base image, then cached. Runs boot a qcow2 overlay of it, so
//!   they never change the cache. Nothing ever pulls from a registry.

use crate::apt;
use crate::guest;
use crate::kernel::Kernel;
use crate::qemu::Accel;
use crate::util::{self, note, KeyHasher};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SUITE: &str = "bookworm";

/// Packages on top of minbase.
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
];

/// The local image every Dockerfile can start `FROM`.
pub const BASE_IMAGE: &str = "cowtrace/busybox:latest";

/// A Debian rootfs with Debian's nginx package, for the demo.
pub const NGINX_IMAGE: &str = "cowtrace/debian-nginx:bookworm";
const NGINX_PACKAGES: &[&str] = &["nginx", "busybox-static"];

/// Bump when the way the rootfs/image is made changes.
const ROOTFS_RECIPE: &str = "1";
const IMAGE_RECIPE: &str = "2";
const DISK_SIZE: u64 = 8 << 30;

/// The debootstrapped rootfs tarball of the Docker guest (built once,
/// needs root).
pub fn rootfs_tarball(cache: &Path) -> Result<PathBuf> {
    debootstrap_tarball(cache, "docker", PACKAGES)
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

/// A tarball of a busybox-static rootfs (for `docker import`).
pub fn busybox_rootfs_tar(dest: &Path) -> Result<()> {
    let stage = dest.with_extension("stage");
    util::remove_all(&stage)?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
    let list = util::output(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        let p = stage.join(applet);
        fs::create_dir_all(p.parent().unwrap())?;
        std::os::unix::fs::symlink("/bin/busybox", &p)?;
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

/// The cached, prepared disk image for `kernel` (raw ext4). Never boot it
/// writable: use a qcow2 overlay.
pub fn base_image(cache: &Path, kernel: &Kernel, accel: Accel) -> Result<PathBuf> {
    let tarball = rootfs_tarball(cache)?;
    let nginx = nginx_rootfs_tarball(cache)?;
    let mut h = KeyHasher::new();
    h.str(IMAGE_RECIPE)
        .str(&tarball.file_name().unwrap().to_string_lossy())
        .str(&nginx.file_name().unwrap().to_string_lossy())
        .str(&kernel.version)
        .str(&guest::init_script(true, true))
        .file(Path::new("/bin/busybox"))?;
    let dir = cache.join("docker");
    fs::create_dir_all(&dir)?;
    let image = dir.join(format!("{}-{}.img", kernel.version, h.hex()));
    let _lock = util::lock(&dir.join(format!("{}.lock", kernel.version)))?;
    if image.is_file() {
        return Ok(image);
    }
    let t = Instant::now();
    note(format!(
        "building the docker disk image for {}",
        kernel.version
    ));
    let stage = dir.join(format!("stage-{}", h.hex()));
    util::remove_all(&stage)?;
    fs::create_dir_all(&stage)?;
    util::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&stage),
    )?;
    // bookworm is merged-/usr: /lib -> usr/lib.
    let modules_parent = if fs::symlink_metadata(stage.join("lib"))?
        .file_type()
        .is_symlink()
    {
        stage.join("usr/lib/modules")
    } else {
        stage.join("lib/modules")
    };
    fs::create_dir_all(&modules_parent)?;
    util::run(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.modules())
            .arg(modules_parent.join(&kernel.version)),
    )?;
    fs::create_dir_all(stage.join("usr/share/cowtrace"))?;
    busybox_rootfs_tar(&stage.join("usr/share/cowtrace/busybox-rootfs.tar"))?;
    fs::copy(&nginx, stage.join("usr/share/cowtrace/nginx-rootfs.tar"))?;
    fs::write(stage.join("etc/hostname"), "cowtrace\n")?;
    fs::write(stage.join("etc/hosts"), "127.0.0.1 localhost cowtrace\n")?;
    fs::write(stage.join("etc/resolv.conf"), "")?;

    let tmp = dir.join(format!("{}-{}.img.tmp", kernel.version, h.hex()));
    util::remove_all(&tmp)?;
    fs::File::create(&tmp)?.set_len(DISK_SIZE)?;
    util::output_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "cowtrace-root", "-d"])
            .arg(&stage)
            .arg(&tmp),
    )?;
    util::remove_all(&stage)?;
    let prep = Instant::now();
    guest::prepare_disk(
        cache,
        kernel,
        accel,
        &tmp,
        &[
            "sh",
            "-c",
            &format!(
                "docker import /usr/share/cowtrace/busybox-rootfs.tar {BASE_IMAGE} && \
                 docker import /usr/share/cowtrace/nginx-rootfs.tar {NGINX_IMAGE} && \
                 rm /usr/share/cowtrace/nginx-rootfs.tar"
            ),
        ],
        Duration::from_secs(900),
    )?;
    let prep = prep.elapsed();
    // The guest remounted / read-only before powering off; check anyway.
    let st = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(&tmp)
        .output()?;
    if st.status.code().unwrap_or(8) > 1 {
        bail!(
            "e2fsck of the prepared image failed:\n{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }
    // Drop older images of this kernel.
    for e in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{}-", kernel.version)) && n.ends_with(".img") {
            let _ = fs::remove_file(e.path());
        }
    }
    fs::rename(&tmp, &image)?;
    note(format!(
        "docker disk image ready in {:.0}s (preparation boot {:.0}s)",
        t.elapsed().as_secs_f64(),
        prep.as_secs_f64()
    ));
    Ok(image)
}
