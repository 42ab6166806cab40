//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A bus is assembled before the vCPUs start and is immutable afterwards, so vCPU threads
//! share it without a lock; each device has its own mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes in an address window.
pub trait BusDevice: Send {
    /// `offset` is relative to the start of the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device window [{base:#x}, +{len:#x}) overlaps an existing one")]
    Overlap { base: u64, len: u64 },
    #[error("device window at {base:#x} has zero length")]
    Empty { base: u64 },
}

struct Window {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    windows: BTreeMap<u64, Window>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.windows.iter().map(|(b, w)| (*b, w.len)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((b, w)) = self.windows.range(..end).next_back() {
            if b + w.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.windows.insert(base, Window { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Window)> {
        let (base, w) = self.windows.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= w.len).then_some((offset, w))
    }

    /// Dispatches a read; `false` if no device covers `[addr, addr + data.len())`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, w)) => {
                lock(&w.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if no device covers `[addr, addr + data.len())`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, w)) => {
                lock(&w.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Devices keep their state consistent between statements, so a lock a panicking thread
/// held is still usable.
pub use hull_protocol::lock;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_to_the_covering_window_with_relative_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn misses_outside_and_across_window_ends() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        assert!(!bus.read(0xfff, &mut [0u8; 1]));
        assert!(!bus.write(0x1010, &[0]));
        assert!(!bus.read(0x100e, &mut [0u8; 4]), "straddles the end");
        assert!(bus.read(0x100c, &mut [0u8; 4]));
    }

    #[test]
    fn rejects_overlapping_and_empty_windows() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(bus.insert(d(), 0x108, 0x10).is_err());
        assert!(bus.insert(d(), 0xf8, 0x9).is_err());
        assert!(bus.insert(d(), 0x110, 0).is_err());
        bus.insert(d(), 0x110, 0x10).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
    }
}
