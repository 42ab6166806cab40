//! A vCPU thread: `KVM_RUN`, and what its exits run synchronously on it: the port and
//! MMIO devices (the serial console writing its output, the i8042 and boot timer, the
//! virtio-mmio registers: a driver's status write activates or resets a device), the
//! emulation-failure recovery, the register dump, and a snapshot's reads of its state
//! (posted to it at the pause gate: KVM's vCPU ioctls belong on the vCPU's thread).
//!
//! Everything a vCPU sets before it first runs (CPUID, boot registers, MSRs, a snapshot's
//! state) is set on the main thread before the vCPU thread starts, so no `KVM_SET_*` but
//! the two an emulation-failure recovery needs is allowed here. `KVM_SET_SIGNAL_MASK` is
//! not used: a pause kicks a vCPU with a signal that interrupts `KVM_RUN`, and
//! `immediate_exit` (a field of the shared `kvm_run` page, no ioctl) completes the last
//! I/O before it parks.
//!
//! A device a driver activates does no I/O here: the transport signals the queues'
//! eventfds and the event loop serves them (`devices/virtio/mmio`).

use seccompiler::SeccompRule;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use kvm_bindings::{
    kvm_cpuid2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};

use super::{allow, ioctls};

// The request numbers as kvm-ioctls computes them (its `kvm_ioctls.rs`), from the same
// structs.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);

/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`): a virtio-net device activated or reset
/// by its driver's status write tells its tap which offloads the guest takes.
pub(super) const TUNSETOFFLOAD: u64 = 0x4004_54d0;

pub(super) fn rules() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        ioctls(&[
            // The run loop; the register dump (SIGUSR1) and the emulation-failure recovery
            // (which reads the instruction through the guest's page tables, moves RIP past
            // it and injects #BP).
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_SET_REGS(),
            KVM_GET_SREGS(),
            KVM_TRANSLATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_SET_VCPU_EVENTS(),
            // A snapshot's reads (vcpu_state::save).
            KVM_GET_CPUID2(),
            KVM_GET_MP_STATE(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_LAPIC(),
            KVM_GET_MSRS(),
            TUNSETOFFLOAD,
        ]),
        // A virtio-net reset drains the frames its tap queued for the old driver.
        allow(libc::SYS_read),
        // A virtio-vsock reset stops watching its connections' sockets.
        allow(libc::SYS_epoll_ctl),
    ]
}
