//! cowtrace's userspace side as a library: the binary in `main.rs` wires
//! these together. Data flows one way: kernel records (`agent_ebpf` wire
//! types) -> `probes` (load and attach) -> `attribution` -> `report` outputs.

pub mod btf;
pub mod cgroup;
pub mod kallsyms;
pub mod mountinfo;
