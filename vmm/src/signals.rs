//! Signals: a real-time signal that kicks vCPU threads out of `KVM_RUN`, and SIGTERM/SIGINT
//! turned into an eventfd the event loop watches.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Offset from SIGRTMIN of the vCPU kick signal.
const KICK_OFFSET: i32 = 0;

static TERM_FD: AtomicI32 = AtomicI32::new(-1);
static TERM_SIGNAL: AtomicI32 = AtomicI32::new(0);
static TERM_EVENT: OnceLock<EventFd> = OnceLock::new();
static DUMP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("install handler for signal {0}")]
    Install(i32, #[source] vmm_sys_util::errno::Error),
    #[error("create termination eventfd")]
    EventFd(#[source] std::io::Error),
}

pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_OFFSET
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

extern "C" fn on_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERM_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = TERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is the termination eventfd, kept
        // open for the life of the process by TERM_EVENT, and `one` is a valid 8-byte
        // buffer. The result is ignored: there is nothing useful a handler can do.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_dump(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    DUMP_REQUESTED.store(true, Ordering::SeqCst);
}

/// SIGUSR1 asks a vCPU to log its registers (where is the guest stuck?). The main thread
/// blocks it, so it lands on a vCPU thread and interrupts KVM_RUN there.
pub fn install_dump_handler() -> Result<(), SignalError> {
    register_signal_handler(libc::SIGUSR1, on_dump)
        .map_err(|e| SignalError::Install(libc::SIGUSR1, e))
}

/// Blocks SIGUSR1 in the calling thread (call from the main thread after spawning vCPUs).
pub fn block_dump_signal_here() {
    // SAFETY: sigset_t is plain data; it is initialised by sigemptyset below before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: as above; SIGUSR1 is a valid signal number.
    unsafe { libc::sigaddset(&mut set, libc::SIGUSR1) };
    // SAFETY: `set` is initialised and a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Whether a register dump was requested since the last call.
pub fn take_dump_request() -> bool {
    DUMP_REQUESTED.swap(false, Ordering::SeqCst)
}

/// Installs the vCPU kick handler (idempotent).
pub fn install_kick_handler() -> Result<(), SignalError> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| SignalError::Install(kick_signal(), e))
}

/// Installs SIGTERM/SIGINT handlers and returns the eventfd they signal.
pub fn install_termination_handlers() -> Result<&'static EventFd, SignalError> {
    let evt = match TERM_EVENT.get() {
        Some(e) => e,
        None => {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(SignalError::EventFd)?;
            TERM_EVENT.get_or_init(|| e)
        }
    };
    TERM_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(sig, on_terminate).map_err(|e| SignalError::Install(sig, e))?;
    }
    Ok(evt)
}

/// The last termination signal received, if any.
pub fn termination_signal() -> Option<i32> {
    match TERM_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
