//! cowtrace's developer tasks as a library.
//!
//! `cargo xtask` (see `main.rs`) is a thin command line over these modules;
//! other tasks (tests, demos) can call them directly:
//!
//! * [`setup`]: install and locate the tools everything else needs
//!   ([`host_packages`]: the apt packages as one consistent transaction).
//! * [`build`]: build the static agent and the guest test binaries.
//! * [`kernel`]: download and unpack Debian kernel packages per series.
//! * [`guest`]: the guest harness: boot a kernel in QEMU and run one
//!   command in it (its own layers are listed there).
//! * [`testrun`]: run the guest test executables in guests, or natively
//!   ([`native`]) on a kernel that can trace, as [`testopts`] asks;
//!   [`results`] counts them.
//! * [`demo`]: the Docker demo with a container named nginx.
//! * [`bench`]: cowtrace's cost to the workload, side by side with bpftrace.
//! * [`soak`]: cowtrace's memory and totals while 200 containers come and go.
//! * [`apt`], [`cpio`], [`util`]: the plumbing underneath.

pub mod apt;
pub mod bench;
pub mod build;
pub mod cpio;
pub mod demo;
pub mod guest;
pub mod host_packages;
pub mod image;
pub mod kernel;
pub mod native;
pub mod results;
pub mod setup;
pub mod soak;
pub mod testopts;
pub mod testrun;
pub mod util;
