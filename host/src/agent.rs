//! The guest agent as the host uses it: one typed method per call of
//! `protocol/protos/agent.proto`, each bounded by the client's timeout. A refusal keeps the
//! agent's status code; no answer (a hung or dead guest) says how long was waited.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::agent_ttrpc::AgentClient;
use hull_protocol::rpc::ttrpc::{self, Code};

/// One process in the guest: a container's init, or one of its execs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId<'a> {
    pub container: &'a str,
    /// `None` for the container's init process.
    pub exec: Option<&'a str>,
}

impl<'a> ProcessId<'a> {
    pub fn init(container: &'a str) -> Self {
        ProcessId {
            container,
            exec: None,
        }
    }

    pub fn exec(container: &'a str, exec: &'a str) -> Self {
        ProcessId {
            container,
            exec: Some(exec),
        }
    }

    /// The wire form of the exec id: empty for the init process.
    fn exec_id(&self) -> String {
        self.exec.unwrap_or_default().to_string()
    }
}

impl std::fmt::Display for ProcessId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exec {
            None => write!(f, "container {}", self.container),
            Some(e) => write!(f, "exec {e} of {}", self.container),
        }
    }
}

/// An agent call that failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with a refusal (its status code and message).
    #[error("{call}: {message}")]
    Refused {
        call: &'static str,
        code: Code,
        message: String,
    },
    /// No answer: the guest is hung or gone, or the connection broke.
    #[error("{call}: the sandbox's agent did not answer within {} s or its connection broke; the VM may be hung or gone", .within.as_secs())]
    Unanswered {
        call: &'static str,
        within: Duration,
        #[source]
        source: ttrpc::Error,
    },
}

impl AgentError {
    /// The agent's status code for a refusal; `None` when it did not answer.
    pub fn code(&self) -> Option<Code> {
        match self {
            AgentError::Refused { code, .. } => Some(*code),
            AgentError::Unanswered { .. } => None,
        }
    }

    /// The agent refused before changing anything: the request was invalid or its
    /// preconditions did not hold. (An INTERNAL error may have left something behind.)
    pub fn refused_cleanly(&self) -> bool {
        matches!(
            self.code(),
            Some(
                Code::INVALID_ARGUMENT
                    | Code::NOT_FOUND
                    | Code::ALREADY_EXISTS
                    | Code::FAILED_PRECONDITION
            )
        )
    }
}

/// A connection to one sandbox's agent.
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Every call on `client` then waits at most `timeout`.
    pub fn new(client: AgentClient, timeout: Duration) -> Self {
        Agent { client, timeout }
    }

    /// The same connection with another call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Agent {
            client: self.client.clone(),
            timeout,
        }
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos() as i64)
    }

    fn call<T>(&self, call: &'static str, r: ttrpc::Result<T>) -> Result<T, AgentError> {
        r.map_err(|source| match source {
            ttrpc::Error::RpcStatus(s) => AgentError::Refused {
                call,
                code: s.code.enum_value_or(Code::UNKNOWN),
                message: s.message,
            },
            source => AgentError::Unanswered {
                call,
                within: self.timeout,
                source,
            },
        })
    }

    pub fn ping(&self) -> Result<(), AgentError> {
        self.call("Ping", self.client.ping(self.ctx(), &PingRequest::new()))
            .map(drop)
    }

    /// Sets the guest's clock to the host's.
    pub fn set_time_now(&self) -> Result<(), AgentError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut t = SetTimeRequest::new();
        t.seconds = now.as_secs() as i64;
        t.nanoseconds = now.subsec_nanos();
        self.call("SetTime", self.client.set_time(self.ctx(), &t))
            .map(drop)
    }

    /// Mixes `entropy` into the guest kernel's RNG.
    pub fn reseed_random(&self, entropy: Vec<u8>) -> Result<(), AgentError> {
        let mut r = ReseedRandomRequest::new();
        r.entropy = entropy;
        self.call("ReseedRandom", self.client.reseed_random(self.ctx(), &r))
            .map(drop)
    }

    /// The pod-wide setup: hostname and the files every container of the pod shares.
    pub fn create_sandbox(&self, files: &crate::spec::SandboxFiles) -> Result<(), AgentError> {
        let mut req = CreateSandboxRequest::new();
        req.hostname = files.hostname.clone().unwrap_or_default();
        req.hosts = files.hosts.clone().unwrap_or_default();
        req.resolv_conf = files.resolv_conf.clone().unwrap_or_default();
        self.call(
            "CreateSandbox",
            self.client.create_sandbox(self.ctx(), &req),
        )
        .map(drop)
    }

    /// Configures the guest's network interfaces (found by name, given their MAC,
    /// addresses and MTU) and then its routes.
    pub fn configure_network(
        &self,
        interfaces: Vec<Interface>,
        routes: Vec<Route>,
    ) -> Result<(), AgentError> {
        let mut req = ConfigureNetworkRequest::new();
        req.interfaces = interfaces;
        req.routes = routes;
        self.call(
            "ConfigureNetwork",
            self.client.configure_network(self.ctx(), &req),
        )
        .map(drop)
    }

    /// Ends the pod-wide setup (the last container is gone).
    pub fn destroy_sandbox(&self) -> Result<(), AgentError> {
        use hull_protocol::rpc::protobuf::well_known_types::empty::Empty;
        self.call(
            "DestroySandbox",
            self.client.destroy_sandbox(self.ctx(), &Empty::new()),
        )
        .map(drop)
    }

    /// Creates container `id` from its guest spec, stdio wired as `stdio` says; returns
    /// its init's pid.
    pub fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        stdio: &crate::stdio::Stdio,
    ) -> Result<u32, AgentError> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.to_string();
        req.oci_spec_json = spec_json;
        req.stdio = Some(stdio.wire()).into();
        self.call(
            "CreateContainer",
            self.client.create_container(self.ctx(), &req),
        )
        .map(|r| r.pid)
    }

    pub fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(
            "StartContainer",
            self.client.start_container(self.ctx(), &container_req(id)),
        )
        .map(drop)
    }

    /// Starts exec `p` of its container running `process_json` (an OCI process);
    /// returns its pid.
    pub fn exec_process(
        &self,
        p: ProcessId<'_>,
        process_json: Vec<u8>,
        stdio: &crate::stdio::Stdio,
    ) -> Result<u32, AgentError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = p.container.to_string();
        req.exec_id = p.exec_id();
        req.oci_process_json = process_json;
        req.stdio = Some(stdio.wire()).into();
        self.call("ExecProcess", self.client.exec_process(self.ctx(), &req))
            .map(|r| r.pid)
    }

    /// Sends `signal` to `p` (`all`: to every process of the container).
    pub fn signal(&self, p: ProcessId<'_>, signal: u32, all: bool) -> Result<(), AgentError> {
        let mut req = SignalProcessRequest::new();
        req.container_id = p.container.to_string();
        req.exec_id = p.exec_id();
        req.signal = signal;
        req.all = all;
        self.call(
            "SignalProcess",
            self.client.signal_process(self.ctx(), &req),
        )
        .map(drop)
    }

    /// Waits for `p` to exit, however long it runs (no deadline); returns its status.
    pub fn wait(&self, p: ProcessId<'_>) -> Result<i32, AgentError> {
        self.call(
            "WaitProcess",
            self.client
                .wait_process(ttrpc::context::Context::default(), &process_req(p)),
        )
        .map(|r| r.exit_status)
    }

    pub fn resize_pty(&self, p: ProcessId<'_>, rows: u32, columns: u32) -> Result<(), AgentError> {
        let mut req = ResizePtyRequest::new();
        req.container_id = p.container.to_string();
        req.exec_id = p.exec_id();
        req.rows = rows;
        req.columns = columns;
        self.call("ResizePty", self.client.resize_pty(self.ctx(), &req))
            .map(drop)
    }

    /// Forgets an exited exec.
    pub fn remove_process(&self, p: ProcessId<'_>) -> Result<(), AgentError> {
        self.call(
            "RemoveProcess",
            self.client.remove_process(self.ctx(), &process_req(p)),
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(
            "RemoveContainer",
            self.client.remove_container(self.ctx(), &container_req(id)),
        )
        .map(drop)
    }

    pub fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(
            "PauseContainer",
            self.client.pause_container(self.ctx(), &container_req(id)),
        )
        .map(drop)
    }

    pub fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.call(
            "ResumeContainer",
            self.client.resume_container(self.ctx(), &container_req(id)),
        )
        .map(drop)
    }

    /// Applies new resources (an OCI `linux.resources` object as JSON).
    pub fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<(), AgentError> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = id.to_string();
        req.resources_json = resources_json;
        self.call(
            "UpdateContainer",
            self.client.update_container(self.ctx(), &req),
        )
        .map(drop)
    }

    pub fn stats(&self, id: &str) -> Result<StatsContainerResponse, AgentError> {
        self.call(
            "StatsContainer",
            self.client.stats_container(self.ctx(), &container_req(id)),
        )
    }

    /// The guest pids of the container's processes.
    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        self.call(
            "ListProcesses",
            self.client.list_processes(self.ctx(), &container_req(id)),
        )
        .map(|r| r.pids)
    }

    /// Mounts the erofs disk with serial `serial` as `name` (`writable_overlay`: under a
    /// writable overlay); returns its directory in the guest.
    pub fn mount_drive(
        &self,
        serial: &str,
        name: &str,
        writable_overlay: bool,
    ) -> Result<String, AgentError> {
        let mut m = MountDriveRequest::new();
        m.serial = serial.to_string();
        m.fstype = "erofs".into();
        m.name = name.to_string();
        m.read_only = true;
        m.writable_overlay = writable_overlay;
        self.call("MountDrive", self.client.mount_drive(self.ctx(), &m))
            .map(|r| r.rootfs)
    }

    pub fn unmount_drive(&self, name: &str) -> Result<(), AgentError> {
        let mut u = UnmountDriveRequest::new();
        u.name = name.to_string();
        self.call("UnmountDrive", self.client.unmount_drive(self.ctx(), &u))
            .map(drop)
    }

    /// Mounts the virtio-fs file system tagged `tag`; returns its directory in the guest.
    pub fn mount_shared_fs(&self, tag: &str) -> Result<String, AgentError> {
        let mut req = MountSharedFsRequest::new();
        req.tag = tag.to_string();
        self.call(
            "MountSharedFs",
            self.client.mount_shared_fs(self.ctx(), &req),
        )
        .map(|r| r.path)
    }
}

fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
}

fn process_req(p: ProcessId<'_>) -> ProcessRequest {
    let mut r = ProcessRequest::new();
    r.container_id = p.container.to_string();
    r.exec_id = p.exec_id();
    r
}
