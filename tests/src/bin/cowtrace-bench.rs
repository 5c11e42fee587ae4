//! `cowtrace-bench`: what tracing costs the workload, measured side by side
//! in one guest (`cargo xtask bench` runs it). Rounds interleave the
//! tracers (none, cowtrace, bpftrace, none, ...) so drift hits all alike;
//! the result is a JSON of per-round throughputs written to the path given
//! as the first argument.

use cowtrace_tests::{make_file, Overlay};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BPFTRACE_SCRIPT: &str = include_str!("bench.bt");

#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    None,
    Cowtrace,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Cowtrace => "cowtrace",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// A running tracer and what it took to get ready.
struct Running {
    child: Option<Child>,
    attach_s: f64,
}

fn start(t: Tracer, events: bool) -> Running {
    let t0 = Instant::now();
    let mut cmd = match t {
        Tracer::None => {
            return Running {
                child: None,
                attach_s: 0.0,
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
        Tracer::Bpftrace => {
            std::fs::write("/tmp/bench.bt", BPFTRACE_SCRIPT).unwrap();
            let mut c = Command::new("bpftrace");
            c.arg("/tmp/bench.bt");
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tracer");
    // cowtrace says `tracing` on stderr once attached; the bpftrace script
    // prints `ready` from its BEGIN probe, which runs after attaching.
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
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("{} never became ready", t.name()));
        if line.starts_with("tracing") || line.trim() == "ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in rx {});
    Running {
        child: Some(child),
        attach_s: t0.elapsed().as_secs_f64(),
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

fn stop(r: Running) -> (f64, u64) {
    let Some(mut child) = r.child else {
        return (0.0, 0);
    };
    let c = cost(child.id());
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    c
}

/// 2 threads appending 4 KiB blocks to already-upper files.
fn writes(ov: &Overlay, per_thread: usize) -> f64 {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let p = ov.path(&format!("w{i}"));
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap();
                let block = [1u8; 4096];
                for _ in 0..per_thread {
                    f.write_all(&block).unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    (2 * per_thread) as f64 / t0.elapsed().as_secs_f64()
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

fn layer(n_small: usize, n_big: usize) -> impl FnOnce(&Path) {
    move |l: &Path| {
        for i in 0..n_small {
            make_file(&l.join(format!("small/f{i}")), 1024);
            make_file(&l.join(format!("rm/f{i}")), 16);
        }
        for i in 0..n_big {
            make_file(&l.join(format!("big/f{i}")), 1 << 20);
        }
        for t in 0..2 {
            for i in 0..n_small / 2 {
                make_file(&l.join(format!("burst{t}/f{i}")), 16);
            }
        }
    }
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: cowtrace-bench OUT.json [ROUNDS]");
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (n_small, n_big, n_writes) = (10_000, 100, 20_000);
    let tracers = [Tracer::None, Tracer::Cowtrace, Tracer::Bpftrace];
    let mut results: Vec<Value> = Vec::new();
    // One read-only lower layer for every round; each round gets a fresh
    // upper layer over it.
    let lower = Path::new("/var/tmp/bench-lower");
    let _ = std::fs::remove_dir_all(lower);
    std::fs::create_dir_all(lower).unwrap();
    layer(n_small, n_big)(lower);
    for round in 0..rounds {
        for &t in &tracers {
            eprintln!("round {} / {rounds}: {}", round + 1, t.name());
            let ov = Overlay::on_disk(
                &format!("bench-{round}-{}", t.name()),
                layer(n_small, n_big),
            );
            let r = start(t, false);
            let attach_s = r.attach_s;
            let w = writes(&ov, n_writes / 2);
            let small = copy_ups(&ov, "small", n_small);
            let big = copy_ups(&ov, "big", n_big);
            let (cpu_s, rss_kib) = stop(r);
            let r = start(t, false);
            let rm = removals(&ov, "rm", n_small);
            stop(r);
            let mut row = json!({
                "round": round, "tracer": t.name(), "attach_s": attach_s,
                "writes_per_s": w, "copy_up_1k_per_s": small, "copy_up_1m_per_s": big,
                "whiteouts_per_s": rm, "agent_cpu_s": cpu_s, "agent_peak_rss_kib": rss_kib,
            });
            if t == Tracer::Cowtrace {
                let r = start(t, true);
                let t0 = Instant::now();
                let made = burst(&ov, n_small / 2);
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
        "rounds": rounds,
        "workload": {"writes": n_writes, "copy_up_1k": n_small, "copy_up_1m": n_big, "whiteouts": n_small},
        "results": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    eprintln!("wrote {out}");
}
