//! Container runtimes, as attribution needs them: which containers run
//! (id, name, image, init pid, labels), one container by id, and a feed of
//! lifecycle changes. Behind the [`Runtime`] trait so that attribution does
//! not care which runtime answers. [`DockerEngine`] speaks the Docker Engine
//! API (Docker's socket, or podman's compatible one) through `bollard`.
//!
//! Every request has an overall deadline ([`REQUEST_DEADLINE`]): a runtime
//! that accepts and never answers, or drips bytes, costs one deadline per
//! request, never more, and never on the event path (these calls run on
//! attribution's own thread).

use crate::kube::Pod;
use anyhow::{anyhow, Context, Result};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use bollard::{ClientVersion, Docker};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest any one runtime request may take, connect to last byte.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// A container as its runtime describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full id (64 hex for Docker, podman, containerd, CRI-O).
    pub id: String,
    pub name: String,
    pub image: String,
    /// Its init process, while it runs.
    pub pid: Option<u32>,
    /// Labels (Kubernetes' `io.kubernetes.pod.name` and friends), or a
    /// bundle's annotations.
    pub labels: BTreeMap<String, String>,
    /// Its Kubernetes pod, when its labels or annotations name one.
    pub pod: Option<Pod>,
    /// Who described it.
    pub source: Source,
}

/// Where a container's description came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// The runtime API (its list and events cover the container).
    #[default]
    Engine,
    /// The runtime's files: containerd's OCI bundle ([`crate::bundle`])
    /// or podman's storage ([`crate::podman_store`]). No list or events,
    /// so the container is seen to end when its init pid is gone.
    Files,
    /// A user's own containers-storage (rootless podman,
    /// [`crate::rootless`]): named as that user says, ended like
    /// [`Source::Files`]; its cgroup is its own only where the cgroup's
    /// name says so (without a delegated cgroup it shares its user's).
    UserFiles,
}

/// A lifecycle change the runtime reports, by container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Started or restarted: its pid, cgroup and root filesystem are new.
    Started(String),
    /// Renamed, or otherwise worth describing again.
    Updated(String),
    /// Stopped (its entry is kept for the report).
    Stopped(String),
}

/// What attribution asks of a container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// For messages, e.g. "Docker Engine API at /var/run/docker.sock".
    fn describe(&self) -> String;
    /// The running containers.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;
    /// One container by id (None: the runtime does not know it).
    fn inspect(&self, id: &str) -> impl Future<Output = Result<Option<ContainerInfo>>> + Send;
    /// Lifecycle changes as they happen; ends when the runtime goes away.
    fn changes(&self) -> BoxStream<'static, Result<Change>>;
}

/// The Docker Engine API on a unix socket: Docker's, or podman's.
pub struct DockerEngine {
    socket: PathBuf,
    client: Docker,
}

/// API version 1.41: Docker 20.10 and podman 4 both speak it; newer
/// engines accept it too.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

impl DockerEngine {
    /// The first socket that exists: `$DOCKER_HOST` (unix://), Docker's,
    /// then podman's rootful socket.
    pub fn discover() -> Option<Result<Self>> {
        let from_env = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from));
        let socket = from_env
            .into_iter()
            .chain(["/var/run/docker.sock", "/run/podman/podman.sock"].map(PathBuf::from))
            .find(|p| p.exists())?;
        Some(Self::at(&socket))
    }

    /// The API client (for the image layer lookups of [`crate::layers`]).
    pub fn client(&self) -> &Docker {
        &self.client
    }

    pub fn at(socket: &Path) -> Result<Self> {
        let path = socket
            .to_str()
            .with_context(|| format!("runtime socket {} is not UTF-8", socket.display()))?;
        let client = Docker::connect_with_unix(path, REQUEST_DEADLINE.as_secs(), &API_VERSION)
            .with_context(|| format!("runtime socket {}", socket.display()))?;
        Ok(Self {
            socket: socket.to_path_buf(),
            client,
        })
    }
}

/// `fut`, or an error once [`REQUEST_DEADLINE`] has passed.
async fn deadline<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!(
            "{what}: no answer within {} s",
            REQUEST_DEADLINE.as_secs()
        )),
    }
}

fn labels(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

/// The labels, and the pod they name (a kubelet's Docker containers).
fn described_by_labels(labels: BTreeMap<String, String>) -> ContainerInfo {
    ContainerInfo {
        pod: crate::kube::names(&labels).map(|k| k.pod),
        labels,
        ..ContainerInfo::default()
    }
}

impl Runtime for DockerEngine {
    fn describe(&self) -> String {
        format!("Docker Engine API at {}", self.socket.display())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let list = deadline("listing containers", async {
            Ok(self
                .client
                .list_containers(Some(ListContainersOptions::default()))
                .await?)
        })
        .await?;
        // The list has no pid: ask for each, a few at a time, each within
        // the deadline.
        let described = futures_util::stream::iter(list)
            .filter_map(|c| async move { c.id.clone().map(|id| (id, c)) })
            .map(|(id, c)| async move { (self.inspect(&id).await, id, c) })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::with_capacity(described.len());
        for (answer, id, c) in described {
            match answer {
                Ok(Some(info)) => out.push(info),
                // Gone between the list and the inspect.
                Ok(None) => {}
                Err(_) => out.push(ContainerInfo {
                    id,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    image: c.image.unwrap_or_default(),
                    pid: None,
                    ..described_by_labels(labels(c.labels))
                }),
            }
        }
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        let r = deadline("inspecting a container", async {
            match self
                .client
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
            {
                Ok(r) => Ok(Some(r)),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        let Some(r) = r else { return Ok(None) };
        let config = r.config.unwrap_or_default();
        let pid = r
            .state
            .and_then(|s| s.pid)
            .filter(|&p| p > 0)
            .and_then(|p| u32::try_from(p).ok());
        Ok(Some(ContainerInfo {
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            pid,
            ..described_by_labels(labels(config.labels))
        }))
    }

    fn changes(&self) -> BoxStream<'static, Result<Change>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ["start", "restart", "die", "destroy", "rename"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        self.client
            .events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .filter_map(|m| async move {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => return Some(Err(anyhow!("runtime events: {e}"))),
                };
                let id = m.actor.and_then(|a| a.id)?;
                Some(Ok(match m.action.as_deref()? {
                    "start" | "restart" => Change::Started(id),
                    "die" | "destroy" => Change::Stopped(id),
                    _ => Change::Updated(id),
                }))
            })
            .boxed()
    }
}
