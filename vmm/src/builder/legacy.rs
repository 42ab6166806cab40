//! The port-I/O devices: the 16550A serial console, the i8042 (whose only job is to
//! report the guest's reset) and the boot-timer port PID 1 reports its stages to.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::BuildError;
use crate::arch::x86_64::layout;
use crate::config::{ConsoleOutput, VmConfig};
use crate::devices::boot_timer::{BootTimer, StageLog};
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::{Bus, BusDevice};
use crate::exit::ExitEvent;
use crate::vstate::vm::Vm;

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

pub(super) struct LegacyDevices {
    pub(super) pio: Bus,
    pub(super) stages: StageLog,
    pub(super) serial: Arc<Mutex<SerialDevice>>,
}

/// Serial, i8042 and boot timer on the port-I/O bus; the UART in a snapshot's state when
/// restoring.
pub(super) fn legacy_devices(
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
