//! cowtrace's userspace side as a library; the binary in `main.rs` wires
//! it together. Data flows one way:
//!
//! kernel records (`agent_ebpf` wire types)
//!   -> [`probes`] (load and attach, layout from [`btf`])
//!   -> [`event`] (decoded) -> [`attribution`] (container, via [`cgroup`]
//!   and the [`runtime`] clients, on a worker thread of its own)
//!   -> [`stats`] (bounded: [`hist`], [`topfiles`]) -> [`live`] / [`report`] (outputs).
//!
//! Offline, [`offline`] (`cowtrace report`) reads saved reports back
//! ([`report::read`]), pairs two of them ([`compare`]) and renders them
//! ([`render`]: terminal text, HTML with plots).
//!
//! [`kernel_maps`] reads back what the kernel's maps refused and how full
//! they are. [`kallsyms`] turns a copy-up's kernel stack into its trigger;
//! [`mountinfo`] maps overlay devices to mounts; [`doctor`] checks the
//! kernel before anything is attached.

pub mod agent_cost;
pub mod attribution;
pub mod bpf_log;
pub mod btf;
pub mod bundle;
pub mod cgroup;
pub mod compare;
pub mod doctor;
pub mod event;
pub mod held;
pub mod hist;
pub mod kallsyms;
pub mod kernel_maps;
pub mod kernel_names;
pub mod kernel_side;
pub mod kretprobe;
pub mod kube;
pub mod layers;
pub mod live;
pub mod loader;
pub mod metrics;
pub mod metrics_server;
pub mod mountinfo;
pub mod offline;
pub mod output;
pub mod overlay_opts;
pub mod podman_store;
pub mod points;
pub mod privileges;
pub mod probes;
pub mod render;
pub mod report;
pub mod rootless;
pub mod runtime;
pub mod shutdown;
pub mod stats;
pub mod topfiles;
