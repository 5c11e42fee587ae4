//! A container's lower layers as Docker keeps them: the container's
//! `GraphDriver.Data.LowerDir` (topmost first, Docker's `-init` layer
//! first of all), the image's `RootFS.Layers` (diff ids, base first), the
//! layer store's `image/<driver>/layerdb/sha256/<chain id>/cache-id` (the
//! directory under `<driver>/` holding each layer) and the image config's
//! `history` (instructions such as `ENV` make no layer: `empty_layer`).
//!
//! Each lower directory is matched to its layer through the layer store,
//! never by position alone: a directory the store does not name (the
//! `-init` layer, a layer of another image) maps to no layer.
//!
//! Everything read here is the runtime's own bookkeeping under its data
//! root; what the image author wrote (the instructions) is only carried
//! as text, escaped when shown.

use super::LayerRef;
use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One lower directory of a container, and the image layer it is.
#[derive(Clone, Debug)]
pub struct Lower {
    pub dir: PathBuf,
    pub layer: Option<Arc<LayerRef>>,
}

/// A container's lower layers, topmost first.
#[derive(Clone, Debug, Default)]
pub struct ImageLayers {
    pub lowers: Vec<Lower>,
    /// The container's upper directory (what it changed), when known.
    pub upper: Option<PathBuf>,
    /// The image the container runs (its id), when known; for layers known
    /// only by position, its lower directories (the same for every
    /// container of one image). Only compared, never shown.
    pub image_id: Option<String>,
}

/// At most this many lower layers are looked at (overlayfs allows 500;
/// Docker images stop at 127).
pub const MAX_LOWERS: usize = 512;
/// Bookkeeping files read here are small; anything larger is refused.
const MAX_FILE: u64 = 16 << 20;
/// The longest one runtime request may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// Chain ids of a stack of diff ids (OCI image spec):
/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex(&h))
            }
        };
        out.push(id);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of an image config's `history`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub empty_layer: bool,
}

/// The instruction that made each layer (base first): the history
/// entries that made a layer, in order. When their number is not the
/// number of layers, the history cannot be trusted to line up and every
/// instruction is unknown.
pub fn instructions(history: &[HistoryEntry], layers: usize) -> Vec<Option<String>> {
    let made: Vec<&HistoryEntry> = history.iter().filter(|h| !h.empty_layer).collect();
    if made.len() != layers {
        return vec![None; layers];
    }
    made.into_iter()
        .map(|h| Some(h.created_by.clone()))
        .collect()
}

/// The hex part of `sha256:<64 hex>`, or None (never a path component
/// that could climb out of a directory).
fn sha256_hex(id: &str) -> Option<&str> {
    let h = id.strip_prefix("sha256:")?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

/// An image's layers by the directory name the layer store gives each
/// (its cache id), and how many layers the image has. The same for every
/// container of the image: read once per image ([`ImageCache`]).
#[derive(Debug, Default)]
pub struct LayerDirs {
    by_dir: HashMap<String, Arc<LayerRef>>,
    layers: usize,
}

/// Images' [`LayerDirs`], by graph driver and image id, so that a
/// container costs the runtime one request (its inspect), not three reads
/// more per container of an image already seen. An entry holds an
/// image's layer refs: about 200 bytes per layer plus its instruction's
/// text (at most 127 layers).
#[derive(Default)]
pub struct ImageCache {
    map: HashMap<String, Arc<LayerDirs>>,
}

/// Images whose [`LayerDirs`] are kept; past it, all are forgotten (and
/// read again when a container of theirs is inspected).
pub const MAX_IMAGES: usize = 64;

impl ImageCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, key: &str) -> Option<Arc<LayerDirs>> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: String, dirs: Arc<LayerDirs>) {
        if self.map.len() >= MAX_IMAGES {
            self.map.clear();
        }
        self.map.insert(key, dirs);
    }
}

/// Matches lower directories to layers. `cache_id` says which directory
/// name the layer store gives a chain id.
pub fn assemble(
    lower_dirs: &[PathBuf],
    diff_ids: &[String],
    created_by: &[Option<String>],
    cache_id: impl Fn(&str) -> Option<String>,
) -> ImageLayers {
    place(lower_dirs, &layer_dirs(diff_ids, created_by, cache_id))
}

/// An image's [`LayerDirs`]. `cache_id` says which directory name the
/// layer store gives a chain id.
pub fn layer_dirs(
    diff_ids: &[String],
    created_by: &[Option<String>],
    cache_id: impl Fn(&str) -> Option<String>,
) -> LayerDirs {
    let chains = chain_ids(diff_ids);
    let mut by_dir: HashMap<String, Arc<LayerRef>> = HashMap::new();
    for (i, (chain, diff)) in chains.iter().zip(diff_ids).enumerate() {
        if let Some(c) = cache_id(chain) {
            by_dir.insert(
                c,
                Arc::new(LayerRef {
                    index: i as u32,
                    diff_id: Some(diff.clone()),
                    created_by: created_by.get(i).cloned().flatten(),
                }),
            );
        }
    }
    LayerDirs {
        by_dir,
        layers: diff_ids.len(),
    }
}

/// Matches a container's lower directories to its image's layers.
pub fn place(lower_dirs: &[PathBuf], dirs: &LayerDirs) -> ImageLayers {
    let lowers = lower_dirs
        .iter()
        .take(MAX_LOWERS)
        .map(|dir| Lower {
            dir: dir.clone(),
            // `<root>/<driver>/<cache id>/diff`
            layer: dir
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| dirs.by_dir.get(n).cloned()),
        })
        .collect();
    ImageLayers {
        lowers,
        upper: None,
        image_id: None,
    }
}

/// A small file of the runtime's bookkeeping.
fn read_small(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut s = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut s)
        .with_context(|| path.display().to_string())?;
    Ok(s)
}

/// An absolute path with no `..`, `.` or empty component.
pub(crate) fn plain_absolute(p: &str) -> Option<PathBuf> {
    let path = PathBuf::from(p);
    let ok = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    ok.then_some(path)
}

async fn deadline<T>(what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!(
            "{what}: no answer within {} s",
            REQUEST_DEADLINE.as_secs()
        )),
    }
}

/// The runtime's data root (`DockerRootDir`).
pub async fn data_root(client: &Docker) -> Result<PathBuf> {
    let info = deadline("runtime info", async { Ok(client.info().await?) }).await?;
    info.docker_root_dir
        .as_deref()
        .and_then(plain_absolute)
        .ok_or_else(|| anyhow!("the runtime names no data root"))
}

/// The engine does not know the container (it is another runtime's).
#[derive(Debug)]
pub struct UnknownToEngine;

impl std::fmt::Display for UnknownToEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such container in the engine")
    }
}

impl std::error::Error for UnknownToEngine {}

/// A container's lower layers, from the runtime and its layer store under
/// `root` (its image's read once, kept in `images`). An error says why
/// they cannot be known ([`UnknownToEngine`] when the engine answered that
/// it has no such container).
pub async fn fetch(
    client: &Docker,
    root: &Path,
    container_id: &str,
    images: &mut ImageCache,
) -> Result<ImageLayers> {
    let c = deadline("inspecting a container", async {
        match client
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(c),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(anyhow::Error::new(UnknownToEngine)),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let driver = c
        .graph_driver
        .ok_or_else(|| anyhow!("the runtime gives no graph driver data"))?;
    // The driver names a directory: one plain component.
    if driver.name.is_empty() || driver.name.contains('/') || driver.name.starts_with('.') {
        bail!("graph driver {:?} is not one we read", driver.name);
    }
    let lower_dirs: Vec<PathBuf> = driver
        .data
        .get("LowerDir")
        .ok_or_else(|| anyhow!("the runtime gives no LowerDir"))?
        .split(':')
        .map(|d| plain_absolute(d).ok_or_else(|| anyhow!("lower dir {d:?} is not a plain path")))
        .collect::<Result<_>>()?;
    let image_id = c
        .image
        .ok_or_else(|| anyhow!("the runtime names no image"))?;
    let store = root.join("image").join(&driver.name);
    let cached = format!("{}/{image_id}", driver.name);
    let dirs = match images.get(&cached) {
        Some(d) => d,
        None => {
            let d = Arc::new(read_layer_dirs(client, &store, &image_id).await?);
            images.put(cached, d.clone());
            d
        }
    };
    let upper = driver.data.get("UpperDir").and_then(|d| plain_absolute(d));
    let mut layers = place(&lower_dirs, &dirs);
    if layers.lowers.iter().all(|l| l.layer.is_none()) && dirs.layers > 0 {
        bail!(
            "no lower directory of the container is a layer of its image in {}",
            store.join("layerdb/sha256").display()
        );
    }
    layers.upper = upper;
    layers.image_id = Some(image_id);
    Ok(layers)
}

/// An image's [`LayerDirs`], from the runtime (its diff ids) and the
/// layer store at `store` (its history and each layer's directory).
async fn read_layer_dirs(client: &Docker, store: &Path, image_id: &str) -> Result<LayerDirs> {
    let image = deadline("inspecting an image", async {
        Ok(client.inspect_image(image_id).await?)
    })
    .await?;
    let diff_ids = image.root_fs.and_then(|r| r.layers).unwrap_or_default();
    let history = match sha256_hex(image_id) {
        Some(h) => {
            #[derive(serde::Deserialize)]
            struct Config {
                #[serde(default)]
                history: Vec<HistoryEntry>,
            }
            let p = store.join("imagedb/content/sha256").join(h);
            read_small(&p)
                .ok()
                .and_then(|t| serde_json::from_str::<Config>(&t).ok())
                .map(|c| c.history)
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let created_by = instructions(&history, diff_ids.len());
    let layerdb = store.join("layerdb/sha256");
    Ok(layer_dirs(&diff_ids, &created_by, |chain| {
        let h = sha256_hex(chain)?;
        let id = read_small(&layerdb.join(h).join("cache-id")).ok()?;
        let id = id.trim();
        // A directory name, nothing more.
        (!id.is_empty() && !id.contains('/') && !id.starts_with('.')).then(|| id.to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let diffs = [d('a'), d('b'), d('c')];
        let c = chain_ids(&diffs);
        assert_eq!(c[0], diffs[0]);
        let want1 = format!(
            "sha256:{}",
            hex(&Sha256::digest(
                format!("{} {}", diffs[0], diffs[1]).as_bytes()
            ))
        );
        assert_eq!(c[1], want1);
        let want2 = format!(
            "sha256:{}",
            hex(&Sha256::digest(
                format!("{} {}", want1, diffs[2]).as_bytes()
            ))
        );
        assert_eq!(c[2], want2);
        // The same diff id twice is two layers.
        let twice = chain_ids(&[d('a'), d('a')]);
        assert_ne!(twice[0], twice[1]);
    }

    #[test]
    fn instructions_skip_empty_layers_and_refuse_a_mismatch() {
        let h = |c: &str, e: bool| HistoryEntry {
            created_by: c.into(),
            empty_layer: e,
        };
        let hist = [h("ADD base", false), h("ENV X=1", true), h("RUN x", false)];
        assert_eq!(
            instructions(&hist, 2),
            [Some("ADD base".to_string()), Some("RUN x".to_string())]
        );
        assert_eq!(instructions(&hist, 3), [None, None, None]);
    }

    #[test]
    fn lowers_map_through_the_layer_store_and_init_maps_to_none() {
        let diffs = [d('a'), d('b')];
        let chains = chain_ids(&diffs);
        let store: HashMap<String, String> = HashMap::from([
            (chains[0].clone(), "base".into()),
            (chains[1].clone(), "top".into()),
        ]);
        let dirs: Vec<PathBuf> = [
            "/r/overlay2/x-init/diff",
            "/r/overlay2/top/diff",
            "/r/overlay2/base/diff",
        ]
        .map(PathBuf::from)
        .to_vec();
        let l = assemble(
            &dirs,
            &diffs,
            &[Some("ADD".into()), Some("RUN".into())],
            |c| store.get(c).cloned(),
        );
        assert!(l.lowers[0].layer.is_none());
        let top = l.lowers[1].layer.as_ref().unwrap();
        assert_eq!(
            (top.index, top.diff_id.as_deref()),
            (1, Some(diffs[1].as_str()))
        );
        assert_eq!(top.created_by.as_deref(), Some("RUN"));
        assert_eq!(l.lowers[2].layer.as_ref().unwrap().index, 0);
    }

    #[test]
    fn ids_and_paths_that_could_climb_are_refused() {
        assert!(sha256_hex("sha256:../../etc").is_none());
        assert!(sha256_hex(&d('a')).is_some());
        assert!(plain_absolute("/var/lib/docker/overlay2/x/diff").is_some());
        assert!(plain_absolute("/var/lib/docker/../x").is_none());
        assert!(plain_absolute("relative/x").is_none());
    }
}
