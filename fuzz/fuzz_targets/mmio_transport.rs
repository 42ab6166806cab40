//! Fuzzes the virtio-mmio transport as a guest driver drives it, with a virtio-rng device
//! behind it: register reads and writes in any order (status, reset, feature selection and
//! negotiation, queue geometry, ready, notify, interrupt ack, config space), writes to
//! guest memory (rings, descriptors) between them, and snapshot/restore of the transport
//! mid-sequence. Nothing may panic; a device is only ever active after the driver set
//! FEATURES_OK and DRIVER_OK.
#![no_main]

use std::sync::Arc;

use hull_vmm::devices::virtio::mmio::MmioTransport;
use hull_vmm::devices::virtio::rng::Rng;
use hull_vmm::devices::virtio::Interrupt;
use hull_vmm::devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const FEATURES_OK: u32 = 8;
const DRIVER_OK: u32 = 4;

fn transport(mem: &vm_memory::GuestMemoryMmap) -> MmioTransport {
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mem = hull_fuzz::guest_memory();
    let mut t = transport(&mem);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            // Write a register (offsets 0..0x200 cover the registers and config space).
            0 => {
                let Some((arg, tail)) = rest.split_first_chunk::<6>() else {
                    break;
                };
                rest = tail;
                let offset = u64::from(u16::from_le_bytes([arg[0], arg[1]]) % 0x200);
                t.write(offset, &arg[2..6]);
            }
            1 => {
                let Some((arg, tail)) = rest.split_first_chunk::<3>() else {
                    break;
                };
                rest = tail;
                let offset = u64::from(u16::from_le_bytes([arg[0], arg[1]]) % 0x200);
                let mut buf = vec![0u8; usize::from(arg[2] % 9)];
                t.read(offset, &mut buf);
            }
            // Guest memory: rings, descriptors, buffers.
            2 => {
                let Some((arg, tail)) = rest.split_first_chunk::<3>() else {
                    break;
                };
                rest = tail;
                let addr = u64::from(u16::from_le_bytes([arg[0], arg[1]]));
                let n = usize::from(arg[2]).min(rest.len());
                let (bytes, tail) = rest.split_at(n);
                rest = tail;
                let _ = mem.write_slice(bytes, GuestAddress(addr));
            }
            // Snapshot the transport and go on with a restored copy.
            _ => {
                let state = t.save_state();
                let mut fresh = transport(&mem);
                if fresh.restore_state(&state).is_ok() {
                    t = fresh;
                }
            }
        }
        if t.is_activated() {
            let status = t.status();
            assert!(
                status & FEATURES_OK != 0 && status & DRIVER_OK != 0,
                "active with status {status:#x}"
            );
        }
    }
});
