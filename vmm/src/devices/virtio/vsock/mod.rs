//! virtio-vsock (virtio 1.2, section 5.10) with a hybrid unix-socket host side.
//!
//! Three queues: RX (device → driver packets), TX (driver → device packets) and the event
//! queue, which only ever carries a transport-reset event. The device parses TX packets
//! ([`packet`]), hands them to the [`muxer`], and fills RX buffers with what the muxer's
//! connections have for the guest. RX delivery is driven from three places: the guest
//! adding RX buffers, a TX packet that needs an answer, and host sockets becoming ready;
//! when the guest has no RX buffers, everything waits for its next notification.

pub mod connection;
pub mod handshake;
pub mod muxer;
pub mod packet;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{DeviceState, RestoreError};
use super::{
    next_chain, read_config_bytes, ready, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
pub use muxer::{Muxer, MuxerError, MuxerState};
use packet::{HEADER_LEN, MAX_PAYLOAD};

pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// virtio_vsock_event.id of a transport reset.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// The lowest CID a guest may have (0-2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u64 = 3;
/// CIDs are 32-bit in practice; u32::MAX is VMADDR_CID_ANY.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest_cid = {0}: must be between {MIN_GUEST_CID} and {MAX_GUEST_CID}")]
    BadCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("vsock: create eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Where a transport reset stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Idle,
    /// Asked for; waits for an event buffer from the guest.
    Pending,
    /// Posted; the guest's next event-queue notification (it refills the buffer after
    /// handling the event) says it has dropped its stale connections.
    Posted,
}

fn check_cid(cid: u64) -> Result<(), VsockError> {
    if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        return Err(VsockError::BadCid(cid));
    }
    Ok(())
}

/// What a snapshot keeps of the device: its CID and the connection table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VsockState {
    cid: u64,
    muxer: MuxerState,
}

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    /// A restore took the snapshot's connection table as it was (same CID): no transport
    /// reset is needed, the guest's stale connections get RSTs, idle ones wait for ADOPT.
    precise_restore: bool,
    /// Written by whoever wants a transport reset posted (snapshot restore).
    reset_evt: EventFd,
    reset: Reset,
    rx_buf: Vec<u8>,
    tx_payload: Vec<u8>,
}

impl Vsock {
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        check_cid(cid)?;
        Self::with_muxer(cid, Muxer::new(cid, uds_path)?)
    }

    /// The device of a restored VM: its host socket appears at `uds_path` only once the
    /// guest has handled the transport reset that [`Vsock::reset_trigger`] asks for. A host
    /// connection made earlier could be dropped by the guest's reset without the host ever
    /// hearing of it (the guest sends no RST for connections a reset closes).
    pub fn for_restore(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        check_cid(cid)?;
        Self::with_muxer(cid, Muxer::new_staged(cid, uds_path)?)
    }

    fn with_muxer(cid: u64, muxer: Muxer) -> Result<Self, VsockError> {
        Ok(Vsock {
            cid,
            muxer,
            precise_restore: false,
            reset_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            reset: Reset::Idle,
            rx_buf: vec![0; MAX_PAYLOAD],
            tx_payload: Vec::with_capacity(MAX_PAYLOAD),
        })
    }

    /// A handle that, written to, makes the device drop every connection and post a
    /// transport-reset event to the guest.
    pub fn reset_trigger(&self) -> Result<EventFd, VsockError> {
        self.reset_evt.try_clone().map_err(VsockError::EventFd)
    }

    /// Takes every TX packet and hands it to the muxer.
    fn serve_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = next_chain(queue, mem) {
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut reader) => match packet::read_packet(&mut reader, &mut self.tx_payload) {
                    Ok(hdr) => self.muxer.guest_packet(&hdr, &self.tx_payload),
                    Err(e) => log::debug!("vsock: bad TX packet: {e}"),
                },
                Err(e) => log::debug!("vsock: malformed TX descriptor chain: {e}"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                crate::guest_warn!("vsock: cannot return TX descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    /// Fills RX buffers while the muxer has packets and the guest has buffers.
    fn serve_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = next_chain(queue, mem) else {
                break; // parked until the guest posts RX buffers
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(mem) {
                Ok(w) if w.available_bytes() >= HEADER_LEN => w,
                Ok(_) | Err(_) => {
                    log::debug!("vsock: RX buffer {head} cannot hold a packet header");
                    let _ = queue.add_used(mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HEADER_LEN).min(MAX_PAYLOAD);
            let Some(hdr) = self.muxer.next_rx(&mut self.rx_buf[..room]) else {
                queue.go_to_previous_position();
                break;
            };
            let payload = &self.rx_buf[..hdr.len as usize];
            let len = match writer
                .write_all(&hdr.to_bytes())
                .and_then(|()| writer.write_all(payload))
            {
                Ok(()) => HEADER_LEN + payload.len(),
                Err(e) => {
                    crate::guest_warn!("vsock: cannot write an RX packet to guest memory: {e}");
                    self.muxer.rx_failed(&hdr);
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len as u32) {
                crate::guest_warn!("vsock: cannot return RX descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    fn serve_event(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        if self.reset != Reset::Pending {
            return false;
        }
        let Some(chain) = next_chain(queue, mem) else {
            return false;
        };
        let head = chain.head_index();
        let len = match chain.writer(mem) {
            Ok(mut w) => w
                .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                .map(|()| 4)
                .unwrap_or(0),
            Err(_) => 0,
        };
        if len == 4 {
            self.reset = Reset::Posted;
            ask_for_next_buffer(queue, mem);
        }
        let _ = queue.add_used(mem, head, len);
        true
    }

    /// RX and event delivery after anything that may have produced packets.
    fn deliver(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> UsedQueues {
        let mut used = UsedQueues::default();
        if let Some(q) = ready(queues, RX) {
            used.merge(UsedQueues::one_if(RX, self.serve_rx(q, mem)));
        }
        if let Some(q) = ready(queues, EVENT) {
            used.merge(UsedQueues::one_if(EVENT, self.serve_event(q, mem)));
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        let mut used = UsedQueues::default();
        if index == EVENT && self.reset == Reset::Posted {
            log::info!("vsock: the guest handled the transport reset");
            self.reset = Reset::Idle;
            self.muxer.publish();
        }
        if index == TX {
            if let Some(q) = ready(queues, TX) {
                used.merge(UsedQueues::one_if(TX, self.serve_tx(q, mem)));
            }
        }
        used.merge(self.deliver(queues, mem));
        used
    }

    fn reset(&mut self) {
        self.muxer.reset_all();
        self.reset = Reset::Idle;
    }

    fn save_device(&self) -> DeviceState {
        DeviceState::Vsock(VsockState {
            cid: self.cid,
            muxer: self.muxer.save(),
        })
    }

    fn restore_device(&mut self, state: &DeviceState) -> Result<(), RestoreError> {
        let DeviceState::Vsock(state) = state else {
            return Err(RestoreError::Kind {
                found: state.kind(),
                want: "vsock",
            });
        };
        if state.cid != self.cid {
            // The guest must re-read its CID: only a transport reset makes it.
            log::info!(
                "vsock: guest CID changes from {} to {}: connections will be reset",
                state.cid,
                self.cid
            );
            return Ok(());
        }
        let kept = self.muxer.restore(&state.muxer);
        log::info!(
            "vsock: {kept} idle connection(s) kept for ADOPT, {} reset",
            state.muxer.reset.len()
        );
        self.precise_restore = true;
        Ok(())
    }

    fn host_events(&self) -> Vec<(RawFd, EventSet)> {
        vec![
            (self.muxer.epoll_fd(), EventSet::IN),
            (self.reset_evt.as_raw_fd(), EventSet::IN),
        ]
    }

    fn process_host_event(
        &mut self,
        fd: RawFd,
        _events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        if fd == self.reset_evt.as_raw_fd() && self.precise_restore {
            // The restore carried the connection table over: no reset, the socket can
            // appear now (the RSTs for stale connections are queued ahead of anything a
            // new client sends).
            let _ = self.reset_evt.read();
            self.precise_restore = false;
            self.muxer.publish();
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            log::info!("vsock: transport reset: dropping all connections");
            self.muxer.reset_all();
            self.reset = Reset::Pending;
            if ready(queues, EVENT).is_none() {
                // No driver to tell (the snapshot predates it): nothing in the guest is stale.
                self.reset = Reset::Idle;
                self.muxer.publish();
            }
        } else {
            self.muxer.process_host_events();
        }
        self.deliver(queues, mem)
    }
}

/// Makes the guest notify the queue when it adds its next buffer: clears NO_NOTIFY and,
/// with EVENT_IDX, sets `avail_event` to the ring's current index (virtio-queue sets it to
/// where the device stopped reading, which a driver that posted several buffers ahead has
/// long passed).
fn ask_for_next_buffer(queue: &mut Queue, mem: &GuestMemoryMmap) {
    use std::sync::atomic::Ordering;
    use vm_memory::{Bytes, GuestAddress};
    if let Err(e) = queue.enable_notification(mem) {
        crate::guest_warn!("vsock: event queue: {e}");
        return;
    }
    if !queue.event_idx_enabled() {
        return;
    }
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
        return;
    };
    // The used ring: flags (2), idx (2), `size` elements of 8 bytes, then avail_event.
    let at = queue.used_ring() + 4 + 8 * u64::from(queue.size());
    if let Err(e) = mem.write_obj(avail.0.to_le(), GuestAddress(at)) {
        crate::guest_warn!("vsock: event queue: cannot write avail_event: {e}");
    }
    std::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests;
