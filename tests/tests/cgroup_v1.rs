//! Guest tests on cgroup v1 hosts (`cargo xtask test` boots the shell
//! init's Docker guest twice more, with one v1 hierarchy per controller).
//!
//! [`v1_only`]: no cgroup2 at all. There the kernel's cgroup id of every
//! task is the v2 root's, so cowtrace attributes an event to the container
//! whose root overlay filesystem it happened in, says so once when it
//! starts, and the report says which cgroup mode it saw.
//!
//! [`hybrid`]: systemd's hybrid layout, cgroup2 mounted beside the v1
//! hierarchies at /sys/fs/cgroup/unified, where runc puts each container
//! too: its cgroup v2 id names it, as on a v2 host, with no warning.

use cowtrace_tests::engine::{build_image, docker};
use cowtrace_tests::{make_file, Overlay, Tracer};
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;

const IMAGE: &str = "cowtrace/v1-img";

/// The words of cowtrace's one-line warning on a v1 host.
const WARNING: &str = "cgroup v1 host";

/// This guest really is a cgroup v1 host, and Docker runs there as on one.
fn assert_cgroup_v1_host() {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(!own.lines().any(|l| l.starts_with("0::")), "{own}");
    assert!(own.contains(":memory:"), "{own}");
    assert_eq!(docker(&["info", "-f", "{{.CgroupVersion}}"]), "1");
}

/// A layer of 20 small files on busybox, built once.
fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = "/tmp/cowtrace-v1-img";
        std::fs::create_dir_all(ctx).unwrap();
        std::fs::write(
            format!("{ctx}/Dockerfile"),
            "FROM cowtrace/busybox:latest\n\
             RUN mkdir /data && for i in $(seq 1 20); do echo $i > /data/f$i; done\n",
        )
        .unwrap();
        build_image(IMAGE, ctx);
    });
}

/// A running container, removed on drop.
struct Container(String);

impl Container {
    fn run(name: &str) -> Container {
        image();
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            IMAGE,
            "sleep",
            "3600",
        ]);
        Container(name.to_string())
    }

    fn exec(&self, script: &str) {
        docker(&["exec", &self.0, "sh", "-c", script]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {report:#}"))
}

/// Operation targets copied up, as (container name, path).
fn copied_up(events: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["ancestor"] == false)
        .map(|e| {
            (
                e["container"]["name"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Tests on a host with v1 hierarchies only.
mod v1_only {
    use super::*;

    #[test]
    #[ignore = "needs the cgroup v1 Docker guest: run through `cargo xtask test`"]
    fn each_container_is_attributed_by_its_filesystem() {
        assert_cgroup_v1_host();
        let a = Container::run("v1a");
        let b = Container::run("v1b");
        let host_ov = Overlay::new("v1-host", |l| make_file(&l.join("h"), 10));
        let t = Tracer::start("v1-all", &[]);
        a.exec("echo b >> /data/f1; rm /data/f3");
        b.exec("echo b >> /data/f2; echo c >> /data/f4; rm /data/f5");
        // Started while cowtrace runs: its device is learned from a list
        // while its first events wait.
        let late = Container::run("v1late");
        late.exec("echo z >> /data/f6");
        std::fs::OpenOptions::new()
            .append(true)
            .open(host_ov.path("h"))
            .unwrap();
        let tr = t.stop();

        let warnings: Vec<&str> = tr
            .stderr
            .lines()
            .filter(|l| l.contains("warning") && l.contains(WARNING))
            .collect();
        assert_eq!(warnings.len(), 1, "{}", tr.stderr);
        assert!(
            warnings[0].contains("root overlay filesystem") && warnings[0].contains("--container"),
            "the warning says what works: {}",
            warnings[0]
        );
        assert_eq!(
            tr.report["cgroup"]["mode"], "v1",
            "{:#}",
            tr.report["cgroup"]
        );
        assert_eq!(tr.report["cgroup"]["attribution"], "filesystem");

        // Every copy-up and whiteout in a container's filesystem is that
        // container's, by name; the host's own overlay stays the host's.
        let ups = copied_up(&tr.events);
        for (who, path) in [
            ("v1a", "data/f1"),
            ("v1b", "data/f2"),
            ("v1b", "data/f4"),
            ("v1late", "data/f6"),
            ("host", "h"),
        ] {
            assert!(
                ups.contains(&(who.to_string(), path.to_string())),
                "{who} {path} not in {ups:?}"
            );
        }
        for e in &tr.events {
            match e["filesystem"]["name"].as_str() {
                Some(fs) => assert_eq!(e["container"]["name"], fs, "{e}"),
                None => assert_eq!(e["container"]["id"], "host", "{e}"),
            }
        }
        let whiteouts: Vec<(&str, &str)> = tr
            .events
            .iter()
            .filter(|e| e["type"] == "whiteout")
            .map(|e| {
                (
                    e["container"]["name"].as_str().unwrap(),
                    e["path"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(whiteouts.contains(&("v1a", "data/f3")), "{whiteouts:?}");
        assert!(whiteouts.contains(&("v1b", "data/f5")), "{whiteouts:?}");

        // The report's rows: exact for the containers that ran throughout.
        let (ra, rb) = (named(&tr.report, "v1a"), named(&tr.report, "v1b"));
        assert_eq!(ra["image"], IMAGE);
        assert_eq!(ra["copy_up"]["count"], 2, "f1 and /data: {ra:#}");
        assert_eq!(ra["whiteouts"]["count"], 1);
        assert_eq!(rb["copy_up"]["count"], 3, "f2, f4 and /data: {rb:#}");
        assert_eq!(rb["whiteouts"]["count"], 1);
        assert!(named(&tr.report, "v1late")["copy_up"]["count"].as_u64() >= Some(1));
    }

    #[test]
    #[ignore = "needs the cgroup v1 Docker guest: run through `cargo xtask test`"]
    fn container_filter_works_by_filesystem() {
        assert_cgroup_v1_host();
        let a = Container::run("v1fa");
        let b = Container::run("v1fb");
        let t = Tracer::start("v1-filter", &["--container", "v1fa"]);
        let work = "echo b >> /data/f1; echo b >> /data/f2; rm /data/f3; \
                    for i in $(seq 1 100); do echo x >> /data/new; done";
        a.exec(work);
        b.exec(work);
        let tr = t.stop();
        assert!(!tr.events.is_empty());
        for e in &tr.events {
            assert_eq!(e["container"]["name"], "v1fa", "{e}");
            assert_eq!(e["filesystem"]["name"], "v1fa", "{e}");
        }
        let ups: Vec<String> = copied_up(&tr.events).into_iter().map(|(_, p)| p).collect();
        assert_eq!(ups, ["data/f1", "data/f2"]);
        let cs = tr.report["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1, "{cs:#?}");
        let c = &cs[0];
        assert_eq!(c["name"], "v1fa");
        assert_eq!(c["copy_up"]["count"], 3, "two files and their directory");
        assert_eq!(c["whiteouts"]["count"], 1);
        // Writes are kept per (cgroup, overlay) in the kernel: the overlay
        // names the container here too.
        assert_eq!(c["writes"]["count"], 102, "{c:#}");
    }
}

/// Tests on a hybrid host: v1 hierarchies, and cgroup2 at
/// /sys/fs/cgroup/unified.
mod hybrid {
    use super::*;

    /// This guest really is a hybrid host: this process is in v1
    /// hierarchies and in cgroup2, Docker runs as on v1, and runc put the
    /// container in the unified hierarchy too.
    fn assert_hybrid_host(container: &str) {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(own.lines().any(|l| l.starts_with("0::")), "{own}");
        assert!(own.contains(":memory:"), "{own}");
        assert_eq!(docker(&["info", "-f", "{{.CgroupVersion}}"]), "1");
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let id = docker(&["inspect", "-f", "{{.Id}}", container]);
        assert!(
            theirs
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&id)),
            "{theirs}"
        );
    }

    #[test]
    #[ignore = "needs the cgroup hybrid Docker guest: run through `cargo xtask test`"]
    fn containers_are_named_by_their_cgroup_and_a_host_writer_stays_the_hosts() {
        let a = Container::run("hya");
        let b = Container::run("hyb");
        assert_hybrid_host("hya");
        let merged = docker(&["inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", "hya"]);
        let t = Tracer::start("hybrid-all", &[]);
        a.exec("echo b >> /data/f1; rm /data/f3");
        b.exec("echo b >> /data/f2; echo c >> /data/f4; rm /data/f5");
        // This test, a host process, appends to a file in hya's root
        // filesystem: by cgroup it is the host's, in hya's filesystem (on
        // a v1-only host it would be booked to hya).
        std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{merged}/data/f7"))
            .unwrap();
        let tr = t.stop();

        assert!(
            !tr.stderr.contains(WARNING),
            "no v1 warning on a hybrid host: {}",
            tr.stderr
        );
        assert_eq!(
            tr.report["cgroup"]["mode"], "hybrid",
            "{:#}",
            tr.report["cgroup"]
        );
        assert_eq!(tr.report["cgroup"]["attribution"], "cgroup_else_filesystem");

        let ups = copied_up(&tr.events);
        assert_eq!(
            ups,
            [
                ("host".to_string(), "data/f7".to_string()),
                ("hya".to_string(), "data/f1".to_string()),
                ("hyb".to_string(), "data/f2".to_string()),
                ("hyb".to_string(), "data/f4".to_string()),
            ],
            "{:#?}",
            tr.events
        );
        let f7 = tr.events.iter().find(|e| e["path"] == "data/f7").unwrap();
        assert_eq!(f7["container"]["id"], "host", "{f7}");
        assert_eq!(f7["filesystem"]["name"], "hya", "{f7}");

        let (ra, rb) = (named(&tr.report, "hya"), named(&tr.report, "hyb"));
        assert_eq!(ra["image"], IMAGE);
        assert_eq!(ra["copy_up"]["count"], 2, "f1 and /data: {ra:#}");
        assert_eq!(ra["whiteouts"]["count"], 1);
        assert_eq!(rb["copy_up"]["count"], 3, "f2, f4 and /data: {rb:#}");
        assert_eq!(rb["whiteouts"]["count"], 1);
    }
}
