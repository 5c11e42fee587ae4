//! Choosing how QEMU runs guests: KVM when `/dev/kvm` opens and a probe
//! boot under it works (the verdict is cached per host kernel and QEMU),
//! else TCG. [`decide`] is the decision alone, so it can be tested.

use super::initramfs;
use super::rundir::new_run_dir;
use super::spec::{GuestKind, GuestSpec};
use super::vm::{self, Accel, Boot, Outcome, Sinks};
use crate::kernel::Kernel;
use crate::util::{self, note};
use anyhow::Result;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What was chosen, and why (shown in a run's first lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub reason: String,
}

/// The decision: `COWTRACE_ACCEL=tcg` forces TCG; without a usable
/// `/dev/kvm` it is TCG; otherwise the probe (a cached verdict, or a boot
/// under KVM) decides.
pub fn decide(
    forced_tcg: bool,
    kvm_opens: bool,
    probe: impl FnOnce() -> Result<bool>,
) -> Result<Choice> {
    let choice = |accel, reason: &str| Choice {
        accel,
        reason: reason.to_string(),
    };
    if forced_tcg {
        return Ok(choice(Accel::Tcg, "COWTRACE_ACCEL=tcg"));
    }
    if !kvm_opens {
        return Ok(choice(Accel::Tcg, "/dev/kvm cannot be opened"));
    }
    Ok(if probe()? {
        choice(
            Accel::Kvm,
            "/dev/kvm opens and a probe boot under KVM worked",
        )
    } else {
        choice(
            Accel::Tcg,
            "/dev/kvm opens but a probe boot under KVM failed (nested KVM broken?)",
        )
    })
}

/// The choice for this host (probing once, then cached).
pub fn choose(cache: &Path, kernel: &Kernel) -> Result<Choice> {
    let forced_tcg = std::env::var("COWTRACE_ACCEL").as_deref() == Ok("tcg");
    let kvm_opens = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    decide(forced_tcg, kvm_opens, || cached_probe(cache, kernel))
}

fn cached_probe(cache: &Path, kernel: &Kernel) -> Result<bool> {
    let host = util::output_quiet(Command::new("uname").arg("-rv"))?;
    let qemu = util::output_quiet(Command::new("qemu-system-x86_64").arg("--version"))?;
    let key = util::KeyHasher::new().str(&host).str(&qemu).hex();
    let verdict_file = cache.join(format!("kvm-verdict-{key}"));
    let _lock = util::lock(&cache.join("kvm-probe.lock"))?;
    if let Ok(v) = fs::read_to_string(&verdict_file) {
        return Ok(v.trim() == "kvm");
    }
    note("probing whether KVM works here (once)");
    let ok = probe_boot(cache, kernel)?;
    fs::write(&verdict_file, if ok { "kvm\n" } else { "tcg\n" })?;
    Ok(ok)
}

/// Boot a small guest running `true` under KVM.
fn probe_boot(cache: &Path, kernel: &Kernel) -> Result<bool> {
    let dir = new_run_dir(cache)?;
    let spec = GuestSpec::new(kernel.series, GuestKind::Small, vec!["true".into()]);
    let initrd = dir.join("initrd.gz");
    initramfs::initramfs(GuestKind::Small, kernel, &initramfs::payload(&spec, false)?)?
        .write_gz(&initrd)?;
    let b = Boot {
        vmlinuz: kernel.vmlinuz(),
        initrd,
        disk: None,
        run_dir: dir.clone(),
        timeout: Duration::from_secs(20),
        accel: Accel::Kvm,
        one_tcg_thread: false,
        clock: Default::default(),
        memory_mb: 512,
    };
    let ok = matches!(
        vm::boot(&b, &mut Sinks::null())?.outcome,
        Outcome::Exited(0)
    );
    let _ = util::remove_all(&dir);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision() {
        let never = || -> Result<bool> { panic!("probed although the decision was already made") };
        assert_eq!(decide(true, true, never).unwrap().accel, Accel::Tcg);
        let no_kvm = decide(false, false, never).unwrap();
        assert_eq!(no_kvm.accel, Accel::Tcg);
        assert!(no_kvm.reason.contains("/dev/kvm cannot be opened"));
        let works = decide(false, true, || Ok(true)).unwrap();
        assert_eq!(works.accel, Accel::Kvm);
        let broken = decide(false, true, || Ok(false)).unwrap();
        assert_eq!(broken.accel, Accel::Tcg);
        assert!(broken.reason.contains("probe boot"));
        assert!(decide(false, true, || anyhow::bail!("no qemu")).is_err());
    }
}
