//! virtio-blk backed by a raw image file.
//!
//! The format is whatever the configuration says (raw); the file is never probed for a
//! qcow2 or other header, so a guest cannot change how its own disk is interpreted.
mod device;
pub mod request;
#[cfg(test)]
mod robustness;

pub use device::{Attachment, Block, BlockError, DriveSlot, VIRTIO_ID_BLOCK};
