//! virtio devices (virtio 1.x) and the MMIO transport that presents them to the guest.
//!
//! A device sees only its queues and guest memory; the transport owns the register file,
//! feature negotiation, queue configuration and the interrupt. Queue notifications arrive
//! as ioeventfds on the event-loop thread (or, as a fallback, as MMIO writes on a vCPU
//! thread); either way the transport calls [`VirtioDevice::process_queue`] under its lock.

pub mod block;
pub mod mmio;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

/// Feature bits shared by all device types.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

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
            log::error!("virtio: cannot raise interrupt: {e}");
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
    /// Serves the available buffers of queue `index`. Returns whether any buffer was
    /// used (the transport then decides whether the guest wants an interrupt).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
    /// The driver reset the device: drop negotiated state.
    fn reset(&mut self) {}
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
