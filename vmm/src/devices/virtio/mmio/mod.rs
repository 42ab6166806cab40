//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! Registers are 32 bits wide; any other access width to them is ignored (reads return 0),
//! as are writes that are illegal in the current device status. A driver that breaks the
//! negotiation rules gets `DEVICE_NEEDS_RESET` rather than a device in an undefined state.

use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    status, Interrupt, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::bus::BusDevice;

mod persist;
pub use persist::{QueueSnapshot, TransportState};

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c55_4c48; // "HLUL"

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("queue {index}: create queue with maximum size {max}")]
    Queue {
        index: usize,
        max: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("create queue notification eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("snapshot: device type {found} where this VM has type {want}")]
    DeviceType { found: u32, want: u32 },
    #[error("snapshot: {found} queues for device type {device}, which has {want}")]
    QueueCount {
        device: u32,
        found: usize,
        want: usize,
    },
    #[error("snapshot: device type {device}")]
    DeviceState {
        device: u32,
        #[source]
        source: crate::devices::virtio::persist::RestoreError,
    },
    #[error("snapshot: device type {device} is marked active with driver status {status:#x}, which never activates a device: the state file is corrupt")]
    ActiveWithoutDriver { device: u32, status: u32 },
    #[error("snapshot: queue {index} of device type {device}")]
    QueueState {
        device: u32,
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// Queues whose driver wrote a size the split ring cannot have (0, above the maximum,
    /// not a power of two). `virtio-queue` ignores such a write and keeps the old size,
    /// which would leave driver and device disagreeing; activation refuses them instead.
    bad_size: Vec<bool>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let mut device = device;
        device.set_interrupt(interrupt.clone());
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|source| MmioError::Queue {
                index,
                max,
                source,
            })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            bad_size: vec![false; queues.len()],
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The eventfds KVM signals when the guest writes a queue index to QueueNotify.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The host descriptors the device wants watched.
    pub fn host_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.device
            .host_events()
            .into_iter()
            .map(|(fd, _)| fd)
            .collect()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Tells the driver that the configuration space changed (a drive slot's capacity):
    /// a new generation, and a configuration interrupt once the driver is running.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.activated {
            self.interrupt.trigger(super::INT_CONFIG);
        }
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change while the driver is configuring the device.
    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    fn update_queue<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        if !self.queue_config_allowed() {
            crate::guest_warn!("virtio-mmio: queue register written outside feature negotiation");
            return;
        }
        if let Some(q) = self.selected_queue() {
            if q.ready() {
                return; // a live queue's geometry does not change
            }
            f(q);
        }
    }

    fn set_queue_size(&mut self, v: u32) {
        let index = self.queue_sel as usize;
        let Some(max) = self.queues.get(index).map(|q| u32::from(q.max_size())) else {
            return;
        };
        let valid = v != 0 && v <= max && v.is_power_of_two();
        if !valid {
            crate::guest_warn!("virtio-mmio: queue {index}: size {v} is invalid (maximum {max})");
        }
        if self.queue_config_allowed() {
            self.bad_size[index] = !valid;
        }
        if valid {
            self.update_queue(|q| q.set_size(v as u16));
        }
    }

    /// Takes the driver's status write. The driver initialisation order (virtio 1.2, 3.1.1)
    /// is enforced: bits are only ever added (0 resets), DRIVER needs ACKNOWLEDGE,
    /// FEATURES_OK needs DRIVER, DRIVER_OK needs FEATURES_OK; FAILED may come at any time.
    /// A write that breaks the order is ignored, so a device is never active without
    /// negotiated features, and an active device's status always says DRIVER_OK.
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set; a driver's write cannot clear it.
        let value = value | (self.status & status::DEVICE_NEEDS_RESET);
        let has = |bit| value & bit != 0;
        let new_bits = value & !self.status;
        let out_of_order = (new_bits & status::DRIVER != 0 && !has(status::ACKNOWLEDGE))
            || (new_bits & status::FEATURES_OK != 0 && !has(status::DRIVER))
            || (new_bits & status::DRIVER_OK != 0 && !has(status::FEATURES_OK));
        if self.status & !value != 0 || out_of_order {
            crate::guest_warn!(
                "virtio-mmio: device type {}: status {:#x} after {:#x} breaks the initialisation order; ignored",
                self.device.device_type(),
                value,
                self.status
            );
            return;
        }
        if new_bits & status::FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // Legacy drivers are not supported: leave FEATURES_OK unset so the driver sees
            // the failure (virtio 1.2, 3.1.1 step 6).
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if new_bits & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = &self.mem;
        let all_valid = self
            .queues
            .iter()
            .zip(&self.bad_size)
            .filter(|(q, _)| q.ready())
            .all(|(q, bad)| !bad && q.is_valid(mem));
        if !all_valid {
            crate::guest_warn!(
                "virtio-mmio: device type {} activated with an invalid queue",
                self.device.device_type()
            );
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt.trigger(super::INT_CONFIG);
            return;
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        self.device.activate(self.acked_features);
        self.activated = true;
        // A driver may post buffers and kick before DRIVER_OK; those kicks found the
        // device inactive, so every ready queue is served once now: by the event loop,
        // through the queue's notification eventfd, because the status write that
        // activates runs on a vCPU thread, whose seccomp filter allows no device I/O.
        self.kick_ready_queues();
    }

    /// Signals the notification eventfd of every ready queue, as a guest's kick would.
    fn kick_ready_queues(&self) {
        for (queue, evt) in self.queues.iter().zip(&self.queue_evts) {
            if queue.ready() {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: cannot signal a queue's eventfd: {e}");
                }
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_size.fill(false);
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.interrupt.ack(u32::MAX);
    }

    /// Why the device cannot be snapshotted now, if it cannot.
    pub fn snapshot_blocker(&self) -> Option<String> {
        self.device.snapshot_blocker()
    }

    /// Serves every ready queue once (a notification may have gone unheard).
    fn serve_ready_queues(&mut self) {
        for index in 0..self.queues.len() {
            if self.queues[index].ready() {
                let used = self
                    .device
                    .process_queue(index, &mut self.queues, &self.mem);
                self.signal_used(used);
            }
        }
    }

    /// Serves queue `index` and raises the interrupt if the guest wants one.
    pub fn notify_queue(&mut self, index: usize) {
        log::trace!(
            "virtio-mmio: type {} queue {index} notified",
            self.device.device_type()
        );
        if !self.activated {
            return;
        }
        if !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        let used = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.signal_used(used);
    }

    /// Raises the interrupt if any queue in `used` asks for one.
    fn signal_used(&mut self, used: UsedQueues) {
        if used.is_empty() {
            return;
        }
        let mut wants = false;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if used.contains(index) {
                // Every queue that got buffers is asked, so EVENT_IDX bookkeeping stays
                // right even when one of them already decided the interrupt.
                wants |= queue.needs_notification(&self.mem).unwrap_or(true);
            }
        }
        log::trace!("virtio-mmio: used buffers {used:?}, interrupt wanted: {wants}");
        if wants {
            self.interrupt.trigger(super::INT_VRING);
        }
    }

    /// A host-side descriptor of the device is ready.
    pub(crate) fn host_event(&mut self, fd: std::os::fd::RawFd, events: EventSet) {
        let queues: &mut [Queue] = if self.activated {
            &mut self.queues
        } else {
            &mut []
        };
        let used = self
            .device
            .process_host_event(fd, events, queues, &self.mem);
        self.signal_used(used);
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => {
                log::trace!(
                    "virtio-mmio: interrupt status read: {}",
                    self.interrupt.status()
                );
                self.interrupt.status()
            }
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES => {
                let negotiating =
                    self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
                if !negotiating {
                    crate::guest_warn!("virtio-mmio: driver features written outside negotiation");
                    return;
                }
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.device.avail_features() & mask;
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => self.set_queue_size(v),
            reg::QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            reg::QUEUE_NOTIFY => self.notify_queue(v as usize),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            reg::QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            reg::QUEUE_DEVICE_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::debug!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

impl MutEventSubscriber for MmioTransport {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let Some(index) = self
            .queue_evts
            .iter()
            .position(|e| std::os::fd::AsRawFd::as_raw_fd(e) == fd)
        else {
            self.host_event(fd, events.event_set());
            return;
        };
        // Draining the counter coalesces notifications; an error means it was already 0.
        let _ = self.queue_evts[index].read();
        self.notify_queue(index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-mmio: cannot watch queue eventfd: {e:?}");
            }
        }
        for (fd, set) in self.device.host_events() {
            if let Err(e) = ops.add(Events::new_raw(fd, set)) {
                log::error!("virtio-mmio: cannot watch device descriptor {fd}: {e:?}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    pub struct Dummy {
        pub processed: Vec<usize>,
        pub activated: Option<u64>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[9, 8, 7, 6], offset, data);
        }
        fn activate(&mut self, acked: u64) {
            self.activated = Some(acked);
        }
        fn process_queue(
            &mut self,
            index: usize,
            _q: &mut [Queue],
            _m: &GuestMemoryMmap,
        ) -> UsedQueues {
            self.processed.push(index);
            UsedQueues::one_if(index, true)
        }
    }

    fn transport() -> MmioTransport {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        MmioTransport::new(
            Box::new(Dummy {
                processed: vec![],
                activated: None,
            }),
            mem,
            irq,
        )
        .unwrap()
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Walks the driver through negotiation and queue setup, accepting `features`.
    pub fn bring_up(t: &mut MmioTransport, features: u64) {
        negotiate(t, features);
        setup_queues(t, &[(0x1000, 0x1400, 0x1800), (0x2000, 0x2400, 0x2800)]);
    }

    /// Negotiates VERSION_1 and EVENT_IDX, sets up queues at (desc, avail, used) with
    /// 16 entries each, and sets DRIVER_OK.
    pub fn bring_up_queues(t: &mut MmioTransport, queues: &[(u64, u64, u64)]) {
        negotiate(t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        setup_queues(t, queues);
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queues(t: &mut MmioTransport, queues: &[(u64, u64, u64)]) {
        let sized: Vec<_> = queues.iter().map(|&(d, a, u)| (d, a, u, 16)).collect();
        setup_sized_queues(t, &sized);
    }

    /// Negotiates `features` and sets up queues at (desc, avail, used, size).
    pub fn bring_up_sized(t: &mut MmioTransport, features: u64, queues: &[(u64, u64, u64, u16)]) {
        negotiate(t, features);
        setup_sized_queues(t, queues);
    }

    fn setup_sized_queues(t: &mut MmioTransport, queues: &[(u64, u64, u64, u16)]) {
        for (q, &(desc, avail, used, size)) in queues.iter().enumerate() {
            w(t, reg::QUEUE_SEL, q as u32);
            w(t, reg::QUEUE_NUM, u32::from(size));
            w(t, reg::QUEUE_DESC_LOW, desc as u32);
            w(t, reg::QUEUE_DRIVER_LOW, avail as u32);
            w(t, reg::QUEUE_DEVICE_LOW, used as u32);
            w(t, reg::QUEUE_READY, 1);
        }
        let s = r(t, reg::STATUS);
        w(t, reg::STATUS, s | status::DRIVER_OK);
    }

    #[test]
    fn status_writes_out_of_the_initialisation_order_are_ignored() {
        let mut t = transport();
        // DRIVER_OK straight away: never negotiated, never active.
        w(&mut t, reg::STATUS, status::DRIVER_OK);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert!(!t.is_activated(), "DRIVER_OK without FEATURES_OK");
        // Properly brought up, then a write that clears DRIVER_OK: ignored.
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        assert!(t.is_activated());
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        assert_ne!(r(&mut t, reg::STATUS) & status::DRIVER_OK, 0);
        // FAILED may be added at any time; 0 resets.
        let s = r(&mut t, reg::STATUS);
        w(&mut t, reg::STATUS, s | status::FAILED);
        assert_ne!(r(&mut t, reg::STATUS) & status::FAILED, 0);
        w(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    /// A state file can decode and still describe a VM no driver made: each such state
    /// is refused by name or restored into a transport that a guest then drives without
    /// the VMM panicking.
    #[test]
    fn hostile_transport_states_are_refused_or_harmless() {
        let mut t = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        let good = t.save_state();
        let mut hostile: Vec<(&str, TransportState)> = Vec::new();
        let mut s = good.clone();
        s.status = 0;
        hostile.push(("active without a driver", s));
        let mut s = good.clone();
        s.queue_sel = u32::MAX;
        hostile.push(("queue selector out of range", s));
        let mut s = good.clone();
        s.queues[0].desc_table = u64::MAX - 8;
        s.queues[0].used_ring = 0xffff_0000;
        hostile.push(("rings outside guest memory", s));
        let mut s = good.clone();
        s.queues[0].size = 3;
        hostile.push(("a queue size that is no power of two", s));
        let mut s = good.clone();
        s.queues[1].next_avail = u16::MAX;
        s.queues[1].next_used = 7;
        s.interrupt_status = u32::MAX;
        s.config_generation = u32::MAX;
        hostile.push(("ring indexes far apart", s));
        let mut s = good.clone();
        s.queues.pop();
        hostile.push(("a queue missing", s));
        let mut refused = Vec::new();
        for (what, state) in hostile {
            let mut fresh = transport();
            match fresh.restore_state(&state) {
                Err(e) => refused.push((what, e.to_string())),
                Ok(()) => {
                    // Drive it as a guest would: reads, notifies, a reset.
                    for off in [reg::STATUS, reg::QUEUE_NUM_MAX, reg::INTERRUPT_STATUS] {
                        r(&mut fresh, off);
                    }
                    w(&mut fresh, reg::QUEUE_NOTIFY, 0);
                    w(&mut fresh, reg::QUEUE_NOTIFY, 1);
                    w(&mut fresh, reg::QUEUE_NUM, 8);
                    w(&mut fresh, reg::STATUS, 0);
                    assert!(!fresh.is_activated(), "{what}: a reset deactivates");
                }
            }
        }
        let names: Vec<&str> = refused.iter().map(|(w, _)| *w).collect();
        assert_eq!(
            names,
            [
                "active without a driver",
                "rings outside guest memory",
                "a queue size that is no power of two",
                "a queue missing"
            ],
            "{refused:?}"
        );
        assert!(
            refused[0].1.contains("state file is corrupt"),
            "{}",
            refused[0].1
        );
    }

    #[test]
    fn identifies_as_virtio_mmio_v2() {
        let mut t = transport();
        assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    }

    #[test]
    fn negotiates_only_offered_features_and_activates() {
        let mut t = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1 | 0b111);
        assert!(t.is_activated());
        assert_eq!(t.acked_features, VIRTIO_F_VERSION_1 | 0b101);
        assert_ne!(t.status() & status::DRIVER_OK, 0);
    }

    #[test]
    fn refuses_features_ok_without_version_1() {
        let mut t = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn queue_registers_are_ignored_before_features_ok() {
        let mut t = transport();
        w(&mut t, reg::QUEUE_NUM, 4);
        w(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn notify_reaches_the_device_and_raises_the_interrupt() {
        let mut t = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        w(&mut t, reg::QUEUE_NOTIFY, 7); // no such queue: ignored
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), super::super::INT_VRING);
        w(&mut t, reg::INTERRUPT_ACK, super::super::INT_VRING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn status_zero_resets_everything() {
        let mut t = transport();
        bring_up(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn queue_size_zero_or_not_a_power_of_two_is_refused_at_activation() {
        for size in [0u32, 3, 17] {
            let mut t = transport();
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            w(&mut t, reg::QUEUE_SEL, 0);
            w(&mut t, reg::QUEUE_NUM, size);
            w(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
            w(&mut t, reg::QUEUE_DRIVER_LOW, 0x1400);
            w(&mut t, reg::QUEUE_DEVICE_LOW, 0x1800);
            w(&mut t, reg::QUEUE_READY, 1);
            let s = r(&mut t, reg::STATUS);
            w(&mut t, reg::STATUS, s | status::DRIVER_OK);
            assert!(!t.is_activated(), "size {size} activated");
            assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
            w(&mut t, reg::QUEUE_NOTIFY, 0); // harmless
                                             // A reset and a proper setup bring the device back.
            w(&mut t, reg::STATUS, 0);
            bring_up(&mut t, VIRTIO_F_VERSION_1);
            assert!(t.is_activated());
        }
    }

    #[test]
    fn odd_width_register_access_is_harmless() {
        let mut t = transport();
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        let mut c = [0u8; 2];
        t.read(reg::CONFIG + 1, &mut c);
        assert_eq!(c, [8, 7]);
    }
}
