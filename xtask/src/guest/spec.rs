//! What to run in a guest, and where: the harness's input types.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Which guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A busybox initramfs with overlay.ko: fast, for kernel tests.
    Small,
    /// A Debian rootfs on a virtio disk with a running Docker engine,
    /// started by this init.
    Docker(Init),
}

impl GuestKind {
    pub fn is_docker(self) -> bool {
        matches!(self, GuestKind::Docker(_))
    }
}

impl std::fmt::Display for GuestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestKind::Small => f.write_str("small"),
            GuestKind::Docker(Init::Shell) => f.write_str("docker"),
            GuestKind::Docker(init) => write!(f, "docker ({init})"),
        }
    }
}

/// PID 1 of a Docker guest, and so who starts the engine and makes the
/// containers' cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Init {
    /// A shell script starts containerd and dockerd itself; Docker's
    /// cgroupfs driver puts containers at `/docker/<id>`.
    Shell,
    /// systemd boots the rootfs and starts containerd and dockerd as its
    /// units; Docker's systemd driver has systemd create
    /// `system.slice/docker-<id>.scope` over D-Bus, as on most real hosts.
    Systemd,
}

impl Init {
    pub const ALL: [Init; 2] = [Init::Shell, Init::Systemd];
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Init::Shell => "shell",
            Init::Systemd => "systemd",
        })
    }
}

impl std::str::FromStr for Init {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shell" => Ok(Init::Shell),
            "systemd" => Ok(Init::Systemd),
            _ => bail!("unknown init {s:?}: expected shell or systemd"),
        }
    }
}

/// Which cgroup hierarchies a shell init mounts: cgroup2 (as every host
/// of today), cgroup v1's (as older hosts, where the kernel's cgroup ids
/// name no container), or both (systemd's hybrid layout). A run's
/// parameter: the cached disk is the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Cgroups {
    #[default]
    V2,
    V1,
    /// v1 hierarchies and cgroup2 at /sys/fs/cgroup/unified (systemd's
    /// hybrid layout).
    Hybrid,
}

impl std::fmt::Display for Cgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cgroups::V2 => "v2",
            Cgroups::V1 => "v1",
            Cgroups::Hybrid => "hybrid",
        })
    }
}

impl std::str::FromStr for Cgroups {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "v2" => Ok(Cgroups::V2),
            "v1" => Ok(Cgroups::V1),
            "hybrid" => Ok(Cgroups::Hybrid),
            _ => bail!("unknown cgroup layout {s:?}: expected v2, v1 or hybrid"),
        }
    }
}

/// A host file or directory to put into the guest.
#[derive(Debug, Clone)]
pub struct Copy {
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
}

impl std::str::FromStr for Copy {
    type Err = anyhow::Error;
    /// `HOST_PATH:GUEST_PATH`
    fn from_str(s: &str) -> Result<Self> {
        let (h, g) = s
            .rsplit_once(':')
            .context("expected HOST_PATH:GUEST_PATH")?;
        if h.is_empty() || !g.starts_with('/') {
            bail!("expected HOST_PATH:/ABSOLUTE/GUEST_PATH, got {s:?}");
        }
        Ok(Copy {
            host: h.into(),
            guest: g.to_string(),
        })
    }
}

/// What to run where.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: crate::kernel::Series,
    pub kind: GuestKind,
    pub copies: Vec<Copy>,
    /// Receives what the command leaves in the guest's /out.
    pub out: Option<PathBuf>,
    /// For the whole boot, command and power-off.
    pub timeout: Duration,
    /// argv of the command (run as root in /root).
    pub command: Vec<String>,
    /// Installed as /usr/local/bin/cowtrace (see `build::agent`).
    pub agent: Option<PathBuf>,
    /// The shell init's cgroups (systemd mounts its own: v2 only).
    pub cgroups: Cgroups,
    pub clock: crate::guest::Clock,
}

impl GuestSpec {
    pub fn new(kernel: crate::kernel::Series, kind: GuestKind, command: Vec<String>) -> Self {
        GuestSpec {
            kernel,
            kind,
            copies: Vec::new(),
            out: None,
            timeout: Duration::from_secs(600),
            command,
            agent: None,
            cgroups: Cgroups::V2,
            clock: Default::default(),
        }
    }
}
