//! `cowtrace-soak`: cowtrace left running while many real containers come
//! and go (`cargo xtask soak` runs it in a Docker guest). Each container
//! copies up its own directory of files from one image and exits; at the
//! end the agent's peak RSS (VmHWM) and CPU time are measured and every
//! container's totals are checked exact against what it did.
//!
//! Arguments: OUT_DIR CONTAINERS FILES_PER_CONTAINER PARALLEL.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IMAGE: &str = "cowtrace/soak-img";
/// Bytes in every image file (`x` and a newline).
const FILE_BYTES: u64 = 2;
/// Peak RSS the agent must stay under (issue 10).
const RSS_TARGET_KIB: u64 = 40 * 1024;

fn docker(args: &[&str]) -> Result<String, String> {
    let o = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// One image holding `containers` directories of `files` files each: every
/// container copies up paths no other container has. The tree is written
/// here (tmpfs, no process per file) with the guest's static busybox as the
/// image's shell, and imported as a single layer: a `RUN` loop making the
/// same 100,000 files took 12 minutes under TCG.
fn build_image(containers: usize, files: usize) -> Result<(), String> {
    let root = Path::new("/tmp/soak-root");
    let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("bin")).map_err(|e| err("soak root", e))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| err("/bin/busybox", e))?;
    for applet in ["sh", "touch"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| err(applet, e))?;
    }
    for d in 0..containers {
        let dir = root.join(format!("data/d{d}"));
        std::fs::create_dir_all(&dir).map_err(|e| err("soak data", e))?;
        for f in 1..=files {
            std::fs::write(dir.join(format!("f{f}")), b"x\n").map_err(|e| err("soak file", e))?;
        }
    }
    let mut tar = Command::new("tar")
        .args(["-C", "/tmp/soak-root", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let import = Command::new("docker")
        .args(["import", "--change", "ENV PATH=/bin", "-", IMAGE])
        .stdin(tar.stdout.take().expect("piped"))
        .output()
        .map_err(|e| format!("docker import: {e}"))?;
    let tarred = tar.wait().map_err(|e| format!("tar: {e}"))?;
    if !tarred.success() {
        return Err(format!("tar of the soak image's tree ended with {tarred}"));
    }
    if !import.status.success() {
        return Err(format!(
            "docker import: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    let _ = std::fs::remove_dir_all(root);
    Ok(())
}

/// CPU seconds (user+system) and peak and current RSS (KiB) of a process.
fn cost(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (field(11) + field(12)) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmHWM:"), kib("VmRSS:"))
}

/// CPU seconds per thread name (threads of one name summed), busiest
/// first: which part of the agent the time goes to.
fn cpu_by_thread(pid: u32) -> String {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for t in tasks.into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // comm is between the first '(' and the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        *by.entry(stat[open + 1..close].to_string()).or_default() +=
            (field(11) + field(12)) / ticks;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(n, s)| format!("{n} {s:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agent's own account of where its memory is (the `agent` object of
/// the report it rewrites every interval): heap in use, and how many events
/// and layer questions waited at most.
fn queues(report: &Path) -> String {
    let Some(v) = std::fs::read_to_string(report)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return "no interval report yet".into();
    };
    let a = &v["agent"];
    format!(
        "anon {} file {} shmem {} KiB, heap {} KiB in use and {} free, held events peak {} ({} KiB, {} out early), layer questions peak {}",
        a["rss_anon_kib"],
        a["rss_file_kib"],
        a["rss_shmem_kib"],
        a["heap_kib"],
        a["heap_free_kib"],
        a["held_events"]["peak"],
        a["held_events"]["peak_kib"],
        a["held_events"]["released_early"],
        a["layer_questions"]["peak"]
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let out = Path::new(args.get(1).map(String::as_str).unwrap_or("/out")).to_path_buf();
    let (containers, files, parallel) = (num(2, 200), num(3, 500), num(4, 4).max(1));
    match run(&out, containers, files, parallel) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}

fn run(out: &Path, containers: usize, files: usize, parallel: usize) -> Result<bool, String> {
    let t0 = Instant::now();
    println!("soak: building an image with {containers} x {files} files");
    build_image(containers, files)?;
    println!("soak: image built in {:.0} s", t0.elapsed().as_secs_f64());

    let report = out.join("soak-report.json");
    let log = std::fs::File::create(out.join("cowtrace.log")).map_err(|e| e.to_string())?;
    let mut agent = Command::new(cowtrace_tests::cowtrace_bin())
        .args(["--quiet", "--interval", "10s", "--json"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting cowtrace: {e}"))?;
    let pid = agent.id();
    let mut lines = BufReader::new(agent.stderr.take().expect("piped")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("tracing") => break,
            Some(Ok(_)) => {}
            _ => return Err("cowtrace ended before tracing".into()),
        }
    }
    // The rest of its stderr (a summary every interval) goes to the log.
    let copier = std::thread::spawn(move || {
        use std::io::Write;
        let mut log = log;
        for l in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{l}");
        }
    });
    let (_, idle_hwm, _) = cost(pid);
    println!("soak: cowtrace attached (pid {pid}, VmHWM {idle_hwm} KiB)");

    // Containers in `parallel` lanes; each copies up its own directory
    // (`touch` is a setattr copy-up of every file, and of /data and the
    // directory on the way) and exits.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let lanes: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, done) = (next.clone(), done.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= containers {
                        return Ok(());
                    }
                    let name = format!("soak-{i}");
                    let script = format!("touch /data/d{i}/*");
                    docker(&[
                        "run",
                        "--rm",
                        "--name",
                        &name,
                        "--network",
                        "none",
                        IMAGE,
                        "sh",
                        "-c",
                        &script,
                    ])?;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut last = 0;
    while lanes.iter().any(|l| !l.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        let n = done.load(Ordering::SeqCst);
        if n / 10 != last / 10 || n == containers {
            let (cpu, hwm, rss) = cost(pid);
            println!(
                "soak: {n}/{containers} containers, {:.0} s, cowtrace RSS {rss} KiB (peak {hwm}), CPU {cpu:.1} s ({}); {}",
                t0.elapsed().as_secs_f64(),
                cpu_by_thread(pid),
                queues(&report)
            );
            last = n;
        }
    }
    for l in lanes {
        l.join().map_err(|_| "a lane panicked".to_string())??;
    }
    let work_s = t0.elapsed().as_secs_f64();
    // Let the last events through before measuring and stopping.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, hwm, rss) = cost(pid);
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = agent.wait().map_err(|e| e.to_string())?;
    let _ = copier.join();
    if !status.success() {
        return Err(format!("cowtrace ended with {status}"));
    }

    let text = std::fs::read_to_string(&report).map_err(|e| format!("{report:?}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{report:?}: {e}"))?;
    let rows = v["containers"].as_array().cloned().unwrap_or_default();
    // Per container: its files and the two directories on the way
    // (/data and /data/dN), exactly once each; bytes only from files.
    let want_count = files as u64 + 2;
    let want_bytes = files as u64 * FILE_BYTES;
    let mut wrong = Vec::new();
    for i in 0..containers {
        let name = format!("soak-{i}");
        match rows.iter().find(|c| c["name"] == name.as_str()) {
            Some(c) => {
                let (n, b) = (&c["copy_up"]["count"], &c["copy_up"]["bytes"]);
                if n != want_count || b != want_bytes {
                    wrong.push(format!("{name}: {n} copy-ups, {b} bytes"));
                }
            }
            None => wrong.push(format!("{name}: no row")),
        }
    }
    let copied: u64 = rows
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("soak-")))
        .filter_map(|c| c["copy_up"]["count"].as_u64())
        .sum();
    // Events whose image layer could not be told (gave up waiting for
    // the layer worker, or the runtime had no layer data), and copy-ups
    // booked to a layer.
    let soak_rows = || {
        rows.iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("soak-")))
    };
    let layers_unknown: u64 = soak_rows()
        .filter_map(|c| c["layers_unknown"].as_u64())
        .sum();
    let mut layers_unknown_why = serde_json::Map::new();
    for why in ["path_cut", "no_layer_data", "lookup_failed", "too_slow"] {
        let n: u64 = soak_rows()
            .filter_map(|c| c["layers_unknown_why"][why].as_u64())
            .sum();
        layers_unknown_why.insert(why.to_string(), n.into());
    }
    let layer_copy_ups: u64 = soak_rows()
        .filter_map(|c| c["layers"].as_array())
        .flatten()
        .filter_map(|l| l["copy_up"]["count"].as_u64())
        .sum();
    let result = json!({
        "containers": containers,
        "files_per_container": files,
        "distinct_paths": containers * files,
        "copy_ups_reported": copied,
        "layers_unknown": layers_unknown,
        "layers_unknown_why": layers_unknown_why.clone(),
        "copy_ups_with_layer": layer_copy_ups,
        "agent_peak_rss_kib": hwm,
        "agent_rss_at_end_kib": rss,
        "agent_rss_after_attach_kib": idle_hwm,
        "agent_cpu_s": (cpu * 100.0).round() / 100.0,
        "workload_s": work_s.round(),
        "drops": v["drops"],
        "kernel_maps": v["kernel_maps"],
        "agent": v["agent"],
        "wrong": wrong,
    });
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&result).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "soak: {containers} containers, {} paths copied up in {work_s:.0} s; cowtrace peak RSS {hwm} KiB ({:.1} MiB, target < 40 MiB), CPU {cpu:.1} s",
        containers * files,
        hwm as f64 / 1024.0
    );
    println!("soak: drops {}", v["drops"]);
    println!("soak: the agent's own account at the end: {}", v["agent"]);
    println!(
        "soak: layers_unknown {layers_unknown} {}, copy-ups with their layer {layer_copy_ups}",
        Value::Object(layers_unknown_why)
    );
    let mut ok = true;
    if !wrong.is_empty() {
        println!(
            "soak: FAIL: {} containers' totals are not exact: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        ok = false;
    }
    if hwm >= RSS_TARGET_KIB {
        println!("soak: FAIL: peak RSS {hwm} KiB is over the target of {RSS_TARGET_KIB} KiB");
        ok = false;
    }
    if ok {
        println!("soak: ok");
    }
    Ok(ok)
}
