//! The initramfs of each guest kind, as cpio trees: the payload every
//! guest gets (init, command, agent, copies), busybox, and kernel modules
//! with a matching modules.dep.

use super::init;
use super::rootfs::{self, BUSYBOX};
use super::spec::{GuestKind, GuestSpec, Init};
use crate::cpio::Tree;
use crate::kernel::Kernel;
use anyhow::{bail, Result};
use std::fs;
use std::path::Path;

/// Files every guest gets on top of its root: init, command, agent, copies.
/// `clean_stop`: see [`init::init_script`].
pub fn payload(spec: &GuestSpec, clean_stop: bool) -> Result<Tree> {
    if spec.command.is_empty() {
        bail!("no command to run in the guest");
    }
    let mut t = Tree::new();
    t.bytes(
        "etc/cowtrace/init",
        0o755,
        init::init_script_with(spec.kind, clean_stop, spec.cgroups),
    );
    t.bytes(
        "etc/cowtrace/cmd",
        0o644,
        init::command_script(&spec.command),
    );
    t.dir("out", 0o755).dir("root", 0o700);
    if spec.kind == GuestKind::Docker(Init::Systemd) {
        // systemd starts the init as this unit once the engine is up (the
        // disk enables it: see `disk`).
        t.bytes(
            &format!("etc/systemd/system/{}", init::RUN_UNIT_NAME),
            0o644,
            init::RUN_UNIT,
        );
    }
    if let Some(agent) = &spec.agent {
        t.host("usr/local/bin/cowtrace", agent)?;
    }
    for c in &spec.copies {
        t.host(&c.guest, &c.host)?;
    }
    Ok(t)
}

/// The initramfs for `payload`'s kind.
pub fn initramfs(kind: GuestKind, kernel: &Kernel, payload: &Tree) -> Result<Tree> {
    match kind {
        GuestKind::Small => small(kernel, payload),
        GuestKind::Docker(init) => docker_stage1(kernel, payload, init),
    }
}

fn add_busybox(t: &mut Tree) -> Result<()> {
    t.host("bin/busybox", Path::new(BUSYBOX))?;
    for applet in rootfs::busybox_applets()? {
        t.symlink(&applet, BUSYBOX);
    }
    for d in ["dev", "proc", "sys", "run", "tmp", "usr/local/bin", "etc"] {
        t.dir(d, 0o755);
    }
    t.chardev("dev/console", 0o600, 5, 1);
    t.chardev("dev/null", 0o666, 1, 3);
    Ok(())
}

/// Add these modules (and what they need) with a matching modules.dep;
/// returns their guest paths in load order.
fn add_modules(t: &mut Tree, kernel: &Kernel, names: &[&str]) -> Result<Vec<String>> {
    let files = kernel.module_closure(names)?;
    let m = kernel.modules();
    let base = format!("lib/modules/{}", kernel.version);
    let dep = fs::read_to_string(m.join("modules.dep"))?;
    let dep: String = dep
        .lines()
        .filter(|l| files.iter().any(|f| l.starts_with(&format!("{f}:"))))
        .map(|l| format!("{l}\n"))
        .collect();
    t.bytes(&format!("{base}/modules.dep"), 0o644, dep);
    for extra in ["modules.builtin", "modules.order"] {
        if m.join(extra).is_file() {
            t.host(&format!("{base}/{extra}"), &m.join(extra))?;
        }
    }
    for f in &files {
        t.host(&format!("{base}/{f}"), &m.join(f))?;
    }
    Ok(files.iter().map(|f| format!("/{base}/{f}")).collect())
}

/// The small guest: busybox, overlay.ko, the init and the payload.
fn small(kernel: &Kernel, payload: &Tree) -> Result<Tree> {
    let mut t = Tree::new();
    add_busybox(&mut t)?;
    add_modules(&mut t, kernel, &["overlay"])?;
    t.symlink("init", "/etc/cowtrace/init");
    t.merge(payload);
    Ok(t)
}

/// The Docker guest's first stage: load virtio, mount /dev/vda, copy the
/// payload onto it, switch_root to the payload's init or to systemd.
fn docker_stage1(kernel: &Kernel, payload: &Tree, init: Init) -> Result<Tree> {
    let mut t = Tree::new();
    add_busybox(&mut t)?;
    let modules = add_modules(&mut t, kernel, &["virtio_pci", "virtio_blk"])?;
    t.bytes("init", 0o755, init::stage1_script(&modules, init));
    t.merge_under("payload", payload);
    Ok(t)
}
