//! The transport's snapshot state: registers, negotiated features and every queue, with
//! the device's own typed state, saved and checked on restore.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{MmioError, MmioTransport};
use crate::devices::virtio::status;

/// One virtqueue as the transport and the device left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub event_idx: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// The transport's register state and its queues: everything a device's driver negotiated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub interrupt_status: u32,
    pub bad_size: Vec<bool>,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state ([`VirtioDevice::save_device`]).
    pub device: crate::devices::virtio::persist::DeviceState,
}

impl MmioTransport {
    /// The transport's state for a snapshot (taken between two events: the device has no
    /// request half-done).
    pub fn save_state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            bad_size: self.bad_size.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueSnapshot {
                        max_size: s.max_size,
                        size: s.size,
                        ready: s.ready,
                        event_idx: s.event_idx_enabled,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                    }
                })
                .collect(),
            device: self.device.save_device(),
        }
    }

    /// Takes a snapshot's transport state into a transport just built for the same device
    /// type, and re-activates the device with the features its driver had accepted.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), MmioError> {
        let device = self.device.device_type();
        if state.device_type != device {
            return Err(MmioError::DeviceType {
                found: state.device_type,
                want: device,
            });
        }
        if state.queues.len() != self.queues.len() || state.bad_size.len() != self.queues.len() {
            return Err(MmioError::QueueCount {
                device,
                found: state.queues.len(),
                want: self.queues.len(),
            });
        }
        let ready = status::FEATURES_OK | status::DRIVER_OK;
        if state.activated && (state.status & ready != ready || state.status & status::FAILED != 0)
        {
            return Err(MmioError::ActiveWithoutDriver {
                device,
                status: state.status,
            });
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, q) in state.queues.iter().enumerate() {
            let qs = QueueState {
                max_size: self.queues[index].max_size(),
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            queues.push(Queue::try_from(qs).map_err(|source| MmioError::QueueState {
                device,
                index,
                source,
            })?);
        }
        self.queues = queues;
        self.bad_size = state.bad_size.clone();
        self.status = state.status;
        self.acked_features = state.acked_features;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.interrupt.ack(u32::MAX);
        self.activated = state.activated;
        if self.activated {
            self.device.activate(self.acked_features);
        }
        self.device
            .restore_device(&state.device)
            .map_err(|source| MmioError::DeviceState { device, source })?;
        if state.interrupt_status != 0 {
            // The irqfd is a pulse: an interrupt raised just before the snapshot may not be
            // in the saved irqchip. Raise it again; a spurious one is harmless (the
            // driver reads the status).
            self.interrupt.trigger(state.interrupt_status);
        }
        if self.activated {
            // A notification the guest wrote just before the pause may still have been in
            // its ioeventfd: serve every ready queue once.
            self.serve_ready_queues();
        }
        Ok(())
    }
}
