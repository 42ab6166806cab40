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
pub mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::api;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message as _, MessageDyn};
use containerd_shim::protos::ttrpc::{self as cttrpc, Code};
use containerd_shim::protos::types::task::Status;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::ttrpc as attrpc;

use events::{EventSender, TaskEvent};
use exits::{Sink, SinkHandle};
use hull_host::config::{HostConfig, Limits};
use hull_host::lock;
use hull_host::pod::{self, ctx, DriveLease, Pod};
use hull_host::spec;
use hull_host::stdio::{ProcessIo, StdioPaths};
use hull_host::template::TemplateCache;
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

/// An agent or VMM error as containerd should see it: the agent's own status code, and a
/// transport failure (a hung or dead guest) as UNAVAILABLE, naming the call.
fn agent_err(call: &str, e: attrpc::Error) -> cttrpc::Error {
    match e {
        attrpc::Error::RpcStatus(s) => {
            let code = <Code as containerd_shim::protos::protobuf::Enum>::from_i32(
                s.code.value(),
            )
            .unwrap_or(Code::UNKNOWN);
            err(code, format!("{call}: {}", s.message))
        }
        other => err(
            Code::UNAVAILABLE,
            format!(
                "{call}: the sandbox's agent did not answer within {} s or its connection broke ({other}); the VM may be hung or gone",
                pod::call_timeout().as_secs()
            ),
        ),
    }
}

fn pod_err(e: pod::PodError) -> cttrpc::Error {
    match e {
        pod::PodError::Call { call, source } => agent_err(call, source),
        pod::PodError::NoFreeSlot(_) => {
            err(Code::RESOURCE_EXHAUSTED, hull_vmm_api::error_chain(&e))
        }
        other => err(Code::INTERNAL, hull_vmm_api::error_chain(&other)),
    }
}

struct Container {
    bundle: String,
    pod: Arc<Pod>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Its disks in the VM: the root, then the volumes; each with its image on the host.
    disks: Vec<(DriveLease, PathBuf)>,
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
        pod::set_call_timeout(std::time::Duration::from_secs(config.agent_timeout_secs));
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

    fn process(&self, id: &str, exec: &str) -> TtrpcResult<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        if exec.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
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

    fn start_pod(&self, pod_id: &str, spec: &serde_json::Value) -> TtrpcResult<Arc<Pod>> {
        let config = self.config();
        let vm = config.vm_spec(Limits::from_spec(spec));
        let templates = config
            .templates
            .then(|| TemplateCache::new(&config.template_dir));
        let run_dir = run_dir_for(&config.run_dir, &self.namespace, pod_id);
        let keep_logs = config.debug_console.then(|| {
            config
                .state_dir
                .join("logs")
                .join(&self.namespace)
                .join(pod_id)
        });
        let pod = Arc::new(
            Pod::start(pod_id, &vm, &run_dir, templates.as_ref(), keep_logs).map_err(|e| {
                let _ = std::fs::remove_dir_all(&run_dir);
                pod_err(e)
            })?,
        );
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
        spec: &serde_json::Value,
    ) -> TtrpcResult<()> {
        let mut req = CreateSandboxRequest::new();
        req.hostname = files
            .hostname
            .clone()
            .or_else(|| {
                spec.get("hostname")
                    .and_then(|h| h.as_str())
                    .map(String::from)
            })
            .unwrap_or_default();
        req.hosts = files.hosts.clone().unwrap_or_default();
        req.resolv_conf = files.resolv_conf.clone().unwrap_or_default();
        pod.agent
            .create_sandbox(ctx(), &req)
            .map_err(|e| agent_err("CreateSandbox", e))?;
        Ok(())
    }

    fn do_start(&self, id: &str, exec: &str) -> TtrpcResult<u32> {
        let (c, p) = self.process(id, exec)?;
        if !p.begin_start() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} was started already", label(id, exec)),
            ));
        }
        let started = self.start_process(&c, &p, id, exec);
        // Whatever happened, an exit that came in meanwhile may be reported now: after the
        // Start event, never before it.
        if p.mark_started() {
            self.sink.finish_soon(p.clone());
        }
        started
    }

    fn start_process(
        &self,
        c: &Container,
        p: &Arc<Process>,
        id: &str,
        exec: &str,
    ) -> TtrpcResult<u32> {
        if exec.is_empty() {
            c.pod
                .agent
                .start_container(ctx(), &container_req(id))
                .map_err(|e| agent_err("StartContainer", e))?;
            let pid = {
                let mut s = p.state();
                if s.exit.is_none() {
                    s.status = Status::RUNNING;
                }
                s.pid
            };
            self.events.send(TaskEvent::Start {
                id: id.to_string(),
                pid,
            });
            return Ok(pid);
        }
        let mut req = ExecProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec.to_string();
        req.oci_process_json = p.exec_spec.clone().unwrap_or_default();
        req.stdio = Some(p.stdio.agent_stdio()).into();
        let pid = c
            .pod
            .agent
            .exec_process(ctx(), &req)
            .map_err(|e| agent_err("ExecProcess", e))?
            .pid;
        let attached = ProcessIo::attach(&c.pod.endpoint, id, exec, &p.stdio);
        {
            let mut s = p.state();
            s.pid = pid;
            if s.exit.is_none() {
                s.status = Status::RUNNING;
            }
        }
        let io = match attached {
            Ok(io) => io,
            Err(e) => {
                // It runs in the guest with nowhere to write: end it; its exit is reported
                // and Delete removes it as for any exec.
                let mut k = SignalProcessRequest::new();
                k.container_id = id.to_string();
                k.exec_id = exec.to_string();
                k.signal = libc::SIGKILL as u32;
                let _ = c.pod.agent.signal_process(ctx(), &k);
                return Err(err(Code::INTERNAL, hull_vmm_api::error_chain(&e)));
            }
        };
        p.state().io = Some(io);
        self.events.send(TaskEvent::ExecStarted {
            id: id.to_string(),
            exec_id: exec.to_string(),
            pid,
        });
        Ok(pid)
    }

    fn do_delete(&self, id: &str, exec: &str) -> TtrpcResult<api::DeleteResponse> {
        let (c, p) = self.process(id, exec)?;
        let (pid, exit, status) = {
            let s = p.state();
            (s.pid, s.exit, s.status)
        };
        if matches!(status, Status::RUNNING | Status::PAUSED) && exit.is_none() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{} is still running: kill it first", label(id, exec)),
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
        if !exec.is_empty() {
            if status != Status::CREATED {
                let mut r = ProcessRequest::new();
                r.container_id = id.to_string();
                r.exec_id = exec.to_string();
                if let Err(e) = c.pod.agent.remove_process(ctx(), &r) {
                    log::warn!("RemoveProcess {id}/{exec}: {e}");
                }
            }
            lock(&c.execs).remove(exec);
            return Ok(resp);
        }
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
        // This container's execs cannot outlive it; with the VM's owner go the VM's other
        // containers (containerd deletes a pod's sandbox last; if not, nothing hangs).
        let execs: Vec<Arc<Process>> = lock(&c.execs).drain().map(|(_, p)| p).collect();
        for e in &execs {
            e.close_io();
            if e.offer_exit(
                Exit {
                    status: 255,
                    at_nanos: now_nanos(),
                },
                true,
            ) {
                self.sink.finish(e);
            }
        }
        if !others.is_empty() {
            let lost = self.sink.lose(&others);
            log::warn!(
                "container {id} owned the VM: {} other container(s) went with it ({lost} running)",
                others.len()
            );
        }
        let mut reported: Vec<Arc<Process>> = execs.clone();
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
            if let Err(e) = c.pod.agent.remove_container(ctx(), &container_req(id)) {
                log::warn!("RemoveContainer {id}: {e}");
            }
            for (lease, _) in &c.disks {
                if let Err(e) = c.pod.release_drive(lease) {
                    log::warn!(
                        "releasing {id}'s disk {}: {}",
                        lease.name,
                        hull_vmm_api::error_chain(&e)
                    );
                }
            }
        }
        for other in others.iter().chain(std::iter::once(&c)) {
            remove_host_files(other);
        }
        self.events.send(TaskEvent::Delete {
            id: id.to_string(),
            pid,
            status: exit.status,
            exited_at_nanos: exit.at_nanos,
        });
        Ok(resp)
    }
}

/// A deleted container's images and bundle state.
fn remove_host_files(c: &Container) {
    let images: Vec<PathBuf> = c.disks.iter().map(|(_, i)| i.clone()).collect();
    hull_host::private::remove_files_and_dirs(&images);
    let _ = std::fs::remove_file(Path::new(&c.bundle).join(BUNDLE_STATE));
}

fn label(id: &str, exec: &str) -> String {
    if exec.is_empty() {
        format!("container {id}")
    } else {
        format!("exec {exec} of {id}")
    }
}

fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
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

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Runtime options containerd passes: `runtimeoptions.v1.Options` (the CRI's `options`
/// table with `ConfigPath`, or `ctr run --runtime-config-path`) names another hull
/// configuration file; runc's (a `ctr run` with no options, or a CRI config copied from
/// runc) carry nothing hull uses; anything else is refused by name so a setting never
/// silently does nothing. Returns the configuration path, if one was given.
fn check_options(o: &Any) -> TtrpcResult<Option<PathBuf>> {
    const RUNC: &[&str] = &[
        "containerd.runc.v1.Options",
        "io.containerd.runc.v1.options",
    ];
    if o.type_url.is_empty() || RUNC.iter().any(|k| o.type_url.ends_with(k)) {
        return Ok(None);
    }
    if o.type_url.ends_with(RUNTIME_OPTIONS) {
        return config_path_option(&o.value).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("runtime options ({RUNTIME_OPTIONS}): {e}"),
            )
        });
    }
    Err(err(
        Code::INVALID_ARGUMENT,
        format!(
            "runtime options of type {:?} mean nothing to hull; drop them (hull's settings live in /etc/hull/config.toml, or the file a {RUNTIME_OPTIONS} ConfigPath names)",
            o.type_url
        ),
    ))
}

/// `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`, decoded
/// by hand: containerd-shim-protos does not carry the CRI's message.
fn config_path_option(bytes: &[u8]) -> Result<Option<PathBuf>, String> {
    use containerd_shim::protos::protobuf::rt::WireType;
    use containerd_shim::protos::protobuf::CodedInputStream;
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let wire = WireType::new(tag & 7).ok_or_else(|| format!("bad wire type in tag {tag}"))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            input.skip_field(wire).map_err(|e| e.to_string())?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

fn stats_any(s: &StatsContainerResponse) -> TtrpcResult<Any> {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage_usec;
    cpu.user_usec = s.cpu.user_usec;
    cpu.system_usec = s.cpu.system_usec;
    cpu.nr_periods = s.cpu.nr_periods;
    cpu.nr_throttled = s.cpu.nr_throttled;
    cpu.throttled_usec = s.cpu.throttled_usec;
    m.cpu = Some(cpu).into();
    let mut mem = v2::MemoryStat::new();
    mem.usage = s.memory.usage_bytes;
    mem.usage_limit = s.memory.limit_bytes;
    mem.max_usage = s.memory.max_usage_bytes;
    mem.anon = s.memory.anon_bytes;
    mem.file = s.memory.file_bytes;
    m.memory = Some(mem).into();
    let mut ev = v2::MemoryEvents::new();
    ev.oom_kill = s.memory.oom_kills;
    m.memory_events = Some(ev).into();
    let mut io = v2::IOStat::new();
    let mut entry = v2::IOEntry::new();
    entry.rbytes = s.io.read_bytes;
    entry.wbytes = s.io.write_bytes;
    entry.rios = s.io.read_ios;
    entry.wios = s.io.write_ios;
    io.usage.push(entry);
    m.io = Some(io).into();
    let mut any = Any::new();
    any.type_url = m.descriptor_dyn().full_name().to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| err(Code::INTERNAL, format!("encoding metrics: {e}")))?;
    Ok(any)
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self
            .do_create(&req)
            .inspect_err(|e| log::error!("Create {}: {e}", req.id))?;
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let pid = self.do_start(&req.id, &req.exec_id)?;
        let mut r = api::StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let s = p.state();
        let mut r = api::StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = c.bundle.clone();
        r.pid = s.pid;
        r.status = s.status.into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = s.exit {
            r.exit_status = e.status;
            r.exited_at = Some(events::timestamp(e.at_nanos)).into();
        }
        Ok(r)
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.do_delete(&req.id, &req.exec_id)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let c = self.container(&req.id)?;
        let list = c
            .pod
            .agent
            .list_processes(ctx(), &container_req(&req.id))
            .map_err(|e| agent_err("ListProcesses", e))?;
        let mut r = api::PidsResponse::new();
        for pid in list.pids {
            let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
            info.pid = pid;
            r.processes.push(info);
        }
        Ok(r)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let c = self.container(&req.id)?;
        c.pod
            .agent
            .pause_container(ctx(), &container_req(&req.id))
            .map_err(|e| agent_err("PauseContainer", e))?;
        {
            let mut s = c.init.state();
            if s.status == Status::RUNNING {
                s.status = Status::PAUSED;
            }
        }
        self.events.send(TaskEvent::Paused { id: req.id.clone() });
        Ok(api::Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let c = self.container(&req.id)?;
        c.pod
            .agent
            .resume_container(ctx(), &container_req(&req.id))
            .map_err(|e| agent_err("ResumeContainer", e))?;
        {
            let mut s = c.init.state();
            if s.status == Status::PAUSED {
                s.status = Status::RUNNING;
            }
        }
        self.events.send(TaskEvent::Resumed { id: req.id.clone() });
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(err(
            Code::UNIMPLEMENTED,
            format!(
                "checkpoint of {}: hull cannot checkpoint a single task yet (its VM snapshots are sandbox-wide)",
                req.id
            ),
        ))
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if p.state().exit.is_some() {
            return Err(err(
                Code::NOT_FOUND,
                format!("{}: process already finished", label(&req.id, &req.exec_id)),
            ));
        }
        let mut r = SignalProcessRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.signal = req.signal;
        r.all = req.all;
        c.pod
            .agent
            .signal_process(ctx(), &r)
            .map_err(|e| agent_err("SignalProcess", e))?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let c = self.container(&req.id)?;
        hull_protocol::stream::validate_id("exec_id", &req.exec_id)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} of {} already exists", req.exec_id, req.id),
                ));
            }
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(&req.id, &req.exec_id, stdio, Some(spec))),
            );
        }
        self.events.send(TaskEvent::ExecAdded {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
        });
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let (c, _) = self.process(&req.id, &req.exec_id)?;
        let mut r = ResizePtyRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.rows = req.height;
        r.columns = req.width;
        c.pod
            .agent
            .resize_pty(ctx(), &r)
            .map_err(|e| agent_err("ResizePty", e))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let c = self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "update without resources"))?;
        let mut r = UpdateContainerRequest::new();
        r.container_id = req.id.clone();
        r.resources_json = resources;
        c.pod
            .agent
            .update_container(ctx(), &r)
            .map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.wait();
        let mut r = api::WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = Some(events::timestamp(exit.at_nanos)).into();
        Ok(r)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let c = self.container(&req.id)?;
        let s = c
            .pod
            .agent
            .stats_container(ctx(), &container_req(&req.id))
            .map_err(|e| agent_err("StatsContainer", e))?;
        let mut r = api::StatsResponse::new();
        r.stats = Some(stats_any(&s)?).into();
        Ok(r)
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.version = env!("CARGO_PKG_VERSION").to_string();
        if let Ok(c) = self.container(&req.id) {
            r.task_pid = c.init.state().pid;
        }
        Ok(r)
    }

    fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let pod = {
            let mut t = lock(&self.table);
            if !t.containers.is_empty() {
                // containerd asks after every delete; the shim stays while it serves tasks.
                return Ok(api::Empty::new());
            }
            t.pod.take()
        };
        if let Some(pod) = pod {
            pod.shutdown();
        }
        // The last events (TaskDelete) reach containerd before the process ends.
        self.events.flush(std::time::Duration::from_secs(5));
        self.exit.signal();
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn runtime_options_give_a_config_path_or_are_refused_by_name() {
        // type_url = "x" (field 1), config_path = "/etc/hull/other.toml" (field 2).
        let mut v = vec![0x0a, 1, b'x', 0x12, 20];
        v.extend_from_slice(b"/etc/hull/other.toml");
        assert_eq!(
            check_options(&any("runtimeoptions.v1.Options", v)).unwrap(),
            Some(PathBuf::from("/etc/hull/other.toml"))
        );
        assert_eq!(
            check_options(&any("containerd.runc.v1.Options", vec![8, 1])).unwrap(),
            None
        );
        assert_eq!(check_options(&any("", vec![])).unwrap(), None);
        let e = check_options(&any("example.com/Other", vec![])).unwrap_err();
        assert!(e.to_string().contains("example.com/Other"), "{e}");
        let e = check_options(&any("runtimeoptions.v1.Options", vec![0x12, 50, b'/'])).unwrap_err();
        assert!(e.to_string().contains("runtime options"), "{e}");
    }
}
