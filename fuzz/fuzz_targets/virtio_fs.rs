//! Fuzzes virtio-fs's request path: descriptor chains and FUSE messages from fuzz bytes
//! (layout in `hull_fuzz`) on the request queue go through fuse-backend-rs's server, its
//! Vfs and a passthrough share of a scratch directory (created files stay inside it). The
//! device must not panic or spin, and the request queue's used ring must be consistent.
#![no_main]

use std::sync::{Arc, OnceLock};

use hull_fuzz::{check_used, fuzzed_queue, guest_memory, lay_out, spare_queue};
use hull_vmm::devices::virtio::fs::{serve_in_place, Shares};
use hull_vmm::devices::virtio::Interrupt;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

fn shares() -> &'static Shares {
    static SHARES: OnceLock<Shares> = OnceLock::new();
    SHARES.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("hull-fuzz-fs-{}", std::process::id()));
        std::fs::create_dir_all(p.join("sub")).unwrap();
        std::fs::write(p.join("file"), b"some bytes").unwrap();
        let s = Shares::new();
        s.add("share", &p).unwrap();
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let Some(shape) = lay_out(&mem, data) else {
        return;
    };
    let Some(requests) = fuzzed_queue(&mem, &shape) else {
        return;
    };
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut queues = [spare_queue(&mem, 0), requests];
    serve_in_place(&mut queues, &mem, shares(), irq).unwrap();
    check_used(&mem, &queues[1]);
});
