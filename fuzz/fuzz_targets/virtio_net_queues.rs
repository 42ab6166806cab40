//! Fuzzes virtio-net's descriptor-chain walking both ways. Flags bit 3 picks the
//! direction: TX (fuzzed chains are frames for the backend) or RX (fuzzed chains are the
//! guest's receive buffers, filled with frames whose sizes come from the input, with and
//! without merged buffers per bit 4). The backend is a frame-preserving socket pair.
#![no_main]

use hull_fuzz::{check_used, fuzzed_queue, guest_memory, lay_out, spare_queue, SeqPacket};
use hull_vmm::devices::virtio::net::{features, FrameIo, Net, RX, TX, VNET_HDR_LEN};
use hull_vmm::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory();
    let Some(shape) = lay_out(&mem, data) else {
        return;
    };
    let Some(q) = fuzzed_queue(&mem, &shape) else {
        return;
    };
    let (dev_end, host_end) = SeqPacket::pair().unwrap();
    let mut net = Net::new(dev_end, Some([2, 0, 0, 0, 0, 1]), true);
    let mut acked = VIRTIO_F_VERSION_1;
    if shape.flags & 16 != 0 {
        acked |= features::MRG_RXBUF;
    }
    net.activate(acked);
    if shape.flags & 8 == 0 {
        let mut queues = [spare_queue(&mem, 0), q];
        net.process_queue(TX, &mut queues, &mem);
        check_used(&mem, &queues[TX]);
    } else {
        // Frames of a few sizes derived from the input's last bytes.
        for (i, b) in data.iter().rev().take(4).enumerate() {
            let len = VNET_HDR_LEN + 1 + usize::from(*b) * (1 + i * 97);
            let _ = host_end.send_frame(&vec![0xabu8; len]);
        }
        let mut queues = [q, spare_queue(&mem, 0)];
        net.process_queue(RX, &mut queues, &mem);
        check_used(&mem, &queues[RX]);
    }
});
