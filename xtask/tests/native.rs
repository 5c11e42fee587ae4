//! `cargo xtask test --kernel host` on a kernel that cannot trace (this
//! machine's kind: no kprobes, no BPF tracing programs) stops at once with
//! `cowtrace doctor`'s findings and a non-zero exit, before any test runs.

use std::process::Command;

#[test]
fn native_mode_refuses_a_kernel_that_cannot_trace() {
    // The same check as `cowtrace doctor`'s first finding.
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        // A kernel that can trace (a self-hosted runner): native mode goes
        // past doctor and, with no executable selected, runs none.
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["test", "--kernel", "host", "--no-host", "--target", "none"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("total: 0 passed, 0 failed"), "{stdout}");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["test", "--kernel", "host", "--no-host"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    // doctor's own finding, and the way out.
    assert!(stderr.contains("kprobes"), "{stderr}");
    assert!(stderr.contains("cannot run the tests"), "{stderr}");
    assert!(stderr.contains("cargo xtask test"), "{stderr}");
    assert!(!stdout.contains("test result:"), "tests ran: {stdout}");
}

#[test]
fn host_is_a_kernel_of_its_own() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["test", "--kernel", "host", "--kernel", "6.1"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--kernel host runs on the running kernel alone"));
}
