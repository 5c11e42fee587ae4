//! Building what goes into a guest: the fully static `cowtrace` agent and
//! the static test executables of the `cowtrace-tests` crate.
//!
//! Both build for `x86_64-unknown-linux-gnu` with `+crt-static`, so they run
//! on any guest kernel/rootfs, with bpf-linker on PATH for the eBPF object.
//! Never run these while a guest is running (TCG guests need the CPUs).

use crate::setup::Tooling;
use crate::util::{self, describe};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
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

/// One `compiler-artifact` message of cargo's JSON output.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub package_id: String,
    pub target_name: String,
    pub kinds: Vec<String>,
    pub test: bool,
    pub executable: Option<PathBuf>,
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
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        artifacts.push(Artifact {
            package_id: v["package_id"].as_str().unwrap_or_default().to_string(),
            target_name: v["target"]["name"].as_str().unwrap_or_default().to_string(),
            kinds: v["target"]["kind"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            test: v["profile"]["test"].as_bool().unwrap_or(false),
            executable: v["executable"].as_str().map(PathBuf::from),
        });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(artifacts)
}

/// Build the static agent; returns `target/x86_64-unknown-linux-gnu/release/cowtrace`.
pub fn agent(tooling: &Tooling) -> Result<PathBuf> {
    let mut cmd = cargo(tooling);
    cmd.args(["build", "--release", "-p", "cowtrace", "--target", TARGET]);
    let artifacts = run_json(cmd)?;
    artifacts
        .into_iter()
        .filter(|a| a.target_name == "cowtrace" && a.kinds.iter().any(|k| k == "bin"))
        .find_map(|a| a.executable)
        .context("cargo built no `cowtrace` executable")
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
    let artifacts = run_json(cmd)?;
    Ok(artifacts
        .into_iter()
        .filter(|a| a.test)
        .filter_map(|a| Some((a.target_name, a.executable?)))
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
    run_json(cmd)?
        .into_iter()
        .filter(|a| a.target_name == "cowtrace-bench")
        .find_map(|a| a.executable)
        .context("cargo built no `cowtrace-bench` executable")
}
