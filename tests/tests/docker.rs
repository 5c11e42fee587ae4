//! Guest tests with a real Docker engine (`cargo xtask test --docker`):
//! attribution of copy-ups, whiteouts and writes to named containers.
//!
//! They run in both Docker guests: the shell init's (Docker's cgroupfs
//! driver, containers at `/docker/<id>`) and systemd's (Docker's systemd
//! driver, containers in `system.slice/docker-<id>.scope` scopes that
//! systemd creates and removes). Tests whose expectations differ between
//! the two ask [`booted_with_systemd`]; those that cannot depend on the
//! init are in [`any_init`] and run in the first guest only.

use cowtrace_tests::engine::{build_image, docker, run};
use cowtrace_tests::{make_file, Overlay, Tracer};
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;

const IMAGE: &str = "cowtrace/test-img";

/// Whether the guest's PID 1 is systemd (else the shell init).
fn booted_with_systemd() -> bool {
    std::fs::read_to_string("/proc/1/comm").unwrap().trim() == "systemd"
}

/// The cgroup v2 path of `pid` and its cgroup id (the directory's inode,
/// which `bpf_get_current_cgroup_id` returns).
fn cgroup_of(pid: &str) -> (String, u64) {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {text:?}"))
        .to_string();
    let id = std::fs::metadata(format!("/sys/fs/cgroup{path}"))
        .unwrap()
        .ino();
    (path, id)
}

/// Builds the test image once: a layer of 20 small files on busybox.
fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = std::path::Path::new("/tmp/cowtrace-img");
        std::fs::create_dir_all(ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM cowtrace/busybox:latest\n\
             RUN mkdir /data && for i in $(seq 1 20); do echo $i > /data/f$i; done\n",
        )
        .unwrap();
        build_image(IMAGE, "/tmp/cowtrace-img");
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

    fn id(&self) -> String {
        docker(&["inspect", "-f", "{{.Id}}", &self.0])
    }

    /// Its init process's cgroup path and id.
    fn cgroup(&self) -> (String, u64) {
        cgroup_of(&docker(&["inspect", "-f", "{{.State.Pid}}", &self.0]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn named<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

const WORK: &str = "echo b >> /data/f1; echo b >> /data/f2; rm /data/f3; \
                    for i in $(seq 1 100); do echo x >> /data/new; done";

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn container_filter_reports_exactly_that_container() {
    let alpha = Container::run("alpha");
    let beta = Container::run("beta");
    let t = Tracer::start("filter", &["--container", "alpha"]);
    alpha.exec(WORK);
    beta.exec(WORK);
    let tr = t.stop();
    assert!(!tr.events.is_empty());
    for e in &tr.events {
        assert_eq!(e["container"]["name"], "alpha", "{e}");
        assert_eq!(e["filesystem"]["name"], "alpha", "{e}");
    }
    let ups: Vec<&str> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["ancestor"] == false)
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(ups, ["data/f1", "data/f2"], "{:#?}", tr.events);
    let wh: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "whiteout")
        .collect();
    assert_eq!(wh.len(), 1);
    assert_eq!(wh[0]["path"], "data/f3");
    let cs = tr.report["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "{cs:#?}");
    let a = &cs[0];
    assert_eq!(a["name"], "alpha");
    assert_eq!(a["image"], IMAGE);
    assert_eq!(a["copy_up"]["count"], 3, "two files and their directory");
    assert_eq!(a["whiteouts"]["count"], 1);
    assert_eq!(a["writes"]["count"], 102, "{a:#}");
    assert!(a["copy_up_vs_write"]["p50_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn without_a_filter_both_containers_and_the_host_are_reported() {
    let alpha = Container::run("alpha2");
    let beta = Container::run("beta2");
    let ov = Overlay::new("docker-host", |l| make_file(&l.join("h"), 10));
    let t = Tracer::start("nofilter", &[]);
    alpha.exec("echo b >> /data/f1");
    beta.exec("echo b >> /data/f2; rm /data/f4");
    std::fs::OpenOptions::new()
        .append(true)
        .open(ov.path("h"))
        .unwrap();
    let tr = t.stop();
    let a = named(&tr.report, "alpha2").expect("alpha2 in report");
    let b = named(&tr.report, "beta2").expect("beta2 in report");
    assert_eq!(a["copy_up"]["count"], 2);
    assert_eq!(b["copy_up"]["count"], 2);
    assert_eq!(b["whiteouts"]["count"], 1);
    assert_eq!(a["image"], IMAGE);
    let host = tr.container("host");
    assert!(host["copy_up"]["count"].as_u64().unwrap() >= 1);
    let h: Vec<_> = tr.copy_up(&ov.dev(), "h");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["container"]["id"], "host");
    assert!(h[0]["filesystem"].is_null());
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_container_started_after_cowtrace_is_attributed() {
    image();
    let t = Tracer::start("late", &[]);
    let late = Container::run("late");
    late.exec("echo b >> /data/f7");
    // Gone before the report is written: its numbers stay.
    drop(late);
    let tr = t.stop();
    let e: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f7")
        .collect();
    assert_eq!(e.len(), 1, "{:#?}", tr.events);
    assert_eq!(e[0]["container"]["name"], "late");
    let l = named(&tr.report, "late").expect("late in report");
    assert_eq!(l["image"], IMAGE);
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn duration_ends_with_complete_json_for_the_container() {
    // The container copies up as soon as a file appears in its volume: a
    // `docker exec` can take longer than the whole run on a loaded TCG
    // guest.
    image();
    let go = std::path::Path::new("/tmp/timed-go");
    let _ = std::fs::remove_dir_all(go);
    std::fs::create_dir_all(go).unwrap();
    let _ = Command::new("docker").args(["rm", "-f", "timed"]).output();
    docker(&[
        "run",
        "-d",
        "--name",
        "timed",
        "--network",
        "none",
        "-v",
        "/tmp/timed-go:/go",
        IMAGE,
        "sh",
        "-c",
        "until [ -e /go/now ]; do sleep 0.05; done; echo b >> /data/f9; touch /go/done; sleep 3600",
    ]);
    let _c = Container("timed".into());
    let t = Tracer::start("timed", &["--container", "timed", "--duration", "6s"]);
    std::fs::write(go.join("now"), "").unwrap();
    let tr = t.finish();
    assert!(
        go.join("done").exists(),
        "the container had not copied up by the end of the run"
    );
    assert_eq!(tr.report["schema"], "cowtrace/v1");
    let x = named(&tr.report, "timed").expect("timed in report");
    assert_eq!(x["copy_up"]["count"], 2);
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_host_process_writing_into_a_container_is_reported_with_both() {
    let c = Container::run("target");
    let t = Tracer::start("cp", &["--container", "target"]);
    // docker cp is done by dockerd, a host process, inside the container's
    // root filesystem.
    std::fs::write("/tmp/cowtrace-cp", b"new").unwrap();
    docker(&["cp", "/tmp/cowtrace-cp", "target:/data/f5"]);
    let tr = t.stop();
    drop(c);
    let theirs: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["filesystem"]["name"] == "target" && e["container"]["id"] == "host")
        .collect();
    assert!(!theirs.is_empty(), "{:#?}", tr.events);
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn an_unknown_container_is_a_usage_error_listing_the_running_ones() {
    let _c = Container::run("present");
    let o = Command::new(cowtrace_tests::cowtrace_bin())
        .args(["--container", "absent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no running container \"absent\""), "{err}");
    assert!(err.contains("present"), "{err}");
}

/// The demo script (`cargo xtask demo`) end to end: its JSON follows the
/// schema, nginx has copy-ups, whiteouts, an opaque dir and writes, and the
/// bystander container is not in it.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn the_demo_reports_nginx_and_only_nginx() {
    // `cargo xtask test` puts the demo's script into the guest.
    let script = std::env::var("COWTRACE_DEMO").expect("COWTRACE_DEMO names the demo script");
    let _ = std::fs::remove_file("/out/cowtrace.json");
    let o = Command::new("sh").arg(&script).output().unwrap();
    let _ = Command::new("docker")
        .args(["rm", "-f", "nginx", "bystander"])
        .output();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed:\n{out}\n{err}");
    // No event line or summary row names the bystander (the demo's own
    // narration does).
    let shown = out.lines().chain(err.lines()).any(|l| {
        l.starts_with("bystander")
            || (l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("bystander"))
    });
    assert!(!shown, "{out}\n{err}");
    let text = std::fs::read_to_string("/out/cowtrace.json").unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    let have = cowtrace::report::json_paths(&report);
    let documented = cowtrace::report::documented_paths(cowtrace::report::SCHEMA_DOC);
    assert_eq!(have, documented, "demo JSON and docs/json-schema.md differ");
    let cs = report["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "{cs:#?}");
    let n = &cs[0];
    assert_eq!(n["name"], "nginx");
    assert!(n["copy_up"]["count"].as_u64().unwrap() >= 40, "{n:#}");
    assert!(n["copy_up"]["bytes"].as_u64().unwrap() >= 16 << 20, "{n:#}");
    // page1, page2, the 20 assets and the assets directory.
    assert_eq!(n["whiteouts"]["count"], 23, "{n:#}");
    assert_eq!(n["opaque_dirs"]["count"], 1, "{n:#}");
    // nginx logged 200 requests.
    assert!(n["writes"]["count"].as_u64().unwrap() >= 200, "{n:#}");
    assert!(
        n["copy_up_vs_write"]["p50_ratio"].as_f64().unwrap() > 1.0,
        "{n:#}"
    );
    let events: Vec<Value> = std::fs::read_to_string("/out/events.ndjson")
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["filesystem"]["id"] == n["id"])
        .collect();
    // What the demo showed (with `-- --nocapture`).
    eprintln!("{out}{err}");
    demo_layer_table_is_the_jsons(n, &err);
    demo_advice_is_there_with_the_events_numbers(n, &ours, &err);
}

/// The exit summary's per-layer table of the demo (on the demo's stderr)
/// has a row per layer of the JSON, with its copy-ups, bytes, whiteouts
/// and instruction; the 16 MiB log's layer is the instruction that wrote it.
fn demo_layer_table_is_the_jsons(n: &Value, err: &str) {
    use cowtrace::layers::{totals, LayerRef};
    let table: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("layers of nginx"))
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        // A layer's row has its time second; the notes below the rows
        // ("N events of unknown layer") have a word.
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    let layers = n["layers"].as_array().unwrap();
    assert!(layers.len() >= 2, "{n:#}");
    assert_eq!(table.len(), layers.len(), "{err}");
    for l in layers {
        let r = LayerRef {
            index: l["index"].as_u64().unwrap() as u32,
            diff_id: None,
            created_by: l["created_by"].as_str().map(str::to_string),
        };
        let cells = [
            r.index.to_string(),
            l["copy_up"]["count"].to_string(),
            cowtrace::live::fmt_bytes(l["copy_up"]["bytes"].as_u64().unwrap()),
            l["whiteouts"]["count"].to_string(),
        ];
        let row = table
            .iter()
            .find(|row| {
                let f: Vec<&str> = row.split_whitespace().collect();
                f[0] == cells[0] && f[2] == cells[1] && f[3] == cells[2] && f[4] == cells[3]
            })
            .unwrap_or_else(|| panic!("no row {cells:?} in\n{}", table.join("\n")));
        let shown = totals::cut(&totals::instruction(&r), 60);
        assert!(row.ends_with(&shown), "{row:?} vs {shown:?}");
    }
    let log = layers
        .iter()
        .find(|l| l["copy_up"]["bytes"].as_u64().unwrap() >= 16 << 20)
        .unwrap_or_else(|| panic!("no layer with the 16 MiB log: {n:#}"));
    let by = log["created_by"].as_str().unwrap();
    assert!(by.contains("head -c 16777216"), "{by}");
}

/// Sums of the copy-ups among `events` that `pick` keeps: count, bytes,
/// latencies.
fn sums(events: &[&Value], pick: impl Fn(&Value) -> bool) -> (u64, u64, u64) {
    events
        .iter()
        .filter(|e| e["type"] == "copy_up" && pick(e))
        .fold((0, 0, 0), |(c, b, t), e| {
            (
                c + 1,
                b + e["bytes"].as_u64().unwrap(),
                t + e["latency_ns"].as_u64().unwrap(),
            )
        })
}

/// A chown's copy-up of an operation's target booked to an image layer.
fn chown_target(e: &Value) -> bool {
    e["trigger"] == "setattr" && e["ancestor"] == false && e["layer"].is_object()
}

/// The advice for what the demo does, each with the numbers of its events:
/// the log appended to, the 4 MiB file stamped in place, the entrypoint's
/// chown (per layer, and the metacopy rule: Docker's overlay2 copies the
/// data), and the same lines at the end of the live summary.
fn demo_advice_is_there_with_the_events_numbers(n: &Value, ours: &[&Value], err: &str) {
    let advice = n["advice"].as_array().unwrap();
    let of = |rule: &str| -> Vec<&Value> { advice.iter().filter(|a| a["rule"] == rule).collect() };
    for (rule, path) in [
        ("log_in_image", "var/log/nginx/archive.log"),
        ("large_copy_small_change", "usr/share/GeoIP/city.mmdb"),
    ] {
        let a: Vec<&Value> = of(rule).into_iter().filter(|a| a["path"] == path).collect();
        assert_eq!(a.len(), 1, "{rule}: {advice:#?}");
        let e: Vec<&Value> = ours
            .iter()
            .copied()
            .filter(|e| e["type"] == "copy_up" && e["path"] == path && e["ancestor"] == false)
            .collect();
        assert_eq!(e.len(), 1, "{path}: {e:#?}");
        assert_eq!(a[0]["bytes"], e[0]["bytes"], "{:#}", a[0]);
        assert_eq!(a[0]["total_ns"], e[0]["latency_ns"], "{:#}", a[0]);
        assert_eq!(a[0]["layer"], e[0]["layer"]["index"], "{:#}", a[0]);
    }
    let bytes_of = |rule: &str, path: &str| {
        of(rule).into_iter().find(|a| a["path"] == path).unwrap()["bytes"].clone()
    };
    assert_eq!(
        bytes_of("log_in_image", "var/log/nginx/archive.log"),
        16 << 20
    );
    assert_eq!(
        bytes_of("large_copy_small_change", "usr/share/GeoIP/city.mmdb"),
        4 << 20
    );
    // Ownership: one entry per layer, each that layer's chown copy-ups.
    let own = of("ownership_at_build_time");
    assert!(!own.is_empty(), "{advice:#?}");
    let mut layers_seen = 0;
    for a in &own {
        let (c, b, t) = sums(ours, |e| {
            chown_target(e) && e["layer"]["index"] == a["layer"]
        });
        assert_eq!(
            (a["count"].as_u64(), a["bytes"].as_u64()),
            (Some(c), Some(b)),
            "{a:#}"
        );
        assert_eq!(a["total_ns"], t, "{a:#}");
        layers_seen += c;
    }
    assert_eq!(layers_seen, sums(ours, chown_target).0);
    // The 20 64-KiB assets alone are 1.25 MiB of data copied for a chown.
    let m = of("metacopy_for_chown");
    assert_eq!(m.len(), 1, "{advice:#?}");
    let (c, b, t) = sums(ours, |e| {
        chown_target(e) && e["copy_kind"] == "full" && e["bytes"].as_u64() > Some(0)
    });
    assert!(c >= 21 && b >= 20 << 16, "{c} {b}");
    assert_eq!(m[0]["count"], c, "{:#}", m[0]);
    assert_eq!(m[0]["bytes"], b, "{:#}", m[0]);
    assert_eq!(m[0]["total_ns"], t, "{:#}", m[0]);
    // The live summary ends with the same advice.
    let shown: Vec<&str> = err
        .lines()
        .skip_while(|l| *l != "advice for nginx:")
        .collect();
    for a in advice {
        let line = format!(
            "  - [{}] {}",
            a["rule"].as_str().unwrap(),
            a["what"].as_str().unwrap()
        );
        assert!(shown.contains(&line.as_str()), "{line}\n{err}");
    }
}

#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn containers_live_in_the_cgroups_their_engines_driver_makes() {
    let c = Container::run("where");
    let id = c.id();
    let (path, cgroup_id) = c.cgroup();
    let driver = docker(&["info", "-f", "{{.CgroupDriver}}"]);
    if booted_with_systemd() {
        assert_eq!(driver, "systemd");
        let scope = format!("docker-{id}.scope");
        assert_eq!(path, format!("/system.slice/{scope}"));
        // systemd made it: the scope is one of its units.
        let state = run(
            "systemctl",
            &["show", "-p", "ActiveState", "--value", &scope],
        );
        assert_eq!(state, "active", "{scope}");
    } else {
        assert_eq!(driver, "cgroupfs");
        assert_eq!(path, format!("/docker/{id}"));
    }
    let t = Tracer::start("where", &[]);
    c.exec("echo b >> /data/f8");
    let tr = t.stop();
    let e: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f8")
        .collect();
    assert_eq!(e.len(), 1, "{:#?}", tr.events);
    assert_eq!(e[0]["cgroup_id"], cgroup_id, "{}", e[0]);
    assert_eq!(e[0]["container"]["id"], id.as_str());
    assert_eq!(e[0]["container"]["name"], "where");
    assert_eq!(e[0]["filesystem"]["name"], "where");
}

/// `docker restart` gives the container a new cgroup (a new scope under
/// systemd) and a new overlay mount; it stays one container.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_restarted_container_stays_one_named_container() {
    let c = Container::run("phoenix");
    let t = Tracer::start("restart", &[]);
    c.exec("echo b >> /data/f10");
    let (_, before) = c.cgroup();
    docker(&["restart", "-t", "1", "phoenix"]);
    let (_, after) = c.cgroup();
    assert_ne!(before, after, "the restart kept the cgroup");
    c.exec("echo b >> /data/f11");
    let tr = t.stop();
    for (file, cgroup_id) in [("data/f10", before), ("data/f11", after)] {
        let e: Vec<_> = tr
            .events
            .iter()
            .filter(|e| e["type"] == "copy_up" && e["path"] == file)
            .collect();
        assert_eq!(e.len(), 1, "{file}: {:#?}", tr.events);
        assert_eq!(e[0]["cgroup_id"], cgroup_id, "{}", e[0]);
        assert_eq!(e[0]["container"]["name"], "phoenix", "{}", e[0]);
    }
    let rows: Vec<_> = tr.report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "phoenix")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    // /data once (the upper layer survives the restart), then each file.
    assert_eq!(rows[0]["copy_up"]["count"], 3, "{:#}", rows[0]);
}

fn ctr(args: &[&str]) -> String {
    let mut all = vec!["-n", "k8s.io"];
    all.extend_from_slice(args);
    run("ctr", &all)
}

/// Where the kubelet would put container `id` of a burstable pod `uid`
/// with the init's cgroup driver: the `ctr run` arguments that put it
/// there, and the cgroup path it then has (see
/// [`a_kubernetes_style_containerd_container_is_attributed_by_id_and_pod`]).
fn kube_cgroup(id: &str, uid: &str) -> (Vec<String>, String) {
    if booted_with_systemd() {
        let slice = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
        (
            vec![
                "--runc-systemd-cgroup".into(),
                "--cgroup".into(),
                format!("{slice}:cri-containerd:{id}"),
            ],
            format!("/kubepods.slice/kubepods-burstable.slice/{slice}/cri-containerd-{id}.scope"),
        )
    } else {
        let path = format!("/kubepods/burstable/pod{uid}/{id}");
        (vec!["--cgroup".into(), path.clone()], path)
    }
}

/// A containerd container in containerd's `k8s.io` namespace, killed and
/// removed on drop.
struct CriContainer(String);

impl Drop for CriContainer {
    fn drop(&mut self) {
        let id = self.0.as_str();
        let quiet = |args: &[&str]| {
            let _ = Command::new("ctr")
                .args(["-n", "k8s.io"])
                .args(args)
                .output();
        };
        quiet(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..100 {
            let o = Command::new("ctr")
                .args(["-n", "k8s.io", "task", "rm", id])
                .output();
            if o.is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        quiet(&["container", "rm", id]);
    }
}

/// A rootful podman container of `image` (loaded from Docker's store with
/// `podman load`: no registry here) running `sleep`, removed when dropped,
/// after a failed assertion too.
struct PodmanContainer {
    name: &'static str,
    id: String,
}

impl PodmanContainer {
    fn run(name: &'static str, image: &str) -> Self {
        load_into_podman(image);
        Self::start(name, image, None)
    }

    /// Runs a container of `image` (already in podman's store), with
    /// `storage_conf` as containers-storage's configuration if given.
    fn start(name: &'static str, image: &str, storage_conf: Option<&str>) -> Self {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", name])
            .output();
        let mut cmd = Command::new("podman");
        if let Some(conf) = storage_conf {
            cmd.env("CONTAINERS_STORAGE_CONF", conf);
        }
        let o = cmd
            .args(["run", "-d", "--name", name, "--network", "none", image])
            .args(["sleep", "3600"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        PodmanContainer { name, id }
    }
}

/// Copies `image` from Docker's store into podman's (no registry here).
fn load_into_podman(image: &str) {
    run(
        "sh",
        &["-c", &format!("docker save {image} | podman load -q")],
    );
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", self.name])
            .output();
    }
}

/// containerd as the kubelet drives it, without a kubelet (Debian has
/// none): the container's cgroup is where the kubelet would put a
/// burstable pod's container with the init's cgroup driver. Under systemd,
/// containerd's systemd driver (runc) asks systemd over D-Bus for the scope
/// `cri-containerd-<id>.scope` in the pod's slice, and systemd makes
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
/// around it; with cgroupfs it is `/kubepods/burstable/pod<uid>/<id>`.
/// cowtrace attributes its copy-ups by the container id in that path, and
/// names pod, namespace and container from the CRI annotations the CRI
/// plugin writes into the container's OCI spec (set here with
/// `ctr run --annotation`), which the agent reads from the bundle's
/// `config.json`: in the JSON, the metrics labels and the exit summary.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_kubernetes_style_containerd_container_is_attributed_by_id_and_pod() {
    image();
    run(
        "sh",
        &[
            "-c",
            &format!("docker save {IMAGE} | ctr -n k8s.io images import -"),
        ],
    );
    let id = "c0ffee".repeat(10) + "cafe";
    let uid = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a";
    let (cgroup_args, want_path) = kube_cgroup(&id, uid);
    let image = format!("docker.io/{IMAGE}:latest");
    let mut args = vec!["run", "-d"];
    args.extend(cgroup_args.iter().map(String::as_str));
    args.extend([
        "--annotation",
        "io.kubernetes.cri.sandbox-name=web",
        "--annotation",
        "io.kubernetes.cri.sandbox-namespace=shop",
        "--annotation",
        "io.kubernetes.cri.container-name=app",
        &image,
        &id,
        "sleep",
        "3600",
    ]);
    ctr(&args);
    let _c = CriContainer(id.clone());
    let tasks = ctr(&["task", "ls"]);
    let pid = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"));
    let (path, cgroup_id) = cgroup_of(&pid);
    assert_eq!(path, want_path);
    let metrics_addr = format!("127.0.0.1:{K8S_METRICS_PORT}");
    let t = Tracer::start_args(
        "k8s",
        &[],
        &[
            "--quiet",
            "--interval",
            "1s",
            "--events",
            "/tmp/trace-k8s/events.ndjson",
            "--json",
            "/tmp/trace-k8s/report.json",
            "--metrics",
            &metrics_addr,
        ],
    );
    ctr(&[
        "task",
        "exec",
        "--exec-id",
        "write",
        &id,
        "sh",
        "-c",
        "echo b >> /data/f12",
    ]);
    // The series with the pod's labels, once an interval has taken the
    // copy-up in.
    let want = format!(
        "cowtrace_whiteouts_total{{container=\"app\",container_id=\"{id}\",image=\"\",pod=\"web\",namespace=\"shop\"}} 0"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, body) = any_init::http_get(K8S_METRICS_PORT, "/metrics", "text/plain");
        if body.lines().any(|l| l == want) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{want}` in:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let tr = t.stop();
    let e: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f12")
        .collect();
    assert_eq!(e.len(), 1, "{:#?}", tr.events);
    assert_eq!(e[0]["cgroup_id"], cgroup_id, "{}", e[0]);
    assert_eq!(e[0]["container"]["id"], id.as_str(), "{}", e[0]);
    let row = tr.container(&id);
    assert_eq!(row["copy_up"]["count"], 2, "{row:#}");
    assert_eq!(row["name"], "app", "{row:#}");
    assert_eq!(row["pod"], "web", "{row:#}");
    assert_eq!(row["namespace"], "shop", "{row:#}");
    assert!(
        tr.stderr.contains("shop/web/app ("),
        "the exit summary does not name the pod:\n{}",
        tr.stderr
    );
}

/// Rootful podman (Debian's package), no API service running: the test
/// image goes in with `podman load` of a `docker save`, the container runs
/// with podman's cgroup manager for the init (`machine.slice/libpod-<id>.scope`
/// under systemd, `/libpod_parent/libpod-<id>` with cgroupfs), and
/// cowtrace names it and its image from podman's storage.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_podman_container_is_attributed_by_name_and_image() {
    image();
    let pm = PodmanContainer::run("pm", IMAGE);
    let id = pm.id.clone();
    let podman = |args: &[&str]| run("podman", args);
    let image = podman(&["inspect", "-f", "{{.ImageName}}", "pm"]);
    let pid = podman(&["inspect", "-f", "{{.State.Pid}}", "pm"]);
    let (path, cgroup_id) = cgroup_of(&pid);
    let want_path = if booted_with_systemd() {
        format!("/machine.slice/libpod-{id}.scope")
    } else {
        format!("/libpod_parent/libpod-{id}")
    };
    assert!(
        path.starts_with(&want_path),
        "{path} is not under {want_path}"
    );
    let t = Tracer::start("podman", &[]);
    podman(&["exec", "pm", "sh", "-c", "echo b >> /data/f3; rm /data/f4"]);
    let tr = t.stop();
    let cu: Vec<_> = tr
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f3")
        .collect();
    assert_eq!(cu.len(), 1, "{:#?}", tr.events);
    assert_eq!(cu[0]["cgroup_id"], cgroup_id, "{}", cu[0]);
    // The event is attributed by id at once; the name follows from
    // podman's storage (the report names the container as last known).
    assert_eq!(cu[0]["container"]["id"], id.as_str(), "{}", cu[0]);
    let row = tr.container(&id);
    assert_eq!(row["name"], "pm", "{row:#}");
    assert_eq!(row["image"], image.as_str(), "{row:#}");
    // data/ as the parent, then data/f3; the rm is a whiteout.
    assert_eq!(row["copy_up"]["count"], 2, "{row:#}");
    assert_eq!(row["whiteouts"]["count"], 1, "{row:#}");
}

/// The demo's `chown -R` (over its image's html tree: 40 pages, an index
/// and 20 64-KiB assets) in two podman containers of the demo image: one
/// on containers-storage's default mount options, one with
/// `mountopt = "nodev,metacopy=on"` in its storage.conf (podman's way to
/// it; Docker's overlay2 has no such option). Without metacopy the chown
/// copies every file's data, and the metacopy advice gives its cost with
/// the events' numbers; with it, every file's copy-up is metadata only (0
/// bytes) and that advice is silent. The two measurements are printed
/// (`-- --nocapture`; README quotes them).
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn the_demos_chown_r_copies_data_unless_metacopy_is_on() {
    let script = std::env::var("COWTRACE_DEMO").expect("COWTRACE_DEMO names the demo script");
    run("sh", &[&script, "image"]);
    let image = "cowtrace/demo-nginx";
    load_into_podman(image);
    let store = |what: &str| run("podman", &["info", "-f", &format!("{{{{.Store.{what}}}}}")]);
    let conf = "/tmp/cowtrace-metacopy-storage.conf";
    std::fs::write(
        conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
             [storage.options.overlay]\nmountopt = \"nodev,metacopy=on\"\n",
            store("GraphRoot"),
            store("RunRoot")
        ),
    )
    .unwrap();
    let plain = PodmanContainer::start("chown-plain", image, None);
    let meta = PodmanContainer::start("chown-meta", image, Some(conf));
    // The tree's regular files and their bytes, as the image has them.
    let sizes = run(
        "podman",
        &[
            "exec",
            "chown-plain",
            "find",
            "/usr/share/nginx/html",
            "-type",
            "f",
            "-printf",
            "%s\n",
        ],
    );
    let sizes: Vec<u64> = sizes.lines().map(|l| l.parse().unwrap()).collect();
    let (files, bytes) = (sizes.len() as u64, sizes.iter().sum::<u64>());
    assert!(
        files >= 61 && bytes >= 20 << 16,
        "{files} files, {bytes} bytes"
    );
    let chown = "chown -R www-data:www-data /usr/share/nginx/html";
    let t = Tracer::start("metacopy", &[]);
    for c in [&plain, &meta] {
        run("podman", &["exec", c.name, "sh", "-c", chown]);
    }
    let tr = t.stop();
    let of = |c: &PodmanContainer| -> Vec<&Value> {
        tr.events
            .iter()
            .filter(|e| e["filesystem"]["id"] == c.id.as_str())
            .collect()
    };
    let metacopy_of = |c: &PodmanContainer| {
        let os = tr.report["overlays"].as_array().unwrap();
        let o = os
            .iter()
            .find(|o| o["filesystem"]["id"] == c.id.as_str())
            .unwrap_or_else(|| panic!("no overlay of {}: {os:#?}", c.name));
        o["overlay_options"]["metacopy"].clone()
    };
    assert_eq!(metacopy_of(&plain), false);
    assert_eq!(metacopy_of(&meta), true);
    let target = |e: &Value| e["trigger"] == "setattr" && e["ancestor"] == false;
    let data = |e: &Value| target(e) && e["copy_kind"] == "full" && e["bytes"].as_u64() > Some(0);
    // Without metacopy: every file's data, exactly.
    let (p_ev, m_ev) = (of(&plain), of(&meta));
    let (c, b, _) = sums(&p_ev, data);
    assert_eq!((c, b), (files, bytes), "{p_ev:#?}");
    let advice = |c: &PodmanContainer| tr.container(&c.id)["advice"].as_array().unwrap().clone();
    let pa = advice(&plain);
    let m: Vec<&Value> = pa
        .iter()
        .filter(|a| a["rule"] == "metacopy_for_chown")
        .collect();
    assert_eq!(m.len(), 1, "{pa:#?}");
    let (c, b, t) = sums(&p_ev, |e| data(e) && e["layer"].is_object());
    assert_eq!(m[0]["count"], c, "{:#}", m[0]);
    assert_eq!(m[0]["bytes"], b, "{:#}", m[0]);
    assert_eq!(m[0]["total_ns"], t, "{:#}", m[0]);
    assert!(c > 0, "no chown copy-up with its layer: {p_ev:#?}");
    // With metacopy=on: every file metadata only, no data, no such advice.
    let (c, b, _) = sums(&m_ev, |e| target(e) && e["copy_kind"] == "metadata_only");
    assert_eq!((c, b), (files, 0), "{m_ev:#?}");
    assert_eq!(sums(&m_ev, data).0, 0, "{m_ev:#?}");
    let ma = advice(&meta);
    assert!(
        !ma.iter().any(|a| a["rule"] == "metacopy_for_chown"),
        "{ma:#?}"
    );
    assert!(
        ma.iter().any(|a| a["rule"] == "ownership_at_build_time"),
        "{ma:#?}"
    );
    // What the chown cost each way: all its copy-ups (directories and
    // ancestors too), as the JSON's per-kind totals have them.
    for (label, c, ev) in [("default", &plain, &p_ev), ("metacopy=on", &meta, &m_ev)] {
        let (n, b, t) = sums(ev, |e| e["trigger"] == "setattr");
        let kinds = &tr.container(&c.id)["copy_up"]["by_kind"];
        eprintln!(
            "measured: podman, {label}: `{chown}`: {n} copy-ups, {b} bytes, {:.1} ms summed \
             (by kind: {kinds})",
            t as f64 / 1e6
        );
    }
}

/// Not [`any_init::METRICS_PORT`]: a test running beside it must not collide.
const K8S_METRICS_PORT: u16 = 9465;

/// A runtime socket that accepts and never answers stalls nothing: tracing
/// starts, the container's copy-up is attributed by its id (no name: the
/// runtime never said one), and Ctrl-C ends the run with a complete JSON.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn a_runtime_that_never_answers_stalls_nothing() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let c = Container::run("hang-victim");
    let id = docker(&["inspect", "-f", "{{.Id}}", "hang-victim"]);
    let sock = "/tmp/hang.sock";
    let api = cowtrace_tests::HungApi::bind(sock);
    let dir = std::path::Path::new("/tmp/trace-hang");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(cowtrace_tests::cowtrace_bin())
        .args(["--quiet", "--interval", "1h", "--json"])
        .arg(dir.join("report.json"))
        .env("DOCKER_HOST", format!("unix://{sock}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "cowtrace ended before tracing:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("tracing") {
            break;
        }
    }
    c.exec("echo b >> /data/f1");
    // The signal goes the moment a request is in flight.
    let asked = api.next_request(Duration::from_secs(30));
    let t0 = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The report and the summary come before the probes are detached
    // (which the kernel may take seconds over): the summary line is when
    // the run has ended for its user.
    let mut summary_after = None;
    let mut rest = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if summary_after.is_none() && line.contains("cowtrace summary") {
            summary_after = Some(Instant::now());
        }
        rest.push_str(&line);
    }
    let status = child.wait().unwrap();
    let exited_after = t0.elapsed();
    eprintln!(
        "request to SIGINT: {:?}, SIGINT to summary: {:?}, to exit: {exited_after:?}",
        t0 - asked,
        summary_after.map(|s| s - t0)
    );
    assert!(status.success(), "{status}\n{seen}{rest}");
    let summary_at = summary_after.unwrap_or_else(|| panic!("no summary:\n{seen}{rest}"));
    assert!(
        cowtrace_tests::HungApi::ended_before_the_deadline(asked, summary_at),
        "the end waited for the request in flight to a runtime that never answers\n{seen}{rest}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let mine = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in the report: {report:#}"));
    // `data/f1` and its parent directory `data`.
    assert_eq!(mine["copy_up"]["count"], 2, "{mine:#}");
    assert_eq!(mine["name"], &id[..12], "{mine:#}");
}

/// `--container` follows its container across `docker restart`: the
/// restarted container's cgroup and root filesystem are new, and its
/// copy-ups after the restart are reported.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn container_filter_follows_a_restart() {
    let c = Container::run("restart-me");
    let t = Tracer::start("restart", &["--container", "restart-me"]);
    c.exec("echo b >> /data/f1");
    docker(&["restart", "-t", "1", "restart-me"]);
    // The engine's start event reaches attribution, which updates the
    // kernel filter; until then copy-ups of the restarted container pass
    // no filter. Copy up one more file a second until one is reported
    // (the events file is flushed as it goes).
    let events = t.dir().join("events.ndjson");
    let mut seen_after = None;
    for i in 2..=20 {
        let path = format!("data/f{i}");
        c.exec(&format!("echo b >> /{path}"));
        std::thread::sleep(std::time::Duration::from_secs(1));
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if text.contains(&format!("\"path\":\"{path}\"")) {
            seen_after = Some(path);
            break;
        }
    }
    let r = t.stop();
    let after = seen_after.unwrap_or_else(|| {
        panic!(
            "no copy-up of the restarted container reported: {:#?}",
            r.events
        )
    });
    let n = named(&r.report, "restart-me").expect("restart-me in the report");
    let paths: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up")
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"data/f1"), "{paths:?}");
    assert!(paths.contains(&after.as_str()), "{paths:?}");
    assert_eq!(
        n["copy_up"]["count"].as_u64().unwrap() as usize,
        paths.len(),
        "{n:#}"
    );
}

/// Containers that live for a moment are attributed to themselves, each
/// with its own copy-up, none to the host.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn short_lived_containers_are_each_attributed() {
    image();
    let t = Tracer::start("short-lived", &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let name = format!("brief{i}");
        let o = Command::new("docker")
            .args(["run", "--name", &name, "--network", "none", IMAGE])
            .args(["sh", "-c", "echo z >> /data/f5"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ids.push(docker(&["inspect", "-f", "{{.Id}}", &name]));
        docker(&["rm", &name]);
    }
    let r = t.stop();
    let f5: Vec<&Value> = r
        .events
        .iter()
        .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f5")
        .collect();
    for id in &ids {
        let mine: Vec<_> = f5
            .iter()
            .filter(|e| e["container"]["id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "container {id}: {f5:#?}");
    }
    let on_host: Vec<_> = f5
        .iter()
        .filter(|e| e["container"]["id"] == "host")
        .collect();
    assert!(on_host.is_empty(), "booked to the host: {on_host:#?}");
}

/// Tests whose outcome cannot depend on the guest's init (how names are
/// escaped, image layers, copy-ups that changed nothing, what Prometheus
/// scrapes): `cargo xtask test` runs them in the first Docker guest only.
mod any_init {
    use super::*;

    /// Hostile file names built into a real image and copied up in a real
    /// container, with the live view captured: no format character (U+202E
    /// right-to-left override, zero-width space, U+2028) and no escape
    /// sequence reaches the terminal raw.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn hostile_file_names_are_escaped_in_the_live_view() {
        use std::io::{BufRead, Read};
        let ctx = std::path::Path::new("/tmp/cowtrace-hostile");
        std::fs::create_dir_all(ctx).unwrap();
        let long = |c: char| format!("{}{}", "L".repeat(120), c.to_string().repeat(101));
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM cowtrace/busybox:latest\n\
             RUN mkdir /data && cd /data && \
             echo 1 > \"$(printf 'evil\\342\\200\\256txt.sh')\" && \
             echo 2 > \"$(printf 'zero\\342\\200\\213width')\" && \
             echo 3 > \"$(printf 'line\\342\\200\\250sep')\" && \
             echo 4 > \"$(printf 'esc\\033[2Jname')\" && \
             echo 5 > {} && echo 6 > {}\n",
                long('a'),
                long('b')
            ),
        )
        .unwrap();
        build_image("cowtrace/hostile", "/tmp/cowtrace-hostile");
        let _ = Command::new("docker")
            .args(["rm", "-f", "hostile"])
            .output();
        docker(&[
            "run",
            "-d",
            "--name",
            "hostile",
            "--network",
            "none",
            "cowtrace/hostile",
            "sleep",
            "3600",
        ]);
        let c = Container("hostile".into());
        let mut child = Command::new(cowtrace_tests::cowtrace_bin())
            .args(["--container", "hostile", "--interval", "1h"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("tracing") {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "cowtrace ended before tracing"
            );
        }
        c.exec("for f in /data/*; do echo x >> \"$f\"; done");
        std::thread::sleep(std::time::Duration::from_secs(2));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        let status = child.wait().unwrap();
        let stdout = reader.join().unwrap();
        let text = String::from_utf8_lossy(&stdout);
        println!("{text}");
        assert!(status.success(), "{status}: {rest}");
        for (bad, what) in [
            ('\u{202e}', "U+202E"),
            ('\u{200b}', "U+200B"),
            ('\u{2028}', "U+2028"),
            ('\x1b', "ESC"),
        ] {
            assert!(!text.contains(bad), "raw {what} in the live view:\n{text}");
            assert!(!rest.contains(bad), "raw {what} on stderr:\n{rest}");
        }
        // The two long names share their first 120 bytes: two files.
        let cut = format!("data/{}\\…\\#", "L".repeat(63));
        let long: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.contains("copy_up"))
            .filter_map(|l| l.split("  ").last())
            .filter(|p| p.starts_with(&cut))
            .collect();
        assert_eq!(long.len(), 2, "{long:?}\n{text}");
        for shown in [
            "data/evil\\xe2\\x80\\xaetxt.sh",
            "data/zero\\xe2\\x80\\x8bwidth",
            "data/line\\xe2\\x80\\xa8sep",
            "data/esc\\x1b[2Jname",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.contains("copy_up") && l.ends_with(shown)),
                "no copy-up line for {shown}:\n{text}"
            );
        }
    }

    /// An image of three layers (the imported base, two `RUN`s) with an `ENV`
    /// between them (no layer) and a file the second `RUN` overrides.
    const LAYERED: &str = "cowtrace/layered";

    fn layered_image() {
        static BUILT: OnceLock<()> = OnceLock::new();
        BUILT.get_or_init(|| {
            let ctx = std::path::Path::new("/tmp/cowtrace-layered");
            std::fs::create_dir_all(ctx).unwrap();
            std::fs::write(
                ctx.join("Dockerfile"),
                "FROM cowtrace/busybox:latest\n\
             RUN mkdir -p /app/conf && echo base > /app/conf/a.conf && echo one > /app/conf/b.conf \
             && for i in $(seq 1 12); do echo $i > /app/f$i; done \
             && mkdir -p /srv/logs /srv/data && head -c 300000 /dev/zero > /srv/logs/app.log \
             && head -c 1100000 /dev/zero > /srv/data/big.bin\n\
             ENV COWTRACE_NO_LAYER=1\n\
             RUN echo override > /app/conf/b.conf && echo two > /app/conf/c.conf\n",
            )
            .unwrap();
            build_image(LAYERED, "/tmp/cowtrace-layered");
        });
    }

    /// The `docker history` instruction containing `needle`.
    fn instruction(history: &[(String, String)], needle: &str) -> String {
        history
            .iter()
            .find(|(c, _)| c.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {history:#?}"))
            .0
            .clone()
    }

    /// What `docker image inspect` and `docker history` say of an image: its
    /// diff ids (base first) and the history's instructions (oldest first,
    /// with the size Docker shows).
    fn image_facts(image: &str) -> (Vec<String>, Vec<(String, String)>) {
        let diff_ids: Vec<String> = serde_json::from_str(&docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .RootFS.Layers}}",
            image,
        ]))
        .unwrap();
        let mut history: Vec<(String, String)> = docker(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.CreatedBy}}\t{{.Size}}",
            image,
        ])
        .lines()
        .map(|l| {
            let (c, s) = l.rsplit_once('\t').unwrap();
            (c.to_string(), s.to_string())
        })
        .collect();
        history.reverse();
        (diff_ids, history)
    }

    /// Each copy-up and whiteout names the image layer its entry came from
    /// and the instruction that made it, as `docker image inspect` and
    /// `docker history` say; the per-layer totals are exactly the events'.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn events_name_their_image_layer_and_instruction() {
        layered_image();
        let (diff_ids, history) = image_facts(LAYERED);
        assert_eq!(diff_ids.len(), 3, "{diff_ids:?}");
        // `docker history` shows the ENV (0 B) between the two RUNs.
        let find = |needle: &str| instruction(&history, needle);
        let run1 = find("echo base");
        let run2 = find("echo override");
        let env = find("COWTRACE_NO_LAYER");
        let (run1_i, run2_i) = (
            history.iter().position(|h| h.0 == run1).unwrap(),
            history.iter().position(|h| h.0 == run2).unwrap(),
        );
        let env_i = history.iter().position(|h| h.0 == env).unwrap();
        assert!(run1_i < env_i && env_i < run2_i, "{history:#?}");
        let _ = Command::new("docker")
            .args(["rm", "-f", "layered"])
            .output();
        docker(&[
            "run",
            "-d",
            "--name",
            "layered",
            "--network",
            "none",
            LAYERED,
            "sleep",
            "3600",
        ]);
        let c = Container("layered".into());
        let t = Tracer::start("layers", &["--container", "layered", "--changes"]);
        c.exec(
            "echo x >> /app/conf/a.conf; echo x >> /app/conf/b.conf; rm /app/f1; \
         echo x >> /etc/passwd; echo x >> /.dockerenv; echo x > /app/new; \
         echo x >> /srv/logs/app.log; touch /srv/data/big.bin",
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tr = t.stop();
        let event = |kind: &str, path: &str| -> &Value {
            tr.events
                .iter()
                .find(|e| e["type"] == kind && e["path"] == path)
                .unwrap_or_else(|| panic!("no {kind} of {path}: {:#?}", tr.events))
        };
        let expect = |e: &Value, index: usize, created_by: &str| {
            let l = &e["layer"];
            assert_eq!(l["index"], index, "{e}");
            assert_eq!(l["diff_id"], diff_ids[index].as_str(), "{e}");
            assert_eq!(l["created_by"], created_by, "{e}");
        };
        // a.conf is the first RUN's; b.conf the second's, which overrode it
        // (and wrote in app/conf, so the directory is the second's too).
        expect(event("copy_up", "app/conf/a.conf"), 1, &run1);
        expect(event("copy_up", "app/conf/b.conf"), 2, &run2);
        expect(event("copy_up", "app/conf"), 2, &run2);
        expect(event("copy_up", "app"), 2, &run2);
        // A whiteout names the layer that held what was deleted.
        expect(event("whiteout", "app/f1"), 1, &run1);
        // The base layer (imported: the history's instruction is empty).
        expect(event("copy_up", "etc/passwd"), 0, &history[0].0);
        // Docker's -init layer is no image layer.
        assert!(event("copy_up", ".dockerenv")["layer"].is_null());
        for e in &tr.events {
            assert!(e.get("layer").is_some(), "{e}");
        }
        // Per-layer totals: exactly the events'.
        let me = named(&tr.report, "layered").expect("layered in the report");
        assert_eq!(me["layers_unknown"], 0, "{me:#}");
        let layers = me["layers"].as_array().unwrap();
        for l in layers {
            assert_layer_totals(&tr, l, |_| true);
            let i = l["index"].as_u64().unwrap();
            assert_eq!(l["diff_id"], diff_ids[i as usize].as_str());
        }
        let indexes: Vec<u64> = layers
            .iter()
            .map(|l| l["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2], "{me:#}");
        // The exit summary names the instruction behind each layer.
        assert!(tr.stderr.contains("layers of layered"), "{}", tr.stderr);
        assert!(tr.stderr.contains("RUN echo override"), "{}", tr.stderr);
        // `docker diff`: every changed (C) path was reported copied up, every
        // deleted (D) path as a whiteout.
        let diff = docker(&["diff", "layered"]);
        let reported = |kind: &str, path: &str| {
            tr.events
                .iter()
                .any(|e| e["type"] == kind && e["path"] == path.trim_start_matches('/'))
        };
        for line in diff.lines() {
            match line.split_once(' ') {
                Some(("C", p)) => {
                    assert!(reported("copy_up", p), "{line}\n{diff}\n{:#?}", tr.events)
                }
                Some(("D", p)) => {
                    assert!(reported("whiteout", p), "{line}\n{diff}\n{:#?}", tr.events)
                }
                _ => {}
            }
        }
        assert!(diff.lines().any(|l| l == "D /app/f1"), "{diff}");
        // `--changes` lists exactly what `docker diff` does, with layers.
        let listed: std::collections::BTreeSet<String> = tr
            .stderr
            .lines()
            .skip_while(|l| !l.starts_with("changes in layered"))
            .skip(1)
            .take_while(|l| l.len() > 2 && "ACD".contains(&l[..1]) && &l[1..3] == " /")
            .map(|l| l.split("  ").next().unwrap().to_string())
            .collect();
        let diffed: std::collections::BTreeSet<String> = diff.lines().map(str::to_string).collect();
        assert_eq!(listed, diffed, "{}", tr.stderr);
        assert!(
            tr.stderr
                .lines()
                .any(|l| l.starts_with("C /app/conf/b.conf  [layer 2: RUN echo override")),
            "{}",
            tr.stderr
        );
        // Advice: the log from the image appended to, the large file touched.
        let advice = me["advice"].as_array().unwrap();
        let rule = |r: &str, path: &str| {
            advice
                .iter()
                .find(|a| a["rule"] == r && a["path"] == path)
                .unwrap_or_else(|| panic!("no {r} for {path}: {advice:#?}"))
        };
        let log = rule("log_in_image", "srv/logs/app.log");
        assert_eq!(log["layer"], 1);
        assert_eq!(log["bytes"], event("copy_up", "srv/logs/app.log")["bytes"]);
        let big = rule("large_copy_small_change", "srv/data/big.bin");
        assert_eq!(big["bytes"], 1_100_000);
        assert!(tr.stderr.contains("[log_in_image]"), "{}", tr.stderr);
    }

    /// An entrypoint-style `chown -R` to the owner the files already have
    /// copies every file up and changes nothing: reported as copy-ups that
    /// changed nothing, per container and per layer; the files changed after
    /// it are not.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn a_chown_to_the_owner_files_have_changed_nothing() {
        layered_image();
        let run = |name: &str| {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
            docker(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                LAYERED,
                "sleep",
                "3600",
            ]);
            Container(name.into())
        };
        let (c, other) = (run("chowner"), run("chowner2"));
        let t = Tracer::start("unchanged", &[]);
        c.exec("chown -R 0:0 /app && chmod 600 /app/f3 && echo x >> /app/f4");
        // Another container of the image copies one of the same files up.
        other.exec("chown 0:0 /app/conf/a.conf");
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tr = t.stop();
        let me = named(&tr.report, "chowner").expect("chowner in the report");
        let u = &me["copy_up_unchanged"];
        let targets: Vec<&Value> = tr
            .events
            .iter()
            .filter(|e| e["type"] == "copy_up" && e["ancestor"] == false)
            .filter(|e| e["container"]["name"] == "chowner")
            .collect();
        let mut paths: Vec<&str> = targets
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        paths.sort();
        // busybox's chown -R goes depth first: the directories are copied up
        // as parents of the first file (not targets of their own).
        let mut want = vec![];
        want.extend(["a", "b", "c"].map(|f| ["app/conf/", f, ".conf"].concat().leak() as &str));
        want.extend((1..=12).map(|i| format!("app/f{i}").leak() as &str));
        want.sort();
        assert_eq!(paths, want, "chown -R copies every file up");
        let changed = ["app/f3", "app/f4"];
        let same: Vec<&&Value> = targets
            .iter()
            .filter(|e| !changed.contains(&e["path"].as_str().unwrap()))
            .collect();
        assert_eq!(u["count"], same.len() as u64, "{u:#}");
        assert_eq!(u["checked"], targets.len() as u64, "{u:#}");
        assert_eq!(u["not_checked"], 0, "{u:#}");
        let bytes: u64 = same.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
        let ns: u64 = same.iter().map(|e| e["latency_ns"].as_u64().unwrap()).sum();
        assert_eq!(u["bytes"], bytes, "{u:#}");
        assert_eq!(u["total_ns"], ns, "{u:#}");
        let shown: Vec<&str> = u["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(shown.len(), same.len().min(10), "{u:#}");
        for p in &shown {
            assert!(!changed.contains(p), "{p} changed: {u:#}");
        }
        // Per layer: the first RUN's files and the second's.
        for l in me["layers"].as_array().unwrap() {
            let i = &l["index"];
            let n = same.iter().filter(|e| &e["layer"]["index"] == i).count();
            assert_eq!(l["copy_up_unchanged"]["count"], n as u64, "{l:#}");
        }
        assert!(
            tr.stderr.contains("copy-ups changed nothing"),
            "{}",
            tr.stderr
        );
        // Advice: ownership at build time, per layer, with what changed nothing.
        let advice = me["advice"].as_array().unwrap();
        let own: Vec<&Value> = advice
            .iter()
            .filter(|a| a["rule"] == "ownership_at_build_time")
            .collect();
        for a in &own {
            let i = &a["layer"];
            let of_layer: Vec<&&Value> = targets
                .iter()
                .filter(|e| &e["layer"]["index"] == i)
                .collect();
            assert_eq!(a["count"], of_layer.len() as u64, "{a:#}");
            let same = of_layer
                .iter()
                .filter(|e| !changed.contains(&e["path"].as_str().unwrap()))
                .count();
            assert_eq!(a["unchanged"], same as u64, "{a:#}");
        }
        let layers_with_chown: std::collections::BTreeSet<u64> = targets
            .iter()
            .map(|e| e["layer"]["index"].as_u64().unwrap())
            .collect();
        assert_eq!(own.len(), layers_with_chown.len(), "{advice:#?}");
        // The same image file copied up by both containers.
        let bake = advice
            .iter()
            .find(|a| a["rule"] == "bake_into_image" && a["path"] == "app/conf/a.conf")
            .unwrap_or_else(|| panic!("no bake_into_image: {advice:#?}"));
        assert_eq!(bake["count"], 2, "{bake:#}");
        assert!(
            tr.stderr.contains("[ownership_at_build_time]"),
            "{}",
            tr.stderr
        );
    }

    /// What [`layered_image`]'s layers hold, exercised in a container:
    /// a.conf of the first `RUN` (layer 1), b.conf overridden by the second
    /// (layer 2, which also wrote in app/conf), f1 of the first, passwd of
    /// the base (layer 0).
    const LAYERED_WORK: &str = "echo x >> /app/conf/a.conf; echo x >> /app/conf/b.conf; \
                                rm /app/f1; echo x >> /etc/passwd";

    /// The events [`LAYERED_WORK`] made in container `id` name the layer
    /// that put each entry there, with `want[index]` as its diff id and
    /// instruction; the container's per-layer totals are exactly its
    /// events'.
    /// A per-layer entry of the JSON holds exactly the totals of the events
    /// booked to its layer (among those `mine` keeps): copy-up count, bytes
    /// and time, and whiteouts.
    fn assert_layer_totals(tr: &cowtrace_tests::Trace, l: &Value, mine: impl Fn(&Value) -> bool) {
        let i = l["index"].as_u64().unwrap();
        let of = |kind: &str| -> Vec<&Value> {
            tr.events
                .iter()
                .filter(|e| mine(e))
                .filter(|e| e["type"] == kind && e["layer"]["index"] == i)
                .collect()
        };
        let ups = of("copy_up");
        assert_eq!(l["copy_up"]["count"], ups.len() as u64, "{l:#}");
        let bytes: u64 = ups.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
        assert_eq!(l["copy_up"]["bytes"], bytes, "{l:#}");
        let ns: u64 = ups.iter().map(|e| e["latency_ns"].as_u64().unwrap()).sum();
        assert_eq!(l["copy_up"]["total_ns"], ns, "{l:#}");
        assert_eq!(
            l["whiteouts"]["count"],
            of("whiteout").len() as u64,
            "{l:#}"
        );
    }

    /// The `(diff_id, created_by)` each layer of [`LAYERED`] should be
    /// named by, base first, from [`image_facts`].
    fn layered_want(diff_ids: &[String], history: &[(String, String)]) -> [(Value, Value); 3] {
        let created_by = [
            history[0].0.clone(),
            instruction(history, "echo base"),
            instruction(history, "echo override"),
        ];
        std::array::from_fn(|i| (diff_ids[i].clone().into(), created_by[i].clone().into()))
    }

    fn expect_layered_events(tr: &cowtrace_tests::Trace, id: &str, want: &[(Value, Value); 3]) {
        let mine: Vec<&Value> = tr
            .events
            .iter()
            .filter(|e| e["container"]["id"] == id)
            .collect();
        let event = |kind: &str, path: &str| -> &Value {
            mine.iter()
                .find(|e| e["type"] == kind && e["path"] == path)
                .unwrap_or_else(|| panic!("no {kind} of {path}: {:#?}", tr.events))
        };
        let row = tr.container(id);
        let expect = |e: &Value, index: usize| {
            assert_eq!(e["filesystem"]["id"], id, "{e}");
            let l = &e["layer"];
            assert_eq!(
                l["index"], index,
                "{e}\nlayers_unknown {} {}, layers {:#}\ncowtrace's stderr:\n{}",
                row["layers_unknown"], row["layers_unknown_why"], row["layers"], tr.stderr
            );
            assert_eq!(l["diff_id"], want[index].0, "{e}");
            assert_eq!(l["created_by"], want[index].1, "{e}");
        };
        expect(event("copy_up", "app/conf/a.conf"), 1);
        expect(event("copy_up", "app/conf/b.conf"), 2);
        expect(event("copy_up", "app/conf"), 2);
        expect(event("copy_up", "app"), 2);
        expect(event("whiteout", "app/f1"), 1);
        expect(event("copy_up", "etc/passwd"), 0);
        assert_eq!(row["layers_unknown"], 0, "{row:#}");
        let layers = row["layers"].as_array().unwrap();
        let indexes: Vec<u64> = layers
            .iter()
            .map(|l| l["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2], "{row:#}");
        for l in layers {
            assert_layer_totals(tr, l, |e| e["filesystem"]["id"] == id);
            let i = l["index"].as_u64().unwrap();
            assert_eq!(l["diff_id"], want[i as usize].0, "{l:#}");
            assert_eq!(l["created_by"], want[i as usize].1, "{l:#}");
        }
    }

    /// The layered image in rootful podman (loaded from `docker save`, no
    /// API service): layers from podman's containers-storage, each event's
    /// diff id as `podman image inspect` shows it and its instruction as
    /// `docker history` shows it for the same image config.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn a_podman_containers_events_name_their_image_layer_and_instruction() {
        layered_image();
        let (diff_ids, history) = image_facts(LAYERED);
        let pm = PodmanContainer::run("pmlayers", LAYERED);
        let id = pm.id.clone();
        let podman = |args: &[&str]| run("podman", args);
        let podman_ids: Vec<String> = serde_json::from_str(&podman(&[
            "image",
            "inspect",
            "-f",
            "{{json .RootFS.Layers}}",
            LAYERED,
        ]))
        .unwrap();
        assert_eq!(podman_ids, diff_ids);
        let want = layered_want(&diff_ids, &history);
        let t = Tracer::start("podman-layers", &[]);
        podman(&["exec", "pmlayers", "sh", "-c", LAYERED_WORK]);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tr = t.stop();
        expect_layered_events(&tr, &id, &want);
    }

    /// The unprivileged user the rootless podman test runs as (`useradd`
    /// gives it its /etc/subuid and /etc/subgid ranges, which newuidmap and
    /// newgidmap map into its user namespace), with a storage.conf asking
    /// for kernel overlay: left alone, podman 4.3 picks `vfs` here.
    const ROOTLESS_USER: &str = "rl";

    fn rootless_user() {
        static MADE: OnceLock<()> = OnceLock::new();
        MADE.get_or_init(|| {
            let _ = Command::new("userdel").args(["-r", ROOTLESS_USER]).output();
            run("useradd", &["-m", "-s", "/bin/sh", ROOTLESS_USER]);
            let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
            assert!(
                subuid.lines().any(|l| l.starts_with("rl:")),
                "no subordinate ids for {ROOTLESS_USER}: {subuid}"
            );
            // Rootless podman wants its mounts to propagate.
            run("mount", &["--make-rshared", "/"]);
            as_rootless(
                "mkdir -p ~/.config/containers && \
                 printf '[storage]\\ndriver = \"overlay\"\\n' > ~/.config/containers/storage.conf",
            );
        });
    }

    /// `sh -c script` as the rootless user, in a login shell (its HOME; no
    /// XDG_RUNTIME_DIR, so podman runs from /tmp/podman-run-<uid>).
    fn as_rootless(script: &str) -> String {
        run("runuser", &["-l", ROOTLESS_USER, "-c", script])
    }

    /// A rootless podman container, removed when dropped.
    struct RootlessContainer(&'static str);

    impl Drop for RootlessContainer {
        fn drop(&mut self) {
            let _ = Command::new("runuser")
                .args(["-l", ROOTLESS_USER, "-c"])
                .arg(format!("podman rm -f -t 0 {}", self.0))
                .output();
        }
    }

    /// Rootless podman (Debian's 4.3, run by an unprivileged user, kernel
    /// overlay with `userxattr` in the user's namespaces). On the shell-init
    /// guest there is no systemd user session: podman falls back to its
    /// cgroupfs manager, which an unprivileged user cannot use, so the
    /// container stays in the cgroup it was started from (the root one, as
    /// every process here): its cgroup says "host". Its overlay is mounted
    /// only in the user's mount namespace. cowtrace finds it from the
    /// overlay its events happen in (the mount's upper directory in the
    /// user's containers-storage) and attributes them to it by name:
    /// exactly the copy-ups, whiteouts and opaque directory the script
    /// made, with the image layer of each from the user's store.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn a_rootless_podman_container_is_traced_exactly_by_name_with_its_layers() {
        layered_image();
        rootless_user();
        let (diff_ids, history) = image_facts(LAYERED);
        run(
            "sh",
            &[
                "-c",
                &format!(
                    "docker save {LAYERED} -o /tmp/rl-layered.tar && chmod 644 /tmp/rl-layered.tar"
                ),
            ],
        );
        as_rootless("podman load -q -i /tmp/rl-layered.tar");
        let _ = Command::new("runuser")
            .args(["-l", ROOTLESS_USER, "-c", "podman rm -f -t 0 rlpm"])
            .output();
        let id = as_rootless(&format!(
            "podman run -d --name rlpm --network none {LAYERED} sleep 3600"
        ));
        let _c = RootlessContainer("rlpm");
        let podman_ids: Vec<String> = serde_json::from_str(&as_rootless(&format!(
            "podman image inspect -f '{{{{json .RootFS.Layers}}}}' {LAYERED}"
        )))
        .unwrap();
        assert_eq!(podman_ids, diff_ids);
        let pid = as_rootless("podman inspect -f '{{.State.Pid}}' rlpm");
        let image = as_rootless("podman inspect -f '{{.ImageName}}' rlpm");
        // What this guest gives: a cgroup that names no container.
        let (cg_path, _) = cgroup_of(&pid);
        assert_eq!(
            cowtrace::cgroup::container_id_from_cgroup_path(&cg_path),
            None,
            "{cg_path}"
        );
        // Its root: kernel overlay (not fuse-overlayfs) with userxattr,
        // upper in the user's store; invisible in the host's mountinfo.
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .map(|l| cowtrace::mountinfo::Mount::parse_line(l).unwrap())
            .rfind(|m| m.mount_point == "/")
            .unwrap();
        assert_eq!(root.fstype, "overlay", "{root:?}");
        assert!(root.has_super_opt("userxattr"), "{root:?}");
        eprintln!(
            "rootless root mount: {}",
            mounts.lines().rfind(|l| l.contains(" / / ")).unwrap()
        );
        let dev = format!("{}:{}", root.dev.0, root.dev.1);
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host.lines().any(|l| l.split(' ').nth(2) == Some(&dev)));
        let upper = std::path::PathBuf::from(root.super_opt("upperdir").unwrap());
        assert!(upper.starts_with("/home/rl/.local/share/containers/storage/overlay"));
        // Exactly what the script copies up: the entries it writes under,
        // less those the runtime had already copied up (none expected, but
        // the upper directory says).
        let files = ["app/conf/a.conf", "app/conf/b.conf", "etc/passwd"];
        let want_up: Vec<&str> = [
            "app", "app/conf", files[0], files[1], "etc", files[2], "srv", "srv/logs",
        ]
        .into_iter()
        .filter(|p| upper.join(p).symlink_metadata().is_err())
        .collect();
        let sizes = as_rootless(&format!(
            "podman exec rlpm stat -c %s /{} /{} /{}",
            files[0], files[1], files[2]
        ));
        let sizes: Vec<u64> = sizes.lines().map(|l| l.parse().unwrap()).collect();
        let want_bytes: u64 = files
            .iter()
            .zip(&sizes)
            .filter(|(f, _)| want_up.contains(f))
            .map(|(_, s)| s)
            .sum();
        let t = Tracer::start("rootless", &[]);
        as_rootless(&format!(
            "podman exec rlpm sh -c '{LAYERED_WORK}; rm -r /srv/logs; mkdir /srv/logs'"
        ));
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tr = t.stop();
        let on_dev: Vec<&Value> = tr.events.iter().filter(|e| e["dev"] == dev).collect();
        for e in &on_dev {
            assert_eq!(e["container"]["id"], id.as_str(), "{e}");
            assert_eq!(e["container"]["name"], "rlpm", "{e}");
            assert_eq!(e["filesystem"]["name"], "rlpm", "{e}");
        }
        let paths = |kind: &str| -> Vec<&str> {
            let mut v: Vec<&str> = on_dev
                .iter()
                .filter(|e| e["type"] == kind)
                .map(|e| e["path"].as_str().unwrap())
                .collect();
            v.sort();
            v
        };
        let mut sorted = want_up.clone();
        sorted.sort();
        assert_eq!(paths("copy_up"), sorted, "{:#?}", tr.events);
        assert_eq!(
            paths("whiteout"),
            ["app/f1", "srv/logs", "srv/logs/app.log"],
            "{:#?}",
            tr.events
        );
        assert_eq!(paths("opaque_dir"), ["srv/logs"], "{:#?}", tr.events);
        let row = tr.container(&id);
        assert_eq!(row["name"], "rlpm", "{row:#}");
        assert_eq!(row["image"], image.as_str(), "{row:#}");
        assert_eq!(row["copy_up"]["count"], want_up.len() as u64, "{row:#}");
        assert_eq!(row["copy_up"]["bytes"], want_bytes, "{row:#}");
        assert_eq!(row["whiteouts"]["count"], 3, "{row:#}");
        assert_eq!(row["opaque_dirs"]["count"], 1, "{row:#}");
        let o = tr.overlay(&dev);
        assert_eq!(o["overlay_options"]["userxattr"], true, "{o:#}");
        assert_eq!(o["filesystem"]["name"], "rlpm", "{o:#}");
        // Image layers from the user's store, as for rootful podman.
        let want = layered_want(&diff_ids, &history);
        expect_layered_events(&tr, &id, &want);
    }

    /// fuse-overlayfs (Debian's package; rootless podman's other overlay)
    /// copies up in a userspace daemon that no kernel probe sees: a real
    /// mount of it is named in one warning line at start and in doctor,
    /// and the copy-up made in it is not reported as anything else.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn a_fuse_overlayfs_mount_is_named_as_out_of_reach() {
        let _ = Command::new("modprobe").arg("fuse").output();
        let d = std::path::Path::new("/tmp/cowtrace-fuse");
        let _ = Command::new("umount").arg(d.join("m")).output();
        let _ = std::fs::remove_dir_all(d);
        for sub in ["l", "u", "w", "m"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("l/f"), "lower\n").unwrap();
        run(
            "fuse-overlayfs",
            &[
                "-o",
                "lowerdir=/tmp/cowtrace-fuse/l,upperdir=/tmp/cowtrace-fuse/u,workdir=/tmp/cowtrace-fuse/w",
                "/tmp/cowtrace-fuse/m",
            ],
        );
        struct Unmount;
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg("/tmp/cowtrace-fuse/m").output();
            }
        }
        let _u = Unmount;
        let line = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.contains(" /tmp/cowtrace-fuse/m "))
            .unwrap()
            .to_string();
        let m = cowtrace::mountinfo::Mount::parse_line(&line).unwrap();
        assert_eq!(m.fstype, cowtrace::overlay_opts::FUSE_OVERLAYFS, "{line}");
        let dev = format!("{}:{}", m.dev.0, m.dev.1);
        let t = Tracer::start("fuse", &[]);
        run("sh", &["-c", "echo more >> /tmp/cowtrace-fuse/m/f"]);
        // The daemon did copy up.
        assert_eq!(
            std::fs::read_to_string(d.join("u/f")).unwrap(),
            "lower\nmore\n"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
        let tr = t.stop();
        let warned: Vec<&str> = tr
            .stderr
            .lines()
            .filter(|l| l.contains("fuse-overlayfs") && l.contains("/tmp/cowtrace-fuse/m"))
            .collect();
        assert_eq!(warned.len(), 1, "{}", tr.stderr);
        assert!(
            warned[0]
                .starts_with("cowtrace: warning: a fuse-overlayfs mount (/tmp/cowtrace-fuse/m, ")
                && warned[0].contains(&format!(", {dev}): "))
                && warned[0].contains("not reported"),
            "{}",
            warned[0]
        );
        assert!(
            !tr.events.iter().any(|e| e["dev"] == dev),
            "{:#?}",
            tr.events
        );
        let doctor = Command::new(cowtrace_tests::cowtrace_bin())
            .arg("doctor")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&doctor.stdout);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("fuse-overlayfs mount") && l.contains("/tmp/cowtrace-fuse/m"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].starts_with("FAIL"), "{out}");
    }

    /// The layered image in containerd (`ctr`, no runtime to say what its
    /// layers are): each layer known by its place in the container's root
    /// overlay, counted from the lowest lower directory, with no diff id
    /// and no instruction.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn a_containerd_containers_layers_are_known_by_their_place_in_its_overlay() {
        layered_image();
        run(
            "sh",
            &[
                "-c",
                &format!("docker save {LAYERED} | ctr -n k8s.io images import -"),
            ],
        );
        let id = "1a7e5".repeat(12) + "abcd";
        let (cgroup_args, _) = kube_cgroup(&id, "2c3d4e5f-6071-8293-a4b5-c6d7e8f90a1b");
        let image = format!("docker.io/{LAYERED}:latest");
        let mut args = vec!["run", "-d"];
        args.extend(cgroup_args.iter().map(String::as_str));
        args.extend([image.as_str(), &id, "sleep", "3600"]);
        ctr(&args);
        let _c = CriContainer(id.clone());
        let t = Tracer::start("ctr-layers", &[]);
        ctr(&[
            "task",
            "exec",
            "--exec-id",
            "layers",
            &id,
            "sh",
            "-c",
            LAYERED_WORK,
        ]);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tr = t.stop();
        expect_layered_events(
            &tr,
            &id,
            &std::array::from_fn(|_| (Value::Null, Value::Null)),
        );
    }

    /// Two containerd containers (`ctr`) of one image append to the same
    /// image file: each gets the `bake_into_image` advice for it, naming
    /// both containers' copy-ups (count 2, their bytes summed) and the
    /// file's layer (known by its place in the overlay: containerd does
    /// not say which image a container's lower directories are, so they
    /// stand for it).
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn the_same_image_file_copied_up_by_two_containerd_containers_is_advice() {
        image();
        run(
            "sh",
            &[
                "-c",
                &format!("docker save {IMAGE} | ctr -n k8s.io images import -"),
            ],
        );
        let image = format!("docker.io/{IMAGE}:latest");
        let ids: Vec<String> = ["ba4e1", "ba4e2"]
            .iter()
            .map(|p| p.repeat(12) + "abcd")
            .collect();
        let mut held = Vec::new();
        for (id, uid) in ids.iter().zip([
            "3c4d5e6f-7081-9203-b4c5-d6e7f8091a2b",
            "4d5e6f70-8192-a304-c5d6-e7f8091a2b3c",
        ]) {
            let (cgroup_args, _) = kube_cgroup(id, uid);
            let mut args = vec!["run", "-d"];
            args.extend(cgroup_args.iter().map(String::as_str));
            args.extend([image.as_str(), id, "sleep", "3600"]);
            ctr(&args);
            held.push(CriContainer(id.clone()));
        }
        // An interval's check of the copy-ups after the work, so the advice
        // is in the final report even if the final check runs out of time.
        let (events, report) = (
            "/tmp/trace-ctr-bake/events.ndjson",
            "/tmp/trace-ctr-bake/report.json",
        );
        let t = Tracer::start_args(
            "ctr-bake",
            &[],
            &[
                "--quiet",
                "--interval",
                "1s",
                "--events",
                events,
                "--json",
                report,
            ],
        );
        for id in &ids {
            ctr(&[
                "task",
                "exec",
                "--exec-id",
                "bake",
                id,
                "sh",
                "-c",
                "echo b >> /data/f7",
            ]);
        }
        std::thread::sleep(std::time::Duration::from_secs(4));
        let tr = t.stop();
        let cu: Vec<&Value> = tr
            .events
            .iter()
            .filter(|e| e["type"] == "copy_up" && e["path"] == "data/f7")
            .collect();
        assert_eq!(cu.len(), 2, "{:#?}", tr.events);
        let bytes: u64 = cu.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
        let layer = &cu[0]["layer"]["index"];
        assert!(layer.is_u64(), "{:#}", cu[0]);
        assert_eq!(cu[1]["layer"]["index"], *layer, "{:#}", cu[1]);
        for id in &ids {
            let advice = tr.container(id)["advice"].as_array().unwrap().clone();
            let bake: Vec<&Value> = advice
                .iter()
                .filter(|a| a["rule"] == "bake_into_image")
                .collect();
            assert_eq!(bake.len(), 1, "{id}: {advice:#?}");
            assert_eq!(bake[0]["path"], "data/f7", "{:#}", bake[0]);
            assert_eq!(bake[0]["count"], 2, "{:#}", bake[0]);
            assert_eq!(bake[0]["bytes"], bytes, "{:#}", bake[0]);
            assert_eq!(bake[0]["layer"], *layer, "{:#}", bake[0]);
        }
    }

    /// `GET http://127.0.0.1:PORT/PATH` with `accept`: status line and body.
    pub(super) fn http_get(port: u16, path_and_query: &str, accept: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    }

    /// One PromQL query against the Prometheus HTTP API: the first sample's
    /// value, if any.
    fn prom_query(q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (head, body) = http_get(PROM_PORT, &format!("/api/v1/query?query={enc}"), "*/*");
        assert!(head.starts_with("HTTP/1.1 200"), "{q}: {head}\n{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(|s| s.parse().unwrap())
    }

    pub(super) const METRICS_PORT: u16 = 9464;
    const PROM_PORT: u16 = 9090;

    /// A real Prometheus (Debian's, copied into the guest by the harness)
    /// scrapes `--metrics`; what it stores and computes agrees with the same
    /// run's JSON: counts exact, the median within one bucket of the
    /// exposition. `promtool check metrics` accepts the classic exposition,
    /// and the endpoint goes away with the agent.
    #[test]
    #[ignore = "needs the Docker guest: run through `cargo xtask test`"]
    fn prometheus_scrapes_what_the_json_says() {
        use std::time::{Duration, Instant};
        let c = Container::run("scraped");
        let dir = std::path::Path::new("/tmp/prom");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: cowtrace\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
        ),
    )
    .unwrap();
        // Where Tracer::stop reads it.
        let json = "/tmp/trace-prom/report.json";
        let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
        let t = Tracer::start_args(
            "prom",
            &[],
            &[
                "--quiet",
                "--interval",
                "1s",
                "--json",
                json,
                "--metrics",
                &metrics_addr,
                "--metrics-forget-after",
                "2s",
            ],
        );
        let mut prom = Command::new("/usr/local/bin/prometheus")
            .arg("--config.file=/tmp/prom/prometheus.yml")
            .arg("--storage.tsdb.path=/tmp/prom/data")
            .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create("/tmp/prom/prometheus.log").unwrap())
            .spawn()
            .expect("start prometheus");

        // Ten copy-ups of files from the image (and their parent, data/), two
        // whiteouts.
        c.exec("for i in $(seq 1 10); do echo b >> /data/f$i; done; rm /data/f11 /data/f12");
        let sel = "{container=\"scraped\"}";
        let count_q = format!("cowtrace_copy_up_seconds_count{sel}");
        // Scraped once the agent's interval has taken the numbers in, and
        // stable: two scrapes agree with the endpoint's own exposition.
        let deadline = Instant::now() + Duration::from_secs(240);
        let stored = loop {
            let (_, body) = http_get(METRICS_PORT, "/metrics", "text/plain");
            let exposed = body
                .lines()
                .find(|l| l.starts_with("cowtrace_copy_up_seconds_count{container=\"scraped\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            let up = prom_query("up{job=\"cowtrace\"}");
            let stored = prom_query(&count_q);
            if up == Some(1.0) && exposed == Some(11.0) && stored == exposed {
                break stored.unwrap();
            }
            assert!(
            Instant::now() < deadline,
            "Prometheus never stored the run's numbers: up {up:?}, stored {stored:?}, exposed {exposed:?}\n{}",
            std::fs::read_to_string("/tmp/prom/prometheus.log").unwrap_or_default()
        );
            std::thread::sleep(Duration::from_millis(500));
        };
        let whiteouts = prom_query(&format!("cowtrace_whiteouts_total{sel}"));
        let bytes = prom_query(&format!("cowtrace_copy_up_bytes_total{sel}"));
        let median = prom_query(&format!(
            "histogram_quantile(0.5, sum by (le) (cowtrace_copy_up_seconds_bucket{sel}))"
        ))
        .expect("a median");
        let by_kind = |k: &str| {
            prom_query(&format!(
                "cowtrace_copy_ups_by_kind_total{{container=\"scraped\",copy_kind=\"{k}\"}}"
            ))
        };
        let kinds = ["full", "metadata_only", "deferred_data"].map(by_kind);
        let info = prom_query("cowtrace_build_info");
        let probes = prom_query("cowtrace_probes_attached").unwrap_or(0.0);

        // The classic exposition passes promtool's lint; OpenMetrics comes
        // when asked for.
        let (head, classic) = http_get(METRICS_PORT, "/metrics", "text/plain");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        std::fs::write("/tmp/prom/classic.txt", &classic).unwrap();
        let check = Command::new("sh")
            .args([
                "-c",
                "/usr/local/bin/promtool check metrics < /tmp/prom/classic.txt",
            ])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "promtool check metrics: {}{}\n{classic}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let (head, om) = http_get(
            METRICS_PORT,
            "/metrics",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(om.ends_with("# EOF\n"), "{om}");

        // Once the container is gone (and the grace has passed) its series go.
        docker(&["rm", "-f", "scraped"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = http_get(METRICS_PORT, "/metrics", "text/plain");
            if !body.contains("container=\"scraped\"") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the exited container's series stayed:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }

        let tr = t.stop();
        let _ = prom.kill();
        let _ = prom.wait();
        let mine = named(&tr.report, "scraped").expect("scraped in the report");
        assert_eq!(
            stored,
            mine["copy_up"]["count"].as_f64().unwrap(),
            "{mine:#}"
        );
        assert_eq!(whiteouts, mine["whiteouts"]["count"].as_f64(), "{mine:#}");
        assert_eq!(bytes, mine["copy_up"]["bytes"].as_f64(), "{mine:#}");
        // Docker's mounts copy everything up in full (no metacopy).
        assert_eq!(kinds, [Some(stored), Some(0.0), Some(0.0)], "{mine:#}");
        assert_eq!(info, Some(1.0));
        assert!(probes > 0.0);
        // histogram_quantile interpolates inside the bucket holding the median:
        // the JSON's median lies in that bucket (1% for the histograms' own
        // resolution).
        let p50_s = mine["copy_up"]["latency_ns"]["p50"].as_f64().unwrap() / 1e9;
        let bounds = cowtrace::metrics::COPY_UP_BUCKETS_S;
        let i = bounds
            .iter()
            .position(|&b| median <= b)
            .unwrap_or(bounds.len());
        let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
        let hi = bounds.get(i).copied().unwrap_or(f64::MAX);
        assert!(
            p50_s >= lo * 0.99 && p50_s <= hi * 1.01,
            "Prometheus median {median} s in ({lo}, {hi}], JSON p50 {p50_s} s"
        );
        // Gone with the agent.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT)).is_err(),
            "the metrics port is still open after cowtrace ended"
        );
    }
}

/// The agent as a container, as deploy/kubernetes/daemonset.yaml runs it:
/// the image from deploy/Dockerfile around the same static binary, the
/// host's PID and cgroup namespaces, privileged, the host's tracefs, BTF,
/// cgroup tree and /run. It attributes another container by name, writes
/// its report, and leaves no probe behind when it ends.
#[test]
#[ignore = "needs the Docker guest: run through `cargo xtask test`"]
fn the_agent_runs_as_a_container_and_cleans_up() {
    let ctx = std::path::Path::new("/tmp/agent-img");
    let _ = std::fs::remove_dir_all(ctx);
    std::fs::create_dir_all(ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        include_str!("../../deploy/Dockerfile"),
    )
    .unwrap();
    std::fs::copy(cowtrace_tests::cowtrace_bin(), ctx.join("cowtrace")).unwrap();
    build_image("cowtrace/agent", "/tmp/agent-img");
    let probes_before =
        std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
    assert!(
        !probes_before.contains("kprobes/cowtrace_"),
        "another cowtrace is attached before the test:\n{probes_before}"
    );
    let victim = Container::run("watched");
    let out = std::path::Path::new("/tmp/agent-out");
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let _ = Command::new("docker")
        .args(["rm", "-f", "cowtrace-agent"])
        .output();
    docker(&[
        "run",
        "-d",
        "--name",
        "cowtrace-agent",
        "--network",
        "none",
        "--pid",
        "host",
        "--cgroupns",
        "host",
        "--privileged",
        "-e",
        "DOCKER_HOST=unix:///host/run/docker.sock",
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "-v",
        "/run:/host/run:ro",
        "-v",
        "/tmp/agent-out:/out",
        "cowtrace/agent",
        "--quiet",
        "--interval",
        "1h",
        "--json",
        "/out/report.json",
    ]);
    let _agent = Container("cowtrace-agent".into());
    // Ready when it says so on its standard error.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let o = Command::new("docker")
            .args(["logs", "cowtrace-agent"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if err.lines().any(|l| l.starts_with("tracing")) {
            break;
        }
        let running = docker(&["inspect", "-f", "{{.State.Running}}", "cowtrace-agent"]);
        assert!(
            running == "true" && std::time::Instant::now() < deadline,
            "the agent container never said `tracing` (running: {running}):\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    victim.exec("echo b >> /data/f7");
    // SIGINT, as Ctrl-C: the report is written, the probes detached.
    docker(&["kill", "-s", "INT", "cowtrace-agent"]);
    let code = docker(&["wait", "cowtrace-agent"]);
    let logs = Command::new("docker")
        .args(["logs", "cowtrace-agent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&logs.stderr).to_string();
    assert_eq!(code, "0", "{err}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let mine = named(&report, "watched").unwrap_or_else(|| panic!("{report:#}\n{err}"));
    // data/f7 and its parent directory.
    assert_eq!(mine["copy_up"]["count"], 2, "{mine:#}");
    assert_eq!(mine["image"], IMAGE, "{mine:#}");
    // Nothing left attached: no kprobe or kretprobe of ours in tracefs.
    let events = std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
    assert!(
        !events.contains("kprobes/cowtrace_"),
        "probes left behind after the agent container ended:\n{events}\n{err}"
    );
}
