//! A podman container's image layers from containers-storage, the store
//! podman (rootful) keeps under `/var/lib/containers/storage` with no
//! daemon to ask:
//!
//! - `overlay-containers/containers.json`: each container's `image` (the
//!   image id) and `layer` (its own read-write layer, whose `diff` is the
//!   overlay's upper directory);
//! - `overlay-images/images.json`: each image's top `layer` and the names
//!   of its "big data" items, one of which is the image config, named by
//!   its digest (`sha256:<id>`) and stored beside it as
//!   `overlay-images/<id>/=<base64 of the name>`;
//! - `overlay-layers/layers.json`: each layer's `parent` and `diff-digest`
//!   (the digest of its uncompressed content: the image's diff id);
//! - `overlay/<layer id>/diff`: each layer's content.
//!
//! The image's layers are the chain of parents from its top layer down:
//! that chain is the container overlay's lower stack (the `l/` short links
//! of its `lowerdir=` option name the same directories; they are never
//! followed here), so layers are matched to directories by id, not by
//! position. The instruction behind each layer comes from the config's
//! `history` as for Docker ([`super::image::instructions`]); the config is
//! used only if its content has the digest it is filed under.
//!
//! Files under the store are root's, their content the runtime's: read
//! with [`crate::bundle::read_bounded_up_to`] (no symlink on the way,
//! regular files only, bounded), every id checked before it names a path.

use super::image::{instructions, HistoryEntry, ImageLayers, Lower, MAX_LOWERS};
use super::LayerRef;
use crate::bundle::{is_identifier, read_bounded_up_to};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Podman's (containers-storage's) default rootful storage root.
pub const STORAGE_ROOT: &str = "/var/lib/containers/storage";
/// The store's indexes list every container, image and layer of the host.
const MAX_INDEX: u64 = 64 << 20;
/// An image config is a few KiB (its history grows with the layers).
const MAX_CONFIG: u64 = 4 << 20;
/// Longest diff id carried (`sha256:` and 64 hex digits, with room for
/// another algorithm).
const MAX_DIGEST: usize = 160;

#[derive(Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    layer: String,
}

#[derive(Deserialize)]
struct StoredImage {
    id: String,
    #[serde(default)]
    layer: String,
    #[serde(rename = "big-data-names", default)]
    big_data_names: Vec<String>,
}

#[derive(Deserialize)]
struct StoredLayer {
    id: String,
    #[serde(default)]
    parent: String,
    #[serde(rename = "diff-digest", default)]
    diff_digest: String,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    history: Vec<HistoryEntry>,
}

fn index<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<Vec<T>>> {
    match read_bounded_up_to(path, MAX_INDEX)? {
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| path.display().to_string())?,
        )),
        None => Ok(None),
    }
}

/// The file name containers-storage gives a big data item: the name
/// itself when it is only `[0-9a-z.]`, else `=` and its base64.
pub fn big_data_file_name(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// `sha256:<64 lowercase hex>`'s hex, or None.
fn sha256_hex(s: &str) -> Option<&str> {
    let h = s.strip_prefix("sha256:")?;
    (h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(h)
}

/// The image config's history, if the store has a config whose content
/// has the digest it is filed under.
fn history(storage: &Path, image: &StoredImage) -> Vec<HistoryEntry> {
    let own = format!("sha256:{}", image.id);
    let key = if image.big_data_names.contains(&own) {
        Some(own.as_str())
    } else {
        image
            .big_data_names
            .iter()
            .map(String::as_str)
            .find(|k| sha256_hex(k).is_some())
    };
    let Some(key) = key else { return Vec::new() };
    let path = storage
        .join("overlay-images")
        .join(&image.id)
        .join(big_data_file_name(key));
    let Ok(Some(bytes)) = read_bounded_up_to(&path, MAX_CONFIG) else {
        return Vec::new();
    };
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sha256_hex(key) != Some(digest.as_str()) {
        return Vec::new();
    }
    serde_json::from_slice::<Config>(&bytes)
        .map(|c| c.history)
        .unwrap_or_default()
}

/// The ids of the containers in the store under `storage` (to fetch
/// their layers before their first event).
pub fn container_ids(storage: &Path) -> Vec<String> {
    index::<StoredContainer>(&storage.join("overlay-containers/containers.json"))
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .filter(|id| is_identifier(id))
        .collect()
}

/// Container `id`'s layers from the store under `storage`; `Ok(None)`
/// when the store does not have that container (it is another runtime's).
pub fn fetch(storage: &Path, id: &str) -> Result<Option<ImageLayers>> {
    if !is_identifier(id) {
        return Ok(None);
    }
    let Some(containers) =
        index::<StoredContainer>(&storage.join("overlay-containers/containers.json"))?
    else {
        return Ok(None);
    };
    let Some(c) = containers.into_iter().find(|c| c.id == id) else {
        return Ok(None);
    };
    if !is_identifier(&c.image) {
        bail!("podman container {id} names no image");
    }
    let images = index::<StoredImage>(&storage.join("overlay-images/images.json"))?
        .ok_or_else(|| anyhow!("no overlay-images/images.json in {}", storage.display()))?;
    let image = images
        .into_iter()
        .find(|i| i.id == c.image)
        .ok_or_else(|| anyhow!("image {} of podman container {id} is not stored", c.image))?;
    let layers = index::<StoredLayer>(&storage.join("overlay-layers/layers.json"))?
        .ok_or_else(|| anyhow!("no overlay-layers/layers.json in {}", storage.display()))?;
    let by_id: HashMap<&str, &StoredLayer> = layers.iter().map(|l| (l.id.as_str(), l)).collect();
    // Top layer first, down to the base (a cycle stops at the bound).
    let mut chain: Vec<&StoredLayer> = Vec::new();
    let mut next = image.layer.as_str();
    while !next.is_empty() {
        if chain.len() >= MAX_LOWERS {
            bail!("image {} has more than {MAX_LOWERS} layers", image.id);
        }
        let l = by_id
            .get(next)
            .ok_or_else(|| anyhow!("layer {next:?} is not in the store"))?;
        if !is_identifier(&l.id) {
            bail!("layer id {:?} is not a plain name", l.id);
        }
        chain.push(l);
        next = l.parent.as_str();
    }
    let created_by = instructions(&history(storage, &image), chain.len());
    let overlay = storage.join("overlay");
    let n = chain.len();
    let lowers = chain
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let index = n - 1 - i;
            Lower {
                dir: overlay.join(&l.id).join("diff"),
                layer: Some(Arc::new(LayerRef {
                    index: index as u32,
                    diff_id: (!l.diff_digest.is_empty() && l.diff_digest.len() <= MAX_DIGEST)
                        .then(|| l.diff_digest.clone()),
                    created_by: created_by[index].clone(),
                })),
            }
        })
        .collect();
    let upper: Option<PathBuf> =
        is_identifier(&c.layer).then(|| overlay.join(&c.layer).join("diff"));
    Ok(Some(ImageLayers {
        lowers,
        upper,
        image_id: Some(format!("sha256:{}", image.id)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn big_data_names_are_filed_as_containers_storage_does() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        assert_eq!(
            big_data_file_name("sha256:ab"),
            format!(
                "={}",
                base64::engine::general_purpose::STANDARD.encode("sha256:ab")
            )
        );
        // Nothing that could name another directory.
        assert!(!big_data_file_name("../x").contains('/'));
    }

    /// A store of a three-layer image (`base` <- `mid` <- `top`) and one
    /// container, with the image's config filed under its digest.
    fn store(tag: &str, history: serde_json::Value) -> (PathBuf, String) {
        let d = std::env::temp_dir().join(format!("cowtrace-storage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["overlay-containers", "overlay-layers"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let config = json!({"history": history}).to_string();
        let image_id: String = Sha256::digest(config.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = format!("sha256:{image_id}");
        let idir = d.join("overlay-images").join(&image_id);
        std::fs::create_dir_all(&idir).unwrap();
        std::fs::write(idir.join(big_data_file_name(&key)), &config).unwrap();
        let (base, mid, top, rw) = (id('b'), id('m'), id('t'), id('c'));
        std::fs::write(
            d.join("overlay-images/images.json"),
            json!([{"id": image_id, "layer": top, "big-data-names": ["manifest", key]}])
                .to_string(),
        )
        .unwrap();
        std::fs::write(
            d.join("overlay-layers/layers.json"),
            json!([
                {"id": top, "parent": mid, "diff-digest": "sha256:33"},
                {"id": base, "diff-digest": "sha256:11"},
                {"id": mid, "parent": base, "diff-digest": "sha256:22"},
                {"id": rw, "parent": top},
            ])
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            d.join("overlay-containers/containers.json"),
            json!([{"id": id('9'), "image": image_id, "layer": rw}]).to_string(),
        )
        .unwrap();
        (d, image_id)
    }

    #[test]
    fn layers_follow_the_parent_chain_with_diff_ids_and_instructions() {
        let hist = json!([
            {"created_by": "ADD base"},
            {"created_by": "RUN one"},
            {"created_by": "ENV X=1", "empty_layer": true},
            {"created_by": "RUN two"},
        ]);
        let (d, image_id) = store("chain", hist);
        let l = fetch(&d, &id('9')).unwrap().unwrap();
        let got: Vec<(u32, Option<&str>, Option<&str>, PathBuf)> = l
            .lowers
            .iter()
            .map(|x| {
                let r = x.layer.as_ref().unwrap();
                (
                    r.index,
                    r.diff_id.as_deref(),
                    r.created_by.as_deref(),
                    x.dir.clone(),
                )
            })
            .collect();
        let dir = |c| d.join("overlay").join(id(c)).join("diff");
        assert_eq!(
            got,
            [
                (2, Some("sha256:33"), Some("RUN two"), dir('t')),
                (1, Some("sha256:22"), Some("RUN one"), dir('m')),
                (0, Some("sha256:11"), Some("ADD base"), dir('b')),
            ]
        );
        assert_eq!(l.upper, Some(dir('c')));
        assert_eq!(l.image_id, Some(format!("sha256:{image_id}")));
        assert_eq!(container_ids(&d), [id('9')]);
        // Another runtime's container: not ours to answer.
        assert!(fetch(&d, &id('8')).unwrap().is_none());
        assert!(fetch(&d, "../../etc").unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_config_not_matching_its_digest_or_a_symlinked_one_gives_no_instructions() {
        let hist = json!([{"created_by": "A"}, {"created_by": "B"}, {"created_by": "C"}]);
        let (d, image_id) = store("forged", hist);
        let key = big_data_file_name(&format!("sha256:{image_id}"));
        let cfg = d.join("overlay-images").join(&image_id).join(&key);
        std::fs::write(
            &cfg,
            r#"{"history":[{"created_by":"X"},{"created_by":"Y"},{"created_by":"Z"}]}"#,
        )
        .unwrap();
        let l = fetch(&d, &id('9')).unwrap().unwrap();
        assert!(l
            .lowers
            .iter()
            .all(|x| x.layer.as_ref().unwrap().created_by.is_none()));
        // A symlink planted in place of the config is not followed.
        let real = d.join("real-config");
        std::fs::rename(&cfg, &real).unwrap();
        std::os::unix::fs::symlink(&real, &cfg).unwrap();
        let l = fetch(&d, &id('9')).unwrap().unwrap();
        assert!(l
            .lowers
            .iter()
            .all(|x| x.layer.as_ref().unwrap().created_by.is_none()));
        // Nor one in place of an index: an error, not a read.
        let layers = d.join("overlay-layers/layers.json");
        std::fs::rename(&layers, d.join("real-layers")).unwrap();
        std::os::unix::fs::symlink(d.join("real-layers"), &layers).unwrap();
        assert!(fetch(&d, &id('9')).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_parent_cycle_or_a_climbing_layer_id_is_refused() {
        let (d, _) = store("cycle", json!([]));
        let (a, b) = (id('t'), id('m'));
        std::fs::write(
            d.join("overlay-layers/layers.json"),
            json!([{"id": a, "parent": b}, {"id": b, "parent": a}]).to_string(),
        )
        .unwrap();
        assert!(fetch(&d, &id('9')).is_err());
        std::fs::write(
            d.join("overlay-layers/layers.json"),
            json!([{"id": a, "parent": "../../etc"}, {"id": "../../etc"}]).to_string(),
        )
        .unwrap();
        assert!(fetch(&d, &id('9')).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
