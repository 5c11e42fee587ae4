//! A containerd container described from its OCI bundle, for containers the
//! Docker Engine API does not know (started by the kubelet through the CRI
//! plugin, or with `ctr`): containerd's runc shim keeps the bundle of a
//! running task at `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`
//! with the spec (`config.json`, whose `annotations` carry the CRI's pod,
//! namespace and container names) and the init pid (`init.pid`). Reading
//! two files needs no gRPC client and no containerd API version.
//!
//! The agent reads them as root while containers run beside it: the id is
//! checked to be a containerd identifier (no `/`, no `..`), every path is
//! opened with `openat2(RESOLVE_NO_SYMLINKS)` so no symlink anywhere is
//! followed, non-regular files are refused (a FIFO cannot block the read:
//! `O_NONBLOCK`), and at most [`MAX_FILE`] bytes are read. Callers run this
//! off the event path (attribution's worker, on a blocking thread).

use crate::runtime::{ContainerInfo, Source};
use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// containerd's task state directories: the host's, and the host's `/run`
/// as the DaemonSet mounts it into the agent's container.
const TASK_DIRS: [&str; 2] = [
    "/run/containerd/io.containerd.runtime.v2.task",
    "/host/run/containerd/io.containerd.runtime.v2.task",
];
/// Largest bundle file read (a spec is a few tens of KiB).
pub const MAX_FILE: u64 = 1 << 20;
/// At most this many containerd namespaces are looked in.
const MAX_NAMESPACES: usize = 64;

/// containerd's identifier rule (namespaces and container ids): letters,
/// digits, and `.`, `_`, `-` between them, at most 76 characters.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 76
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !s.contains("..")
}

/// At most [`MAX_FILE`] bytes of a regular file, no symlink followed on
/// the way; `Ok(None)` when it does not exist.
pub(crate) fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    read_bounded_up_to(path, MAX_FILE)
}

/// [`read_bounded`] with another bound (a store's index of every layer
/// can be larger than one bundle file).
pub(crate) fn read_bounded_up_to(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = match rustix::fs::openat2(rustix::fs::CWD, path, flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(std::io::Error::from(e)).context(path.display().to_string()),
    };
    let st = rustix::fs::fstat(&fd).with_context(|| path.display().to_string())?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        bail!("{}: not a regular file", path.display());
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| path.display().to_string())?;
    if buf.len() as u64 > max {
        bail!("{}: larger than {max} bytes", path.display());
    }
    Ok(Some(buf))
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The bundle directory of task `id` under `task_dir`, in whichever
/// containerd namespace has it.
fn find_bundle(task_dir: &Path, id: &str) -> Option<PathBuf> {
    let namespaces = std::fs::read_dir(task_dir).ok()?;
    namespaces
        .take(MAX_NAMESPACES)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|ns| is_identifier(ns))
        .map(|ns| task_dir.join(ns).join(id))
        .find(|b| b.join("config.json").exists())
}

/// Describes container `id` from its bundle under `task_dir`: its
/// Kubernetes names when the spec's annotations carry them (the name is
/// then the pod spec's container name), and its init pid.
pub fn describe_in(task_dir: &Path, id: &str) -> Result<Option<ContainerInfo>> {
    if !is_identifier(id) {
        return Ok(None);
    }
    let Some(bundle) = find_bundle(task_dir, id) else {
        return Ok(None);
    };
    let Some(spec) = read_bounded(&bundle.join("config.json"))? else {
        return Ok(None);
    };
    let spec: Spec = serde_json::from_slice(&spec)
        .with_context(|| format!("{}/config.json", bundle.display()))?;
    let pid = read_bounded(&bundle.join("init.pid"))?
        .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u32>().ok())
        .filter(|&p| p > 0);
    let kube = crate::kube::names(&spec.annotations);
    Ok(Some(ContainerInfo {
        id: id.to_string(),
        name: kube
            .as_ref()
            .and_then(|k| k.container.clone())
            .unwrap_or_default(),
        image: kube
            .as_ref()
            .and_then(|k| k.image.clone())
            .unwrap_or_default(),
        pid,
        pod: kube.map(|k| k.pod),
        labels: spec.annotations,
        source: Source::Files,
    }))
}

/// The ids of the tasks containerd runs (in every namespace), at most
/// `max`.
pub fn task_ids(max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for d in TASK_DIRS.iter().map(Path::new).filter(|d| d.is_dir()) {
        let Ok(namespaces) = std::fs::read_dir(d) else {
            continue;
        };
        for ns in namespaces.take(MAX_NAMESPACES).filter_map(|e| e.ok()) {
            let Ok(tasks) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            out.extend(
                tasks
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|id| is_identifier(id))
                    .take(max.saturating_sub(out.len())),
            );
        }
    }
    out
}

/// Describes container `id` from containerd's bundles, wherever they are.
pub fn describe(id: &str) -> Option<ContainerInfo> {
    TASK_DIRS
        .iter()
        .map(Path::new)
        .filter(|d| d.is_dir())
        .find_map(|d| describe_in(d, id).ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn task_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cowtrace-bundle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_cri_bundle_names_pod_namespace_and_container() {
        let d = task_dir("cri");
        let b = d.join("k8s.io").join(ID);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{
                "io.kubernetes.cri.sandbox-name":"web",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.container-name":"app"}}"#,
        )
        .unwrap();
        std::fs::write(b.join("init.pid"), "4242").unwrap();
        let c = describe_in(&d, ID).unwrap().unwrap();
        assert_eq!(c.name, "app");
        assert_eq!(c.pid, Some(4242));
        let pod = c.pod.unwrap();
        assert_eq!((pod.name.as_str(), pod.namespace.as_str()), ("web", "shop"));
        assert_eq!(describe_in(&d, &ID.replace('0', "f")).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_fifos_large_files_and_bad_ids_are_refused() {
        let d = task_dir("hostile");
        let b = d.join("default").join(ID);
        std::fs::create_dir_all(&b).unwrap();
        let secret = d.join("secret.json");
        std::fs::write(&secret, r#"{"annotations":{"a":"b"}}"#).unwrap();
        symlink(&secret, b.join("config.json")).unwrap();
        assert!(describe_in(&d, ID).is_err(), "followed a symlink");
        std::fs::remove_file(b.join("config.json")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            b.join("config.json"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(describe_in(&d, ID).is_err(), "read a FIFO");
        std::fs::remove_file(b.join("config.json")).unwrap();
        std::fs::write(b.join("config.json"), vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(describe_in(&d, ID).is_err(), "read past the bound");
        // A symlinked directory on the way is refused as well.
        std::fs::remove_dir_all(d.join("default")).unwrap();
        let real = task_dir("outside");
        std::fs::create_dir_all(real.join(ID)).unwrap();
        std::fs::write(real.join(ID).join("config.json"), "{}").unwrap();
        symlink(&real, d.join("linked")).unwrap();
        assert!(
            describe_in(&d, ID).is_err(),
            "followed a symlinked namespace"
        );
        std::fs::remove_dir_all(&real).unwrap();
        for bad in ["../x", "a/b", "", ".hidden", "a..b"] {
            assert_eq!(describe_in(&d, bad).unwrap(), None, "{bad}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
