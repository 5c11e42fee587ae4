//! `cowtrace`: what container copy-on-write really costs, live.
//!
//! main wires the pipeline: preflight checks -> probes attached ->
//! ring-buffer events decoded -> attributed -> aggregated -> printed and
//! exported; the write histograms are read from kernel maps each interval.

use agent_ebpf::{WriteKey, WriteStats};
use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use clap::{Parser, Subcommand};
use cowtrace::attribution::{Attribution, FilterUpdate};
use cowtrace::event::escape_str;
use cowtrace::event::{decode, KernelEvent};
use cowtrace::kallsyms::Symbols;
use cowtrace::kernel_maps::KernelMaps;
use cowtrace::layers::totals::PerLayer;
use cowtrace::layers::worker::{Layers, UnchangedReport};
use cowtrace::layers::{advice, changes, LayerAnswer};
use cowtrace::output::{err_line, err_text, EventsTarget, JsonTarget};
use cowtrace::probes::{ProbeOptions, Probes};
use cowtrace::report::{self, RunInfo};
use cowtrace::stats::{Owner, Row, Stats, WriteTotals};
use cowtrace::{doctor, live, privileges, shutdown};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::unix::AsyncFd;
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

    /// The stage that ends now.
    fn done(&mut self, what: &str) {
        let now = Instant::now();
        self.took(what, now - self.last);
        self.last = now;
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
    }
}

fn run_doctor(cli: &Cli) -> Result<Ended, Failure> {
    let (findings, _, _) = doctor::check(&probe_options(cli, false), doctor::TracingProbe::Ask);
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

    fn json(&mut self, target: &JsonTarget, v: &serde_json::Value) {
        match target.write(&report::to_bytes(v)) {
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

async fn trace(cli: Cli) -> Result<Ended, Failure> {
    let started_wall = SystemTime::now();
    let t_start = Instant::now();
    let filter = !cli.containers.is_empty() || !cli.pids.is_empty() || !cli.cgroups.is_empty();
    let opts = probe_options(&cli, filter);

    // Usage first: these need no privileges. Outputs are checked (and the
    // events file opened) before anything is attached.
    let json = match &cli.json {
        Some(p) => Some(JsonTarget::open(p).map_err(|r| Failure::Usage(r.0))?),
        None => None,
    };
    let events_out = match cli.events.as_deref() {
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
    let mut cgroup_ids = Vec::new();
    for p in &cli.cgroups {
        let md = std::fs::metadata(p)
            .map_err(|e| Failure::Usage(format!("--cgroup {}: {e}", p.display())))?;
        cgroup_ids.push(md.ino());
    }
    for pid in &cli.pids {
        let id = cowtrace::cgroup::cgroup_id_of_pid(*pid).map_err(|e| {
            Failure::Usage(format!(
                "--pid {pid}: {e} (no such process, or no cgroup v2)"
            ))
        })?;
        cgroup_ids.push(id);
    }

    // Bound before attaching: a port in use is said before anything is
    // traced, and a port below 1024 needs a capability given up later.
    let metrics_listener = match &cli.metrics {
        Some(addr) => Some(
            cowtrace::metrics_server::bind(addr)
                .await
                .map_err(Failure::Usage)?,
        ),
        None => None,
    };

    let mut stages = Stages::new(cli.verbose);
    let (findings, syms, btf) = doctor::check(&opts, doctor::TracingProbe::Skip);
    stages.done("kernel checks, BTF and kallsyms");
    if let Some(msg) = doctor::first_fatal(&findings) {
        return Err(Failure::Runtime(anyhow!(
            "cannot run here: {msg} (see `cowtrace doctor`)"
        )));
    }
    let (syms, btf) = match (syms, btf) {
        (Some(s), Some(b)) => (s, b),
        _ => {
            return Err(Failure::Runtime(anyhow!(
                "cannot read kernel symbols or BTF"
            )))
        }
    };

    // Attribution runs on its own thread from here on; only `--container`
    // waits for the runtime's first answer (bounded).
    let attribution = Attribution::start();
    // Image layers are looked up on a thread of their own too; it learns
    // the running containers' layers while the probes attach.
    let layers = Layers::start();
    let mut container_filter = Vec::new();
    if !cli.containers.is_empty() && !attribution.wait_ready(RUNTIME_WAIT) {
        return Err(Failure::Runtime(anyhow!(
            "the container runtime did not answer within {} s: cannot find --container {}",
            RUNTIME_WAIT.as_secs(),
            cli.containers.join(", ")
        )));
    }
    for name in &cli.containers {
        match attribution.find(name) {
            Some(c) => container_filter.push(c),
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
    attribution.follow(container_filter.iter().map(|c| c.info.name.clone()));
    stages.done("attribution started");
    if let Some(w) = attribution.warning() {
        err_line(&format!("cowtrace: warning: {}", escape_str(&w)));
    }

    // Signals are ours before `tracing` is printed: a script that sends
    // SIGINT right after that line must get a complete report.
    // SIGHUP too: a dropped ssh session must end the run the same way.
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // A second signal ends the process at once, after detaching.
    shutdown::install().context("signal handlers")?;
    let t_attach = Instant::now();
    let mut probes = Probes::attach(&syms, &btf, &opts).map_err(Failure::Runtime)?;
    for (stage, took) in &probes.stages {
        stages.took(stage, *took);
    }
    stages.done("eBPF object loaded and attached, in all");
    // BTF is only needed to attach; give its memory back.
    drop(btf);
    // Filter maps filled before events can pass: with the filter flag set
    // and empty maps, nothing passes until now. A container is both its
    // processes (cgroup) and its root filesystem (overlay device), so a
    // `docker cp` into it counts too.
    cgroup_ids.extend(container_filter.iter().filter_map(|c| c.cgroup_id));
    fill_filter::<u64>(&mut probes, "CGROUP_FILTER", &cgroup_ids)?;
    let devs: Vec<u32> = container_filter.iter().filter_map(|c| c.root_dev).collect();
    fill_filter::<u32>(&mut probes, "DEV_FILTER", &devs)?;
    // Attached: give up every capability but the few the run still needs
    // (README, "Privileges").
    privileges::drop_after_attach().map_err(Failure::Runtime)?;
    stages.done("filters filled, capabilities dropped");
    let symbols = syms.table;
    let kernel = doctor::kernel_release();
    err_line(&format!(
        "tracing overlayfs copy-up on {kernel}: {} probes attached in {} ms{}. Ctrl-C to stop.",
        probes.report.points.len(),
        t_attach.elapsed().as_millis(),
        if filter {
            ", filtered in the kernel"
        } else {
            ""
        }
    ));

    // Before main takes maps it reads itself (WRITES).
    let kernel_maps = KernelMaps::open(&probes.ebpf)?;
    let metrics: cowtrace::metrics_server::Shared = Default::default();
    let metrics_task = metrics_listener.map(|l| {
        err_line(&format!("metrics at http://{}/metrics", l.addr));
        *metrics.lock().unwrap() = cowtrace::metrics::Snapshot::started(
            probes.report.points.len(),
            t_start.elapsed().as_secs_f64(),
        );
        cowtrace::metrics_server::serve(l, metrics.clone())
    });

    let ring = RingBuf::try_from(probes.ebpf.take_map("EVENTS").context("EVENTS map")?)
        .context("EVENTS map")?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
    let writes: PerCpuHashMap<MapData, WriteKey, WriteStats> =
        PerCpuHashMap::try_from(probes.ebpf.take_map("WRITES").context("WRITES map")?)
            .context("WRITES map")?;
    let drops: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(probes.ebpf.take_map("DROPS").context("DROPS map")?)
            .context("DROPS map")?;

    let cgroup_names: cowtrace::attribution::KernelCgroupNames = aya::maps::HashMap::try_from(
        probes
            .ebpf
            .take_map("CGROUP_NAMES")
            .context("CGROUP_NAMES map")?,
    )
    .context("CGROUP_NAMES map")?;
    attribution.use_kernel_names(cgroup_names);

    let mut out = Out {
        closed: false,
        stdout_failed: false,
        events: events_out,
        json_failed: false,
        failed: false,
    };
    let print_events = !cli.quiet && cli.events.as_deref() != Some("-");
    if print_events {
        out.line(&live::event_header());
    }
    let mut stats = Stats::default();
    for c in &container_filter {
        stats.touch(&Owner {
            id: c.info.id.clone(),
            name: c.info.name.clone(),
            image: c.info.image.clone(),
            pod: c.info.pod.clone(),
        });
    }
    let mut write_snapshot: HashMap<WriteKey, WriteStats> = HashMap::new();
    let mut sink = EventSink {
        pid_filter: &cli.pids,
        attribution,
        held: std::collections::VecDeque::new(),
        symbols,
        stats,
        out,
        print_events,
        mono_to_wall: mono_offset(),
        layers,
        per_layer: PerLayer::default(),
    };

    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cli.interval, cli.interval);
    let mut drain = tokio::time::interval(Duration::from_millis(50));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();

    let base = RunBase {
        kernel: kernel.clone(),
        started: started_wall,
        probes: serde_json::to_value(&probes.report.points).unwrap_or_default(),
        mono_to_wall: sink.mono_to_wall,
        write_sample_every: cli.write_sample as u64,
    };

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer")?;
                // Left ready while records remain: the loop comes back
                // after looking at the other branches.
                if sink.drain(guard.get_inner_mut()) {
                    drop(guard);
                    // Let the runtime look at its timers and signals (a
                    // branch that is always ready never yields by itself).
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            // Records below the kernel's wake-up threshold arrive without a
            // wake-up: collect them at least this often (and release held
            // events whose owner is now known).
            _ = drain.tick() => {
                let _ = sink.drain(ring.get_mut());
                sink.out.flush_events();
                // Exited containers keep their totals, not their files.
                for gone in sink.attribution.take_exited() {
                    sink.stats.compact(&gone);
                }
            }
            Some(update) = sink.attribution.filter_updates.recv() => {
                // A followed container (re)started: trace its new cgroup
                // and root filesystem too.
                follow_in_kernel(&mut probes, &update)?;
            }
            _ = tick.tick() => {
                read_writes(&writes, &mut write_snapshot);
                let d = read_drops(&drops);
                let full = kernel_maps.map_full();
                sink.stats.refresh_names(|o| sink.attribution.describe(o));
                let totals = write_totals(&write_snapshot, &mut sink.attribution, false);
                let rows = sink.stats.rows(&totals);
                if !sink.out.closed {
                    err_text(&live::summary_table(&rows, d.iter().sum()));
                    if let Some(l) = cowtrace::kernel_maps::summary_line(&full) {
                        err_line(&l);
                    }
                }
                // Copy-ups are checked for changing nothing in the
                // background: this report has the last check's result.
                sink.layers.evaluate();
                if let Some(t) = &json {
                    let elapsed = started.elapsed().as_secs_f64();
                    let unchanged = sink.layers.unchanged();
                    let v = build_report(
                        &base,
                        elapsed,
                        d,
                        &kernel_maps,
                        &rows,
                        (&sink.per_layer, &unchanged),
                    );
                    sink.out.json(t, &v);
                }
                if metrics_task.is_some() {
                    let forgotten = sink.attribution.exited_for(cli.metrics_forget_after);
                    update_metrics(&metrics, &rows, d, &full, &forgotten);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        // Seen here too, whatever the runtime polled: the signal handler
        // counts signals, and the deadline is a clock.
        if sink.out.closed
            || shutdown::requested()
            || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            break;
        }
    }

    // The end. The kernel side stops first: from then on no event, drop or
    // write is added, so the drain below ends even under a storm of
    // events; what it cannot handle within its budget is counted as
    // dropped, never silently lost. Nothing here waits for the runtime:
    // held events get a last short chance to be attributed from what the
    // attribution worker knows. The final report and summary are written
    // before the probes are detached (which can take seconds on a busy
    // machine).
    let ending = Instant::now();
    let mut attached = Some(probes);
    if let Some(Err(e)) = attached.as_mut().map(|p| p.stop_events()) {
        // Not expected; then detach first, which stops events too.
        err_line(&format!(
            "cowtrace: warning: {e:#}; detaching before the final drain"
        ));
        if let Some(p) = attached.take() {
            p.detach();
        }
    }
    let lost = sink.drain_until(ring.get_mut(), ending + DRAIN_BUDGET);
    read_writes(&writes, &mut write_snapshot);
    let mut d = read_drops(&drops);
    for (a, b) in d.iter_mut().zip(lost) {
        *a += b;
    }
    let writers: Vec<u64> = write_snapshot.keys().map(|k| k.cgroup_id).collect();
    sink.finish(&writers);
    let elapsed = started.elapsed().as_secs_f64();
    sink.stats.refresh_names(|o| sink.attribution.describe(o));
    let totals = write_totals(&write_snapshot, &mut sink.attribution, true);
    let rows = sink.stats.rows(&totals);
    sink.out.flush_events();
    let unchanged = sink.layers.evaluate_and_wait(FINAL_CHECK_WAIT);
    if let Some(t) = &json {
        let v = build_report(
            &base,
            elapsed,
            d,
            &kernel_maps,
            &rows,
            (&sink.per_layer, &unchanged),
        );
        sink.out.json(t, &v);
    }
    // The last numbers are served until the probes are detached; then the
    // endpoint closes with the process.
    if metrics_task.is_some() {
        let forgotten = sink.attribution.exited_for(cli.metrics_forget_after);
        update_metrics(&metrics, &rows, d, &kernel_maps.map_full(), &forgotten);
    }
    if !sink.out.closed {
        let mut text = format!("\n--- cowtrace summary ({elapsed:.1} s) ---\n");
        text.push_str(&live::exit_summary(&rows, d.iter().sum()));
        if let Some(l) = cowtrace::kernel_maps::summary_line(&kernel_maps.map_full()) {
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
        if cli.changes {
            for c in &container_filter {
                err_text(&match sink.layers.changes(&c.info.id, CHANGES_WAIT) {
                    Some(list) => changes::render(&c.info.name, &list),
                    None => format!(
                        "changes in {}: not known (the runtime did not give its layers in time)\n",
                        escape_str(&c.info.name)
                    ),
                });
            }
        }
    }
    // Only now, with everything written: detach (all probes at once).
    if let Some(p) = attached.take() {
        p.detach();
    }
    Ok(if sink.out.failed {
        Ended::OutputFailed
    } else {
        Ended::Clean
    })
}

/// The longest one pass over the ring buffer runs before the loop looks
/// at signals and timers again.
const DRAIN_SLICE: Duration = Duration::from_millis(20);

/// How long the final drain may take once the kernel side has stopped:
/// the final report and summary are out within 2 s of the signal.
const DRAIN_BUDGET: Duration = Duration::from_millis(800);

fn fill_filter<K: aya::Pod>(probes: &mut Probes, map: &str, keys: &[K]) -> Result<()> {
    let mut m: BpfHashMap<_, K, u8> = BpfHashMap::try_from(
        probes
            .ebpf
            .map_mut(map)
            .with_context(|| format!("{map} map"))?,
    )
    .with_context(|| format!("{map} map"))?;
    for k in keys {
        m.insert(k, 1, 0)
            .with_context(|| format!("filling {map}"))?;
    }
    Ok(())
}

/// How long an event may wait for attribution to learn its cgroup before
/// it is booked to whatever is known then.
const HOLD: Duration = Duration::from_millis(1500);
/// At most this many events wait; past it the oldest go out as they are.
const MAX_HELD: usize = 65_536;
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
    held: std::collections::VecDeque<(Instant, KernelEvent)>,
    symbols: Symbols,
    stats: Stats,
    out: Out,
    print_events: bool,
    mono_to_wall: i64,
    /// Which image layer each event's entry came from (events wait for
    /// the answer as they wait for attribution).
    layers: Layers,
    per_layer: PerLayer,
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
            if let Some(ev) = decode(&item) {
                self.admit(ev, now);
            }
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
    fn drain_until(&mut self, rb: &mut RingBuf<MapData>, deadline: Instant) -> [u64; 3] {
        let mut lost = [0u64; 3];
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
            if let Some(ev) = decode(&item) {
                self.admit(ev, Instant::now());
            }
        }
        self.release(Instant::now(), false);
        lost
    }

    /// Queues an event for attribution (in arrival order).
    fn admit(&mut self, ev: KernelEvent, now: Instant) {
        if !self.pid_filter.is_empty() && !self.pid_filter.contains(&ev.pid) {
            return;
        }
        self.held.push_back((now, ev));
    }

    /// Hands on held events, oldest first, while their owner is known (or
    /// they waited long enough, or `all`).
    fn release(&mut self, now: Instant, all: bool) {
        while let Some((since, ev)) = self.held.front() {
            let waited = all || now.duration_since(*since) >= HOLD || self.held.len() > MAX_HELD;
            let owner = match self.attribution.owner_of_cgroup(ev.cgroup_id) {
                Some(o) => o,
                None if waited => Owner::host(),
                None => break,
            };
            let fs = self.attribution.owner_of_dev(ev.dev);
            let layer = match self.layers.lookup(fs.as_ref(), ev) {
                Some(l) => l,
                None if waited => self.layers.too_slow(fs.as_ref(), ev),
                None => break,
            };
            let (_, ev) = self.held.pop_front().expect("front exists");
            self.handle(&owner, fs, &layer, &ev);
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

    fn handle(&mut self, owner: &Owner, fs: Option<Owner>, layer: &LayerAnswer, ev: &KernelEvent) {
        let cause = match &ev.kind {
            cowtrace::event::Kind::CopyUp(c) => Some(self.symbols.classify_copy_up(&c.stack)),
            _ => None,
        };
        let trigger = cause.map(|t| t.as_str());
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

/// Keeps the kernel filters on a followed container: its new cgroup and
/// root device after a (re)start, minus a device it gave up.
fn follow_in_kernel(probes: &mut Probes, update: &FilterUpdate) -> Result<()> {
    match *update {
        FilterUpdate::Add {
            cgroup_id,
            root_dev,
        } => {
            if let Some(cg) = cgroup_id {
                fill_filter::<u64>(probes, "CGROUP_FILTER", &[cg])?;
            }
            if let Some(dev) = root_dev {
                fill_filter::<u32>(probes, "DEV_FILTER", &[dev])?;
            }
        }
        FilterUpdate::RemoveDev(dev) => {
            let mut m: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
                probes
                    .ebpf
                    .map_mut("DEV_FILTER")
                    .context("DEV_FILTER map")?,
            )
            .context("DEV_FILTER map")?;
            // Already gone is fine.
            let _ = m.remove(&dev);
        }
    }
    Ok(())
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
        let owner = match attribution.owner_of_cgroup(k.cgroup_id) {
            Some(o) => o,
            None if last => Owner::host(),
            None => continue,
        };
        totals.entry(owner).or_default().add_kernel(s);
    }
    totals
}

/// What every report of a run shares.
struct RunBase {
    kernel: String,
    started: SystemTime,
    probes: serde_json::Value,
    mono_to_wall: i64,
    write_sample_every: u64,
}

fn build_report(
    base: &RunBase,
    elapsed: f64,
    drops: [u64; 3],
    kernel_maps: &KernelMaps,
    rows: &[Row<'_>],
    (per_layer, unchanged): (&PerLayer, &UnchangedReport),
) -> serde_json::Value {
    let started = fmt_rfc3339(base.started);
    let info = RunInfo {
        kernel: &base.kernel,
        started: &started,
        duration_s: elapsed,
        probes: base.probes.clone(),
        drops,
        map_full: kernel_maps.map_full(),
        kernel_maps: kernel_maps.occupancy(),
        write_sample_every: base.write_sample_every,
        monotonic_to_unix_ns: base.mono_to_wall,
    };
    let containers = rows
        .iter()
        .map(|(o, s, w)| {
            let mut v = report::container_json(o, s, w);
            per_layer.add_to_container_json(&o.id, unchanged, &mut v);
            v
        })
        .collect();
    report::report_json(&info, containers)
}

fn update_metrics(
    shared: &cowtrace::metrics_server::Shared,
    rows: &[Row<'_>],
    drops: [u64; 3],
    map_full: &cowtrace::kernel_maps::MapFullCounts,
    forgotten: &std::collections::HashSet<String>,
) {
    // The JSON's `drops`: per event kind, then per map that was full.
    let kinds = ["copy_up", "whiteout", "opaque_dir"];
    let mut drops: Vec<(String, u64)> = kinds.into_iter().map(String::from).zip(drops).collect();
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

fn read_writes(
    map: &PerCpuHashMap<MapData, WriteKey, WriteStats>,
    snap: &mut HashMap<WriteKey, WriteStats>,
) {
    for item in map.iter().flatten() {
        let (k, per_cpu) = item;
        let mut sum: WriteStats = unsafe { std::mem::zeroed() };
        for s in per_cpu.iter() {
            sum.count += s.count;
            sum.bytes += s.bytes;
            sum.timed += s.timed;
            for (a, b) in sum.buckets.iter_mut().zip(s.buckets.iter()) {
                *a += b;
            }
        }
        snap.insert(k, sum);
    }
}

fn read_drops(map: &PerCpuArray<MapData, u64>) -> [u64; 3] {
    let mut d = [0u64; 3];
    for (i, slot) in d.iter_mut().enumerate() {
        if let Ok(v) = map.get(&(i as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    d
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
