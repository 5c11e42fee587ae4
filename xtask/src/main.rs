//! `cargo xtask`: setup, build and guest VMs for cowtrace (see lib.rs).

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use xtask::guest::{self, Cgroups, Copy, GuestFailure, GuestKind, GuestSpec, Init};
use xtask::kernel::Series;
use xtask::{build, setup, testopts, testrun};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "cowtrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the other commands need (apt packages, rust-src, bpf-linker).
    Setup,
    /// Build the static cowtrace agent (and with --tests the guest tests).
    Build {
        /// Also build the guest test executables and list them.
        #[arg(long)]
        tests: bool,
    },
    /// Boot a Debian kernel in QEMU and run COMMAND in it.
    Vm(VmArgs),
    /// Run the cowtrace-tests executables in guests (all series by default).
    Test(TestArgs),
    /// Benchmarks: cowtrace's cost to the workload, side by side with bpftrace.
    Bench {
        /// Kernel series of the guest.
        #[arg(long, default_value = "6.1")]
        kernel: Series,
        /// Where bench.json and bench.md go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Rounds (each: every tracer in turn, order rotated per round).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Operations per phase, relative to the default (e.g. 0.5 for a quicker, noisier run).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// No round starts after this many minutes in the guest (0: no limit; the BPF statistics and one round always run).
        /// The default keeps a warm run under 30 minutes on an idle 2-core machine (about 7.5 minutes of statistics,
        /// three passes, then rounds of about 4.3 minutes) and lets a machine twice as slow end with fewer rounds rather
        /// than time out.
        #[arg(long, default_value_t = 22.0)]
        minutes: f64,
        /// Seconds the guest may take (a round started just before the budget ends can take 9 minutes on a slow machine).
        #[arg(long, default_value_t = 2700)]
        timeout: u64,
    },
    /// Soak: cowtrace's peak RSS, CPU time and exact totals while many real
    /// containers come and go in a Docker guest (not part of `test`).
    Soak {
        /// Kernel series of the guest.
        #[arg(long, default_value = "6.1")]
        kernel: Series,
        /// Where soak.json, soak-report.json and cowtrace.log go.
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
        /// Containers run, one after the other per lane.
        #[arg(long, default_value_t = 200)]
        containers: u32,
        /// Distinct paths each container copies up.
        #[arg(long, default_value_t = 500)]
        files: u32,
        /// Containers running at once.
        #[arg(long, default_value_t = 4)]
        parallel: u32,
    },
    /// The agent's container image (deploy/Dockerfile), built by Docker in
    /// a guest and saved as a docker-archive tarball.
    Image {
        /// Where the tarball goes.
        #[arg(long, default_value = "target/image")]
        out: PathBuf,
    },
    /// The demo: a Docker guest, a container named nginx, cowtrace watching it.
    Demo {
        /// Kernel series of the guest.
        #[arg(long, default_value = "6.1")]
        kernel: Series,
        /// Where the latency JSON goes.
        #[arg(long, default_value = "target/demo")]
        out: PathBuf,
        /// PID 1 of the guest: systemd (Docker on the systemd cgroup
        /// driver, as on most hosts) or shell (Docker on cgroupfs).
        #[arg(long, default_value = "systemd", value_name = "systemd|shell")]
        init: Init,
        /// The same container life with ownership set at build time and a
        /// volume for the log directory (to compare with `cowtrace report
        /// --compare`), e.g. --improved --out target/demo-improved
        #[arg(long)]
        improved: bool,
    },
}

#[derive(Args)]
struct TestArgs {
    /// Kernel series (repeatable; default: all four), or `host`: the
    /// running kernel, no guests (when `cowtrace doctor` says it can trace).
    #[arg(long = "kernel", value_name = "SERIES|host")]
    kernels: Vec<testopts::KernelArg>,
    /// Only the Docker guest tests.
    #[arg(long)]
    docker: bool,
    /// Only this test target (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Seconds per guest (TCG on a busy 2-core machine; scaled down under KVM).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Skip the host unit tests.
    #[arg(long)]
    no_host: bool,
    /// Skip the Docker guest tests.
    #[arg(long)]
    no_docker: bool,
    /// Docker guests by PID 1 (repeatable; default: both, shell and systemd).
    #[arg(long = "init", value_name = "shell|systemd")]
    inits: Vec<Init>,
    /// Arguments for the test executables (filters, --nocapture, ...).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct VmArgs {
    /// Kernel series: 5.10, 6.1, 6.12 or latest.
    #[arg(long, default_value = "6.1")]
    kernel: Series,
    /// Boot a Debian rootfs with a running Docker engine.
    #[arg(long)]
    docker: bool,
    /// PID 1 of the Docker guest: shell (a script starts containerd and
    /// dockerd, cgroupfs driver) or systemd (their units, systemd driver).
    #[arg(
        long,
        default_value = "shell",
        value_name = "shell|systemd",
        requires = "docker"
    )]
    init: Init,
    /// Which cgroup hierarchies the shell init mounts: v2 (cgroup2), v1
    /// (one v1 hierarchy per controller, as on an older host), or hybrid
    /// (v1's and cgroup2 at /sys/fs/cgroup/unified), e.g. --cgroup v1
    #[arg(long, default_value = "v2", value_name = "v2|v1|hybrid")]
    cgroup: Cgroups,
    /// HOST_PATH:GUEST_PATH to put into the guest (repeatable).
    #[arg(long = "copy", value_name = "HOST_PATH:GUEST_PATH")]
    copies: Vec<Copy>,
    /// Host directory receiving what COMMAND writes under /out.
    #[arg(long, value_name = "HOST_DIR")]
    out: Option<PathBuf>,
    /// Seconds for the whole guest run.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Use this agent binary instead of building one.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<GuestFailure>() {
                eprintln!("xtask vm: {f}");
                f.exit_code()
            } else if let Some(r) = e.downcast_ref::<xtask::native::Refusal>() {
                eprintln!("xtask: {r}");
                1
            } else {
                eprintln!("xtask: error: {e:#}");
                125
            }
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Setup => {
            let t = setup::ensure()?;
            println!("ok: bpf-linker in {}", t.bpf_linker_bin.display());
            Ok(0)
        }
        Cmd::Build { tests } => {
            let t = setup::ensure()?;
            let agent = build::agent(&t)?;
            println!("{}", agent.display());
            if tests {
                for (name, exe) in build::guest_tests(&t)? {
                    println!("{name} {}", exe.display());
                }
            }
            Ok(0)
        }
        Cmd::Vm(a) => {
            let t = setup::ensure()?;
            let agent = match a.agent {
                Some(p) => p,
                None => build::agent(&t)?,
            };
            let spec = GuestSpec {
                kernel: a.kernel,
                kind: if a.docker {
                    GuestKind::Docker(a.init)
                } else {
                    GuestKind::Small
                },
                copies: a.copies,
                out: a.out,
                timeout: Duration::from_secs(a.timeout),
                command: a.command,
                agent: Some(agent),
                cgroups: a.cgroup,
                clock: Default::default(),
            };
            guest::run(&spec)
        }
        Cmd::Bench {
            kernel,
            out,
            rounds,
            scale,
            minutes,
            timeout,
        } => {
            let t = setup::ensure()?;
            let opts = xtask::bench::Options {
                rounds,
                scale,
                minutes,
                timeout: std::time::Duration::from_secs(timeout),
            };
            xtask::bench::run(&t, kernel, &out, &opts)
        }
        Cmd::Soak {
            kernel,
            out,
            containers,
            files,
            parallel,
        } => {
            let t = setup::ensure()?;
            let size = xtask::soak::SoakSize {
                containers,
                files,
                parallel,
            };
            xtask::soak::run(&t, kernel, &out, &size)
        }
        Cmd::Image { out } => {
            let t = setup::ensure()?;
            xtask::image::run(&t, &out)
        }
        Cmd::Demo {
            kernel,
            out,
            init,
            improved,
        } => {
            let t = setup::ensure()?;
            xtask::demo::run(&t, kernel, init, &out, improved)
        }
        Cmd::Test(a) => {
            let t = setup::ensure()?;
            let opts = testopts::TestOptions {
                kernels: testopts::Kernels::from_args(&a.kernels)?,
                docker: testopts::DockerTests::from_flags(a.docker, a.no_docker),
                inits: if a.inits.is_empty() {
                    Init::ALL.to_vec()
                } else {
                    a.inits
                },
                timeout: Duration::from_secs(a.timeout),
                targets: a.targets,
                args: a.args,
                host: !a.no_host,
            };
            Ok(if testrun::run(&t, &opts)? { 0 } else { 1 })
        }
    }
}
