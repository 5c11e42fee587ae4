//! `cargo xtask image`: the agent's container image (deploy/Dockerfile
//! around the static `cowtrace`), built by a real Docker engine in the
//! Docker guest and saved as a docker-archive tarball that `docker load`,
//! `podman load` or `ctr images import` take.

use crate::build;
use crate::guest::{self, Copy, GuestKind, GuestSpec, Init};
use crate::kernel::Series;
use crate::setup::Tooling;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;

/// The image's name and tag.
pub const IMAGE: &str = concat!("cowtrace/agent:", env!("CARGO_PKG_VERSION"));

pub fn run(tooling: &Tooling, out: &Path) -> Result<i32> {
    let agent = build::agent(tooling)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let dockerfile = crate::util::workspace_root().join("deploy/Dockerfile");
    let script = format!(
        "set -e\n\
         mkdir -p /tmp/agent-img\n\
         cp /etc/cowtrace/Dockerfile /tmp/agent-img/Dockerfile\n\
         cp /usr/local/bin/cowtrace /tmp/agent-img/cowtrace\n\
         docker build -q --network none -t {IMAGE} -t cowtrace/agent:latest /tmp/agent-img\n\
         docker save -o /out/cowtrace-agent.tar {IMAGE} cowtrace/agent:latest\n"
    );
    let spec = GuestSpec {
        kernel: Series::V6_1,
        kind: GuestKind::Docker(Init::Shell),
        copies: vec![Copy {
            host: dockerfile,
            guest: "/etc/cowtrace/Dockerfile".into(),
        }],
        out: Some(out.to_path_buf()),
        timeout: Duration::from_secs(900),
        command: vec!["sh".into(), "-c".into(), script],
        agent: Some(agent),
        cgroups: Default::default(),
        clock: Default::default(),
    };
    let rc = guest::run(&spec)?;
    if rc != 0 {
        return Ok(rc);
    }
    let tar = out.join("cowtrace-agent.tar");
    if !tar.exists() {
        bail!("the guest saved no {}", tar.display());
    }
    println!(
        "{IMAGE}: {} (docker load -i {})",
        tar.display(),
        tar.display()
    );
    Ok(0)
}
