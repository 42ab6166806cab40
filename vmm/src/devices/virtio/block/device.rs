//! The virtio-blk device: identity, features, config space, queue loop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::{serve_chain, Disk, ID_BYTES, SECTOR_SHIFT};
use crate::devices::virtio::{read_config_bytes, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

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
}

pub struct Block {
    disk: Disk,
    config: [u8; 8],
    queue_sizes: [u16; 1],
}

impl Block {
    /// Opens `path` read-only or read-write; `serial` defaults to the file name.
    pub fn new(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
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
        Ok(Block {
            disk: Disk {
                file,
                sectors,
                read_only,
                id,
            },
            config: sectors.to_le_bytes(),
            queue_sizes: [QUEUE_SIZE],
        })
    }

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
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            if let Err(e) = queue.disable_notification(mem) {
                log::warn!("virtio-blk: {e}");
                return used;
            }
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = serve_chain(&mut self.disk, chain, mem);
                if let Err(e) = queue.add_used(mem, head, len) {
                    log::warn!("virtio-blk: cannot return descriptor {head}: {e}");
                }
                used = true;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return used,
                Err(e) => {
                    log::warn!("virtio-blk: {e}");
                    return used;
                }
            }
        }
    }
}
