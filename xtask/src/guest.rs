//! Run one command in a QEMU guest booted from a Debian kernel.
//!
//! [`run`] takes a [`GuestSpec`]: which kernel series, small (busybox
//! initramfs) or `docker` (Debian rootfs with a Docker engine) guest, files
//! to copy in, where to put the guest's `/out`, a timeout and the command.
//! The command's stdout/stderr stream live to the host's; the result is its
//! exit status. Boot failures, kernel panics and timeouts are errors of
//! type [`GuestFailure`] (exit code 125, 125, 124) naming the console log.
//!
//! Build the agent/tests *before* calling this: never run cargo while a
//! guest runs.

use crate::cpio::Tree;
use crate::kernel::{self, Kernel, Series};
use crate::qemu::{self, Accel, Boot, Outcome, Report, Sinks};
use crate::util::{self, note, shell_quote};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A host file or directory to put into the guest.
#[derive(Debug, Clone)]
pub struct Copy {
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
}

impl std::str::FromStr for Copy {
    type Err = anyhow::Error;
    /// `HOST_PATH:GUEST_PATH`
    fn from_str(s: &str) -> Result<Self> {
        let (h, g) = s
            .rsplit_once(':')
            .context("expected HOST_PATH:GUEST_PATH")?;
        if h.is_empty() || !g.starts_with('/') {
            bail!("expected HOST_PATH:/ABSOLUTE/GUEST_PATH, got {s:?}");
        }
        Ok(Copy {
            host: h.into(),
            guest: g.to_string(),
        })
    }
}

/// What to run where.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: Series,
    /// Boot the Debian rootfs with a running Docker engine.
    pub docker: bool,
    pub copies: Vec<Copy>,
    /// Receives what the command leaves in the guest's /out.
    pub out: Option<PathBuf>,
    /// For the whole boot, command and power-off.
    pub timeout: Duration,
    /// argv of the command (run as root in /root).
    pub command: Vec<String>,
    /// Installed as /usr/local/bin/cowtrace (see `build::agent`).
    pub agent: Option<PathBuf>,
}

impl GuestSpec {
    pub fn new(kernel: Series, command: Vec<String>) -> Self {
        GuestSpec {
            kernel,
            docker: false,
            copies: Vec::new(),
            out: None,
            timeout: Duration::from_secs(600),
            command,
            agent: None,
        }
    }
}

/// Why a guest did not report the command's exit status.
#[derive(Debug)]
pub struct GuestFailure {
    pub outcome: Outcome,
    pub message: String,
    pub console_log: PathBuf,
}

impl GuestFailure {
    /// 124 for a timeout, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::TimedOut => 124,
            _ => 125,
        }
    }
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (console log: {})",
            self.message,
            self.console_log.display()
        )
    }
}

impl std::error::Error for GuestFailure {}

/// Run the command, streaming to this process's stdout/stderr.
pub fn run(spec: &GuestSpec) -> Result<i32> {
    run_with(spec, &mut Sinks::inherit())
}

/// Run the command, streaming into `sinks`.
pub fn run_with(spec: &GuestSpec, sinks: &mut Sinks) -> Result<i32> {
    let cache = util::cache_dir()?;
    let kernel = kernel::prepare(&cache, spec.kernel)?;
    let accel = accel(&cache, &kernel)?;
    let run_dir = new_run_dir(&cache)?;
    let report = if spec.docker {
        let base = crate::docker::base_image(&cache, &kernel, accel)?;
        let disk = run_dir.join("disk.qcow2");
        util::output_quiet(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&base)
                .arg(&disk),
        )?;
        let initrd = run_dir.join("initrd.gz");
        docker_initramfs(&kernel, &payload(spec, true, false)?)?.write_gz(&initrd)?;
        let r = boot(
            &kernel,
            &initrd,
            Some((disk.clone(), "qcow2")),
            &run_dir,
            spec.timeout,
            accel,
            sinks,
        )?;
        let _ = fs::remove_file(&disk);
        r
    } else {
        let initrd = run_dir.join("initrd.gz");
        small_initramfs(&kernel, &payload(spec, false, false)?)?.write_gz(&initrd)?;
        boot(&kernel, &initrd, None, &run_dir, spec.timeout, accel, sinks)?
    };
    let _ = fs::remove_file(run_dir.join("initrd.gz"));
    finish(spec, &kernel, report)
}

fn boot(
    kernel: &Kernel,
    initrd: &Path,
    disk: Option<(PathBuf, &'static str)>,
    run_dir: &Path,
    timeout: Duration,
    accel: Accel,
    sinks: &mut Sinks,
) -> Result<Report> {
    let b = Boot {
        vmlinuz: kernel.vmlinuz(),
        initrd: initrd.to_path_buf(),
        disk,
        run_dir: run_dir.to_path_buf(),
        timeout,
        accel,
        memory_mb: 2048,
    };
    let r = qemu::boot(&b, sinks)?;
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    fs::write(
        run_dir.join("timing"),
        format!(
            "kernel {} accel {:?}\nready {}\nstart {}\ntotal {:.1}s\n",
            kernel.version,
            accel,
            ms(r.ready_after),
            ms(r.start_after),
            r.elapsed.as_secs_f64()
        ),
    )?;
    if std::env::var_os("COWTRACE_TIMING").is_some() {
        note(format!(
            "kernel {} ({:?}): docker ready {}, command start {}, total {:.1}s",
            kernel.version,
            accel,
            ms(r.ready_after),
            ms(r.start_after),
            r.elapsed.as_secs_f64()
        ));
    }
    Ok(r)
}

fn finish(spec: &GuestSpec, kernel: &Kernel, r: Report) -> Result<i32> {
    let what = format!(
        "{} guest (kernel {})",
        if spec.docker { "docker" } else { "small" },
        kernel.version
    );
    let message = match &r.outcome {
        Outcome::Exited(rc) => {
            if let (Some(out), Some(tar)) = (&spec.out, &r.out_tar) {
                extract_tar(tar, out)?;
            } else if let Some(out) = &spec.out {
                fs::create_dir_all(out)?;
            }
            return Ok(*rc);
        }
        Outcome::TimedOut => format!(
            "{what}: timed out after {}s{}",
            spec.timeout.as_secs(),
            if r.start_after.is_some() {
                " while the command ran"
            } else {
                " before the command started"
            }
        ),
        Outcome::Panicked(line) => format!("{what}: kernel panic: {line}"),
        Outcome::InitFailed(why) => format!("{what}: guest init failed: {why}"),
        Outcome::NoStatus => {
            let qemu_err = fs::read_to_string(&r.qemu_log).unwrap_or_default();
            let qemu_err = qemu_err.trim();
            if r.start_after.is_some() {
                format!("{what}: stopped while the command ran, without an exit status")
            } else if !qemu_err.is_empty() {
                format!("{what}: QEMU failed: {qemu_err}")
            } else {
                format!("{what}: failed to boot (no command started)")
            }
        }
    };
    let tail = r.console_tail(25);
    if !tail.trim().is_empty() {
        eprintln!(
            "---- last lines of {} ----\n{tail}\n----",
            r.console_log.display()
        );
    }
    Err(GuestFailure {
        outcome: r.outcome,
        message,
        console_log: r.console_log,
    }
    .into())
}

fn extract_tar(tar: &[u8], out: &Path) -> Result<()> {
    use std::io::Write;
    fs::create_dir_all(out)?;
    let mut child = Command::new("tar")
        .args(["-x", "--no-same-owner", "-f", "-", "-C"])
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .context("run tar")?;
    child.stdin.take().unwrap().write_all(tar)?;
    let st = child.wait()?;
    if !st.success() {
        bail!("extracting the guest's /out into {} failed", out.display());
    }
    Ok(())
}

fn new_run_dir(cache: &Path) -> Result<PathBuf> {
    let runs = cache.join("runs");
    fs::create_dir_all(&runs)?;
    // Keep the 30 newest run directories, and anything from the last day
    // (another xtask may be using it).
    let mut old: Vec<PathBuf> = fs::read_dir(&runs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    old.sort();
    if old.len() > 30 {
        for p in &old[..old.len() - 30] {
            if util::age(p).is_some_and(|a| a > Duration::from_secs(86400)) {
                let _ = util::remove_all(p);
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let dir = runs.join(format!("{}-{}", now.as_millis(), std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Mounts and setup common to both guest kinds (the init runs as PID 1).
const COMMON_SETUP: &str = r#"export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
C=/dev/ttyS3
fail() {
    echo "COWTRACE-FAIL $*" > $C
    echo "cowtrace init: $*" > /dev/console
    sync
    echo o > /proc/sysrq-trigger
    sleep 30
    exit 1
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/sysrq
mkdir -p /dev/pts /dev/shm /run /tmp /out /root
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf -o mode=700 bpf /sys/fs/bpf
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
ulimit -l unlimited
hostname cowtrace
for t in /dev/ttyS1 /dev/ttyS2 $C; do stty -F $t raw -echo || fail "cannot set up $t"; done
modprobe overlay || fail "modprobe overlay failed"
"#;

const DOCKER_START: &str = r#"containerd >/var/log/containerd.log 2>&1 &
CONTAINERD=$!
dockerd --containerd=/run/containerd/containerd.sock --storage-driver=overlay2 \
    --data-root=/var/lib/docker --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &
DOCKERD=$!
n=0
until docker version >/dev/null 2>&1; do
    n=$((n+1))
    if [ $n -gt 600 ]; then
        tail -n 20 /var/log/dockerd.log > /dev/console
        fail "dockerd did not become ready"
    fi
    sleep 0.2
done
echo COWTRACE-READY > $C
"#;

const RUN_COMMAND: &str = r#"echo COWTRACE-START > $C
cd /root
/bin/sh /etc/cowtrace/cmd </dev/null >/dev/ttyS1 2>/dev/ttyS2
rc=$?
cd /
# Setting the mode waits until everything written has been sent.
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
"#;

const DOCKER_STOP: &str = r#"kill $DOCKERD
n=0; while kill -0 $DOCKERD 2>/dev/null && [ $n -lt 150 ]; do n=$((n+1)); sleep 0.2; done
kill $CONTAINERD
n=0; while kill -0 $CONTAINERD 2>/dev/null && [ $n -lt 50 ]; do n=$((n+1)); sleep 0.2; done
sync
mount -o remount,ro / || rc=125
"#;

const REPORT: &str = r#"if [ -n "$(ls -A /out 2>/dev/null)" ]; then
    echo COWTRACE-OUT-BEGIN > $C
    tar -C /out -cf - . | base64 > $C
    echo COWTRACE-OUT-END > $C
fi
echo "COWTRACE-EXIT $rc" > $C
stty -F $C raw -echo
sync
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// The guest's init script (small guest: /init; docker: stage 2 after
/// switch_root). `clean_stop` stops dockerd and remounts / read-only
/// before powering off (needed when the disk is kept).
pub fn init_script(docker: bool, clean_stop: bool) -> String {
    let mut s = String::from("#!/bin/sh\n# cowtrace guest init (generated by xtask)\n");
    s.push_str(COMMON_SETUP);
    if docker {
        s.push_str(DOCKER_START);
    }
    s.push_str(RUN_COMMAND);
    if docker && clean_stop {
        s.push_str(DOCKER_STOP);
    }
    s.push_str(REPORT);
    s
}

/// `/etc/cowtrace/cmd`: the argv, shell-quoted.
pub fn command_script(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    format!("exec {}\n", words.join(" "))
}

/// Files every guest gets on top of its root: init, command, agent, copies.
pub(crate) fn payload(spec: &GuestSpec, docker: bool, clean_stop: bool) -> Result<Tree> {
    if spec.command.is_empty() {
        bail!("no command to run in the guest");
    }
    let mut t = Tree::new();
    t.bytes("etc/cowtrace/init", 0o755, init_script(docker, clean_stop));
    t.bytes("etc/cowtrace/cmd", 0o644, command_script(&spec.command));
    t.dir("out", 0o755).dir("root", 0o700);
    if let Some(agent) = &spec.agent {
        t.host("usr/local/bin/cowtrace", agent)?;
    }
    for c in &spec.copies {
        t.host(&c.guest, &c.host)?;
    }
    Ok(t)
}

fn add_busybox(t: &mut Tree) -> Result<()> {
    t.host("bin/busybox", Path::new("/bin/busybox"))?;
    let list = util::output(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet != "bin/busybox" {
            t.symlink(applet, "/bin/busybox");
        }
    }
    for d in ["dev", "proc", "sys", "run", "tmp", "usr/local/bin", "etc"] {
        t.dir(d, 0o755);
    }
    t.chardev("dev/console", 0o600, 5, 1);
    t.chardev("dev/null", 0o666, 1, 3);
    Ok(())
}

/// Add these modules (and what they need) with a matching modules.dep.
fn add_modules(t: &mut Tree, kernel: &Kernel, names: &[&str]) -> Result<Vec<String>> {
    let files = kernel.module_closure(names)?;
    let m = kernel.modules();
    let base = format!("lib/modules/{}", kernel.version);
    let dep = fs::read_to_string(m.join("modules.dep"))?;
    let dep: String = dep
        .lines()
        .filter(|l| files.iter().any(|f| l.starts_with(&format!("{f}:"))))
        .map(|l| format!("{l}\n"))
        .collect();
    t.bytes(&format!("{base}/modules.dep"), 0o644, dep);
    for extra in ["modules.builtin", "modules.order"] {
        if m.join(extra).is_file() {
            t.host(&format!("{base}/{extra}"), &m.join(extra))?;
        }
    }
    for f in &files {
        t.host(&format!("{base}/{f}"), &m.join(f))?;
    }
    Ok(files)
}

/// The small guest: busybox, overlay.ko, the init and the payload.
pub fn small_initramfs(kernel: &Kernel, payload: &Tree) -> Result<Tree> {
    let mut t = Tree::new();
    add_busybox(&mut t)?;
    add_modules(&mut t, kernel, &["overlay"])?;
    t.symlink("init", "/etc/cowtrace/init");
    t.merge(payload);
    Ok(t)
}

/// The docker guest's first stage: load virtio, mount /dev/vda, copy the
/// payload onto it, switch_root to the payload's init.
pub fn docker_initramfs(kernel: &Kernel, payload: &Tree) -> Result<Tree> {
    let mut t = Tree::new();
    add_busybox(&mut t)?;
    let files = add_modules(&mut t, kernel, &["virtio_pci", "virtio_blk"])?;
    let mut init = String::from(
        "#!/bin/sh\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n\
         fail() { echo \"COWTRACE-FAIL $*\" > /dev/ttyS3; echo o > /proc/sysrq-trigger; sleep 30; exit 1; }\n\
         mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n\
         echo 1 > /proc/sys/kernel/sysrq\n",
    );
    for f in &files {
        init.push_str(&format!("insmod /lib/modules/{}/{f}\n", kernel.version));
    }
    init.push_str(
        "n=0\nwhile [ ! -b /dev/vda ]; do n=$((n+1)); [ $n -gt 200 ] && fail \"no /dev/vda\"; sleep 0.05; done\n\
         mkdir -p /newroot\nmount -t ext4 /dev/vda /newroot || fail \"cannot mount /dev/vda\"\n\
         cp -a /payload/. /newroot/ || fail \"cannot copy the payload\"\n\
         umount /proc /sys /dev\n\
         exec switch_root /newroot /etc/cowtrace/init\n",
    );
    t.bytes("init", 0o755, init);
    t.merge_under("payload", payload);
    Ok(t)
}

/// KVM if a quick probe boot works (verdict cached), else TCG.
pub fn accel(cache: &Path, kernel: &Kernel) -> Result<Accel> {
    if std::env::var("COWTRACE_ACCEL").as_deref() == Ok("tcg") {
        return Ok(Accel::Tcg);
    }
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Ok(Accel::Tcg);
    }
    let host = util::output_quiet(Command::new("uname").arg("-rv"))?;
    let qemu = util::output_quiet(Command::new("qemu-system-x86_64").arg("--version"))?;
    let key = util::KeyHasher::new().str(&host).str(&qemu).hex();
    let verdict_file = cache.join(format!("kvm-verdict-{key}"));
    let _lock = util::lock(&cache.join("kvm-probe.lock"))?;
    if let Ok(v) = fs::read_to_string(&verdict_file) {
        return Ok(if v.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    note("probing whether KVM works here (once)");
    let dir = new_run_dir(cache)?;
    let spec = GuestSpec::new(kernel.series, vec!["true".into()]);
    let initrd = dir.join("initrd.gz");
    small_initramfs(kernel, &payload(&spec, false, false)?)?.write_gz(&initrd)?;
    let b = Boot {
        vmlinuz: kernel.vmlinuz(),
        initrd,
        disk: None,
        run_dir: dir.clone(),
        timeout: Duration::from_secs(20),
        accel: Accel::Kvm,
        memory_mb: 512,
    };
    let ok = matches!(
        qemu::boot(&b, &mut Sinks::null())?.outcome,
        Outcome::Exited(0)
    );
    let _ = util::remove_all(&dir);
    note(format!(
        "KVM {}",
        if ok {
            "works: using it"
        } else {
            "does not work: using TCG"
        }
    ));
    fs::write(&verdict_file, if ok { "kvm\n" } else { "tcg\n" })?;
    Ok(if ok { Accel::Kvm } else { Accel::Tcg })
}

/// Boot `disk` (raw, writable) with `command` and a clean shutdown; used to
/// prepare cached disk images. Output goes to the run directory's logs.
pub(crate) fn prepare_disk(
    cache: &Path,
    kernel: &Kernel,
    accel: Accel,
    disk: &Path,
    command: &[&str],
    timeout: Duration,
) -> Result<()> {
    let run_dir = new_run_dir(cache)?;
    let mut spec = GuestSpec::new(
        kernel.series,
        command.iter().map(|s| s.to_string()).collect(),
    );
    spec.docker = true;
    spec.timeout = timeout;
    let initrd = run_dir.join("initrd.gz");
    docker_initramfs(kernel, &payload(&spec, true, true)?)?.write_gz(&initrd)?;
    let mut sinks = Sinks {
        stdout: Box::new(fs::File::create(run_dir.join("prepare.stdout"))?),
        stderr: Box::new(fs::File::create(run_dir.join("prepare.stderr"))?),
    };
    let r = boot(
        kernel,
        &initrd,
        Some((disk.to_path_buf(), "raw")),
        &run_dir,
        timeout,
        accel,
        &mut sinks,
    )?;
    match finish(&spec, kernel, r)? {
        0 => Ok(()),
        rc => bail!(
            "preparing {} failed: `{}` exited {rc} (see {})",
            disk.display(),
            command.join(" "),
            run_dir.display()
        ),
    }
}
