//! Names for the frames of a copy-up's stack, from which its trigger is
//! told (see [`crate::kallsyms`]).
//!
//! Where the kernel can say (5.13+, `bpf_snprintf`'s `%ps`), it names the
//! frames itself: `name_kernel_addresses` is a raw-tracepoint program that
//! is never attached; the agent puts a stack's addresses in a map and runs
//! the program once with `BPF_PROG_TEST_RUN`, then keeps the names. Only
//! the few dozen addresses copy-ups really return through are ever named.
//! The alternative, reading /proc/kallsyms, makes the kernel format its
//! 100k+ lines and the agent parse them: the biggest single cost of a
//! short run with copy-ups (perf in the 6.1 guest: about 80% of the
//! agent's CPU over 3,000 copy-ups). Where the kernel refuses the program
//! (5.10), or running it fails, kallsyms is read as before.

use crate::kallsyms::{base_name, classify_frames, frame_addresses, Trigger};
use crate::probes::Kallsyms;
use agent_ebpf::{SymbolAddrs, SymbolNames, STACK_DEPTH, SYMBOL_LEN};
use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, MapData};
use aya::programs::RawTracePoint;
use aya::Ebpf;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The program's name in the eBPF object.
pub const PROGRAM: &str = "name_kernel_addresses";

/// Names kept at most; then they are forgotten and asked again. Kernel
/// code has a bounded number of return addresses into it, but a run must
/// not grow for ever whatever it sees.
const KEPT_NAMES: usize = 4096;

/// Verifies the naming program (while the capabilities to load are held);
/// the kernel's refusal otherwise (before 5.13 it has no `bpf_snprintf`).
pub fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or("not in the eBPF object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| format!("{e}"))
}

/// The kernel naming addresses: the loaded program, its two maps, and the
/// names it gave.
pub struct KernelNames {
    program: OwnedFd,
    addrs: Array<MapData, SymbolAddrs>,
    names: Array<MapData, SymbolNames>,
    known: HashMap<u64, String>,
}

impl KernelNames {
    /// Takes the program (loaded by [`load`]) and its maps from `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let p: &RawTracePoint = ebpf
            .program(PROGRAM)
            .context("naming program")?
            .try_into()?;
        let program: OwnedFd = p.fd()?.as_fd().try_clone_to_owned()?;
        let mut map = |name: &str| ebpf.take_map(name).with_context(|| format!("{name} map"));
        let addrs = Array::try_from(map("SYMBOL_ADDRS")?)?;
        let names = Array::try_from(map("SYMBOL_NAMES")?)?;
        Ok(Self {
            program,
            addrs,
            names,
            known: HashMap::new(),
        })
    }

    /// The base names of the functions `addrs` are in ("" where the kernel
    /// knows none), asking the kernel for those not named before.
    pub fn names(&mut self, addrs: &[u64]) -> Result<Vec<&str>> {
        if self.known.len() + STACK_DEPTH > KEPT_NAMES {
            self.known.clear();
        }
        let mut ask = SymbolAddrs {
            addrs: [0; STACK_DEPTH],
        };
        let mut asked = 0;
        for &a in addrs {
            if !self.known.contains_key(&a) && !ask.addrs[..asked].contains(&a) {
                if asked == STACK_DEPTH {
                    break;
                }
                ask.addrs[asked] = a;
                asked += 1;
            }
        }
        if asked > 0 {
            self.addrs.set(0, ask, 0).context("SYMBOL_ADDRS")?;
            run(self.program.as_fd())?;
            let names = self.names.get(&0, 0).context("SYMBOL_NAMES")?;
            for (a, n) in ask.addrs[..asked].iter().zip(&names.names) {
                self.known.insert(*a, symbol_name(n).to_string());
            }
        }
        Ok(addrs
            .iter()
            .map(|a| self.known.get(a).map_or("", String::as_str))
            .collect())
    }
}

/// The function's base name in what `%ps` wrote: `name`, or `name
/// [module]`; "" for an address the kernel has no symbol for (written as
/// `0x…`). A name longer than the buffer comes cut, and so matches no
/// overlay function.
fn symbol_name(written: &[u8; SYMBOL_LEN]) -> &str {
    let Some(end) = written.iter().position(|&b| b == 0) else {
        return "";
    };
    let Ok(s) = std::str::from_utf8(&written[..end]) else {
        return "";
    };
    let name = s.split(' ').next().unwrap_or("");
    if name.starts_with("0x") {
        return "";
    }
    base_name(name)
}

/// Runs the program once (`BPF_PROG_TEST_RUN`, no context).
fn run(program: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    // SAFETY: all-zero is a valid bpf_attr (the kernel requires unused
    // fields to be zero).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.test.prog_fd = program.as_raw_fd() as u32;
    // SAFETY: attr outlives the call; the kernel reads it and writes the
    // run's results (retval, duration) back into it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_TEST_RUN as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(anyhow!(
            "running {PROGRAM}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Who names a copy-up stack's frames (the JSON's `trigger_names`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedBy {
    /// `name_kernel_addresses` (5.13+).
    Kernel,
    /// /proc/kallsyms.
    Kallsyms,
}

/// Where a copy-up's frames get their names: the kernel where it can,
/// else kallsyms (opened at the start, read at the first copy-up).
pub struct FrameNames {
    kernel: Option<KernelNames>,
    kallsyms: Kallsyms,
    /// Why the kernel stopped naming frames, once it did.
    pub kernel_failed: Option<String>,
}

impl FrameNames {
    pub fn new(kernel: Option<KernelNames>, kallsyms: Kallsyms) -> Self {
        Self {
            kernel,
            kallsyms,
            kernel_failed: None,
        }
    }

    /// Who names the frames now.
    pub fn source(&self) -> NamedBy {
        if self.kernel.is_some() {
            NamedBy::Kernel
        } else {
            NamedBy::Kallsyms
        }
    }

    /// A copy-up is coming: kallsyms starts being read on a thread of its
    /// own if it is what names the frames.
    pub fn prepare(&self) {
        if self.kernel.is_none() {
            self.kallsyms.read_beside();
        }
    }

    /// The trigger a copy-up's stack shows; None if no names can be had
    /// (kallsyms unreadable).
    pub fn trigger(&mut self, stack: &[u64]) -> Option<Trigger> {
        if let Some(k) = &mut self.kernel {
            let addrs: Vec<u64> = frame_addresses(stack).collect();
            match k.names(&addrs) {
                Ok(names) => return Some(classify_frames(&names)),
                Err(e) => {
                    self.kernel_failed = Some(format!("{e:#}"));
                    self.kernel = None;
                }
            }
        }
        Some(self.kallsyms.get()?.table.classify_copy_up(stack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(s: &str) -> [u8; SYMBOL_LEN] {
        let mut b = [0; SYMBOL_LEN];
        b[..s.len()].copy_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn the_json_names_who_named_the_frames() {
        assert_eq!(serde_json::to_value(NamedBy::Kernel).unwrap(), "kernel");
        assert_eq!(serde_json::to_value(NamedBy::Kallsyms).unwrap(), "kallsyms");
    }

    #[test]
    fn percent_ps_output_gives_the_base_name() {
        assert_eq!(symbol_name(&written("do_truncate")), "do_truncate");
        assert_eq!(symbol_name(&written("ovl_open [overlay]")), "ovl_open");
        assert_eq!(
            symbol_name(&written("ovl_copy_up_one.isra.0 [overlay]")),
            "ovl_copy_up_one"
        );
        assert_eq!(symbol_name(&written("0xffffffffc0a01000")), "");
        assert_eq!(symbol_name(&written("")), "");
        assert_eq!(symbol_name(&[b'x'; SYMBOL_LEN]), "");
    }
}
