//! aya's side of loading, prepared on a thread of its own while the kernel
//! checks run, so that its cost is not on the way to `tracing`.
//!
//! aya 0.14's `EbpfLoader::new()` parses vmlinux BTF whether or not it is
//! used (fixed upstream after 0.14, aya-rs/aya 49a5aa8c); cowtrace's object
//! has no CO-RE relocations (every offset comes from `Config`), so the
//! loader is given no BTF and that parse is dropped at once. The one parse
//! aya needs is for `FEntry::load`/`FExit::load` (the function's BTF id):
//! it is made after the loader's, on the same thread, so the two are never
//! in memory together, and only when fentry may be used.

use aya::EbpfLoader;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The loader and aya's vmlinux BTF, as they become ready.
pub struct Prepared {
    loader: mpsc::Receiver<(EbpfLoader<'static>, Duration)>,
    btf: mpsc::Receiver<(Option<aya::Btf>, Duration)>,
}

impl Prepared {
    /// Starts preparing; `fentry_possible` false (`--kprobes-only`) skips
    /// aya's BTF parse.
    pub fn start(fentry_possible: bool) -> Self {
        let (ltx, loader) = mpsc::channel();
        let (btx, btf) = mpsc::channel();
        // Without a thread the senders are dropped, and `loader` and
        // `btf` make theirs when asked.
        let _ = std::thread::Builder::new()
            .name("cowtrace-aya".into())
            .spawn(move || {
                let t = Instant::now();
                let _ = ltx.send((new_loader(), t.elapsed()));
                let t = Instant::now();
                let b = fentry_possible.then(vmlinux_btf).flatten();
                let _ = btx.send((b, t.elapsed()));
            });
        Self { loader, btf }
    }

    /// The loader (no target BTF), and how long making it took.
    pub fn loader(&self) -> (EbpfLoader<'static>, Duration) {
        self.loader.recv().unwrap_or_else(|_| {
            let t = Instant::now();
            (new_loader(), t.elapsed())
        })
    }

    /// aya's vmlinux BTF (None: `--kprobes-only`, or unreadable), and how
    /// long parsing it took.
    pub fn btf(&self) -> (Option<aya::Btf>, Duration) {
        self.btf.recv().unwrap_or_else(|_| {
            let t = Instant::now();
            (vmlinux_btf(), t.elapsed())
        })
    }
}

/// A loader without target BTF (the eager parse dropped at once).
fn new_loader() -> EbpfLoader<'static> {
    let mut l = EbpfLoader::new();
    l.btf(None);
    l
}

fn vmlinux_btf() -> Option<aya::Btf> {
    aya::Btf::from_sys_fs().ok()
}
