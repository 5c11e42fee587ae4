//! A container's Kubernetes names (pod, namespace, container), from the
//! metadata a CRI runtime puts on it: containerd's CRI plugin writes the
//! `io.kubernetes.cri.*` annotations into the OCI spec and the
//! `io.kubernetes.pod.*` / `io.kubernetes.container.name` labels on the
//! container (CRI-O and cri-dockerd use the label keys, as annotations or
//! labels). Either set is accepted, annotations first.
//!
//! The values come from whoever created the pod: each is refused unless it
//! is short and printable, so nothing a pod spec says can break a line of
//! the live view or grow memory.

use serde::Serialize;
use std::collections::BTreeMap;

/// Longest name kept (Kubernetes names are at most 253 bytes).
const MAX_NAME: usize = 253;

/// The pod a container belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
}

/// What the CRI metadata says of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeNames {
    pub pod: Pod,
    /// The container's name in the pod spec.
    pub container: Option<String>,
    /// The image as the pod spec names it (containerd's annotation).
    pub image: Option<String>,
}

const POD: [&str; 2] = ["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
const NAMESPACE: [&str; 2] = [
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
];
const CONTAINER: [&str; 2] = [
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
];
const IMAGE: [&str; 1] = ["io.kubernetes.cri.image-name"];

fn first(map: &BTreeMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| map.get(*k))
        .find(|v| acceptable(v))
        .cloned()
}

fn acceptable(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_NAME && !v.chars().any(char::is_control)
}

/// The Kubernetes names in a container's labels or annotations; None
/// unless both pod and namespace are there (a container of no pod).
pub fn names(map: &BTreeMap<String, String>) -> Option<KubeNames> {
    Some(KubeNames {
        pod: Pod {
            name: first(map, &POD)?,
            namespace: first(map, &NAMESPACE)?,
        },
        container: first(map, &CONTAINER),
        image: first(map, &IMAGE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_annotations_and_kubelet_labels_both_name_the_pod() {
        let a = map(&[
            ("io.kubernetes.cri.sandbox-name", "web"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.container-name", "app"),
            ("io.kubernetes.cri.image-name", "nginx:1"),
        ]);
        let l = map(&[
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.container.name", "app"),
        ]);
        let (a, l) = (names(&a).unwrap(), names(&l).unwrap());
        assert_eq!(a.pod, l.pod);
        assert_eq!(a.container.as_deref(), Some("app"));
        assert_eq!(l.container.as_deref(), Some("app"));
        assert_eq!(a.image.as_deref(), Some("nginx:1"));
        assert_eq!(l.image, None);
    }

    #[test]
    fn no_pod_without_both_names_and_hostile_values_are_refused() {
        assert_eq!(names(&map(&[("io.kubernetes.pod.name", "web")])), None);
        let evil = map(&[
            ("io.kubernetes.pod.name", "we\x1b[2Jb"),
            ("io.kubernetes.pod.namespace", "shop"),
        ]);
        assert_eq!(names(&evil), None);
        let long = "x".repeat(MAX_NAME + 1);
        let long = map(&[
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.container.name", long.as_str()),
        ]);
        assert_eq!(names(&long).unwrap().container, None);
    }
}
