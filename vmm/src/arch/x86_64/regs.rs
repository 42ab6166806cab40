//! CPU state at the kernel's 64-bit entry point: long mode with paging on, flat segments
//! from a small GDT, identity-mapped first GiB, `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page-table entry bits: present, writable, page size (2 MiB).
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("write {what} to guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The boot GDT: null, 64-bit code, data, TSS (the last only so `tr` has something valid).
pub const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_INDEX: u8 = 1;
const DATA_INDEX: u8 = 2;
const TSS_INDEX: u8 = 3;

/// Packs a GDT descriptor from flags (access byte in bits 0-7, flags nibble in bits 12-15),
/// base and limit, as the architecture lays it out.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The `kvm_segment` a GDT descriptor describes, loaded with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, a null IDT and the identity page tables for the first GiB.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |what, source| RegsError::Write { what, source };
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|e| write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| write("IDT", e))?;
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(|e| write("PML4", e))?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(|e| write("PDPT", e))?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PDE_HUGE | PTE_PRESENT_RW,
            GuestAddress(PDE_START + i * 8),
        )
        .map_err(|e| write("page directory", e))?;
    }
    Ok(())
}

/// Special registers for the 64-bit entry, applied on top of what KVM reports.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[CODE_INDEX as usize], CODE_INDEX);
    let data = segment_from_gdt(GDT[DATA_INDEX as usize], DATA_INDEX);
    let tss = segment_from_gdt(GDT[TSS_INDEX as usize], TSS_INDEX);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers for the boot vCPU: entry point, boot stack, zero page in `rsi`.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// x87 and SSE control words at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_into_long_mode_segments() {
        let cs = segment_from_gdt(GDT[1], 1);
        assert_eq!(cs.l, 1, "64-bit code");
        assert_eq!(cs.db, 0);
        assert_eq!(cs.present, 1);
        assert_eq!(cs.selector, 8);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.type_, 0xb);
        let ds = segment_from_gdt(GDT[2], 2);
        assert_eq!(ds.db, 1);
        assert_eq!(ds.type_, 0x3);
        assert_eq!(segment_from_gdt(GDT[0], 0).unusable, 1);
    }

    #[test]
    fn gdt_entry_packs_base_and_limit() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0xabcde); // G = 0: byte granularity
        let s = segment_from_gdt(e, 3);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }

    #[test]
    fn sregs_enable_long_mode_with_paging() {
        let s = boot_sregs(kvm_sregs::default());
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pde_last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde_last & !0xfff, 511 << 21);
        assert_ne!(pde_last & PDE_HUGE, 0);
    }
}
