//! KVM state: the VM, its guest memory and its vCPUs. Almost every `unsafe` block and every
//! KVM ioctl of the VMM lives under this module.
pub mod emulation;
pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
