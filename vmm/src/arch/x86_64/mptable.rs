//! Intel MultiProcessor Specification 1.4 tables: how a firmware-less guest learns its CPUs,
//! its IOAPIC and how ISA interrupts are wired, without ACPI.
//!
//! The floating pointer sits at the start of the EBDA, where Linux's `smp_scan_config`
//! looks first; the configuration table follows it. Entries are serialised by hand into
//! bytes (little-endian, packed), so no `unsafe` layout assumptions are needed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};

/// APIC ID 255 is the broadcast ID and the IOAPIC takes `vcpus + 1`.
pub const MAX_VCPUS: u8 = 254;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const BUS_ID_ISA: u8 = 0;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
/// Polarity and trigger "conform to the bus" (ISA: active high, edge).
const MP_IRQFLAG_DEFAULT: u16 = 0;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u8),
    #[error("write MP table to guest memory at {EBDA_START:#x}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The MP floating pointer followed by the configuration table, ready to copy to
/// `EBDA_START`.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::TooManyCpus(vcpus));
    }
    let ioapic_id = vcpus + 1;
    let table_addr = EBDA_START as u32 + FLOATING_POINTER_LEN as u32;

    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu); // local APIC ID
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS as u8 {
        entries.push(MP_INTSRC);
        entries.push(MP_IRQ_INT);
        entries.extend_from_slice(&MP_IRQFLAG_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[BUS_ID_ISA, pin, ioapic_id, pin]);
    }
    // LINT0 of the BSP is the legacy PIC's ExtINT; LINT1 of every CPU is NMI.
    entries.push(MP_LINTSRC);
    entries.push(MP_IRQ_EXTINT);
    entries.extend_from_slice(&MP_IRQFLAG_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[BUS_ID_ISA, 0, 0, 0]);
    entries.push(MP_LINTSRC);
    entries.push(MP_IRQ_NMI);
    entries.extend_from_slice(&MP_IRQFLAG_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[BUS_ID_ISA, 0, 0xff, 1]);
    let entry_count = u16::from(vcpus) + 1 + 1 + IOAPIC_PINS as u16 + 2;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"HULL    "); // OEM ID
    header.extend_from_slice(b"MICROVM     "); // product ID
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_LEN);

    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum_complement(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = a configuration table is present
    fp[10] = checksum_complement(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP tables for `vcpus` into guest memory.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

/// The byte that makes `bytes` sum to zero modulo 256.
fn checksum_complement(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for vcpus in [1u8, 2, 17, MAX_VCPUS] {
            let t = build(vcpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer, {vcpus} vCPUs");
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table, {vcpus} vCPUs");
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = build(1).unwrap();
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + 16);
    }

    #[test]
    fn lists_every_cpu_with_only_the_first_as_bsp() {
        let t = build(4).unwrap();
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        for cpu in 0..4usize {
            let e = &table[HEADER_LEN + cpu * 20..];
            assert_eq!(e[0], MP_PROCESSOR);
            assert_eq!(e[1], cpu as u8);
            assert_eq!(e[3] & CPU_BSP != 0, cpu == 0);
        }
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0).is_err());
        assert!(build(255).is_err());
    }
}
