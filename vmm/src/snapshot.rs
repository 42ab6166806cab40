//! The VMM's snapshot state: the shared metadata (`hull_vmm_api::snapshot`, whose framing
//! and checks every state file goes through) followed by the machine: VM and vCPU state,
//! the serial port, and every virtio device keyed by its stable id with the MMIO slot the
//! guest found it in.
//!
//! The memory file is guest RAM in the layout of the booted VM's memfd (see
//! `vstate::memory`), with holes for zero pages.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use hull_vmm_api::snapshot::{
    create_private, DeviceId, SnapshotMeta, VmShape, FORMAT_VERSION, MEMORY_FILE, STATE_FILE,
};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    File(#[from] hull_vmm_api::snapshot::SnapshotError),
    #[error("pause the VM before taking a snapshot")]
    NotPaused,
    #[error("vCPU {0} stopped before its state was saved")]
    VcpuGone(usize),
    #[error("vCPU {0} is still busy with another request; try again")]
    Busy(usize),
    #[error(transparent)]
    VcpuState(#[from] crate::vstate::vcpu_state::VcpuStateError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    #[error("virtio device {device} cannot be snapshotted now: {reason}")]
    Device { device: DeviceId, reason: String },
}

/// One virtio device in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub id: DeviceId,
    /// Its MMIO window and interrupt line (the guest's driver is bound to them): a
    /// restored device takes the same slot whatever order devices are created in.
    pub mmio_slot: u32,
    pub transport: TransportState,
}

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Who wrote it and the VM's shape; first, so a host reads it alone.
    pub meta: SnapshotMeta,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub devices: Vec<DeviceSnapshot>,
}

/// Writes `state` to `path` (through a temporary file renamed into place).
pub fn write_state(path: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    Ok(hull_vmm_api::snapshot::write_state(path, state)?)
}

/// Reads and checks a state file: the framing, then that the parts a restore indexes
/// agree with the shape.
pub fn read_state(path: &Path) -> Result<SnapshotState, SnapshotError> {
    let state: SnapshotState = hull_vmm_api::snapshot::read_state(path)?;
    check_consistent(path, &state)?;
    Ok(state)
}

/// [`read_state`] on bytes already read; `path` names them in errors.
pub fn decode_state(path: &Path, bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let state: SnapshotState = hull_vmm_api::snapshot::decode_state(path, bytes)?;
    check_consistent(path, &state)?;
    Ok(state)
}

/// The CRC says the bytes are what was written, not that a writer was sane.
fn check_consistent(path: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let corrupt = |why: String| {
        SnapshotError::File(hull_vmm_api::snapshot::SnapshotError::Corrupt {
            path: path.to_path_buf(),
            why,
        })
    };
    let shape = &state.meta.shape;
    if state.vcpus.len() != usize::from(shape.vcpus) {
        return Err(corrupt(format!(
            "{} vCPU states for a VM of {} vCPUs",
            state.vcpus.len(),
            shape.vcpus
        )));
    }
    let ids: HashSet<&DeviceId> = state.devices.iter().map(|d| &d.id).collect();
    let shaped: HashSet<&DeviceId> = shape.devices.iter().collect();
    if ids != shaped || ids.len() != state.devices.len() {
        return Err(corrupt(
            "the device states do not match the VM shape's devices".into(),
        ));
    }
    let mut slots = HashSet::new();
    for d in &state.devices {
        if d.mmio_slot >= crate::config::MAX_VIRTIO_DEVICES || !slots.insert(d.mmio_slot) {
            return Err(corrupt(format!(
                "device {} is in MMIO slot {}, out of range or taken",
                d.id, d.mmio_slot
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> SnapshotState {
        SnapshotState {
            meta: SnapshotMeta {
                hull_version: "0.1.0".into(),
                shape: VmShape {
                    vcpus: 0,
                    memory_mib: 256,
                    devices: vec![],
                },
                emulated_host: true,
            },
            vm: VmState {
                clock: Default::default(),
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
            },
            vcpus: vec![],
            serial: SerialSnapshot::default(),
            devices: vec![],
        }
    }

    #[test]
    fn a_state_file_round_trips_and_the_host_reads_its_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        write_state(&path, &sample()).unwrap();
        let s = read_state(&path).unwrap();
        assert_eq!(s.meta, sample().meta);
        assert_eq!(
            hull_vmm_api::snapshot::read_meta(&path).unwrap(),
            sample().meta
        );
    }

    #[test]
    fn parts_that_disagree_with_the_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut s = sample();
        s.meta.shape.vcpus = 2;
        write_state(&path, &s).unwrap();
        let e = read_state(&path).unwrap_err().to_string();
        assert!(e.contains("0 vCPU states for a VM of 2 vCPUs"), "{e}");

        let mut s = sample();
        s.meta.shape.devices = vec![DeviceId::new("rng", 4)];
        write_state(&path, &s).unwrap();
        let e = read_state(&path).unwrap_err().to_string();
        assert!(e.contains("do not match the VM shape"), "{e}");
    }
}
