//! hull-protocol: the only crate both sides of the VM boundary depend on.
//!
//! - [`boot`]: the boot-timer port PID 1 reports its stages to.
//! - [`ports`]: the vsock ports the agent listens on.
//! - [`stream`]: how a host connection to the stream port names the process stream it wants
//!   (stdin, stdout, stderr, pty, events), and how events are framed on it.
//! - [`rpc`]: the agent's ttrpc service (`protos/agent.proto`) and the VMM's
//!   control API (`protos/vmm.proto`), generated at build time, and the host's way of
//!   reaching them ([`rpc::connect`], [`rpc::connect_within`], [`rpc::connect_vmm`]).
//! - [`lock`], [`error_chain`]: the poison-tolerant mutex lock and the one-line error
//!   message every hull crate uses.

pub mod boot;
pub mod ports;
pub mod stream;

pub mod rpc;

/// "outer: inner: innermost" for an error and its sources: the one-line form every
/// message to an operator or API client takes. An error's own message names its context,
/// never its source's text (that is what the chain adds).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Locks a mutex, taking it over from a thread that panicked while holding it. hull's
/// workspace unwinds on panic (the agent catches a panicking RPC handler rather than take
/// PID 1 down), and the state behind its locks is kept consistent between statements, so a
/// poisoned lock is still usable. One helper for the VMM, the agent and the host library.
pub fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The version of the agent protocol (the RPC service and the stream framing) this build
/// speaks. The agent reports it in `Ping`; the host refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;
