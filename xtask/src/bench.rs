//! `cargo xtask bench`: what cowtrace costs the workload it watches, side
//! by side with bpftrace running the same probes (`tests/src/bin/bench.bt`), in one
//! Docker guest (Debian rootfs, ext4 upper layers). The guest runner
//! (`tests/src/bin/cowtrace-bench.rs`) interleaves none / cowtrace /
//! bpftrace rounds; this module turns its rounds into medians, min-max and
//! ratios against `none`, and writes `bench.json` and `bench.md`.

use crate::build;
use crate::guest::{self, Copy, GuestKind, GuestSpec};
use crate::kernel::Series;
use crate::setup::Tooling;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const METRICS: &[(&str, &str)] = &[
    ("writes_per_s", "4 KiB appends/s (2 threads)"),
    ("copy_up_1k_per_s", "1 KiB copy-ups/s"),
    ("copy_up_1m_per_s", "1 MiB copy-ups/s"),
    ("whiteouts_per_s", "whiteouts/s"),
    ("attach_s", "ready after (s)"),
];

pub fn run(tooling: &Tooling, kernel: Series, out: &Path, rounds: u32) -> Result<i32> {
    let agent = build::agent(tooling)?;
    let runner = build::bench_runner(tooling)?;
    std::fs::create_dir_all(out)?;
    let spec = GuestSpec {
        kernel,
        kind: GuestKind::Docker,
        copies: vec![Copy {
            host: runner,
            guest: "/usr/local/bin/cowtrace-bench".into(),
        }],
        out: Some(out.to_path_buf()),
        timeout: Duration::from_secs(1800),
        command: vec![
            "cowtrace-bench".into(),
            "/out/rounds.json".into(),
            rounds.to_string(),
        ],
        agent: Some(agent),
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
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

/// Medians per tracer and metric, and each tracer's median over none's.
pub fn summarize(raw: &Value) -> Result<Value> {
    let rows = raw["results"].as_array().context("no results")?;
    let tracers = ["none", "cowtrace", "bpftrace"];
    let mut per = serde_json::Map::new();
    for t in tracers {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["tracer"] == t).collect();
        if mine.is_empty() {
            bail!("no rounds for {t}");
        }
        let mut m = serde_json::Map::new();
        for (k, _) in METRICS
            .iter()
            .chain(&[("agent_cpu_s", ""), ("agent_peak_rss_kib", "")])
        {
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
            let drops: u64 = mine
                .iter()
                .flat_map(|r| r["drops"].as_object().into_iter().flatten())
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
        }
        per.insert(t.to_string(), Value::Object(m));
    }
    let mut ratios = serde_json::Map::new();
    for t in ["cowtrace", "bpftrace"] {
        let mut m = serde_json::Map::new();
        for (k, _) in METRICS.iter().filter(|(k, _)| k.ends_with("_per_s")) {
            let base = per["none"][*k]["median"].as_f64().unwrap_or(0.0);
            let mine = per[t][*k]["median"].as_f64().unwrap_or(0.0);
            m.insert(
                k.to_string(),
                json!(if base > 0.0 { mine / base } else { 0.0 }),
            );
        }
        ratios.insert(t.to_string(), Value::Object(m));
    }
    Ok(json!({
        "kernel": raw["kernel"],
        "rounds": raw["rounds"],
        "workload": raw["workload"],
        "tracers": per,
        "ratio_vs_none": ratios,
    }))
}

pub fn markdown(s: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Kernel {}, {} interleaved rounds, medians (min-max); ratio = median / median without tracing.\n",
        s["kernel"].as_str().unwrap_or("?"),
        s["rounds"]
    );
    let _ = writeln!(
        md,
        "| metric | none | cowtrace | bpftrace | cowtrace ratio | bpftrace ratio |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
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
            s["ratio_vs_none"][t][*k]
                .as_f64()
                .map(|r| format!("{r:.3}x"))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell("none", k),
            cell("cowtrace", k),
            cell("bpftrace", k),
            ratio("cowtrace"),
            ratio("bpftrace")
        );
    }
    let ev = &s["tracers"]["cowtrace"]["events"];
    let c = &s["tracers"]["cowtrace"];
    let _ = writeln!(
        md,
        "\nEvent capacity (copy-ups and whiteouts from both CPUs, NDJSON to a file): {} made, {} delivered, {} dropped, {:.0} events/s.",
        ev["made"], ev["delivered"], ev["drops"], ev["per_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "cowtrace agent during the write and copy-up workloads: {:.2} CPU s (median per round), peak RSS {:.1} MiB.",
        c["agent_cpu_s"]["median"].as_f64().unwrap_or(0.0),
        c["agent_peak_rss_kib"]["max"].as_f64().unwrap_or(0.0) / 1024.0
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let mut results = Vec::new();
        for (t, w) in [
            ("none", [100.0, 110.0, 90.0]),
            ("cowtrace", [95.0, 99.0, 97.0]),
            ("bpftrace", [80.0, 82.0, 81.0]),
        ] {
            for x in w {
                results.push(json!({"tracer": t, "writes_per_s": x, "copy_up_1k_per_s": 10.0,
                    "copy_up_1m_per_s": 1.0, "whiteouts_per_s": 5.0, "attach_s": 0.5,
                    "agent_cpu_s": 0.1, "agent_peak_rss_kib": 10240,
                    "events_made": 10, "events_delivered": 10, "drops": {"copy_up": 0}, "events_per_s": 100.0}));
            }
        }
        let s = summarize(&json!({"kernel": "6.1", "rounds": 3, "results": results})).unwrap();
        assert_eq!(s["tracers"]["none"]["writes_per_s"]["median"], 100.0);
        assert_eq!(s["tracers"]["none"]["writes_per_s"]["min"], 90.0);
        assert_eq!(s["ratio_vs_none"]["cowtrace"]["writes_per_s"], 0.97);
        assert_eq!(s["ratio_vs_none"]["bpftrace"]["writes_per_s"], 0.81);
        let md = markdown(&s);
        assert!(
            md.contains("| 4 KiB appends/s (2 threads) | 100.000 (90.000-110.000)"),
            "{md}"
        );
        assert!(md.contains("0.970x"), "{md}");
    }
}
