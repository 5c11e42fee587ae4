//! `cargo xtask soak`: cowtrace left running in a Docker guest while many
//! real containers come and go, each copying up paths of its own
//! (`tests/src/bin/cowtrace-soak.rs` does the work in the guest). It ends
//! with the agent's peak RSS and CPU time, and fails if a container's
//! totals are not exact or the peak RSS is over the 40 MiB target. Not
//! part of `cargo xtask test`: it takes minutes, not seconds.

use crate::build;
use crate::guest::{self, Copy, GuestKind, GuestSpec, Init};
use crate::kernel::Series;
use crate::setup::Tooling;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// What the soak does: `containers` containers, `files` distinct paths
/// copied up by each, `parallel` of them at a time.
pub struct SoakSize {
    pub containers: u32,
    pub files: u32,
    pub parallel: u32,
}

pub fn run(tooling: &Tooling, kernel: Series, out: &Path, size: &SoakSize) -> Result<i32> {
    let agent = build::agent(tooling)?;
    let runner = build::test_bin(tooling, "cowtrace-soak")?;
    std::fs::create_dir_all(out)?;
    let spec = GuestSpec {
        kernel,
        kind: GuestKind::Docker(Init::Shell),
        copies: vec![Copy {
            host: runner,
            guest: "/usr/local/bin/cowtrace-soak".into(),
        }],
        out: Some(out.to_path_buf()),
        // The full size took about 50 minutes on a 2-core machine shared
        // with three other guests (TCG); a machine twice as slow still ends.
        timeout: Duration::from_secs(6000),
        command: vec![
            "cowtrace-soak".into(),
            "/out".into(),
            size.containers.to_string(),
            size.files.to_string(),
            size.parallel.to_string(),
        ],
        agent: Some(agent),
        cgroups: Default::default(),
        clock: Default::default(),
    };
    let rc = guest::run(&spec)?;
    println!(
        "soak results: {} (agent log: {})",
        out.join("soak.json").display(),
        out.join("cowtrace.log").display()
    );
    Ok(rc)
}
