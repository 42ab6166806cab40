//! A virtio device's own state in a snapshot, typed by device kind: what a device holds
//! between two events that its constructor's arguments (the configuration) do not give
//! back. The transport's state ([`super::mmio::TransportState`]) carries it, and the
//! snapshot keys both by the device's stable id, so a restore never depends on the order
//! in which devices are created.

use serde::{Deserialize, Serialize};

use super::block::{Attachment, BlockError};
use super::vsock::VsockState;

/// One device's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeviceState {
    /// Nothing between two events: entropy, net, a fixed drive, virtio-fs.
    Stateless,
    /// A drive slot and what it held (reopened on restore: the guest may have it mounted).
    DriveSlot(Option<Attachment>),
    /// The vsock device's connections (idle ones are kept for ADOPT).
    Vsock(VsockState),
}

impl DeviceState {
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Stateless => "stateless",
            DeviceState::DriveSlot(_) => "drive slot",
            DeviceState::Vsock(_) => "vsock",
        }
    }
}

/// Why a device could not take its saved state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot holds {found} state for a device that keeps {want} state")]
    Kind {
        found: &'static str,
        want: &'static str,
    },
    #[error("reattach {}", .path.display())]
    Reattach {
        path: std::path::PathBuf,
        #[source]
        source: BlockError,
    },
}

/// The answer of a device with no state of its own: only [`DeviceState::Stateless`] fits.
pub fn restore_stateless(state: &DeviceState) -> Result<(), RestoreError> {
    match state {
        DeviceState::Stateless => Ok(()),
        other => Err(RestoreError::Kind {
            found: other.kind(),
            want: "no",
        }),
    }
}
