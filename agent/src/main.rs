//! `cowtrace`: what container copy-on-write really costs, live.
//!
//! main wires the pipeline: preflight checks -> probes attached ->
//! ring-buffer events decoded -> attributed -> aggregated -> printed and
//! exported; the write histograms are read from kernel maps each interval.

use agent_ebpf::{WriteKey, WriteStats};
use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use clap::{Parser, Subcommand};
use cowtrace::attribution::ContainerResolver;
use cowtrace::event::{decode, KernelEvent};
use cowtrace::kallsyms::Symbols;
use cowtrace::probes::{ProbeOptions, Probes};
use cowtrace::report::{self, RunInfo};
use cowtrace::stats::{Owner, Stats, WriteTotals};
use cowtrace::{doctor, live};
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
    Ok(Duration::from_secs_f64(secs))
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
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("cowtrace: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("cowtrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn probe_options(cli: &Cli, filter: bool) -> ProbeOptions {
    ProbeOptions {
        force_kprobes: cli.kprobes_only,
        filter,
    }
}

fn run_doctor(cli: &Cli) -> Result<(), Failure> {
    let (findings, _, _) = doctor::check(&probe_options(cli, false));
    print!("{}", doctor::render(&findings));
    match doctor::first_fatal(&findings) {
        Some(msg) => Err(Failure::Runtime(anyhow!("cannot run here: {msg}"))),
        None => {
            println!("cowtrace can run on this kernel");
            Ok(())
        }
    }
}

/// Where output goes; a closed stdout ends the run quietly.
struct Out {
    stdout: std::io::Stdout,
    events: Option<Box<dyn Write>>,
    closed: bool,
}

impl Out {
    fn line(&mut self, s: &str) {
        if self.closed {
            return;
        }
        let mut lock = self.stdout.lock();
        if writeln!(lock, "{s}").and_then(|_| lock.flush()).is_err() {
            self.closed = true;
        }
    }

    fn event(&mut self, v: &serde_json::Value) -> Result<()> {
        if let Some(w) = &mut self.events {
            if let Err(e) = writeln!(w, "{v}") {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    self.closed = true;
                    return Ok(());
                }
                return Err(anyhow!("writing events: {e}"));
            }
        }
        Ok(())
    }
}

fn check_writable(path: &std::path::Path) -> Result<(), Failure> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let probe = dir.join(format!(".cowtrace-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Failure::Usage(format!(
            "cannot write {}: {e}",
            path.display()
        ))),
    }
}

async fn trace(cli: Cli) -> Result<(), Failure> {
    let started_wall = SystemTime::now();
    let filter = !cli.containers.is_empty() || !cli.pids.is_empty() || !cli.cgroups.is_empty();
    let opts = probe_options(&cli, filter);

    // Usage first: these need no privileges.
    if let Some(p) = &cli.json {
        check_writable(p)?;
    }
    let events_out: Option<Box<dyn Write>> = match cli.events.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| Failure::Usage(format!("cannot write {p}: {e}")))?,
        ))),
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

    let (findings, syms, btf) = doctor::check(&opts);
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

    let mut resolver = ContainerResolver::new();
    let mut container_filter = Vec::new();
    for name in &cli.containers {
        match resolver.find(name) {
            Some(c) => container_filter.push(c),
            None => {
                let mut names: Vec<String> =
                    resolver.containers().into_iter().map(|c| c.name).collect();
                names.sort();
                let list = if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                };
                return Err(Failure::Usage(format!(
                    "no running container {name:?}; running containers: {list}"
                )));
            }
        }
    }
    if let Some(w) = &resolver.warned {
        eprintln!("cowtrace: warning: {w}");
    }

    // Signals are ours before `tracing` is printed: a script that sends
    // SIGINT right after that line must get a complete report.
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let t_attach = Instant::now();
    let mut probes = Probes::attach(&syms, &btf, &opts).map_err(Failure::Runtime)?;
    // BTF is only needed to attach; give its memory back.
    drop(btf);
    // Filter maps filled before events can pass: with the filter flag set
    // and empty maps, nothing passes until now. A container is both its
    // processes (cgroup) and its root filesystem (overlay device), so a
    // `docker cp` into it counts too.
    for c in &container_filter {
        if let Some(id) = c
            .pid
            .and_then(|p| cowtrace::cgroup::cgroup_id_of_pid(p).ok())
        {
            cgroup_ids.push(id);
        }
    }
    fill_filter::<u64>(&mut probes, "CGROUP_FILTER", &cgroup_ids)?;
    let devs: Vec<u32> = container_filter.iter().filter_map(|c| c.root_dev).collect();
    fill_filter::<u32>(&mut probes, "DEV_FILTER", &devs)?;
    let symbols = syms.table;
    let kernel = doctor::kernel_release();
    eprintln!(
        "tracing overlayfs copy-up on {kernel}: {} probes attached in {} ms{}. Ctrl-C to stop.",
        probes.report.points.len(),
        t_attach.elapsed().as_millis(),
        if filter {
            ", filtered in the kernel"
        } else {
            ""
        }
    );

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

    let mut out = Out {
        stdout: std::io::stdout(),
        events: events_out,
        closed: false,
    };
    let print_events = !cli.quiet && cli.events.as_deref() != Some("-");
    if print_events {
        out.line(&live::event_header());
    }
    let mut stats = Stats::default();
    for c in &container_filter {
        stats.touch(&Owner {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
        });
    }
    let mut write_snapshot: HashMap<WriteKey, WriteStats> = HashMap::new();
    let mut sink = EventSink {
        pid_filter: &cli.pids,
        resolver,
        symbols,
        stats,
        out,
        print_events,
        mono_to_wall: mono_offset(),
    };

    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cli.interval, cli.interval);
    let mut drain = tokio::time::interval(Duration::from_millis(50));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();

    let probes_json = serde_json::to_value(&probes.report.points).unwrap_or_default();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer")?;
                sink.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            // Records below the kernel's wake-up threshold arrive without a
            // wake-up: collect them at least this often.
            _ = drain.tick() => sink.drain(ring.get_mut())?,
            _ = tick.tick() => {
                read_writes(&writes, &mut write_snapshot);
                let d = read_drops(&drops);
                let rows = owner_rows(&sink.stats, &write_snapshot, &mut sink.resolver);
                if !sink.out.closed {
                    let refs: Vec<_> = rows.iter().map(|(o, s, w)| (o, s, w)).collect();
                    eprint!("{}", live::summary_table(&refs, d.iter().sum()));
                }
                if let Some(p) = &cli.json {
                    let v = build_report(&kernel, started_wall, started.elapsed().as_secs_f64(), &probes_json, d, &rows);
                    report::write_atomic(p, &v)?;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        if sink.out.closed {
            break;
        }
    }

    // Drain what the kernel delivered before we stop, then detach.
    sink.drain(ring.get_mut())?;
    read_writes(&writes, &mut write_snapshot);
    let d = read_drops(&drops);
    drop(probes);
    let elapsed = started.elapsed().as_secs_f64();
    let rows = owner_rows(&sink.stats, &write_snapshot, &mut sink.resolver);
    if let Some(p) = &cli.json {
        let v = build_report(&kernel, started_wall, elapsed, &probes_json, d, &rows);
        report::write_atomic(p, &v)?;
    }
    if let Some(w) = &mut sink.out.events {
        let _ = w.flush();
    }
    if !sink.out.closed {
        let refs: Vec<_> = rows.iter().map(|(o, s, w)| (o, s, w)).collect();
        let mut text = format!("\n--- cowtrace summary ({elapsed:.1} s) ---\n");
        text.push_str(&live::exit_summary(&refs, d.iter().sum()));
        eprint!("{text}");
    }
    Ok(())
}

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

/// Everything an event passes through between the ring buffer and the
/// outputs: attribution, trigger classification, aggregation, printing.
struct EventSink<'a> {
    pid_filter: &'a [u32],
    resolver: ContainerResolver,
    symbols: Symbols,
    stats: Stats,
    out: Out,
    print_events: bool,
    mono_to_wall: i128,
}

impl EventSink<'_> {
    /// Takes every record the ring buffer holds now.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = rb.next() {
            if let Some(ev) = decode(&item) {
                self.handle(&ev)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: &KernelEvent) -> Result<()> {
        if !self.pid_filter.is_empty() && !self.pid_filter.contains(&ev.pid) {
            return Ok(());
        }
        let owner = self.resolver.owner_of_cgroup(ev.cgroup_id);
        let fs = self.resolver.owner_of_dev(ev.dev);
        let trigger = match &ev.kind {
            cowtrace::event::Kind::CopyUp(c) => {
                Some(self.symbols.classify_copy_up(&c.stack).as_str())
            }
            _ => None,
        };
        self.stats.record(&owner, ev);
        if self.out.events.is_some() {
            self.out
                .event(&report::event_json(&owner, fs.as_ref(), trigger, ev))?;
        }
        if self.print_events {
            let wall = wall_clock((ev.ts_ns as i128 + self.mono_to_wall) as u64);
            self.out
                .line(&live::event_line(&wall, &owner, fs.as_ref(), trigger, ev));
        }
        Ok(())
    }
}

type Row = (Owner, cowtrace::stats::OwnerStats, WriteTotals);

fn owner_rows(
    stats: &Stats,
    writes: &HashMap<WriteKey, WriteStats>,
    resolver: &mut ContainerResolver,
) -> Vec<Row> {
    let mut totals: HashMap<Owner, WriteTotals> = HashMap::new();
    for (k, s) in writes {
        let owner = resolver.owner_of_cgroup(k.cgroup_id);
        totals.entry(owner).or_default().add_kernel(s);
    }
    let mut rows: Vec<Row> = stats
        .owners
        .iter()
        .map(|(o, s)| (o.clone(), s.clone(), totals.remove(o).unwrap_or_default()))
        .collect();
    for (o, w) in totals {
        rows.push((o, Default::default(), w));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn build_report(
    kernel: &str,
    started: SystemTime,
    elapsed: f64,
    probes: &serde_json::Value,
    drops: [u64; 3],
    rows: &[Row],
) -> serde_json::Value {
    let started = fmt_rfc3339(started);
    let info = RunInfo {
        kernel,
        started: &started,
        duration_s: elapsed,
        probes: probes.clone(),
        drops,
        write_sample_every: 1,
    };
    let containers = rows
        .iter()
        .map(|(o, s, w)| report::container_json(o, s, w))
        .collect();
    report::report_json(&info, containers)
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
fn mono_offset() -> i128 {
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
    wall - mono
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
