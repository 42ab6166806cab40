//! Assembles a microVM from a validated [`VmConfig`] and runs it to its end.
//!
//! The order matters to KVM and to Linux: irqchip before vCPUs, memory before anything is
//! written to it, devices before the command line that announces them, boot structures
//! last. Free functions per step keep each one testable and the sequence readable.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::cmdline::{self, CmdlineSpec};
use crate::config::{ConsoleOutput, KernelFormat, VmConfig};
use crate::control::SnapshotSources;
pub use crate::control::{SnapshotInfo, VmmControl, VmmMetrics};
use crate::devices::boot_timer::{BootTimer, StageLog};
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::{Bus, BusDevice};
use crate::exit::{ExitEvent, ExitReason};
use crate::quirks::{self, HostMode};
use crate::signals;
use crate::snapshot::{self, SnapshotError, SnapshotState};
use crate::vstate::memory::{create_guest_memory, map_snapshot_memory, GuestRam};
use crate::vstate::pause::PauseGate;
use crate::vstate::vcpu::{Recoveries, Vcpu, VcpuContext};
use crate::vstate::vm::{open_kvm, Vm};

mod virtio;
pub(crate) use virtio::PlacedDevice;
use virtio::{virtio_devices, VirtioDevices};

/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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
    vcpus: Vec<JoinHandle<Recoveries>>,
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
    let mut host = quirks::resolve(config.quirks);
    if let Origin::Restore { state, .. } = &origin {
        // The guest's command line was fixed at boot: recover the way it expects.
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
    signals::install_kick_handler()?;
    signals::install_dump_handler()?;
    let term_evt = signals::install_termination_handlers()?;

    let kvm = open_kvm()?;
    let msr_indices = kvm
        .get_msr_index_list()
        .map_err(BuildError::MsrList)?
        .as_slice()
        .to_vec();
    let vm = Vm::new(&kvm)?;
    let ram = match &origin {
        Origin::Boot => create_guest_memory(config.memory_bytes())?,
        Origin::Restore { dir, .. } => {
            let t = Instant::now();
            let ram = map_snapshot_memory(&dir.join(snapshot::MEMORY_FILE), config.memory_bytes())?;
            log::info!(
                "restore: guest memory mapped in {:.2} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            ram
        }
    };
    vm.register_memory(&ram.memory)?;
    let mem = &ram.memory;
    let restoring = match &origin {
        Origin::Restore { state, .. } => Some(&**state),
        Origin::Boot => None,
    };
    if let Some(state) = restoring {
        vm.restore_state(&state.vm)?;
    }

    let exit = ExitEvent::new().map_err(BuildError::EventFd)?;
    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;

    let legacy = legacy_devices(config, &vm, mem, &exit, start, restoring.map(|s| &s.serial))?;
    let virtio = virtio_devices(
        config,
        &vm,
        mem,
        &mut event_manager,
        restoring.map(|s| s.devices.as_slice()),
    )?;

    let entry = match restoring {
        None => Some(write_boot_image(config, mem, &host, &virtio)?),
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
    let mut vcpus = Vec::new();
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, index, ctx.clone())?;
        match (restoring, entry) {
            (Some(state), _) => vcpu.restore_state(&state.vcpus[usize::from(index)])?,
            (None, Some(entry)) => vcpu.configure_boot(&kvm, entry, config.vcpus)?,
            (None, None) => unreachable!("a boot always has an entry point"),
        }
        vcpus.push(vcpu);
    }
    let handles = vcpus
        .into_iter()
        .map(Vcpu::spawn)
        .collect::<Result<Vec<_>, _>>()?;
    signals::block_dump_signal_here();
    log::info!(
        "{} {} vCPU(s), {} MiB, {} virtio device(s), {:.1} ms after VMM start",
        if restoring.is_some() {
            "restored"
        } else {
            "started"
        },
        config.vcpus,
        config.memory_mib,
        virtio.placed.len(),
        start.elapsed().as_secs_f64() * 1e3
    );

    let vm = Arc::new(vm);
    let ram = Arc::new(ram);
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

/// Loads the kernel and initrd and writes the command line and boot structures; returns
/// the kernel's entry point.
fn write_boot_image(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    host: &HostMode,
    virtio: &VirtioDevices,
) -> Result<u64, BuildError> {
    let (entry, setup_header, kernel_end) = load_kernel(config, mem)?;
    let initrd = load_initrd(config, mem, kernel_end)?;
    let cmdline = cmdline::build(&CmdlineSpec {
        quirks: host.is_emulated().then_some(quirks::EMULATED_HOST_CMDLINE),
        devices: &virtio.announced,
        root: virtio.root.clone(),
        extra: &config.cmdline_extra,
    })?;
    log::debug!("kernel command line: {cmdline:?}");
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(BuildError::WriteCmdline)?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len() as u32)
        .map_err(|e| BuildError::Cmdline(cmdline::CmdlineError::Invalid(e)))?;

    let params = boot::build_boot_params(&boot::BootSetup {
        mem_size: config.memory_bytes(),
        cmdline_size,
        initrd,
        setup_header,
    })?;
    boot::write_boot_params(mem, &params)?;
    mptable::setup_mptable(mem, config.vcpus)?;
    regs::write_boot_tables(mem)?;
    Ok(entry)
}

fn load_kernel(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
) -> Result<
    (
        u64,
        Option<linux_loader::loader::bootparam::setup_header>,
        u64,
    ),
    BuildError,
> {
    let mut file = File::open(&config.kernel).map_err(|source| BuildError::Open {
        what: "kernel",
        path: config.kernel.clone(),
        source,
    })?;
    let load_err = |source| BuildError::LoadKernel {
        path: config.kernel.clone(),
        source,
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match config.kernel_format {
        KernelFormat::Elf { .. } => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok((r.kernel_load.0, None, r.kernel_end))
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok((
                r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                r.setup_header,
                r.kernel_end,
            ))
        }
    }
}

/// Places the initrd at the top of low RAM (below the MMIO gap), page aligned, as far from
/// the kernel as possible.
fn load_initrd(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    kernel_end: u64,
) -> Result<Option<(u64, u64)>, BuildError> {
    let Some(path) = &config.initrd else {
        return Ok(None);
    };
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        what: "initrd",
        path: path.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BuildError::Open {
            what: "initrd",
            path: path.clone(),
            source,
        })?
        .len();
    let low_end = config.memory_bytes().min(layout::MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BuildError::InitrdTooLarge {
            path: path.clone(),
            size,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BuildError::LoadInitrd {
            path: path.clone(),
            source,
        })?;
    Ok(Some((addr, size)))
}

fn console_writer(config: &VmConfig) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match &config.console {
        ConsoleOutput::Stdout => Box::new(std::io::stdout()),
        ConsoleOutput::None => Box::new(std::io::sink()),
        ConsoleOutput::File(path) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| BuildError::Open {
                    what: "console file",
                    path: path.clone(),
                    source,
                })?;
            Box::new(crate::devices::serial::CappedConsole::new(
                file,
                config.console_max_bytes,
            ))
        }
    })
}

struct LegacyDevices {
    pio: Bus,
    stages: StageLog,
    serial: Arc<Mutex<SerialDevice>>,
}

/// Serial, i8042 and boot timer on the port-I/O bus; the UART in a snapshot's state when
/// restoring.
fn legacy_devices(
    config: &VmConfig,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    exit: &ExitEvent,
    start: Instant,
    serial_state: Option<&crate::devices::serial::SerialSnapshot>,
) -> Result<LegacyDevices, BuildError> {
    let mut pio = Bus::new();
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(match serial_state {
        Some(state) => SerialDevice::from_snapshot(serial_irq, console_writer(config)?, state),
        None => SerialDevice::new(serial_irq, console_writer(config)?),
    }));
    let as_bus: Arc<Mutex<dyn BusDevice>> = serial.clone();
    pio.insert(as_bus, u64::from(layout::SERIAL_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(mem.clone(), exit.clone()))),
        u64::from(layout::I8042_PORT),
        5,
    )?;
    let timer = BootTimer::new(start, exit.clone());
    let stages = timer.stages();
    pio.insert(
        Arc::new(Mutex::new(timer)),
        u64::from(hull_protocol::boot::BOOT_TIMER_PORT),
        1,
    )?;
    Ok(LegacyDevices {
        pio,
        stages,
        serial,
    })
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
