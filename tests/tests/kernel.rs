//! Guest tests: real overlay mounts in a real kernel, checked against what
//! cowtrace reports. Run by `cargo xtask test` inside QEMU on every kernel
//! series; ignored on the host.

use cowtrace_tests::{make_file, Overlay, Tracer};
use std::ffi::CString;
use std::io::Write;
use std::path::Path;

const GUEST: &str = "needs a guest kernel: run through `cargo xtask test`";

fn append(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}

fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn doctor_passes_and_names_a_method_for_every_probe() {
    let _ = GUEST;
    let _ov = Overlay::new("doctor", |_| {});
    let out = std::process::Command::new(cowtrace_tests::cowtrace_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "doctor failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for role in ["copy_up_object", "whiteout", "opaque_dir", "write"] {
        let line = text
            .lines()
            .find(|l| l.contains(role))
            .unwrap_or_else(|| panic!("no {role} in doctor"));
        assert!(line.starts_with("ok"), "{line}");
    }
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn append_copies_up_each_file_with_exactly_its_bytes() {
    let sizes = [0usize, 1, 4096, 1 << 20, 64 << 20];
    let ov = Overlay::new("sizes", |l| {
        for s in sizes {
            make_file(&l.join(format!("f{s}")), s);
        }
        make_file(&l.join("trunc"), 8192);
    });
    let t = Tracer::start("sizes", &[]);
    for s in sizes {
        append(&ov.path(&format!("f{s}")), b"x");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(ov.path("trunc"))
        .unwrap();
    let tr = t.stop();
    println!("probes: {}", tr.report["probes"]);
    let dev = ov.dev();
    for s in sizes {
        let ev = tr.copy_up(&dev, &format!("f{s}"));
        assert_eq!(ev.len(), 1, "f{s}: {ev:#?}");
        assert_eq!(ev[0]["bytes"], s as u64, "f{s}");
        assert_eq!(ev[0]["data"], s > 0, "f{s}");
        assert_eq!(ev[0]["trigger"], "open", "f{s}");
        assert_eq!(ev[0]["parents"], 0);
        assert_eq!(ev[0]["file_type"], "file");
        assert!(ev[0]["latency_ns"].as_u64().unwrap() > 0);
        assert!(ev[0]["op_latency_ns"].as_u64().unwrap() >= ev[0]["latency_ns"].as_u64().unwrap());
    }
    let ev = tr.copy_up(&dev, "trunc");
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["bytes"], 0);
    assert_eq!(ev[0]["data"], false);
    assert_eq!(tr.of("copy_up", &dev).len(), sizes.len() + 1);
    let host = tr.container("host");
    assert_eq!(host["copy_up"]["count"], sizes.len() as u64 + 1);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn nested_file_copies_up_its_three_parents_in_one_operation() {
    let ov = Overlay::new("nested", |l| make_file(&l.join("a/b/c/f"), 100));
    let t = Tracer::start("nested", &[]);
    append(&ov.path("a/b/c/f"), b"y");
    let tr = t.stop();
    let dev = ov.dev();
    let f = tr.copy_up(&dev, "a/b/c/f");
    assert_eq!(f.len(), 1, "{:#?}", tr.events);
    assert_eq!(f[0]["parents"], 3);
    assert_eq!(f[0]["ancestor"], false);
    assert_eq!(f[0]["bytes"], 100);
    for d in ["a", "a/b", "a/b/c"] {
        let e = tr.copy_up(&dev, d);
        assert_eq!(e.len(), 1, "{d}");
        assert_eq!(e[0]["ancestor"], true);
        assert_eq!(e[0]["file_type"], "dir");
    }
    assert_eq!(tr.of("copy_up", &dev).len(), 4);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn each_syscall_reports_its_trigger() {
    let names = [
        "chmod", "chown", "touch", "xattr", "truncate", "mv", "ln", "open",
    ];
    let ov = Overlay::new("triggers", |l| {
        for n in names {
            make_file(&l.join(n), 10);
        }
        std::fs::create_dir(l.join("d")).unwrap();
        make_file(&l.join("d/child"), 1);
    });
    let t = Tracer::start("triggers", &[]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ov.path("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(ov.path("chown"), Some(1), Some(1)).unwrap();
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(&ov.path("touch")).as_ptr(),
            std::ptr::null(),
            0,
        )
    };
    assert_eq!(rc, 0);
    let name = CString::new("trusted.cowtrace").unwrap();
    let rc = unsafe {
        libc::setxattr(
            cstr(&ov.path("xattr")).as_ptr(),
            name.as_ptr(),
            b"v".as_ptr() as *const _,
            1,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    let rc = unsafe { libc::truncate(cstr(&ov.path("truncate")).as_ptr(), 5) };
    assert_eq!(rc, 0);
    std::fs::rename(ov.path("mv"), ov.path("mv2")).unwrap();
    std::fs::hard_link(ov.path("ln"), ov.path("ln2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(ov.path("open"))
        .unwrap();
    // Creating in a lower directory copies the directory up first.
    std::fs::write(ov.path("d/new"), b"").unwrap();
    let tr = t.stop();
    let dev = ov.dev();
    let expect = [
        ("chmod", "setattr"),
        ("chown", "setattr"),
        ("touch", "setattr"),
        ("xattr", "xattr"),
        ("truncate", "truncate"),
        ("mv", "rename"),
        ("ln", "link"),
        ("open", "open"),
        ("d", "parent"),
    ];
    for (path, trigger) in expect {
        let e = tr.copy_up(&dev, path);
        assert_eq!(e.len(), 1, "{path}: {:#?}", tr.of("copy_up", &dev));
        assert_eq!(e[0]["trigger"], trigger, "{path}: {:#}", e[0]);
    }
    // From 5.13 the kernel names the stacks' frames (bpf_snprintf's %ps);
    // before, kallsyms does.
    let named_by = if kernel_release() >= (5, 13) {
        "kernel"
    } else {
        "kallsyms"
    };
    assert_eq!(tr.report["trigger_names"], named_by, "{}", tr.stderr);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn removals_leave_whiteouts_and_a_remade_dir_is_opaque() {
    let ov = Overlay::new("whiteouts", |l| {
        make_file(&l.join("rmme"), 10);
        make_file(&l.join("mvme"), 10);
        std::fs::create_dir(l.join("emptydir")).unwrap();
        make_file(&l.join("tree/x/y"), 10);
        make_file(&l.join("tree/z"), 10);
    });
    let t = Tracer::start("whiteouts", &[]);
    std::fs::remove_file(ov.path("rmme")).unwrap();
    std::fs::remove_dir(ov.path("emptydir")).unwrap();
    std::fs::rename(ov.path("mvme"), ov.path("moved")).unwrap();
    std::fs::remove_dir_all(ov.path("tree")).unwrap();
    std::fs::create_dir(ov.path("tree")).unwrap();
    let tr = t.stop();
    let dev = ov.dev();
    let wh = tr.of("whiteout", &dev);
    let find = |p: &str| wh.iter().filter(|e| e["path"] == p).collect::<Vec<_>>();
    assert_eq!(find("rmme").len(), 1, "{wh:#?}");
    assert_eq!(find("rmme")[0]["cause"], "unlink");
    assert_eq!(find("emptydir")[0]["cause"], "rmdir");
    assert_eq!(find("emptydir")[0]["file_type"], "dir");
    assert_eq!(find("mvme").len(), 1, "{wh:#?}");
    assert_eq!(find("mvme")[0]["cause"], "rename");
    for p in ["tree/x/y", "tree/x", "tree/z", "tree"] {
        assert_eq!(find(p).len(), 1, "{p}: {wh:#?}");
    }
    let opaque = tr.of("opaque_dir", &dev);
    assert_eq!(opaque.len(), 1, "{opaque:#?}");
    assert_eq!(opaque[0]["path"], "tree");
    let host = tr.container("host");
    assert_eq!(host["whiteouts"]["count"], wh.len() as u64);
    assert_eq!(host["opaque_dirs"]["count"], 1);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn every_write_to_an_upper_file_is_counted() {
    // Default sampling (one in 8 timed) and every write timed: the counts
    // are exact either way.
    for (name, args, timed) in [
        ("writes-sampled", &[][..], 125..=126),
        ("writes-all", &["--write-sample", "1"][..], 1000..=1000),
    ] {
        let ov = Overlay::new(name, |_| {});
        let t = Tracer::start(name, args);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ov.path("log"))
            .unwrap();
        let block = [7u8; 4096];
        for _ in 0..1000 {
            f.write_all(&block).unwrap();
        }
        drop(f);
        let tr = t.stop();
        let w = &tr.container("host")["writes"];
        assert_eq!(w["count"], 1000, "{args:?}: {w:#}");
        assert_eq!(w["bytes"], 4_096_000);
        // Every 8th write on each CPU: 1000 split over the two vCPUs in
        // runs gives 125 or 126 (each CPU's sequence starts in the sample).
        let n = w["timed"].as_u64().unwrap();
        assert!(timed.contains(&n), "{args:?}: timed {n}, want {timed:?}");
        let every = if args.is_empty() { 8 } else { 1 };
        assert_eq!(tr.report["write_sample_every"], every);
        assert!(w["latency_ns"]["p50"].as_u64().unwrap() > 0);
        assert!(!w["hdr"].as_str().unwrap().is_empty());
    }
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn racing_threads_copy_up_once_and_thousands_arrive_without_drops() {
    let ov = Overlay::new("threads", |l| {
        make_file(&l.join("shared"), 1 << 20);
        for t in 0..8 {
            for i in 0..500 {
                make_file(&l.join(format!("t{t}/f{i}")), 16);
            }
        }
    });
    let t = Tracer::start("threads", &[]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let shared = ov.path("shared");
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let b = barrier.clone();
            let p = shared.clone();
            std::thread::spawn(move || {
                b.wait();
                std::fs::OpenOptions::new().write(true).open(p).unwrap();
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let dir = ov.path(&format!("t{t}"));
            std::thread::spawn(move || {
                for i in 0..500 {
                    append(&dir.join(format!("f{i}")), b"z");
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let tr = t.stop();
    let dev = ov.dev();
    assert_eq!(tr.copy_up(&dev, "shared").len(), 1);
    let files = tr
        .of("copy_up", &dev)
        .into_iter()
        .filter(|e| e["file_type"] == "file" && e["path"] != "shared")
        .count();
    assert_eq!(files, 4000, "drops: {}", tr.report["drops"]);
    for k in ["copy_up", "whiteout", "opaque_dir"] {
        assert_eq!(tr.report["drops"][k], 0, "{}", tr.report["drops"]);
    }
}

/// Runs `sh -c script` inside cgroup `cg`.
fn in_cgroup(cg: &Path, script: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            cg.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn cgroup_filter_excludes_other_cgroups_completely() {
    let ov = Overlay::new("cgroups", |l| {
        for i in 0..20 {
            make_file(&l.join(format!("a{i}")), 10);
            make_file(&l.join(format!("b{i}")), 10);
        }
    });
    let a = Path::new("/sys/fs/cgroup/ct-a");
    let b = Path::new("/sys/fs/cgroup/ct-b");
    for c in [a, b] {
        let _ = std::fs::create_dir(c);
    }
    let t = Tracer::start("cgroups", &["--cgroup", a.to_str().unwrap()]);
    let m = ov.merged.display();
    in_cgroup(
        a,
        &format!("for i in $(seq 0 19); do echo x >> {m}/a$i; rm {m}/b$i; done"),
    );
    in_cgroup(
        b,
        &format!("for i in $(seq 0 19); do echo x >> {m}/b$i 2>/dev/null; done; echo y >> {m}/a0"),
    );
    let tr = t.stop();
    // Leave the cgroups so they can be removed.
    let root = Path::new("/sys/fs/cgroup/cgroup.procs");
    let _ = std::fs::write(root, std::process::id().to_string());
    let dev = ov.dev();
    let ups = tr.of("copy_up", &dev);
    assert_eq!(ups.len(), 20, "{ups:#?}");
    assert!(ups
        .iter()
        .all(|e| e["path"].as_str().unwrap().starts_with('a')));
    assert_eq!(tr.of("whiteout", &dev).len(), 20);
    let _ = ov.lower.exists();
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn kprobes_only_mode_reports_the_same_copy_ups_and_writes() {
    let ov = Overlay::new("kprobes", |l| make_file(&l.join("f"), 4096));
    let t = Tracer::start("kprobes", &["--kprobes-only"]);
    append(&ov.path("f"), b"1");
    append(&ov.path("f"), b"2");
    let tr = t.stop();
    assert!(
        tr.report["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["method"].as_str().unwrap().contains("fentry")),
        "{}",
        tr.report["probes"]
    );
    let e = tr.copy_up(&ov.dev(), "f");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["bytes"], 4096);
    assert_eq!(tr.container("host")["writes"]["count"], 2);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn duration_ends_with_complete_json() {
    let ov = Overlay::new("duration", |l| make_file(&l.join("f"), 10));
    let t = Tracer::start("duration", &["--duration", "3s"]);
    append(&ov.path("f"), b"1");
    let tr = t.finish();
    assert_eq!(tr.report["schema"], "cowtrace/v1");
    assert!(tr.report["duration_s"].as_f64().unwrap() >= 3.0);
    assert_eq!(tr.container("host")["copy_up"]["count"], 1);
    assert!(tr.stderr.contains("cowtrace summary"), "{}", tr.stderr);
    // Return probes live in tracefs (for their instance count): none may
    // outlive the run.
    let events = std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap();
    assert!(!events.contains("cowtrace_"), "left behind:\n{events}");
    let methods = tr.report["probes"].to_string();
    assert!(methods.contains("kprobe+kretprobe"), "{methods}");
}

/// Without module BTF (Debian 5.10) the agent falls back to fixed argument
/// positions for overlay's internal helpers; wherever module BTF exists,
/// it must agree with them.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn fallback_argument_positions_match_module_btf() {
    let _ov = Overlay::new("btf", |_| {});
    let btf = cowtrace::probes::KernelBtf::load().unwrap();
    let Some(ovl) = &btf.overlay else {
        println!("no overlay module BTF on this kernel: nothing to compare");
        return;
    };
    let kallsyms = cowtrace::probes::Kallsyms::start();
    let opts = cowtrace::probes::ProbeOptions::default();
    let plan = cowtrace::probes::plan(&kallsyms, Some(&btf), &opts);
    let with = cowtrace::probes::layout(&btf, &plan).unwrap();
    let without = cowtrace::probes::layout(
        &cowtrace::probes::KernelBtf {
            vmlinux: btf.vmlinux.clone(),
            overlay: None,
            functions: btf.functions.clone(),
        },
        &plan,
    )
    .unwrap();
    assert_eq!(
        with.copy_up_flags_dentry_arg,
        without.copy_up_flags_dentry_arg
    );
    assert_eq!(with.copy_up_one_dentry_arg, without.copy_up_one_dentry_arg);
    assert_eq!(with.do_remove_dentry_arg, without.do_remove_dentry_arg);
    assert_eq!(with.do_remove_is_dir_arg, without.do_remove_is_dir_arg);
    assert_eq!(with.rename_old_arg, without.rename_old_arg);
    assert_eq!(with.rename_new_arg, without.rename_new_arg);
    assert_eq!(with.mkdir_dentry_arg, without.mkdir_dentry_arg);
    assert_eq!(with.copy_data_len_arg, without.copy_data_len_arg);
    let data_fn = ["ovl_copy_up_file", "ovl_copy_up_data"]
        .into_iter()
        .find(|f| ovl.has_func(f))
        .expect("a data-copy function in overlay BTF");
    assert_eq!(ovl.param_index(data_fn, "len"), Some(3));
}

/// The plan asks BTF before kallsyms (so a run need not wait for
/// kallsyms): every attach candidate BTF lists must be one kallsyms lists,
/// and where BTF has the unwinder's return-address recovery, kallsyms must
/// not have the trampoline's old name.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn btf_answers_what_kallsyms_would() {
    let _ov = Overlay::new("btfks", |_| {});
    let btf = cowtrace::probes::KernelBtf::load().unwrap();
    let syms = cowtrace::probes::KernelSymbols::load().unwrap();
    let mut by_btf = Vec::new();
    for c in cowtrace::points::all_candidates() {
        if btf.functions.contains(c) {
            assert!(syms.has(c), "BTF lists {c}, kallsyms does not");
            by_btf.push(c);
        }
    }
    let recovery = cowtrace::probes::RETURN_ADDRESS_RECOVERY
        .iter()
        .any(|f| btf.functions.contains(f));
    if recovery {
        assert!(
            !syms.unwind_stops_at_kretprobe,
            "BTF has a return-address recovery function, kallsyms the old trampoline"
        );
    }
    println!(
        "BTF lists {} of the candidates ({by_btf:?}); return-address recovery in BTF: {recovery}",
        by_btf.len()
    );
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn a_closed_stdout_ends_cowtrace_quietly() {
    use std::io::BufRead;
    let ov = Overlay::new("pipe", |l| {
        for i in 0..50 {
            make_file(&l.join(format!("f{i}")), 10);
        }
    });
    let mut child = std::process::Command::new(cowtrace_tests::cowtrace_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Like `cowtrace | head -1`: read the header, then close the pipe.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    out.read_line(&mut header).unwrap();
    assert!(header.starts_with("TIME"), "{header}");
    drop(out);
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = err.lines();
    loop {
        let l = lines
            .next()
            .expect("cowtrace ended before tracing")
            .unwrap();
        if l.starts_with("tracing") {
            break;
        }
    }
    for i in 0..50 {
        append(&ov.path(&format!("f{i}")), b"x");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cowtrace kept running with stdout closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("panicked") || l.contains("Broken pipe")),
        "{rest:?}"
    );
}

// ------------------------------------------------------------ issue 11

const KPROBE_EVENTS: &str = "/sys/kernel/tracing/kprobe_events";

/// Instance ids of the cowtrace return probes in tracefs now.
fn cowtrace_probe_instances() -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(KPROBE_EVENTS)
        .unwrap()
        .lines()
        .filter_map(|l| l.split("kprobes/cowtrace_").nth(1))
        .filter_map(|rest| rest.split('_').next().map(str::to_string))
        .collect()
}

fn assert_no_probes_left() {
    let events = std::fs::read_to_string(KPROBE_EVENTS).unwrap();
    assert!(!events.contains("cowtrace_"), "left behind:\n{events}");
}

/// Runs `sh -c script` as nobody (uid/gid 65534).
fn as_nobody(script: &str) {
    use std::os::unix::process::CommandExt;
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(st.success(), "as nobody: {script}");
}

fn run_cowtrace(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cowtrace_tests::cowtrace_bin())
        .args(args)
        .output()
        .unwrap()
}

/// A world-writable sticky directory (like /tmp) with
/// fs.protected_symlinks=0: any local user can plant symlinks where root
/// writes. cowtrace must never open, truncate or write through them.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn symlinks_planted_by_a_user_in_a_shared_directory_are_never_followed() {
    use std::os::unix::fs::PermissionsExt;
    let ov = Overlay::new("shared", |l| make_file(&l.join("f"), 100));
    let old = std::fs::read_to_string("/proc/sys/fs/protected_symlinks").unwrap();
    std::fs::write("/proc/sys/fs/protected_symlinks", "0").unwrap();
    let shared = Path::new("/tmp/shared");
    let _ = std::fs::remove_dir_all(shared);
    std::fs::create_dir(shared).unwrap();
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = Path::new("/root/victim");
    std::fs::write(victim, b"precious").unwrap();
    as_nobody("ln -s /root/victim /tmp/shared/r.json && ln -s /root/victim /tmp/shared/e.ndjson");
    let o = run_cowtrace(&["--json", "/tmp/shared/r.json", "--duration", "1s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    let o = run_cowtrace(&["--events", "/tmp/shared/e.ndjson", "--duration", "1s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(victim).unwrap(), b"precious");

    // A real run. While it runs, the user plants a symlink where the
    // report will go, and a directory and symlinks at the temporary
    // names the old code used (predictable from the pid).
    let t = Tracer::start_args(
        "shared",
        &[],
        &[
            "--quiet",
            "--interval",
            "2s",
            "--json",
            "/tmp/shared/ok.json",
            "--events",
            "/tmp/shared/ok.ndjson",
        ],
    );
    let pid = t.pid();
    as_nobody(&format!(
        "ln -s /root/victim /tmp/shared/ok.json; mkdir /tmp/shared/.ok.json.{pid}.tmp; \
         ln -s /root/victim /tmp/shared/.cowtrace-probe-{pid}"
    ));
    append(&ov.path("f"), b"x");
    std::thread::sleep(std::time::Duration::from_secs(3));
    t.signal(libc::SIGINT);
    let mut t = t;
    let (status, stderr) = t.wait_end();
    std::fs::write("/proc/sys/fs/protected_symlinks", old.trim()).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(std::fs::read(victim).unwrap(), b"precious", "{stderr}");
    let md = std::fs::symlink_metadata("/tmp/shared/ok.json").unwrap();
    assert!(md.file_type().is_file(), "ok.json is not a regular file");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("/tmp/shared/ok.json").unwrap()).unwrap();
    assert_eq!(report["containers"][0]["copy_up"]["count"], 1, "{report:#}");
    let events = std::fs::read_to_string("/tmp/shared/ok.ndjson").unwrap();
    assert_eq!(events.lines().count(), 1, "{events}");
    // Nothing of cowtrace's own is left beside the report.
    let mut names: Vec<String> = std::fs::read_dir(shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expect = [
        format!(".cowtrace-probe-{pid}"),
        format!(".ok.json.{pid}.tmp"),
        "e.ndjson".to_string(),
        "ok.json".to_string(),
        "ok.ndjson".to_string(),
        "r.json".to_string(),
    ];
    assert_eq!(names, expect);
    std::fs::remove_dir_all(shared).unwrap();
}

/// `--events /dev/full`: the lost events are reported once, the JSON is
/// still written, and the exit status says something failed.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn an_events_write_error_is_reported_once_and_the_json_still_written() {
    let ov = Overlay::new("full", |l| {
        for i in 0..100 {
            make_file(&l.join(format!("f{i}")), 10);
        }
    });
    let mut t = Tracer::start_args(
        "full",
        &[],
        &[
            "--quiet",
            "--interval",
            "1h",
            "--events",
            "/dev/full",
            "--json",
            "/tmp/trace-full/report.json",
        ],
    );
    for i in 0..100 {
        append(&ov.path(&format!("f{i}")), b"x");
    }
    t.signal(libc::SIGINT);
    let (status, stderr) = t.wait_end();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("writing events to /dev/full: No space left on device"))
        .count();
    assert_eq!(said, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let tr = t.outputs(status, stderr);
    assert_eq!(tr.container("host")["copy_up"]["count"], 100);
    assert!(tr.stderr.contains("cowtrace summary"), "{}", tr.stderr);
}

/// An ssh session dropping sends SIGHUP: the run must end like Ctrl-C.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn sighup_ends_with_complete_outputs_and_no_probes_left() {
    let ov = Overlay::new("hup", |l| make_file(&l.join("f"), 10));
    let t = Tracer::start("hup", &[]);
    append(&ov.path("f"), b"x");
    std::thread::sleep(std::time::Duration::from_millis(500));
    t.signal(libc::SIGHUP);
    let tr = t.finish();
    let e = tr.copy_up(&ov.dev(), "f");
    assert_eq!(e.len(), 1, "{:#?}", tr.events);
    assert_eq!(tr.container("host")["copy_up"]["count"], 1);
    assert_no_probes_left();
    // The event's wall-clock time is now (give or take the run).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let t_ev = e[0]["time_unix_ns"].as_i64().unwrap();
    assert!((now - t_ev).abs() < 120_000_000_000, "{t_ev} vs {now}");
    let off = tr.report["clock"]["monotonic_to_unix_ns"].as_i64().unwrap();
    assert_eq!(e[0]["ts_ns"].as_i64().unwrap() + off, t_ev);
}

/// Copy-ups and whiteouts from several threads without pause, kept going
/// until cowtrace has exited: the end must come while the storm goes on
/// (an agent that drained until the ring buffer was empty would never
/// end), with complete JSON. No wall-clock bound: the times are printed,
/// and the only limit is the 60 s after which the test calls it a hang.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn the_end_comes_during_an_event_storm() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let n = 3000;
    let ov = Overlay::new("storm", |l| {
        for t in 0..3 {
            for i in 0..n {
                make_file(&l.join(format!("t{t}/f{i}")), 16);
            }
        }
    });
    let t = Tracer::start("storm", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // Every operation, and those of the first pass: one copy-up or one
    // whiteout each.
    let made = Arc::new(AtomicU64::new(0));
    let first_pass = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..3)
        .map(|th| {
            let dir = ov.path(&format!("t{th}"));
            let stop = stop.clone();
            let made = made.clone();
            let first_pass = first_pass.clone();
            // The first pass copies up (or whites out) every file; later
            // passes append again (writes) or re-create and remove (a
            // whiteout each time), so the storm lasts until it is stopped.
            std::thread::spawn(move || {
                for pass in 0.. {
                    for i in 0..n {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let p = dir.join(format!("f{i}"));
                        if th == 2 {
                            if pass > 0 {
                                let _ = std::fs::write(&p, b"y");
                            }
                            let _ = std::fs::remove_file(p);
                        } else {
                            append(&p, b"z");
                        }
                        made.fetch_add(1, Ordering::Relaxed);
                        if pass == 0 {
                            first_pass.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = made.load(Ordering::Relaxed);
    let cow_before = first_pass.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    t.signal(libc::SIGINT);
    let mut t = t;
    // The summary is printed after the final JSON is written.
    let reported = t.wait_for_line("--- cowtrace summary", std::time::Duration::from_secs(60));
    let report_took = t0.elapsed();
    let at_report = made.load(Ordering::Relaxed);
    let status = t.wait_for(std::time::Duration::from_secs(60));
    let exit_took = t0.elapsed();
    let at_exit = made.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    hs.into_iter().for_each(|h| h.join().unwrap());
    let status = status.expect("cowtrace still running 60 s after SIGINT");
    let stderr = t.rest_of_stderr();
    println!(
        "storm: {before} events made before the signal, {at_report} at the final report, \
         {at_exit} at exit; final report after {report_took:?}, \
         exit (probes detached) after {exit_took:?}"
    );
    assert!(reported, "no summary within 60 s of the signal: {stderr}");
    assert!(before > 100, "no storm: {before}");
    // The storm was still going when the report was written: the end did
    // not wait for the events to stop.
    assert!(
        at_report > before,
        "no event was made between the signal and the report\n{stderr}"
    );
    let tr = t.outputs(status, stderr);
    assert!(tr.status.success(), "{}", tr.stderr);
    let host = tr.container("host");
    let seen =
        host["copy_up"]["count"].as_u64().unwrap() + host["whiteouts"]["count"].as_u64().unwrap();
    let dropped: u64 = ["copy_up", "whiteout", "opaque_dir"]
        .iter()
        .map(|k| tr.report["drops"][k].as_u64().unwrap())
        .sum();
    println!(
        "storm: {seen} copy-ups and whiteouts in the report, {cow_before} made before the signal, \
         {dropped} counted as dropped"
    );
    assert!(seen >= cow_before / 2, "{seen} of {cow_before}");
    assert_no_probes_left();
}

/// A reader that stops reading a FIFO blocks cowtrace's writes; Ctrl-C
/// cannot finish the orderly end then, and a second one must end the
/// process at once, after removing its tracefs probes.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn a_second_signal_ends_at_once_after_detaching() {
    use std::os::unix::fs::OpenOptionsExt;
    let ov = Overlay::new("second", |l| {
        for i in 0..600 {
            make_file(&l.join(format!("f{i}")), 10);
        }
    });
    let fifo = "/tmp/stalled.fifo";
    let _ = std::fs::remove_file(fifo);
    let c = CString::new(fifo).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opened for reading, never read.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .unwrap();
    let mut t = Tracer::start_args(
        "second",
        &[],
        &[
            "--quiet",
            "--events",
            fifo,
            "--json",
            "/tmp/trace-second/r.json",
        ],
    );
    assert!(!cowtrace_probe_instances().is_empty());
    for i in 0..600 {
        append(&ov.path(&format!("f{i}")), b"x");
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    t.signal(libc::SIGINT);
    assert!(
        t.wait_for(std::time::Duration::from_secs(2)).is_none(),
        "cowtrace ended although its writes were blocked: the test shows nothing"
    );
    let t0 = std::time::Instant::now();
    t.signal(libc::SIGINT);
    // Without the second signal it would never end: ending at all is the
    // test. What it still waits for is the kernel detaching its probes as
    // the process exits (1.5 to 2.3 s measured under TCG); the limit only
    // tells a hang from a slow guest.
    let status = t.wait_for(std::time::Duration::from_secs(60));
    let took = t0.elapsed();
    let stderr = t.rest_of_stderr();
    let status = status.unwrap_or_else(|| panic!("a second SIGINT did not end cowtrace: {stderr}"));
    println!("second signal: ended after {took:?}");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
    assert_no_probes_left();
}

/// A runtime API that accepts connections and never answers must not
/// delay the end.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn a_hung_runtime_api_does_not_delay_the_end() {
    let ov = Overlay::new("hung", |l| make_file(&l.join("f"), 10));
    let sock = "/tmp/hung-docker.sock";
    let api = cowtrace_tests::HungApi::bind(sock);
    let host = format!("DOCKER_HOST=unix://{sock}");
    let t = Tracer::start_with("hung", &["env", &host], &[]);
    // The first event on this overlay asks the runtime whose it is; the
    // signal goes the moment a request is in flight.
    append(&ov.path("f"), b"x");
    let asked = api.next_request(std::time::Duration::from_secs(30));
    let t0 = std::time::Instant::now();
    t.signal(libc::SIGINT);
    let mut t = t;
    // The summary is printed after the final JSON is written.
    let reported = t.wait_for_line("--- cowtrace summary", std::time::Duration::from_secs(30));
    let reported_at = std::time::Instant::now();
    let status = t.wait_for(std::time::Duration::from_secs(60));
    let exit_took = t0.elapsed();
    let stderr = t.rest_of_stderr();
    let status = status.unwrap_or_else(|| panic!("still running: {stderr}"));
    println!(
        "hung API: signal {:?} after the request, final report after {:?}, exit after {exit_took:?}",
        t0 - asked,
        reported_at - t0
    );
    assert!(reported, "no summary: {stderr}");
    assert!(
        cowtrace_tests::HungApi::ended_before_the_deadline(asked, reported_at),
        "the final report waited for the request in flight\n{stderr}"
    );
    let tr = t.outputs(status, stderr);
    assert!(tr.status.success(), "{}", tr.stderr);
    assert_eq!(tr.copy_up(&ov.dev(), "f").len(), 1, "{:#?}", tr.events);
    assert_no_probes_left();
}

/// Two agents at once, each pid 1 of its own pid namespace (as in two
/// containers): both attach their own return probes, both see events, and
/// each removes only its own. A third, killed with SIGKILL, leaves stale
/// probes that the next agent removes without touching the live ones.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn two_instances_in_separate_pid_namespaces_both_work() {
    let ov = Overlay::new("instances", |l| {
        make_file(&l.join("f0"), 10);
        make_file(&l.join("f1"), 10);
    });
    assert_no_probes_left();
    let unshare = ["unshare", "-p", "-f"];
    let a = Tracer::start_with("inst-a", &unshare, &["--duration", "80s"]);
    let one = cowtrace_probe_instances();
    assert_eq!(one.len(), 1, "{one:?}");
    let b = Tracer::start_with("inst-b", &unshare, &["--duration", "40s"]);
    let two = cowtrace_probe_instances();
    assert_eq!(two.len(), 2, "{two:?}");
    append(&ov.path("f0"), b"x");

    let mut c = Tracer::start("inst-c", &[]);
    c.signal(libc::SIGKILL);
    assert!(c.wait_for(std::time::Duration::from_secs(10)).is_some());
    assert_eq!(
        cowtrace_probe_instances().len(),
        3,
        "c's probes are stale now"
    );
    let d = Tracer::start("inst-d", &["--duration", "1s"]);
    let _ = d.finish();
    assert_eq!(cowtrace_probe_instances(), two, "only c's stale probes go");

    let tb = b.finish();
    assert_eq!(cowtrace_probe_instances(), one, "b removes its own only");
    append(&ov.path("f1"), b"x");
    let ta = a.finish();
    assert_no_probes_left();
    let dev = ov.dev();
    assert_eq!(ta.copy_up(&dev, "f0").len(), 1);
    assert_eq!(ta.copy_up(&dev, "f1").len(), 1);
    assert_eq!(tb.copy_up(&dev, "f0").len(), 1);
    for tr in [&ta, &tb] {
        assert!(!tr.stderr.contains("kretprobe"), "{}", tr.stderr);
        let m = tr.report["probes"].to_string();
        assert!(
            m.contains("kprobe+kretprobe\"") && !m.contains("(perf)"),
            "{m}"
        );
    }
}

/// `Cap*` masks of a process's status file.
fn caps_of(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Once attached, the agent keeps only the capabilities README documents,
/// in every thread, and still works with them (map reads, the final
/// tracefs cleanup).
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn after_attaching_only_the_documented_capabilities_are_left() {
    let ov = Overlay::new("caps", |l| make_file(&l.join("f"), 10));
    let t = Tracer::start("caps", &[]);
    let want = cowtrace::privileges::mask(cowtrace::privileges::KEPT);
    let pid = t.pid();
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert_eq!(caps_of(&status, "CapEff:"), want, "{status}");
        assert_eq!(caps_of(&status, "CapPrm:"), want, "{status}");
        assert_eq!(caps_of(&status, "CapInh:"), 0, "{status}");
        threads += 1;
    }
    println!("CapEff {want:016x} in {threads} thread(s)");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ov.path("f"))
        .unwrap();
    f.write_all(b"x").unwrap();
    f.write_all(b"y").unwrap();
    drop(f);
    let tr = t.stop();
    assert_eq!(tr.copy_up(&ov.dev(), "f").len(), 1);
    let host = tr.container("host");
    assert!(host["writes"]["count"].as_u64().unwrap() >= 1, "{host:#}");
    assert_no_probes_left();
}

/// The kernel keeps 16 components of 63 bytes. Two 221-byte names sharing
/// their first 120 bytes stay two files, a directory really named `…` is
/// not taken for a cut, and a path cut at the top is told from a name cut.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn long_names_deep_paths_and_a_directory_named_ellipsis_are_told_apart() {
    let a = format!("{}{}", "L".repeat(120), "a".repeat(101));
    let b = format!("{}{}", "L".repeat(120), "b".repeat(101));
    let deep: String = (0..20).map(|i| format!("d{i}/")).collect::<String>() + "f";
    let ov = Overlay::new("names", |l| {
        make_file(&l.join(&a), 10);
        make_file(&l.join(&b), 10);
        make_file(&l.join("…/x"), 10);
        make_file(&l.join(&deep), 10);
    });
    let t = Tracer::start("names", &[]);
    for p in [&a, &b, "…/x", &deep] {
        append(&ov.path(p), b"x");
    }
    let tr = t.stop();
    let dev = ov.dev();
    let targets: Vec<&str> = tr
        .of("copy_up", &dev)
        .into_iter()
        .filter(|e| e["ancestor"] == false)
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    println!("{targets:#?}");
    let cut = format!("{}\\…\\#", "L".repeat(63));
    let long: Vec<&&str> = targets.iter().filter(|p| p.starts_with(&cut)).collect();
    assert_eq!(long.len(), 2, "{targets:#?}");
    assert_ne!(long[0], long[1]);
    assert!(targets.contains(&"…/x"), "{targets:#?}");
    let d = targets
        .iter()
        .find(|p| p.ends_with("/d19/f"))
        .unwrap_or_else(|| panic!("{targets:#?}"));
    assert!(d.starts_with("\\…/d"), "{d}");
    assert!(!d.contains("\\#"), "{d}");
    let top = tr.container("host")["top_files"]
        .as_array()
        .unwrap()
        .clone();
    let long_top = top
        .iter()
        .filter(|f| f["path"].as_str().unwrap().starts_with(&cut))
        .count();
    assert_eq!(long_top, 2, "{top:#?}");
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn a_full_write_map_is_counted_in_drops() {
    let a = Overlay::new("mapfull-a", |_| {});
    let b = Overlay::new("mapfull-b", |_| {});
    // One (cgroup, overlay) pair fits: this process's writes into `a`
    // take it, its writes into `b` find the map full. With --verbose the
    // programs say so themselves (aya-log), once per CPU.
    let t = Tracer::start("mapfull", &["--write-keys", "1", "--verbose"]);
    let block = [1u8; 4096];
    for (ov, n) in [(&a, 10), (&b, 7)] {
        let mut f = std::fs::File::create(ov.path("log")).unwrap();
        for _ in 0..n {
            f.write_all(&block).unwrap();
        }
    }
    let tr = t.stop();
    let full = &tr.report["drops"]["map_full"];
    assert_eq!(full["writes"], 7, "{:#}", tr.report["drops"]);
    for k in ["write_starts", "copy_ops", "copy_objs", "ovl_ops"] {
        assert_eq!(full[k], 0, "{k}: {:#}", tr.report["drops"]);
    }
    assert_eq!(tr.container("host")["writes"]["count"], 10);
    let writes = &tr.report["kernel_maps"]["writes"];
    assert_eq!(writes["max_entries"], 1, "{writes:#}");
    assert_eq!(writes["entries"], 1, "{writes:#}");
    assert!(
        tr.stderr.contains("kernel maps full: 7 writes not counted"),
        "{}",
        tr.stderr
    );
    let said: Vec<_> = tr
        .stderr
        .lines()
        .filter(|l| l.starts_with("cowtrace: bpf warn: map WRITES full"))
        .collect();
    // The writer may move between CPUs: one line per CPU it was refused on.
    assert!(
        !said.is_empty() && said.len() <= 7,
        "the programs' diagnostics: {said:?}\n{}",
        tr.stderr
    );
}

/// Without --verbose the programs' diagnostics are off in the kernel.
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn the_programs_diagnostics_are_off_without_verbose() {
    let a = Overlay::new("quiet-a", |_| {});
    let b = Overlay::new("quiet-b", |_| {});
    let t = Tracer::start("quiet", &["--write-keys", "1"]);
    for ov in [&a, &b] {
        std::fs::write(ov.path("log"), [1u8; 4096]).unwrap();
    }
    let tr = t.stop();
    assert_eq!(tr.report["drops"]["map_full"]["writes"], 1);
    assert!(!tr.stderr.contains("cowtrace: bpf"), "{}", tr.stderr);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn exiting_threads_and_processes_leave_no_per_thread_state() {
    let ov = Overlay::new("exits", |l| {
        for i in 0..10 {
            make_file(&l.join(format!("d{i}/keep")), 1);
        }
    });
    let t = Tracer::start("exits", &[]);
    // Every create and unlink enters ovl_copy_up_flags (for the parent
    // directory, already copied up after the first), and no copy-up
    // return follows: without clean-up on exit each of these threads
    // would leave an entry behind.
    for round in 0..10 {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let p = ov.path(&format!("d{}/t{round}-{i}", i % 10));
                std::thread::spawn(move || {
                    std::fs::write(&p, b"x").unwrap();
                    std::fs::remove_file(&p).unwrap();
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    }
    let m = ov.merged.display();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 100); do sh -c 'echo y > {m}/d0/p'$i'; rm {m}/d0/p'$i; done"
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let tr = t.stop();
    let maps = &tr.report["kernel_maps"];
    for k in ["copy_ops", "copy_objs", "ovl_ops", "write_starts"] {
        assert_eq!(maps[k]["entries"], 0, "{k}: {maps:#}");
        assert!(maps[k]["max_entries"].as_u64().unwrap() > 0, "{maps:#}");
    }
    // The workload went through the probes: one copy-up per directory,
    // and writes seen (not necessarily all 300: a BPF trampoline skips a
    // write whose program is re-entered on a preempted CPU, see README).
    let dev = ov.dev();
    assert_eq!(tr.of("copy_up", &dev).len(), 10, "{:#?}", tr.events);
    assert!(tr.container("host")["writes"]["count"].as_u64().unwrap() > 0);
    assert_eq!(tr.report["drops"]["map_full"]["copy_ops"], 0);
}

/// The `overlay mount` line `cowtrace doctor` prints for `mount_point`.
fn doctor_mount_line(text: &str, mount_point: &Path) -> String {
    let needle = format!("{} (", mount_point.display());
    text.lines()
        .find(|l| l.contains("overlay mount") && l.contains(&needle))
        .unwrap_or_else(|| panic!("doctor lists no overlay at {needle}:\n{text}"))
        .to_string()
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn mount_options_are_recorded_per_overlay_and_listed_by_doctor() {
    let plain = Overlay::new("opts-plain", |l| make_file(&l.join("f"), 10));
    let vol = Overlay::with_options("opts-vol", "index=off,volatile", |l| {
        make_file(&l.join("f"), 20)
    });
    let out = std::process::Command::new(cowtrace_tests::cowtrace_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "doctor failed:\n{text}");
    let line = doctor_mount_line(&text, &plain.merged);
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains("index=off"), "{line}");
    assert!(!line.contains("volatile"), "{line}");
    let line = doctor_mount_line(&text, &vol.merged);
    let raw = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let raw = raw
        .lines()
        .find(|l| l.contains(vol.merged.to_str().unwrap()))
        .unwrap_or("");
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains(" volatile"), "{line}\nmountinfo: {raw}");

    let t = Tracer::start("opts", &[]);
    append(&plain.path("f"), b"x");
    append(&vol.path("f"), b"x");
    let tr = t.stop();
    let (pd, vd) = (plain.dev(), vol.dev());
    for (dev, volatile) in [(&pd, false), (&vd, true)] {
        let o = tr.overlay(dev);
        let merged = if volatile { &vol.merged } else { &plain.merged };
        assert_eq!(o["mount_point"], merged.to_str().unwrap(), "{o:#}");
        assert!(o["filesystem"].is_null(), "no container's: {o:#}");
        let opts = &o["overlay_options"];
        assert_eq!(opts["volatile"], volatile, "{o:#}");
        assert_eq!(opts["index"], false, "{o:#}");
        assert_eq!(opts["userxattr"], false, "{o:#}");
        // Debian builds overlay with metacopy off by default.
        assert_eq!(opts["metacopy"], false, "{o:#}");
    }
    assert_eq!(tr.report["overlays"].as_array().unwrap().len(), 2);
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn volatile_copy_ups_are_counted_exactly() {
    let sizes = [1usize, 4096, 300_000, 1 << 20];
    let ov = Overlay::with_options("volatile", "index=off,volatile", |l| {
        for s in sizes {
            make_file(&l.join(format!("d/f{s}")), s);
        }
    });
    let t = Tracer::start("volatile", &[]);
    for s in sizes {
        append(&ov.path(&format!("d/f{s}")), b"x");
    }
    let tr = t.stop();
    let dev = ov.dev();
    assert_eq!(tr.overlay(&dev)["overlay_options"]["volatile"], true);
    each_copied_up_once_by_open(&tr, &dev, &sizes);
    // The files and their one parent directory, copied up once.
    assert_eq!(tr.copy_up(&dev, "d").len(), 1);
    assert_eq!(tr.of("copy_up", &dev).len(), sizes.len() + 1);
    let host = tr.container("host");
    assert_eq!(host["copy_up"]["count"], sizes.len() as u64 + 1);
    assert_eq!(host["copy_up"]["bytes"], sizes.iter().sum::<usize>() as u64);
    assert_eq!(tr.report["drops"]["copy_up"], 0);
}

/// Each `d/f<size>` of `sizes` was copied up once, with exactly its
/// bytes, for an open.
fn each_copied_up_once_by_open(tr: &cowtrace_tests::Trace, dev: &str, sizes: &[usize]) {
    for s in sizes {
        let ev = tr.copy_up(dev, &format!("d/f{s}"));
        assert_eq!(ev.len(), 1, "f{s}: {ev:#?}");
        assert_eq!(ev[0]["bytes"], *s as u64, "f{s}");
        assert_eq!(ev[0]["trigger"], "open", "f{s}");
    }
}

/// Appends `x` to `path` from a shell of its own; its pid.
fn append_from_shell(path: &Path) -> u32 {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf x >> '{}'", path.display()))
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(
        child.wait().unwrap().success(),
        "append to {}",
        path.display()
    );
    pid
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn metacopy_chmod_copies_metadata_only_and_the_first_write_the_data() {
    use std::os::unix::fs::PermissionsExt;
    let sizes = [1usize, 4096, 300_000, 1 << 20, 8 << 20];
    let populate = |l: &Path| {
        for s in sizes {
            make_file(&l.join(format!("d/f{s}")), s);
        }
    };
    let meta = Overlay::with_options("metacopy", "index=off,metacopy=on", populate);
    let full = Overlay::new("metacopy-off", populate);
    let t = Tracer::start("metacopy", &[]);
    for ov in [&meta, &full] {
        for s in sizes {
            let p = ov.path(&format!("d/f{s}"));
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let writers: Vec<u32> = sizes
        .iter()
        .map(|s| append_from_shell(&meta.path(&format!("d/f{s}"))))
        .collect();
    let tr = t.stop();
    let (md, fd) = (meta.dev(), full.dev());
    assert_eq!(tr.overlay(&md)["overlay_options"]["metacopy"], true);
    assert_eq!(tr.overlay(&fd)["overlay_options"]["metacopy"], false);
    let (mut meta_ns, mut full_ns) = (0u64, 0u64);
    for (s, writer) in sizes.iter().zip(&writers) {
        let path = format!("d/f{s}");
        // metacopy=on: the chmod copies no data, the append copies it all.
        let ev = tr.copy_up(&md, &path);
        assert_eq!(ev.len(), 2, "{path}: {ev:#?}");
        let kind = |k: &str| {
            *ev.iter()
                .find(|e| e["copy_kind"] == k)
                .unwrap_or_else(|| panic!("{path}: no {k}: {ev:#?}"))
        };
        let (m, d) = (kind("metadata_only"), kind("deferred_data"));
        assert_eq!(m["copy_kind"], "metadata_only", "{m:#}");
        assert_eq!(m["bytes"], 0, "{m:#}");
        assert_eq!(m["data"], false, "{m:#}");
        assert_eq!(m["trigger"], "setattr", "{m:#}");
        assert_eq!(d["copy_kind"], "deferred_data", "{d:#}");
        assert_eq!(d["bytes"], *s as u64, "{d:#}");
        assert_eq!(d["data"], true, "{d:#}");
        assert_eq!(d["trigger"], "open", "{d:#}");
        assert_eq!(d["pid"], *writer, "the writer, not the chmod: {d:#}");
        assert_eq!(d["comm"], "sh", "{d:#}");
        assert_eq!(d["parents"], 0, "{d:#}");
        assert!(d["latency_ns"].as_u64().unwrap() > 0, "{d:#}");
        meta_ns += m["latency_ns"].as_u64().unwrap();
        // The kernel really left the data for later: the upper file holds
        // it all now.
        let upper = meta.root.join("upper").join(&path);
        assert_eq!(std::fs::metadata(&upper).unwrap().len(), *s as u64 + 1);
        // metacopy=off: the chmod copies the data at once.
        let ev = tr.copy_up(&fd, &path);
        assert_eq!(ev.len(), 1, "{path}: {ev:#?}");
        assert_eq!(ev[0]["copy_kind"], "full", "{:#}", ev[0]);
        assert_eq!(ev[0]["bytes"], *s as u64);
        assert_eq!(ev[0]["trigger"], "setattr");
        full_ns += ev[0]["latency_ns"].as_u64().unwrap();
    }
    // The parent directory is a full copy-up either way.
    for dev in [&md, &fd] {
        let d = tr.copy_up(dev, "d");
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0]["copy_kind"], "full");
    }
    let n = sizes.len() as u64;
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    assert_eq!(tr.of("copy_up", &md).len() as u64, 2 * n + 1);
    assert_eq!(tr.of("copy_up", &fd).len() as u64, n + 1);
    let host = &tr.container("host")["copy_up"];
    assert_eq!(host["count"], 3 * n + 2);
    assert_eq!(host["bytes"], 2 * total);
    let k = &host["by_kind"];
    assert_eq!(k["metadata_only"]["count"], n, "{k:#}");
    assert_eq!(k["metadata_only"]["bytes"], 0, "{k:#}");
    assert_eq!(k["deferred_data"]["count"], n, "{k:#}");
    assert_eq!(k["deferred_data"]["bytes"], total, "{k:#}");
    assert_eq!(k["full"]["count"], n + 2, "{k:#}");
    assert_eq!(k["full"]["bytes"], total, "{k:#}");
    assert_eq!(tr.report["drops"]["copy_up"], 0);
    println!(
        "chmod of {n} files ({total} bytes): metacopy=on {meta_ns} ns copying metadata, metacopy=off {full_ns} ns copying everything"
    );
}

/// Lower layer of the `index` test: a file with three names, a file with
/// one, a file with two names and one with one to unlink, an empty
/// directory to remove.
fn populate_links(l: &Path) {
    make_file(&l.join("d/h1"), 300_000);
    std::fs::hard_link(l.join("d/h1"), l.join("d/h2")).unwrap();
    std::fs::hard_link(l.join("d/h1"), l.join("d/h3")).unwrap();
    make_file(&l.join("d/solo"), 4096);
    make_file(&l.join("rm/r1"), 1000);
    std::fs::hard_link(l.join("rm/r1"), l.join("rm/r2")).unwrap();
    make_file(&l.join("rm/single"), 10);
    std::fs::create_dir(l.join("e")).unwrap();
}

/// What the `index` test expects of one overlay: each copy-up as (path,
/// bytes, links, trigger), and the whiteouts.
struct LinkExpect {
    copy_ups: &'static [(&'static str, u64, u64, &'static str)],
    whiteouts: &'static [(&'static str, &'static str)],
}

/// Expectations from fs/overlayfs of 5.10, 6.1, 6.12 and 7.2 (the same
/// logic in each; quoted lines are from util.c, copy_up.c, dir.c and
/// inode.c):
///
/// - `ovl_need_index()` (util.c): `if (ovl_index_all(sb)) return true;`
///   (nfs_export) and `if (!d_is_dir(lower) && d_inode(lower)->i_nlink > 1)
///   return true;`: with index=on a hard-linked lower file is copied up
///   into `work/index` (`ovl_do_copy_up`: `if (ovl_need_index(c->dentry))
///   ... to_index = true;`) and linked to its name (`ovl_link_up`).
/// - `ovl_get_inode()` (inode.c): hashed by its lower inode
///   (`ovl_hash_bylower`: index on), every name of it is one overlay inode
///   with `nlink = realinode->i_nlink` (3 for d/h1); so the second name's
///   `ovl_copy_up_one` finds `ovl_dentry_upper()` set and only runs
///   `ovl_link_up()`: no new object, no data, no copy-up reported. With
///   index=off (`(upper || !ovl_indexdir(sb)) && ... i_nlink > 1` ->
///   `return false`) each name is a `new_inode()` of one link, copied up
///   on its own: the link is broken.
/// - `ovl_nlink_start()` (util.c), called by `ovl_do_remove()` after the
///   parent's copy-up: `if (ovl_need_index(dentry) &&
///   !ovl_dentry_has_upper_alias(dentry)) err = ovl_copy_up(dentry);`:
///   an indexed lower object is copied up before its whiteout (trigger
///   `remove`): rm/r1 with index=on; rm/r1, rm/single and the directory
///   e too with nfs_export=on.
/// - `ovl_nlink_end()` -> `ovl_cleanup_index()`: the last name gone,
///   `if (ovl_index_all(sb)) err = ovl_cleanup_and_whiteout(..., index);
///   else err = ovl_cleanup(dir, index);`: a whiteout in `work/index`
///   with nfs_export=on, overlay's bookkeeping, not a removed name.
fn link_expectations(options: &str) -> LinkExpect {
    let whiteouts: &'static [(&str, &str)] = &[
        ("rm/r1", "unlink"),
        ("rm/r2", "unlink"),
        ("rm/single", "unlink"),
        ("e", "rmdir"),
    ];
    let copy_ups: &'static [(&str, u64, u64, &str)] = match options {
        "index=on" => &[
            ("d", 0, 1, "open"),
            ("d/h1", 300_000, 3, "open"),
            ("d/solo", 4096, 1, "open"),
            ("rm", 0, 1, "parent"),
            ("rm/r1", 1000, 2, "remove"),
        ],
        "index=on,nfs_export=on" => &[
            ("d", 0, 1, "open"),
            ("d/h1", 300_000, 3, "open"),
            ("d/solo", 4096, 1, "open"),
            ("rm", 0, 1, "parent"),
            ("rm/r1", 1000, 2, "remove"),
            ("rm/single", 10, 1, "remove"),
            ("e", 0, 1, "remove"),
        ],
        _ => &[
            ("d", 0, 1, "open"),
            ("d/h1", 300_000, 1, "open"),
            ("d/h2", 300_000, 1, "open"),
            ("d/solo", 4096, 1, "open"),
            ("rm", 0, 1, "parent"),
        ],
    };
    LinkExpect {
        copy_ups,
        whiteouts,
    }
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn index_on_copies_hard_links_up_once_and_removes_through_the_index_exactly() {
    let modes = ["index=on", "index=on,nfs_export=on", "index=off"];
    let ovs: Vec<Overlay> = modes
        .iter()
        .enumerate()
        .map(|(i, o)| Overlay::with_options(&format!("index{i}"), o, populate_links))
        .collect();
    let t = Tracer::start("index", &[]);
    for ov in &ovs {
        append(&ov.path("d/h1"), b"x");
        append(&ov.path("d/h2"), b"y");
        append(&ov.path("d/solo"), b"z");
        for f in ["rm/r1", "rm/r2", "rm/single"] {
            std::fs::remove_file(ov.path(f)).unwrap();
        }
        std::fs::remove_dir(ov.path("e")).unwrap();
    }
    let tr = t.stop();
    let (mut count, mut bytes, mut whiteouts) = (0u64, 0u64, 0u64);
    for (ov, mode) in ovs.iter().zip(modes) {
        let dev = ov.dev();
        let opts = &tr.overlay(&dev)["overlay_options"];
        let indexed = mode != "index=off";
        // Not fallen back to index=off (a filesystem without file handles).
        assert_eq!(opts["index"], indexed, "{mode}: {opts:#}");
        assert_eq!(opts["nfs_export"], mode.contains("nfs_export"), "{mode}");
        let want = link_expectations(mode);
        let got = tr.of("copy_up", &dev);
        for (path, b, links, trigger) in want.copy_ups {
            let ev = tr.copy_up(&dev, path);
            assert_eq!(ev.len(), 1, "{mode} {path}: {got:#?}");
            let e = ev[0];
            assert_eq!(e["bytes"], *b, "{mode} {path}: {e:#}");
            assert_eq!(e["links"], *links, "{mode} {path}: {e:#}");
            assert_eq!(e["trigger"], *trigger, "{mode} {path}: {e:#}");
            assert_eq!(e["copy_kind"], "full", "{mode} {path}: {e:#}");
            bytes += b;
        }
        assert_eq!(got.len(), want.copy_ups.len(), "{mode}: {got:#?}");
        count += got.len() as u64;
        let wh = tr.of("whiteout", &dev);
        for (path, cause) in want.whiteouts {
            let w: Vec<_> = wh.iter().filter(|e| e["path"] == *path).collect();
            assert_eq!(w.len(), 1, "{mode} {path}: {wh:#?}");
            assert_eq!(w[0]["cause"], *cause, "{mode} {path}");
        }
        assert_eq!(wh.len(), want.whiteouts.len(), "{mode}: {wh:#?}");
        whiteouts += wh.len() as u64;
        assert!(tr.of("redirect", &dev).is_empty(), "{mode}");
        // The kernel really kept the names together, or broke them: both
        // appends went into one upper file with index=on, two without.
        let size = |p: &str| std::fs::metadata(ov.path(p)).unwrap().len();
        let ino = |p: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(ov.root.join("upper").join(p))
                .unwrap()
                .ino()
        };
        if indexed {
            assert_eq!(size("d/h3"), 300_002, "{mode}");
            assert_eq!(ino("d/h1"), ino("d/h2"), "{mode}");
        } else {
            assert_eq!(
                (size("d/h1"), size("d/h2"), size("d/h3")),
                (300_001, 300_001, 300_000)
            );
            assert_ne!(ino("d/h1"), ino("d/h2"));
        }
        let index_dir = ov.root.join("work/index");
        let entries = std::fs::read_dir(&index_dir).map_or(0, |d| d.count());
        println!("{mode}: {} entries in work/index", entries);
        if indexed {
            assert!(entries >= 1, "{mode}: d/h1's index entry");
        }
    }
    let host = tr.container("host");
    assert_eq!(host["copy_up"]["count"], count);
    assert_eq!(host["copy_up"]["bytes"], bytes);
    assert_eq!(host["whiteouts"]["count"], whiteouts);
    assert_eq!(host["redirects"]["count"], 0);
    assert_eq!(tr.report["drops"]["copy_up"], 0);
    assert_eq!(tr.report["drops"]["whiteout"], 0);
}

/// The value of extended attribute `name` of `path` (not followed).
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (cstr(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    let r = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn redirect_dir_on_reports_a_renamed_lower_directory_as_a_redirect() {
    let populate = |l: &Path| {
        make_file(&l.join("ld/a"), 100);
        make_file(&l.join("ld/b"), 5000);
        make_file(&l.join("ld/sub/c"), 10);
    };
    let on = Overlay::with_options("redirect", "index=off,redirect_dir=on", populate);
    let off = Overlay::with_options("redirect-off", "index=off,redirect_dir=off", populate);
    let t = Tracer::start("redirect", &[]);
    std::fs::rename(on.path("ld"), on.path("moved")).unwrap();
    // dir.c ovl_rename(): `if (!ovl_can_move(old)) goto out;` with
    // err = -EXDEV, before any copy-up (`mv` then copies the tree itself).
    let err = std::fs::rename(off.path("ld"), off.path("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    let tr = t.stop();
    let (dev, off_dev) = (on.dev(), off.dev());
    assert_eq!(tr.overlay(&dev)["overlay_options"]["redirect_dir"], "on");
    // ovl_rename(): `err = ovl_copy_up(old);` copies the directory alone;
    // then `if (ovl_type_merge_or_lower(old)) err = ovl_set_redirect(old,
    // samedir);` sets `trusted.overlay.redirect`; then ovl_do_rename()
    // with `flags |= RENAME_WHITEOUT` (ovl_lower_positive(old)) whites
    // out the old name.
    let rd = tr.of("redirect", &dev);
    assert_eq!(rd.len(), 1, "{rd:#?}");
    assert_eq!(rd[0]["path"], "ld", "{:#}", rd[0]);
    assert_eq!(rd[0]["file_type"], "dir", "{:#}", rd[0]);
    let cu = tr.of("copy_up", &dev);
    assert_eq!(cu.len(), 1, "only the directory itself: {cu:#?}");
    assert_eq!(cu[0]["path"], "ld");
    assert_eq!(cu[0]["file_type"], "dir");
    assert_eq!(cu[0]["bytes"], 0);
    assert_eq!(cu[0]["trigger"], "rename", "{:#}", cu[0]);
    let wh = tr.of("whiteout", &dev);
    assert_eq!(wh.len(), 1, "{wh:#?}");
    assert_eq!(wh[0]["path"], "ld");
    assert_eq!(wh[0]["cause"], "rename");
    assert_eq!(wh[0]["file_type"], "dir");
    assert!(tr.of("opaque_dir", &dev).is_empty());
    // What the kernel did: a redirect on the moved upper directory, none
    // of its tree copied, the tree still seen through it.
    let upper = on.root.join("upper/moved");
    assert_eq!(
        xattr(&upper, "trusted.overlay.redirect").as_deref(),
        Some(&b"ld"[..])
    );
    assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(on.path("moved/sub/c")).unwrap().len(), 10);
    // redirect_dir=off: refused, nothing done, nothing reported.
    for kind in ["copy_up", "whiteout", "redirect", "opaque_dir"] {
        assert!(tr.of(kind, &off_dev).is_empty(), "{kind}");
    }
    let host = tr.container("host");
    assert_eq!(host["redirects"]["count"], 1);
    assert_eq!(host["copy_up"]["count"], 1);
    assert_eq!(tr.report["drops"]["redirect"], 0);
}

/// The running kernel's (major, minor).
fn kernel_release() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut n = r
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

/// Whether the filesystem of `dir` keeps `user.*` attributes (tmpfs does
/// from 6.6): overlay's `userxattr` marks whiteouts and opaque directories
/// with them on its upper layer.
fn keeps_user_xattrs(dir: &Path) -> bool {
    let f = dir.join("user-xattr-probe");
    std::fs::write(&f, b"").unwrap();
    let (p, n) = (cstr(&f), CString::new("user.cowtrace").unwrap());
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    std::fs::remove_file(&f).unwrap();
    rc == 0
}

/// Overlay's `userxattr` mode as rootless podman uses it, without podman:
/// an unprivileged user (uid 1000) mounts overlay in a user and mount
/// namespace of its own (5.11+), which the host's mountinfo does not
/// show. Its copy-ups, whiteouts and opaque directory are exact, and the
/// overlay is recorded with `userxattr` from the mountinfo of the
/// namespace's process. Whiteouts and opaque directories need an upper
/// layer that keeps `user.*` attributes: tmpfs from 6.6 (on 6.1 the
/// Docker guest's rootless podman test covers them, on ext4).
#[test]
#[ignore = "needs a guest kernel: run through `cargo xtask test`"]
fn userxattr_in_an_unprivileged_users_namespace_is_exact() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let root = Path::new("/tmp/ct-userxattr");
    let _tmpfs = cowtrace_tests::Tmpfs::at(root);
    let sizes = [1usize, 4096, 300_000];
    for s in sizes {
        make_file(&root.join(format!("lower/d/f{s}")), s);
    }
    make_file(&root.join("lower/rmme"), 10);
    std::fs::create_dir(root.join("lower/emptydir")).unwrap();
    make_file(&root.join("lower/tree/x/y"), 10);
    make_file(&root.join("lower/tree/z"), 10);
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    let st = std::process::Command::new("chown")
        .args(["-R", "1000:1000", root.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let removals = keeps_user_xattrs(root);
    // tmpfs keeps user.* attributes from 6.6: the check below is skipped
    // only where the kernel cannot do it.
    assert_eq!(removals, kernel_release() >= (6, 6));
    let r = root.display();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={r}/lower,upperdir={r}/upper,workdir={r}/work,userxattr {r}/merged || exit 3
         cd {r}/merged
         for s in {sizes}; do echo x >> d/f$s; done
         if [ {removals} = true ]; then rm rmme; rmdir emptydir; rm -r tree; mkdir tree; fi
         echo ready
         read _ || true",
        sizes = sizes.map(|s| s.to_string()).join(" "),
    );
    let t = Tracer::start("userxattr", &[]);
    // The shell does the appends itself (builtin echo): the first event's
    // process is alive, in the namespace, when cowtrace looks for its mount.
    let mut ns = std::process::Command::new("unshare")
        .args(["-r", "-m", "sh", "-c", &script])
        .uid(1000)
        .gid(1000)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(ns.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if kernel_release() < (5, 11) {
        // Overlay can be mounted in a user namespace from 5.11 on.
        assert_eq!(line, "", "{line}");
        assert_eq!(
            ns.wait().unwrap().code(),
            Some(3),
            "the mount should be refused"
        );
        let tr = t.stop();
        assert!(tr.events.is_empty(), "{:#?}", tr.events);
        return;
    }
    assert_eq!(line, "ready\n", "{:?}", ns.wait());
    let merged = format!("{r}/merged");
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", ns.id())).unwrap();
    let mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(merged.as_str()))
        .unwrap_or_else(|| panic!("no {merged} in the namespace:\n{mountinfo}"));
    let dev = mount.split(' ').nth(2).unwrap().to_string();
    let tr = t.stop();
    drop(ns.stdin.take());
    assert!(ns.wait().unwrap().success());

    let o = tr.overlay(&dev);
    assert_eq!(o["overlay_options"]["userxattr"], true, "{o:#}");
    assert_eq!(o["mount_point"], merged, "{o:#}");
    each_copied_up_once_by_open(&tr, &dev, &sizes);
    assert_eq!(tr.copy_up(&dev, "d").len(), 1);
    let host = tr.container("host");
    let copy_ups = tr.of("copy_up", &dev);
    assert_eq!(host["copy_up"]["count"], copy_ups.len() as u64);
    assert_eq!(host["copy_up"]["bytes"], sizes.iter().sum::<usize>() as u64);
    assert_eq!(tr.report["drops"]["copy_up"], 0);
    if !removals {
        println!("this kernel's tmpfs keeps no user.* attributes: whiteouts and opaque directories left to the Docker guest's rootless podman test");
        assert_eq!(copy_ups.len(), sizes.len() + 1, "{copy_ups:#?}");
        return;
    }
    // rm -r copies up the parents of what it removes first.
    for p in ["tree", "tree/x"] {
        assert_eq!(tr.copy_up(&dev, p).len(), 1, "{p}: {copy_ups:#?}");
    }
    assert_eq!(copy_ups.len(), sizes.len() + 3, "{copy_ups:#?}");
    let wh = tr.of("whiteout", &dev);
    let find = |p: &str| wh.iter().filter(|e| e["path"] == p).count();
    for p in ["rmme", "emptydir", "tree/x/y", "tree/x", "tree/z", "tree"] {
        assert_eq!(find(p), 1, "{p}: {wh:#?}");
    }
    assert_eq!(wh.len(), 6, "{wh:#?}");
    let opaque = tr.of("opaque_dir", &dev);
    assert_eq!(opaque.len(), 1, "{opaque:#?}");
    assert_eq!(opaque[0]["path"], "tree");
    // The mode really was userxattr: the upper layer's marks are user.*.
    let upper_tree = root.join("upper/tree");
    assert_eq!(
        xattr(&upper_tree, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&upper_tree, "trusted.overlay.opaque"), None);
    assert_eq!(host["whiteouts"]["count"], 6);
    assert_eq!(host["opaque_dirs"]["count"], 1);
    assert_eq!(tr.report["drops"]["whiteout"], 0);
}
