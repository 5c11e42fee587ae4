//! `cowtrace-bench`: what tracing costs the workload, measured side by side
//! in one guest (`cargo xtask bench` runs it).
//!
//! Method (each choice removes a bias the first version had):
//! - One lower layer, built once; every measurement gets a fresh upper
//!   layer over it, so each copy-up copies the same files.
//! - Each metric in its own tracer run, after `sync` and dropped caches:
//!   a copy-up's fsync does not wait behind writeback an earlier phase left.
//! - The tracer order is rotated every round, and each ratio comes with a
//!   95% confidence interval from the per-round ratios (a tracer and `none`
//!   of the same round are paired, which cancels slow drift).
//! - A measure noise cannot blur: with BPF run-time statistics on, every
//!   program a tracer loaded reports its run time and run count, giving
//!   nanoseconds of BPF and probe hits per copy-up, per whiteout and per
//!   write (the statistics' own clock reads are not in the throughput runs).
//!
//! Usage: `cowtrace-bench OUT.json [ROUNDS] [SCALE] [MINUTES]`; SCALE
//! multiplies the number of operations per phase (1.0 by default); no
//! round starts after MINUTES (0: no limit). Progress goes to stderr.

use cowtrace_tests::{make_file, Overlay};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// bpftrace at its most minimal: the same attach points as cowtrace's
/// copy-up, whiteout and write probes, counters and hist()s only.
const BPFTRACE_MIN: &str = include_str!("bench.bt");
/// bpftrace recording what cowtrace records: per copy-up and whiteout a
/// record with path, stack (the trigger), pid, cgroup, latencies and bytes;
/// writes as per-cgroup histograms.
const BPFTRACE_FULL: &str = include_str!("bench-full.bt");

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tracer {
    None,
    Cowtrace,
    Bpftrace,
    BpftraceFull,
}

const TRACERS: [Tracer; 4] = [
    Tracer::None,
    Tracer::Cowtrace,
    Tracer::Bpftrace,
    Tracer::BpftraceFull,
];

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Cowtrace => "cowtrace",
            Tracer::Bpftrace => "bpftrace",
            Tracer::BpftraceFull => "bpftrace_full",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Metric {
    Writes,
    CopyUp1k,
    CopyUp1m,
    Whiteouts,
}

const METRICS: [Metric; 4] = [
    Metric::Writes,
    Metric::CopyUp1k,
    Metric::CopyUp1m,
    Metric::Whiteouts,
];

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::Writes => "writes_per_s",
            Metric::CopyUp1k => "copy_up_1k_per_s",
            Metric::CopyUp1m => "copy_up_1m_per_s",
            Metric::Whiteouts => "whiteouts_per_s",
        }
    }

    /// What one operation of the phase is, for the BPF-per-event table.
    fn event(self) -> &'static str {
        match self {
            Metric::Writes => "write",
            Metric::CopyUp1k => "copy_up_1k",
            Metric::CopyUp1m => "copy_up_1m",
            Metric::Whiteouts => "whiteout",
        }
    }
}

/// Operations per phase at SCALE 1: each phase lasts seconds under TCG.
struct Sizes {
    writes: usize,
    small: usize,
    big: usize,
    removals: usize,
    burst: usize,
}

impl Sizes {
    fn scaled(f: f64) -> Sizes {
        let n = |x: f64| ((x * f) as usize).max(10);
        Sizes {
            writes: n(100_000.0) & !1,
            small: n(3000.0),
            big: n(300.0),
            removals: n(5000.0),
            burst: n(5000.0),
        }
    }

    fn of(&self, m: Metric) -> usize {
        match m {
            Metric::Writes => self.writes,
            Metric::CopyUp1k => self.small,
            Metric::CopyUp1m => self.big,
            Metric::Whiteouts => self.removals,
        }
    }
}

/// A running tracer and what it took to get ready.
struct Running {
    child: Option<Child>,
    attach_s: f64,
    started: Instant,
    /// CPU seconds it had used when it became ready (start-up: parsing
    /// BTF, verifying programs, attaching), kept apart from its cost while
    /// tracing.
    cpu_at_ready: f64,
}

fn start(t: Tracer, events: bool) -> Running {
    let t0 = Instant::now();
    let script = |text: &str| {
        std::fs::write("/tmp/bench.bt", text).unwrap();
        let mut c = Command::new("bpftrace");
        c.arg("/tmp/bench.bt");
        c
    };
    let mut cmd = match t {
        Tracer::None => {
            return Running {
                child: None,
                attach_s: 0.0,
                started: t0,
                cpu_at_ready: 0.0,
            }
        }
        Tracer::Cowtrace => {
            let mut c = Command::new(cowtrace_tests::cowtrace_bin());
            c.args([
                "--quiet",
                "--interval",
                "1h",
                "--json",
                "/tmp/bench-report.json",
            ]);
            if events {
                c.args(["--events", "/tmp/bench-events.ndjson"]);
            }
            c
        }
        Tracer::Bpftrace => script(BPFTRACE_MIN),
        Tracer::BpftraceFull => script(BPFTRACE_FULL),
    };
    let _ = std::fs::remove_file("/tmp/bench-report.json");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer");
    // cowtrace says `tracing` on stderr once attached; the bpftrace scripts
    // print `ready` from their BEGIN probe, which runs after attaching.
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) if line.starts_with("tracing") || line.trim() == "ready" => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("{} never became ready: {seen:?}", t.name()),
        }
    }
    std::thread::spawn(move || for _ in rx {});
    let attach_s = t0.elapsed().as_secs_f64();
    let (cpu_at_ready, _) = cost(child.id());
    Running {
        child: Some(child),
        attach_s,
        started: Instant::now(),
        cpu_at_ready,
    }
}

/// CPU seconds (user+system) and peak RSS (KiB) of a live process.
fn cost(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// What a tracer cost from its start to its stop.
#[derive(Default)]
struct Spent {
    /// CPU seconds from ready to stop, and those seconds.
    cpu_s: f64,
    ran_s: f64,
    /// CPU seconds until ready.
    startup_cpu_s: f64,
    peak_rss_kib: u64,
}

/// Stops the tracer: what it cost.
fn stop(r: Running) -> Spent {
    let Some(mut child) = r.child else {
        return Spent::default();
    };
    let (cpu, rss) = cost(child.id());
    let ran = r.started.elapsed().as_secs_f64();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    Spent {
        cpu_s: cpu - r.cpu_at_ready,
        ran_s: ran,
        startup_cpu_s: r.cpu_at_ready,
        peak_rss_kib: rss,
    }
}

/// Writeback of earlier work done and page cache empty: every phase
/// starts from the same state.
fn settle() {
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// 2 threads writing 4 KiB blocks to already-upper files, over and over
/// the first 4 MiB of each (the dirty data stays small, so the phase
/// measures the write path, not the disk).
fn writes(ov: &Overlay, total: usize) -> f64 {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let p = ov.path(&format!("w{i}"));
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)
                    .unwrap();
                let block = [1u8; 4096];
                for n in 0..total / 2 {
                    if n % 1024 == 0 {
                        f.rewind().unwrap();
                    }
                    f.write_all(&block).unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    total as f64 / t0.elapsed().as_secs_f64()
}

fn copy_ups(ov: &Overlay, prefix: &str, n: usize) -> f64 {
    let t0 = Instant::now();
    for i in 0..n {
        std::fs::OpenOptions::new()
            .append(true)
            .open(ov.path(&format!("{prefix}/f{i}")))
            .unwrap()
            .write_all(b"x")
            .unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn removals(ov: &Overlay, prefix: &str, n: usize) -> f64 {
    let t0 = Instant::now();
    for i in 0..n {
        std::fs::remove_file(ov.path(&format!("{prefix}/f{i}"))).unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn phase(ov: &Overlay, m: Metric, sizes: &Sizes) -> f64 {
    match m {
        Metric::Writes => writes(ov, sizes.writes),
        Metric::CopyUp1k => copy_ups(ov, "small", sizes.small),
        Metric::CopyUp1m => copy_ups(ov, "big", sizes.big),
        Metric::Whiteouts => removals(ov, "rm", sizes.removals),
    }
}

/// Copy-ups and whiteouts from both CPUs as fast as they go.
fn burst(ov: &Overlay, n: usize) -> usize {
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let dir = ov.path(&format!("burst{t}"));
            std::thread::spawn(move || {
                for i in 0..n {
                    let p = dir.join(format!("f{i}"));
                    if i % 2 == 0 {
                        std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                    } else {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    // Each file gives one event; the burst directories' copy-ups two more.
    2 * n + 2
}

fn build_lower(lower: &Path, s: &Sizes) {
    let _ = std::fs::remove_dir_all(lower);
    std::fs::create_dir_all(lower).unwrap();
    for i in 0..s.small {
        make_file(&lower.join(format!("small/f{i}")), 1024);
    }
    for i in 0..s.removals {
        make_file(&lower.join(format!("rm/f{i}")), 16);
    }
    for i in 0..s.big {
        make_file(&lower.join(format!("big/f{i}")), 1 << 20);
    }
    for t in 0..2 {
        for i in 0..s.burst {
            make_file(&lower.join(format!("burst{t}/f{i}")), 16);
        }
    }
}

/// Run time and run count of every loaded BPF program, by id.
fn bpf_programs() -> BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_string();
            (
                p.id(),
                (name, p.run_time().as_nanos() as u64, p.run_count()),
            )
        })
        .collect()
}

/// Passes of the BPF statistics. Each pass measures every tracer once per
/// phase, in an order rotated per pass, so that a slow stretch of the
/// machine (one pass's figures can double in the next under TCG) falls on
/// each tracer in turn; the tables compare the tracers pass by pass.
const BPF_PASSES: usize = 3;

/// The pass with the median BPF time per event (its per-program figures
/// kept whole), and every pass's time per event, in pass order.
fn median_pass(runs: Vec<Value>) -> Value {
    let ns: Vec<f64> = runs
        .iter()
        .map(|r| r["ns_per_event"].as_f64().unwrap_or(0.0))
        .collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| ns[a].total_cmp(&ns[b]));
    let mut median = runs[order[order.len() / 2]].clone();
    median["passes_ns_per_event"] = json!(ns);
    median
}

/// One tracer, one phase, BPF statistics on: what its programs ran.
fn bpf_cost(t: Tracer, m: Metric, lower: &Path, sizes: &Sizes) -> Value {
    let before_start = bpf_programs();
    let ov = Overlay::over(&format!("bench-stats-{}", t.name()), lower);
    let r = start(t, false);
    settle();
    let before = bpf_programs();
    phase(&ov, m, sizes);
    let after = bpf_programs();
    stop(r);
    let n = sizes.of(m) as f64;
    let mut progs = serde_json::Map::new();
    let (mut ns, mut hits) = (0u64, 0u64);
    for (id, (name, rt, rc)) in &after {
        if before_start.contains_key(id) {
            continue; // not this tracer's
        }
        let (_, rt0, rc0) = before.get(id).cloned().unwrap_or_default();
        let (dns, dcnt) = (rt.saturating_sub(rt0), rc.saturating_sub(rc0));
        ns += dns;
        hits += dcnt;
        if dcnt > 0 {
            let e = progs
                .entry(name.clone())
                .or_insert(json!({"ns": 0, "runs": 0}));
            e["ns"] = json!(e["ns"].as_u64().unwrap_or(0) + dns);
            e["runs"] = json!(e["runs"].as_u64().unwrap_or(0) + dcnt);
        }
    }
    json!({
        "ns_per_event": ns as f64 / n,
        "hits_per_event": hits as f64 / n,
        "events": n as u64,
        "programs": progs,
    })
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: cowtrace-bench OUT.json [ROUNDS] [SCALE] [MINUTES]");
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let scale: f64 = std::env::args()
        .nth(3)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1.0);
    // No round starts after this many minutes (0: no limit); the BPF
    // statistics and the first round always run.
    let budget = std::env::args()
        .nth(4)
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|m| *m > 0.0)
        .map(|m| Duration::from_secs_f64(m * 60.0));
    let sizes = Sizes::scaled(scale);
    let t_all = Instant::now();
    let progress = |what: &str| {
        eprintln!("[{:>6.0} s] {what}", t_all.elapsed().as_secs_f64());
    };
    let lower = Path::new("/var/tmp/bench-lower");
    progress("building the lower layer (once)");
    build_lower(lower, &sizes);
    settle();

    // First the measure noise cannot blur, so that a run cut short by its
    // time budget still has it.
    // The statistics cost two clock reads per program run while on: only
    // for these passes, held by the returned descriptor.
    progress("BPF run-time statistics per tracer and event");
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    let mut bpf = serde_json::Map::new();
    match &stats_fd {
        Ok(_) => {
            // The tracers with programs; runs[tracer][metric][pass].
            let traced = &TRACERS[1..];
            let mut runs = vec![vec![Vec::new(); METRICS.len()]; traced.len()];
            for pass in 0..BPF_PASSES {
                for (mi, &m) in METRICS.iter().enumerate() {
                    for k in 0..traced.len() {
                        let ti = (k + pass) % traced.len();
                        let t = traced[ti];
                        progress(&format!(
                            "BPF statistics, pass {} / {BPF_PASSES}: {} {}",
                            pass + 1,
                            t.name(),
                            m.event()
                        ));
                        runs[ti][mi].push(bpf_cost(t, m, lower, &sizes));
                    }
                }
            }
            for (t, per_metric) in traced.iter().zip(runs) {
                let mut per = serde_json::Map::new();
                for (m, passes) in METRICS.iter().zip(per_metric) {
                    per.insert(m.event().into(), median_pass(passes));
                }
                bpf.insert(t.name().into(), Value::Object(per));
            }
        }
        Err(e) => eprintln!("BPF run-time statistics unavailable: {e}"),
    }
    drop(stats_fd);

    let mut results: Vec<Value> = Vec::new();
    let mut rounds_done = 0;
    for round in 0..rounds {
        if round > 0 && budget.is_some_and(|b| t_all.elapsed() > b) {
            progress(&format!(
                "time budget spent: {round} of {rounds} rounds measured"
            ));
            break;
        }
        rounds_done += 1;
        // Rotated: each tracer takes each position in turn.
        let mut order = TRACERS;
        order.rotate_left(round % TRACERS.len());
        for &t in &order {
            progress(&format!("round {} / {rounds}: {}", round + 1, t.name()));
            let mut row = json!({"round": round, "tracer": t.name()});
            let (mut cpu_s, mut rss_kib, mut ran_s, mut attach) = (0.0, 0u64, 0.0, Vec::new());
            let mut startup_cpu = Vec::new();
            for m in METRICS {
                let ov = Overlay::over(&format!("bench-{}", t.name()), lower);
                let r = start(t, false);
                attach.push(r.attach_s);
                settle();
                let rate = phase(&ov, m, &sizes);
                let spent = stop(r);
                if t == Tracer::Cowtrace && spent.ran_s > 0.0 {
                    row["agent_cpu_frac_by_phase"][m.event()] = json!(spent.cpu_s / spent.ran_s);
                }
                cpu_s += spent.cpu_s;
                rss_kib = rss_kib.max(spent.peak_rss_kib);
                ran_s += spent.ran_s;
                startup_cpu.push(spent.startup_cpu_s);
                row[m.key()] = json!(rate);
                if t == Tracer::Cowtrace {
                    let report: Value = std::fs::read_to_string("/tmp/bench-report.json")
                        .ok()
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .unwrap_or(Value::Null);
                    row[format!("drops_{}", m.event())] = report["drops"].clone();
                }
            }
            attach.sort_by(f64::total_cmp);
            row["attach_s"] = json!(attach[attach.len() / 2]);
            startup_cpu.sort_by(f64::total_cmp);
            row["agent_startup_cpu_s"] = json!(startup_cpu[startup_cpu.len() / 2]);
            row["agent_cpu_s"] = json!(cpu_s);
            row["agent_cpu_frac"] = json!(if ran_s > 0.0 { cpu_s / ran_s } else { 0.0 });
            row["agent_peak_rss_kib"] = json!(rss_kib);
            if t == Tracer::Cowtrace {
                let ov = Overlay::over("bench-burst", lower);
                let r = start(t, true);
                settle();
                let t0 = Instant::now();
                let made = burst(&ov, sizes.burst);
                let burst_s = t0.elapsed().as_secs_f64();
                stop(r);
                let delivered = std::fs::read_to_string("/tmp/bench-events.ndjson")
                    .map(|s| s.lines().count())
                    .unwrap_or(0);
                let report: Value = std::fs::read_to_string("/tmp/bench-report.json")
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(Value::Null);
                row["events_made"] = json!(made);
                row["events_delivered"] = json!(delivered);
                row["events_per_s"] = json!(made as f64 / burst_s);
                row["drops"] = report["drops"].clone();
            }
            results.push(row);
        }
    }

    let doc = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "clocksource": std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource").unwrap_or_default().trim(),
        "rounds": rounds_done,
        "scale": scale,
        "workload": {"writes": sizes.writes, "copy_up_1k": sizes.small, "copy_up_1m": sizes.big,
            "whiteouts": sizes.removals, "burst_events": 2 * sizes.burst + 2},
        "results": results,
        "bpf": bpf,
        "guest_s": t_all.elapsed().as_secs_f64(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    progress(&format!("wrote {out}"));
}
