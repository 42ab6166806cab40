//! Guest RAM backed by a memfd.
//!
//! A memfd (rather than anonymous memory) is what later lets a snapshot write the guest's
//! memory out and a restore map a template copy-on-write. It also lets the VMM's own memory
//! use be measured apart from guest RAM: guest pages are shared-memory pages in the VMM's
//! RSS (`RssShmem`), everything else is the VMM itself.
//!
//! A snapshot writes guest RAM to a file laid out exactly like the memfd (the RAM ranges
//! one after the other), sparse: a page that is all zero is a hole. A restore maps that file
//! `MAP_PRIVATE`: the guest reads the file's pages through the page cache, shared by every VM
//! restored from the same file, and a page it writes becomes its own anonymous copy.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

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
    #[error("{op} {path}")]
    File {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("memory file {path} holds {found} bytes; the snapshot's guest has {want}")]
    FileSize {
        path: std::path::PathBuf,
        found: u64,
        want: u64,
    },
    #[error("map {path} at guest address {addr:#x}")]
    MapFile {
        path: std::path::PathBuf,
        addr: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory regions")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

const PAGE: usize = 4096;

/// Guest memory and what backs it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    /// The memfd a booted VM's RAM lives in; `None` for RAM mapped privately from a
    /// snapshot's memory file.
    pub memfd: Option<File>,
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
    Ok(GuestRam {
        memory,
        memfd: Some(memfd),
    })
}

/// Maps a snapshot's memory file copy-on-write as `size` bytes of guest RAM.
pub fn map_snapshot_memory(path: &Path, size: u64) -> Result<GuestRam, MemoryError> {
    let file_err = |op| {
        move |source| MemoryError::File {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = File::open(path).map_err(file_err("open"))?;
    let found = file.metadata().map_err(file_err("stat"))?.len();
    if found != size {
        return Err(MemoryError::FileSize {
            path: path.to_path_buf(),
            found,
            want: size,
        });
    }
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let fo = FileOffset::new(file.try_clone().map_err(MemoryError::Dup)?, offset);
        let map_err = |source| MemoryError::MapFile {
            path: path.to_path_buf(),
            addr: start,
            source,
        };
        let region = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(fo)
            .build()
            .map_err(map_err)?;
        regions.push(GuestRegionMmap::new(region, GuestAddress(start)).ok_or(
            MemoryError::Regions(vm_memory::GuestRegionCollectionError::UnsortedMemoryRegions),
        )?);
        offset += len;
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        memory,
        memfd: None,
    })
}

/// Byte ranges of the memfd that may hold data (`SEEK_DATA`/`SEEK_HOLE`): pages the guest
/// never touched are holes and are not even read.
fn data_extents(memfd: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = memfd.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on a descriptor we own; the result is checked.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                // No SEEK_DATA here: treat the rest as data.
                out.push((pos, len));
            }
            break; // ENXIO: nothing but holes after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            len
        } else {
            (hole as u64).min(len)
        };
        out.push((data as u64, end));
        pos = end;
    }
    out
}

/// Writes guest RAM to `out` in the memfd's layout, leaving a hole for every zero page.
/// The vCPUs must be paused. Returns the bytes written (the non-zero pages).
pub fn write_snapshot_memory(
    ram: &GuestRam,
    out: &File,
    out_path: &Path,
) -> Result<u64, MemoryError> {
    let io = |op| {
        move |source| MemoryError::File {
            op,
            path: out_path.to_path_buf(),
            source,
        }
    };
    let total: u64 = ram.memory.iter().map(|r| r.len()).sum();
    out.set_len(0).map_err(io("truncate"))?;
    let mut written = 0u64;
    let mut file_offset = 0u64;
    let mut page = [0u8; PAGE];
    for region in ram.memory.iter() {
        let len = region.len();
        let extents = match &ram.memfd {
            Some(memfd) => data_extents(memfd, file_offset + len)
                .into_iter()
                .filter_map(|(s, e)| {
                    let s = s.max(file_offset);
                    (s < e).then_some((s - file_offset, e - file_offset))
                })
                .collect(),
            None => vec![(0, len)],
        };
        for (start, end) in extents {
            let mut at = start & !(PAGE as u64 - 1);
            while at < end {
                let n = (PAGE as u64).min(len - at) as usize;
                region
                    .read_slice(&mut page[..n], vm_memory::MemoryRegionAddress(at))
                    .map_err(|e| io("read guest memory")(std::io::Error::other(e.to_string())))?;
                if page[..n].iter().any(|b| *b != 0) {
                    out.write_all_at(&page[..n], file_offset + at)
                        .map_err(io("write"))?;
                    written += n as u64;
                }
                at += n as u64;
            }
        }
        file_offset += len;
    }
    out.set_len(total).map_err(io("size"))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn memory_is_backed_by_the_memfd() {
        let ram = create_guest_memory(4 << 20).unwrap();
        let memfd = ram.memfd.as_ref().unwrap();
        assert_eq!(memfd.metadata().unwrap().len(), 4 << 20);
        ram.memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(memfd, &mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert_eq!(ram.memory.num_regions(), 1);
    }

    /// A snapshot's memory file is sparse, restores copy-on-write, and the restored
    /// guest's writes never reach the file.
    #[test]
    fn snapshot_memory_is_sparse_and_restores_copy_on_write() {
        use std::os::unix::fs::MetadataExt;
        let size = 8u64 << 20;
        let ram = create_guest_memory(size).unwrap();
        ram.memory
            .write_obj(0x1122_3344_u32, GuestAddress(0x3000))
            .unwrap();
        ram.memory.write_obj(7u8, GuestAddress(size - 1)).unwrap();
        // Touched but zero: no data in the file.
        ram.memory.write_obj(0u64, GuestAddress(0x10_0000)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let out = File::create(&path).unwrap();
        let written = write_snapshot_memory(&ram, &out, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 <= 4 * PAGE as u64,
            "not sparse: {} blocks",
            meta.blocks()
        );

        let restored = map_snapshot_memory(&path, size).unwrap();
        assert!(restored.memfd.is_none());
        let v: u32 = restored.memory.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(v, 0x1122_3344);
        assert_eq!(
            restored
                .memory
                .read_obj::<u8>(GuestAddress(size - 1))
                .unwrap(),
            7
        );
        restored
            .memory
            .write_obj(0xffff_ffff_u32, GuestAddress(0x3000))
            .unwrap();
        let again = map_snapshot_memory(&path, size).unwrap();
        assert_eq!(
            again.memory.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0x1122_3344
        );

        // A snapshot of a restored VM reads its private pages.
        let path2 = dir.path().join("memory2");
        write_snapshot_memory(&restored, &File::create(&path2).unwrap(), &path2).unwrap();
        let third = map_snapshot_memory(&path2, size).unwrap();
        assert_eq!(
            third.memory.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0xffff_ffff
        );

        let err = map_snapshot_memory(&path, size * 2).unwrap_err();
        assert!(err.to_string().contains("holds 8388608 bytes"), "{err}");
    }
}
