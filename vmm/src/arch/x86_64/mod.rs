//! x86_64 boot without firmware: the structures Linux's 64-bit boot protocol expects to
//! find in guest memory and the CPU state it expects at its entry point.
pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
