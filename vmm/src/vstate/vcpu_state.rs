//! Saving and restoring one vCPU's architectural state.
//!
//! KVM's ioctls constrain the order (the kernel's `Documentation/virt/kvm/api.rst`, and the
//! order Firecracker and Cloud Hypervisor settled on):
//! - save: `KVM_GET_MP_STATE` first (it makes the LAPIC accept pending INIT/SIPI, which can
//!   change what the later reads see), then registers, special registers, xsave, XCRs, debug
//!   registers, the LAPIC and the MSRs, and `KVM_GET_VCPU_EVENTS` last (the reads before it
//!   may change the pending events it reports);
//! - restore: CPUID first (it decides which MSRs and xsave features exist), MP state before
//!   the LAPIC, registers and special registers, xsave and XCRs, debug registers, LAPIC,
//!   MSRs, and the vCPU events last.
//!
//! Every vCPU is paused (parked outside `KVM_RUN`) while its state is read.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::msr::{MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE};

/// `KVM_GET_MSRS` takes at most this many entries per call (`KVM_MAX_MSR_ENTRIES`).
const MSR_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {index}: {op}")]
    Ioctl {
        index: u8,
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM took {set} of {want} saved MSRs (the first refused is {refused:#x}); restore on the host that took the snapshot, or one with the same CPU and kernel")]
    MsrsRefused {
        index: u8,
        set: usize,
        want: usize,
        refused: u32,
    },
    #[error("vCPU {index}: {what} holds too many entries ({count})")]
    TooMany {
        index: u8,
        what: &'static str,
        count: usize,
    },
}

/// Everything KVM keeps for one vCPU that a restored VM needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

struct Io<'a> {
    fd: &'a VcpuFd,
    index: u8,
}

impl Io<'_> {
    fn ok<T>(
        &self,
        op: &'static str,
        r: Result<T, kvm_ioctls::Error>,
    ) -> Result<T, VcpuStateError> {
        r.map_err(|source| VcpuStateError::Ioctl {
            index: self.index,
            op,
            source,
        })
    }
}

/// Reads vCPU `index`'s state. `msr_indices` is the host's list of MSRs KVM saves
/// (`KVM_GET_MSR_INDEX_LIST`); MSRs this vCPU refuses to report are left out, so the
/// restore sets exactly what was read.
pub fn save(fd: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let io = Io { fd, index };
    let cpuid = io.ok(
        "get CPUID",
        fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES),
    )?;
    let mp_state = io.ok("get MP state", fd.get_mp_state())?;
    let regs = io.ok("get registers", fd.get_regs())?;
    let sregs = io.ok("get special registers", fd.get_sregs())?;
    let xsave = io.ok("get xsave", fd.get_xsave())?;
    let xcrs = io.ok("get XCRs", fd.get_xcrs())?;
    let debug_regs = io.ok("get debug registers", fd.get_debug_regs())?;
    let lapic = io.ok("get LAPIC", fd.get_lapic())?;
    let mut msrs = read_msrs(&io, msr_indices)?;
    fix_tsc_deadline(&mut msrs);
    let vcpu_events = io.ok("get vCPU events", fd.get_vcpu_events())?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
    })
}

/// Reads the MSRs in chunks. `KVM_GET_MSRS` stops at the first MSR it cannot read and
/// returns how many it read: that one is dropped and the read goes on after it.
fn read_msrs(io: &Io<'_>, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            index: io.index,
            what: "the MSR list",
            count: entries.len(),
        })?;
        let read = io.ok("get MSRs", io.fd.get_msrs(&mut msrs))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        if read < chunk.len() {
            skipped.push(chunk[read]);
            rest = &rest[read + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    if !skipped.is_empty() {
        log::debug!(
            "vCPU {}: KVM does not report MSRs {:x?}; not saved",
            io.index,
            skipped
        );
    }
    Ok(out)
}

/// A TSC-deadline MSR of 0 means "timer disarmed", but restoring a 0 while the LAPIC timer
/// is in deadline mode can leave the guest waiting for an interrupt that never comes
/// (Firecracker hit this). Setting it to the saved TSC fires at most one early timer
/// interrupt, which Linux tolerates.
fn fix_tsc_deadline(msrs: &mut [kvm_msr_entry]) {
    let Some(tsc) = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data)
    else {
        return;
    };
    if let Some(deadline) = msrs
        .iter_mut()
        .find(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0)
    {
        deadline.data = tsc;
    }
}

/// Writes `state` into a freshly created vCPU, in the order KVM needs.
pub fn restore(fd: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), VcpuStateError> {
    let io = Io { fd, index };
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::TooMany {
        index,
        what: "CPUID",
        count: state.cpuid.len(),
    })?;
    io.ok("set CPUID", fd.set_cpuid2(&cpuid))?;
    io.ok("set MP state", fd.set_mp_state(state.mp_state))?;
    io.ok("set registers", fd.set_regs(&state.regs))?;
    io.ok("set special registers", fd.set_sregs(&state.sregs))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4 KiB) as KVM_GET_XSAVE wrote it, and
    // the VMM never enables dynamically sized xsave features (AMX), so KVM reads no more
    // than this struct holds.
    let xsave = unsafe { fd.set_xsave(&state.xsave) };
    io.ok("set xsave", xsave)?;
    io.ok("set XCRs", fd.set_xcrs(&state.xcrs))?;
    io.ok("set debug registers", fd.set_debug_regs(&state.debug_regs))?;
    io.ok("set LAPIC", fd.set_lapic(&state.lapic))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::TooMany {
            index,
            what: "the MSR list",
            count: chunk.len(),
        })?;
        let set = io.ok("set MSRs", fd.set_msrs(&msrs))?;
        if set != chunk.len() {
            return Err(VcpuStateError::MsrsRefused {
                index,
                set,
                want: chunk.len(),
                refused: chunk[set].index,
            });
        }
    }
    io.ok("set vCPU events", fd.set_vcpu_events(&state.vcpu_events))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn a_zero_tsc_deadline_is_set_to_the_tsc() {
        let mut m = vec![msr(MSR_IA32_TSC, 1234), msr(MSR_IA32_TSC_DEADLINE, 0)];
        fix_tsc_deadline(&mut m);
        assert_eq!(m[1].data, 1234);
        let mut armed = vec![msr(MSR_IA32_TSC, 1234), msr(MSR_IA32_TSC_DEADLINE, 99)];
        fix_tsc_deadline(&mut armed);
        assert_eq!(armed[1].data, 99);
    }

    #[test]
    fn state_survives_a_serde_round_trip() {
        let mut s = VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 7,
                ..Default::default()
            }],
            mp_state: kvm_mp_state { mp_state: 3 },
            regs: kvm_regs {
                rip: 0xffff_ffff_8100_0000,
                rax: 42,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: vec![msr(MSR_IA32_TSC, 5)],
            vcpu_events: Default::default(),
        };
        s.sregs.cr3 = 0x1000;
        s.xsave.region[7] = 0xdead;
        s.lapic.regs[0x20] = 9;
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: VcpuState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.regs.rip, s.regs.rip);
        assert_eq!(back.regs.rax, 42);
        assert_eq!(back.sregs.cr3, 0x1000);
        assert_eq!(back.xsave.region[7], 0xdead);
        assert_eq!(back.lapic.regs[0x20], 9);
        assert_eq!(back.msrs[0].data, 5);
        assert_eq!(back.cpuid[0].eax, 7);
        assert_eq!(back.mp_state.mp_state, 3);
    }
}
