//! Guest RAM backed by a memfd.
//!
//! A memfd (rather than anonymous memory) is what later lets a snapshot write the guest's
//! memory out and a restore map a template copy-on-write. It also lets the VMM's own memory
//! use be measured apart from guest RAM: guest pages are shared-memory pages in the VMM's
//! RSS (`RssShmem`), everything else is the VMM itself.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("create memfd for guest memory")]
    Memfd(#[source] std::io::Error),
    #[error("size guest memory memfd to {size} bytes")]
    SetLen {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("duplicate memfd")]
    Dup(#[source] std::io::Error),
}

/// Guest memory and the memfd that backs it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub memfd: File,
}

/// Creates `size` bytes of guest RAM laid out around the MMIO gap.
pub fn create_guest_memory(size: u64) -> Result<GuestRam, MemoryError> {
    let name: &CStr = c"hull-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string and the flags are valid for
    // memfd_create; the return value is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd
        .set_len(size)
        .map_err(|source| MemoryError::SetLen { size, source })?;

    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(size) {
        let file = memfd.try_clone().map_err(MemoryError::Dup)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(file, offset)),
        ));
        offset += len;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
    Ok(GuestRam { memory, memfd })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn memory_is_backed_by_the_memfd() {
        let ram = create_guest_memory(4 << 20).unwrap();
        assert_eq!(ram.memfd.metadata().unwrap().len(), 4 << 20);
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&ram.memfd, &mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
