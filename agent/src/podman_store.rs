//! A rootful podman container described from podman's storage, for when no
//! podman API service runs (podman has no daemon: its Docker-compatible
//! socket exists only under `podman system service`). containers/storage
//! keeps every container in `overlay-containers/containers.json` under the
//! storage root: its id, names, and a `metadata` string in which libpod
//! records the image name; the runtime's pid file is under the run root
//! (`overlay-containers/<id>/userdata/pidfile`).
//!
//! Read as root beside running containers, with the rules of
//! [`crate::bundle`]: no symlink followed anywhere on the path, regular
//! files only, bounded sizes, the id checked before it names a path.

use crate::bundle::{is_identifier, read_bounded};
use crate::runtime::{ContainerInfo, Source};
use serde::Deserialize;
use std::path::Path;

/// Podman's (containers/storage's) default rootful roots.
const STORAGE_ROOT: &str = "/var/lib/containers/storage";
const RUN_ROOT: &str = "/run/containers/storage";

#[derive(Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// Its own read-write layer (whose `diff` is the overlay's upper).
    #[serde(default)]
    layer: String,
    /// libpod's own record, itself JSON.
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct LibpodMetadata {
    #[serde(rename = "image-name", default)]
    image_name: String,
    #[serde(default)]
    name: String,
}

/// Describes container `id` from the storage under `storage` and `run`.
pub fn describe_in(storage: &Path, run: &Path, id: &str) -> anyhow::Result<Option<ContainerInfo>> {
    if !is_identifier(id) {
        return Ok(None);
    }
    let Some(c) = stored(storage, |c| c.id == id)? else {
        return Ok(None);
    };
    let pid_file = run
        .join("overlay-containers")
        .join(id)
        .join("userdata/pidfile");
    let pid = read_pid(&pid_file);
    Ok(Some(info(c, pid, Source::Files)))
}

/// The container in the storage under `storage` whose own read-write
/// layer is `layer` (the `<layer>/diff` its overlay has as upper), as
/// [`Source::UserFiles`]: a rootless store is its user's, and so is what
/// it says. No pid: the caller finds the container's init.
pub fn describe_by_layer(storage: &Path, layer: &str) -> anyhow::Result<Option<ContainerInfo>> {
    if !is_identifier(layer) {
        return Ok(None);
    }
    let Some(c) = stored(storage, |c| c.layer == layer)? else {
        return Ok(None);
    };
    if !is_identifier(&c.id) {
        return Ok(None);
    }
    Ok(Some(info(c, None, Source::UserFiles)))
}

/// The first container of `overlay-containers/containers.json` under
/// `storage` that `wanted` picks.
fn stored(
    storage: &Path,
    wanted: impl Fn(&StoredContainer) -> bool,
) -> anyhow::Result<Option<StoredContainer>> {
    let Some(list) = read_bounded(&storage.join("overlay-containers/containers.json"))? else {
        return Ok(None);
    };
    let list: Vec<StoredContainer> = serde_json::from_slice(&list)?;
    Ok(list.into_iter().find(|c| wanted(c)))
}

fn info(c: StoredContainer, pid: Option<u32>, source: Source) -> ContainerInfo {
    let meta: LibpodMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
    let name = if meta.name.is_empty() {
        c.names.into_iter().next().unwrap_or_default()
    } else {
        meta.name
    };
    ContainerInfo {
        id: c.id,
        name,
        image: meta.image_name,
        pid,
        source,
        ..ContainerInfo::default()
    }
}

/// A positive pid from a pid file (bounded, no symlink followed).
pub fn read_pid(path: &Path) -> Option<u32> {
    read_bounded(path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u32>().ok())
        .filter(|&p| p > 0)
}

/// Describes container `id` from podman's default rootful storage.
pub fn describe(id: &str) -> Option<ContainerInfo> {
    describe_in(Path::new(STORAGE_ROOT), Path::new(RUN_ROOT), id)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn name_image_and_pid_come_from_podmans_storage() {
        let d = std::env::temp_dir().join(format!("cowtrace-podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (storage, run) = (d.join("storage"), d.join("run"));
        std::fs::create_dir_all(storage.join("overlay-containers")).unwrap();
        std::fs::create_dir_all(run.join("overlay-containers").join(ID).join("userdata")).unwrap();
        let meta = r#"{"image-name":"localhost/busybox:latest","image-id":"x","name":"pm","created-at":1}"#;
        let list = serde_json::json!([
            {"id": "f".repeat(64), "names": ["other"], "image": "y", "layer": "z", "metadata": "{}"},
            {"id": ID, "names": ["pm"], "image": "x", "layer": "l", "metadata": meta},
        ]);
        std::fs::write(
            storage.join("overlay-containers/containers.json"),
            list.to_string(),
        )
        .unwrap();
        std::fs::write(
            run.join("overlay-containers")
                .join(ID)
                .join("userdata/pidfile"),
            "77\n",
        )
        .unwrap();
        let c = describe_in(&storage, &run, ID).unwrap().unwrap();
        assert_eq!(
            (c.name.as_str(), c.image.as_str(), c.pid),
            ("pm", "localhost/busybox:latest", Some(77))
        );
        assert_eq!(describe_in(&storage, &run, &"e".repeat(64)).unwrap(), None);
        assert_eq!(describe_in(&storage, &run, "../../etc").unwrap(), None);
        // Found by its read-write layer (a rootless store): no pid.
        let c = describe_by_layer(&storage, "l").unwrap().unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str(), c.pid), (ID, "pm", None));
        assert_eq!(c.source, Source::UserFiles);
        assert_eq!(describe_by_layer(&storage, "zz").unwrap(), None);
        assert_eq!(describe_by_layer(&storage, "../l").unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
