//! Builds the eBPF programs (`agent-ebpf`, BPF target, nightly toolchain)
//! so that `cowtrace` embeds them and ships as one self-contained binary.
fn main() -> anyhow::Result<()> {
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (or build with `cargo xtask build`)"
        );
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    })
}
