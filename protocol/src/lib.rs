//! hull-protocol: the only crate both sides of the VM boundary depend on.
//!
//! - [`boot`]: the boot-timer port PID 1 reports its stages to.
//! - [`ports`]: the vsock ports the agent listens on.
//! - [`stream`]: how a host connection to the stream port names the process stream it wants
//!   (stdin, stdout, stderr, pty, events), and how events are framed on it.
//! - [`rpc`] (feature `rpc`): the agent's ttrpc service, generated from `protos/agent.proto`,
//!   its version, and the host's way of reaching it ([`rpc::connect`]).

pub mod boot;
pub mod ports;
pub mod stream;

#[cfg(feature = "rpc")]
pub mod rpc;

/// The version of the agent protocol (the RPC service and the stream framing) this build
/// speaks. The agent reports it in `Ping`; the host refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;
