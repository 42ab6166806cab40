//! Fuzzes the virtio-blk device's whole guest-input path: the avail ring, descriptor
//! chains (including indirect tables) and request headers all come from fuzz bytes laid
//! into guest memory (see `hull_fuzz` for the layout; flags bit 1 makes the disk
//! read-only); the device must never panic, never spin, and must leave the used ring
//! consistent with its own count.
#![no_main]

use std::sync::OnceLock;

use hull_fuzz::{check_used, fuzzed_queue, guest_memory, lay_out};
use hull_vmm::devices::virtio::block::Block;
use hull_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

fn disk() -> &'static std::path::Path {
    static DISK: OnceLock<std::path::PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
        std::fs::write(&p, vec![0x5au8; 16 * 512]).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let Some(shape) = lay_out(&mem, data) else {
        return;
    };
    let Some(q) = fuzzed_queue(&mem, &shape) else {
        return;
    };
    let mut block = Block::new(disk(), shape.flags & 2 != 0, None).unwrap();
    block.activate(0);
    let mut queues = [q];
    block.process_queue(0, &mut queues, &mem);
    check_used(&mem, &queues[0]);
});
