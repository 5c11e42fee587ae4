//! Run directories under the cache: one per boot, holding its logs, and
//! pruned so they don't pile up.

use crate::util;
use anyhow::Result;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A new, empty run directory under `<cache>/runs`.
pub fn new_run_dir(cache: &Path) -> Result<PathBuf> {
    let runs = cache.join("runs");
    fs::create_dir_all(&runs)?;
    // Keep the 30 newest run directories, and anything from the last day
    // (another xtask may be using it).
    let mut old: Vec<PathBuf> = fs::read_dir(&runs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    old.sort();
    if old.len() > 30 {
        for p in &old[..old.len() - 30] {
            if util::age(p).is_some_and(|a| a > Duration::from_secs(86400)) {
                let _ = util::remove_all(p);
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let dir = runs.join(format!("{}-{}", now.as_millis(), std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
