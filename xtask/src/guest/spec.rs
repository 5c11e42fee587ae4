//! What to run in a guest, and where: the harness's input types.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Which guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A busybox initramfs with overlay.ko: fast, for kernel tests.
    Small,
    /// A Debian rootfs on a virtio disk with a running Docker engine.
    Docker,
}

impl std::fmt::Display for GuestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestKind::Small => "small",
            GuestKind::Docker => "docker",
        })
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
        }
    }
}
