//! containerd's Task API: each call checks the request against the task table, acts
//! through the host library, and reports state changes as task events.

use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message as _, MessageDyn};
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::Status;
use containerd_shim::{TtrpcContext, TtrpcResult};
use hull_host::agent::ProcessId;
use hull_host::lock;
use hull_host::stdio::Stdio;
use hull_protocol::rpc::agent::StatsContainerResponse;

use super::events::{self, TaskEvent};
use super::process::Process;
use super::{agent_err, err, exec_of, TaskService};

/// The agent's cgroup statistics as containerd's cgroup v2 metrics.
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
        r.stdin = p.stdio.stdin.containerd_name();
        r.stdout = p.stdio.stdout.containerd_name();
        r.stderr = p.stdio.stderr.containerd_name();
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
        let pids = c
            .pod
            .guest
            .agent
            .list_processes(&req.id)
            .map_err(agent_err)?;
        let mut r = api::PidsResponse::new();
        for pid in pids {
            let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
            info.pid = pid;
            r.processes.push(info);
        }
        Ok(r)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true)
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false)
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
                format!("{}: process already finished", p.id()),
            ));
        }
        c.pod
            .guest
            .agent
            .signal(p.id(), req.signal, req.all)
            .map_err(agent_err)?;
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
            let stdio = Stdio::from_containerd(&req.stdin, &req.stdout, &req.stderr, req.terminal)
                .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(&req.id, Some(&req.exec_id), stdio, Some(spec))),
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
        let p = ProcessId {
            container: &req.id,
            exec: exec_of(&req.exec_id),
        };
        c.pod
            .guest
            .agent
            .resize_pty(p, req.height, req.width)
            .map_err(agent_err)?;
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
        c.pod
            .guest
            .agent
            .update_container(&req.id, resources)
            .map_err(agent_err)?;
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
        let s = c.pod.guest.agent.stats(&req.id).map_err(agent_err)?;
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

impl TaskService {
    /// Freezes or thaws a container's cgroup in the guest; TaskPaused / TaskResumed.
    fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<api::Empty> {
        let c = self.container(id)?;
        let agent = &c.pod.guest.agent;
        let (from, to) = if paused {
            agent.pause_container(id).map_err(agent_err)?;
            (Status::RUNNING, Status::PAUSED)
        } else {
            agent.resume_container(id).map_err(agent_err)?;
            (Status::PAUSED, Status::RUNNING)
        };
        {
            let mut s = c.init.state();
            if s.status == from {
                s.status = to;
            }
        }
        let id = id.to_string();
        self.events.send(if paused {
            TaskEvent::Paused { id }
        } else {
            TaskEvent::Resumed { id }
        });
        Ok(api::Empty::new())
    }
}
