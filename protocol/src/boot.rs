//! The boot-timer port: PID 1 writes one byte per boot stage; the VMM timestamps it
//! against its own start and, for [`Stage::PoweroffRequested`], treats the next reset as a
//! power-off rather than a reboot.
//!
//! The guest writes through `/dev/port` (a kernel-mode `outb`), so no I/O privilege is
//! granted to guest user space.

/// The x86 I/O port of the boot-timer device.
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// Stage codes, one byte each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// PID 1 is running (first instruction of the agent's `main`).
    Pid1Started = 0x01,
    /// The agent finished setting up the guest and is ready to serve.
    AgentReady = 0x02,
    /// PID 1 synced the filesystems and is about to reset the VM to power it off.
    PoweroffRequested = 0x10,
}

impl Stage {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Stage::Pid1Started),
            0x02 => Some(Stage::AgentReady),
            0x10 => Some(Stage::PoweroffRequested),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Pid1Started => "pid1-started",
            Stage::AgentReady => "agent-ready",
            Stage::PoweroffRequested => "poweroff-requested",
        }
    }
}

/// The line PID 1 prints on the console when it is ready; tests and benchmarks wait for it.
pub const READY_MARKER: &str = "hull-agent: ready";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in [
            Stage::Pid1Started,
            Stage::AgentReady,
            Stage::PoweroffRequested,
        ] {
            assert_eq!(Stage::from_code(s as u8), Some(s));
        }
        assert_eq!(Stage::from_code(0), None);
        assert_eq!(Stage::from_code(0xff), None);
    }
}
