//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and its checks.
//!
//! Every packet starts with a 44-byte little-endian header; a stream packet's payload
//! follows it in the same descriptor chain, split across descriptors however the driver
//! likes. Parsing reads through `virtio-queue`'s `Reader`, which bounds every access to
//! guest RAM; a header that is short, names another socket type, or announces more
//! payload than the chain holds is rejected here, before any connection sees it.

use std::io::Read;

use virtio_queue::Reader;

pub const HEADER_LEN: usize = 44;
/// The host's context ID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// The largest payload a packet may carry, ours or the driver's (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 << 10;

pub const TYPE_STREAM: u16 = 1;

pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive no more, send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain holds {0} bytes, less than a packet header")]
    ShortHeader(usize),
    #[error("payload length {0} is above the {MAX_PAYLOAD}-byte maximum")]
    PayloadTooLong(u32),
    #[error("header announces {announced} payload bytes, the chain holds {present}")]
    PayloadMissing { announced: u32, present: usize },
    #[error("guest memory access failed: {0}")]
    GuestMemory(String),
}

impl Header {
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads a TX packet: the header, then (for RW) its payload into `payload`, which is
/// cleared first. Only RW packets carry payload; any other op's `len` is ignored, as Linux
/// does.
pub fn read_packet(reader: &mut Reader<'_>, payload: &mut Vec<u8>) -> Result<Header, PacketError> {
    payload.clear();
    let mut raw = [0u8; HEADER_LEN];
    if reader.available_bytes() < HEADER_LEN {
        return Err(PacketError::ShortHeader(reader.available_bytes()));
    }
    reader
        .read_exact(&mut raw)
        .map_err(|e| PacketError::GuestMemory(e.to_string()))?;
    let header = Header::from_bytes(&raw);
    if header.op != op::RW || header.len == 0 {
        return Ok(header);
    }
    if header.len as usize > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLong(header.len));
    }
    let present = reader.available_bytes();
    if present < header.len as usize {
        return Err(PacketError::PayloadMissing {
            announced: header.len,
            present,
        });
    }
    payload.resize(header.len as usize, 0);
    reader
        .read_exact(payload)
        .map_err(|e| PacketError::GuestMemory(e.to_string()))?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_bytes() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 256 << 10,
            fwd_cnt: 99,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        // Field offsets from the spec: len at 24, op at 30, fwd_cnt at 40.
        let b = h.to_bytes();
        assert_eq!(b[24], 7);
        assert_eq!(b[30], op::RW as u8);
        assert_eq!(b[40], 99);
    }
}
