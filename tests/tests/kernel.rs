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
    let ov = Overlay::new("writes", |_| {});
    let t = Tracer::start("writes", &[]);
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
    assert_eq!(w["count"], 1000, "{w:#}");
    assert_eq!(w["bytes"], 4_096_000);
    assert_eq!(w["timed"], 1000);
    assert!(w["latency_ns"]["p50"].as_u64().unwrap() > 0);
    assert!(!w["hdr"].as_str().unwrap().is_empty());
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
    let with = cowtrace::probes::layout(&btf).unwrap();
    let without = cowtrace::probes::layout(&cowtrace::probes::KernelBtf {
        vmlinux: btf.vmlinux.clone(),
        overlay: None,
    })
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
    let data_fn = ["ovl_copy_up_file", "ovl_copy_up_data"]
        .into_iter()
        .find(|f| ovl.has_func(f))
        .expect("a data-copy function in overlay BTF");
    assert_eq!(ovl.param_index(data_fn, "len"), Some(3));
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
