//! What crosses the boundary of a `hull-vmm` process, written down once for both sides:
//!
//! - [`config`]: the VM configuration (one serde type the host writes and the VMM reads),
//!   with the defaults and limits a host needs before starting a VMM;
//! - [`client`]: the control API client (pause, resume, snapshot, drive slots, shares);
//! - [`snapshot`]: the state file's framing and the metadata a host reads to judge a
//!   template;
//! - [`host`]: how this host's KVM runs guest kernel code;
//! - [`handoff`]: open descriptors the host passes to a jailed VMM, named by token.
//!
//! The host library (`hull-host`) depends on this crate and never on `hull-vmm`.

pub mod client;
pub mod config;
pub mod handoff;
pub mod host;
pub mod snapshot;

pub use client::{ControlClient, ControlError};
pub use config::ConfigFile;

pub use hull_protocol::error_chain;
