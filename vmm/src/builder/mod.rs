//! Assembles a microVM from a validated [`VmConfig`] and runs it to its end.
//!
//! The order matters to KVM and to Linux: irqchip before vCPUs, memory before anything is
//! written to it, devices before the command line that announces them, boot structures
//! last. Free functions per step keep each one testable and the sequence readable.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::cmdline;
use crate::config::VmConfig;
use crate::control::SnapshotSources;
pub use crate::control::{SnapshotInfo, VmmControl, VmmMetrics};
use crate::devices::boot_timer::StageLog;
use crate::exit::{ExitEvent, ExitReason};
use crate::quirks::{self, HostMode};
use crate::signals;
use crate::snapshot::{self, SnapshotError, SnapshotState};
use crate::vstate::memory::{create_guest_memory, map_snapshot_memory, GuestRam};
use crate::vstate::pause::PauseGate;
use crate::vstate::vcpu::{Vcpu, VcpuContext};
use crate::vstate::vm::{open_kvm, Vm};

mod boot_image;
mod legacy;
mod virtio;
use legacy::legacy_devices;
use virtio::virtio_devices;
pub(crate) use virtio::PlacedDevice;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error("load kernel {path}")]
    LoadKernel {
        path: std::path::PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("open {what} {path}")]
    Open {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below the kernel's reach; raise memory_mib")]
    InitrdTooLarge { path: std::path::PathBuf, size: u64 },
    #[error("load initrd {path}")]
    LoadInitrd {
        path: std::path::PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("write the command line to guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Bus(#[from] crate::devices::BusError),
    #[error(transparent)]
    Block(#[from] crate::devices::virtio::block::BlockError),
    #[error(transparent)]
    Mmio(#[from] crate::devices::virtio::mmio::MmioError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error("net {index}")]
    Tap {
        index: usize,
        #[source]
        source: crate::devices::virtio::net::TapError,
    },
    #[error("too many virtio devices: {0} (the IOAPIC has pins for {max})", max = layout::IOAPIC_PINS - layout::VIRTIO_IRQ_BASE)]
    TooManyDevices(usize),
    #[error("create eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("set up the event loop: {0:?}")]
    EventManager(event_manager::Error),
    #[error(transparent)]
    Signal(#[from] signals::SignalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    VcpuState(#[from] crate::vstate::vcpu_state::VcpuStateError),
    #[error("the snapshot has no state for device {0}; restore with the configuration it was taken with")]
    NotInSnapshot(crate::snapshot::DeviceId),
    #[error("list the MSRs KVM saves")]
    MsrList(#[source] kvm_ioctls::Error),
}

impl BuildError {
    /// Whether the error is the operator's to fix in the configuration (exit status 2).
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            BuildError::Cmdline(_)
                | BuildError::InitrdTooLarge { .. }
                | BuildError::TooManyDevices(_)
                | BuildError::Block(crate::devices::virtio::block::BlockError::SerialTooLong(_))
                | BuildError::Vsock(_)
                | BuildError::Tap { .. }
                | BuildError::Snapshot(_)
                | BuildError::NotInSnapshot(_)
        )
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A built, running microVM.
pub struct Vmm {
    exit: ExitEvent,
    event_manager: EventManager<Subscriber>,
    vcpus: Vec<JoinHandle<()>>,
    control: VmmControl,
    stages: StageLog,
    host: HostMode,
    /// Written to, makes the vsock device post a transport reset (snapshot restore).
    vsock_reset: Option<EventFd>,
    // Kept alive for the vCPUs: KVM memory slots point into this mapping (the control
    // handle holds them too, for snapshots).
    _ram: Arc<GuestRam>,
    _vm: Arc<Vm>,
    _kvm: Kvm,
}

/// How the VM's state comes about: a fresh boot or a snapshot.
enum Origin {
    Boot,
    Restore {
        dir: std::path::PathBuf,
        state: Box<SnapshotState>,
    },
}

impl Origin {
    /// The snapshot's state when restoring.
    fn state(&self) -> Option<&SnapshotState> {
        match self {
            Origin::Restore { state, .. } => Some(state),
            Origin::Boot => None,
        }
    }
}

/// Creates the VM described by `config`, starts its vCPUs and returns it running.
/// `start` is the VMM's start time, against which guest boot stages are reported.
pub fn build_microvm(config: &VmConfig, start: Instant) -> Result<Vmm, BuildError> {
    build(config, start, Origin::Boot)
}

/// Restores the snapshot in `dir` into a new VM built from `config` (the same shape, new
/// host resources: vsock socket, taps, console, control socket), starts its vCPUs, and
/// posts a vsock transport reset so the guest drops connections to the old host.
pub fn restore_microvm(
    config: &VmConfig,
    dir: &std::path::Path,
    start: Instant,
) -> Result<Vmm, BuildError> {
    let t = Instant::now();
    let state = snapshot::read_state(&dir.join(snapshot::STATE_FILE))?;
    state
        .meta
        .shape
        .check(&config.shape())
        .map_err(SnapshotError::from)?;
    log::info!(
        "restore: state file read and checked in {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let vmm = build(
        config,
        start,
        Origin::Restore {
            dir: dir.to_path_buf(),
            state: Box::new(state),
        },
    )?;
    if vmm.vsock_transport_reset() {
        log::debug!("vsock: asked the device to finish its restore");
    }
    Ok(vmm)
}

fn build(config: &VmConfig, start: Instant, origin: Origin) -> Result<Vmm, BuildError> {
    let host = host_mode(config, &origin);
    signals::install_kick_handler()?;
    signals::install_dump_handler()?;
    let term_evt = signals::install_termination_handlers()?;
    let machine = Machine::create(config, &origin)?;
    let restoring = origin.state();
    let mem = &machine.ram.memory;

    let exit = ExitEvent::new().map_err(BuildError::EventFd)?;
    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
    let legacy = legacy_devices(
        config,
        &machine.vm,
        mem,
        &exit,
        start,
        restoring.map(|s| &s.serial),
    )?;
    let saved_devices = restoring.map(|s| s.devices.as_slice());
    let mut virtio = virtio_devices(config, &machine.vm, mem, &mut event_manager, saved_devices)?;
    let entry = match restoring {
        None => Some(boot_image::write_boot_image(config, mem, &host, &virtio)?),
        Some(_) => None,
    };
    event_manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
        exit: exit.clone(),
        term: term_evt.try_clone().map_err(BuildError::EventFd)?,
    })));

    let pause = Arc::new(PauseGate::new(usize::from(config.vcpus)));
    let ctx = VcpuContext {
        pio: Arc::new(legacy.pio),
        mmio: Arc::new(virtio.bus),
        mem: mem.clone(),
        exit: exit.clone(),
        emulated_host: host.is_emulated(),
        pause: pause.clone(),
    };
    // Every host resource is held: confine the process before any guest code runs (and
    // while it still has one thread). A jailed VMM filters every thread from its start;
    // the main thread's own filter comes last (`Vmm::enter_event_loop_filter`), once every
    // thread that creates others has been created.
    if let Some(jail) = &config.jail {
        crate::jail::enter(jail)?;
        crate::seccomp::enable()?;
    } else {
        log::info!("seccomp: no jail, so no system call filters (a VMM started by hand)");
    }
    if let Some(starter) = virtio.fs_sessions.take() {
        starter.start()?;
    }
    // The fs threads took the file capabilities with them; the main thread keeps none,
    // so no thread it starts from now on has any.
    crate::jail::drop_thread_caps().map_err(|source| crate::jail::JailError::Step {
        step: "drop the main thread's capabilities".into(),
        source,
    })?;
    let handles = start_vcpus(config, &machine, ctx, restoring, entry)?;
    log::info!(
        "{} {} vCPU(s), {} MiB, {} virtio device(s), {:.1} ms after VMM start",
        ["started", "restored"][usize::from(restoring.is_some())],
        config.vcpus,
        config.memory_mib,
        virtio.placed.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let Machine {
        kvm,
        msr_indices,
        vm,
        ram,
    } = machine;
    let (vm, ram) = (Arc::new(vm), Arc::new(ram));
    let control = VmmControl {
        exit: exit.clone(),
        pause,
        ops: Arc::new(Mutex::new(())),
        vcpu_threads: Arc::new(handles.iter().map(|h| h.as_pthread_t()).collect()),
        started: start,
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        slots: Arc::new(virtio.slots),
        shares: virtio.shares,
        sources: Arc::new(SnapshotSources {
            vm: vm.clone(),
            ram: ram.clone(),
            devices: virtio.placed,
            serial: legacy.serial,
            msr_indices,
            shape: config.shape(),
            emulated_host: host.is_emulated(),
        }),
    };
    Ok(Vmm {
        exit,
        event_manager,
        vcpus: handles,
        control,
        stages: legacy.stages,
        host,
        vsock_reset: virtio.vsock_reset,
        _ram: ram,
        _vm: vm,
        _kvm: kvm,
    })
}

/// How this host runs guest kernel code. A restore recovers the way the snapshot's guest
/// expects: its command line was fixed at boot.
fn host_mode(config: &VmConfig, origin: &Origin) -> HostMode {
    let mut host = quirks::resolve(config.quirks);
    if let Some(state) = origin.state() {
        let emulated = state.meta.emulated_host;
        if emulated != host.is_emulated() {
            log::warn!(
                "the snapshot was taken {} the emulated-host quirks; restoring with them {}",
                if emulated { "with" } else { "without" },
                if emulated { "on" } else { "off" },
            );
            host = if emulated {
                HostMode::Emulated {
                    why: "the snapshot's guest was booted for an emulated host".into(),
                }
            } else {
                HostMode::Hardware
            };
        }
    }
    if let HostMode::Emulated { why } = &host {
        log::info!("host KVM emulates guest kernel mode ({why}); applying quirks");
    }
    host
}

/// KVM, the VM and its RAM: fresh for a boot, the snapshot's (memory mapped copy-on-write,
/// clock and irqchip set) for a restore.
struct Machine {
    kvm: Kvm,
    msr_indices: Vec<u32>,
    vm: Vm,
    ram: GuestRam,
}

impl Machine {
    fn create(config: &VmConfig, origin: &Origin) -> Result<Machine, BuildError> {
        let kvm = open_kvm()?;
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(BuildError::MsrList)?
            .as_slice()
            .to_vec();
        let vm = Vm::new(&kvm)?;
        let ram = match origin {
            Origin::Boot => create_guest_memory(config.memory_bytes())?,
            Origin::Restore { dir, .. } => {
                let t = Instant::now();
                let memory = dir.join(snapshot::MEMORY_FILE);
                let ram = map_snapshot_memory(&memory, config.memory_bytes())?;
                log::info!(
                    "restore: guest memory mapped in {:.2} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
                ram
            }
        };
        vm.register_memory(&ram.memory)?;
        if let Some(state) = origin.state() {
            vm.restore_state(&state.vm)?;
        }
        Ok(Machine {
            kvm,
            msr_indices,
            vm,
            ram,
        })
    }
}

/// Creates every vCPU, each with its boot registers or its saved state, and starts its
/// thread.
fn start_vcpus(
    config: &VmConfig,
    machine: &Machine,
    ctx: VcpuContext,
    restoring: Option<&SnapshotState>,
    entry: Option<u64>,
) -> Result<Vec<JoinHandle<()>>, BuildError> {
    let mut vcpus = Vec::new();
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&machine.vm, index, ctx.clone())?;
        match (restoring, entry) {
            (Some(state), _) => vcpu.restore_state(&state.vcpus[usize::from(index)])?,
            (None, Some(entry)) => vcpu.configure_boot(&machine.kvm, entry, config.vcpus)?,
            (None, None) => unreachable!("a boot always has an entry point"),
        }
        vcpus.push(vcpu);
    }
    let handles = vcpus
        .into_iter()
        .map(Vcpu::spawn)
        .collect::<Result<Vec<_>, _>>()?;
    signals::block_dump_signal_here();
    Ok(handles)
}

/// Wakes the event loop when the VM ends or a termination signal arrives.
struct ExitWatcher {
    exit: ExitEvent,
    term: EventFd,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.term.as_raw_fd() {
            let _ = self.term.read();
            let sig = signals::termination_signal().unwrap_or(libc::SIGTERM);
            self.exit.signal(ExitReason::Signal(sig));
        } else {
            let _ = self.exit.fd().read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.term, self.exit.fd()] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch exit eventfd: {e:?}");
            }
        }
    }
}

/// How a VM run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub reason: ExitReason,
    pub stages: Vec<(hull_protocol::boot::Stage, Duration)>,
}

impl Vmm {
    pub fn host_mode(&self) -> &HostMode {
        &self.host
    }

    /// Asks the vsock device (if any) to drop its connections and tell the guest so.
    pub fn vsock_transport_reset(&self) -> bool {
        self.vsock_reset
            .as_ref()
            .is_some_and(|e| e.write(1).is_ok())
    }

    /// Serves devices until the VM ends, then stops and joins every vCPU thread.
    pub fn run(mut self) -> RunOutcome {
        while !self.exit.is_set() {
            if let Err(e) = self.event_manager.run() {
                self.exit.signal(ExitReason::EventLoop(format!("{e:?}")));
            }
        }
        self.stop_vcpus();
        RunOutcome {
            reason: self.exit.reason().unwrap_or(ExitReason::Reset),
            stages: crate::devices::bus::lock(&self.stages).clone(),
        }
    }

    /// A handle that pauses, resumes, stops and describes this VM from any thread.
    pub fn control(&self) -> VmmControl {
        self.control.clone()
    }

    /// Kicks each vCPU out of KVM_RUN until its thread has seen the exit event.
    fn stop_vcpus(&mut self) {
        // A paused vCPU waits at the gate, not in KVM_RUN: let it see the exit.
        self.control.pause.resume();
        for handle in self.vcpus.drain(..) {
            while !handle.is_finished() {
                if handle.kill(signals::kick_signal()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }
}
