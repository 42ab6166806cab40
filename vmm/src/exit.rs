//! Why a VM stopped, and the one place that records it.
//!
//! Any thread (a vCPU that saw a reset, the event loop that got SIGTERM) may end the VM; the
//! first reason recorded wins and the [`ExitEvent`]'s eventfd wakes the event loop, which
//! stops the remaining vCPUs.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// PID 1 asked for a power-off through the boot-timer port and then reset the VM.
    Poweroff,
    /// The guest reset the VM (i8042 pulse or KVM system event) without a panic marker.
    Reset,
    /// The guest kernel panicked (it rebooted with the warm-reset flag hull's command line
    /// reserves for panics, or KVM reported a crash event).
    GuestPanic,
    /// The vCPU hit a triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8 },
    /// SIGTERM or SIGINT: the operator asked the VMM to stop.
    Signal(i32),
    /// The control API's Shutdown: the host library asked the VMM to stop.
    Shutdown,
    /// KVM could not execute a guest instruction and no quirk recovers from it.
    EmulationFailure { vcpu: u8, diagnostic: String },
    /// Anything else that stops a vCPU: a failed ioctl, an entry failure.
    VcpuError { vcpu: u8, message: String },
    /// The device thread's epoll loop failed; devices can no longer be served.
    EventLoop(String),
}

impl ExitReason {
    /// The process exit status for this reason. 2 is reserved for configuration errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Poweroff
            | ExitReason::Reset
            | ExitReason::Signal(_)
            | ExitReason::Shutdown => 0,
            ExitReason::VcpuError { .. } | ExitReason::EventLoop(_) => 1,
            ExitReason::GuestPanic => 3,
            ExitReason::TripleFault { .. } => 4,
            ExitReason::EmulationFailure { .. } => 5,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Poweroff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::GuestPanic => {
                write!(f, "guest kernel panicked (see the console output above)")
            }
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu}: guest triple fault"),
            ExitReason::Signal(sig) => write!(f, "stopped by signal {sig}"),
            ExitReason::Shutdown => write!(f, "stopped through the control API"),
            ExitReason::EmulationFailure { vcpu, diagnostic } => {
                write!(f, "vCPU {vcpu}: emulation failure: {diagnostic}")
            }
            ExitReason::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu}: {message}"),
            ExitReason::EventLoop(e) => write!(f, "device event loop failed: {e}"),
        }
    }
}

/// Shared "the VM is over" latch.
#[derive(Debug, Clone)]
pub struct ExitEvent {
    reason: Arc<Mutex<Option<ExitReason>>>,
    poweroff_requested: Arc<std::sync::atomic::AtomicBool>,
    fd: Arc<EventFd>,
}

impl ExitEvent {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitEvent {
            reason: Arc::new(Mutex::new(None)),
            poweroff_requested: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            fd: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Records `reason` unless another one was recorded first, and wakes the event loop.
    pub fn signal(&self, reason: ExitReason) {
        let mut slot = hull_protocol::lock(&self.reason);
        if slot.is_none() {
            log::info!("VM exit: {reason}");
            *slot = Some(reason);
        }
        drop(slot);
        // An eventfd write only fails when the counter would overflow, which a latch that
        // is written a handful of times cannot reach.
        let _ = self.fd.write(1);
    }

    pub fn is_set(&self) -> bool {
        hull_protocol::lock(&self.reason).is_some()
    }

    pub fn reason(&self) -> Option<ExitReason> {
        hull_protocol::lock(&self.reason).clone()
    }

    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// PID 1 announced that the next reset is a power-off.
    pub fn request_poweroff(&self) {
        self.poweroff_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn poweroff_requested(&self) -> bool {
        self.poweroff_requested
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let e = ExitEvent::new().unwrap();
        assert!(!e.is_set());
        e.signal(ExitReason::TripleFault { vcpu: 0 });
        e.signal(ExitReason::Reset);
        assert_eq!(e.reason(), Some(ExitReason::TripleFault { vcpu: 0 }));
        assert_eq!(e.fd().read().unwrap(), 2);
    }

    #[test]
    fn clean_stops_exit_zero_and_failures_do_not() {
        assert_eq!(ExitReason::Poweroff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::Signal(15).exit_code(), 0);
        assert_eq!(ExitReason::Shutdown.exit_code(), 0);
        assert_ne!(ExitReason::GuestPanic.exit_code(), 0);
        assert_ne!(ExitReason::TripleFault { vcpu: 0 }.exit_code(), 0);
        assert_ne!(ExitReason::GuestPanic.exit_code(), 2, "2 means bad config");
    }
}
