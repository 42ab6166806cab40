//! vCPUs: configuration for the 64-bit boot entry and the run loop that dispatches exits.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    Msrs, KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::emulation::{self, Recovery};
use super::pause::PauseGate;
use super::vm::Vm;
use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::devices::{i8042, Bus};
use crate::exit::{ExitEvent, ExitReason};

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;
const BP_VECTOR: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("vCPU {index}: {op}")]
    Ioctl {
        index: u8,
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted {set} of {want} boot MSRs")]
    Msrs { index: u8, set: usize, want: usize },
    #[error("start vCPU thread {0}")]
    Spawn(u8, #[source] crate::seccomp::SeccompError),
    #[error("calibration guest: {0}")]
    Calibration(String),
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub exit: ExitEvent,
    /// Apply the emulated-host recoveries (see `quirks`).
    pub emulated_host: bool,
    /// Where the vCPU waits while the VM is paused.
    pub pause: Arc<PauseGate>,
}

/// Counts of recovered emulation failures, for the exit log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recoveries {
    pub breakpoints: u64,
    pub skipped: u64,
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    ctx: VcpuContext,
    recoveries: Recoveries,
}

/// What the run loop does after an exit has been dispatched.
enum Next {
    Continue,
    /// A signal took the vCPU out of KVM_RUN (a kick, or SIGUSR1 asking for a dump).
    Interrupted,
    InternalError,
    Stop(ExitReason),
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8, ctx: VcpuContext) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            ctx,
            recoveries: Recoveries::default(),
        })
    }

    fn ioctl<T>(&self, op: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Ioctl {
            index: self.index,
            op,
            source,
        })
    }

    /// CPUID, MSRs, registers, FPU and LAPIC for Linux's 64-bit entry at `entry`.
    pub fn configure_boot(&self, kvm: &Kvm, entry: u64, count: u8) -> Result<(), VcpuError> {
        let mut id = self.ioctl(
            "get supported CPUID",
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        cpuid::filter_cpuid(&mut id, self.index, count);
        self.ioctl("set CPUID", self.fd.set_cpuid2(&id))?;

        let entries = msr::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            index: self.index,
            set: 0,
            want: entries.len(),
        })?;
        let set = self.ioctl("set MSRs", self.fd.set_msrs(&msrs))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                index: self.index,
                set,
                want: entries.len(),
            });
        }

        self.ioctl("set registers", self.fd.set_regs(&regs::boot_regs(entry)))?;
        let sregs = self.ioctl("get special registers", self.fd.get_sregs())?;
        self.ioctl(
            "set special registers",
            self.fd.set_sregs(&regs::boot_sregs(sregs)),
        )?;
        self.ioctl("set FPU", self.fd.set_fpu(&regs::boot_fpu()))?;
        let mut lapic = self.ioctl("get LAPIC", self.fd.get_lapic())?;
        interrupts::set_lint(&mut lapic);
        self.ioctl("set LAPIC", self.fd.set_lapic(&lapic))?;
        Ok(())
    }

    /// Real mode with every segment base at 0, at `ip` with the stack at `sp`: the state
    /// the tiny test and calibration guests start in.
    pub fn configure_real_mode(&self, ip: u64, sp: u64) -> Result<(), VcpuError> {
        let mut sregs = self.ioctl("get special registers", self.fd.get_sregs())?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        self.ioctl("set special registers", self.fd.set_sregs(&sregs))?;
        let regs = kvm_bindings::kvm_regs {
            rip: ip,
            rsp: sp,
            rflags: 0x2,
            ..Default::default()
        };
        self.ioctl("set registers", self.fd.set_regs(&regs))?;
        Ok(())
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// Gives a freshly created vCPU the state a snapshot saved (see `vcpu_state`).
    pub fn restore_state(
        &self,
        state: &super::vcpu_state::VcpuState,
    ) -> Result<(), super::vcpu_state::VcpuStateError> {
        super::vcpu_state::restore(&self.fd, self.index, state)
    }

    pub fn recoveries(&self) -> Recoveries {
        self.recoveries
    }

    /// Runs the vCPU until the VM's exit event is set (by this vCPU or anyone else).
    pub fn run(&mut self) {
        while !self.ctx.exit.is_set() {
            if self.ctx.pause.is_paused() {
                self.complete_pending_io();
            }
            self.ctx.pause.pass(usize::from(self.index), &self.fd);
            if self.ctx.exit.is_set() {
                break;
            }
            let next = self.run_once();
            match next {
                Next::Continue => {}
                Next::Interrupted => {
                    if crate::signals::take_dump_request() {
                        self.log_state();
                    }
                }
                Next::InternalError => {
                    if let Err(reason) = self.handle_internal_error() {
                        self.ctx.exit.signal(reason);
                    }
                }
                Next::Stop(reason) => self.ctx.exit.signal(reason),
            }
        }
        self.ctx.pause.ended(usize::from(self.index));
        if self.recoveries.breakpoints + self.recoveries.skipped > 0 {
            log::info!(
                "vCPU {}: recovered {} int3 and skipped {} fwait emulation failures",
                self.index,
                self.recoveries.breakpoints,
                self.recoveries.skipped
            );
        }
    }

    /// Lets KVM finish the port or MMIO access of the last exit before the vCPU parks: an
    /// access completes only when userspace re-enters KVM_RUN (api.rst), so a vCPU parked
    /// right after an exit would be saved with RIP still on the instruction, which a
    /// restored guest would run again (a second write, a second read of a FIFO).
    /// `immediate_exit` makes KVM complete it and return EINTR without running the guest.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Ok(exit) => log::warn!(
                "vCPU {}: exit {exit:?} while completing I/O before a pause",
                self.index
            ),
            Err(e) => log::warn!("vCPU {}: completing I/O before a pause: {e}", self.index),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    fn log_state(&self) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => {
                log::info!(
                "vCPU {}: rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr3 {:#x} rax {:#x} rdi {:#x}",
                self.index, r.rip, r.rsp, r.rflags, s.cs.selector, s.cr3, r.rax, r.rdi
            )
            }
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("vCPU {}: cannot read registers: {e}", self.index)
            }
        }
    }

    fn run_once(&mut self) -> Next {
        let index = self.index;
        let ctx = &self.ctx;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !ctx.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    Next::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    if !ctx.pio.write(u64::from(port), data) {
                        log::trace!("unhandled port write {port:#x}");
                    }
                    Next::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !ctx.mmio.read(addr, data) {
                        log::debug!("unhandled MMIO read at {addr:#x}");
                        data.fill(0xff);
                    }
                    Next::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !ctx.mmio.write(addr, data) {
                        log::debug!("unhandled MMIO write at {addr:#x}");
                    }
                    Next::Continue
                }
                VcpuExit::Intr => Next::Interrupted,
                VcpuExit::Hlt => Next::Stop(ExitReason::Poweroff),
                VcpuExit::Shutdown => Next::Stop(ExitReason::TripleFault { vcpu: index }),
                VcpuExit::SystemEvent(kind, _) => Next::Stop(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Poweroff,
                    KVM_SYSTEM_EVENT_RESET => i8042::classify_reset(&ctx.mem, &ctx.exit),
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic,
                    other => ExitReason::VcpuError {
                        vcpu: index,
                        message: format!("unknown system event {other}"),
                    },
                }),
                VcpuExit::InternalError => Next::InternalError,
                VcpuExit::FailEntry(reason, cpu) => Next::Stop(ExitReason::VcpuError {
                    vcpu: index,
                    message: format!(
                        "KVM failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ),
                }),
                other => Next::Stop(ExitReason::VcpuError {
                    vcpu: index,
                    message: format!("unexpected exit {other:?}"),
                }),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Interrupted,
            Err(e) => Next::Stop(ExitReason::VcpuError {
                vcpu: index,
                message: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    /// Handles KVM_EXIT_INTERNAL_ERROR: recovers where `quirks` says it may, otherwise
    /// returns the reason the VM must stop.
    fn handle_internal_error(&mut self) -> Result<(), ExitReason> {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: the last KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, for which KVM fills
        // the `internal` member of the exit union; it is plain data.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Err(ExitReason::VcpuError {
                vcpu: index,
                message: format!("KVM internal error, suberror {}", internal.suberror),
            });
        }
        let fail = |what: &str, e: kvm_ioctls::Error| ExitReason::VcpuError {
            vcpu: index,
            message: format!("after an emulation failure, {what}: {e}"),
        };
        let mut regs = self.fd.get_regs().map_err(|e| fail("get registers", e))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| fail("get special registers", e))?;
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        let cpl = sregs.cs.selector & 3;
        let bytes = self.instruction_bytes(linear);
        match emulation::on_emulation_failure(&bytes, self.ctx.emulated_host) {
            Recovery::InjectBreakpoint => {
                regs.rip = regs.rip.wrapping_add(1);
                self.fd
                    .set_regs(&regs)
                    .map_err(|e| fail("set registers", e))?;
                let mut events = self
                    .fd
                    .get_vcpu_events()
                    .map_err(|e| fail("get vCPU events", e))?;
                events.exception.injected = 1;
                events.exception.nr = BP_VECTOR;
                events.exception.has_error_code = 0;
                events.exception.error_code = 0;
                self.fd
                    .set_vcpu_events(&events)
                    .map_err(|e| fail("inject #BP", e))?;
                self.recoveries.breakpoints += 1;
                Ok(())
            }
            Recovery::Skip(n) => {
                regs.rip = regs.rip.wrapping_add(n);
                self.fd
                    .set_regs(&regs)
                    .map_err(|e| fail("set registers", e))?;
                self.recoveries.skipped += 1;
                Ok(())
            }
            Recovery::Fatal(msg) => Err(ExitReason::EmulationFailure {
                vcpu: index,
                diagnostic: format!("RIP {:#x} (CPL {cpl}): {msg}", regs.rip),
            }),
        }
    }

    /// Up to 15 bytes at guest-linear `addr`, through the guest's page tables.
    fn instruction_bytes(&self, addr: u64) -> Vec<u8> {
        let phys = match self.fd.translate_gva(addr) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => return Vec::new(),
        };
        // Stay within the page: the next one may map elsewhere.
        let in_page = (0x1000 - (phys & 0xfff)) as usize;
        let mut buf = vec![0u8; MAX_INSN_LEN.min(in_page)];
        match self.ctx.mem.read(&mut buf, GuestAddress(phys)) {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => Vec::new(),
        }
    }

    /// Runs this vCPU on its own thread named `vcpuN`, under the vCPU seccomp filter from
    /// its first instruction when the VMM's filters are on.
    pub fn spawn(mut self) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Vcpu,
            format!("vcpu{index}"),
            move || self.run(),
        )
        .map_err(|e| VcpuError::Spawn(index, e))
    }
}

/// Runs `code` at 0x1000 in a throw-away real-mode VM without an irqchip until it
/// executes HLT. Used to time the host's guest-kernel execution speed.
pub fn run_real_mode_snippet(code: &[u8]) -> Result<(), VcpuError> {
    let err = |e: &dyn std::fmt::Display| VcpuError::Calibration(e.to_string());
    let kvm = super::vm::open_kvm().map_err(|e| err(&e))?;
    let vm = Vm::new_bare(&kvm).map_err(|e| err(&e))?;
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).map_err(|e| err(&e))?;
    mem.write_slice(code, GuestAddress(0x1000))
        .map_err(|e| err(&e))?;
    vm.register_memory(&mem).map_err(|e| err(&e))?;
    let exit = ExitEvent::new().map_err(|e| err(&e))?;
    let ctx = VcpuContext {
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(Bus::new()),
        mem,
        exit,
        emulated_host: false,
        pause: Arc::new(PauseGate::new(1)),
    };
    let mut vcpu = Vcpu::new(&vm, 0, ctx)?;
    vcpu.configure_real_mode(0x1000, 0x8000)?;
    for _ in 0..16 {
        match vcpu.fd.run() {
            Ok(VcpuExit::Hlt) => return Ok(()),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::Intr) => continue,
            Ok(other) => return Err(err(&format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(err(&e)),
        }
    }
    Err(err(&"guest did not halt"))
}
