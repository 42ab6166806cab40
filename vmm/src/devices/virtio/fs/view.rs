//! The fs device's window on guest RAM and on its rings through the vm-memory 0.17 and
//! virtio-queue 0.17 types that fuse-backend-rs is built against. Everything else in the
//! VMM uses 0.18; the views cover the same host mappings, so nothing is copied.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vm_memory_fuse as vm17;

pub type Mem17 = vm17::GuestMemoryMmap<()>;
pub type Queue17 = virtio_queue_fuse::Queue;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("guest memory region at {addr:#x} has no host mapping")]
    NoHostAddress { addr: u64 },
    #[error("viewing guest memory region at {addr:#x}: {reason}")]
    Region { addr: u64, reason: String },
    #[error("queue {index}: {reason}")]
    Queue { index: usize, reason: String },
}

/// A 0.17 view of `mem`. The caller must keep `mem` (which owns the mappings) alive for
/// as long as the view is used; [`super::worker`] holds a clone of it beside the view.
pub fn memory(mem: &GuestMemoryMmap) -> Result<Mem17, ViewError> {
    let mut regions = Vec::new();
    for region in mem.iter() {
        let addr = region.start_addr().0;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| ViewError::NoHostAddress { addr })?;
        let len = region.len() as usize;
        // SAFETY: `host..host+len` is a live read-write mapping owned by `mem`'s region;
        // the view does not own it (a raw-pointer region is never unmapped on drop), and
        // the worker keeps a clone of `mem` beside the view, so the mapping outlives it.
        let raw = unsafe {
            vm17::MmapRegion::<()>::build_raw(
                host,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
            )
        }
        .map_err(|e| ViewError::Region {
            addr,
            reason: e.to_string(),
        })?;
        let r =
            vm17::GuestRegionMmap::new(raw, vm17::GuestAddress(addr)).ok_or(ViewError::Region {
                addr,
                reason: "overflows the address space".into(),
            })?;
        regions.push(r);
    }
    vm17::GuestMemoryMmap::from_regions(regions).map_err(|e| ViewError::Region {
        addr: 0,
        reason: e.to_string(),
    })
}

/// A 0.17 queue with the configuration and position of the transport's queue `q`.
pub fn queue(index: usize, q: &virtio_queue::Queue) -> Result<Queue17, ViewError> {
    let s = q.state();
    let state = virtio_queue_fuse::QueueState {
        max_size: s.max_size,
        next_avail: s.next_avail,
        next_used: s.next_used,
        event_idx_enabled: s.event_idx_enabled,
        size: s.size,
        ready: s.ready,
        desc_table: s.desc_table,
        avail_ring: s.avail_ring,
        used_ring: s.used_ring,
    };
    Queue17::try_from(state).map_err(|e| ViewError::Queue {
        index,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vm_memory_fuse::Bytes as _;

    #[test]
    fn the_view_sees_the_same_bytes_both_ways() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x1000),
        ])
        .unwrap();
        let view = memory(&mem).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x20010))
            .unwrap();
        let seen: u32 = view.read_obj(vm17::GuestAddress(0x20010)).unwrap();
        assert_eq!(seen, 0xdead_beef);
        view.write_obj(7u64, vm17::GuestAddress(0x100)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x100)).unwrap(), 7);
        // The gap between the regions is not guest memory in either.
        assert!(view.read_obj::<u8>(vm17::GuestAddress(0x18000)).is_err());
    }
}
