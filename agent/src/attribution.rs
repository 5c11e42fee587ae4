//! Who caused an event: the thread's cgroup id mapped to a container (by
//! the runtimes' cgroup naming), named through the Docker Engine API when
//! its socket is there (podman serves the same API). Anything else is
//! `host`.
//!
//! Whose filesystem it happened in: the overlay device of the event matched
//! against the root mount of each container's init process (its
//! /proc/PID/mountinfo), which works with or without the Docker API's
//! GraphDriver data (Docker 29's containerd image store has none).

use crate::cgroup::{container_id_from_cgroup_path, CgroupIndex};
use crate::stats::Owner;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A running or exited container as the runtime describes it.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub pid: Option<u32>,
    /// The container's root overlay device (kernel encoding).
    pub root_dev: Option<u32>,
}

/// The overlay device of the root mount `pid` sees.
pub fn root_overlay_dev(pid: u32) -> Option<u32> {
    crate::mountinfo::read_mountinfo(&pid.to_string())
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.is_overlay() && m.mount_point == "/")
        .map(|m| m.kernel_dev())
}

/// Minimal Docker Engine API client over its unix socket (HTTP/1.0, so the
/// answer is one plain body).
pub struct DockerApi {
    socket: PathBuf,
}

impl DockerApi {
    /// The first socket that exists: `$DOCKER_HOST` (unix://), Docker's,
    /// then podman's rootful socket.
    pub fn discover() -> Option<Self> {
        let from_env = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from));
        from_env
            .into_iter()
            .chain(["/var/run/docker.sock", "/run/podman/podman.sock"].map(PathBuf::from))
            .find(|p| p.exists())
            .map(|socket| Self { socket })
    }

    fn get(&self, path: &str) -> std::io::Result<Value> {
        // Once the run is ending, no new request: the end must not wait
        // for a runtime (a request in flight is cut by the signal).
        if crate::shutdown::requested() {
            return Err(std::io::Error::other("cowtrace is ending"));
        }
        let mut s = UnixStream::connect(&self.socket)?;
        let _in_flight = crate::shutdown::api_request(std::os::fd::AsRawFd::as_raw_fd(&s));
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut buf = Vec::new();
        // A runtime answer is small; a hostile or broken one must not grow
        // without bound.
        (&mut s).take(64 << 20).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.starts_with("HTTP/1.")
            || !head.split(' ').nth(1).is_some_and(|c| c.starts_with('2'))
        {
            return Err(std::io::Error::other(format!(
                "docker API {path}: {}",
                head.lines().next().unwrap_or("")
            )));
        }
        serde_json::from_str(body).map_err(std::io::Error::other)
    }

    /// Running containers with name, image and init pid.
    pub fn containers(&self) -> std::io::Result<Vec<ContainerInfo>> {
        let list = self.get("/containers/json")?;
        let mut out = Vec::new();
        for c in list.as_array().into_iter().flatten() {
            let id = c["Id"].as_str().unwrap_or_default().to_string();
            let name = c["Names"][0]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let image = c["Image"].as_str().unwrap_or_default().to_string();
            let pid = self
                .get(&format!("/containers/{id}/json"))
                .ok()
                .and_then(|d| d["State"]["Pid"].as_u64())
                .map(|p| p as u32);
            let root_dev = pid.and_then(root_overlay_dev);
            out.push(ContainerInfo {
                id,
                name,
                image,
                pid,
                root_dev,
            });
        }
        Ok(out)
    }
}

/// Maps cgroup ids to owners, caching answers; learns new containers.
pub struct ContainerResolver {
    /// `None` without a cgroup v2 hierarchy: everything is then `host`.
    cgroups: Option<CgroupIndex>,
    docker: Option<DockerApi>,
    known: HashMap<String, ContainerInfo>,
    by_cgroup: HashMap<u64, Owner>,
    /// Devices no container had at the last look (host overlays).
    unknown_devs: std::collections::HashSet<u32>,
    last_refresh: Option<Instant>,
    /// Set at the end of a run: answers come from what is known already.
    stopped: bool,
    pub warned: Option<String>,
}

impl ContainerResolver {
    pub fn new() -> Self {
        let docker = DockerApi::discover();
        let warned = docker.is_none().then(|| {
            "no Docker/podman API socket found: containers are named by their id".to_string()
        });
        let mut r = Self {
            cgroups: crate::cgroup::default_root().and_then(|r| CgroupIndex::scan(r).ok()),
            docker,
            known: HashMap::new(),
            by_cgroup: HashMap::new(),
            unknown_devs: Default::default(),
            last_refresh: None,
            stopped: false,
            warned,
        };
        r.refresh_containers();
        r
    }

    /// No more runtime requests (the end of a run must not wait on one).
    pub fn stop_refreshing(&mut self) {
        self.stopped = true;
    }

    /// Asks the runtime again (at most every 500 ms).
    fn refresh_containers(&mut self) {
        if self.stopped {
            return;
        }
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        if crate::shutdown::requested() {
            return;
        }
        let Some(api) = &self.docker else { return };
        match api.containers() {
            Ok(list) => {
                for c in list {
                    if let Some(dev) = c.root_dev {
                        self.unknown_devs.remove(&dev);
                    }
                    self.known.insert(c.id.clone(), c);
                }
            }
            Err(e) if self.warned.is_none() => {
                self.warned = Some(format!(
                    "Docker API unavailable ({e}): containers are named by their id"
                ));
            }
            Err(_) => {}
        }
    }

    pub fn containers(&mut self) -> Vec<ContainerInfo> {
        self.refresh_containers();
        self.known.values().cloned().collect()
    }

    /// Finds containers by name or id prefix.
    pub fn find(&mut self, name_or_id: &str) -> Option<ContainerInfo> {
        self.last_refresh = None;
        self.refresh_containers();
        let wanted = name_or_id.trim_start_matches('/');
        self.known
            .values()
            .find(|c| c.name == wanted)
            .or_else(|| {
                let mut m = self
                    .known
                    .values()
                    .filter(|c| wanted.len() >= 4 && c.id.starts_with(wanted));
                let first = m.next();
                if m.next().is_some() {
                    None
                } else {
                    first
                }
            })
            .cloned()
    }

    pub fn owner_of_cgroup(&mut self, cgroup_id: u64) -> Owner {
        if let Some(o) = self.by_cgroup.get(&cgroup_id) {
            return o.clone();
        }
        let Some(path) = self
            .cgroups
            .as_mut()
            .and_then(|c| c.lookup(cgroup_id).map(str::to_string))
        else {
            return Owner::host();
        };
        let Some((_runtime, id)) = container_id_from_cgroup_path(&path) else {
            let owner = Owner::host();
            self.by_cgroup.insert(cgroup_id, owner.clone());
            return owner;
        };
        if !self.known.contains_key(&id) {
            self.refresh_containers();
        }
        let owner = match self.known.get(&id) {
            Some(c) => Owner {
                id: c.id.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
            },
            None => Owner {
                id: id.clone(),
                name: id.chars().take(12).collect(),
                image: String::new(),
            },
        };
        // Cache only named answers, so a container the runtime reports a
        // moment later still gets its name.
        if self.known.contains_key(&id) || self.docker.is_none() {
            self.by_cgroup.insert(cgroup_id, owner.clone());
        }
        owner
    }
}

impl ContainerResolver {
    /// The container whose root filesystem is overlay device `dev`.
    pub fn owner_of_dev(&mut self, dev: u32) -> Option<Owner> {
        let find = |known: &HashMap<String, ContainerInfo>| {
            known
                .values()
                .find(|c| c.root_dev == Some(dev))
                .map(|c| Owner {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                })
        };
        if let Some(o) = find(&self.known) {
            return Some(o);
        }
        if self.unknown_devs.contains(&dev) {
            return None;
        }
        self.refresh_containers();
        let found = find(&self.known);
        if found.is_none() {
            self.unknown_devs.insert(dev);
        }
        found
    }
}

impl Default for ContainerResolver {
    fn default() -> Self {
        Self::new()
    }
}
