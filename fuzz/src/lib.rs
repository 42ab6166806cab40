//! Shared by the fuzz targets: turning fuzz bytes into a virtio queue in guest memory.
//!
//! Queue layout (structure-aware, so most inputs get past the ring into device parsing):
//! - byte 0: queue size exponent (size = 1 << (b % 9)); byte 1: flags (bit 0 event idx,
//!   bit 2 "raw": lay the rest verbatim from guest address 0, bits 3.. for the target);
//! - byte 2: descriptor count n; then n × 8 bytes: addr (u16, scaled ×4 into the 64 KiB),
//!   len (u16, or u32::MAX-ish when its top bit is set), flags (u8: NEXT/WRITE/INDIRECT),
//!   next (u8), 2 padding bytes;
//! - then a count byte and that many avail-ring head indexes (u8 each);
//! - the rest is written at [`DATA`] (headers, indirect tables, payloads).

pub use hull_vmm::devices::virtio::net::seqpacket::SeqPacket;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 0x1_0000;
pub const AVAIL: u64 = 0x0;
pub const DESC: u64 = 0x400;
pub const USED: u64 = 0x1400;
/// A second, empty queue for devices with more than one (placed after the first's rings).
pub const SPARE: u64 = 0x2000;
pub const DATA: u64 = 0x4000;

/// What the first bytes asked for.
pub struct Shape {
    pub size: u16,
    pub event_idx: bool,
    pub flags: u8,
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Lays out the fuzzed queue; None if the input is too short to say anything.
pub fn lay_out(mem: &GuestMemoryMmap, data: &[u8]) -> Option<Shape> {
    let (&exp, rest) = data.split_first()?;
    let (&flags, rest) = rest.split_first()?;
    let shape = Shape {
        size: 1u16 << (exp % 9),
        event_idx: flags & 1 != 0,
        flags,
    };
    if flags & 4 != 0 {
        let n = rest.len().min(MEM_SIZE);
        mem.write_slice(&rest[..n], GuestAddress(0)).ok()?;
        return Some(shape);
    }
    let (&ndesc, mut rest) = rest.split_first()?;
    for i in 0..u64::from(ndesc).min(u64::from(shape.size)) {
        let Some((d, tail)) = rest.split_first_chunk::<8>() else {
            break;
        };
        rest = tail;
        let addr = u64::from(u16::from_le_bytes([d[0], d[1]])) * 4;
        let raw_len = u16::from_le_bytes([d[2], d[3]]);
        let len = if raw_len & 0x8000 != 0 {
            u32::MAX - u32::from(raw_len & 0x7fff)
        } else {
            u32::from(raw_len)
        };
        let base = DESC + i * 16;
        mem.write_obj(addr, GuestAddress(base)).ok()?;
        mem.write_obj(len, GuestAddress(base + 8)).ok()?;
        mem.write_obj(u16::from(d[4] & 7), GuestAddress(base + 12)).ok()?;
        mem.write_obj(u16::from(d[5]), GuestAddress(base + 14)).ok()?;
    }
    let (&navail, mut rest) = rest.split_first().unwrap_or((&0, &[]));
    let navail = u16::from(navail);
    for i in 0..navail.min(shape.size) {
        let Some((&head, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        mem.write_obj(u16::from(head), GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .ok()?;
    }
    mem.write_obj(navail, GuestAddress(AVAIL + 2)).ok()?;
    let n = rest.len().min(MEM_SIZE - DATA as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA)).ok()?;
    Some(shape)
}

/// The fuzzed queue, ready; None if virtio-queue finds it invalid.
pub fn fuzzed_queue(mem: &GuestMemoryMmap, shape: &Shape) -> Option<Queue> {
    // The used ring starts clean so the consistency check is meaningful.
    mem.write_slice(&[0u8; 8], GuestAddress(USED)).ok()?;
    queue_at(mem, shape.size, DESC, AVAIL, USED, shape.event_idx)
}

/// An empty, valid queue of 16 entries in the spare area.
pub fn spare_queue(mem: &GuestMemoryMmap, index: u64) -> Queue {
    let base = SPARE + index * 0x400;
    mem.write_slice(&[0u8; 0x400], GuestAddress(base)).unwrap();
    queue_at(mem, 16, base, base + 0x100, base + 0x200, false).unwrap()
}

fn queue_at(
    mem: &GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
) -> Option<Queue> {
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// The used index the device wrote must match its own count.
pub fn check_used(mem: &GuestMemoryMmap, q: &Queue) {
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, q.next_used());
}
