//! The agent's ttrpc service and the host's way of reaching it.
//!
//! [`agent`] and [`agent_ttrpc`] are generated from `protos/agent.proto` at build time.
//! [`Endpoint`] is where an agent listens (the VMM's hybrid vsock socket, or the socket
//! directory of an agent served on the host); [`connect`] opens the RPC connection and
//! refuses an agent whose protocol version differs from [`crate::PROTOCOL_VERSION`];
//! [`Endpoint::open_stream`] opens one stdio or event stream.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::ports::{unix_socket_name, AGENT_PORT, STREAM_PORT};
use crate::stream::{read_reply, Header};
use crate::PROTOCOL_VERSION;

/// The code `build.rs` generates from `protos/`: the agent service ([`agent`],
/// [`agent_ttrpc`]) and the VMM control API ([`vmm`], [`vmm_ttrpc`]). Siblings in one module,
/// as the generated stubs refer to their messages through `super::`.
#[allow(
    warnings,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
mod generated {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
    pub mod vmm {
        include!(concat!(env!("OUT_DIR"), "/vmm.rs"));
    }
    pub mod vmm_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/vmm_ttrpc.rs"));
    }
}

pub use generated::{agent, agent_ttrpc, vmm, vmm_ttrpc};
pub use protobuf;
pub use ttrpc;

/// Where an agent listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The VMM's hybrid vsock socket: each connection starts with `CONNECT <port>\n`.
    HybridVsock(PathBuf),
    /// A directory holding one unix socket per agent port (an agent served on the host).
    UnixDir(PathBuf),
}

/// Why the host could not reach the agent or could not use what it reached.
#[derive(Debug)]
pub enum ConnectError {
    Io {
        what: String,
        source: io::Error,
    },
    /// The VMM refused the `CONNECT` (nobody listens on the port yet, or the guest reset).
    Refused {
        port: u32,
        reply: String,
    },
    Rpc(ttrpc::Error),
    Version {
        agent: u32,
        agent_version: String,
    },
    Stream(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io { what, source } => write!(f, "{what}: {source}"),
            ConnectError::Refused { port, reply } => write!(
                f,
                "the VMM did not connect guest port {port} (reply {reply:?}): the agent is not listening yet or the guest is gone"
            ),
            ConnectError::Rpc(e) => write!(f, "agent RPC failed: {e}"),
            ConnectError::Version { agent, agent_version } => write!(
                f,
                "the guest agent ({agent_version}) speaks protocol version {agent}, this host speaks {PROTOCOL_VERSION}: rebuild the guest image with the same hull release as the host"
            ),
            ConnectError::Stream(reason) => write!(f, "the agent refused the stream: {reason}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl Endpoint {
    /// A connected byte stream to guest `port`.
    pub fn dial(&self, port: u32) -> Result<UnixStream, ConnectError> {
        self.dial_with(port, "CONNECT")
    }

    /// Through a restored VMM's hybrid vsock: the connection to guest `port` that the
    /// snapshot kept open (`ADOPT`), already accepted by the guest. Refused when there is
    /// none (or for a unix-socket endpoint); `dial` then makes a new one.
    pub fn adopt(&self, port: u32) -> Result<UnixStream, ConnectError> {
        match self {
            Endpoint::UnixDir(_) => Err(ConnectError::Refused {
                port,
                reply: "nothing to adopt on a unix-socket endpoint".into(),
            }),
            Endpoint::HybridVsock(_) => self.dial_with(port, "ADOPT"),
        }
    }

    fn dial_with(&self, port: u32, verb: &str) -> Result<UnixStream, ConnectError> {
        match self {
            Endpoint::UnixDir(dir) => {
                let path = dir.join(unix_socket_name(port));
                UnixStream::connect(&path).map_err(|source| ConnectError::Io {
                    what: format!("connecting to the agent at {}", path.display()),
                    source,
                })
            }
            Endpoint::HybridVsock(uds) => {
                let io = |what: &str| {
                    let what = format!("{what} ({})", uds.display());
                    move |source| ConnectError::Io { what, source }
                };
                let mut s =
                    UnixStream::connect(uds).map_err(io("connecting to the VMM's vsock socket"))?;
                // A hung guest must not hold the caller forever: the handshake is bounded,
                // the stream afterwards is the caller's to time.
                s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                    .map_err(io("setting the handshake timeout"))?;
                s.write_all(format!("{verb} {port}\n").as_bytes())
                    .map_err(io("sending the handshake"))?;
                let mut reply = Vec::with_capacity(16);
                let mut byte = [0u8; 1];
                while reply.len() < 32 {
                    match s.read(&mut byte) {
                        Ok(0) => break,
                        Ok(_) if byte[0] == b'\n' => break,
                        Ok(_) => reply.push(byte[0]),
                        Err(e) => return Err(io("reading the handshake reply")(e)),
                    }
                }
                let reply = String::from_utf8_lossy(&reply).into_owned();
                if !reply.starts_with("OK ") {
                    return Err(ConnectError::Refused { port, reply });
                }
                s.set_read_timeout(None)
                    .map_err(io("clearing the handshake timeout"))?;
                Ok(s)
            }
        }
    }

    /// Opens the stream `header` names; after this the socket carries only that stream.
    /// The agent's answer is awaited for at most [`HANDSHAKE_TIMEOUT`].
    pub fn open_stream(&self, header: &Header) -> Result<UnixStream, ConnectError> {
        let mut s = self.dial(STREAM_PORT)?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|source| ConnectError::Io {
                what: "setting the stream handshake timeout".into(),
                source,
            })?;
        let io = |what: &'static str| {
            move |source| ConnectError::Io {
                what: what.into(),
                source,
            }
        };
        s.write_all(header.encode().as_bytes())
            .map_err(io("sending the stream header"))?;
        read_reply(&mut s)
            .map_err(io("reading the stream reply"))?
            .map_err(ConnectError::Stream)?;
        s.set_read_timeout(None)
            .map_err(io("clearing the stream handshake timeout"))?;
        Ok(s)
    }
}

/// The longest wait for a handshake reply (the VMM's `OK <port>`, the agent's stream
/// answer). Generous: on hosts whose KVM emulates guest kernel code a guest may take
/// seconds to accept a connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected agent of the right protocol version.
pub struct AgentConnection {
    pub client: agent_ttrpc::AgentClient,
    /// What the agent answered to the first `Ping`.
    pub hello: agent::PingResponse,
}

/// Connects to the agent's RPC port and checks its protocol version.
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<AgentConnection, ConnectError> {
    hello(endpoint.dial(AGENT_PORT)?, timeout)
}

/// Takes over the agent connection a restored snapshot kept (see [`Endpoint::adopt`]) and
/// checks the protocol version on it: no new connection for the guest to set up.
pub fn adopt(endpoint: &Endpoint, timeout: Duration) -> Result<AgentConnection, ConnectError> {
    hello(endpoint.adopt(AGENT_PORT)?, timeout)
}

fn hello(stream: UnixStream, timeout: Duration) -> Result<AgentConnection, ConnectError> {
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(ConnectError::Rpc)?;
    let client = agent_ttrpc::AgentClient::new(client);
    let hello = client
        .ping(
            ttrpc::context::with_timeout(timeout.as_nanos() as i64),
            &agent::PingRequest::new(),
        )
        .map_err(ConnectError::Rpc)?;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(ConnectError::Version {
            agent: hello.protocol_version,
            agent_version: hello.agent_version.clone(),
        });
    }
    Ok(AgentConnection { client, hello })
}

/// [`connect`], retried every `poll` until it succeeds or `within` has passed (an agent
/// still starting, a guest still booting); the last error when it never does. A protocol
/// version mismatch is returned at once: waiting does not cure it.
pub fn connect_within(
    endpoint: &Endpoint,
    within: Duration,
    poll: Duration,
) -> Result<AgentConnection, ConnectError> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match connect(endpoint, within) {
            Ok(c) => return Ok(c),
            Err(e @ ConnectError::Version { .. }) => return Err(e),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(poll),
        }
    }
}

/// Connects to a VMM's control API socket (`hull-vmm --api-sock PATH`).
pub fn connect_vmm(path: &std::path::Path) -> Result<vmm_ttrpc::VmmClient, ConnectError> {
    let stream = UnixStream::connect(path).map_err(|source| ConnectError::Io {
        what: format!("connecting to the VMM control API at {}", path.display()),
        source,
    })?;
    let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(ConnectError::Rpc)?;
    Ok(vmm_ttrpc::VmmClient::new(client))
}
