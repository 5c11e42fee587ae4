//! Which capabilities cowtrace needs, and giving up the rest once its
//! probes are attached. README's "Privileges" section lists the same sets
//! (a host test compares them; a guest test reads the running agent's
//! `CapEff`).

use anyhow::{Context, Result};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// A capability and why cowtrace needs it.
pub struct Need {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

/// Needed to start (load and attach).
pub const TO_START: &[Need] = &[
    Need {
        name: "CAP_BPF",
        bit: 39,
        why: "load the eBPF programs and create their maps",
    },
    Need {
        name: "CAP_PERFMON",
        bit: 38,
        why: "load tracing programs and open the kprobe and tracepoint perf events they run from",
    },
    Need {
        name: "CAP_SYSLOG",
        bit: 34,
        why: "read kernel addresses in /proc/kallsyms, to tell a copy-up's trigger from its stack where the kernel cannot name its frames itself (before 5.13; without it every trigger there is `other`)",
    },
    Need {
        name: "CAP_DAC_OVERRIDE",
        bit: 1,
        why: "write the outputs into a directory that is not root's (see below)",
    },
];

/// Kept after attaching; everything else is given up.
pub const KEPT: &[Need] = &[
    Need {
        name: "CAP_BPF",
        bit: 39,
        why: "read the write histograms and drop counters from the kernel maps every interval, and stop the programs at the end: the bpf() system call refuses map access without it while kernel.unprivileged_bpf_disabled is set (the default on Debian and most distributions)",
    },
    Need {
        name: "CAP_DAC_OVERRIDE",
        bit: 1,
        why: "create the --json temporary files and write --events in a directory root does not own, such as your home directory with `sudo cowtrace --json cow.json`",
    },
    Need {
        name: "CAP_FOWNER",
        bit: 3,
        why: "replace --json in a sticky directory such as /tmp when another user has put something under its name (it is replaced, never followed)",
    },
];

/// The mask of a list of capabilities.
pub fn mask(list: &[Need]) -> u64 {
    list.iter().fold(0, |m, n| m | 1u64 << n.bit)
}

/// Gives up every capability but [`KEPT`] (those of them the process has),
/// in the effective, permitted and inheritable sets of the calling thread
/// (capabilities are per thread: the main thread calls it once attached,
/// attribution's worker when it starts). Returns the effective set.
pub fn drop_after_attach() -> Result<u64> {
    let have = rustix::thread::capabilities(None).context("reading capabilities")?;
    let keep = CapabilitySet::from_bits_retain(mask(KEPT));
    let sets = CapabilitySets {
        effective: have.effective & keep,
        permitted: have.permitted & keep,
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, sets).context("giving up capabilities")?;
    Ok(sets.effective.bits())
}

/// The README section, rendered from the lists above.
pub fn readme_lines(list: &[Need]) -> Vec<String> {
    list.iter()
        .map(|n| format!("- `{}`: {}.", n.name, n.why))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_lists_exactly_these_capabilities() {
        let readme = include_str!("../../README.md");
        for (marker, list) in [
            ("<!-- caps: start -->", TO_START),
            ("<!-- caps: kept -->", KEPT),
        ] {
            let section = readme
                .split(marker)
                .nth(1)
                .unwrap_or_else(|| panic!("README has no {marker}"));
            let lines: Vec<&str> = section
                .lines()
                .skip_while(|l| !l.starts_with("- `CAP_"))
                .take_while(|l| l.starts_with("- `CAP_"))
                .collect();
            let want = readme_lines(list);
            assert_eq!(lines, want, "README under {marker}");
        }
    }

    #[test]
    fn kept_is_a_subset_of_the_known_bits() {
        assert_eq!(mask(KEPT), (1 << 39) | (1 << 1) | (1 << 3));
    }
}
