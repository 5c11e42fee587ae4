//! `cargo xtask bench`: what cowtrace costs the workload it watches, side
//! by side with two bpftrace scripts (`tests/src/bin/bench.bt`, minimal,
//! and `bench-full.bt`, recording what cowtrace records), in one Docker
//! guest (Debian rootfs, ext4 upper layers). The guest runner
//! (`tests/src/bin/cowtrace-bench.rs`, which explains the method) runs
//! each metric in its own tracer run, rotating the tracers per round, and
//! measures each tracer's BPF run time per event; this module turns its
//! rounds into medians, min-max, ratios against `none` with 95% confidence
//! intervals, and the BPF table, and writes `bench.json` and `bench.md`.

use crate::build;
use crate::guest::{self, Clock, Copy, GuestKind, GuestSpec, Init};
use crate::kernel::Series;
use crate::setup::Tooling;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const METRICS: &[(&str, &str)] = &[
    ("writes_per_s", "4 KiB writes/s (2 threads)"),
    ("copy_up_1k_per_s", "1 KiB copy-ups/s"),
    ("copy_up_1m_per_s", "1 MiB copy-ups/s"),
    ("whiteouts_per_s", "whiteouts/s"),
    ("attach_s", "ready after (s)"),
];

/// The tracers the guest runs, `none` (no tracing) first.
const TRACERS: &[&str] = &["none", "cowtrace", "bpftrace", "bpftrace_full"];

/// What one operation of each phase is: the rows of the BPF run-time
/// table, and the phases of the agent's CPU.
const BPF_EVENTS: &[(&str, &str)] = &[
    ("copy_up_1k", "1 KiB copy-up"),
    ("copy_up_1m", "1 MiB copy-up"),
    ("whiteout", "whiteout"),
    ("write", "4 KiB write"),
];

pub struct Options {
    pub rounds: u32,
    /// Multiplies the operations per phase (1.0: each phase lasts seconds).
    pub scale: f64,
    /// No round starts after this many minutes in the guest (0: no limit).
    pub minutes: f64,
    pub timeout: Duration,
}

pub fn run(tooling: &Tooling, kernel: Series, out: &Path, opts: &Options) -> Result<i32> {
    let rounds = opts.rounds;
    let agent = build::agent(tooling)?;
    let runner = build::bench_runner(tooling)?;
    std::fs::create_dir_all(out)?;
    let spec = GuestSpec {
        kernel,
        kind: GuestKind::Docker(Init::Shell),
        copies: vec![Copy {
            host: runner,
            guest: "/usr/local/bin/cowtrace-bench".into(),
        }],
        out: Some(out.to_path_buf()),
        timeout: opts.timeout,
        command: vec![
            "cowtrace-bench".into(),
            "/out/rounds.json".into(),
            rounds.to_string(),
            opts.scale.to_string(),
            opts.minutes.to_string(),
        ],
        agent: Some(agent),
        cgroups: Default::default(),
        // The TSC, as on real hosts: with the HPET that TCG leaves the
        // kernel, each timestamp a tracer takes (two per timed write) is
        // an emulated device access. (One round each way moved cowtrace's
        // BPF time per write from 1,835 to 1,846 ns: not what made the
        // probes slow, but the guest now keeps time as hosts do.)
        clock: Clock::Tsc,
    };
    let rc = guest::run(&spec)?;
    if rc != 0 {
        return Ok(rc);
    }
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("rounds.json"))
            .context("the guest wrote no rounds.json")?,
    )?;
    let summary = summarize(&raw)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let md = markdown(&summary);
    std::fs::write(out.join("bench.md"), &md)?;
    println!("{md}");
    println!("written: {}", out.join("bench.md").display());
    Ok(0)
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom
/// (df 1-30 from the table; above that the normal 1.96 is within 2%).
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

/// Mean and 95% confidence interval of `v` (t distribution); `None` with
/// fewer than two values.
pub fn mean_ci95(v: &[f64]) -> Option<(f64, f64, f64)> {
    let n = v.len();
    if n < 2 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t95(n - 1) * (var / n as f64).sqrt();
    Some((mean, mean - half, mean + half))
}

/// Medians per tracer and metric, each tracer's median over none's, the
/// per-round ratios' mean with its 95% confidence interval, and the BPF
/// run time per event.
pub fn summarize(raw: &Value) -> Result<Value> {
    let rows = raw["results"].as_array().context("no results")?;
    let mut per = serde_json::Map::new();
    for &t in TRACERS {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["tracer"] == t).collect();
        if mine.is_empty() {
            bail!("no rounds for {t}");
        }
        let mut m = serde_json::Map::new();
        for (k, _) in METRICS.iter().chain(&[
            ("agent_cpu_s", ""),
            ("agent_cpu_frac", ""),
            ("agent_startup_cpu_s", ""),
            ("agent_peak_rss_kib", ""),
        ]) {
            let vals: Vec<f64> = mine.iter().filter_map(|r| r[*k].as_f64()).collect();
            let (med, lo, hi) = median_min_max(vals);
            m.insert(k.to_string(), json!({"median": med, "min": lo, "max": hi}));
        }
        if t == "cowtrace" {
            let made: u64 = mine.iter().filter_map(|r| r["events_made"].as_u64()).sum();
            let got: u64 = mine
                .iter()
                .filter_map(|r| r["events_delivered"].as_u64())
                .sum();
            // Drops of the burst runs and of every measured phase.
            let drops: u64 = mine
                .iter()
                .flat_map(|r| {
                    r.as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| k.starts_with("drops"))
                })
                .flat_map(|(_, d)| d.as_object().into_iter().flatten())
                .filter_map(|(_, v)| v.as_u64())
                .sum();
            let rate: Vec<f64> = mine
                .iter()
                .filter_map(|r| r["events_per_s"].as_f64())
                .collect();
            m.insert(
                "events".into(),
                json!({"made": made, "delivered": got, "drops": drops, "per_s": median_min_max(rate).0}),
            );
            let mut by_phase = serde_json::Map::new();
            for (event, _) in BPF_EVENTS {
                let vals: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r["agent_cpu_frac_by_phase"][*event].as_f64())
                    .collect();
                if !vals.is_empty() {
                    by_phase.insert(event.to_string(), json!(median_min_max(vals).0));
                }
            }
            m.insert("agent_cpu_frac_by_phase".into(), Value::Object(by_phase));
        }
        per.insert(t.to_string(), Value::Object(m));
    }
    let mut ratios = serde_json::Map::new();
    let mut cis = serde_json::Map::new();
    for &t in &TRACERS[1..] {
        let mut m = serde_json::Map::new();
        let mut c = serde_json::Map::new();
        for (k, _) in METRICS.iter().filter(|(k, _)| k.ends_with("_per_s")) {
            let base = per["none"][*k]["median"].as_f64().unwrap_or(0.0);
            let mine = per[t][*k]["median"].as_f64().unwrap_or(0.0);
            m.insert(
                k.to_string(),
                json!(if base > 0.0 { mine / base } else { 0.0 }),
            );
            // Paired by round: a tracer against `none` of the same round.
            let paired: Vec<f64> = rows
                .iter()
                .filter(|r| r["tracer"] == t)
                .filter_map(|r| {
                    let none = rows
                        .iter()
                        .find(|n| n["tracer"] == "none" && n["round"] == r["round"])?;
                    let b = none[*k].as_f64()?;
                    (b > 0.0).then(|| r[*k].as_f64().map(|x| x / b))?
                })
                .collect();
            if let Some((mean, lo, hi)) = mean_ci95(&paired) {
                c.insert(
                    k.to_string(),
                    json!({"mean": mean, "lo": lo, "hi": hi, "n": paired.len()}),
                );
            }
        }
        ratios.insert(t.to_string(), Value::Object(m));
        cis.insert(t.to_string(), Value::Object(c));
    }
    Ok(json!({
        "kernel": raw["kernel"],
        "clocksource": raw["clocksource"],
        "rounds": raw["rounds"],
        "scale": raw["scale"],
        "workload": raw["workload"],
        "guest_s": raw["guest_s"],
        "tracers": per,
        "ratio_vs_none": ratios,
        "ratio_ci95": cis,
        "bpf_per_event": raw["bpf"],
    }))
}

/// A tracer's BPF time per event in each pass, in pass order.
fn passes(e: &Value) -> Vec<f64> {
    e["passes_ns_per_event"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

pub fn markdown(s: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Kernel {} (clocksource {}), {} rounds (tracer order rotated per round, each metric in its own tracer run after sync and dropped caches), medians (min-max); ratio = median / median without tracing, [95% confidence interval of the per-round ratio].\n",
        s["kernel"].as_str().unwrap_or("?"),
        s["clocksource"].as_str().unwrap_or("?"),
        s["rounds"]
    );
    let _ = writeln!(
        md,
        "| metric | none | cowtrace | bpftrace | bpftrace (like for like) | cowtrace ratio | bpftrace ratio | bpftrace like-for-like ratio |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let cell = |t: &str, k: &str| {
        let v = &s["tracers"][t][k];
        format!(
            "{:.3} ({:.3}-{:.3})",
            v["median"].as_f64().unwrap_or(0.0),
            v["min"].as_f64().unwrap_or(0.0),
            v["max"].as_f64().unwrap_or(0.0)
        )
    };
    for (k, label) in METRICS {
        let ratio = |t: &str| {
            let Some(r) = s["ratio_vs_none"][t][*k].as_f64() else {
                return "-".to_string();
            };
            let ci = &s["ratio_ci95"][t][*k];
            match (ci["lo"].as_f64(), ci["hi"].as_f64()) {
                (Some(lo), Some(hi)) => format!("{r:.3}x [{lo:.3}, {hi:.3}]"),
                _ => format!("{r:.3}x"),
            }
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            cell("none", k),
            cell("cowtrace", k),
            cell("bpftrace", k),
            cell("bpftrace_full", k),
            ratio("cowtrace"),
            ratio("bpftrace"),
            ratio("bpftrace_full")
        );
    }
    let bpf = &s["bpf_per_event"];
    if bpf.as_object().is_some_and(|o| !o.is_empty()) {
        let _ = writeln!(
            md,
            "\nBPF run time per event (kernel.bpf_stats_enabled: the programs' own run_time_ns / run_cnt, not the kprobe or trampoline around them), ns, the median of the passes (min-max) (program runs per event); last column: cowtrace's time over the like-for-like script's in the same pass, median (min-max):\n"
        );
        let _ = writeln!(
            md,
            "| event | cowtrace | bpftrace | bpftrace (like for like) | cowtrace / like for like |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for (ev, label) in BPF_EVENTS {
            let c = |t: &str| {
                let e = &bpf[t][*ev];
                let each = passes(e);
                let spread = if each.len() > 1 {
                    let (_, lo, hi) = median_min_max(each);
                    format!(" ({lo:.0}-{hi:.0})")
                } else {
                    String::new()
                };
                match (e["ns_per_event"].as_f64(), e["hits_per_event"].as_f64()) {
                    (Some(ns), Some(h)) => format!("{ns:.0}{spread} ({h:.2})"),
                    _ => "-".into(),
                }
            };
            let paired: Vec<f64> = passes(&bpf["cowtrace"][*ev])
                .iter()
                .zip(passes(&bpf["bpftrace_full"][*ev]))
                .filter(|&(_, full)| full > 0.0)
                .map(|(mine, full)| mine / full)
                .collect();
            let ratio = if paired.is_empty() {
                "-".to_string()
            } else {
                let (med, lo, hi) = median_min_max(paired);
                format!("{med:.2}x ({lo:.2}-{hi:.2})")
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {ratio} |",
                c("cowtrace"),
                c("bpftrace"),
                c("bpftrace_full")
            );
        }
    }
    let ev = &s["tracers"]["cowtrace"]["events"];
    let c = &s["tracers"]["cowtrace"];
    let _ = writeln!(
        md,
        "\nEvent capacity (copy-ups and whiteouts from both CPUs, NDJSON to a file): {} made, {} delivered, {} dropped (bursts and every measured phase), {:.0} events/s.",
        ev["made"], ev["delivered"], ev["drops"], ev["per_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "cowtrace agent over the four measured phases, from ready to stop: {:.2} CPU s per round (median), {:.1}% of one CPU; start-up until ready: {:.2} CPU s per start (median, verifying in the kernel included); peak RSS {:.1} MiB.",
        c["agent_cpu_s"]["median"].as_f64().unwrap_or(0.0),
        c["agent_cpu_frac"]["median"].as_f64().unwrap_or(0.0) * 100.0,
        c["agent_startup_cpu_s"]["median"].as_f64().unwrap_or(0.0),
        c["agent_peak_rss_kib"]["max"].as_f64().unwrap_or(0.0) / 1024.0
    );
    let phases: Vec<String> = BPF_EVENTS
        .iter()
        .filter_map(|(event, label)| {
            let f = c["agent_cpu_frac_by_phase"][*event].as_f64()?;
            Some(format!("{label}s {:.1}%", f * 100.0))
        })
        .collect();
    if !phases.is_empty() {
        let _ = writeln!(
            md,
            "Agent CPU per phase (median, % of one CPU from ready to stop): {}.",
            phases.join(", ")
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ratios_and_confidence_intervals() {
        let mut results = Vec::new();
        for (t, w) in [
            ("none", [100.0, 110.0, 90.0]),
            ("cowtrace", [95.0, 99.0, 97.0]),
            ("bpftrace", [80.0, 82.0, 81.0]),
            ("bpftrace_full", [70.0, 72.0, 71.0]),
        ] {
            for (round, x) in w.into_iter().enumerate() {
                results.push(
                    json!({"round": round, "tracer": t, "writes_per_s": x, "copy_up_1k_per_s": 10.0,
                    "copy_up_1m_per_s": 1.0, "whiteouts_per_s": 5.0, "attach_s": 0.5,
                    "agent_cpu_s": 0.1, "agent_cpu_frac": 0.02, "agent_startup_cpu_s": 1.5,
                    "agent_peak_rss_kib": 10240,
                    "events_made": 10, "events_delivered": 10, "drops": {"copy_up": 0},
                    "drops_write": {"copy_up": 1}, "events_per_s": 100.0}),
                );
            }
        }
        let bpf = json!({
            "cowtrace": {"whiteout": {"ns_per_event": 812.4, "hits_per_event": 3.0,
                "passes_ns_per_event": [812.4, 700.0, 1500.0]}},
            "bpftrace_full": {"whiteout": {"ns_per_event": 1600.0, "hits_per_event": 4.0,
                "passes_ns_per_event": [1600.0, 1000.0, 3000.0]}},
        });
        let s = summarize(&json!({"kernel": "6.1", "rounds": 3, "results": results, "bpf": bpf}))
            .unwrap();
        assert_eq!(s["tracers"]["none"]["writes_per_s"]["median"], 100.0);
        assert_eq!(s["tracers"]["none"]["writes_per_s"]["min"], 90.0);
        assert_eq!(s["ratio_vs_none"]["cowtrace"]["writes_per_s"], 0.97);
        assert_eq!(s["ratio_vs_none"]["bpftrace"]["writes_per_s"], 0.81);
        assert_eq!(s["tracers"]["cowtrace"]["events"]["drops"], 3);
        // Per-round ratios 0.95, 0.9, 1.0778: mean 0.976, t(2) = 4.303.
        let ci = &s["ratio_ci95"]["cowtrace"]["writes_per_s"];
        let (lo, hi) = (ci["lo"].as_f64().unwrap(), ci["hi"].as_f64().unwrap());
        assert!(lo < 0.976 && 0.976 < hi && hi - lo > 0.4, "{ci}");
        let md = markdown(&s);
        assert!(
            md.contains("| 4 KiB writes/s (2 threads) | 100.000 (90.000-110.000)"),
            "{md}"
        );
        assert!(md.contains("0.970x ["), "{md}");
        // Per pass 0.51, 0.70 and 0.50: median 0.51.
        assert!(
            md.contains("| whiteout | 812 (700-1500) (3.00) | - | 1600 (1000-3000) (4.00) | 0.51x (0.50-0.70) |"),
            "{md}"
        );
        assert!(
            md.contains("2.0% of one CPU; start-up until ready: 1.50 CPU s per start"),
            "{md}"
        );
    }

    #[test]
    fn confidence_interval_of_identical_values_is_a_point() {
        assert_eq!(mean_ci95(&[2.0, 2.0, 2.0]), Some((2.0, 2.0, 2.0)));
        assert_eq!(mean_ci95(&[2.0]), None);
        assert!((t95(4) - 2.776).abs() < 1e-9);
        assert_eq!(t95(100), 1.96);
    }
}
