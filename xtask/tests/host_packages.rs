//! The first run on a fresh machine of this kind: its image ships
//! `qemu-utils` from bookworm-backports, which bookworm's `qemu-system-x86`
//! breaks. These tests give apt's real solver a scratch dpkg state that is
//! this machine's own, with the listed packages not installed and that
//! backported `qemu-utils` installed (its stanza, in `data/`, was copied
//! from the machine image), and check the install plan against it.

use std::fs;
use xtask::host_packages::{self, AptState};
use xtask::setup::APT_PACKAGES;

const BACKPORTED_QEMU_UTILS: &str = include_str!("data/qemu-utils-bookworm-backports.status");

/// This machine's dpkg status without QEMU (every binary package of the
/// `qemu` source, as on the image, where setup has not run yet), plus the
/// backported qemu-utils the image ships.
fn fresh_image_state() -> (tempdir::Dir, AptState) {
    let status = fs::read_to_string("/var/lib/dpkg/status").expect("read /var/lib/dpkg/status");
    let mut kept = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        };
        let package = field("Package:").unwrap_or_default();
        let source = field("Source:").unwrap_or_else(|| package.clone());
        if package.is_empty() || source == "qemu" {
            continue;
        }
        kept.push(stanza.trim_matches('\n').to_string());
    }
    kept.push(BACKPORTED_QEMU_UTILS.trim_matches('\n').to_string());
    let dir = tempdir::Dir::new();
    let path = dir.0.join("status");
    fs::write(&path, kept.join("\n\n") + "\n").unwrap();
    (dir, AptState::with_status(&path))
}

fn require_apt_lists(state: &AptState) {
    let v = state.installed_version("qemu-utils").unwrap();
    assert_eq!(
        v.as_deref(),
        Some("1:10.0.2+ds-2+deb13u1~bpo12+1"),
        "the scratch dpkg state should hold the backported qemu-utils"
    );
    let sim = state
        .simulate(&["qemu-system-x86".to_string()], false)
        .unwrap();
    assert!(
        !sim.text.contains("has no installation candidate")
            && !sim.text.contains("Unable to locate"),
        "apt knows no qemu-system-x86: run `apt-get update` first\n{}",
        sim.text
    );
}

#[test]
fn installing_only_what_is_missing_removes_qemu_utils() {
    // The bug this guards against: the old setup asked apt only for the
    // missing packages, and apt removed qemu-utils to satisfy the others.
    let (_dir, state) = fresh_image_state();
    require_apt_lists(&state);
    let only_missing: Vec<String> = APT_PACKAGES
        .iter()
        .filter(|p| state.installed_version(p).unwrap().is_none())
        .map(|p| p.to_string())
        .collect();
    assert!(only_missing.iter().any(|p| p == "qemu-system-x86"));
    assert!(!only_missing.iter().any(|p| p == "qemu-utils"));
    let sim = state.simulate(&only_missing, false).unwrap();
    assert!(sim.solvable, "{}", sim.text);
    assert_eq!(
        sim.removes_any_of(APT_PACKAGES),
        ["qemu-utils"],
        "expected apt to remove the backported qemu-utils:\n{}",
        sim.text
    );
}

#[test]
fn the_plan_installs_every_package_and_removes_none() {
    let (_dir, state) = fresh_image_state();
    require_apt_lists(&state);
    let plan = host_packages::plan(&state, APT_PACKAGES).unwrap();
    assert_eq!(
        plan.realigned
            .iter()
            .map(|(p, from, _)| (p.as_str(), from.as_str()))
            .collect::<Vec<_>>(),
        [("qemu-utils", "1:10.0.2+ds-2+deb13u1~bpo12+1")]
    );
    let sim = state.simulate(&plan.args, plan.allow_downgrades()).unwrap();
    assert!(sim.solvable, "{}", sim.text);
    assert!(
        sim.removes_any_of(APT_PACKAGES).is_empty(),
        "the plan removes a listed package:\n{}",
        sim.text
    );
    for p in ["qemu-system-x86", "qemu-utils"] {
        assert!(
            sim.installs.iter().any(|i| i == p),
            "the plan does not install {p}:\n{}",
            sim.text
        );
    }
    assert!(plan.command_line().contains("--allow-downgrades"));
}

#[test]
fn the_plan_on_this_machine_removes_none_of_the_packages() {
    // The machine as it is now (after setup: nothing to do; before: the
    // real first run), through the same planner.
    let state = AptState::system();
    let plan = host_packages::plan(&state, APT_PACKAGES).unwrap();
    let sim = state.simulate(&plan.args, plan.allow_downgrades()).unwrap();
    assert!(sim.solvable, "{}", sim.text);
    assert!(sim.removes_any_of(APT_PACKAGES).is_empty(), "{}", sim.text);
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "xtask-apt-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
