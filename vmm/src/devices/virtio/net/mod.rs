//! virtio-net (virtio 1.2, section 5.1) over a tap device.
//!
//! Two queues, RX and TX, served on the event-loop thread. The tap is watched edge-
//! triggered for input and output: when the guest has no RX buffers the device keeps the
//! one frame it already read and stops reading (the tap queues the rest, and drops past
//! its limit as a NIC would) until the guest posts buffers; when the tap will not take a
//! frame the TX queue waits for the tap to drain. Neither side can make the VMM spin.
//!
//! Offloads: when the tap accepts them the device offers checksum offload and TSO both
//! ways, and enables on the tap exactly those the guest accepted for its receive side.
//! Receive buffers are merged (VIRTIO_NET_F_MRG_RXBUF), so a 64 KiB TSO frame fills as
//! many of the guest's page-sized buffers as it needs.

pub mod seqpacket;
pub mod tap;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::{
    next_chain, read_config_bytes, ready, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
pub use tap::{Tap, TapError, VNET_HDR_LEN};

pub const VIRTIO_ID_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// The largest frame either side may pass: a 64 KiB GSO frame plus its Ethernet header
/// and the virtio-net header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65550;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The feature bits offered, as masks of `virtio_bindings`' bit numbers.
pub mod features {
    use virtio_bindings::virtio_net as n;
    pub const CSUM: u64 = 1 << n::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << n::VIRTIO_NET_F_GUEST_CSUM;
    pub const MAC: u64 = 1 << n::VIRTIO_NET_F_MAC;
    pub const GUEST_TSO4: u64 = 1 << n::VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u64 = 1 << n::VIRTIO_NET_F_GUEST_TSO6;
    pub const HOST_TSO4: u64 = 1 << n::VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u64 = 1 << n::VIRTIO_NET_F_HOST_TSO6;
    pub const MRG_RXBUF: u64 = 1 << n::VIRTIO_NET_F_MRG_RXBUF;
}

/// Where frames go to and come from: the tap in production; anything that keeps frame
/// boundaries (a SOCK_SEQPACKET pair) in tests and fuzzing.
pub trait FrameIo: AsRawFd + Send {
    fn recv_frame(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn send_frame(&self, frame: &[u8]) -> std::io::Result<usize>;
    /// Enables the given [`tap::offload`] flags; false if the backend cannot.
    fn set_offload(&self, flags: u32) -> bool;
}

impl FrameIo for Tap {
    fn recv_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut r: &Tap = self;
        r.read(buf)
    }
    fn send_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        let mut w: &Tap = self;
        w.write(frame)
    }
    fn set_offload(&self, flags: u32) -> bool {
        Tap::set_offload(self, flags).is_ok()
    }
}

/// Frame counters, logged when the device goes away (drops are otherwise silent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_dropped: u64,
    pub bad_chains: u64,
}

pub struct Net<B: FrameIo> {
    backend: B,
    mac: Option<[u8; 6]>,
    offload: bool,
    acked: u64,
    /// A frame read from the backend and not yet delivered (length 0: none).
    rx_frame: Vec<u8>,
    rx_len: usize,
    backend_readable: bool,
    tx_frame: Vec<u8>,
    tx_blocked: bool,
    stats: NetStats,
}

/// What became of the pending RX frame.
enum Delivery {
    Delivered,
    /// Not enough guest buffers: keep the frame and wait for the guest.
    NoBuffers,
    /// The frame cannot be delivered as the guest set things up; dropped.
    Dropped,
}

impl<B: FrameIo> Net<B> {
    /// `offload`: whether the backend accepts checksum/TSO offload (probe a tap with
    /// [`Tap::supports_offload`]).
    pub fn new(backend: B, mac: Option<[u8; 6]>, offload: bool) -> Self {
        Net {
            backend,
            mac,
            offload,
            acked: 0,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_len: 0,
            backend_readable: true,
            tx_frame: vec![0; MAX_FRAME_LEN],
            tx_blocked: false,
            stats: NetStats::default(),
        }
    }

    fn merged(&self) -> bool {
        self.acked & features::MRG_RXBUF != 0
    }

    /// Moves frames from the backend into RX buffers until either runs out.
    fn serve_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            if self.rx_len == 0 {
                if !self.backend_readable {
                    break;
                }
                match self.backend.recv_frame(&mut self.rx_frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_len = n,
                    Ok(0) => {
                        // A closed backend (never a tap): nothing more will come.
                        self.backend_readable = false;
                        break;
                    }
                    Ok(_) => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            crate::guest_warn!("virtio-net: reading the tap failed: {e}");
                        }
                        self.backend_readable = false;
                        break;
                    }
                }
            }
            match self.deliver(queue, mem, &mut used) {
                Delivery::Delivered => {
                    self.stats.rx_frames += 1;
                    self.rx_len = 0;
                }
                Delivery::Dropped => {
                    self.stats.rx_dropped += 1;
                    self.rx_len = 0;
                }
                Delivery::NoBuffers => break,
            }
        }
        used
    }

    /// Writes the pending frame into one chain, or with merged buffers into as many as
    /// it needs, all or nothing. Chains that cannot take data (no writable byte, outside
    /// RAM) are returned empty, but only together with a delivered frame: until then every
    /// popped chain is rewound as a whole, so the avail position stays exact.
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, used: &mut bool) -> Delivery {
        let len = self.rx_len;
        let mut chains = Vec::new();
        let mut bad = Vec::new();
        let mut room = 0usize;
        let outcome = loop {
            if room >= len {
                break Delivery::Delivered;
            }
            if chains.len() + bad.len() >= usize::from(queue.size()) {
                // Even the whole ring cannot hold this frame (tiny buffers and a large
                // TSO frame): waiting for more buffers would wait forever.
                log::debug!("virtio-net: {len}-byte frame exceeds the whole RX ring");
                break Delivery::Dropped;
            }
            let Some(chain) = next_chain(queue, mem) else {
                break Delivery::NoBuffers;
            };
            let head = chain.head_index();
            match chain.writer(mem) {
                Ok(w) if w.available_bytes() > 0 => {
                    room += w.available_bytes();
                    chains.push((head, w));
                    if !self.merged() && room < len {
                        // Without merged buffers a frame must fit one chain.
                        log::debug!(
                            "virtio-net: {len}-byte frame does not fit a {room}-byte buffer"
                        );
                        break Delivery::Dropped;
                    }
                }
                _ => {
                    self.stats.bad_chains += 1;
                    bad.push(head);
                }
            }
        };
        if !matches!(outcome, Delivery::Delivered) {
            for _ in 0..chains.len() + bad.len() {
                queue.go_to_previous_position();
            }
            return outcome;
        }
        for head in bad {
            let _ = queue.add_used(mem, head, 0);
        }
        let count = chains.len() as u16;
        self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&count.to_le_bytes());
        let mut offset = 0;
        for (head, mut writer) in chains {
            let n = writer.available_bytes().min(len - offset);
            let ok = writer.write_all(&self.rx_frame[offset..offset + n]).is_ok();
            offset += n;
            let _ = queue.add_used(mem, head, if ok { n as u32 } else { 0 });
        }
        *used = true;
        Delivery::Delivered
    }

    /// Sends every available TX frame to the backend; stops (keeping the frame) while
    /// the backend is full.
    fn serve_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        self.tx_blocked = false;
        while let Some(chain) = next_chain(queue, mem) {
            let head = chain.head_index();
            let frame_len = match chain.reader(mem) {
                Ok(mut r) => {
                    let n = r.available_bytes();
                    if (VNET_HDR_LEN + 1..=MAX_FRAME_LEN).contains(&n)
                        && r.read_exact(&mut self.tx_frame[..n]).is_ok()
                    {
                        Some(n)
                    } else {
                        None
                    }
                }
                Err(_) => None,
            };
            match frame_len {
                Some(n) => match self.backend.send_frame(&self.tx_frame[..n]) {
                    Ok(_) => self.stats.tx_frames += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        queue.go_to_previous_position();
                        self.tx_blocked = true;
                        break;
                    }
                    Err(e) => {
                        // The host kernel validates the frame and its offload header;
                        // a bad one is dropped like on a real NIC.
                        log::debug!("virtio-net: tap refused a frame: {e}");
                        self.stats.tx_dropped += 1;
                    }
                },
                None => {
                    self.stats.bad_chains += 1;
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                crate::guest_warn!("virtio-net: cannot return TX descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }
}

impl<B: FrameIo> Drop for Net<B> {
    fn drop(&mut self) {
        let s = self.stats;
        log::info!(
            "virtio-net: rx {} frames ({} dropped), tx {} frames ({} dropped), {} unusable chains",
            s.rx_frames,
            s.rx_dropped,
            s.tx_frames,
            s.tx_dropped,
            s.bad_chains
        );
    }
}

impl<B: FrameIo> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | features::MRG_RXBUF;
        if self.mac.is_some() {
            f |= features::MAC;
        }
        if self.offload {
            f |= features::CSUM
                | features::GUEST_CSUM
                | features::GUEST_TSO4
                | features::GUEST_TSO6
                | features::HOST_TSO4
                | features::HOST_TSO6;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac.unwrap_or_default(), offset, data);
    }

    fn activate(&mut self, acked: u64) {
        self.acked = acked;
        let mut flags = 0;
        if acked & features::GUEST_CSUM != 0 {
            flags |= tap::offload::CSUM;
            if acked & features::GUEST_TSO4 != 0 {
                flags |= tap::offload::TSO4;
            }
            if acked & features::GUEST_TSO6 != 0 {
                flags |= tap::offload::TSO6;
            }
        }
        if flags != 0 && !self.backend.set_offload(flags) {
            crate::guest_warn!("virtio-net: the tap refused offload flags {flags:#x}");
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.rx_len = 0;
        self.tx_blocked = false;
        self.backend.set_offload(0);
        // Frames already queued in the tap were shaped for the old offload settings; the
        // next driver may not accept them.
        for _ in 0..1024 {
            if !matches!(self.backend.recv_frame(&mut self.rx_frame), Ok(n) if n > 0) {
                break;
            }
        }
        self.backend_readable = true;
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        let mut used = UsedQueues::default();
        if index == TX {
            if let Some(q) = ready(queues, TX) {
                used.merge(UsedQueues::one_if(TX, self.serve_tx(q, mem)));
            }
        }
        if let Some(q) = ready(queues, RX) {
            used.merge(UsedQueues::one_if(RX, self.serve_rx(q, mem)));
        }
        used
    }

    fn host_events(&self) -> Vec<(RawFd, EventSet)> {
        vec![(
            self.backend.as_raw_fd(),
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
        )]
    }

    fn process_host_event(
        &mut self,
        _fd: RawFd,
        events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        if events.contains(EventSet::IN) {
            self.backend_readable = true;
        }
        let mut used = UsedQueues::default();
        if events.contains(EventSet::OUT) && self.tx_blocked {
            if let Some(q) = ready(queues, TX) {
                used.merge(UsedQueues::one_if(TX, self.serve_tx(q, mem)));
            }
        }
        if let Some(q) = ready(queues, RX) {
            used.merge(UsedQueues::one_if(RX, self.serve_rx(q, mem)));
        }
        used
    }
}

#[cfg(test)]
mod tests;
