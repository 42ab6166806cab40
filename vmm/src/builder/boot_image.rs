//! The boot image of a booted (not restored) VM: the kernel and initrd loaded with
//! linux-loader, the command line announcing the devices, boot_params with the e820 map,
//! the MP table and the page tables the 64-bit entry needs.

use std::fs::File;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::virtio::VirtioDevices;
use super::BuildError;
use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::cmdline::{self, CmdlineSpec};
use crate::config::{KernelFormat, VmConfig};
use crate::quirks::{self, HostMode};

/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads the kernel and initrd and writes the command line and boot structures; returns
/// the kernel's entry point.
pub(super) fn write_boot_image(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    host: &HostMode,
    virtio: &VirtioDevices,
) -> Result<u64, BuildError> {
    let (entry, setup_header, kernel_end) = load_kernel(config, mem)?;
    let initrd = load_initrd(config, mem, kernel_end)?;
    let cmdline = cmdline::build(&CmdlineSpec {
        quirks: host.is_emulated().then_some(quirks::EMULATED_HOST_CMDLINE),
        devices: &virtio.announced,
        root: virtio.root.clone(),
        extra: &config.cmdline_extra,
    })?;
    log::debug!("kernel command line: {cmdline:?}");
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BuildError::WriteCmdline)?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len() as u32)
        .map_err(|e| BuildError::Cmdline(cmdline::CmdlineError::Invalid(e)))?;

    let params = boot::build_boot_params(&boot::BootSetup {
        mem_size: config.memory_bytes(),
        cmdline_size,
        initrd,
        setup_header,
    })?;
    boot::write_boot_params(mem, &params)?;
    mptable::setup_mptable(mem, config.vcpus)?;
    regs::write_boot_tables(mem)?;
    Ok(entry)
}

fn load_kernel(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
) -> Result<
    (
        u64,
        Option<linux_loader::loader::bootparam::setup_header>,
        u64,
    ),
    BuildError,
> {
    let mut file = File::open(&config.kernel).map_err(|source| BuildError::Open {
        what: "kernel",
        path: config.kernel.clone(),
        source,
    })?;
    let load_err = |source| BuildError::LoadKernel {
        path: config.kernel.clone(),
        source,
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match config.kernel_format {
        KernelFormat::Elf { .. } => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok((r.kernel_load.0, None, r.kernel_end))
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok((
                r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                r.setup_header,
                r.kernel_end,
            ))
        }
    }
}

/// Places the initrd at the top of low RAM (below the MMIO gap), page aligned, as far from
/// the kernel as possible.
fn load_initrd(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    kernel_end: u64,
) -> Result<Option<(u64, u64)>, BuildError> {
    let Some(path) = &config.initrd else {
        return Ok(None);
    };
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        what: "initrd",
        path: path.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BuildError::Open {
            what: "initrd",
            path: path.clone(),
            source,
        })?
        .len();
    let low_end = config.memory_bytes().min(layout::MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BuildError::InitrdTooLarge {
            path: path.clone(),
            size,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BuildError::LoadInitrd {
            path: path.clone(),
            source,
        })?;
    Ok(Some((addr, size)))
}
