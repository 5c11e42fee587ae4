//! Debian cloud kernels per series, downloaded once into the cache.
//!
//! [`prepare`] resolves the newest matching package from the suite's index
//! (private apt config, refreshed at most daily), downloads it (plus, for
//! sid, the split `linux-binary-*`/`linux-modules-*`/`linux-base-*`
//! packages), unpacks it, decompresses the modules and runs `depmod`.
//! Offline, the newest kernel already in the cache for the series is used.
//!
//! Layout: `<cache>/kernels/<uname -r>/{debs,root}` and
//! `<cache>/kernels/series-<series>` naming the last resolved version.

use crate::apt::{self, PrivateApt};
use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A kernel series, i.e. a Debian suite's cloud kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Series {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    #[value(name = "latest")]
    Latest,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::Latest];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::Latest => "latest",
        }
    }

    pub fn suite(self) -> &'static str {
        match self {
            Series::V5_10 => "bullseye",
            Series::V6_1 => "bookworm",
            Series::V6_12 => "trixie",
            Series::Latest => "sid",
        }
    }

    /// Whether `linux-image-<rest>` is this series' cloud image package.
    pub fn matches(self, pkg: &str) -> bool {
        let Some(rest) = pkg
            .strip_prefix("linux-image-")
            .and_then(|r| r.strip_suffix("-cloud-amd64"))
        else {
            return false;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match self {
            Series::V5_10 => rest.strip_prefix("5.10.0-").is_some_and(digits),
            Series::V6_1 => rest.strip_prefix("6.1.0-").is_some_and(digits),
            Series::V6_12 => rest
                .strip_prefix("6.12.")
                .and_then(|r| r.strip_suffix("+deb13"))
                .is_some_and(digits),
            Series::Latest => match rest.split_once("+deb") {
                Some((v, d)) => digits(d) && v.split('.').count() >= 2 && v.split('.').all(digits),
                None => false,
            },
        }
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Series {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Series::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| format!("unknown kernel series {s:?} (5.10, 6.1, 6.12, latest)"))
    }
}

/// An unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// `uname -r`, e.g. `6.1.0-37-cloud-amd64`.
    pub version: String,
    /// Unpacked packages (`boot/`, `lib/modules/<version>`).
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.version))
    }
    /// `lib/modules/<version>`: plain `.ko` files, depmod done.
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }

    /// `modules.dep` as module name -> (relative path, dependency names).
    pub fn module_deps(&self) -> Result<BTreeMap<String, (String, Vec<String>)>> {
        let text = fs::read_to_string(self.modules().join("modules.dep"))?;
        let name_of = |p: &str| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".ko")
                .replace('-', "_")
        };
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(name_of).collect();
            map.insert(name_of(path), (path.to_string(), deps));
        }
        Ok(map)
    }

    /// Module files (relative to [`Kernel::modules`]) needed to load
    /// `names`, dependencies first. Built-in modules are skipped.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<String>> {
        let deps = self.module_deps()?;
        let builtin =
            fs::read_to_string(self.modules().join("modules.builtin")).unwrap_or_default();
        let builtin: BTreeSet<String> = builtin
            .lines()
            .map(|l| {
                Path::new(l)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .trim_end_matches(".ko")
                    .replace('-', "_")
            })
            .collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(
            n: &str,
            deps: &BTreeMap<String, (String, Vec<String>)>,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            if !seen.insert(n.to_string()) {
                return;
            }
            if let Some((path, ds)) = deps.get(n) {
                for d in ds {
                    visit(d, deps, seen, order);
                }
                order.push(path.clone());
            }
        }
        for n in names {
            let n = n.replace('-', "_");
            if !deps.contains_key(&n) && !builtin.contains(&n) {
                bail!("kernel {} has no module {n}", self.version);
            }
            visit(&n, &deps, &mut seen, &mut order);
        }
        Ok(order)
    }
}

const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

fn kernels_dir(cache: &Path) -> PathBuf {
    cache.join("kernels")
}

/// Resolve, download (once) and unpack the newest kernel of `series`.
pub fn prepare(cache: &Path, series: Series) -> Result<Kernel> {
    let kdir = kernels_dir(cache);
    fs::create_dir_all(&kdir)?;
    let _lock = util::lock(&kdir.join(format!("series-{}.lock", series.name())))?;
    let series_file = kdir.join(format!("series-{}", series.name()));
    let cached = fs::read_to_string(&series_file)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| kdir.join(v).join("ready").exists());

    let resolved = (|| -> Result<(String, Vec<String>)> {
        let apt = PrivateApt::new(cache, series.suite())?;
        // Refresh daily, or now if nothing is cached for this series yet.
        let max_age = if cached.is_some() {
            INDEX_MAX_AGE
        } else {
            Duration::ZERO
        };
        apt.refresh(max_age)?;
        resolve(&apt, series)
    })();
    let (version, pkgs) = match (resolved, cached) {
        (Ok(r), _) => r,
        (Err(e), Some(v)) => {
            note(format!(
                "cannot resolve {series} from the archive ({e:#}); using cached {v}"
            ));
            return Ok(kernel_at(&kdir, series, &v));
        }
        (Err(e), None) => return Err(e.context(format!("resolving the {series} kernel"))),
    };
    let dir = kdir.join(&version);
    if !dir.join("ready").exists() {
        let t = Instant::now();
        note(format!("downloading kernel {version} ({})", pkgs.join(" ")));
        let apt = PrivateApt::new(cache, series.suite())?;
        let tmp = kdir.join(format!("{version}.tmp"));
        util::remove_all(&tmp)?;
        let debs = apt.download(&pkgs, &tmp.join("debs"))?;
        let root = tmp.join("root");
        for deb in &debs {
            util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        }
        normalize(&root, &version)?;
        util::remove_all(&dir)?;
        fs::rename(&tmp, &dir)?;
        fs::write(dir.join("ready"), "")?;
        note(format!(
            "kernel {version} ready in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    fs::write(&series_file, format!("{version}\n"))?;
    Ok(kernel_at(&kdir, series, &version))
}

fn kernel_at(kdir: &Path, series: Series, version: &str) -> Kernel {
    Kernel {
        series,
        version: version.to_string(),
        root: kdir.join(version).join("root"),
    }
}

/// Newest image package of the series -> (uname -r, packages to download).
fn resolve(apt: &PrivateApt, series: Series) -> Result<(String, Vec<String>)> {
    let names: Vec<String> = apt
        .package_names("linux-image-")?
        .into_iter()
        .filter(|n| series.matches(n))
        .collect();
    if names.is_empty() {
        bail!("no {series} cloud kernel image in {}", apt.suite);
    }
    let shown = apt.show(&names)?;
    let mut best: Option<&(String, String, String)> = None;
    for s in &shown {
        let newer = match best {
            None => true,
            Some(b) => apt::version_gt(&s.1, &b.1) || (s.1 == b.1 && s.0 > b.0),
        };
        if newer {
            best = Some(s);
        }
    }
    let (pkg, _ver, depends) = best.context("apt-cache show returned nothing")?;
    let version = pkg.strip_prefix("linux-image-").unwrap().to_string();
    let mut pkgs = vec![pkg.clone()];
    // Split packaging (sid): the image is a metapackage over these.
    for dep in depends.split(',') {
        let first = dep.split('|').next().unwrap_or("").trim();
        let name = first.split_whitespace().next().unwrap_or("");
        if ["linux-binary-", "linux-modules-", "linux-base-"]
            .iter()
            .any(|p| name.starts_with(p))
            && name.contains(&version)
        {
            pkgs.push(name.to_string());
        }
    }
    Ok((version, pkgs))
}

/// Put modules at `lib/modules/<v>`, decompress them, run depmod.
fn normalize(root: &Path, version: &str) -> Result<()> {
    let usr = root.join("usr/lib/modules").join(version);
    let lib = root.join("lib/modules").join(version);
    if usr.is_dir() && !lib.is_dir() {
        fs::create_dir_all(lib.parent().unwrap())?;
        fs::rename(&usr, &lib)?;
    }
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    // Newer packaging (sid) ships the image as /usr/lib/modules/<v>/vmlinuz.
    if !vmlinuz.is_file() && lib.join("vmlinuz").is_file() {
        fs::create_dir_all(vmlinuz.parent().unwrap())?;
        fs::rename(lib.join("vmlinuz"), &vmlinuz)?;
    }
    if !vmlinuz.is_file() {
        bail!("the kernel packages hold no {}", vmlinuz.display());
    }
    if !lib.is_dir() {
        bail!("the kernel packages hold no modules for {version}");
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd"), ("gz", "gzip")] {
        let mut files = Vec::new();
        collect_with_suffix(&lib, &format!(".ko.{ext}"), &mut files)?;
        for chunk in files.chunks(500) {
            let mut cmd = Command::new(tool);
            cmd.args(["-d", "-q", "-f"]);
            if tool == "zstd" {
                cmd.arg("--rm");
            }
            util::run(cmd.args(chunk))?;
        }
    }
    util::run(Command::new("depmod").arg("-b").arg(root).arg(version))?;
    Ok(())
}

fn collect_with_suffix(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let t = e.file_type()?;
        if t.is_dir() {
            collect_with_suffix(&p, suffix, out)?;
        } else if t.is_file() && p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    Ok(())
}
