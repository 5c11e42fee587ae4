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

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cowtrace-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn json_to_a_device_is_refused_and_the_device_stays() {
    use std::os::unix::fs::FileTypeExt;
    for dev in ["/dev/null", "/dev/full"] {
        let o = cowtrace(&["--json", dev, "--duration", "1s"]);
        assert_clean_failure(&o, 2, "is a character device");
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        let ft = std::fs::symlink_metadata(dev).unwrap().file_type();
        assert!(ft.is_char_device(), "{dev} is no longer a device");
    }
    // /dev/stdout is a symlink: not followed, refused.
    let o = cowtrace(&["--json", "/dev/stdout", "--duration", "1s"]);
    assert_clean_failure(&o, 2, "is a symbolic link");
}

#[test]
fn json_to_a_directory_is_refused_up_front() {
    let d = scratch("jsondir");
    for arg in [d.to_str().unwrap(), ".", "..", &format!("{}/", d.display())] {
        let o = cowtrace(&["--json", arg, "--duration", "1s"]);
        assert_clean_failure(&o, 2, "is a directory");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn planted_symlinks_are_refused_and_their_targets_untouched() {
    let d = scratch("symlinks");
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, d.join("r.json")).unwrap();
    std::os::unix::fs::symlink(&victim, d.join("e.ndjson")).unwrap();
    let o = cowtrace(&[
        "--json",
        d.join("r.json").to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert_clean_failure(&o, 2, "is a symbolic link");
    let o = cowtrace(&[
        "--events",
        d.join("e.ndjson").to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert_clean_failure(&o, 2, "symbolic link (not followed)");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // The writability check leaves nothing behind.
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_fifo_without_reader_is_refused_for_events() {
    let d = scratch("fifo");
    let p = d.join("p");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = cowtrace(&["--events", p.to_str().unwrap(), "--duration", "1s"]);
    assert_clean_failure(&o, 2, "FIFO without a reader");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn extreme_numbers_are_usage_errors_not_panics() {
    assert_clean_failure(&cowtrace(&["--interval", "0.0000000001s"]), 2, "too short");
    assert_clean_failure(&cowtrace(&["--duration", "0.0000000001s"]), 2, "too short");
    assert_clean_failure(
        &cowtrace(&["--duration", "99999999999999999999"]),
        2,
        "too long",
    );
    assert_clean_failure(&cowtrace(&["--interval", "1e400"]), 2, "unknown unit");
    assert_clean_failure(&cowtrace(&["--duration", "99999999999h"]), 2, "too long");
}

/// A pipe whose reader is gone, like `cowtrace 2>&1 | head` after head
/// exits.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    unsafe { std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn a_closed_stderr_is_no_panic() {
    for (args, code) in [
        (vec!["--json", "/proc/cowtrace-nope/r.json"], 2),
        (vec!["--duration", "soon"], 2),
    ] {
        let st = Command::new(env!("CARGO_BIN_EXE_cowtrace"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(code), "{args:?}: {st}");
    }
}

#[test]
fn doctor_to_a_full_disk_is_an_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_cowtrace"))
        .arg("doctor")
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    // On this kernel doctor fails anyway (exit 1); never 0, never a panic.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
