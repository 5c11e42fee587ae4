//! `cowtrace`: what container copy-on-write really costs, live.
//!
//! main wires the pipeline: preflight checks -> probes attached ->
//! ring-buffer events decoded -> attributed -> aggregated -> printed and
//! exported; the write histograms are read from kernel maps each interval.

use agent_ebpf::{WriteKey, WriteStats};
use anyhow::{anyhow, Context, Result};
use aya::maps::{MapData, RingBuf};
use clap::{Parser, Subcommand};
use cowtrace::attribution::{Attribution, Entry};
use cowtrace::cgroup::CgroupMode;
use cowtrace::event::escape_str;
use cowtrace::event::{decode, KernelEvent};
use cowtrace::held::{Held, HeldQueue, HELD_BUDGET};
use cowtrace::kernel_maps::KernelMaps;
use cowtrace::kernel_side::{Drops, KernelSide};
use cowtrace::layers::totals::PerLayer;
use cowtrace::layers::worker::{Asked, Layers};
use cowtrace::layers::{advice, changes, LayerAnswer};
use cowtrace::output::{err_line, err_text, EventsTarget, JsonTarget};
use cowtrace::probes::{Kallsyms, ProbeOptions, Probes};
use cowtrace::report::{self, RunInfo};
use cowtrace::stats::{Owner, Row, Stats, WriteTotals};
use cowtrace::{doctor, live, privileges, shutdown};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

const EXAMPLES: &str = "\
Examples:
  sudo cowtrace --container nginx                 watch one container live
  sudo cowtrace --duration 30s --json cow.json    everything on the host for 30 s
  sudo cowtrace --quiet --events - | jq .         NDJSON events on stdout
  sudo cowtrace --cgroup /sys/fs/cgroup/system.slice/foo.service
  cowtrace doctor                                 can this kernel run cowtrace?
  cowtrace report cow.json --html cow.html        a saved report, with plots (no root)";

#[derive(Parser, Debug)]
#[command(
    name = "cowtrace",
    version,
    about = "Trace overlayfs copy-up, whiteouts and opaque directories per container, with copy-up versus write latency",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Only this container (name or id prefix; repeatable), e.g. --container nginx
    #[arg(long = "container", value_name = "NAME_OR_ID")]
    containers: Vec<String>,
    /// Only this process's cgroup, and its events (repeatable), e.g. --pid 4242
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Only this cgroup v2 directory (repeatable), e.g. --cgroup /sys/fs/cgroup/system.slice
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Stop after this long, e.g. --duration 30s (units: ms, s, m, h)
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print a summary this often, e.g. --interval 10s
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    interval: Duration,
    /// Write the latency report here (strict JSON, atomically, every interval and at exit), e.g. --json cow.json
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Stream every event as NDJSON to FILE, or `-` for stdout, e.g. --events events.ndjson
    #[arg(long, value_name = "FILE")]
    events: Option<String>,
    /// No per-event lines (summaries only)
    #[arg(long)]
    quiet: bool,
    /// No ANSI colour
    #[arg(long)]
    no_color: bool,
    /// Use kprobes even where fentry/fexit would work (to compare methods)
    #[arg(long)]
    kprobes_only: bool,
    /// How many (cgroup, overlay) pairs the kernel keeps write histograms for (default 4096); writes of pairs beyond it are counted in drops.map_full.writes, e.g. --write-keys 65536
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    write_keys: Option<u32>,
    /// At exit, list what each --container changed like `docker diff`, with the image layer of each entry, e.g. --container nginx --changes
    #[arg(long, requires = "containers")]
    changes: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (values as of the last --interval), e.g. --metrics 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// With --metrics: drop a container's series this long after it exited, e.g. --metrics-forget-after 10m
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    metrics_forget_after: Duration,
    /// Print how long each start-up stage took (on stderr, before `tracing`)
    #[arg(long)]
    verbose: bool,
    /// Time one write in N (a power of two; 1 = every write); every write is counted either way, e.g. --write-sample 1
    #[arg(long, value_name = "N", value_parser = parse_write_sample, default_value_t = DEFAULT_WRITE_SAMPLE)]
    write_sample: u32,
}

/// Writes are many and each timed one costs two clock reads and a map
/// update in the kernel; percentiles from one write in 8 are as good for a
/// baseline, and the counts and bytes stay exact.
const DEFAULT_WRITE_SAMPLE: u32 = 8;

fn parse_write_sample(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1 << 16 => Ok(n),
        _ => Err(format!(
            "--write-sample {s:?}: a power of two from 1 to 65536 (1 = time every write)"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// What this kernel offers, and how cowtrace would attach each probe
    Doctor,
    /// A saved --json report on the terminal and as HTML plots, or two compared (no root needed)
    Report(cowtrace::offline::ReportArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 30s)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    if secs < MIN_DURATION_S {
        return Err(format!("duration too short: {s:?} (at least 1ms)"));
    }
    if secs > MAX_DURATION_S {
        return Err(format!("duration too long: {s:?} (at most 3650 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Below a millisecond an interval timer is a busy loop (and under 1 ns it
/// is zero, which tokio's interval refuses with a panic).
const MIN_DURATION_S: f64 = 0.001;
/// Ten years: far beyond any run, far below what `Duration` and the
/// monotonic clock can add without overflowing.
const MAX_DURATION_S: f64 = 10.0 * 365.0 * 86400.0;

/// `--verbose`: how long each start-up stage took, one line each.
struct Stages {
    verbose: bool,
    last: Instant,
}

impl Stages {
    fn new(verbose: bool) -> Self {
        Self {
            verbose,
            last: Instant::now(),
        }
    }

    /// The stage that ends now, with the agent's peak memory so far (the
    /// 40 MiB target is a peak, and start-up is where it is reached).
    fn done(&mut self, what: &str) {
        let now = Instant::now();
        if self.verbose {
            err_line(&format!(
                "cowtrace: start-up: {what}: {:.1} ms (peak RSS {})",
                (now - self.last).as_secs_f64() * 1000.0,
                peak_rss_text()
            ));
        }
        self.last = now;
    }

    /// Start-up in all: from the process's start to `tracing`.
    fn ready(&self, since: Instant) {
        if self.verbose {
            err_line(&format!(
                "cowtrace: start-up: ready after {:.1} ms (peak RSS {})",
                since.elapsed().as_secs_f64() * 1000.0,
                peak_rss_text()
            ));
        }
    }

    /// A part of the current stage, timed elsewhere.
    fn took(&self, what: &str, d: Duration) {
        if self.verbose {
            err_line(&format!(
                "cowtrace: start-up: {what}: {:.1} ms",
                d.as_secs_f64() * 1000.0
            ));
        }
    }
}

/// The peak RSS so far, for the start-up lines.
fn peak_rss_text() -> String {
    cowtrace::agent_cost::peak_rss_kib().map_or("unknown".to_string(), |kib| format!("{kib} KiB"))
}

/// Usage errors exit 2, runtime failures 1.
enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    cowtrace::agent_cost::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Some(Command::Doctor) => run_doctor(&cli),
        Some(Command::Report(ref args)) => return ExitCode::from(cowtrace::offline::run(args)),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(e.into()))
            .and_then(|rt| rt.block_on(trace(cli))),
    };
    match result {
        Ok(Ended::Clean) => ExitCode::SUCCESS,
        // Each failed output was reported once when it failed.
        Ok(Ended::OutputFailed) => ExitCode::from(1),
        Err(Failure::Usage(msg)) => {
            err_line(&format!("cowtrace: {msg}"));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            err_line(&format!("cowtrace: {e:#}"));
            ExitCode::from(1)
        }
    }
}

/// How a run that got going ended.
enum Ended {
    Clean,
    /// Some output could not be written (each said so once on stderr);
    /// the others, and the final JSON if it could be, were still written.
    OutputFailed,
}

fn probe_options(cli: &Cli, filter: bool) -> ProbeOptions {
    ProbeOptions {
        force_kprobes: cli.kprobes_only,
        filter,
        write_keys: cli.write_keys,
        write_sample_shift: cli.write_sample.trailing_zeros(),
        bpf_log: cli.verbose,
    }
}

fn run_doctor(cli: &Cli) -> Result<Ended, Failure> {
    let findings = doctor::check(&probe_options(cli, false)).findings;
    let mut text = doctor::render(&findings);
    let fatal = doctor::first_fatal(&findings);
    if fatal.is_none() {
        text.push_str("cowtrace can run on this kernel\n");
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    match fatal {
        Some(msg) => Err(Failure::Runtime(anyhow!("cannot run here: {msg}"))),
        None => match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Failure::Runtime(anyhow!("writing to standard output: {e}")))
            }
            _ => Ok(Ended::Clean),
        },
    }
}

/// Where output goes. A closed stdout (EPIPE) ends the run quietly; any
/// other write error is reported once, stops that output only, and makes
/// the exit status 1.
struct Out {
    /// stdout's reader went away: the run ends quietly.
    closed: bool,
    stdout_failed: bool,
    events: Option<EventsOut>,
    json_failed: bool,
    /// Some output failed.
    failed: bool,
}

struct EventsOut {
    name: String,
    w: Box<dyn Write>,
    is_stdout: bool,
    failed: bool,
}

impl Out {
    fn line(&mut self, s: &str) {
        if self.closed || self.stdout_failed {
            return;
        }
        let mut lock = std::io::stdout().lock();
        let res = writeln!(lock, "{s}").and_then(|_| lock.flush());
        drop(lock);
        if let Err(e) = res {
            self.stdout_error(e);
        }
    }

    fn stdout_error(&mut self, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            self.closed = true;
        } else if !self.stdout_failed {
            self.stdout_failed = true;
            self.failed = true;
            err_line(&format!(
                "cowtrace: writing to standard output: {e}; nothing more is written there"
            ));
        }
    }

    fn event(&mut self, v: &serde_json::Value) {
        let res = match &mut self.events {
            Some(ev) if !ev.failed => writeln!(ev.w, "{v}"),
            _ => return,
        };
        if let Err(e) = res {
            self.events_error(e);
        }
    }

    fn flush_events(&mut self) {
        let res = match &mut self.events {
            Some(ev) if !ev.failed => ev.w.flush(),
            _ => return,
        };
        if let Err(e) = res {
            self.events_error(e);
        }
    }

    fn events_error(&mut self, e: std::io::Error) {
        let Some(ev) = &mut self.events else { return };
        ev.failed = true;
        if ev.is_stdout {
            self.stdout_error(e);
            return;
        }
        self.failed = true;
        err_line(&format!(
            "cowtrace: writing events to {}: {e}; no more events are written there",
            ev.name
        ));
    }

    fn json(
        &mut self,
        target: &JsonTarget,
        fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) {
        match target.write_with(fill) {
            Ok(()) => {}
            Err(e) => {
                self.failed = true;
                if !self.json_failed {
                    self.json_failed = true;
                    err_line(&format!(
                        "cowtrace: cannot write {}: {e} (tried again every interval and at the end)",
                        target.path().display()
                    ));
                }
            }
        }
    }
}

/// What the command line asks for, checked before anything is attached: a
/// bad option is a usage error (exit 2), and nothing was traced.
struct Options {
    probe: ProbeOptions,
    json: Option<JsonTarget>,
    events: Option<EventsOut>,
    /// Let through the kernel filter: `--cgroup` and `--pid`.
    cgroup_ids: Vec<u64>,
    cgroup_mode: CgroupMode,
    metrics: Option<cowtrace::metrics_server::MetricsListener>,
}

impl Options {
    /// Usage first: none of this needs privileges. Outputs are checked (and
    /// the events file opened) and the metrics port bound here: a port in
    /// use is said before anything is traced, and a port below 1024 needs
    /// a capability given up later.
    async fn validate(cli: &Cli) -> Result<Self, Failure> {
        let filter = !cli.containers.is_empty() || !cli.pids.is_empty() || !cli.cgroups.is_empty();
        let json = match &cli.json {
            Some(p) => Some(JsonTarget::open(p).map_err(|r| Failure::Usage(r.0))?),
            None => None,
        };
        let events = match cli.events.as_deref() {
            None => None,
            Some(arg) => Some(
                match EventsTarget::open(arg).map_err(|r| Failure::Usage(r.0))? {
                    EventsTarget::Stdout => EventsOut {
                        name: "standard output".into(),
                        w: Box::new(std::io::stdout()),
                        is_stdout: true,
                        failed: false,
                    },
                    EventsTarget::File { path, file } => EventsOut {
                        name: path.display().to_string(),
                        w: Box::new(std::io::BufWriter::new(file)),
                        is_stdout: false,
                        failed: false,
                    },
                },
            ),
        };
        // The kernel's cgroup ids are cgroup v2 ids: how the host mounts
        // its cgroups decides what they can say (and how events are
        // attributed).
        let cgroup_mode = CgroupMode::detect();
        let mut cgroup_ids = Vec::new();
        for p in &cli.cgroups {
            let md = std::fs::metadata(p)
                .map_err(|e| Failure::Usage(format!("--cgroup {}: {e}", p.display())))?;
            if !md.is_dir() || !cowtrace::cgroup::is_cgroup2(p) {
                return Err(Failure::Usage(format!(
                    "--cgroup {}: not a cgroup v2 directory (this host's cgroups: {})",
                    p.display(),
                    cgroup_mode.as_str()
                )));
            }
            cgroup_ids.push(md.ino());
        }
        for pid in &cli.pids {
            let id = cowtrace::cgroup::cgroup_id_of_pid(*pid).map_err(|e| {
                Failure::Usage(format!(
                    "--pid {pid}: {e} (no such process, or no cgroup v2: this host's cgroups: {})",
                    cgroup_mode.as_str()
                ))
            })?;
            cgroup_ids.push(id);
        }
        let metrics = match &cli.metrics {
            Some(addr) => Some(
                cowtrace::metrics_server::bind(addr)
                    .await
                    .map_err(Failure::Usage)?,
            ),
            None => None,
        };
        Ok(Options {
            probe: probe_options(cli, filter),
            json,
            events,
            cgroup_ids,
            cgroup_mode,
            metrics,
        })
    }
}

/// The kernel's symbols, BTF and the attach plan (doctor's), or why this
/// kernel cannot be traced.
fn kernel_checks(probe: &ProbeOptions, stages: &mut Stages) -> Result<Kernel, Failure> {
    let checked = doctor::check_kernel(probe);
    for (stage, took) in &checked.stages {
        stages.took(stage, *took);
    }
    stages.done("kernel checks, BTF and the attach plan, in all");
    if let Some(msg) = doctor::first_fatal(&checked.findings) {
        return Err(Failure::Runtime(anyhow!(
            "cannot run here: {msg} (see `cowtrace doctor`)"
        )));
    }
    match checked.btf {
        Some(btf) => Ok(Kernel {
            kallsyms: checked.kallsyms,
            btf,
            plan: checked.plan,
        }),
        None => Err(Failure::Runtime(anyhow!("cannot read the kernel's BTF"))),
    }
}

/// What attaching needs from the kernel checks.
struct Kernel {
    kallsyms: Kallsyms,
    btf: cowtrace::probes::KernelBtf,
    plan: Vec<Result<cowtrace::points::Planned, cowtrace::points::Missing>>,
}

/// The running containers `--container` names (waiting for the runtime's
/// first answer, bounded), followed from now on across restarts.
fn followed_containers(cli: &Cli, attribution: &Attribution) -> Result<Vec<Entry>, Failure> {
    if cli.containers.is_empty() {
        return Ok(Vec::new());
    }
    if !attribution.wait_ready(RUNTIME_WAIT) {
        return Err(Failure::Runtime(anyhow!(
            "the container runtime did not answer within {} s: cannot find --container {}",
            RUNTIME_WAIT.as_secs(),
            cli.containers.join(", ")
        )));
    }
    let mut found = Vec::new();
    for name in &cli.containers {
        match attribution.find(name) {
            Some(c) => found.push(c),
            None => {
                let mut names: Vec<String> = attribution
                    .containers()
                    .into_iter()
                    .map(|c| c.info.name)
                    .collect();
                names.sort();
                let list = if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                };
                return Err(Failure::Usage(format!(
                    "no running container {name:?}; running containers: {}",
                    escape_str(&list)
                )));
            }
        }
    }
    attribution.follow(found.iter().map(|c| c.info.name.clone()));
    Ok(found)
}

/// The signals that end a run. Installed before `tracing` is printed: a
/// script that sends SIGINT right after that line must get a complete
/// report. SIGHUP too: a dropped ssh session must end the run the same way.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let s = Signals {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        };
        // A second signal ends the process at once, after detaching.
        shutdown::install().context("signal handlers")?;
        Ok(s)
    }

    /// Resolves at the first of them.
    async fn any(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Loads and attaches the probes and takes their maps into a
/// [`KernelSide`]; the filter maps are filled before events can pass (with
/// the filter flag set and empty maps, nothing passes until then): a
/// container is both its processes (cgroup) and its root filesystem
/// (overlay device), so a `docker cp` into it counts too. Then every
/// capability but the few the run still needs goes (README, "Privileges").
fn attach(
    opts: &Options,
    kernel: Kernel,
    prepared: &cowtrace::loader::Prepared,
    followed: &[Entry],
    stages: &mut Stages,
) -> Result<
    (
        KernelSide,
        cowtrace::attribution::KernelCgroupNames,
        Kallsyms,
    ),
    Failure,
> {
    let Kernel {
        kallsyms,
        btf,
        plan,
    } = kernel;
    let mut probes =
        Probes::attach(&plan, &kallsyms, &btf, prepared, &opts.probe).map_err(Failure::Runtime)?;
    for (stage, took) in &probes.stages {
        stages.took(stage, *took);
    }
    if opts.probe.bpf_log {
        cowtrace::bpf_log::start(&mut probes.ebpf).map_err(Failure::Runtime)?;
    }
    stages.done("eBPF object loaded and attached, in all");
    // BTF is only needed to attach; give its memory back.
    drop(btf);
    let (mut kernel, names) = KernelSide::take(probes)?;
    let mut cgroups = opts.cgroup_ids.clone();
    cgroups.extend(followed.iter().filter_map(|c| c.cgroup_id));
    let devs: Vec<u32> = followed.iter().filter_map(|c| c.root_dev).collect();
    kernel.pass(&cgroups, &devs)?;
    privileges::drop_after_attach().map_err(Failure::Runtime)?;
    // Needed from now on only to name triggers: read once the first
    // copy-up comes (see `Sink::admit`).
    stages.done("filters filled, capabilities dropped");
    Ok((kernel, names, kallsyms))
}

/// The run as a pipeline: options validated; the kernel checked;
/// attribution started (and `--container` found); probes loaded behind a
/// typed handle; then events drained, attributed and aggregated until the
/// end, with one snapshot path for every interval's report and the last.
async fn trace(cli: Cli) -> Result<Ended, Failure> {
    let started_wall = SystemTime::now();
    let t_start = Instant::now();
    let opts = Options::validate(&cli).await?;

    let mut stages = Stages::new(cli.verbose);
    // aya's loader and BTF, on a thread of their own from here on.
    let prepared = cowtrace::loader::Prepared::start(!opts.probe.force_kprobes);
    let kernel = kernel_checks(&opts.probe, &mut stages)?;
    // Attribution runs on its own thread from here on; image layers are
    // looked up on a thread of their own too (it learns the running
    // containers' layers while the probes attach).
    let attribution = Attribution::start(opts.cgroup_mode);
    let layers = Layers::start();
    let followed = followed_containers(&cli, &attribution)?;
    stages.done("attribution started");
    show_warnings(&attribution);

    let mut signals = Signals::install()?;
    let t_attach = Instant::now();
    let (mut kernel, cgroup_names, kallsyms) =
        attach(&opts, kernel, &prepared, &followed, &mut stages)?;
    drop(prepared);
    attribution.use_kernel_names(cgroup_names);
    let kernel_release = doctor::kernel_release();
    let points = kernel.probes().map_or(0, |p| p.report.points.len());
    stages.ready(t_start);
    err_line(&format!(
        "tracing overlayfs copy-up on {kernel_release}: {points} probes attached in {} ms{}. Ctrl-C to stop.",
        t_attach.elapsed().as_millis(),
        if opts.probe.filter {
            ", filtered in the kernel"
        } else {
            ""
        }
    ));

    let Options {
        json,
        events,
        cgroup_mode,
        metrics: listener,
        ..
    } = opts;
    let metrics = listener.map(|l| {
        err_line(&format!("metrics at http://{}/metrics", l.addr));
        let shared: cowtrace::metrics_server::Shared = Default::default();
        *shared.lock().unwrap() =
            cowtrace::metrics::Snapshot::started(points, t_start.elapsed().as_secs_f64());
        let task = cowtrace::metrics_server::serve(l, shared.clone());
        (shared, task)
    });
    let mut out = Out {
        closed: false,
        stdout_failed: false,
        events,
        json_failed: false,
        failed: false,
    };
    let print_events = !cli.quiet && cli.events.as_deref() != Some("-");
    if print_events {
        out.line(&live::event_header());
    }
    let mut stats = Stats::default();
    for c in &followed {
        stats.touch(&Owner {
            id: c.info.id.clone(),
            name: c.info.name.clone(),
            image: c.info.image.clone(),
            pod: c.info.pod.clone(),
        });
    }
    let mono_to_wall = mono_offset();
    let base = RunBase {
        kernel: kernel_release,
        started_text: fmt_rfc3339(started_wall),
        probes: kernel
            .probes()
            .map(|p| serde_json::to_value(&p.report.points).unwrap_or_default())
            .unwrap_or_default(),
        mono_to_wall,
        write_sample_every: cli.write_sample as u64,
        cgroup_mode,
    };
    let mut run = Run {
        cli: &cli,
        sink: EventSink {
            undecodable: [0; agent_ebpf::EVENT_KINDS as usize],
            pid_filter: &cli.pids,
            attribution,
            held: HeldQueue::new(HELD_BUDGET),
            asked_upto: 0,
            frame_names: cowtrace::kernel_names::FrameNames::new(
                kernel.kernel_names.take(),
                kallsyms,
            ),
            kallsyms_warned: false,
            stats,
            out,
            print_events,
            mono_to_wall,
            layers,
            per_layer: PerLayer::default(),
            overlays: cowtrace::overlay_opts::Overlays::default(),
        },
        kernel,
        base,
        json,
        metrics,
        started: Instant::now(),
        followed,
    };
    run.until_end(&mut signals).await?;
    Ok(run.end())
}

/// A run under way: the event sink, the kernel side and the outputs.
struct Run<'a> {
    cli: &'a Cli,
    sink: EventSink<'a>,
    kernel: KernelSide,
    base: RunBase,
    json: Option<JsonTarget>,
    /// What the metrics endpoint serves, and its task (while it runs).
    metrics: Option<(
        cowtrace::metrics_server::Shared,
        tokio::task::JoinHandle<()>,
    )>,
    started: Instant,
    /// `--container`'s containers.
    followed: Vec<Entry>,
}

/// When a report is made: each interval, or at the end (with the events
/// the final drain had no time for).
#[derive(Clone, Copy)]
enum Moment {
    Interval,
    End { lost: Drops },
}

impl Run<'_> {
    /// Drains, attributes and aggregates events, reports every interval,
    /// and follows `--container` across restarts, until a signal, the
    /// `--duration`, or a closed stdout.
    async fn until_end(&mut self, signals: &mut Signals) -> Result<()> {
        let deadline = self.cli.duration.map(|d| tokio::time::Instant::now() + d);
        let interval = self.cli.interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                guard = self.kernel.ring.readable_mut() => {
                    let mut guard = guard.context("ring buffer")?;
                    // Left ready while records remain: the loop comes back
                    // after looking at the other branches.
                    if self.sink.drain(guard.get_inner_mut()) {
                        drop(guard);
                        // Let the runtime look at its timers and signals (a
                        // branch that is always ready never yields by itself).
                        tokio::task::yield_now().await;
                    } else {
                        guard.clear_ready();
                    }
                }
                // Records below the kernel's wake-up threshold arrive
                // without a wake-up: collect them at least this often (and
                // release held events whose owner is now known).
                _ = drain.tick() => {
                    let _ = self.sink.drain(self.kernel.ring.get_mut());
                    self.sink.out.flush_events();
                    show_warnings(&self.sink.attribution);
                    // Exited containers keep their totals, not their files.
                    for gone in self.sink.attribution.take_exited() {
                        self.sink.stats.compact(&gone);
                    }
                }
                Some(update) = self.sink.attribution.filter_updates.recv() => {
                    // A followed container (re)started: trace its new
                    // cgroup and root filesystem too.
                    self.kernel.follow(&update)?;
                }
                _ = tick.tick() => {
                    self.report(Moment::Interval);
                    // The report's rows and tree (they grow with the
                    // containers seen) were freed just now.
                    cowtrace::agent_cost::give_back_freed_heap();
                }
                _ = signals.any() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            }
            // Seen here too, whatever the runtime polled: the signal
            // handler counts signals, and the deadline is a clock.
            if self.sink.out.closed
                || shutdown::requested()
                || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
            {
                break;
            }
        }
        Ok(())
    }

    /// The end. The kernel side stops first: from then on no event, drop
    /// or write is added, so the drain below ends even under a storm of
    /// events; what it cannot handle within its budget is counted as
    /// dropped, never silently lost. Nothing here waits for the runtime:
    /// held events get a last short chance to be attributed from what the
    /// attribution worker knows. The final report and summary are written
    /// before the probes are detached (which can take seconds on a busy
    /// machine).
    fn end(mut self) -> Ended {
        let ending = Instant::now();
        if let Err(e) = self.kernel.stop_events() {
            // Not expected; then it detached, which stops events too.
            err_line(&format!(
                "cowtrace: warning: {e:#}; detaching before the final drain"
            ));
        }
        let lost = self
            .sink
            .drain_until(self.kernel.ring.get_mut(), ending + DRAIN_BUDGET);
        self.report(Moment::End { lost });
        if self.cli.changes && !self.sink.out.closed {
            for c in &self.followed {
                err_text(&match self.sink.layers.changes(&c.info.id, CHANGES_WAIT) {
                    Some(list) => changes::render(&c.info.name, &list),
                    None => format!(
                        "changes in {}: not known (the runtime did not give its layers in time)\n",
                        escape_str(&c.info.name)
                    ),
                });
            }
        }
        // Only now, with everything written: detach (all probes at once).
        self.kernel.detach();
        if self.sink.out.failed {
            Ended::OutputFailed
        } else {
            Ended::Clean
        }
    }

    /// The one snapshot path, for each interval and the end: the kernel's
    /// write totals and counters are read, names refreshed, each owner's
    /// row built once, and from those rows the JSON, the metrics and the
    /// summary (the interval's table, or the exit summary).
    fn report(&mut self, moment: Moment) {
        let last = matches!(moment, Moment::End { .. });
        self.kernel.read_writes();
        let mut drops = self.kernel.read_drops();
        for (a, b) in drops.iter_mut().zip(self.sink.undecodable) {
            *a += b;
        }
        if let Moment::End { lost } = moment {
            for (a, b) in drops.iter_mut().zip(lost) {
                *a += b;
            }
            // The programs' last diagnostics (--verbose), before the summary.
            cowtrace::bpf_log::flush();
            // A short last wait for attribution (of held events and of the
            // writers).
            let writers: Vec<u64> = self.kernel.writes().keys().map(|k| k.cgroup_id).collect();
            self.sink.finish(&writers);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let full = self.kernel.maps.map_full();
        let sink = &mut self.sink;
        sink.stats.refresh_names(|o| sink.attribution.describe(o));
        let totals = write_totals(self.kernel.writes(), &mut sink.attribution, last);
        let rows = sink.stats.rows(&totals);
        if last {
            sink.out.flush_events();
        }
        // Copy-ups are checked for changing nothing in the background: an
        // interval's report has the last check's result; the end waits a
        // little for a fresh one.
        let unchanged = if last {
            sink.layers.evaluate_and_wait(FINAL_CHECK_WAIT)
        } else {
            sink.layers.evaluate();
            sink.layers.unchanged()
        };
        if let Some(t) = &self.json {
            let info = run_info(&self.base, elapsed, drops, &self.kernel.maps, sink);
            let (per_layer, rows) = (&sink.per_layer, &rows);
            let containers = rows.iter().map(|(o, s, w)| {
                let mut v = report::container_json(o, s, w);
                per_layer.add_to_container_json(&o.id, &unchanged, &mut v);
                v
            });
            sink.out
                .json(t, |w| report::write_report(w, &info, containers));
        }
        // At the end the last numbers are served until the probes are
        // detached; then the endpoint closes with the process.
        if let Some((shared, _)) = &self.metrics {
            let forgotten = sink.attribution.exited_for(self.cli.metrics_forget_after);
            update_metrics(shared, &rows, drops, &full, &forgotten);
        }
        if sink.out.closed {
            return;
        }
        let map_full_line = cowtrace::kernel_maps::summary_line(&full);
        if !last {
            err_text(&live::summary_table(&rows, drops.iter().sum()));
            if let Some(l) = map_full_line {
                err_line(&l);
            }
            return;
        }
        let mut text = format!("\n--- cowtrace summary ({elapsed:.1} s) ---\n");
        text.push_str(&live::exit_summary(&rows, drops.iter().sum()));
        if let Some(l) = map_full_line {
            text.push_str(&l);
            text.push('\n');
        }
        for (o, _, _) in &rows {
            text.push_str(&sink.per_layer.table(&o.id, &o.name, &unchanged));
        }
        for (o, _, _) in &rows {
            let advice = advice::for_container(&o.id, &sink.per_layer, &unchanged);
            text.push_str(&advice::text(&o.name, &advice));
        }
        err_text(&text);
    }
}

/// How often the ring buffer is drained when records do not wake the
/// agent (below the kernel side's wake-up threshold), and held events are
/// looked at again. Each pass costs a wake-up: at 50 ms the idle agent
/// took 1.5% of a CPU in the 6.1 guest, at 200 ms 0.5%; an event waits up
/// to this long before it is shown.
const DRAIN_EVERY: Duration = Duration::from_millis(200);

/// The longest one pass over the ring buffer runs before the loop looks
/// at signals and timers again.
const DRAIN_SLICE: Duration = Duration::from_millis(20);

/// How long the final drain may take once the kernel side has stopped:
/// the final report and summary are out within 2 s of the signal.
const DRAIN_BUDGET: Duration = Duration::from_millis(800);

/// How long an event may wait for attribution to learn its cgroup before
/// it is booked to whatever is known then.
const HOLD: Duration = Duration::from_millis(1500);
/// At the end, how long the check of copy-ups that changed nothing may
/// take (inside the 2 s from signal to report; the last interval's check
/// is used if it takes longer).
const FINAL_CHECK_WAIT: Duration = Duration::from_millis(400);
/// How long `--changes` waits for a container's change list (after the
/// report and summary are out).
const CHANGES_WAIT: Duration = Duration::from_secs(5);
/// How long `--container` waits for the runtime's first answer.
const RUNTIME_WAIT: Duration = Duration::from_secs(5);
/// At the end, how long held events and writers may still wait for
/// attribution (inside the 2 s from signal to report).
const FINAL_ATTRIBUTION_WAIT: Duration = Duration::from_millis(300);

/// Everything an event passes through between the ring buffer and the
/// outputs: attribution, trigger classification, aggregation, printing.
/// Events whose cgroup attribution does not know yet are held (in order)
/// until it does, for at most [`HOLD`].
struct EventSink<'a> {
    pid_filter: &'a [u32],
    attribution: Attribution,
    held: HeldQueue,
    /// The held events before this index have had their layer asked.
    asked_upto: usize,
    /// A copy-up's trigger is named from its stack's frames, which the
    /// kernel names where it can; else kallsyms does, read on a thread of
    /// its own from the first copy-up (waited for when that copy-up leaves
    /// attribution): a run without copy-ups never reads it. The thread is
    /// made after the capabilities went (it has only those kept; the file
    /// was opened with them, and the kernel shows addresses by the
    /// opener's).
    frame_names: cowtrace::kernel_names::FrameNames,
    kallsyms_warned: bool,
    stats: Stats,
    out: Out,
    print_events: bool,
    mono_to_wall: i64,
    /// Which image layer each event's entry came from (events wait for
    /// the answer as they wait for attribution).
    layers: Layers,
    per_layer: PerLayer,
    /// The overlays events happened in, with their mount options.
    overlays: cowtrace::overlay_opts::Overlays,
    /// Records of a known kind that did not decode (a kernel side and
    /// agent out of step: never expected, never silent), reported as drops.
    undecodable: Drops,
}

impl EventSink<'_> {
    /// Takes the records the ring buffer holds, for at most [`DRAIN_SLICE`]
    /// (a storm of events must not keep the loop from seeing a signal),
    /// and hands on those whose owner is known. True if it stopped with
    /// records left.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> bool {
        let now = Instant::now();
        let until = now + DRAIN_SLICE;
        let mut n = 0u32;
        let mut more = false;
        while let Some(item) = rb.next() {
            self.take(&item, now);
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && (Instant::now() > until || shutdown::requested()) {
                more = true;
                break;
            }
        }
        self.release(Instant::now(), false);
        more
    }

    /// Like [`Self::drain`], but only until `deadline`; the records left
    /// are taken without being handled and counted per kind (returned, to
    /// be reported as drops).
    fn drain_until(&mut self, rb: &mut RingBuf<MapData>, deadline: Instant) -> Drops {
        let mut lost: Drops = Default::default();
        let mut n = 0u32;
        let mut late = false;
        while let Some(item) = rb.next() {
            if !late {
                n = n.wrapping_add(1);
                late = n.is_multiple_of(64) && Instant::now() > deadline;
            }
            if late {
                if let Some(k) = cowtrace::event::record_kind(&item) {
                    lost[k as usize] += 1;
                }
                continue;
            }
            self.take(&item, Instant::now());
        }
        self.release(Instant::now(), false);
        lost
    }

    /// Decodes one record and queues it, or counts it as dropped.
    fn take(&mut self, record: &[u8], now: Instant) {
        match decode(record) {
            Some(ev) => self.admit(ev, now),
            None => {
                if let Some(k) = cowtrace::event::record_kind(record) {
                    self.undecodable[k as usize] += 1;
                }
            }
        }
    }

    /// Queues an event for attribution (in arrival order).
    fn admit(&mut self, ev: KernelEvent, now: Instant) {
        if !self.pid_filter.is_empty() && !self.pid_filter.contains(&ev.pid) {
            return;
        }
        if matches!(ev.kind, cowtrace::event::Kind::CopyUp(_)) {
            self.frame_names.prepare();
        }
        self.held.push(Held {
            since: now,
            ev,
            layer: None,
        });
    }

    /// Hands on held events, oldest first, while their owner and layer
    /// are known (or they waited long enough, or `all`).
    fn release(&mut self, now: Instant, all: bool) {
        loop {
            let over_budget = self.held.over_budget();
            let Some(h) = self.held.front_mut() else {
                break;
            };
            let expired = all || now.duration_since(h.since) >= HOLD;
            let waited = expired || over_budget;
            // Set when the event goes out with something still unknown.
            let mut unknown = false;
            let by_cgroup = match self.attribution.owner_of_cgroup(h.ev.cgroup_id) {
                Some(o) => o,
                None if waited => {
                    unknown = true;
                    Owner::host()
                }
                None => break,
            };
            let fs = match self.attribution.filesystem_of(h.ev.dev) {
                // Its container is being described: the overlay may be its
                // root (podman's and containerd's, seen first by cgroup).
                Some(None) if !waited && self.attribution.describing(&by_cgroup.id) => break,
                Some(fs) => fs,
                None if waited => {
                    unknown = true;
                    None
                }
                None => break,
            };
            let asked = match h.layer.take() {
                Some(a) => a,
                None => self.layers.ask(fs.as_ref(), &h.ev),
            };
            // A waiting event's interest ends here exactly once: answered,
            // or given up on.
            let layer = match asked {
                Asked::Now(a) => a,
                Asked::Waiting(t) => match self.layers.take(&t, &h.ev) {
                    Some(a) => a,
                    None if waited => {
                        unknown = true;
                        self.layers.give_up(t, &h.ev)
                    }
                    None => {
                        h.layer = Some(Asked::Waiting(t));
                        break;
                    }
                },
            };
            let owner = self.attribution.owner(by_cgroup, fs.as_ref());
            let h = self.held.pop_front().expect("front exists");
            // Only the budget sent it out before its time.
            if unknown && !expired {
                self.held.count_released_early();
            }
            self.asked_upto = self.asked_upto.saturating_sub(1);
            self.handle(&owner, fs, &layer, &h.ev);
        }
        self.ask_ahead();
    }

    /// Asks the layer of every held event whose owner and filesystem are
    /// known, in order, not only the front one's: asked one at a time as
    /// each reached the front, a question cost a pass of the event loop
    /// (up to [`DRAIN_EVERY`]), so a container's burst of copy-ups waited longer than
    /// [`HOLD`] and went out with its layer unknown, and the worker's late
    /// answers piled up (the full soak's 79.5 MiB).
    fn ask_ahead(&mut self) {
        while let Some(h) = self.held.get_mut(self.asked_upto) {
            if h.layer.is_none() {
                let Some(owner) = self.attribution.owner_of_cgroup(h.ev.cgroup_id) else {
                    return;
                };
                let Some(fs) = self.attribution.filesystem_of(h.ev.dev) else {
                    return;
                };
                // As in `release`: a container still being described may
                // yet own this overlay.
                if fs.is_none() && self.attribution.describing(&owner.id) {
                    return;
                }
                h.layer = Some(self.layers.ask(fs.as_ref(), &h.ev));
            }
            self.asked_upto += 1;
        }
    }

    /// At the end: a short last wait for attribution (of held events and
    /// of `cgroups`, the writers), then everything out.
    fn finish(&mut self, cgroups: &[u64]) {
        let until = Instant::now() + FINAL_ATTRIBUTION_WAIT;
        let unknown = |a: &mut Attribution| {
            cgroups
                .iter()
                .filter(|&&c| a.owner_of_cgroup(c).is_none())
                .count()
        };
        while (!self.held.is_empty() || unknown(&mut self.attribution) > 0)
            && Instant::now() < until
        {
            self.release(Instant::now(), false);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.release(Instant::now(), true)
    }

    /// What made overlay copy up, from the copy-up's stack.
    fn trigger_of(&mut self, stack: &[u64]) -> cowtrace::kallsyms::Trigger {
        let trigger = self.frame_names.trigger(stack);
        if let Some(why) = self.frame_names.kernel_failed.take() {
            err_line(&format!(
                "cowtrace: warning: the kernel stopped naming copy-up stacks ({}): reading /proc/kallsyms instead",
                escape_str(&why)
            ));
        }
        trigger.unwrap_or_else(|| {
            if !std::mem::replace(&mut self.kallsyms_warned, true) {
                err_line("cowtrace: warning: cannot read /proc/kallsyms: copy-up triggers are reported as \"other\"");
            }
            cowtrace::kallsyms::Trigger::Other
        })
    }

    fn handle(&mut self, owner: &Owner, fs: Option<Owner>, layer: &LayerAnswer, ev: &KernelEvent) {
        let cause = match &ev.kind {
            // The kernel knows this one; the stack would show the remove
            // and say "parent".
            cowtrace::event::Kind::CopyUp(c) if c.removed => {
                Some(cowtrace::kallsyms::Trigger::Remove)
            }
            cowtrace::event::Kind::CopyUp(c) => Some(self.trigger_of(&c.stack)),
            _ => None,
        };
        let trigger = cause.map(|t| t.as_str());
        self.overlays.note(ev.dev, ev.pid, fs.as_ref());
        if let Some(f) = &fs {
            let setattr = cause == Some(cowtrace::kallsyms::Trigger::Setattr);
            self.per_layer.record(&f.id, layer, ev, setattr);
        }
        self.stats.record(owner, ev);
        if self.out.events.is_some() {
            let mut v = report::event_json(owner, fs.as_ref(), trigger, ev, self.mono_to_wall);
            v["layer"] = layer.event_json();
            self.out.event(&v);
        }
        if self.print_events {
            let wall = wall_clock((ev.ts_ns as i64).saturating_add(self.mono_to_wall) as u64);
            self.out
                .line(&live::event_line(&wall, owner, fs.as_ref(), trigger, ev));
        }
    }
}

/// Prints the attribution's warnings not shown yet, one line each.
fn show_warnings(attribution: &Attribution) {
    for w in attribution.take_warnings() {
        err_line(&format!("cowtrace: warning: {}", escape_str(&w)));
    }
}

/// Each owner's writes, from the kernel's per-(cgroup, device) totals.
/// Writes of a cgroup attribution does not know yet wait for the next
/// interval, unless this is the `last`.
fn write_totals(
    writes: &HashMap<WriteKey, WriteStats>,
    attribution: &mut Attribution,
    last: bool,
) -> HashMap<Owner, WriteTotals> {
    let mut totals: HashMap<Owner, WriteTotals> = HashMap::new();
    for (k, s) in writes {
        let by_cgroup = match attribution.owner_of_cgroup(k.cgroup_id) {
            Some(o) => o,
            None if last => Owner::host(),
            None => continue,
        };
        let fs = match attribution.filesystem_of(k.dev) {
            Some(fs) => fs,
            None if last => None,
            None => continue,
        };
        let owner = attribution.owner(by_cgroup, fs.as_ref());
        totals.entry(owner).or_default().add_kernel(s);
    }
    totals
}

/// What every report of a run shares.
struct RunBase {
    kernel: String,
    /// When the run started, as the report writes it.
    started_text: String,
    probes: serde_json::Value,
    mono_to_wall: i64,
    write_sample_every: u64,
    cgroup_mode: CgroupMode,
}

/// The report's facts that are not per container.
fn run_info<'a>(
    base: &'a RunBase,
    elapsed: f64,
    drops: Drops,
    kernel_maps: &KernelMaps,
    sink: &EventSink,
) -> RunInfo<'a> {
    RunInfo {
        kernel: &base.kernel,
        started: &base.started_text,
        duration_s: elapsed,
        probes: base.probes.clone(),
        drops,
        map_full: kernel_maps.map_full(),
        kernel_maps: kernel_maps.occupancy(),
        write_sample_every: base.write_sample_every,
        monotonic_to_unix_ns: base.mono_to_wall,
        cgroup_mode: base.cgroup_mode,
        overlays: sink.overlays.json(),
        agent: cowtrace::agent_cost::json(
            &cowtrace::agent_cost::measure(),
            &sink.held.stats(),
            sink.layers.question_counts(),
        ),
        trigger_names: sink.frame_names.source(),
    }
}

fn update_metrics(
    shared: &cowtrace::metrics_server::Shared,
    rows: &[Row<'_>],
    drops: Drops,
    map_full: &cowtrace::kernel_maps::MapFullCounts,
    forgotten: &std::collections::HashSet<String>,
) {
    // The JSON's `drops`: per event kind, then per map that was full.
    let mut drops: Vec<(String, u64)> = agent_ebpf::EventKind::ALL
        .iter()
        .map(|k| k.key().to_string())
        .zip(drops)
        .collect();
    drops.extend(
        agent_ebpf::MapFull::ALL
            .iter()
            .zip(map_full)
            .map(|(k, n)| (format!("map_full_{}", k.key()), *n)),
    );
    if let Ok(mut snap) = shared.lock() {
        snap.update(rows, &drops, forgotten);
    }
}

/// Wall-clock ns minus CLOCK_MONOTONIC ns, to place kernel timestamps.
fn mono_offset() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    (wall - mono) as i64
}

fn wall_clock(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        (ns / 1_000_000) % 1000
    )
}

fn fmt_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
