//! The Docker guest's disk: per kernel, the Debian rootfs plus that
//! kernel's modules and the local images' tarballs on an ext4 image
//! (`mkfs.ext4 -d`), prepared once by a boot that `docker import`s
//! `cowtrace/busybox` and the demo's nginx rootfs, then cached. Runs boot a
//! qcow2 overlay of it, so they never change the cache. Nothing ever pulls
//! from a registry. The preparation boot is the caller's (see `run`), so
//! this layer never boots anything itself.

use super::rootfs::{self, BUSYBOX};
use crate::kernel::Kernel;
use crate::util::{self, note, KeyHasher};
use anyhow::{bail, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The local image every Dockerfile can start `FROM`.
pub const BASE_IMAGE: &str = "cowtrace/busybox:latest";

/// A Debian rootfs with Debian's nginx package, for the demo.
pub const NGINX_IMAGE: &str = "cowtrace/debian-nginx:bookworm";

/// Bump when the way the image is made changes.
const IMAGE_RECIPE: &str = "2";
const DISK_SIZE: u64 = 8 << 30;

/// The command of the preparation boot.
fn prepare_command() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "docker import /usr/share/cowtrace/busybox-rootfs.tar {BASE_IMAGE} && \
             docker import /usr/share/cowtrace/nginx-rootfs.tar {NGINX_IMAGE} && \
             rm /usr/share/cowtrace/nginx-rootfs.tar"
        ),
    ]
}

/// How long the preparation boot may take.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(900);

/// Boots a raw disk writable with a command and a clean stop (`run`'s).
pub type PrepareBoot<'a> = &'a dyn Fn(&Path, &[String], Duration) -> Result<()>;

/// The cached, prepared disk image for `kernel` (raw ext4). Never boot it
/// writable: use a qcow2 overlay. `boot_key` names what else the
/// preparation boot depends on (its init), for the cache key.
pub fn base_image(
    cache: &Path,
    kernel: &Kernel,
    boot_key: &str,
    prepare: PrepareBoot,
) -> Result<PathBuf> {
    let tarball = rootfs::rootfs_tarball(cache)?;
    let nginx = rootfs::nginx_rootfs_tarball(cache)?;
    let mut h = KeyHasher::new();
    h.str(IMAGE_RECIPE)
        .str(&tarball.file_name().unwrap().to_string_lossy())
        .str(&nginx.file_name().unwrap().to_string_lossy())
        .str(&kernel.version)
        .str(boot_key)
        .file(Path::new(BUSYBOX))?;
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
    rootfs::busybox_rootfs_tar(&stage.join("usr/share/cowtrace/busybox-rootfs.tar"))?;
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
    prepare(&tmp, &prepare_command(), PREPARE_TIMEOUT)?;
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
