//! `cargo xtask test`: run the `cowtrace-tests` executables inside guests.
//!
//! Builds the agent and the test executables first (never while a guest
//! runs), then boots one guest per kernel series and runs every test
//! executable in it with `--include-ignored --test-threads=1` (further
//! libtest arguments pass through), with the agent at
//! /usr/local/bin/cowtrace and the tests under [`GUEST_DIR`].

use crate::build;
use crate::guest::{self, Copy, GuestSpec};
use crate::kernel::Series;
use crate::setup::Tooling;
use crate::util::note;
use anyhow::Result;
use std::time::Duration;

/// Where the test executables go in the guest.
pub const GUEST_DIR: &str = "/usr/local/libexec/cowtrace-tests";

#[derive(Debug, Clone)]
pub struct TestOptions {
    pub kernels: Vec<Series>,
    pub docker: bool,
    /// Per guest.
    pub timeout: Duration,
    /// Only test targets with these names (all if empty).
    pub targets: Vec<String>,
    /// Passed to every test executable (e.g. a filter, `--nocapture`).
    pub args: Vec<String>,
}

/// Run the tests; true if every guest and every test passed.
pub fn run(tooling: &Tooling, opts: &TestOptions) -> Result<bool> {
    let agent = build::agent(tooling)?;
    let tests = build::guest_tests(tooling)?;
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| opts.targets.is_empty() || opts.targets.contains(name))
        .collect();
    if selected.is_empty() {
        anyhow::bail!(
            "no test targets selected (have: {:?})",
            tests.keys().collect::<Vec<_>>()
        );
    }
    let mut script = String::from("rc=0\n");
    for (name, _) in &selected {
        script.push_str(&format!(
            "echo \"== {name}\"; {GUEST_DIR}/{name} \"$@\" || {{ rc=1; echo \"== {name} FAILED\"; }}\n"
        ));
    }
    script.push_str("exit $rc\n");
    let mut results = Vec::new();
    for &kernel in &opts.kernels {
        note(format!(
            "tests on kernel series {kernel}{}",
            if opts.docker { " (docker)" } else { "" }
        ));
        let mut command = vec![
            "sh".to_string(),
            "-c".to_string(),
            script.clone(),
            "tests".to_string(),
            // The tests are `#[ignore]`d on the host; in a guest run them
            // all, one at a time (two slow TCG CPUs, tracing is global).
            "--include-ignored".to_string(),
            "--test-threads=1".to_string(),
        ];
        command.extend(opts.args.iter().cloned());
        let spec = GuestSpec {
            kernel,
            docker: opts.docker,
            copies: selected
                .iter()
                .map(|(name, exe)| Copy {
                    host: (*exe).clone(),
                    guest: format!("{GUEST_DIR}/{name}"),
                })
                .collect(),
            out: None,
            timeout: opts.timeout,
            command,
            agent: Some(agent.clone()),
        };
        let verdict = match guest::run(&spec) {
            Ok(0) => "ok".to_string(),
            Ok(rc) => format!("FAILED (exit {rc})"),
            Err(e) => format!("FAILED ({e:#})"),
        };
        results.push((kernel, verdict));
    }
    eprintln!("test summary:");
    for (k, v) in &results {
        eprintln!("  {k}: {v}");
    }
    Ok(results.iter().all(|(_, v)| v == "ok"))
}
