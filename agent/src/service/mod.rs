//! The agent service: the RPCs of `protos/agent.proto` and the stream attachments.
//!
//! Every RPC runs isolated: input is checked first (a refusal is InvalidArgument naming the
//! field), a panic in a handler is caught and answered as Internal, and a failing container
//! only fails its own request. Locks are held for table lookups only, never across a
//! runtime helper or a wait.

mod cgroup;
pub mod container;
mod create;
mod events;
mod forward;
pub mod network;
mod rpc;
mod sandbox;
mod signal;
pub mod stdio;
pub mod storage;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::ttrpc::{self, Code};
use hull_protocol::stream::{validate_id, Header, Kind};

use crate::reaper::Reaper;
use crate::runtime::{self, Op};
use container::{lock, Container, Process};
use events::Events;
use sandbox::Sandbox;

/// The directory under the state directory that holds console sockets.
pub const CONSOLE_DIR: &str = "tty";
pub use stdio::Connection;
pub use validate::Invalid;

/// Where the agent keeps things and what it may touch.
#[derive(Debug, Clone)]
pub struct Config {
    /// Container state (libcontainer's root), bundles, sandbox files.
    pub state_dir: PathBuf,
    /// Every container rootfs must lie below one of these directories.
    pub rootfs_areas: Vec<PathBuf>,
    /// The cgroup the sandbox cgroup is created in (`/` in the guest).
    pub cgroup_parent: PathBuf,
    /// Guest-wide operations (setting the clock) are allowed: false when served on a host,
    /// where they would change the host.
    pub in_guest: bool,
}

#[derive(Debug)]
pub enum AgentError {
    Invalid(Invalid),
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    Internal(String),
}

impl AgentError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AgentError::Invalid(Invalid::new(field, reason))
    }

    fn code(&self) -> Code {
        match self {
            AgentError::Invalid(_) => Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Invalid(i) => write!(f, "{i}"),
            AgentError::NotFound(what) => write!(f, "no such {what}"),
            AgentError::AlreadyExists(what) => write!(f, "{what} already exists"),
            AgentError::FailedPrecondition(msg) | AgentError::Internal(msg) => f.write_str(msg),
        }
    }
}

impl From<Invalid> for AgentError {
    fn from(i: Invalid) -> Self {
        AgentError::Invalid(i)
    }
}

type Result<T> = std::result::Result<T, AgentError>;

pub struct Service {
    config: Config,
    reaper: Arc<Reaper>,
    events: Arc<Events>,
    started: Instant,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or removed: no second request may touch them meanwhile.
    busy: Mutex<HashSet<String>>,
    sandbox: Mutex<Option<Sandbox>>,
    storage: storage::Storage,
}

/// Marks an id busy for the life of the guard.
struct Busy<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

impl Service {
    pub fn new(config: Config, reaper: Arc<Reaper>) -> Self {
        Service {
            config,
            reaper,
            events: Arc::new(Events::default()),
            started: Instant::now(),
            containers: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            sandbox: Mutex::new(None),
            storage: storage::Storage::default(),
        }
    }

    fn runtime_root(&self) -> PathBuf {
        self.config.state_dir.join("containers")
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("bundles").join(id)
    }

    /// Where terminal processes' console sockets are bound: a short path of the agent's
    /// own, because a socket path is limited to 107 bytes and container and exec ids (64
    /// hex digits from the CRI, up to 128 characters) are not.
    fn console_dir(&self) -> PathBuf {
        self.config.state_dir.join(CONSOLE_DIR)
    }

    /// Runs the runtime helper for container `id`, logging into its bundle; `stdio` is the
    /// new process's fds 0-2 (/dev/null when there is no process to give them to).
    fn helper(
        &self,
        id: &str,
        op: &Op,
        stdio: Option<[std::os::fd::OwnedFd; 3]>,
        bundle: &Path,
    ) -> std::result::Result<u32, runtime::RuntimeError> {
        let stdio = match stdio {
            Some(fds) => fds,
            None => stdio::null_stdio().map_err(runtime::RuntimeError::Spawn)?,
        };
        runtime::run(
            &self.reaper,
            &self.runtime_root(),
            id,
            op,
            stdio,
            &bundle.join("runtime.log"),
        )
    }

    fn mark_busy(&self, id: &str) -> Result<Busy<'_>> {
        if !lock(&self.busy).insert(id.to_owned()) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is being created or removed by another request"
            )));
        }
        Ok(Busy {
            set: &self.busy,
            id: id.to_owned(),
        })
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        validate_id("container_id", id)
            .map_err(|e| AgentError::invalid("container_id", e.to_string()))?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("container {id:?}")))
    }

    fn ping(&self) -> PingResponse {
        let mut r = PingResponse::new();
        r.protocol_version = hull_protocol::PROTOCOL_VERSION;
        r.agent_version = format!("hull-agent {}", env!("CARGO_PKG_VERSION"));
        r.uptime_seconds = self.started.elapsed().as_secs();
        r
    }

    fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<()> {
        if !req.hostname.is_empty() {
            sandbox::check_hostname(&req.hostname)?;
        }
        let cgroup_name = if req.cgroup_name.is_empty() {
            "hull"
        } else {
            req.cgroup_name.as_str()
        };
        validate_id("cgroup_name", cgroup_name)
            .map_err(|e| AgentError::invalid("cgroup_name", e.to_string()))?;
        let mut slot = lock(&self.sandbox);
        if slot.is_some() {
            return Err(AgentError::AlreadyExists("the sandbox".into()));
        }
        let files = sandbox::write_files(
            &self.config.state_dir.join("sandbox"),
            &req.hostname,
            &req.hosts,
            &req.resolv_conf,
        )?;
        if !req.hostname.is_empty() {
            sandbox::set_hostname(&req.hostname)?;
        }
        *slot = Some(Sandbox {
            cgroup: self.config.cgroup_parent.join(cgroup_name),
            files,
        });
        Ok(())
    }

    /// Removes every container, then the sandbox.
    pub fn destroy_sandbox(&self) -> Result<()> {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        let mut failures = Vec::new();
        for id in ids {
            if let Err(e) = self.remove_container(&id) {
                failures.push(format!("{id}: {e}"));
            }
        }
        for name in self.storage.unmount_all() {
            failures.push(format!("drive mount {name}: still mounted"));
        }
        if let Some(sb) = lock(&self.sandbox).take() {
            remove_cgroup_dirs(&sb.cgroup);
            let _ = std::fs::remove_dir_all(self.config.state_dir.join("sandbox"));
        }
        if !failures.is_empty() {
            return Err(AgentError::Internal(format!(
                "removing containers: {}",
                failures.join("; ")
            )));
        }
        Ok(())
    }

    fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        if let Some(exit) = c.init.exit() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} has already exited (status {})",
                exit.status
            )));
        }
        let started = if c.start_in_agent {
            runtime::start(&self.runtime_root(), id, &c.bundle.join("runtime.log"))
        } else {
            self.helper(id, &Op::Start, None, &c.bundle).map(|_| ())
        };
        started
            .map_err(|e| AgentError::FailedPrecondition(format!("starting container {id:?}: {e}")))
    }

    fn remove_process(&self, req: &ProcessRequest) -> Result<()> {
        if req.exec_id.is_empty() {
            return Err(AgentError::invalid(
                "exec_id",
                "is empty: a container's init process goes with RemoveContainer",
            ));
        }
        let c = self.container(&req.container_id)?;
        let p = c.process(&req.exec_id)?;
        if p.exit().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {:?} in container {:?} is still running",
                req.exec_id, req.container_id
            )));
        }
        lock(&c.execs).remove(&req.exec_id);
        Ok(())
    }

    fn exec_process(&self, req: &ExecProcessRequest) -> Result<u32> {
        let c = self.container(&req.container_id)?;
        let exec_id = req.exec_id.as_str();
        validate_id("exec_id", exec_id)
            .map_err(|e| AgentError::invalid("exec_id", e.to_string()))?;
        let process = validate::parse_process(&req.oci_process_json)?;
        validate::check_process(&process, "oci_process_json")?;
        let stdio = req.stdio.clone().unwrap_or_default();
        container::check_terminal(
            &stdio,
            process.terminal().unwrap_or(false),
            "oci_process_json",
        )?;
        if c.init.exit().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.container_id
            )));
        }
        let busy_key = format!("{}/{exec_id}", req.container_id);
        let _busy = self.mark_busy(&busy_key)?;
        if lock(&c.execs).contains_key(exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {exec_id:?} in container {:?}",
                req.container_id
            )));
        }
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| AgentError::Internal(e.to_string()))?;
        std::fs::write(&path, json)
            .map_err(|e| AgentError::Internal(format!("{}: {e}", path.display())))?;
        let prepared = container::prepare_stdio(&stdio, &self.console_dir())?;
        let mut io = prepared.io;
        let op = Op::Exec {
            process_json: path.clone(),
            console_socket: prepared.console.as_ref().map(|c| c.path().to_owned()),
        };
        let result = self.helper(&req.container_id, &op, Some(prepared.child), &c.bundle);
        let _ = std::fs::remove_file(&path);
        let pid =
            result.map_err(|e| AgentError::FailedPrecondition(format!("exec {exec_id:?}: {e}")))?;
        if let Some(console) = prepared.console {
            console
                .receive(&mut io)
                .map_err(|e| AgentError::Internal(format!("exec {exec_id:?}: {e}")))?;
        }
        let p = Process::new(pid, io);
        let events = self.events.clone();
        let (cid, eid, proc2) = (req.container_id.clone(), exec_id.to_owned(), p.clone());
        self.reaper.on_exit(pid as libc::pid_t, move |exit| {
            proc2.set_exit(exit);
            events.publish(&container::exit_event(&cid, &eid, &exit));
        });
        lock(&c.execs).insert(exec_id.to_owned(), p);
        Ok(pid)
    }

    fn signal_process(&self, req: &SignalProcessRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let sig = req.signal as i32;
        if !(1..=64).contains(&sig) {
            return Err(AgentError::invalid(
                "signal",
                format!("{} is not a signal number (1-64)", req.signal),
            ));
        }
        if req.all {
            for pid in c.cgroup.pids().map_err(AgentError::Internal)? {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
            return Ok(());
        }
        let p = c.process(&req.exec_id)?;
        if p.exit().is_some() {
            return Err(AgentError::NotFound(format!(
                "process {} of container {:?}: it has already exited",
                p.pid, req.container_id
            )));
        }
        signal::send(&p, sig).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => AgentError::NotFound(format!(
                "process {} of container {:?}: it has already exited",
                p.pid, req.container_id
            )),
            _ => AgentError::Internal(format!("signal {sig} to {}: {e}", p.pid)),
        })
    }

    fn wait_process(&self, req: &ProcessRequest) -> Result<WaitProcessResponse> {
        let p = self.container(&req.container_id)?.process(&req.exec_id)?;
        let exit = p.wait();
        let mut r = WaitProcessResponse::new();
        r.exit_status = exit.status;
        r.signal = exit.signal as u32;
        r.exited_at_nanos = exit.at_nanos;
        Ok(r)
    }

    fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let p = self.container(&req.container_id)?.process(&req.exec_id)?;
        let (rows, cols) = (u16::try_from(req.rows), u16::try_from(req.columns));
        let (Ok(rows), Ok(cols)) = (rows, cols) else {
            return Err(AgentError::invalid("rows/columns", "larger than 65535"));
        };
        let io = p.io();
        io.resize(rows, cols)
            .map_err(AgentError::FailedPrecondition)
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        self.container(id)?
            .cgroup
            .freeze(frozen)
            .map_err(AgentError::Internal)
    }

    fn update_container(&self, req: &UpdateContainerRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let resources = validate::parse_resources(&req.resources_json)?;
        validate::check_resources(&resources, "resources_json")?;
        c.cgroup.update(&resources).map_err(AgentError::Internal)
    }

    fn stats(&self, id: &str) -> Result<StatsContainerResponse> {
        self.container(id)?
            .cgroup
            .stats()
            .map_err(AgentError::Internal)
    }

    fn list_processes(&self, id: &str) -> Result<ListProcessesResponse> {
        let mut r = ListProcessesResponse::new();
        r.pids = self
            .container(id)?
            .cgroup
            .pids()
            .map_err(AgentError::Internal)?;
        Ok(r)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let _busy = self.mark_busy(id)?;
        let removed = if c.delete_in_agent {
            // What the runtime's delete does, without a helper process (an exec of the
            // agent and libcontainer's checks, ~700 system calls in an emulated guest
            // kernel): every process of the container killed, its cgroup and state gone.
            c.cgroup.destroy().and_then(|()| {
                let state = self.runtime_root().join(id);
                match std::fs::remove_dir_all(&state) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("{}: {e}", state.display()))
                    }
                    _ => Ok(()),
                }
            })
        } else {
            self.helper(id, &Op::Delete, None, &c.bundle)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        removed.map_err(|e| AgentError::Internal(format!("removing container {id:?}: {e}")))?;
        let _ = std::fs::remove_dir_all(&c.bundle);
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// Attaches a stream connection the host opened and answers OK on it; on refusal the
    /// connection comes back with the reason, for the caller to answer.
    pub fn attach(
        &self,
        header: &Header,
        conn: Connection,
    ) -> std::result::Result<(), (String, Connection)> {
        if header.kind == Kind::Events {
            self.events.subscribe(conn);
            return Ok(());
        }
        if let Some(port) = header.port() {
            return forward::serve(port, conn);
        }
        let found = self
            .container(&header.container_id)
            .and_then(|c| c.process(&header.exec_id));
        let p = match found {
            Ok(p) => p,
            Err(e) => return Err((e.to_string(), conn)),
        };
        let name = if header.exec_id.is_empty() {
            header.container_id.clone()
        } else {
            format!("{}/{}", header.container_id, header.exec_id)
        };
        let mut io = p.io();
        io.attach(header.kind, conn, &name)
    }

    /// Runs one RPC: a panic becomes Internal, an error its status code.
    fn call<T>(&self, method: &str, f: impl FnOnce() -> Result<T>) -> ttrpc::Result<T> {
        let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(AgentError::Internal(format!(
                "{method} failed inside the agent: {what}"
            )))
        });
        outcome.map_err(|e| ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string())))
    }
}

/// Removes a (now empty) cgroup directory in every hierarchy it exists in.
fn remove_cgroup_dirs(path: &Path) {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new("/sys/fs/cgroup");
    let _ = std::fs::remove_dir(root.join(rel));
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path().join(rel));
        }
    }
}
