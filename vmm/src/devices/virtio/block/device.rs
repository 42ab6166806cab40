//! The virtio-blk device: identity, features, config space, queue loop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::{serve_chain, Disk, ID_BYTES, SECTOR_SHIFT};
use crate::devices::virtio::{
    read_config_bytes, ready, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

pub const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const QUEUE_SIZE: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk serial {0:?} is longer than {ID_BYTES} bytes")]
    SerialTooLong(String),
    #[error("disk image {path}: a {kind}, not a regular file or block device")]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error("this drive is fixed at start; only drive slots take attachments")]
    NotASlot,
    #[error("the slot holds {0} already: detach it first")]
    SlotBusy(PathBuf),
}

/// What a drive slot holds: kept in snapshots so a restored VM reopens it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
}

pub struct Block {
    disk: Disk,
    /// `Some` for a drive slot: a disk whose backing is attached and detached while the VM
    /// runs (the guest sees the capacity change), holding the current attachment if any.
    slot: Option<Option<Attachment>>,
}

impl Block {
    /// Opens `path` read-only or read-write; `serial` defaults to the file name.
    pub fn new(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let disk = open_disk(path, read_only, serial)?;
        Ok(Block { disk, slot: None })
    }

    /// An empty drive slot: zero sectors until something is attached. Its device never
    /// offers VIRTIO_BLK_F_RO (features are fixed when the guest probes it); a read-only
    /// attachment refuses writes instead, and the guest mounts it read-only.
    pub fn slot() -> Result<Self, BlockError> {
        Ok(Block {
            disk: empty_disk()?,
            slot: Some(None),
        })
    }

    /// Puts `a` into this slot; returns its capacity in sectors. The caller tells the
    /// guest (a configuration-change interrupt).
    pub fn attach(&mut self, a: &Attachment) -> Result<u64, BlockError> {
        match &self.slot {
            None => return Err(BlockError::NotASlot),
            Some(Some(held)) => return Err(BlockError::SlotBusy(held.path.clone())),
            Some(None) => {}
        }
        self.disk = open_disk(&a.path, a.read_only, Some(&a.serial))?;
        self.slot = Some(Some(a.clone()));
        Ok(self.disk.sectors)
    }

    /// Empties this slot (zero sectors again); returns what it held. The guest must have
    /// stopped using the disk (unmounted, buffers flushed) first.
    pub fn detach(&mut self) -> Result<Option<Attachment>, BlockError> {
        if self.slot.is_none() {
            return Err(BlockError::NotASlot);
        }
        // The empty backing first: if it cannot be had, the slot still holds its disk.
        let empty = empty_disk()?;
        self.disk = empty;
        Ok(self.slot.as_mut().and_then(Option::take))
    }

    pub fn attachment(&self) -> Option<&Attachment> {
        self.slot.as_ref().and_then(Option::as_ref)
    }

    pub fn is_slot(&self) -> bool {
        self.slot.is_some()
    }
}

/// The backing of an empty slot: no sectors, so every read or write is out of range.
fn empty_disk() -> Result<Disk, BlockError> {
    let path = Path::new("/dev/null");
    let file = std::fs::File::open(path).map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Disk {
        file,
        sectors: 0,
        read_only: true,
        id: [0u8; ID_BYTES],
    })
}

fn open_disk(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Disk, BlockError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let open_err = |source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer, with the
    // slot's lock held and the guest's next access to the device stuck behind it. The
    // flag does nothing to reads and writes of files and block devices.
    let mut file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open_err)?;
    let kind = file.metadata().map_err(open_err)?.file_type();
    let len = if kind.is_file() {
        file.metadata().map_err(open_err)?.len()
    } else if kind.is_block_device() {
        file.seek(SeekFrom::End(0)).map_err(open_err)?
    } else {
        let kind = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_socket() {
            "socket"
        } else {
            "directory"
        };
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
            kind,
        });
    };
    let id = match serial {
        Some(s) if s.len() > ID_BYTES => return Err(BlockError::SerialTooLong(s.into())),
        Some(s) => disk_id(s.as_bytes()),
        // Without an explicit serial the file name identifies the disk, truncated.
        None => disk_id(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        ),
    };
    let sectors = len >> SECTOR_SHIFT;
    Ok(Disk {
        file,
        sectors,
        read_only,
        id,
    })
}

impl Block {
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }
}

/// The GET_ID answer: the serial, NUL-padded (and truncated) to 20 bytes.
fn disk_id(serial: &[u8]) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let n = serial.len().min(ID_BYTES);
    id[..n].copy_from_slice(&serial[..n]);
    id
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only && self.slot.is_none() {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (in sectors) is offered; the rest of the layout reads as zero.
        read_config_bytes(&self.disk.sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn save_device(&self) -> Vec<u8> {
        match &self.slot {
            Some(held) => postcard::to_stdvec(held).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// A slot reopens what it held when the snapshot was taken (the guest may have it
    /// mounted); a fixed drive takes its backing from the configuration.
    fn restore_device(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.slot.is_none() || bytes.is_empty() {
            return Ok(());
        }
        let held: Option<Attachment> =
            postcard::from_bytes(bytes).map_err(|e| format!("drive slot state: {e}"))?;
        if let Some(a) = held {
            self.attach(&a).map_err(|e| {
                format!("reattach {}: {}", a.path.display(), crate::error_chain(&e))
            })?;
        }
        Ok(())
    }

    fn as_block_mut(&mut self) -> Option<&mut Block> {
        Some(self)
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        ready(queues, index)
            .map(|q| UsedQueues::one_if(index, self.serve(q, mem)))
            .unwrap_or_default()
    }
}

impl Block {
    /// Serves every available request of `queue`; returns whether any buffer was used.
    fn serve(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            if let Err(e) = queue.disable_notification(mem) {
                crate::guest_warn!("virtio-blk: {e}");
                return used;
            }
            let mut progressed = false;
            loop {
                // `iter` refuses an avail index more than a ring's length ahead; a guest
                // that writes one gets no more service from this queue until it resets.
                let chain = match queue.iter(mem) {
                    Ok(mut available) => available.next(),
                    Err(e) => {
                        crate::guest_warn!("virtio-blk: stopped serving the queue: {e}");
                        return used;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let len = serve_chain(&mut self.disk, chain, mem);
                if let Err(e) = queue.add_used(mem, head, len) {
                    crate::guest_warn!("virtio-blk: cannot return descriptor {head}: {e}");
                }
                used = true;
                progressed = true;
            }
            match queue.enable_notification(mem) {
                // More arrived while notifications were off: go round again.
                Ok(true) if progressed => continue,
                // "More available" yet nothing could be taken: the ring is inconsistent.
                // Looping would spin the thread forever on a guest's say-so.
                Ok(true) => {
                    crate::guest_warn!(
                        "virtio-blk: avail ring claims buffers that cannot be taken"
                    );
                    return used;
                }
                Ok(false) => return used,
                Err(e) => {
                    crate::guest_warn!("virtio-blk: {e}");
                    return used;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A test-side virtio driver: descriptor tables and rings written into guest memory by
    //! hand, the device driven through the real MMIO transport.
    use std::sync::Arc;

    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::block::request::*;
    use crate::devices::virtio::mmio::{reg, tests::bring_up_queues, MmioTransport};
    use crate::devices::virtio::Interrupt;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const HEADER: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x7000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Driver {
        mem: GuestMemoryMmap,
        transport: MmioTransport,
        next_avail: u16,
        _file: tempfile::NamedTempFile,
        path: std::path::PathBuf,
    }

    impl Driver {
        fn new(read_only: bool) -> Self {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, &vec![0u8; 8 * 512]).unwrap();
            let path = file.path().to_path_buf();
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let block = Block::new(&path, read_only, Some("hull-test-disk")).unwrap();
            let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            let mut transport = MmioTransport::new(Box::new(block), mem.clone(), irq).unwrap();
            bring_up_queues(&mut transport, &[(DESC, AVAIL, USED)]);
            Driver {
                mem,
                transport,
                next_avail: 0,
                _file: file,
                path,
            }
        }

        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let base = GuestAddress(DESC + u64::from(i) * 16);
            self.mem.write_obj(addr, base).unwrap();
            self.mem.write_obj(len, base.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, base.unchecked_add(12)).unwrap();
            self.mem.write_obj(next, base.unchecked_add(14)).unwrap();
        }

        /// Submits a chain: header, optional data (device-writable for reads), status.
        fn submit(&mut self, type_: u32, sector: u64, data: Option<(u32, bool)>) -> (u8, u32) {
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&type_.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&hdr, GuestAddress(HEADER)).unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            match data {
                Some((len, device_writes)) => {
                    self.desc(0, HEADER, 16, F_NEXT, 1);
                    let f = if device_writes { F_WRITE } else { 0 };
                    self.desc(1, DATA, len, f | F_NEXT, 2);
                    self.desc(2, STATUS, 1, F_WRITE, 0);
                }
                None => {
                    self.desc(0, HEADER, 16, F_NEXT, 1);
                    self.desc(1, STATUS, 1, F_WRITE, 0);
                }
            }
            let slot = AVAIL + 4 + 2 * u64::from(self.next_avail % 16);
            self.mem.write_obj(0u16, GuestAddress(slot)).unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
            self.mem
                .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
                .unwrap();
            self.transport.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
            let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            assert_eq!(used_idx, self.next_avail, "request was not completed");
            let elem = USED + 4 + 8 * u64::from((used_idx - 1) % 16);
            let used_len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), used_len)
        }
    }

    #[test]
    fn write_then_read_round_trips_through_the_file() {
        let mut d = Driver::new(false);
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(
            d.submit(VIRTIO_BLK_T_OUT, 2, Some((1024, false))),
            (VIRTIO_BLK_S_OK, 1)
        );
        let on_disk = std::fs::read(&d.path).unwrap();
        assert_eq!(&on_disk[1024..2048], &pattern[..]);
        assert!(on_disk[..1024].iter().all(|b| *b == 0));

        d.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(
            d.submit(VIRTIO_BLK_T_IN, 2, Some((1024, true))),
            (VIRTIO_BLK_S_OK, 1025)
        );
        let mut back = vec![0u8; 1024];
        d.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(d.submit(VIRTIO_BLK_T_FLUSH, 0, None), (VIRTIO_BLK_S_OK, 1));
    }

    #[test]
    fn read_only_disk_rejects_writes_and_keeps_the_file() {
        let mut d = Driver::new(true);
        d.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        let (status, _) = d.submit(VIRTIO_BLK_T_OUT, 0, Some((512, false)));
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert!(std::fs::read(&d.path).unwrap().iter().all(|b| *b == 0));
        assert_ne!(
            d.transport_features() & (1 << 5),
            0,
            "VIRTIO_BLK_F_RO offered"
        );
    }

    #[test]
    fn requests_past_the_end_fail_and_the_next_one_works() {
        let mut d = Driver::new(false);
        assert_eq!(
            d.submit(VIRTIO_BLK_T_IN, 7, Some((1024, true))).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            d.submit(VIRTIO_BLK_T_IN, u64::MAX, Some((512, true))).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            d.submit(VIRTIO_BLK_T_IN, 0, Some((100, true))).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            d.submit(VIRTIO_BLK_T_IN, 7, Some((512, true))).0,
            VIRTIO_BLK_S_OK
        );
    }

    #[test]
    fn avail_index_far_ahead_of_the_ring_does_not_hang_the_device() {
        let mut d = Driver::new(false);
        d.mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
        d.transport.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
        let used_idx: u16 = d.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 0, "nothing was served from a corrupt ring");
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let mut d = Driver::new(false);
        assert_eq!(d.submit(99, 0, None).0, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mut d = Driver::new(true);
        let (status, len) = d.submit(VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
        assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 20];
        d.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..14], b"hull-test-disk");
        assert!(id[14..].iter().all(|b| *b == 0));
    }

    #[test]
    fn config_space_reports_capacity_in_sectors() {
        let mut d = Driver::new(false);
        let mut cap = [0u8; 8];
        d.transport.read(reg::CONFIG, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
    }

    fn reg32(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn capacity(t: &mut MmioTransport) -> u64 {
        let mut cap = [0u8; 8];
        t.read(reg::CONFIG, &mut cap);
        u64::from_le_bytes(cap)
    }

    #[test]
    fn a_slot_refuses_fifos_and_character_devices_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, read_only, kind) in [
            (fifo.clone(), true, "FIFO"),
            (fifo, false, "FIFO"),
            (PathBuf::from("/dev/zero"), true, "character device"),
            (dir.path().to_path_buf(), true, "directory"),
        ] {
            let (tx, rx) = std::sync::mpsc::channel();
            let a = Attachment {
                path: path.clone(),
                read_only,
                serial: "x".into(),
            };
            std::thread::spawn(move || {
                let mut slot = Block::slot().unwrap();
                let _ = tx.send(slot.attach(&a).map_err(|e| e.to_string()));
            });
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("attaching {} hung", path.display()));
            let e = got.unwrap_err();
            assert!(e.contains(kind) || e.contains("open disk image"), "{e}");
        }
    }

    #[test]
    fn a_drive_slot_takes_and_gives_back_disks_announcing_each_change() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 16 * 512]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(Box::new(Block::slot().unwrap()), mem, irq.clone()).unwrap();
        bring_up_queues(&mut t, &[(DESC, AVAIL, USED)]);
        assert_eq!(capacity(&mut t), 0, "an empty slot has no sectors");
        assert_eq!(
            reg32(&mut t, reg::DEVICE_FEATURES) & (VIRTIO_BLK_F_RO as u32),
            0,
            "a slot never offers RO: features are fixed at probe"
        );
        let generation = reg32(&mut t, reg::CONFIG_GENERATION);

        let a = Attachment {
            path: file.path().to_path_buf(),
            read_only: true,
            serial: "hull0-0".into(),
        };
        assert_eq!(t.block_mut().unwrap().attach(&a).unwrap(), 16);
        t.config_changed();
        assert_eq!(capacity(&mut t), 16);
        assert_ne!(reg32(&mut t, reg::CONFIG_GENERATION), generation);
        assert_eq!(
            irq.status() & crate::devices::virtio::INT_CONFIG,
            crate::devices::virtio::INT_CONFIG
        );
        let busy = t.block_mut().unwrap().attach(&a).unwrap_err();
        assert!(matches!(busy, BlockError::SlotBusy(_)), "{busy}");

        // What the slot holds survives a snapshot: a restored device reopens it.
        let saved = t.block_mut().unwrap().save_device();
        let mut restored = Block::slot().unwrap();
        restored.restore_device(&saved).unwrap();
        assert_eq!(restored.attachment(), Some(&a));
        assert_eq!(restored.sectors(), 16);

        assert_eq!(t.block_mut().unwrap().detach().unwrap(), Some(a));
        t.config_changed();
        assert_eq!(capacity(&mut t), 0);
        assert_eq!(t.block_mut().unwrap().detach().unwrap(), None);
    }

    #[test]
    fn a_fixed_drive_is_not_a_slot() {
        let mut d = Driver::new(false);
        let block = d.transport.block_mut().unwrap();
        assert!(!block.is_slot());
        assert!(matches!(block.detach(), Err(BlockError::NotASlot)));
        let a = Attachment {
            path: d.path.clone(),
            read_only: true,
            serial: "x".into(),
        };
        assert!(matches!(block.attach(&a), Err(BlockError::NotASlot)));
    }

    #[test]
    fn a_read_only_attachment_refuses_writes() {
        let mut d = Driver::new(false);
        // Swap the fixed disk for a slot holding the same file read-only.
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut slot = Block::slot().unwrap();
        slot.attach(&Attachment {
            path: d.path.clone(),
            read_only: true,
            serial: "ro".into(),
        })
        .unwrap();
        d.transport = MmioTransport::new(Box::new(slot), d.mem.clone(), irq).unwrap();
        bring_up_queues(&mut d.transport, &[(DESC, AVAIL, USED)]);
        d.next_avail = 0;
        let (status, _) = d.submit(VIRTIO_BLK_T_OUT, 0, Some((512, false)));
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        let (status, _) = d.submit(VIRTIO_BLK_T_IN, 0, Some((512, true)));
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    #[test]
    fn rejects_overlong_serial() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            Block::new(f.path(), true, Some("123456789012345678901")),
            Err(BlockError::SerialTooLong(_))
        ));
    }

    impl Driver {
        fn transport_features(&mut self) -> u64 {
            let mut lo = [0u8; 4];
            let mut hi = [0u8; 4];
            self.transport
                .write(reg::DEVICE_FEATURES_SEL, &0u32.to_le_bytes());
            self.transport.read(reg::DEVICE_FEATURES, &mut lo);
            self.transport
                .write(reg::DEVICE_FEATURES_SEL, &1u32.to_le_bytes());
            self.transport.read(reg::DEVICE_FEATURES, &mut hi);
            u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32)
        }
    }
}
