//! Linux x86 boot protocol: `boot_params` (the zero page) with its e820 memory map.
//! See Documentation/arch/x86/boot.rst and zero-page.rst in the kernel tree.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `loadflags`: the kernel was loaded high (at 1 MiB or above).
const LOADED_HIGH: u8 = 0x01;
/// Room in boot_params for e820 entries.
const E820_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the memory map needs {0} e820 entries, boot_params holds {E820_MAX}")]
    TooManyE820Entries(usize),
    #[error("write boot_params to guest memory at {ZERO_PAGE_START:#x}")]
    WriteBootParams(#[source] vm_memory::GuestMemoryError),
}

/// One e820 entry: address, size, type.
pub type E820Entry = (u64, u64, u32);

/// The guest's physical memory map as Linux will see it.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        let (start, len) = if start == 0 {
            (HIMEM_START, len.saturating_sub(HIMEM_START))
        } else {
            (start, len)
        };
        if len > 0 {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

/// What the zero page needs to know about this boot.
#[derive(Debug, Clone, Default)]
pub struct BootSetup {
    pub mem_size: u64,
    /// Length of the command line including its NUL terminator.
    pub cmdline_size: u32,
    /// Guest address and size of an initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// The setup header of a bzImage; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
}

/// Builds the zero page for `setup`.
pub fn build_boot_params(setup: &BootSetup) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = setup.cmdline_size;
    if let Some((addr, size)) = setup.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = e820_map(setup.mem_size);
    if map.len() > E820_MAX {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page into guest memory.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_the_bios_hole_and_covers_all_ram() {
        let map = e820_map(128 << 20);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(
            map[1],
            (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED)
        );
        assert_eq!(map[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn e820_places_ram_above_4g_for_large_guests() {
        let map = e820_map(5 << 30);
        let above: Vec<_> = map.iter().filter(|e| e.0 >= MMIO_GAP_END).collect();
        assert_eq!(above.len(), 1);
        assert_eq!(above[0].1, (5 << 30) - MMIO_GAP_START);
        assert!(map
            .iter()
            .all(|e| e.0 + e.1 <= MMIO_GAP_START || e.0 >= MMIO_GAP_END));
    }

    #[test]
    fn boot_params_carry_magic_cmdline_and_map() {
        let p = build_boot_params(&BootSetup {
            mem_size: 256 << 20,
            cmdline_size: 42,
            initrd: Some((0x0800_0000, 0x1000)),
            setup_header: None,
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0800_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1000);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!({ last.addr } + { last.size }, 256 << 20);
    }

    #[test]
    fn boot_params_keep_a_bzimage_setup_header() {
        let hdr = setup_header {
            kernel_alignment: 0x20_0000,
            version: 0x020f,
            ..Default::default()
        };
        let p = build_boot_params(&BootSetup {
            mem_size: 64 << 20,
            cmdline_size: 1,
            initrd: None,
            setup_header: Some(hdr),
        })
        .unwrap();
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
    }
}
