//! The command line on this machine: every bad input is one clear line and
//! a non-zero exit, never a panic. This machine's own kernel has no kprobes
//! and refuses BPF tracing programs, so it is also the test case for "this
//! kernel cannot run cowtrace".

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn cowtrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cowtrace"))
        .args(args)
        .output()
        .expect("run cowtrace")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn help_explains_flags_with_examples() {
    let o = cowtrace(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for s in [
        "--container",
        "--json",
        "--events",
        "--duration",
        "Examples:",
        "doctor",
    ] {
        assert!(out.contains(s), "{s} missing from --help");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    assert_clean_failure(&cowtrace(&["--no-such-flag"]), 2, "unexpected argument");
}

#[test]
fn bad_duration_is_a_usage_error() {
    assert_clean_failure(&cowtrace(&["--duration", "soon"]), 2, "not a duration");
    assert_clean_failure(&cowtrace(&["--duration", "0s"]), 2, "positive");
}

#[test]
fn unwritable_json_is_a_usage_error() {
    let o = cowtrace(&["--json", "/proc/cowtrace-nope/report.json"]);
    assert_clean_failure(&o, 2, "cannot write /proc/cowtrace-nope/report.json");
}

#[test]
fn unwritable_events_is_a_usage_error() {
    let o = cowtrace(&["--events", "/proc/cowtrace-nope/e.ndjson"]);
    assert_clean_failure(&o, 2, "cannot write /proc/cowtrace-nope/e.ndjson");
}

#[test]
fn without_privileges_it_says_which_capabilities_and_sudo() {
    let mut exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cowtrace"));
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // The build tree may not be reachable for nobody (a 0700 checkout):
        // run a copy from a directory everyone can enter.
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cowtrace-nopriv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("cowtrace");
        std::fs::copy(&exe, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe = copy;
    }
    let mut cmd = Command::new(&exe);
    cmd.args(["--duration", "1s"]).current_dir("/");
    if root {
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().expect("run cowtrace");
    if root {
        let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    }
    assert_clean_failure(
        &o,
        1,
        "missing CAP_BPF and CAP_PERFMON: run cowtrace with sudo",
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn a_kernel_without_kprobes_is_refused_before_attaching() {
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        println!("this kernel has kprobes: the guest tests cover it");
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: the privileges test covers this run");
        return;
    }
    let o = cowtrace(&["--duration", "1s"]);
    assert_clean_failure(&o, 1, "kprobes: unavailable: this kernel has no kprobes");
    let d = cowtrace(&["doctor"]);
    assert_eq!(d.status.code(), Some(1));
    let out = String::from_utf8_lossy(&d.stdout);
    assert!(out.contains("FAIL kprobes"), "{out}");
    assert!(out.contains("FAIL BPF tracing programs"), "{out}");
}
