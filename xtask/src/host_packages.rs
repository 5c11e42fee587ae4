//! The host's Debian packages, installed as one consistent apt transaction.
//!
//! A machine image may already hold some of the packages at versions from
//! another suite (this machine kind ships `qemu-utils` from backports, which
//! bookworm's `qemu-system-x86` conflicts with). Installing only what is
//! missing then lets apt *remove* a package we need. So the plan names every
//! package of the set, is simulated first (`apt-get install -s`), and when
//! the simulation would remove one of them or cannot be solved, packages
//! installed at a version no configured repository offers are moved to the
//! repository's version. After the real run every package is checked again.
//! The package list itself is `setup::APT_PACKAGES`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// apt and dpkg as seen through a status file: the machine's own
/// (`/var/lib/dpkg/status`) or a scratch one in tests.
#[derive(Debug, Clone, Default)]
pub struct AptState {
    /// `-o Dir::State::status=...` when not the machine's own.
    status: Option<PathBuf>,
}

impl AptState {
    /// The machine's own dpkg state.
    pub fn system() -> Self {
        Self::default()
    }

    /// A scratch dpkg status file (what is "installed" for planning).
    pub fn with_status(status: &Path) -> Self {
        AptState {
            status: Some(status.to_path_buf()),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(s) = &self.status {
            cmd.arg("-o")
                .arg(format!("Dir::State::status={}", s.display()));
        }
        cmd
    }

    /// The installed version of `pkg`, if any.
    pub fn installed_version(&self, pkg: &str) -> Result<Option<String>> {
        let text = self.policy(pkg)?;
        Ok(parse_policy(&text).installed)
    }

    fn policy(&self, pkg: &str) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["policy", pkg])
            .output()
            .context("cannot run apt-cache (is this a Debian system?)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Simulate `apt-get install` of `args` (names or `name=version`).
    pub fn simulate(&self, args: &[String], allow_downgrades: bool) -> Result<Simulation> {
        let mut cmd = self.command("apt-get");
        cmd.args(["install", "-s", "--no-install-recommends"]);
        if allow_downgrades {
            cmd.arg("--allow-downgrades");
        }
        let out = cmd
            .args(args)
            .output()
            .context("cannot run apt-get (is this a Debian system?)")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(Simulation::parse(out.status.success(), &text))
    }
}

/// What `apt-cache policy PKG` says that planning needs.
#[derive(Debug, Default, PartialEq)]
pub struct Policy {
    pub installed: Option<String>,
    /// What `apt-get install PKG` would pick.
    pub candidate: Option<String>,
    /// The newest version some repository (not only dpkg's status) offers.
    pub newest_in_repo: Option<String>,
    /// Whether the installed version is offered by any repository.
    pub installed_in_repo: bool,
}

impl Policy {
    /// The repository version to move to, when the installed version comes
    /// from no repository and apt would keep it (it is newer than what the
    /// repositories have: a backport). An installed version that is merely
    /// older is upgraded by a plain install and needs nothing.
    pub fn realign_to(&self) -> Option<&str> {
        let installed = self.installed.as_deref()?;
        if self.installed_in_repo || self.candidate.as_deref() != Some(installed) {
            return None;
        }
        self.newest_in_repo.as_deref()
    }
}

/// Parse `apt-cache policy` output for one package.
pub fn parse_policy(text: &str) -> Policy {
    let mut policy = Policy::default();
    // The version table: "     VERSION PRIO" (or " *** VERSION PRIO" for the
    // installed one), each followed by "        PRIO SOURCE" lines.
    let mut current: Option<(String, bool)> = None;
    let mut in_table = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let version =
            |v: &str| Some(v.trim().to_string()).filter(|v| v != "(none)" && !v.is_empty());
        if let Some(v) = trimmed.strip_prefix("Installed:") {
            policy.installed = version(v);
            continue;
        }
        if let Some(v) = trimmed.strip_prefix("Candidate:") {
            policy.candidate = version(v);
            continue;
        }
        if trimmed.starts_with("Version table:") {
            in_table = true;
            continue;
        }
        if !in_table || trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if indent <= 5 {
            // A version line.
            let (version, installed) = match words.as_slice() {
                ["***", v, ..] => (v.to_string(), true),
                [v, ..] => (v.to_string(), false),
                [] => continue,
            };
            current = Some((version, installed));
        } else if let Some((version, installed)) = &current {
            // A source line: "PRIO SOURCE...". dpkg's status file shows as
            // a bare path (repositories as URIs, local ones as file:/...).
            let source = words.get(1).copied().unwrap_or("");
            if source.starts_with('/') || source.is_empty() {
                continue;
            }
            if *installed {
                policy.installed_in_repo = true;
            }
            // The table is ordered newest first: keep the first one.
            if policy.newest_in_repo.is_none() {
                policy.newest_in_repo = Some(version.clone());
            }
        }
    }
    policy
}

/// The outcome of `apt-get install -s`.
#[derive(Debug, Default)]
pub struct Simulation {
    pub solvable: bool,
    /// Packages apt would remove (`Remv NAME ...`).
    pub removes: Vec<String>,
    /// Packages apt would install or change (`Inst NAME ...`).
    pub installs: Vec<String>,
    /// apt's own words, for error messages.
    pub text: String,
}

impl Simulation {
    fn parse(ok: bool, text: &str) -> Self {
        let name = |rest: &str| {
            rest.split_whitespace()
                .next()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string()
        };
        let mut sim = Simulation {
            solvable: ok,
            text: text.to_string(),
            ..Default::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Remv ") {
                sim.removes.push(name(rest));
            } else if let Some(rest) = line.strip_prefix("Inst ") {
                sim.installs.push(name(rest));
            }
        }
        sim
    }

    /// Listed packages this transaction would remove.
    pub fn removes_any_of(&self, wanted: &[&str]) -> Vec<String> {
        self.removes
            .iter()
            .filter(|r| wanted.contains(&r.as_str()))
            .cloned()
            .collect()
    }
}

/// A consistent `apt-get install` of every package in the set.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Names, or `name=version` where a version must change to agree.
    pub args: Vec<String>,
    /// Packages moved to the repository's version: (name, from, to).
    pub realigned: Vec<(String, String, String)>,
}

impl Plan {
    pub fn allow_downgrades(&self) -> bool {
        !self.realigned.is_empty()
    }

    /// The command line a person would run for this plan.
    pub fn command_line(&self) -> String {
        let mut s = String::from("apt-get install -y --no-install-recommends");
        if self.allow_downgrades() {
            s.push_str(" --allow-downgrades");
        }
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Plan the installation of `packages` so that none of them is removed.
pub fn plan(state: &AptState, packages: &[&str]) -> Result<Plan> {
    let plain = Plan {
        args: packages.iter().map(|p| p.to_string()).collect(),
        realigned: Vec::new(),
    };
    let sim = state.simulate(&plain.args, false)?;
    if sim.solvable && sim.removes_any_of(packages).is_empty() {
        return Ok(plain);
    }
    // Move every package installed at a version no repository offers (a
    // backport, a local build) to the newest version a repository has, so
    // the whole set comes from one place and agrees.
    let mut realigned = Vec::new();
    let mut args = Vec::new();
    for &pkg in packages {
        let policy = parse_policy(&state.policy(pkg)?);
        match (&policy.installed, policy.realign_to()) {
            (Some(have), Some(repo)) => {
                args.push(format!("{pkg}={repo}"));
                realigned.push((pkg.to_string(), have.clone(), repo.to_string()));
            }
            _ => args.push(pkg.to_string()),
        }
    }
    let aligned = Plan { args, realigned };
    let sim2 = state.simulate(&aligned.args, aligned.allow_downgrades())?;
    let removed = sim2.removes_any_of(packages);
    if sim2.solvable && removed.is_empty() {
        return Ok(aligned);
    }
    let why = if removed.is_empty() {
        first_error(&sim2.text)
    } else {
        format!("it would remove {}", removed.join(", "))
    };
    bail!(
        "apt cannot install {} together ({why}); fix the conflict, then run: {}",
        packages.join(" "),
        aligned.command_line()
    )
}

/// The first line of apt's output that explains a failure.
fn first_error(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("E:") || l.contains(": Breaks:") || l.contains(": Depends:"))
        .unwrap_or("no solution")
        .to_string()
}

/// Packages of the set that dpkg does not have fully installed.
pub fn missing(packages: &[&str]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for &p in packages {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .stderr(Stdio::null())
            .output()
            .context("cannot run dpkg-query (is this a Debian system?)")?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY_BACKPORT: &str = "qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
";

    #[test]
    fn policy_of_a_package_installed_from_elsewhere() {
        let p = parse_policy(POLICY_BACKPORT);
        assert_eq!(
            p.installed.as_deref(),
            Some("1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
        assert_eq!(
            p.newest_in_repo.as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert!(!p.installed_in_repo);
        assert_eq!(p.realign_to(), Some("1:7.2+dfsg-7+deb12u18+b3"));
    }

    #[test]
    fn policy_of_a_package_installed_from_the_repository() {
        let text = "cpio:
  Installed: 2.13+dfsg-7.1
  Candidate: 2.13+dfsg-7.1
  Version table:
 *** 2.13+dfsg-7.1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
";
        let p = parse_policy(text);
        assert_eq!(p.installed.as_deref(), Some("2.13+dfsg-7.1"));
        assert!(p.installed_in_repo);
        assert_eq!(p.realign_to(), None);
        let older = parse_policy("e2fsprogs:\n  Installed: 1.47.0-2\n  Candidate: 1.47.0-2+b2\n  Version table:\n     1.47.0-2+b2 500\n        500 http://x bookworm/main amd64 Packages\n *** 1.47.0-2 100\n        100 /var/lib/dpkg/status\n");
        assert!(!older.installed_in_repo);
        assert_eq!(
            older.realign_to(),
            None,
            "an old point release is upgraded, not pinned"
        );
        let none = parse_policy("zstd:\n  Installed: (none)\n  Candidate: 1.5\n  Version table:\n     1.5 500\n        500 http://x bookworm/main amd64 Packages\n");
        assert_eq!(none.installed, None);
        assert_eq!(none.newest_in_repo.as_deref(), Some("1.5"));
    }

    #[test]
    fn simulation_lines() {
        let sim = Simulation::parse(
            true,
            "Remv qemu-utils [1:10.0]\nInst qemu-system-common (1:7.2 Debian:12)\nInst libfoo:amd64 (1)\n",
        );
        assert_eq!(sim.removes, ["qemu-utils"]);
        assert_eq!(sim.installs, ["qemu-system-common", "libfoo"]);
        assert_eq!(sim.removes_any_of(&["qemu-utils", "cpio"]), ["qemu-utils"]);
    }
}
