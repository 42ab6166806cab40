//! A virtio driver for unit tests: descriptor tables and rings written into guest memory
//! by hand, the device driven through the real MMIO transport. Tests build exactly the
//! chains they want, hostile ones included.

use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, tests::bring_up_sized, MmioTransport};
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::bus::BusDevice;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
/// Queue size the driver asks for (less where the device's maximum is lower).
pub const QUEUE_SIZE: u16 = 64;
/// Guest RAM of the test VM.
pub const MEM_SIZE: u64 = 8 << 20;
const QUEUE_BASE: u64 = 0x10000;
const DATA_BASE: u64 = 0x40000;

struct TestQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

pub struct TestDriver {
    pub mem: GuestMemoryMmap,
    pub transport: MmioTransport,
    queues: Vec<TestQueue>,
    next_data: u64,
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl TestDriver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_features(device, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX)
    }

    pub fn with_features(device: Box<dyn VirtioDevice>, features: u64) -> Self {
        let sizes: Vec<u16> = device
            .queue_max_sizes()
            .iter()
            .map(|m| QUEUE_SIZE.min(*m))
            .collect();
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut transport = MmioTransport::new(device, mem.clone(), irq).unwrap();
        let mut queues = Vec::new();
        let mut layout = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let base = QUEUE_BASE + i as u64 * 0x1000;
            layout.push((base, base + 0x400, base + 0x800, size));
            queues.push(TestQueue {
                size,
                desc: base,
                avail: base + 0x400,
                used: base + 0x800,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        bring_up_sized(&mut transport, features, &layout);
        assert!(transport.is_activated(), "device did not activate");
        TestDriver {
            mem,
            transport,
            queues,
            next_data: DATA_BASE,
        }
    }

    /// The `avail_event` the device wrote for queue `q` (after the used ring, EVENT_IDX).
    pub fn avail_event(&self, q: usize) -> u16 {
        let tq = &self.queues[q];
        self.mem
            .read_obj::<u16>(GuestAddress(tq.used + 4 + 8 * u64::from(tq.size)))
            .unwrap()
    }

    /// A fresh buffer of `len` bytes in guest RAM (never reused).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_data;
        self.next_data = (addr + u64::from(len) + 15) & !15;
        assert!(self.next_data <= MEM_SIZE, "test ran out of guest memory");
        addr
    }

    /// Writes descriptor `index` of queue `q` as given.
    pub fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(self.queues[q].desc + u64::from(index) * 16);
        self.mem.write_obj(addr, base).unwrap();
        self.mem.write_obj(len, base.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, base.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, base.unchecked_add(14)).unwrap();
    }

    /// Builds a chain of `bufs` in fresh descriptors and makes it available; returns its
    /// head. Does not notify.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let first = self.queues[q].next_desc;
        let size = self.queues[q].size;
        for (i, b) in bufs.iter().enumerate() {
            let index = (first + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(q, index, b.addr, b.len, flags, (index + 1) % size);
        }
        self.queues[q].next_desc = (first + bufs.len() as u16) % size;
        self.publish(q, first);
        first
    }

    /// Puts descriptor `head` in the avail ring and bumps the avail index.
    pub fn publish(&mut self, q: usize, head: u16) {
        let tq = &mut self.queues[q];
        let slot = tq.avail + 4 + 2 * u64::from(tq.avail_idx % tq.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        tq.avail_idx = tq.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(tq.avail_idx, GuestAddress(tq.avail + 2))
            .unwrap();
    }

    /// Sets the avail index to any value, as a hostile driver would.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.queues[q].avail + 2))
            .unwrap();
    }

    pub fn notify(&mut self, q: usize) {
        self.transport
            .write(reg::QUEUE_NOTIFY, &(q as u32).to_le_bytes());
    }

    /// Hands a host descriptor's readiness to the device, as the event loop would.
    pub fn host_event(&mut self, fd: RawFd) {
        self.transport.host_event(fd, EventSet::IN);
    }

    /// Used elements (head, length) that appeared since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let tq = &mut self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(tq.used + 2)).unwrap();
        let mut out = Vec::new();
        while tq.used_seen != idx {
            let elem = tq.used + 4 + 8 * u64::from(tq.used_seen % tq.size);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((id as u16, len));
            tq.used_seen = tq.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}
