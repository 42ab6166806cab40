//! hull's host library: everything the two front doors (`containerd-shim-hull-v2` and
//! the `hull` CLI) share. It starts one `hull-vmm` process per sandbox (restored from a
//! template when one exists, cold-booted otherwise), reaches the guest agent over hybrid
//! vsock, and runs containers and processes in the sandbox. Neither front door talks to
//! the agent or the VMM itself.
//!
//! - [`config`]: the host configuration (`/etc/hull/config.toml`);
//! - [`agent`]: the guest agent's calls, typed, each bounded by a timeout;
//! - [`guest`]: a running sandbox's processes: create and exec with their stdio attached;
//! - [`container`]: a container's storage in the VM (root and volume disks, shares);
//! - [`launcher`]: how a `hull-vmm` process is started: namespaces, parent-death signal,
//!   exactly the descriptors it is given;
//! - [`vmm_process`]: spawning, watching and reaping a `hull-vmm`;
//! - [`template`]: the cache of snapshots of ready sandboxes, and how it refuses stale or
//!   corrupt ones;
//! - [`sandbox`]: start (template or cold boot), post-restore consistency (clock, RNG),
//!   snapshot, shutdown;
//! - [`pod`]: a running sandbox VM as its containers use it: drive slots, shared
//!   directories, the agent's event stream;
//! - [`spec`], [`rootfs`]: an OCI spec and root filesystem made for the guest;
//! - [`stdio`]: a process's stdio between host endpoints and the agent's streams;
//! - [`private`]: files and directories only their owner reads.

pub mod agent;
pub mod config;
pub mod container;
pub mod guest;
pub mod launcher;
pub mod pod;
pub mod podnet;
pub mod portforward;
pub mod private;
pub mod rootfs;
pub mod sandbox;
pub mod spec;
pub mod stdio;
pub mod template;
pub mod vmm_process;

use std::path::PathBuf;

pub use sandbox::{Sandbox, SandboxError, StartPath, StartTimings};
pub use template::{Template, TemplateCache, TemplateError};

/// What a sandbox VM is made of: the guest kernel and image, and its shape. Everything a
/// template depends on besides the hull release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub image: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Empty disks attached while the sandbox runs: one per container root filesystem in
    /// use at a time (`hull-vmm --drive-slots`).
    pub drive_slots: u8,
    /// A virtio-fs device (tag [`SHARED_FS_TAG`]) for read-write volumes: the guest mounts
    /// it on demand, never in a template (`hull-vmm --shared-fs`).
    pub shared_fs: bool,
    /// Keep the guest's console in the run directory (`debug_console`); without it the
    /// VMM discards it, so a chatty guest costs the host's tmpfs nothing.
    pub console_log: bool,
    /// virtio-net devices (`net0`, `net1`, ...): one per interface CNI gave the pod. Each
    /// is backed by a tap the host hands the VMM as a descriptor ([`vmm_process::Nic`]).
    pub nics: u8,
    /// Confine each VMM (`[jail]` in the host config); `None` only for debugging.
    pub jail: Option<launcher::JailPolicy>,
}

/// The virtio-fs tag of a sandbox VM's shared file system.
pub const SHARED_FS_TAG: &str = "hull";

/// Drive slots of a sandbox unless the configuration says otherwise.
pub const DEFAULT_DRIVE_SLOTS: u8 = 8;

impl Default for VmSpec {
    /// The kernel and image `scripts/build.sh` makes, one vCPU, 128 MiB, eight drive slots,
    /// the shared file system.
    fn default() -> Self {
        VmSpec {
            kernel: PathBuf::from(hull_vmm_api::config::DEFAULT_KERNEL),
            image: PathBuf::from(hull_vmm_api::config::DEFAULT_ROOT_IMAGE),
            vcpus: hull_vmm_api::config::DEFAULT_VCPUS,
            memory_mib: hull_vmm_api::config::DEFAULT_MEMORY_MIB,
            drive_slots: DEFAULT_DRIVE_SLOTS,
            shared_fs: true,
            console_log: false,
            nics: 0,
            jail: Some(launcher::JailPolicy::default()),
        }
    }
}

/// A file-system call that failed: what was done, to which path, and the OS's reason.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", .path.display())]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// The error for `op` on `path`, to give `map_err`.
    pub fn at(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| PathError { op, path, source }
    }
}

pub use hull_protocol::lock;
