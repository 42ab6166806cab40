//! Parsing and executing one virtio-blk request from a descriptor chain.
//!
//! Layout (virtio 1.2, 5.2.6): a 16-byte header in device-readable buffers, then the data
//! (readable for writes, writable for reads and GET_ID), then one writable status byte.
//! Buffers may be split across descriptors arbitrarily; `virtio-queue`'s `Reader` and
//! `Writer` walk them with bounds and overflow checks. A malformed request is answered
//! with an error status when there is a status byte to write, and otherwise consumed with
//! a used length of 0; it never affects the next request.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Largest chunk copied through a host buffer at a time: bounds VMM memory per request.
const CHUNK: usize = 128 << 10;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// What the disk behind the device is.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub type_: u32,
    pub sector: u64,
}

/// Why a request failed; each maps to a status byte.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request header is shorter than 16 bytes")]
    ShortHeader,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    #[error("sectors [{sector}, +{len} bytes) are past the end of the disk")]
    OutOfRange { sector: u64, len: usize },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("guest buffer access failed: {0}")]
    GuestMemory(String),
    #[error("host I/O failed: {0}")]
    Io(String),
}

impl RequestError {
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

pub fn parse_header(reader: &mut Reader<'_>) -> Result<Header, RequestError> {
    let mut raw = [0u8; 16];
    reader
        .read_exact(&mut raw)
        .map_err(|_| RequestError::ShortHeader)?;
    Ok(Header {
        type_: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        sector: u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default()),
    })
}

impl Disk {
    fn check_range(&self, sector: u64, len: usize) -> Result<u64, RequestError> {
        if len as u64 % SECTOR_SIZE != 0 {
            return Err(RequestError::Unaligned(len));
        }
        let out = RequestError::OutOfRange { sector, len };
        let end_sector = sector
            .checked_add(len as u64 >> SECTOR_SHIFT)
            .ok_or(out.clone())?;
        if end_sector > self.sectors {
            return Err(out);
        }
        Ok(sector << SECTOR_SHIFT)
    }

    /// Runs `header`'s request; returns the number of data bytes written to the guest.
    pub fn execute(
        &mut self,
        header: Header,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> Result<usize, RequestError> {
        let io = |e: std::io::Error| RequestError::Io(e.to_string());
        let guest = |e: std::io::Error| RequestError::GuestMemory(e.to_string());
        match header.type_ {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes();
                let mut offset = self.check_range(header.sector, len)?;
                let mut buf = vec![0u8; len.min(CHUNK)];
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK);
                    self.file.read_exact_at(&mut buf[..n], offset).map_err(io)?;
                    writer.write_all(&buf[..n]).map_err(guest)?;
                    offset += n as u64;
                    left -= n;
                }
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let len = reader.available_bytes();
                let mut offset = self.check_range(header.sector, len)?;
                let mut buf = vec![0u8; len.min(CHUNK)];
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK);
                    reader.read_exact(&mut buf[..n]).map_err(guest)?;
                    self.file.write_all_at(&buf[..n], offset).map_err(io)?;
                    offset += n as u64;
                    left -= n;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(io)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                writer.write_all(&self.id[..n]).map_err(guest)?;
                Ok(n)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

/// Serves one chain; returns the used length to report (data written + status byte).
pub fn serve_chain(
    disk: &mut Disk,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
        log::debug!("virtio-blk: malformed descriptor chain");
        return 0;
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        log::debug!("virtio-blk: request without a status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(data_len) else {
        return 0;
    };
    let (status, written) =
        match parse_header(&mut reader).and_then(|h| disk.execute(h, &mut reader, &mut writer)) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(e) => {
                log::debug!("virtio-blk: request failed: {e}");
                (e.status(), writer.bytes_written())
            }
        };
    if status_writer.write_all(&[status]).is_err() {
        return 0;
    }
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}
