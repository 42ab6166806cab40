//! hull-vmm: the virtual machine monitor that runs one hull sandbox.
//!
//! A hull microVM is a KVM guest with no firmware: the VMM loads an uncompressed `vmlinux`
//! (or a bzImage), writes the x86_64 boot structures itself (boot_params with its e820 map,
//! an MP table, identity page tables, a GDT), and starts the vCPUs directly in 64-bit mode.
//! The device model is deliberately small: a 16550A serial console, an i8042 whose only job
//! is to report the guest's reset, a boot-timer port that the guest's PID 1 writes when it is
//! ready, and virtio devices on the MMIO transport announced on the kernel command line.
//!
//! Threads: one per vCPU (each runs `KVM_RUN` and dispatches port and MMIO exits to the device
//! buses synchronously) and the main thread, which runs an `event-manager` epoll loop serving
//! virtio queue notifications (ioeventfd), the exit event and termination signals; with a
//! virtio-fs device, `hull-fs-start` and a `hull-fs` thread per session; with a control
//! socket, ttrpc's threads. A jailed VMM filters each thread's system calls by its kind
//! ([`seccomp`]).
//!
//! Trust: everything that comes from the guest (register writes, descriptor chains, the
//! contents of guest memory) is untrusted and is read only through `vm-memory`'s checked
//! accessors and `virtio-queue`'s chain walker. A bad request fails that request; it never
//! panics the VMM. The configuration file and command line are trusted to name files the
//! operator may use, but every value is validated before any VM is created.
#![cfg(target_arch = "x86_64")]

pub mod api;
pub mod arch;
pub mod builder;
pub mod cmdline;
pub mod config;
pub mod control;
pub mod devices;
pub mod exit;
pub mod guest_log;
pub mod jail;
pub mod quirks;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod vstate;

pub use builder::{build_microvm, restore_microvm, BuildError, Vmm, VmmControl, VmmMetrics};
pub use config::{ConfigError, VmConfig};
pub use exit::ExitReason;

pub use hull_vmm_api::error_chain;
