//! `cargo xtask demo`: the main job on a machine without Docker or a
//! tracing kernel. Boots the `--docker` guest, builds a multi-layer image
//! offline, runs a container named `nginx` beside a bystander, and shows
//! `cowtrace --container nginx` live (the guest script is `demo.sh`). The
//! latency JSON and the NDJSON events land in the host's `--out`
//! directory, and the last lines name the `cowtrace report` command that
//! turns them into a page of plots.

use crate::build;
use crate::guest::{self, Copy, GuestKind, GuestSpec, Init};
use crate::kernel::Series;
use crate::setup::Tooling;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;

const SCRIPT: &str = include_str!("demo.sh");

/// Where the demo script is in a Docker guest (the demo's and the Docker
/// tests', which find it through `$COWTRACE_DEMO`).
pub const GUEST_SCRIPT: &str = "/usr/local/bin/cowtrace-demo";

/// The demo script, written to the cache, as a copy into the guest. The
/// cache is shared by every checkout on the machine: the file is named by
/// its content, so a run of another checkout's (other) script cannot
/// replace this one's before its guest copies it.
pub fn script_copy(tooling: &Tooling) -> Result<Copy> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SCRIPT.hash(&mut h);
    let script = tooling.cache.join(format!("demo-{:016x}.sh", h.finish()));
    std::fs::write(&script, SCRIPT)?;
    Ok(Copy {
        host: script,
        guest: GUEST_SCRIPT.into(),
    })
}

pub fn run(
    tooling: &Tooling,
    kernel: Series,
    init: Init,
    out: &Path,
    improved: bool,
) -> Result<i32> {
    let agent = build::agent(tooling)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let spec = GuestSpec {
        kernel,
        kind: GuestKind::Docker(init),
        copies: vec![script_copy(tooling)?],
        out: Some(out.to_path_buf()),
        timeout: Duration::from_secs(900),
        command: vec![
            "sh".into(),
            GUEST_SCRIPT.into(),
            if improved { "improved" } else { "plain" }.into(),
        ],
        agent: Some(agent.clone()),
        cgroups: Default::default(),
        clock: Default::default(),
    };
    let rc = guest::run(&spec)?;
    if rc != 0 {
        return Ok(rc);
    }
    let json = out.join("cowtrace.json");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("the demo wrote no {}", json.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text).context("report is not JSON")?;
    let Some(nginx) = report["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "nginx"))
    else {
        bail!("no nginx in {}", json.display());
    };
    println!();
    println!("latency JSON: {}", json.display());
    println!(
        "nginx: {} copy-ups ({} bytes), {} writes, {} whiteouts, {} opaque dirs",
        nginx["copy_up"]["count"],
        nginx["copy_up"]["bytes"],
        nginx["writes"]["count"],
        nginx["whiteouts"]["count"],
        nginx["opaque_dirs"]["count"]
    );
    println!(
        "nginx: copy-up p50 {} ns vs write p50 {} ns: copy-up/write p50 ratio {}",
        nginx["copy_up"]["latency_ns"]["p50"],
        nginx["writes"]["latency_ns"]["p50"],
        nginx["copy_up_vs_write"]["p50_ratio"]
    );
    // The image layer behind most of the copy-up bytes, and what to change
    // (the agent's own summary above has the whole per-layer table).
    let layers = nginx["layers"].as_array().cloned().unwrap_or_default();
    if let Some(top) = layers
        .iter()
        .max_by_key(|l| l["copy_up"]["bytes"].as_u64().unwrap_or(0))
    {
        let by: String = top["created_by"]
            .as_str()
            .unwrap_or("(instruction unknown)")
            .chars()
            .take(90)
            .collect();
        println!(
            "nginx: most copy-up bytes ({}) came from image layer {}: {}",
            top["copy_up"]["bytes"], top["index"], by
        );
    }
    for a in nginx["advice"].as_array().into_iter().flatten() {
        println!(
            "advice [{}]: {}",
            a["rule"].as_str().unwrap_or("?"),
            a["what"].as_str().unwrap_or("?")
        );
    }
    // Relative to the workspace when it is inside (it is, unless
    // CARGO_TARGET_DIR points elsewhere).
    let agent = agent
        .strip_prefix(crate::util::workspace_root())
        .map(|p| p.to_path_buf())
        .unwrap_or(agent);
    let events = out.join("events.ndjson");
    println!("plots of this run (no root needed):");
    println!(
        "  {} report {} --events {} --html {}",
        agent.display(),
        json.display(),
        events.display(),
        out.join("report.html").display()
    );
    if !improved {
        println!("compare with the improved image (cargo xtask demo --improved --out target/demo-improved):");
        println!(
            "  {} report {} --compare target/demo-improved/cowtrace.json --html {}",
            agent.display(),
            json.display(),
            out.join("compare.html").display()
        );
    }
    Ok(0)
}
