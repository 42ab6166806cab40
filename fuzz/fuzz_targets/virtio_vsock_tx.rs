//! Fuzzes virtio-vsock's TX path: descriptor chains and packet headers from fuzz bytes
//! (layout in `hull_fuzz`) go through packet parsing and the muxer; RX and event queues
//! are valid but empty, so answers queue up. Packets that try to reach host ports find no
//! listener. The device must not panic or spin, and the TX used ring must be consistent.
#![no_main]

use std::sync::OnceLock;

use hull_fuzz::{check_used, fuzzed_queue, guest_memory, lay_out, spare_queue};
use hull_vmm::devices::virtio::vsock::{Vsock, TX};
use hull_vmm::devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

fn socket_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let Some(shape) = lay_out(&mem, data) else {
        return;
    };
    let Some(tx) = fuzzed_queue(&mem, &shape) else {
        return;
    };
    let mut vsock = Vsock::new(3, &socket_dir().join("v.sock")).unwrap();
    vsock.activate(0);
    let mut queues = [spare_queue(&mem, 0), tx, spare_queue(&mem, 1)];
    vsock.process_queue(TX, &mut queues, &mem);
    check_used(&mem, &queues[TX]);
});
