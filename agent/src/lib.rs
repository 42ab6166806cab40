//! The agent service as a library: what `hull-agent` (the binary: guest PID 1, `serve` on a
//! host, the runtime helper) is built from, and what the fuzz targets reach.
//!
//! - [`service`]: the RPCs of `protos/agent.proto` and the stream attachments.
//! - [`runtime`]: the single-threaded libcontainer helper.
//! - [`reaper`]: the one `waitpid` of the process.
//! - [`server`]: the vsock or unix listeners.

pub mod reaper;
pub mod runtime;
pub mod server;
pub mod service;

/// Clears the signal mask (async-signal-safe: only sigemptyset and sigprocmask), for a
/// child of the agent between fork and exec.
pub fn unblock_all_signals() -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    Ok(())
}
