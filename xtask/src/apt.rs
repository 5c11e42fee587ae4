//! A private apt configuration per Debian suite, living in the cache.
//!
//! It reaches other suites (bullseye, trixie, sid, ...) without touching the
//! machine's own apt state. The mirror is never hard-coded: it is read from
//! the machine's own sources ([`mirror_uri`]).

use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const SYSTEM_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian mirror the machine itself uses: the `URIs:` of the first
/// deb822 stanza in /etc/apt/sources.list.d/*.sources whose suites are not
/// `-security` ones, else the first such `deb` line of /etc/apt/sources.list.
pub fn mirror_uri() -> Result<String> {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(f).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let mut uris = None;
            let mut suites = None;
            let mut types = None;
            let mut enabled = true;
            for line in stanza.lines() {
                if let Some((k, v)) = line.split_once(':') {
                    let v = v.trim();
                    match k.trim().to_ascii_lowercase().as_str() {
                        "uris" => uris = Some(v.to_string()),
                        "suites" => suites = Some(v.to_string()),
                        "types" => types = Some(v.to_string()),
                        "enabled" => enabled = v != "no",
                        _ => {}
                    }
                }
            }
            if let (Some(uris), Some(suites)) = (uris, suites) {
                let is_deb = types.is_none_or(|t| t.split_whitespace().any(|t| t == "deb"));
                if enabled && is_deb && !suites.split_whitespace().any(|s| s.ends_with("-security"))
                {
                    if let Some(u) = uris.split_whitespace().next() {
                        return Ok(u.trim_end_matches('/').to_string());
                    }
                }
            }
        }
    }
    let text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if !suite.ends_with("-security") {
            return Ok(uri.trim_end_matches('/').to_string());
        }
    }
    bail!("found no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")
}

/// apt-get/apt-cache for one suite with a private state directory.
#[derive(Debug, Clone)]
pub struct PrivateApt {
    pub suite: String,
    pub dir: PathBuf,
}

/// Suites in release order: a newer suite's keyring can come from an older.
const SUITE_ORDER: &[&str] = &["bullseye", "bookworm", "trixie", "forky", "sid"];

impl PrivateApt {
    /// Set up (idempotently) `<cache>/apt/<suite>`.
    pub fn new(cache: &Path, suite: &str) -> Result<Self> {
        let dir = cache.join("apt").join(suite);
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let apt = PrivateApt {
            suite: suite.to_string(),
            dir,
        };
        apt.write_sources()?;
        Ok(apt)
    }

    fn keyring(&self) -> PathBuf {
        let own = self
            .dir
            .join("keyring/usr/share/keyrings/debian-archive-keyring.gpg");
        if own.is_file() {
            own
        } else {
            PathBuf::from(SYSTEM_KEYRING)
        }
    }

    fn write_sources(&self) -> Result<()> {
        let line = format!(
            "deb [signed-by={}] {} {} main\n",
            self.keyring().display(),
            mirror_uri()?,
            self.suite
        );
        let path = self.dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(line.as_str()) {
            fs::write(&path, line)?;
        }
        Ok(())
    }

    fn options(&self, cmd: &mut Command) {
        let d = &self.dir;
        for (k, v) in [
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", "/dev/null".into()),
            ("Dir::Etc::preferences", "/dev/null".into()),
            ("Dir::Etc::preferencesparts", "/dev/null".into()),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
            ("Dir::State::status", d.join("status")),
        ] {
            cmd.arg("-o").arg(format!("{k}={}", v.display()));
        }
        for o in [
            "APT::Architecture=amd64",
            "APT::Architectures=amd64",
            "Acquire::Languages=none",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
            "Debug::NoLocking=1",
            "Acquire::Retries=1",
        ] {
            cmd.arg("-o").arg(o);
        }
        if util::is_root() {
            // Our directories are root's; keep apt from dropping to _apt.
            cmd.arg("-o").arg("APT::Sandbox::User=root");
        }
    }

    pub fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        self.options(&mut c);
        c.arg("-q");
        c
    }

    pub fn apt_cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        self.options(&mut c);
        c
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    /// Whether a package index was fetched before.
    pub fn has_lists(&self) -> bool {
        self.stamp().exists()
    }

    /// `apt-get update`, with a signature check that must pass. If the
    /// archive key is unknown to the machine's keyring, fetch a newer
    /// `debian-archive-keyring` from the previous (verified) suite.
    pub fn update(&self) -> Result<()> {
        match self.try_update() {
            Ok(()) => Ok(()),
            Err(e) if format!("{e:#}").contains("NO_PUBKEY") => {
                note(format!(
                    "{}: archive key unknown, fetching a newer debian-archive-keyring",
                    self.suite
                ));
                self.fetch_keyring()?;
                self.write_sources()?;
                self.try_update()
            }
            Err(e) => Err(e),
        }
    }

    fn try_update(&self) -> Result<()> {
        let out = util::output_quiet(self.apt_get().arg("update"))?;
        // apt only warns about unverifiable indexes; treat that as an error.
        if out.contains("NO_PUBKEY")
            || out.contains("is not signed")
            || out.contains("EXPKEYSIG")
            || out.contains("could not be verified")
        {
            bail!(
                "apt-get update for {}: signature not verified:\n{}",
                self.suite,
                out.trim_end()
            );
        }
        // A failed download is only a warning too (and keeps old lists).
        if let Some(l) = out.lines().find(|l| l.contains("Failed to fetch")) {
            bail!(
                "apt-get update for {}: {}",
                self.suite,
                l.trim_start_matches("W: ")
            );
        }
        fs::write(self.stamp(), "")?;
        Ok(())
    }

    fn fetch_keyring(&self) -> Result<()> {
        let pos = SUITE_ORDER
            .iter()
            .position(|s| *s == self.suite)
            .context("no older suite to take a keyring from")?;
        let cache = self
            .dir
            .parent()
            .and_then(Path::parent)
            .context("cache layout")?;
        for older in SUITE_ORDER[..pos].iter().rev() {
            let apt = PrivateApt::new(cache, older)?;
            if apt.update().is_err() {
                continue;
            }
            let tmp = self.dir.join("keyring-deb");
            util::remove_all(&tmp)?;
            fs::create_dir_all(&tmp)?;
            let debs = apt.download(&["debian-archive-keyring".to_string()], &tmp)?;
            let dest = self.dir.join("keyring");
            util::remove_all(&dest)?;
            util::run(Command::new("dpkg-deb").arg("-x").arg(&debs[0]).arg(&dest))?;
            util::remove_all(&tmp)?;
            note(format!(
                "{}: using debian-archive-keyring from {older} (verified by its signed index)",
                self.suite
            ));
            return Ok(());
        }
        bail!(
            "no newer debian-archive-keyring could be fetched for {}",
            self.suite
        )
    }

    /// Refresh the index when it is older than `max_age`. Returns an error
    /// only if there is no index at all afterwards.
    pub fn refresh(&self, max_age: Duration) -> Result<()> {
        let stale = util::age(&self.stamp()).is_none_or(|a| a > max_age);
        // After a failed refresh, don't retry (slowly, offline) for an hour.
        let attempt = self.dir.join("attempted");
        let recently_tried =
            self.has_lists() && util::age(&attempt).is_some_and(|a| a < Duration::from_secs(3600));
        if stale && !recently_tried {
            fs::write(&attempt, "")?;
            if let Err(e) = self.update() {
                if !self.has_lists() {
                    return Err(e);
                }
                note(format!(
                    "{}: index refresh failed, using the cached one ({e:#})",
                    self.suite
                ));
            }
        }
        Ok(())
    }

    /// All package names starting with `prefix`.
    pub fn package_names(&self, prefix: &str) -> Result<Vec<String>> {
        let out = util::output(self.apt_cache().args(["pkgnames", prefix]))?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    /// (Package, Version, Depends) of the candidate of each named package.
    pub fn show(&self, pkgs: &[String]) -> Result<Vec<(String, String, String)>> {
        let out = util::output(
            self.apt_cache()
                .args(["show", "--no-all-versions"])
                .args(pkgs),
        )?;
        let mut res = Vec::new();
        for stanza in out.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let p = field("Package:");
            if !p.is_empty() {
                res.push((p, field("Version:"), field("Depends:")));
            }
        }
        Ok(res)
    }

    /// `apt-get download` into `dir`; returns the .deb paths.
    pub fn download(&self, pkgs: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        util::output_quiet(self.apt_get().arg("download").args(pkgs).current_dir(dir))?;
        let mut debs = Vec::new();
        for p in pkgs {
            let found = fs::read_dir(dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|f| {
                    let n = f.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with(&format!("{p}_")) && n.ends_with(".deb")
                })
                .with_context(|| format!("apt-get download left no .deb for {p}"))?;
            debs.push(found);
        }
        Ok(debs)
    }
}

/// `dpkg --compare-versions a gt b`.
pub fn version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
