//! The virtio-blk device: identity, features, config space, queue loop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::{serve_chain, Disk, ID_BYTES, SECTOR_SHIFT};
use crate::devices::bus::lock;
use crate::devices::virtio::persist::{restore_stateless, DeviceState, RestoreError};
use crate::devices::virtio::{
    read_config_bytes, ready, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

pub const VIRTIO_ID_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
const VIRTIO_BLK_F_RO: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
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
    backing: Backing,
}

enum Backing {
    /// A drive given at start, for the VM's life.
    Fixed(Disk),
    /// A drive slot: a disk whose backing is attached and detached while the VM runs (the
    /// guest sees the capacity change) through the [`DriveSlot`] handle.
    Slot(DriveSlot),
}

/// The control side of a drive slot: what the control API attaches and detaches. The
/// device and its handle share the backing; the control API changes it with the slot's
/// transport locked, so no request is in flight meanwhile.
#[derive(Clone)]
pub struct DriveSlot(Arc<Mutex<SlotBacking>>);

struct SlotBacking {
    disk: Disk,
    held: Option<Attachment>,
}

impl Block {
    /// Opens `path` read-only or read-write; `serial` defaults to the file name.
    pub fn new(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let disk = open_disk(path, read_only, serial)?;
        Ok(Block {
            backing: Backing::Fixed(disk),
        })
    }

    /// An empty drive slot, zero sectors until something is attached through the returned
    /// handle. Its device never offers VIRTIO_BLK_F_RO (features are fixed when the guest
    /// probes it); a read-only attachment refuses writes instead, and the guest mounts it
    /// read-only.
    pub fn slot() -> Result<(Self, DriveSlot), BlockError> {
        let handle = DriveSlot(Arc::new(Mutex::new(SlotBacking {
            disk: empty_disk()?,
            held: None,
        })));
        let block = Block {
            backing: Backing::Slot(handle.clone()),
        };
        Ok((block, handle))
    }

    /// Runs `f` on the disk behind this device.
    fn with_disk<R>(&mut self, f: impl FnOnce(&mut Disk) -> R) -> R {
        match &mut self.backing {
            Backing::Fixed(disk) => f(disk),
            Backing::Slot(slot) => f(&mut lock(&slot.0).disk),
        }
    }

    pub fn sectors(&mut self) -> u64 {
        self.with_disk(|d| d.sectors)
    }
}

impl DriveSlot {
    /// Puts `a` into this slot; returns its capacity in sectors. The caller tells the
    /// guest (a configuration-change interrupt).
    pub fn attach(&self, a: &Attachment) -> Result<u64, BlockError> {
        self.fill(a, || open_disk(&a.path, a.read_only, Some(&a.serial)))
    }

    /// [`DriveSlot::attach`] of a disk the host opened (a jailed VMM opens no path):
    /// `file` is the image, opened read-write unless `a.read_only`; `a.path` names it.
    pub fn attach_opened(&self, a: &Attachment, file: std::fs::File) -> Result<u64, BlockError> {
        self.fill(a, || disk_from(file, &a.path, a.read_only, Some(&a.serial)))
    }

    fn fill(
        &self,
        a: &Attachment,
        disk: impl FnOnce() -> Result<Disk, BlockError>,
    ) -> Result<u64, BlockError> {
        let mut slot = lock(&self.0);
        if let Some(held) = &slot.held {
            return Err(BlockError::SlotBusy(held.path.clone()));
        }
        slot.disk = disk()?;
        slot.held = Some(a.clone());
        Ok(slot.disk.sectors)
    }

    /// Empties this slot (zero sectors again); returns what it held. The guest must have
    /// stopped using the disk (unmounted, buffers flushed) first.
    pub fn detach(&self) -> Result<Option<Attachment>, BlockError> {
        // The empty backing first: if it cannot be had, the slot still holds its disk.
        let empty = empty_disk()?;
        let mut slot = lock(&self.0);
        slot.disk = empty;
        Ok(slot.held.take())
    }

    pub fn attachment(&self) -> Option<Attachment> {
        lock(&self.0).held.clone()
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
    use std::os::unix::fs::OpenOptionsExt;
    let open_err = |source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer, with the
    // slot's lock held and the guest's next access to the device stuck behind it. The
    // flag does nothing to reads and writes of files and block devices.
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open_err)?;
    disk_from(file, path, read_only, serial)
}

/// A disk over the open `file` (named `path` in errors): its size, and its identity.
fn disk_from(
    mut file: std::fs::File,
    path: &Path,
    read_only: bool,
    serial: Option<&str>,
) -> Result<Disk, BlockError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let open_err = |source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    };
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
        if let Backing::Fixed(disk) = &self.backing {
            if disk.read_only {
                f |= VIRTIO_BLK_F_RO;
            }
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (in sectors) is offered; the rest of the layout reads as zero.
        let sectors = match &self.backing {
            Backing::Fixed(disk) => disk.sectors,
            Backing::Slot(slot) => lock(&slot.0).disk.sectors,
        };
        read_config_bytes(&sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn save_device(&self) -> DeviceState {
        match &self.backing {
            Backing::Fixed(_) => DeviceState::Stateless,
            Backing::Slot(slot) => DeviceState::DriveSlot(slot.attachment()),
        }
    }

    /// A slot reopens what it held when the snapshot was taken (the guest may have it
    /// mounted); a fixed drive takes its backing from the configuration.
    fn restore_device(&mut self, state: &DeviceState) -> Result<(), RestoreError> {
        let slot = match &self.backing {
            Backing::Fixed(_) => return restore_stateless(state),
            Backing::Slot(slot) => slot,
        };
        match state {
            DeviceState::DriveSlot(None) => Ok(()),
            DeviceState::DriveSlot(Some(a)) => {
                slot.attach(a)
                    .map(drop)
                    .map_err(|source| RestoreError::Reattach {
                        path: a.path.clone(),
                        source,
                    })
            }
            other => Err(RestoreError::Kind {
                found: other.kind(),
                want: "drive slot",
            }),
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        ready(queues, index)
            .map(|q| UsedQueues::one_if(index, self.with_disk(|disk| serve(disk, q, mem))))
            .unwrap_or_default()
    }
}

/// Serves every available request of `queue` from `disk`; returns whether any buffer was
/// used.
fn serve(disk: &mut Disk, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
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
            let len = serve_chain(disk, chain, mem);
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
                crate::guest_warn!("virtio-blk: avail ring claims buffers that cannot be taken");
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
                let (_block, slot) = Block::slot().unwrap();
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
        let (block, slot) = Block::slot().unwrap();
        let mut t = MmioTransport::new(Box::new(block), mem, irq.clone()).unwrap();
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
        assert_eq!(slot.attach(&a).unwrap(), 16);
        t.config_changed();
        assert_eq!(capacity(&mut t), 16);
        assert_ne!(reg32(&mut t, reg::CONFIG_GENERATION), generation);
        assert_eq!(
            irq.status() & crate::devices::virtio::INT_CONFIG,
            crate::devices::virtio::INT_CONFIG
        );
        let busy = slot.attach(&a).unwrap_err();
        assert!(matches!(busy, BlockError::SlotBusy(_)), "{busy}");

        // What the slot holds survives a snapshot: a restored device reopens it.
        let saved = t.save_state().device;
        let (mut restored, restored_slot) = Block::slot().unwrap();
        restored.restore_device(&saved).unwrap();
        assert_eq!(restored_slot.attachment(), Some(a.clone()));
        assert_eq!(restored.sectors(), 16);

        assert_eq!(slot.detach().unwrap(), Some(a));
        t.config_changed();
        assert_eq!(capacity(&mut t), 0);
        assert_eq!(slot.detach().unwrap(), None);
    }

    #[test]
    fn a_fixed_drive_refuses_a_slot_s_state() {
        let d = Driver::new(false);
        let mut fixed = Block::new(&d.path, true, None).unwrap();
        let e = fixed
            .restore_device(&DeviceState::DriveSlot(None))
            .unwrap_err();
        assert!(e.to_string().contains("drive slot state"), "{e}");
        fixed.restore_device(&DeviceState::Stateless).unwrap();
    }

    #[test]
    fn a_read_only_attachment_refuses_writes() {
        let mut d = Driver::new(false);
        // Swap the fixed disk for a slot holding the same file read-only.
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let (block, slot) = Block::slot().unwrap();
        slot.attach(&Attachment {
            path: d.path.clone(),
            read_only: true,
            serial: "ro".into(),
        })
        .unwrap();
        d.transport = MmioTransport::new(Box::new(block), d.mem.clone(), irq).unwrap();
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
