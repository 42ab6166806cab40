//! hull's host side: the sandbox library that `containerd-shim-hull-v2` and the `hull` CLI
//! share. It starts one `hull-vmm` process per sandbox (restored from a template when one
//! exists, cold-booted otherwise), reaches the guest agent over hybrid vsock, and keeps the
//! template cache.
//!
//! - [`vmm_process`]: spawning, watching and reaping a `hull-vmm`;
//! - [`template`]: the cache of snapshots of ready sandboxes, and how it refuses stale or
//!   corrupt ones;
//! - [`sandbox`]: start (template or cold boot), post-restore consistency (clock, RNG),
//!   snapshot, shutdown.

pub mod sandbox;
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
}

impl Default for VmSpec {
    /// The kernel and image `scripts/build.sh` makes, one vCPU, 128 MiB.
    fn default() -> Self {
        VmSpec {
            kernel: PathBuf::from(hull_vmm::config::DEFAULT_KERNEL),
            image: PathBuf::from(hull_vmm::config::DEFAULT_ROOT_IMAGE),
            vcpus: 1,
            memory_mib: 128,
        }
    }
}
