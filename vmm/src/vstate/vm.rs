//! The KVM VM: in-kernel irqchip and PIT, memory slots, irqfds and ioeventfds.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM puts the three pages it needs for real-mode TSS emulation on Intel; just
/// below the 4 GiB boundary, outside RAM and the device windows.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported 12")]
    ApiVersion(i32),
    #[error("create VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("set TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("create in-kernel irqchip")]
    IrqChip(#[source] kvm_ioctls::Error),
    #[error("create in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("register guest memory slot {slot}")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("register irqfd for GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{op}")]
    State {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("register ioeventfd at {addr:#x}")]
    Ioevent {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The VM-wide state KVM keeps outside the vCPUs: the guest clock, the interrupt
/// controllers and the PIT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
}

pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::ApiVersion(version));
    }
    Ok(kvm)
}

#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// A VM with the in-kernel LAPIC/IOAPIC/PIC and PIT.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm { fd })
    }

    /// A bare VM (no irqchip): for calibration guests that exit on HLT.
    pub fn new_bare(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok(Vm { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemorySlot {
                    slot,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // The builder keeps `mem` and the VM in the same `Vmm`, and the regions of a
            // GuestMemoryMmap never overlap.
            // SAFETY: [host, host + len) is a live mapping owned by `mem` for as long as
            // the VM runs, and no other slot covers it.
            let registered = unsafe { self.fd.set_user_memory_region(region_desc) };
            registered.map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    fn irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(|source| VmError::State {
                op: "get irqchip",
                source,
            })?;
        Ok(chip)
    }

    /// Reads the VM-wide state; the vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let state = |op| move |source| VmError::State { op, source };
        Ok(VmState {
            clock: self.fd.get_clock().map_err(state("get clock"))?,
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(state("get PIT"))?,
        })
    }

    /// Writes the VM-wide state into a VM made by [`Vm::new`], before its vCPUs exist.
    pub fn restore_state(&self, s: &VmState) -> Result<(), VmError> {
        let state = |op| move |source| VmError::State { op, source };
        self.fd.set_pit2(&s.pit).map_err(state("set PIT"))?;
        // The guest's clock continues from the value it had when it was paused: no flags,
        // so KVM does not advance it by the host's real time since (KVM_CLOCK_REALTIME),
        // which would make kvmclock jump while the restored TSC does not. The host sets the
        // guest's wall clock through the agent after the restore.
        let mut clock = s.clock;
        clock.flags = 0;
        self.fd.set_clock(&clock).map_err(state("set clock"))?;
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            self.fd.set_irqchip(chip).map_err(state("set irqchip"))?;
        }
        Ok(())
    }

    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// KVM signals `fd` (instead of exiting) when the guest writes `datamatch` as a 32-bit
    /// value to MMIO address `addr`.
    pub fn register_mmio_ioevent(
        &self,
        fd: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Ioevent { addr, source })
    }
}
