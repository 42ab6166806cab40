//! Boot-stage reports to the VMM's boot-timer port, through /dev/port.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use hull_protocol::boot::{Stage, BOOT_TIMER_PORT};

pub struct BootTimer {
    port: Option<File>,
}

impl BootTimer {
    /// Opens /dev/port; without it (no devtmpfs, no CONFIG_DEVPORT) reports are dropped.
    pub fn open() -> Self {
        BootTimer {
            port: OpenOptions::new().write(true).open("/dev/port").ok(),
        }
    }

    /// Writes the stage's code to the port (a kernel-mode `outb`). Best effort: timing is
    /// diagnostic and must never stop the boot.
    pub fn report(&self, stage: Stage) {
        if let Some(port) = &self.port {
            let _ = port.write_at(&[stage as u8], u64::from(BOOT_TIMER_PORT));
        }
    }
}
