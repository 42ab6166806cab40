//! Fuzzes the virtio-blk device's whole guest-input path: the avail ring, descriptor
//! chains (including indirect tables) and request headers all come from fuzz bytes laid
//! into guest memory; the device must never panic, never spin, and must leave the used
//! ring consistent with its own count.
//!
//! Input layout (structure-aware, so most inputs reach request parsing):
//! - byte 0: queue size exponent (size = 1 << (b % 9)); byte 1: flags (bit 0 event idx,
//!   bit 1 read-only disk, bit 2 "raw": lay the rest verbatim from guest address 0);
//! - byte 2: descriptor count n; then n × 8 bytes: addr (u16, scaled ×4 into the 64 KiB),
//!   len (u16, or u32::MAX-ish when its top bit is set), flags (u8: NEXT/WRITE/INDIRECT),
//!   next (u8), 2 padding bytes;
//! - then a count byte and that many avail-ring head indexes (u8 each);
//! - the rest is written at DATA (request headers, indirect tables, payloads).
#![no_main]

use std::sync::OnceLock;

use hull_vmm::devices::virtio::block::Block;
use hull_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const AVAIL: u64 = 0x0;
const DESC: u64 = 0x400;
const USED: u64 = 0x1400;
const DATA: u64 = 0x4000;

fn disk() -> &'static std::path::Path {
    static DISK: OnceLock<std::path::PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0x5au8; 16 * 512]).unwrap();
        p
    })
}

/// Lays out queue structures from `data`; returns (size, event_idx, read_only).
fn lay_out(mem: &GuestMemoryMmap, data: &[u8]) -> Option<(u16, bool, bool)> {
    let (&exp, rest) = data.split_first()?;
    let (&flags, rest) = rest.split_first()?;
    let size = 1u16 << (exp % 9);
    if flags & 4 != 0 {
        let n = rest.len().min(MEM_SIZE);
        mem.write_slice(&rest[..n], GuestAddress(0)).ok()?;
        return Some((size, flags & 1 != 0, flags & 2 != 0));
    }
    let (&ndesc, mut rest) = rest.split_first()?;
    for i in 0..u64::from(ndesc).min(u64::from(size)) {
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
        let base = GuestAddress(DESC + i * 16);
        mem.write_obj(addr, base).ok()?;
        mem.write_obj(len, GuestAddress(base.0 + 8)).ok()?;
        mem.write_obj(u16::from(d[4] & 7), GuestAddress(base.0 + 12))
            .ok()?;
        mem.write_obj(u16::from(d[5]), GuestAddress(base.0 + 14))
            .ok()?;
    }
    let (&navail, mut rest) = rest.split_first().unwrap_or((&0, &[]));
    let navail = u16::from(navail);
    for i in 0..navail.min(size) {
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
    Some((size, flags & 1 != 0, flags & 2 != 0))
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let Some((size, event_idx, read_only)) = lay_out(&mem, data) else {
        return;
    };
    // The used ring starts clean so the check below is meaningful.
    mem.write_slice(&[0u8; 8], GuestAddress(USED)).unwrap();

    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let mut block = Block::new(disk(), read_only, None).unwrap();
    block.activate(0);
    block.process_queue(0, &mut q, &mem);
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, q.next_used());
});
