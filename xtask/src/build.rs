//! Building what goes into a guest: the fully static `cowtrace` agent and
//! the static test executables of the `cowtrace-tests` crate.
//!
//! Both build for `x86_64-unknown-linux-gnu` with `+crt-static`, so they run
//! on any guest kernel/rootfs, with bpf-linker on PATH for the eBPF object.
//! Never run these while a guest is running (TCG guests need the CPUs).

use crate::setup::Tooling;
use crate::util::{self, describe};
use anyhow::{bail, Context, Result};
use cargo_metadata::{Artifact, Message, TargetKind};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// A `cargo` command in the workspace with the static RUSTFLAGS and PATH.
pub fn cargo(tooling: &Tooling) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(util::workspace_root())
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("PATH", tooling.path_env());
    cmd
}

/// Run a cargo command with `--message-format=json-render-diagnostics`
/// (diagnostics still go to stderr) and collect its artifacts.
pub fn run_json(mut cmd: Command) -> Result<Vec<Artifact>> {
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let what = describe(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let mut artifacts = Vec::new();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for message in Message::parse_stream(stdout) {
        if let Message::CompilerArtifact(a) = message? {
            artifacts.push(a);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(artifacts)
}

/// The executable of the artifact of target `name` that `pick` accepts.
fn executable(
    artifacts: Vec<Artifact>,
    name: &str,
    pick: impl Fn(&Artifact) -> bool,
) -> Result<PathBuf> {
    artifacts
        .into_iter()
        .filter(|a| a.target.name == name && pick(a))
        .find_map(|a| a.executable)
        .map(PathBuf::from)
        .with_context(|| format!("cargo built no `{name}` executable"))
}

/// Build the static agent; returns `target/x86_64-unknown-linux-gnu/release/cowtrace`.
pub fn agent(tooling: &Tooling) -> Result<PathBuf> {
    let mut cmd = cargo(tooling);
    cmd.args(["build", "--release", "-p", "cowtrace", "--target", TARGET]);
    executable(run_json(cmd)?, "cowtrace", |a| {
        a.target.kind.contains(&TargetKind::Bin)
    })
}

/// Build the guest test executables (`cargo test -p cowtrace-tests --no-run`);
/// returns test target name -> executable.
pub fn guest_tests(tooling: &Tooling) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = cargo(tooling);
    cmd.args([
        "test",
        "-p",
        "cowtrace-tests",
        "--release",
        "--no-run",
        "--target",
        TARGET,
    ]);
    Ok(run_json(cmd)?
        .into_iter()
        .filter(|a| a.profile.test)
        .filter_map(|a| Some((a.target.name, a.executable?.into_std_path_buf())))
        .collect())
}

/// Build the static guest benchmark runner (`cowtrace-bench`).
pub fn bench_runner(tooling: &Tooling) -> Result<PathBuf> {
    let mut cmd = cargo(tooling);
    cmd.args([
        "build",
        "-p",
        "cowtrace-tests",
        "--bin",
        "cowtrace-bench",
        "--release",
        "--target",
        TARGET,
    ]);
    executable(run_json(cmd)?, "cowtrace-bench", |_| true)
}

/// Build a static guest runner from `tests/src/bin` (e.g. `cowtrace-soak`).
pub fn test_bin(tooling: &Tooling, name: &str) -> Result<PathBuf> {
    let mut cmd = cargo(tooling);
    cmd.args([
        "build",
        "-p",
        "cowtrace-tests",
        "--bin",
        name,
        "--release",
        "--target",
        TARGET,
    ]);
    executable(run_json(cmd)?, name, |_| true)
}
