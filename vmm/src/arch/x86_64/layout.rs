//! Guest physical memory layout. Low addresses follow the PC conventions Linux expects
//! (the same ones Firecracker uses), so a stock kernel finds what it looks for.

/// GDT used for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// A null IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The BIOS "warm reset" flag word. Linux writes 0x1234 here before a warm reboot and 0
/// before a cold one; hull asks for warm reboots only on panic (`reboot=...,panic_w`).
pub const WARM_RESET_FLAG: u64 = 0x472;
/// Linux's `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the first GiB: PML4, one PDPT, one PD of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the EBDA, where the MP floating pointer and table go.
pub const EBDA_START: u64 = 0x9fc00;
/// The legacy VGA/BIOS hole [640 KiB, 1 MiB) is reported reserved.
pub const EBDA_END: u64 = 0xa0000;
/// Kernels are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x0010_0000;

/// 32-bit MMIO gap: the virtio-mmio windows live here, RAM goes around it.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The IOAPIC and LAPIC windows sit at the top of the gap (fixed by KVM's in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// Each virtio-mmio device gets one 4 KiB window from here upward.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI for virtio devices (0-4 are timer, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The IOAPIC KVM emulates has 24 pins.
pub const IOAPIC_PINS: u32 = 24;

/// The GSI of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// I/O ports of the legacy devices.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const I8042_PORT: u16 = 0x60;
/// The boot-timer port the guest's PID 1 writes its stage markers to (see
/// `devices::boot_timer`). Unused by any PC device Linux probes.
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// Guest RAM ranges for `mem_size` bytes: below the MMIO gap first, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_has_one_range_below_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_vm_splits_around_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1].0, MMIO_GAP_END);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut spans = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        const {
            assert!(
                BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000
            );
            assert!(CMDLINE_START + (CMDLINE_MAX_SIZE as u64) < EBDA_START);
        }
    }
}
