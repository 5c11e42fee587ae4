//! `cargo xtask test --kernel host`: the guest test executables run
//! directly on the running kernel, for runners whose kernel can trace.
//! `cowtrace doctor` decides first; where it finds the kernel unfit, the
//! run stops at once with its findings.

use crate::build;
use crate::demo;
use crate::results::{Counts, Tee, Verdict};
use crate::setup::Tooling;
use crate::testopts::{executable_args, DockerTests, TestOptions, DOCKER_TARGETS, KERNEL_TARGETS};
use crate::util::{self, note};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Why the running kernel can't run the tests: doctor's own words.
#[derive(Debug)]
pub struct Refusal {
    pub findings: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--kernel host: `cowtrace doctor` says this kernel cannot run the tests \
             (see above); run them in guests instead: cargo xtask test"
        )
    }
}

impl std::error::Error for Refusal {}

/// `cowtrace doctor` on the running kernel: Ok if it can trace here.
pub fn preflight(agent: &Path) -> Result<()> {
    let out = Command::new(agent)
        .arg("doctor")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} doctor", agent.display()))?;
    let mut findings = String::from_utf8_lossy(&out.stdout).into_owned();
    findings.push_str(&String::from_utf8_lossy(&out.stderr));
    if !util::is_root() {
        findings.push_str("not root: the tests mount overlays and load probes; run as root\n");
    }
    if out.status.success() && util::is_root() {
        return Ok(());
    }
    eprint!("{findings}");
    Err(Refusal { findings }.into())
}

/// Run the test executables here; a verdict per executable.
pub fn run(
    tooling: &Tooling,
    opts: &TestOptions,
    total: &mut Counts,
) -> Result<Vec<(String, Verdict)>> {
    note("native mode: tests run on the running kernel, no guests");
    let agent = build::agent(tooling)?;
    preflight(&agent)?;
    let docker_engine = Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let with_docker = match opts.docker {
        DockerTests::Skip => false,
        DockerTests::Only if !docker_engine => {
            bail!("--docker --kernel host: no Docker engine answers here")
        }
        _ => docker_engine,
    };
    if !with_docker && opts.docker != DockerTests::Skip {
        note("no Docker engine answers here: the Docker tests are left out");
    }
    let demo_script = demo::script_copy(tooling)?.host;
    let mut results = Vec::new();
    for (name, exe) in build::guest_tests(tooling)? {
        let wanted = (opts.docker != DockerTests::Only && KERNEL_TARGETS.contains(&name.as_str()))
            || (with_docker && DOCKER_TARGETS.contains(&name.as_str()));
        if !wanted || !(opts.targets.is_empty() || opts.targets.contains(&name)) {
            continue;
        }
        note(format!("{name} on the running kernel"));
        let captured = Arc::new(Mutex::new(Vec::new()));
        let mut tee = Tee(captured.clone());
        let mut child = Command::new(&exe)
            .args(executable_args(opts))
            .env("COWTRACE_BIN", &agent)
            .env("COWTRACE_DEMO", &demo_script)
            .env("PATH", util::path_with(agent.parent().unwrap()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        std::io::copy(child.stdout.as_mut().unwrap(), &mut tee)?;
        let status = child.wait()?;
        let c = Counts::parse(&String::from_utf8_lossy(&captured.lock().unwrap()));
        total.add(c);
        let verdict = Verdict::of(Ok(status.code().unwrap_or(125)), c);
        if !verdict.passed() && c.failed == 0 {
            total.failed += 1;
        }
        results.push((format!("host ({name})"), verdict));
    }
    Ok(results)
}
