//! The guest harness: run one command in a QEMU guest booted from a real
//! Debian kernel, small (busybox initramfs) or with a Docker engine.
//! Every probe test, the demo and the benchmark stand on it.
//!
//! One-way layering, each module using only those above it:
//!
//! * [`spec`]: what to run where ([`GuestSpec`], [`GuestKind`], [`Init`], [`Cgroups`], [`Copy`]).
//! * [`protocol`]: the marker lines between a guest's init and the host.
//! * [`init`]: the init scripts (`scripts/*.sh`) behind the protocol.
//! * [`rootfs`], [`disk`]: root filesystems and the Docker guest's disk.
//! * [`initramfs`]: the payload and each kind's initramfs.
//! * [`vm`]: one QEMU boot, streaming the serial ports.
//! * [`rundir`], [`accel`]: run directories; KVM or TCG.
//! * [`run`]: a spec end to end, to an exit status or a [`GuestFailure`].

pub mod accel;
pub mod disk;
pub mod init;
pub mod initramfs;
pub mod protocol;
pub mod rootfs;
pub mod run;
pub mod rundir;
pub mod spec;
pub mod vm;

pub use run::{run, run_with, GuestFailure};
pub use spec::{Cgroups, Copy, GuestKind, GuestSpec, Init};
pub use vm::{Clock, Sinks};
