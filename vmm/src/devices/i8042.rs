//! The i8042 keyboard controller, present only so the guest can reset the machine
//! (`reboot=k`): command 0xFE on port 0x64 ends the VM.
//!
//! Whether that reset was a reboot, a power-off or a kernel panic is decided here. hull's
//! command line makes the guest kernel set the BIOS warm-reset flag (0x1234 at physical
//! 0x472) only when it reboots because of a panic (`reboot=k,cold,panic_warm`), and PID 1
//! announces a power-off on the boot-timer port before it resets.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_superio::{I8042Device as Controller, Trigger};

use super::bus::BusDevice;
use crate::arch::x86_64::layout::WARM_RESET_FLAG;
use crate::exit::{ExitEvent, ExitReason};

/// The value Linux writes to the warm-reset flag before a warm reboot.
pub const WARM_RESET_MAGIC: u16 = 0x1234;

/// Decides what a guest-initiated reset means.
pub fn classify_reset(mem: &GuestMemoryMmap, exit: &ExitEvent) -> ExitReason {
    let flag: u16 = mem
        .read_obj(GuestAddress(WARM_RESET_FLAG))
        .unwrap_or_default();
    if flag == WARM_RESET_MAGIC {
        ExitReason::GuestPanic
    } else if exit.poweroff_requested() {
        ExitReason::Poweroff
    } else {
        ExitReason::Reset
    }
}

pub struct ResetTrigger {
    mem: GuestMemoryMmap,
    exit: ExitEvent,
}

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.exit.signal(classify_reset(&self.mem, &self.exit));
        Ok(())
    }
}

pub struct I8042 {
    controller: Controller<ResetTrigger>,
}

impl I8042 {
    pub fn new(mem: GuestMemoryMmap, exit: ExitEvent) -> Self {
        I8042 {
            controller: Controller::new(ResetTrigger { mem, exit }),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.controller.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let Ok(()) = self.controller.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap()
    }

    #[test]
    fn reset_command_without_markers_is_a_reset() {
        let exit = ExitEvent::new().unwrap();
        let mut dev = I8042::new(mem(), exit.clone());
        dev.write(0, &[0xfe]);
        assert!(!exit.is_set(), "0xfe on the data port is not a reset");
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn warm_reset_flag_means_panic() {
        let m = mem();
        m.write_obj(WARM_RESET_MAGIC, GuestAddress(WARM_RESET_FLAG))
            .unwrap();
        let exit = ExitEvent::new().unwrap();
        exit.request_poweroff();
        let mut dev = I8042::new(m, exit.clone());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn announced_reset_is_a_poweroff() {
        let exit = ExitEvent::new().unwrap();
        exit.request_poweroff();
        let mut dev = I8042::new(mem(), exit.clone());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Poweroff));
    }
}
