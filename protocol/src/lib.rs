//! hull-protocol: the only crate both sides of the VM boundary depend on.
//!
//! For now it holds the boot-timer contract: the I/O port the guest's PID 1 writes one-byte
//! stage codes to, and what each code means. The agent's RPC service comes with its own
//! module.
#![no_std]

pub mod boot;
