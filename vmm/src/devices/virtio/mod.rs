//! virtio devices (virtio 1.x) and the MMIO transport that presents them to the guest.
//!
//! A device sees only its queues and guest memory; the transport owns the register file,
//! feature negotiation, queue configuration and the interrupt. Queue notifications arrive
//! as ioeventfds on the event-loop thread (or, as a fallback, as MMIO writes on a vCPU
//! thread); either way the transport calls [`VirtioDevice::process_queue`] under its lock.
//! Devices with a host side (a tap, a socket) name the descriptors they want watched in
//! [`VirtioDevice::host_events`]; the transport registers them with the event loop and
//! hands their readiness to [`VirtioDevice::process_host_event`], so every device runs on
//! the one event-loop thread and never blocks it.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_driver;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// Feature bits shared by all device types.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits of the MMIO transport.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the status bits the guest reads and acknowledges, and the
/// irqfd that raises the GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            crate::guest_warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// The set of queues a call put used buffers into; the transport asks each of them whether
/// the driver wants an interrupt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsedQueues(u32);

impl UsedQueues {
    pub fn add(&mut self, index: usize) {
        if index < 32 {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: usize) -> bool {
        index < 32 && self.0 & (1 << index) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn merge(&mut self, other: UsedQueues) {
        self.0 |= other.0;
    }

    /// Just `index` when `used` is true; the common single-queue answer.
    pub fn one_if(index: usize, used: bool) -> Self {
        let mut u = UsedQueues::default();
        if used {
            u.add(index);
        }
        u
    }
}

/// One virtio device type: its identity, features, config space and queue processing.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 1 = net, 19 = vsock, 4 = entropy, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Reads from the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space; most devices ignore them.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once the driver set DRIVER_OK, with the features it accepted.
    fn activate(&mut self, acked_features: u64);
    /// Serves the available buffers of queue `index` (the driver notified it). `queues`
    /// holds every queue of the device, so a request on one may be answered on another.
    /// Returns the queues that got used buffers.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues;
    /// The driver reset the device: drop negotiated state.
    fn reset(&mut self) {}
    /// The transport's interrupt line, handed over once at construction, for a device
    /// that returns buffers from a thread of its own ([`fs`]).
    fn set_interrupt(&mut self, _interrupt: std::sync::Arc<Interrupt>) {}
    /// Why a snapshot taken now could not be restored (a device with host state that a
    /// snapshot cannot carry); `None` when it can.
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }
    /// The device's own state for a snapshot. Most devices have none between two events.
    fn save_device(&self) -> persist::DeviceState {
        persist::DeviceState::Stateless
    }
    /// Takes what [`Self::save_device`] returned, in a restored VM after the device was
    /// re-activated. An error stops the restore.
    fn restore_device(
        &mut self,
        state: &persist::DeviceState,
    ) -> Result<(), persist::RestoreError> {
        persist::restore_stateless(state)
    }
    /// Host descriptors the event loop should watch for this device, with the events
    /// wanted. They stay registered for the device's life; a device that must stop
    /// watching one temporarily uses edge triggering or a nested epoll of its own.
    fn host_events(&self) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    /// One of [`Self::host_events`] is ready. `queues` is empty until the driver has
    /// activated the device, so a device must not assume any queue exists.
    fn process_host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        UsedQueues::default()
    }
}

/// The next available chain; when the ring is empty, notifications are re-armed (so the
/// driver tells us about its next buffer) and the ring is checked once more.
pub fn next_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    if let Some(c) = queue.pop_descriptor_chain(mem) {
        return Some(c);
    }
    match queue.enable_notification(mem) {
        Ok(true) => queue.pop_descriptor_chain(mem),
        Ok(false) => None,
        Err(e) => {
            crate::guest_warn!("virtio: queue unusable: {e}");
            None
        }
    }
}

/// Queue `index` if it exists and the driver made it ready (a driver may use only some).
pub fn ready(queues: &mut [Queue], index: usize) -> Option<&mut Queue> {
    queues.get_mut(index).filter(|q| q.ready())
}

/// Copies `src` (a little-endian register image) into `data` at `offset`, zero-filling
/// anything past its end: the shape of every config-space read.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - offset);
    data[..n].copy_from_slice(&src[offset..offset + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let src = [1u8, 2, 3, 4];
        let mut d = [0xaa; 4];
        read_config_bytes(&src, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&src, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&src, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_by_trigger_and_cleared_by_ack() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.trigger(INT_VRING);
        assert_eq!(i.status(), INT_VRING);
        assert_eq!(i.irqfd().read().unwrap(), 1);
        i.trigger(INT_CONFIG);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
    }
}
