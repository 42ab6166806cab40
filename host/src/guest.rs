//! A running sandbox's guest as a client of its processes sees it: the agent, and the
//! endpoint through which each process's stdio streams are opened. The VM's owner holds
//! one ([`crate::pod::Pod::guest`]); another process reaches a running sandbox through its
//! run directory ([`Guest::connect`]), as `hull exec` and `hull kill` do.

use std::path::Path;
use std::time::Duration;

pub use hull_protocol::rpc::ConnectError;
use hull_protocol::rpc::Endpoint;

use crate::agent::{Agent, AgentError, ProcessId};
use crate::stdio::{IoError, ProcessIo, Stdio};
use crate::vmm_process::VmmPaths;

/// Why a process could not be created or started with its stdio.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{process}: its stdio could not be connected, so it was ended")]
    Stdio {
        process: String,
        /// The process's pid in the guest (it existed, briefly).
        pid: u32,
        #[source]
        source: IoError,
    },
}

#[derive(Clone)]
pub struct Guest {
    pub agent: Agent,
    pub endpoint: Endpoint,
}

impl Guest {
    /// Connects to the agent of the sandbox whose VMM runs in `run_dir`; every call then
    /// waits at most `timeout`.
    pub fn connect(run_dir: &Path, timeout: Duration) -> Result<Guest, ConnectError> {
        let endpoint = Endpoint::HybridVsock(VmmPaths::in_dir(run_dir).vsock);
        let conn = hull_protocol::rpc::connect(&endpoint, Duration::from_secs(10))?;
        Ok(Guest {
            agent: Agent::new(conn.client, timeout),
            endpoint,
        })
    }

    /// Creates container `id` from its guest spec with its stdio attached: the streams
    /// are opened before the process can start, so no early output is lost. A container
    /// whose stdio cannot be attached is removed again.
    pub fn create_container(
        &self,
        id: &str,
        spec: &crate::spec::Spec,
        stdio: &Stdio,
    ) -> Result<(u32, ProcessIo), ProcessError> {
        let json = serde_json::to_vec(spec).unwrap_or_default();
        let pid = self.agent.create_container(id, json, stdio)?;
        match ProcessIo::attach(&self.endpoint, id, None, stdio) {
            Ok(io) => Ok((pid, io)),
            Err(source) => {
                if let Err(e) = self.agent.remove_container(id) {
                    log::warn!("container {id}: {}", hull_vmm_api::error_chain(&e));
                }
                Err(ProcessError::Stdio {
                    process: ProcessId::init(id).to_string(),
                    pid,
                    source,
                })
            }
        }
    }

    /// Starts exec `p` running `process_json` (an OCI process) with its stdio attached;
    /// returns its pid. One whose stdio cannot be attached runs with nowhere to write: it
    /// is killed, and its exit is reported like any other.
    pub fn exec(
        &self,
        p: ProcessId<'_>,
        process_json: Vec<u8>,
        stdio: &Stdio,
    ) -> Result<(u32, ProcessIo), ProcessError> {
        let pid = self.agent.exec_process(p, process_json, stdio)?;
        match ProcessIo::attach(&self.endpoint, p.container, p.exec, stdio) {
            Ok(io) => Ok((pid, io)),
            Err(source) => {
                if let Err(e) = self.agent.signal(p, libc::SIGKILL as u32, false) {
                    log::warn!("{p}: {}", hull_vmm_api::error_chain(&e));
                }
                Err(ProcessError::Stdio {
                    process: p.to_string(),
                    pid,
                    source,
                })
            }
        }
    }
}
