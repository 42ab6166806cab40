//! Ending the VM: power-off on request, halt on a fatal PID 1 error.

use hull_protocol::boot::Stage;

use crate::stage::BootTimer;

/// Stops every other process, flushes filesystems, tells the VMM this is a power-off and
/// resets the VM (the VMM ends it at the reset).
pub fn poweroff(timer: &BootTimer) -> ! {
    crate::init::console_line("hull-agent: powering off");
    // SAFETY: kill(-1, sig) signals every process but PID 1; no memory is involved.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    crate::init::reap_for(std::time::Duration::from_millis(200));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    crate::init::reap_all();
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    timer.report(Stage::PoweroffRequested);
    reset()
}

/// PID 1 cannot continue. Exiting makes the kernel panic ("Attempted to kill init"), which
/// the VMM reports as a guest panic (exit status 3) with this message on the console just
/// above; a plain reset would have looked like a clean stop.
pub fn fail(message: &str) -> ! {
    crate::init::console_line(&format!("hull-agent: fatal: {message}"));
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::process::exit(1)
}

fn reset() -> ! {
    loop {
        // SAFETY: reboot(2) with RB_AUTOBOOT restarts the machine; it takes no pointers.
        // It only returns on failure (no CAP_SYS_BOOT), and PID 1 of the guest has it.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
