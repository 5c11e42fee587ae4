//! Parser for `/proc/<pid>/mountinfo`, focused on overlay mounts.
//!
//! Why: the eBPF side identifies the overlay filesystem of an event by
//! `dentry->d_sb->s_dev`, in the kernel's internal device encoding. The
//! mountinfo `major:minor` field of the same superblock lets us map that
//! number to the overlay mount, and its super options (`upperdir=`,
//! `lowerdir=`) to the container whose layer it is (compare with the
//! runtime's GraphDriver UpperDir, or read the container init's mountinfo).
//!
//! Format (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] -
//! FSTYPE SOURCE SUPEROPTS`. Paths are octal-escaped (`\040` for a space).
//! Overlay's super options escape `,`, `=`, whitespace and `\` inside values
//! the same way, so options are split on raw commas *before* unescaping.

use std::fmt;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_id: u32,
    pub parent_id: u32,
    /// (major, minor) as userspace sees it.
    pub dev: (u32, u32),
    /// Root of the mount within its filesystem (unescaped).
    pub root: String,
    /// Mount point relative to the reader's root (unescaped).
    pub mount_point: String,
    /// Per-mount options (`rw,relatime`).
    pub mount_opts: String,
    /// Optional fields such as `shared:5`, `master:1`.
    pub optional: Vec<String>,
    pub fstype: String,
    /// Mount source (unescaped), e.g. `overlay` or `/dev/sda1`.
    pub source: String,
    /// Super block options as (key, value), both unescaped, in order.
    pub super_opts: Vec<(String, Option<String>)>,
}

/// Why a mountinfo line did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: String,
    pub what: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad mountinfo line ({}): {}", self.what, self.line)
    }
}

impl std::error::Error for ParseError {}

/// Decodes the kernel's octal escapes (`\040`, `\011`, `\012`, `\134`...).
/// A backslash not followed by three octal digits is kept as is.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mount {
    /// Parses one mountinfo line.
    pub fn parse_line(line: &str) -> Result<Mount, ParseError> {
        let err = |what| ParseError {
            line: line.to_string(),
            what,
        };
        let mut f = line.split(' ').filter(|s| !s.is_empty());
        let mut next = |what| f.next().ok_or_else(|| err(what));
        let mount_id = next("mount id")?.parse().map_err(|_| err("mount id"))?;
        let parent_id = next("parent id")?.parse().map_err(|_| err("parent id"))?;
        let (maj, min) = next("major:minor")?
            .split_once(':')
            .ok_or_else(|| err("major:minor"))?;
        let dev = (
            maj.parse().map_err(|_| err("major"))?,
            min.parse().map_err(|_| err("minor"))?,
        );
        let root = unescape(next("root")?);
        let mount_point = unescape(next("mount point")?);
        let mount_opts = next("mount options")?.to_string();
        let mut optional = Vec::new();
        loop {
            match next("separator")? {
                "-" => break,
                o => optional.push(o.to_string()),
            }
        }
        let fstype = unescape(next("fs type")?);
        let source = unescape(next("source")?);
        // Super options may be missing on very old kernels.
        let super_opts = f.next().map(parse_options).unwrap_or_default();
        Ok(Mount {
            mount_id,
            parent_id,
            dev,
            root,
            mount_point,
            mount_opts,
            optional,
            fstype,
            source,
            super_opts,
        })
    }

    /// Value of super option `key` (the first one), e.g. `upperdir`.
    /// Flags without a value (`nouserxattr`) give `None`; use
    /// [`Mount::has_super_opt`] for those.
    pub fn super_opt(&self, key: &str) -> Option<&str> {
        self.super_opts
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Is super option `key` present (with or without a value)?
    pub fn has_super_opt(&self, key: &str) -> bool {
        self.super_opts.iter().any(|(k, _)| k == key)
    }

    /// The overlay's regular lower layers, topmost first. Handles the
    /// legacy colon-separated `lowerdir=` (where `\:` is a literal colon and
    /// `::` starts the data-only layers) and the repeated `lowerdir+=`
    /// options newer kernels show when layers were added one by one.
    pub fn lowerdirs(&self) -> Vec<String> {
        self.layers().0
    }

    /// The overlay's data-only lower layers (`::` in `lowerdir=`, or
    /// `datadir+=` options).
    pub fn datadirs(&self) -> Vec<String> {
        self.layers().1
    }

    fn layers(&self) -> (Vec<String>, Vec<String>) {
        let (mut lower, mut data) = (Vec::new(), Vec::new());
        for (k, v) in &self.super_opts {
            let Some(v) = v else { continue };
            match k.as_str() {
                "lowerdir" => {
                    let mut in_data = false;
                    for (i, part) in split_colons(v).into_iter().enumerate() {
                        if part.is_empty() {
                            // "a::b": an empty field marks the data-only layers
                            in_data |= i > 0;
                            continue;
                        }
                        if in_data {
                            data.push(part);
                        } else {
                            lower.push(part);
                        }
                    }
                }
                "lowerdir+" => lower.push(v.clone()),
                "datadir+" => data.push(v.clone()),
                _ => {}
            }
        }
        (lower, data)
    }

    /// The device number in the kernel's internal encoding
    /// (`major << 20 | minor`), as eBPF reads `super_block->s_dev`.
    pub fn kernel_dev(&self) -> u32 {
        kernel_dev(self.dev.0, self.dev.1)
    }

    pub fn is_overlay(&self) -> bool {
        self.fstype == "overlay"
    }
}

/// `MKDEV(major, minor)` in the kernel's internal encoding.
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Inverse of [`kernel_dev`].
pub fn split_kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// Splits raw (still escaped) super options on commas, then each on its
/// first `=`, then unescapes.
fn parse_options(raw: &str) -> Vec<(String, Option<String>)> {
    raw.split(',')
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (unescape(k), Some(unescape(v))),
            None => (unescape(o), None),
        })
        .collect()
}

/// Splits an (unescaped) `lowerdir=` value on `:`, where `\:` is a literal
/// colon and `\\` a literal backslash (overlay's own escaping).
fn split_colons(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => out.last_mut().expect("non-empty").push(n),
                None => out.last_mut().expect("non-empty").push('\\'),
            },
            ':' => out.push(String::new()),
            c => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

/// Parses mountinfo text, skipping lines that do not parse.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| Mount::parse_line(l).ok())
        .collect()
}

/// The overlay mounts in mountinfo text.
pub fn overlay_mounts(text: &str) -> Vec<Mount> {
    parse_mountinfo(text)
        .into_iter()
        .filter(Mount::is_overlay)
        .collect()
}

/// Reads and parses `/proc/<pid>/mountinfo` (`"self"` for ourselves).
pub fn read_mountinfo(pid: &str) -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(format!(
        "/proc/{pid}/mountinfo"
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: &str = "/var/lib/docker/overlay2/l/6Y5IM2XC7TSNIJZZFLJCS6I4I5";
    const DOCKER: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,discard,errors=remount-ro
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
1024 22 0:52 / /var/lib/docker/overlay2/3f9c2a1e7b6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3/merged rw,relatime shared:520 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/6Y5IM2XC7TSNIJZZFLJCS6I4I5:/var/lib/docker/overlay2/l/QQ7JLMBNRZ2DC3EEO3AANR5MDK:/var/lib/docker/overlay2/l/B2PAH5TD5FQJTWKD6FFZCJ2CNO:/var/lib/docker/overlay2/l/KZ6HVBRX3NHJ7TRHUTFKRXPJIX:/var/lib/docker/overlay2/l/7V4IWAQ6N7MFA54SFWOQTRF6GT,upperdir=/var/lib/docker/overlay2/3f9c2a1e7b6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3/diff,workdir=/var/lib/docker/overlay2/3f9c2a1e7b6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3/work,nouserxattr
1100 22 0:60 / /mnt/my\\040data/merged rw,relatime - overlay my\\040overlay rw,lowerdir=/mnt/my\\040data/lower\\054one:/mnt/my\\040data/lower2,upperdir=/mnt/my\\040data/up\\075per,workdir=/mnt/my\\040data/work
1200 22 0:61 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw,relatime shared:600 master:3 - overlay overlay rw,lowerdir+=/var/lib/containerd/snapshots/12/fs,lowerdir+=/var/lib/containerd/snapshots/11/fs,datadir+=/data/blobs,upperdir=/var/lib/containerd/snapshots/13/fs,workdir=/var/lib/containerd/snapshots/13/work,uuid=on
1300 22 0:62 / /composefs ro,relatime - overlay composefs ro,lowerdir=/a\\134\\072b:/c::/data1::/data2,metacopy=on
";

    #[test]
    fn parses_docker_overlay2_line() {
        let all = parse_mountinfo(DOCKER);
        assert_eq!(all.len(), 6);
        let ov = overlay_mounts(DOCKER);
        assert_eq!(ov.len(), 4);
        let m = &ov[0];
        assert_eq!((m.mount_id, m.parent_id), (1024, 22));
        assert_eq!(m.dev, (0, 52));
        assert_eq!(m.kernel_dev(), 52);
        assert_eq!(m.root, "/");
        assert!(m.mount_point.ends_with("/merged"));
        assert_eq!(m.optional, ["shared:520"]);
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.source, "overlay");
        assert_eq!(
            m.super_opt("upperdir"),
            Some("/var/lib/docker/overlay2/3f9c2a1e7b6d5c4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3928170605f4e3/diff")
        );
        assert!(m.super_opt("workdir").unwrap().ends_with("/work"));
        assert!(m.has_super_opt("nouserxattr"));
        assert_eq!(m.super_opt("nouserxattr"), None);
        assert!(m.has_super_opt("rw"));
        let lower = m.lowerdirs();
        assert_eq!(lower.len(), 5);
        assert_eq!(lower[0], L1);
        assert!(lower[4].ends_with("7V4IWAQ6N7MFA54SFWOQTRF6GT"));
        assert!(m.datadirs().is_empty());
    }

    #[test]
    fn escapes_in_paths_and_options() {
        let m = &overlay_mounts(DOCKER)[1];
        assert_eq!(m.mount_point, "/mnt/my data/merged");
        assert_eq!(m.source, "my overlay");
        assert!(m.optional.is_empty());
        // \054 is a comma inside a value, \075 an '=': not separators
        assert_eq!(
            m.lowerdirs(),
            ["/mnt/my data/lower,one", "/mnt/my data/lower2"]
        );
        assert_eq!(m.super_opt("upperdir"), Some("/mnt/my data/up=per"));
        assert_eq!(m.kernel_dev(), 60);
    }

    #[test]
    fn lowerdir_plus_and_datadir_plus() {
        let m = &overlay_mounts(DOCKER)[2];
        assert_eq!(m.optional, ["shared:600", "master:3"]);
        assert_eq!(
            m.lowerdirs(),
            [
                "/var/lib/containerd/snapshots/12/fs",
                "/var/lib/containerd/snapshots/11/fs"
            ]
        );
        assert_eq!(m.datadirs(), ["/data/blobs"]);
        assert_eq!(
            m.super_opt("upperdir"),
            Some("/var/lib/containerd/snapshots/13/fs")
        );
    }

    #[test]
    fn legacy_data_only_layers_and_escaped_colon() {
        let m = &overlay_mounts(DOCKER)[3];
        // "\134\072" is "\:" after octal unescape: a literal colon
        assert_eq!(m.lowerdirs(), ["/a:b", "/c"]);
        assert_eq!(m.datadirs(), ["/data1", "/data2"]);
        assert_eq!(m.super_opt("upperdir"), None);
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(0, 52), 52);
        assert_eq!(kernel_dev(254, 1), (254 << 20) | 1);
        assert_eq!(kernel_dev(8, 0x12345), 0x812345);
        assert_eq!(split_kernel_dev(kernel_dev(259, 70000)), (259, 70000));
        let m = Mount::parse_line("1 0 8:17 / /x rw - ext4 /dev/sdb1 rw").unwrap();
        assert_eq!(m.kernel_dev(), (8 << 20) | 17);
    }

    #[test]
    fn unescape_rules() {
        assert_eq!(unescape(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape(r"no\escape\08"), r"no\escape\08");
        assert_eq!(unescape(r"end\04"), r"end\04");
        assert_eq!(unescape(r"\777x"), r"\777x");
    }

    #[test]
    fn bad_lines_are_rejected() {
        for l in [
            "",
            "x 22 0:1 / / rw - ext4 a b",
            "1 22 01 / / rw - ext4 a b",
            "1 22 0:1 / / rw shared:1 ext4 a b",
            "1 22 0:1 / /",
        ] {
            assert!(Mount::parse_line(l).is_err(), "{l:?}");
        }
        // bad lines are skipped, good ones kept
        let text = format!("garbage\n{}", DOCKER);
        assert_eq!(parse_mountinfo(&text).len(), 6);
    }

    #[test]
    fn reads_own_mountinfo() {
        let mounts = read_mountinfo("self").unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == "/"));
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts.len(), text.lines().count());
    }
}
