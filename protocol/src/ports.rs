//! Well-known vsock ports of the guest agent.
//!
//! In a VM the host reaches them through the VMM's hybrid vsock socket (`CONNECT <port>\n`);
//! when the agent is served on the host for tests, each port is a unix socket in the agent's
//! socket directory, named by [`unix_socket_name`].

/// The agent's ttrpc service.
pub const AGENT_PORT: u32 = 1024;
/// Process stdio and the event stream, one connection per stream (see [`crate::stream`]).
pub const STREAM_PORT: u32 = 1025;

/// The unix socket that stands for `port` when the agent is served on the host.
pub fn unix_socket_name(port: u32) -> &'static str {
    match port {
        AGENT_PORT => "agent.sock",
        STREAM_PORT => "stream.sock",
        _ => "unknown.sock",
    }
}
