//! Fuzzes the virtio-blk device's whole guest-input path: the avail ring, descriptor
//! chains (including indirect tables) and request headers all come from fuzz bytes laid
//! into guest memory; the device must never panic and must leave the used ring consistent.
#![no_main]

use std::sync::OnceLock;

use hull_vmm::devices::virtio::block::Block;
use hull_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
// The fuzz bytes are laid from guest address 0, so the structures the device reads first
// come first: the avail ring (at most 4 + 2 * 256 + 2 bytes), then the descriptor table.
// Descriptors may point anywhere in the 64 KiB, including into both.
const AVAIL: u64 = 0x0;
const DESC: u64 = 0x210;
const USED: u64 = 0x8000;

fn disk() -> &'static std::path::Path {
    static DISK: OnceLock<std::path::PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0x5au8; 16 * 512]).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let size = 1u16 << (data[0] % 9); // 1..=256
    let event_idx = data[1] & 1 == 1;
    let read_only = data[1] & 2 == 2;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let image = &data[2..];
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0)).unwrap();
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
