//! The Docker guest's disk: per kernel, the Debian rootfs plus that
//! kernel's modules and the local images' tarballs on an ext4 image
//! (`mkfs.ext4 -d`), prepared once by a boot that `docker import`s
//! `cowtrace/busybox` and the demo's nginx rootfs, then cached. Runs boot a
//! qcow2 overlay of it, so they never change the cache. Nothing ever pulls
//! from a registry. The preparation boot is the caller's (see `run`), so
//! this layer never boots anything itself.
//!
//! A systemd guest's disk is its own image (another rootfs, see
//! [`configure_systemd`]), named `<kernel>-systemd-<key>.img` beside the
//! shell guest's `<kernel>-<key>.img`.

use super::init::RUN_UNIT_NAME;
use super::rootfs::{self, BUSYBOX};
use super::spec::Init;
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
    init: Init,
    boot_key: &str,
    prepare: PrepareBoot,
) -> Result<PathBuf> {
    let tarball = rootfs::rootfs_tarball(cache, init)?;
    let nginx = rootfs::nginx_rootfs_tarball(cache)?;
    let mut h = KeyHasher::new();
    h.str(IMAGE_RECIPE)
        .str(&tarball.file_name().unwrap().to_string_lossy())
        .str(&nginx.file_name().unwrap().to_string_lossy())
        .str(&kernel.version)
        .str(boot_key)
        .file(Path::new(BUSYBOX))?;
    if init == Init::Systemd {
        h.str(SYSTEMD_RECIPE).str(DAEMON_JSON).str(RUN_UNIT_NAME);
        for u in SYSTEMD_MASKED {
            h.str(u);
        }
    }
    let dir = cache.join("docker");
    fs::create_dir_all(&dir)?;
    let prefix = image_prefix(&kernel.version, init);
    let image = dir.join(format!("{prefix}{}.img", h.hex()));
    let _lock = util::lock(&dir.join(format!("{}.lock", kernel.version)))?;
    if image.is_file() {
        return Ok(image);
    }
    let t = Instant::now();
    note(format!(
        "building the docker disk image for {} ({init} init)",
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
    if init == Init::Systemd {
        configure_systemd(&stage)?;
    }

    let tmp = dir.join(format!("{prefix}{}.img.tmp", h.hex()));
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
    // Drop older images of this kernel and init.
    for e in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if is_image_of(&n, &prefix) {
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

/// Bump when [`configure_systemd`] changes in a way its inputs don't show.
const SYSTEMD_RECIPE: &str = "2";

/// Docker's configuration on systemd guests: the systemd cgroup driver (as
/// on the hosts users run), the rest as the shell guest's command line.
pub const DAEMON_JSON: &str = r#"{
  "exec-opts": ["native.cgroupdriver=systemd"],
  "storage-driver": "overlay2",
  "data-root": "/var/lib/docker",
  "iptables": false,
  "bridge": "none"
}
"#;

/// Units masked on systemd guests: logins, timers and housekeeping that
/// only slow a TCG boot down and have nothing to do with containers.
pub const SYSTEMD_MASKED: &[&str] = &[
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-firstboot.service",
    "systemd-timesyncd.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-pstore.service",
    "systemd-machine-id-commit.service",
    "ldconfig.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "modprobe@dm_mod.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
];

/// `<kernel>-` for the shell guest's images, `<kernel>-systemd-` for the
/// systemd guest's; the cache key follows.
fn image_prefix(kernel_version: &str, init: Init) -> String {
    match init {
        Init::Shell => format!("{kernel_version}-"),
        init => format!("{kernel_version}-{init}-"),
    }
}

/// Whether `name` is an image of the variant with this `prefix` (and not
/// one of another init whose prefix it starts with).
fn is_image_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A systemd guest's configuration on its rootfs: Docker on the systemd
/// cgroup driver; containerd, docker and the command's unit
/// ([`RUN_UNIT_NAME`], whose file comes with each run's payload) enabled
/// for `multi-user.target`; a fixed machine id (no first-boot setup) and
/// [`SYSTEMD_MASKED`] masked.
fn configure_systemd(root: &Path) -> Result<()> {
    use std::os::unix::fs::symlink;
    let unit_dir = Path::new("/lib/systemd/system");
    for unit in ["containerd.service", "docker.service", "docker.socket"] {
        let installed = root.join("usr/lib/systemd/system").join(unit);
        if !installed.is_file() {
            bail!(
                "the systemd rootfs has no {unit} (looked for {})",
                installed.display()
            );
        }
    }
    let etc = root.join("etc/systemd/system");
    for (target, units) in [
        (
            "multi-user.target.wants",
            &["containerd.service", "docker.service"][..],
        ),
        ("sockets.target.wants", &["docker.socket"][..]),
    ] {
        let wants = etc.join(target);
        fs::create_dir_all(&wants)?;
        for unit in units {
            let link = wants.join(unit);
            let _ = fs::remove_file(&link);
            symlink(unit_dir.join(unit), &link)?;
        }
    }
    // A link to a file the payload brings (stage 1 copies the payload over
    // the disk, which must not already hold a link there).
    symlink(
        Path::new("/etc/systemd/system").join(RUN_UNIT_NAME),
        etc.join("multi-user.target.wants").join(RUN_UNIT_NAME),
    )?;
    for unit in SYSTEMD_MASKED {
        let link = etc.join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link)?;
    }
    let _ = fs::remove_file(etc.join("default.target"));
    symlink(
        unit_dir.join("multi-user.target"),
        etc.join("default.target"),
    )?;
    fs::create_dir_all(root.join("etc/docker"))?;
    fs::write(root.join("etc/docker/daemon.json"), DAEMON_JSON)?;
    fs::write(
        root.join("etc/machine-id"),
        "c0ffee00c0ffee00c0ffee00c0ffee00\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_of_each_init_stay_apart() {
        let shell = image_prefix("6.1.0-50-cloud-amd64", Init::Shell);
        let systemd = image_prefix("6.1.0-50-cloud-amd64", Init::Systemd);
        assert!(is_image_of(
            "6.1.0-50-cloud-amd64-8ba7e9e350d100d8.img",
            &shell
        ));
        assert!(!is_image_of(
            "6.1.0-50-cloud-amd64-systemd-8ba7e9e350d100d8.img",
            &shell
        ));
        assert!(is_image_of(
            "6.1.0-50-cloud-amd64-systemd-8ba7e9e350d100d8.img",
            &systemd
        ));
        assert!(!is_image_of(
            "6.1.0-50-cloud-amd64-8ba7e9e350d100d8.img",
            &systemd
        ));
        assert!(!is_image_of(
            "6.1.0-50-cloud-amd64-8ba7e9e350d100d8.img.tmp",
            &shell
        ));
    }

    #[test]
    fn docker_uses_the_systemd_cgroup_driver_there() {
        let v: serde_json::Value = serde_json::from_str(DAEMON_JSON).unwrap();
        assert_eq!(v["exec-opts"][0], "native.cgroupdriver=systemd");
    }
}
