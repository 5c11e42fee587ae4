//! Support for cowtrace's guest integration tests: real overlay mounts, a
//! real `cowtrace` process, and its real NDJSON and JSON output.
//!
//! The tests in `tests/` are `#[ignore]`d on the host (whose kernel cannot
//! run the probes); `cargo xtask test` builds them statically and runs them
//! with `--ignored` as root inside QEMU guests booted from Debian kernels.

use serde_json::Value;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The agent under test: where the guest harness installs it, or
/// `$COWTRACE_BIN` (`cargo xtask test --kernel host` sets it).
pub fn cowtrace_bin() -> String {
    std::env::var("COWTRACE_BIN").unwrap_or_else(|_| "/usr/local/bin/cowtrace".into())
}

fn mount(src: &str, target: &Path, fstype: &str, data: &str) {
    let c = |s: &str| CString::new(s).unwrap();
    let t = c(target.to_str().unwrap());
    let rc = unsafe {
        libc::mount(
            c(src).as_ptr(),
            t.as_ptr(),
            c(fstype).as_ptr(),
            0,
            c(data).as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        panic!(
            "mount {fstype} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// A fresh tmpfs holding lower/upper/work and an overlay mounted on
/// `merged` the way Docker mounts it (`index=off`), or with other options
/// ([`Overlay::with_options`]).
pub struct Overlay {
    pub root: PathBuf,
    pub lower: PathBuf,
    pub merged: PathBuf,
    /// The tmpfs the layers live on (else they are on the root disk);
    /// unmounted after the overlay.
    tmpfs: Option<Tmpfs>,
}

impl Overlay {
    /// `populate` fills the lower layer before the overlay is mounted.
    pub fn new(name: &str, populate: impl FnOnce(&Path)) -> Overlay {
        Self::with_options(name, "index=off", populate)
    }

    /// As [`Overlay::new`], mounted with `options` (e.g.
    /// `index=off,metacopy=on`) after the layer directories.
    pub fn with_options(name: &str, options: &str, populate: impl FnOnce(&Path)) -> Overlay {
        let root = PathBuf::from(format!("/tmp/ct-{name}"));
        let tmpfs = Tmpfs::at(&root);
        Self::layers(root, Some(tmpfs), options, populate)
    }

    /// Layers on the root filesystem (ext4 in the Docker guest), as a
    /// container engine has them: copy-ups there pay for real I/O.
    pub fn on_disk(name: &str, populate: impl FnOnce(&Path)) -> Overlay {
        let root = PathBuf::from(format!("/var/tmp/ct-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Self::layers(root, None, "index=off", populate)
    }

    /// A fresh upper layer on the root disk over an existing `lower`
    /// (benchmarks reuse one lower layer across rounds).
    pub fn over(name: &str, lower: &Path) -> Overlay {
        let root = PathBuf::from(format!("/var/tmp/ct-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(lower, root.join("lower")).unwrap();
        Self::layers(root, None, "index=off", |_| {})
    }

    fn layers(
        root: PathBuf,
        tmpfs: Option<Tmpfs>,
        options: &str,
        populate: impl FnOnce(&Path),
    ) -> Overlay {
        let lower = root.join("lower");
        let merged = root.join("merged");
        for d in ["lower", "upper", "work", "merged"] {
            if !root.join(d).exists() {
                std::fs::create_dir(root.join(d)).unwrap();
            }
        }
        populate(&lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{options}",
            lower.display(),
            root.join("upper").display(),
            root.join("work").display()
        );
        mount("overlay", &merged, "overlay", &opts);
        Overlay {
            root,
            lower,
            merged,
            tmpfs,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.merged.join(rel)
    }

    /// The overlay device as cowtrace reports it (`major:minor`).
    pub fn dev(&self) -> String {
        let dev = std::fs::metadata(&self.merged).unwrap().dev();
        format!("{}:{}", libc::major(dev), libc::minor(dev))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let merged = CString::new(self.merged.to_str().unwrap()).unwrap();
        unsafe { libc::umount2(merged.as_ptr(), libc::MNT_DETACH) };
        // The tmpfs, if any, goes with its field, after this.
        if self.tmpfs.is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn at(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        mount("tmpfs", dir, "tmpfs", "size=1g");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = CString::new(self.0.to_str().unwrap()).unwrap();
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `size` bytes of a pattern to `path`.
pub fn make_file(path: &Path, size: usize) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// A running `cowtrace` with its outputs in a private directory.
pub struct Tracer {
    child: Child,
    dir: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
}

/// What a finished `cowtrace` run left behind.
pub struct Trace {
    pub events: Vec<Value>,
    pub report: Value,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Trace {
    /// Events of one type on one overlay device.
    pub fn of(&self, kind: &str, dev: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["type"] == kind && e["dev"] == dev)
            .collect()
    }

    /// The copy-up whose path is `path` and that is an operation target.
    pub fn copy_up(&self, dev: &str, path: &str) -> Vec<&Value> {
        self.of("copy_up", dev)
            .into_iter()
            .filter(|e| e["path"] == path)
            .collect()
    }

    /// The report's `overlays` entry of overlay device `dev`.
    pub fn overlay(&self, dev: &str) -> &Value {
        self.report["overlays"]
            .as_array()
            .and_then(|os| os.iter().find(|o| o["dev"] == dev))
            .unwrap_or_else(|| panic!("no overlay {dev} in report: {:#}", self.report["overlays"]))
    }

    pub fn container(&self, id: &str) -> &Value {
        self.report["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no container {id} in report: {:#}", self.report))
    }
}

impl Tracer {
    /// Starts cowtrace and waits for its `tracing` line.
    pub fn start(name: &str, extra: &[&str]) -> Tracer {
        Self::start_with(name, &[], extra)
    }

    /// As [`Tracer::start`], run through `prefix` (e.g. `unshare -p -f`).
    pub fn start_with(name: &str, prefix: &[&str], extra: &[&str]) -> Tracer {
        let dir = PathBuf::from(format!("/tmp/trace-{name}"));
        let events = dir.join("events.ndjson");
        let report = dir.join("report.json");
        let mut args = vec![
            "--quiet",
            "--interval",
            "1h",
            "--events",
            events.to_str().unwrap(),
            "--json",
            report.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::start_args(name, prefix, &args)
    }

    /// Starts `prefix... cowtrace args...` with exactly these arguments
    /// (outputs wherever they say; [`Tracer::dir`] is still made).
    pub fn start_args(name: &str, prefix: &[&str], args: &[&str]) -> Tracer {
        let dir = PathBuf::from(format!("/tmp/trace-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(cowtrace_bin());
                c
            }
            None => Command::new(cowtrace_bin()),
        };
        let mut child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cowtrace");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            child,
            dir,
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        loop {
            match t.stderr.recv_timeout(Duration::from_secs(300)) {
                Ok(line) => {
                    let ready = line.starts_with("tracing");
                    t.stderr_seen.push(line);
                    if ready {
                        return t;
                    }
                }
                Err(_) => {
                    let status = t.child.wait();
                    panic!(
                        "cowtrace never said `tracing` ({status:?}); stderr:\n{}",
                        t.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    /// SIGINT, wait, and read the outputs.
    pub fn stop(self) -> Trace {
        self.signal(libc::SIGINT);
        self.finish()
    }

    /// The process started (cowtrace itself, or the prefix program).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Where `events.ndjson` and `report.json` go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits at most `limit` for the end; `None` if still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for cowtrace") {
                return Some(st);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `limit` for a stderr line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Everything cowtrace wrote to stderr until it closed it.
    pub fn rest_of_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }

    /// Waits for the end (killing it after 180 s), whatever the status.
    pub fn wait_end(&mut self) -> (std::process::ExitStatus, String) {
        // A hang is a failure with diagnostics, not a guest timeout.
        let status = match self.wait_for(Duration::from_secs(180)) {
            Some(st) => st,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cowtrace did not exit within 180 s; stderr:\n{}",
                    self.rest_of_stderr()
                );
            }
        };
        (status, self.rest_of_stderr())
    }

    /// Waits for cowtrace to end by itself (e.g. `--duration`).
    pub fn finish(mut self) -> Trace {
        let (status, stderr) = self.wait_end();
        assert!(status.success(), "cowtrace failed: {status}\n{stderr}");
        self.outputs(status, stderr)
    }

    /// Reads the outputs of a run that ended, checking their form only.
    pub fn outputs(self, status: std::process::ExitStatus, stderr: String) -> Trace {
        let text = std::fs::read_to_string(self.dir.join("events.ndjson")).unwrap_or_default();
        let events = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON {l:?}: {e}")))
            .collect();
        let report_text = std::fs::read_to_string(self.dir.join("report.json"))
            .unwrap_or_else(|e| panic!("no JSON report: {e}\n{stderr}"));
        let report: Value = serde_json::from_str(&report_text)
            .unwrap_or_else(|e| panic!("report is not strict JSON: {e}\n{report_text}"));
        // Every field of a real report is in the schema document.
        let documented = cowtrace::report::documented_paths(cowtrace::report::SCHEMA_DOC);
        let undocumented: Vec<_> = cowtrace::report::json_paths(&report)
            .into_iter()
            .filter(|p| !documented.contains(p))
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in docs/json-schema.md: {undocumented:?}"
        );
        Trace {
            events,
            report,
            stderr,
            status,
        }
    }
}

/// A test that fails while cowtrace runs must not leave it running (and
/// attached) for the tests after it: end it as Ctrl-C would, then for sure.
impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGINT);
            if self.wait_for(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A Docker engine's command line, for the Docker guests' tests.
pub mod engine {
    use std::process::Command;

    /// Runs `program args...`, panicking with its stderr unless it
    /// succeeds; its stdout, trimmed.
    pub fn run(program: &str, args: &[&str]) -> String {
        let o = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            o.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn docker(args: &[&str]) -> String {
        run("docker", args)
    }

    /// `docker build` of the context directory `ctx` as `tag`, offline (the
    /// guest has no network; every base image is already loaded).
    pub fn build_image(tag: &str, ctx: &str) {
        docker(&["build", "-q", "--network", "none", "-t", tag, ctx]);
    }
}

/// A runtime API socket that accepts every connection and never answers,
/// holding each one open: the agent's requests to it end only at the
/// agent's own deadline ([`cowtrace::runtime::REQUEST_DEADLINE`]).
pub struct HungApi {
    accepted: mpsc::Receiver<std::time::Instant>,
}

impl HungApi {
    pub fn bind(path: &str) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let (tx, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
                if tx.send(std::time::Instant::now()).is_err() {
                    break;
                }
            }
        });
        HungApi { accepted }
    }

    /// Waits for the agent's next request (a new connection) and says
    /// when it came. Earlier connections are forgotten first.
    pub fn next_request(&self, limit: Duration) -> std::time::Instant {
        while self.accepted.try_recv().is_ok() {}
        self.accepted
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the agent asked the hung API nothing for {limit:?}"))
    }

    /// Whether `end`, the end of a run, came before the request made at
    /// `asked` could have given up: a run whose end waited for its
    /// request in flight ends at `asked + REQUEST_DEADLINE` or later. This
    /// is the failure's own signature, not a speed bound.
    pub fn ended_before_the_deadline(asked: std::time::Instant, end: std::time::Instant) -> bool {
        end < asked + cowtrace::runtime::REQUEST_DEADLINE
    }
}
