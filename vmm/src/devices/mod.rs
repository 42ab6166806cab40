//! The device model: legacy PC devices on the port-I/O bus, virtio devices on MMIO.
pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
