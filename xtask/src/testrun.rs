//! `cargo xtask test`: host unit tests, then the `cowtrace-tests`
//! executables inside guests, and one closing `total: N passed, N failed`.
//!
//! Builds the agent and the test executables first (never while a guest
//! runs), then boots one guest per kernel series and runs every test
//! executable in it with `--include-ignored --test-threads=1` (further
//! libtest arguments pass through), with the agent at
//! /usr/local/bin/cowtrace and the tests under [`GUEST_DIR`].

use crate::build;
use crate::demo;
use crate::guest::{self, Copy, GuestKind, GuestSpec, Sinks};
use crate::kernel::Series;
use crate::setup::Tooling;
use crate::util::note;
use anyhow::{Context, Result};
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the test executables go in the guest.
pub const GUEST_DIR: &str = "/usr/local/libexec/cowtrace-tests";

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

#[derive(Debug, Clone)]
pub struct TestOptions {
    pub kernels: Vec<Series>,
    pub docker: DockerTests,
    /// Per guest.
    pub timeout: Duration,
    /// Only test targets with these names (all if empty).
    pub targets: Vec<String>,
    /// Passed to every test executable (e.g. a filter, `--nocapture`).
    pub args: Vec<String>,
    /// Run the host unit tests (`cargo test --workspace`) first.
    pub host: bool,
}

/// Run the tests; true if every guest and every test passed.
pub fn run(tooling: &Tooling, opts: &TestOptions) -> Result<bool> {
    let mut total = Counts::default();
    if opts.host {
        note("host unit tests");
        // Plain host build: no static-linking flags (proc macros need
        // dynamic linking), but bpf-linker on PATH for the agent's build.rs.
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.env("PATH", tooling.path_env())
            .args(["test", "--workspace"]);
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo test")?;
        std::io::stdout().write_all(&out.stdout)?;
        let c = Counts::parse(&String::from_utf8_lossy(&out.stdout));
        total.add(c);
        if !out.status.success() && c.failed == 0 {
            total.failed += 1;
        }
    }
    let agent = build::agent(tooling)?;
    let tests = build::guest_tests(tooling)?;
    let mut results = Vec::new();
    for guest_run in plan(opts) {
        let selected: Vec<_> = tests
            .iter()
            .filter(|(name, _)| guest_run.targets.contains(&name.as_str()))
            .filter(|(name, _)| opts.targets.is_empty() || opts.targets.contains(name))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let docker = guest_run.kind == GuestKind::Docker;
        let label = format!(
            "{}{}",
            guest_run.kernel,
            if docker { " (docker)" } else { "" }
        );
        note(format!("tests on kernel series {label}"));
        let mut copies: Vec<Copy> = selected
            .iter()
            .map(|(name, exe)| Copy {
                host: (*exe).clone(),
                guest: format!("{GUEST_DIR}/{name}"),
            })
            .collect();
        let mut script = String::from("rc=0\n");
        if docker {
            copies.push(demo::script_copy(tooling)?);
            script.push_str(&format!("export COWTRACE_DEMO={}\n", demo::GUEST_SCRIPT));
        }
        for (name, _) in &selected {
            script.push_str(&format!(
                "echo \"== {name}\"; {GUEST_DIR}/{name} \"$@\" || {{ rc=1; echo \"== {name} FAILED\"; }}\n"
            ));
        }
        script.push_str("exit $rc\n");
        let mut command = vec![
            "sh".to_string(),
            "-c".to_string(),
            script,
            "tests".to_string(),
            // The tests are `#[ignore]`d on the host; in a guest run them
            // all, one at a time (two slow TCG CPUs, tracing is global).
            "--include-ignored".to_string(),
            "--test-threads=1".to_string(),
            "--color=never".to_string(),
        ];
        command.extend(opts.args.iter().cloned());
        let spec = GuestSpec {
            kernel: guest_run.kernel,
            kind: guest_run.kind,
            copies,
            out: None,
            timeout: opts.timeout,
            command,
            agent: Some(agent.clone()),
        };
        let captured = Arc::new(Mutex::new(Vec::new()));
        let mut sinks = Sinks {
            stdout: Box::new(Tee(captured.clone())),
            stderr: Box::new(std::io::stderr()),
        };
        let result = guest::run_with(&spec, &mut sinks);
        let c = Counts::parse(&String::from_utf8_lossy(&captured.lock().unwrap()));
        total.add(c);
        let verdict = Verdict::of(result, c);
        // A guest that died or a runner that failed without counting a
        // failed test still fails the run.
        if !verdict.passed() && c.failed == 0 {
            total.failed += 1;
        }
        results.push((label, verdict));
    }
    println!("test summary:");
    for (k, v) in &results {
        println!("  {k}: {v}");
    }
    println!("total: {} passed, {} failed", total.passed, total.failed);
    Ok(total.failed == 0)
}

/// How one guest's tests ended.
enum Verdict {
    Passed(Counts),
    Failed { exit: i32, counts: Counts },
    GuestFailed(String),
}

impl Verdict {
    fn of(result: Result<i32>, counts: Counts) -> Self {
        match result {
            Ok(0) => Verdict::Passed(counts),
            Ok(exit) => Verdict::Failed { exit, counts },
            Err(e) => Verdict::GuestFailed(format!("{e:#}")),
        }
    }

    fn passed(&self) -> bool {
        matches!(self, Verdict::Passed(_))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Passed(c) => write!(f, "ok ({} passed)", c.passed),
            Verdict::Failed { exit, counts } => write!(
                f,
                "FAILED (exit {exit}; {} passed, {} failed)",
                counts.passed, counts.failed
            ),
            Verdict::GuestFailed(why) => write!(f, "FAILED ({why})"),
        }
    }
}

/// One guest boot: which kernel, which guest, which test executables.
struct GuestRun {
    kernel: Series,
    kind: GuestKind,
    targets: &'static [&'static str],
}

/// The plain-overlay tests on every selected kernel, then the Docker tests
/// once (Docker's runc does not start containers on 5.10, so they run on
/// the first selected kernel that is not 5.10).
fn plan(opts: &TestOptions) -> Vec<GuestRun> {
    let mut runs = Vec::new();
    if opts.docker != DockerTests::Only {
        for &kernel in &opts.kernels {
            runs.push(GuestRun {
                kernel,
                kind: GuestKind::Small,
                targets: &["cowtrace_tests", "kernel"],
            });
        }
    }
    if opts.docker != DockerTests::Skip {
        if let Some(&kernel) = opts.kernels.iter().find(|&&k| k != Series::V5_10) {
            runs.push(GuestRun {
                kernel,
                kind: GuestKind::Docker,
                targets: &["docker"],
            });
        }
    }
    runs
}

/// Passed and failed counts from libtest's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn parse(text: &str) -> Counts {
        let mut c = Counts::default();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("test result:"))
        {
            let num = |word: &str| {
                line.split(';')
                    .find_map(|part| part.trim().strip_suffix(word).map(str::trim))
                    .and_then(|n| n.rsplit(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            c.passed += num("passed");
            c.failed += num("failed");
        }
        c
    }

    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// Streams the guest's stdout to ours and keeps a copy to count results.
struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summaries() {
        let text = "test result: ok. 43 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.56s\n\
                    noise\n\
                    test result: FAILED. 2 passed; 9 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            Counts::parse(text),
            Counts {
                passed: 45,
                failed: 9
            }
        );
        assert_eq!(Counts::parse("nothing"), Counts::default());
    }
}
