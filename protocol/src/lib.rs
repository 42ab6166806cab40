//! hull-protocol: the only crate both sides of the VM boundary depend on.
//!
//! - [`boot`]: the boot-timer port PID 1 reports its stages to.
//! - [`ports`]: the vsock ports the agent listens on.
//! - [`stream`]: how a host connection to the stream port names the process stream it wants
//!   (stdin, stdout, stderr, pty, events), and how events are framed on it.
//! - [`rpc`]: the agent's ttrpc service (`protos/agent.proto`) and the VMM's
//!   control API (`protos/vmm.proto`), generated at build time, and the host's way of
//!   reaching them ([`rpc::connect`], [`rpc::connect_within`], [`rpc::connect_vmm`]).

pub mod boot;
pub mod ports;
pub mod stream;

pub mod rpc;

/// The version of the agent protocol (the RPC service and the stream framing) this build
/// speaks. The agent reports it in `Ping`; the host refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;
