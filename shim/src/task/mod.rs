//! containerd's Task API (`containerd.task.v2.Task`) served for the tasks of one shim
//! process: a standalone task and its VM, or a Kubernetes pod (its sandbox container and
//! every container that names it) sharing one VM. Each call maps onto agent calls; each
//! state change becomes a task event.
//!
//! Threads: ttrpc's handler threads run the calls; the pod's event thread turns the agent's
//! exit and OOM events into process exits; one thread forwards events to containerd; two
//! per process stream stdio. State: the task table behind one lock, held for lookups only,
//! never across an agent call.

mod create;
pub mod events;
mod exits;
mod options;
pub mod process;
mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::api;
use containerd_shim::protos::ttrpc::{self as cttrpc, Code};
use containerd_shim::protos::types::task::Status;
use containerd_shim::{ExitSignal, TtrpcResult};

use events::{EventSender, TaskEvent};
use exits::{Sink, SinkHandle};
use hull_host::agent::AgentError;
use hull_host::config::{HostConfig, Limits};
use hull_host::container::Disk;
use hull_host::guest::ProcessError;
use hull_host::lock;
use hull_host::pod::{Pod, PodError};
use hull_host::podnet::PodNetwork;
use hull_host::spec;
use process::{now_nanos, Exit, Process};

/// The file in a bundle that tells the shim's `delete` what to clean up after a crash.
pub const BUNDLE_STATE: &str = "hull.json";

/// What `delete` needs when the shim that made a task is gone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BundleState {
    pub run_dir: PathBuf,
    /// The container's disk images: its root, then its volumes.
    pub images: Vec<PathBuf>,
}

fn err(code: Code, msg: impl Into<String>) -> cttrpc::Error {
    cttrpc::Error::RpcStatus(cttrpc::get_status(code, msg.into()))
}

/// An agent error as containerd should see it: the agent's own status code, and no answer
/// (a hung or dead guest) as UNAVAILABLE.
fn agent_err(e: AgentError) -> cttrpc::Error {
    let code = e
        .code()
        .and_then(|c| <Code as containerd_shim::protos::protobuf::Enum>::from_i32(c as i32))
        .unwrap_or(Code::UNAVAILABLE);
    err(code, hull_vmm_api::error_chain(&e))
}

fn pod_err(e: PodError) -> cttrpc::Error {
    match e {
        PodError::Agent(e) => agent_err(e),
        PodError::NoFreeSlot(_) => err(Code::RESOURCE_EXHAUSTED, hull_vmm_api::error_chain(&e)),
        other => err(Code::INTERNAL, hull_vmm_api::error_chain(&other)),
    }
}

fn process_err(e: ProcessError) -> cttrpc::Error {
    match e {
        ProcessError::Agent(e) => agent_err(e),
        other => err(Code::INTERNAL, hull_vmm_api::error_chain(&other)),
    }
}

/// containerd's exec id: empty for a container's init process.
fn exec_of(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

struct Container {
    bundle: String,
    pod: Arc<Pod>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Its disks in the VM: the root, then the volumes; each with its image on the host.
    disks: Vec<Disk>,
    /// This container's delete ends the VM (a standalone task, or a pod's sandbox).
    owns_pod: bool,
}

#[derive(Default)]
struct Table {
    pod: Option<Arc<Pod>>,
    containers: HashMap<String, Arc<Container>>,
    /// Containers between CreateContainer and their entry here: an init exit for one of
    /// them is kept (in the sink) until Create ends.
    creating: std::collections::HashSet<String>,
}

pub struct TaskService {
    /// The host configuration; a pod's first Create may replace it with the file its
    /// runtime options name (one shim serves one pod).
    config: Mutex<Arc<HostConfig>>,
    /// Why the configuration file could not be used: every Create fails saying so,
    /// rather than run sandboxes with settings nobody asked for.
    config_error: Option<String>,
    /// A task's runtime options named a configuration file that replaced it.
    config_replaced: std::sync::atomic::AtomicBool,
    namespace: String,
    events: EventSender,
    exit: Arc<ExitSignal>,
    table: Arc<Mutex<Table>>,
    sink: Arc<Sink>,
}

impl TaskService {
    pub fn new(
        config: Result<HostConfig, String>,
        namespace: &str,
        events: EventSender,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let (config, config_error) = match config {
            Ok(c) => (c, None),
            Err(e) => (HostConfig::default(), Some(e)),
        };
        let table = Arc::new(Mutex::new(Table::default()));
        let sink = Arc::new(Sink::new(table.clone(), events.clone()));
        TaskService {
            config: Mutex::new(Arc::new(config)),
            config_error,
            config_replaced: std::sync::atomic::AtomicBool::new(false),
            namespace: namespace.to_string(),
            events,
            exit,
            sink,
            table,
        }
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        lock(&self.table)
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("container {id} does not exist")))
    }

    /// Container `id`'s process `exec_id` (containerd's form: empty for its init).
    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let Some(exec) = exec_of(exec_id) else {
            let p = c.init.clone();
            return Ok((c, p));
        };
        let p = lock(&c.execs).get(exec).cloned().ok_or_else(|| {
            err(
                Code::NOT_FOUND,
                format!("exec {exec} of {id} does not exist"),
            )
        })?;
        Ok((c, p))
    }

    /// The directory of this shim's VM: short (unix sockets live in it) and derived from
    /// the namespace and pod, so `delete` finds it again.
    fn config(&self) -> Arc<HostConfig> {
        lock(&self.config).clone()
    }

    fn start_pod(&self, pod_id: &str, spec: &spec::Spec) -> TtrpcResult<Arc<Pod>> {
        let config = self.config();
        let vm = config.vm_spec(Limits::from_spec(spec));
        let templates = config.template_cache();
        let run_dir = run_dir_for(&config.run_dir, &self.namespace, pod_id);
        let keep_logs = config.debug_console.then(|| {
            config
                .state_dir
                .join("logs")
                .join(&self.namespace)
                .join(pod_id)
        });
        let timeout = config.call_timeout();
        let network = match spec::network_namespace(spec) {
            Some(netns) => Some(PodNetwork::connect(&netns).map_err(|e| {
                err(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "joining the VM to the pod's network: {}",
                        hull_vmm_api::error_chain(&e)
                    ),
                )
            })?),
            None => None,
        };
        let pod = Pod::start(
            pod_id,
            &vm,
            &run_dir,
            templates.as_ref(),
            keep_logs,
            timeout,
            network,
        )
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&run_dir);
            pod_err(e)
        })?;
        let pod = Arc::new(pod);
        if let Err(e) = pod.watch(Arc::new(SinkHandle(self.sink.clone()))) {
            pod.shutdown();
            return Err(pod_err(e));
        }
        Ok(pod)
    }

    fn create_sandbox(
        &self,
        pod: &Pod,
        files: &spec::SandboxFiles,
        spec: &spec::Spec,
    ) -> TtrpcResult<()> {
        let mut files = files.clone();
        files.hostname = files.hostname.or_else(|| spec.hostname().clone());
        pod.guest.agent.create_sandbox(&files).map_err(agent_err)
    }

    fn do_start(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (c, p) = self.process(id, exec_id)?;
        if !p.begin_start() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} was started already", p.id()),
            ));
        }
        let started = self.start_process(&c, &p);
        // Whatever happened, an exit that came in meanwhile may be reported now: after the
        // Start event, never before it.
        if p.mark_started() {
            self.sink.finish_soon(p.clone());
        }
        started
    }

    fn start_process(&self, c: &Container, p: &Arc<Process>) -> TtrpcResult<u32> {
        let id = p.container.clone();
        let Some(exec) = p.exec.clone() else {
            c.pod.guest.agent.start_container(&id).map_err(agent_err)?;
            let pid = {
                let mut s = p.state();
                if s.exit.is_none() {
                    s.status = Status::RUNNING;
                }
                s.pid
            };
            self.events.send(TaskEvent::Start { id, pid });
            return Ok(pid);
        };
        let spec = p.exec_spec.clone().unwrap_or_default();
        let started = c.pod.guest.exec(p.id(), spec, &p.stdio);
        let pid = match &started {
            Ok((pid, _)) => *pid,
            // It was killed for want of stdio: its exit is reported, and Delete removes
            // it as any exec.
            Err(ProcessError::Stdio { pid, .. }) => *pid,
            Err(ProcessError::Agent(_)) => 0,
        };
        if pid != 0 {
            let mut s = p.state();
            s.pid = pid;
            if s.exit.is_none() {
                s.status = Status::RUNNING;
            }
        }
        let (pid, io) = started.map_err(process_err)?;
        p.state().io = Some(io);
        self.events.send(TaskEvent::ExecStarted {
            id,
            exec_id: exec,
            pid,
        });
        Ok(pid)
    }

    fn do_delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let (c, p) = self.process(id, exec_id)?;
        let (pid, exit, status) = {
            let s = p.state();
            (s.pid, s.exit, s.status)
        };
        if matches!(status, Status::RUNNING | Status::PAUSED) && exit.is_none() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} is still running: kill it first", p.id()),
            ));
        }
        let exit = exit.unwrap_or(Exit {
            status: 0,
            at_nanos: now_nanos(),
        });
        let mut resp = api::DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = exit.status;
        resp.exited_at = Some(events::timestamp(exit.at_nanos)).into();
        p.close_io();
        // Whoever waits for it must not wait forever (a process never started, or whose
        // exit still waited for a Start that will not come).
        p.settle(exit);
        match &p.exec {
            Some(exec) => {
                if status != Status::CREATED {
                    if let Err(e) = c.pod.guest.agent.remove_process(p.id()) {
                        log::warn!("{}", hull_vmm_api::error_chain(&e));
                    }
                }
                lock(&c.execs).remove(exec);
            }
            None => {
                self.delete_container(id, &c);
                self.events.send(TaskEvent::Delete {
                    id: id.to_string(),
                    pid,
                    status: exit.status,
                    exited_at_nanos: exit.at_nanos,
                });
            }
        }
        Ok(resp)
    }

    /// Container `c` (whose init has exited) leaves the table and the VM with its execs;
    /// the owner of the VM takes the VM and every other container in it along.
    fn delete_container(&self, id: &str, c: &Arc<Container>) {
        let others: Vec<Arc<Container>> = {
            let mut t = lock(&self.table);
            t.containers.remove(id);
            self.sink.take_early(id);
            if c.owns_pod {
                t.pod = None;
                t.containers.drain().map(|(_, c)| c).collect()
            } else {
                Vec::new()
            }
        };
        let execs = self.end_execs(c);
        if !others.is_empty() {
            let lost = self.sink.lose(&others);
            log::warn!(
                "container {id} owned the VM: {} other container(s) went with it ({lost} running)",
                others.len()
            );
        }
        let mut reported: Vec<Arc<Process>> = execs;
        for o in &others {
            reported.push(o.init.clone());
            reported.extend(lock(&o.execs).values().cloned());
        }
        self.sink.wait_reported(&reported);
        if c.owns_pod {
            // The VM goes: nothing in it needs undoing first (and a hung guest must not
            // hold the delete up).
            c.pod.shutdown();
        } else {
            if let Err(e) = c.pod.guest.agent.remove_container(id) {
                log::warn!("{}", hull_vmm_api::error_chain(&e));
            }
            c.pod.release_storage(id, &c.disks);
        }
        for other in others.iter().chain(std::iter::once(c)) {
            remove_host_files(other);
        }
    }

    /// A container's execs cannot outlive it: each still running is reported exited (255).
    fn end_execs(&self, c: &Container) -> Vec<Arc<Process>> {
        let execs: Vec<Arc<Process>> = lock(&c.execs).drain().map(|(_, p)| p).collect();
        for e in &execs {
            e.close_io();
            let lost = Exit {
                status: 255,
                at_nanos: now_nanos(),
            };
            if e.offer_exit(lost, true) {
                self.sink.finish(e);
            }
        }
        execs
    }
}

/// A deleted container's images and bundle state.
fn remove_host_files(c: &Container) {
    let images: Vec<PathBuf> = c.disks.iter().map(|d| d.image.clone()).collect();
    hull_host::private::remove_files_and_dirs(&images);
    let _ = std::fs::remove_file(Path::new(&c.bundle).join(BUNDLE_STATE));
}

/// 16 hex digits naming `namespace/id` in a directory: short enough for unix socket
/// paths below it, and no two ids share one the way a joined string could.
fn short_name(namespace: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The run directory of pod `pod_id` in `namespace`.
pub fn run_dir_for(root: &Path, namespace: &str, pod_id: &str) -> PathBuf {
    root.join(short_name(namespace, pod_id))
}

/// Where container `id`'s read-only volume copies live: on tmpfs, in `root` (the run
/// directory), removed with the container.
pub fn volumes_dir_for(root: &Path, namespace: &str, id: &str) -> PathBuf {
    root.join(format!("volumes-{}", short_name(namespace, id)))
}
