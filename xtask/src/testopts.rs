//! What a test run is asked to do: where (guests of which kernel series,
//! or the running kernel), which test executables, with which arguments.

use crate::guest::Init;
use crate::kernel::Series;
use anyhow::{bail, Result};
use std::time::Duration;

/// The test executables that need a tracing kernel, and those that need
/// a Docker engine as well.
pub const KERNEL_TARGETS: &[&str] = &["cowtrace_tests", "kernel"];
pub const DOCKER_TARGETS: &[&str] = &["docker"];
/// The tests of a cgroup v1 host: one Docker guest (shell init) booted
/// with cgroup v1 hierarchies instead of cgroup2.
pub const CGROUP_V1_TARGETS: &[&str] = &["cgroup_v1"];

/// Whether the Docker guest's tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerTests {
    /// Beside the kernel tests (the default).
    Also,
    /// Instead of them (`--docker`).
    Only,
    /// Not at all (`--no-docker`).
    Skip,
}

impl DockerTests {
    pub fn from_flags(only: bool, skip: bool) -> Self {
        match (only, skip) {
            (true, _) => DockerTests::Only,
            (false, true) => DockerTests::Skip,
            (false, false) => DockerTests::Also,
        }
    }
}

/// Where the kernel tests run: guests of these series, or the running
/// kernel itself (`--kernel host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelArg {
    Guest(Series),
    Host,
}

impl std::str::FromStr for KernelArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "host" {
            return Ok(KernelArg::Host);
        }
        s.parse().map(KernelArg::Guest).map_err(|e: anyhow::Error| {
            anyhow::anyhow!("{e}, or host (the running kernel, no guests)")
        })
    }
}

/// Guests of these series, or natively on the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernels {
    Guests(Vec<Series>),
    Host,
}

impl Kernels {
    /// From `--kernel` arguments: none means every series.
    pub fn from_args(args: &[KernelArg]) -> Result<Self> {
        if args.contains(&KernelArg::Host) {
            if args.len() > 1 {
                bail!("--kernel host runs on the running kernel alone: give no other --kernel");
            }
            return Ok(Kernels::Host);
        }
        let series: Vec<Series> = args
            .iter()
            .filter_map(|a| match a {
                KernelArg::Guest(s) => Some(*s),
                KernelArg::Host => None,
            })
            .collect();
        Ok(Kernels::Guests(if series.is_empty() {
            Series::ALL.to_vec()
        } else {
            series
        }))
    }
}

#[derive(Debug, Clone)]
pub struct TestOptions {
    pub kernels: Kernels,
    pub docker: DockerTests,
    /// The Docker guests' inits: the Docker tests run once in each.
    pub inits: Vec<Init>,
    /// Per guest.
    pub timeout: Duration,
    /// Only test targets with these names (all if empty).
    pub targets: Vec<String>,
    /// Passed to every test executable (e.g. a filter, `--nocapture`).
    pub args: Vec<String>,
    /// Run the host unit tests (`cargo test --workspace`) first.
    pub host: bool,
}

/// The libtest arguments every test executable gets: the tests are
/// `#[ignore]`d on the host, so run them all, one at a time (tracing is
/// global, and TCG guests have two slow CPUs), then the user's own.
pub fn executable_args(opts: &TestOptions) -> Vec<String> {
    let mut args: Vec<String> = ["--include-ignored", "--test-threads=1", "--color=never"]
        .map(String::from)
        .to_vec();
    args.extend(opts.args.iter().cloned());
    args
}
