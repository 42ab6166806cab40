//! CreateContainer: the spec checked and rewritten for the sandbox (its cgroup, the
//! namespaces of the pod's containers it joins, the sandbox files), the bundle written, the container created
//! by the runtime helper, and its exit and OOM kills reported as events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hull_protocol::rpc::agent::{CreateContainerRequest, Stdio};
use hull_protocol::stream::validate_id;

use super::cgroup::Cgroup;
use super::container::{self, lock, Container, Process, Rewrite};
use super::{stdio, validate, AgentError, Result, Service};
use crate::runtime::Op;

/// Where a new container goes in the sandbox ([`Service::place_in_sandbox`]).
struct Placement {
    cgroup_path: PathBuf,
    members: HashMap<u32, String>,
    files: Vec<(&'static str, PathBuf)>,
}

impl Service {
    pub(super) fn create_container(&self, req: &CreateContainerRequest) -> Result<u32> {
        let id = req.container_id.as_str();
        validate_id("container_id", id)
            .map_err(|e| AgentError::invalid("container_id", e.to_string()))?;
        let mut spec = validate::parse_spec(&req.oci_spec_json)?;
        let rootfs = validate::check_spec(&spec, &self.config.rootfs_areas)?;
        let stdio = req.stdio.clone().unwrap_or_default();
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        container::check_terminal(&stdio, terminal, "process")?;

        let _busy = self.mark_busy(id)?;
        if lock(&self.containers).contains_key(id) {
            return Err(AgentError::AlreadyExists(format!("container {id:?}")));
        }
        let place = self.place_in_sandbox(id)?;
        container::rewrite_spec(
            &mut spec,
            &Rewrite {
                rootfs: &rootfs,
                cgroup_path: &place.cgroup_path,
                members: place.members,
                files: place.files,
            },
        )?;
        let no_hooks =
            |hooks: Option<&Vec<oci_spec::runtime::Hook>>| hooks.is_none_or(Vec::is_empty);
        let start_in_agent = spec
            .hooks()
            .as_ref()
            .is_none_or(|h| no_hooks(h.poststart().as_ref()));
        let delete_in_agent = spec
            .hooks()
            .as_ref()
            .is_none_or(|h| no_hooks(h.poststop().as_ref()));
        let bundle = self.bundle_dir(id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| AgentError::Internal(format!("{}: {e}", bundle.display())))?;
        let (pid, io) = match self.run_create(id, &spec, &stdio, &bundle) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.helper(id, &Op::Delete, None, &bundle);
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let container = Arc::new(Container {
            id: id.to_owned(),
            bundle,
            cgroup: Cgroup::new(&place.cgroup_path),
            init: Process::new(pid, io),
            execs: Mutex::new(HashMap::new()),
            start_in_agent,
            delete_in_agent,
        });
        self.watch_container(&container, pid);
        lock(&self.containers).insert(id.to_owned(), container);
        Ok(pid)
    }

    /// Where container `id` goes in the sandbox: its cgroup, the pod's running
    /// containers (whose namespaces its spec may name), the sandbox files.
    fn place_in_sandbox(&self, id: &str) -> Result<Placement> {
        let sb = lock(&self.sandbox);
        let sb = sb.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(
                "CreateSandbox must come before the first container".into(),
            )
        })?;
        let members = lock(&self.containers)
            .values()
            .filter(|c| c.init.exit().is_none())
            .map(|c| (c.init.pid, c.id.clone()))
            .collect();
        Ok(Placement {
            cgroup_path: sb.cgroup.join(id),
            members,
            files: sb.files.clone(),
        })
    }

    /// Writes the bundle and has the runtime helper create the container; returns its
    /// init's pid and stdio.
    fn run_create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        stdio: &Stdio,
        bundle: &Path,
    ) -> Result<(u32, stdio::ProcessIo)> {
        let json =
            serde_json::to_vec_pretty(spec).map_err(|e| AgentError::Internal(e.to_string()))?;
        std::fs::write(bundle.join("config.json"), json)
            .map_err(|e| AgentError::Internal(format!("writing config.json: {e}")))?;
        let prepared = container::prepare_stdio(stdio, &self.console_dir())?;
        let mut io = prepared.io;
        let op = Op::Create {
            bundle: bundle.to_path_buf(),
            console_socket: prepared.console.as_ref().map(|c| c.path().to_owned()),
        };
        let pid = self
            .helper(id, &op, Some(prepared.child), bundle)
            .map_err(|e| {
                AgentError::FailedPrecondition(format!("creating container {id:?}: {e}"))
            })?;
        if let Some(console) = prepared.console {
            console
                .receive(&mut io)
                .map_err(|e| AgentError::Internal(format!("container {id:?}: {e}")))?;
        }
        Ok((pid, io))
    }

    /// Reports the container's init exit and its cgroup's OOM kills as events.
    fn watch_container(&self, container: &Container, pid: u32) {
        let id = container.id.clone();
        let init = container.init.clone();
        let events = self.events.clone();
        let cid = id.clone();
        self.reaper.on_exit(pid as libc::pid_t, move |exit| {
            init.set_exit(exit);
            events.publish(&container::exit_event(&cid, "", &exit));
        });
        let events = self.events.clone();
        let cid = id.clone();
        if let Err(e) = container
            .cgroup
            .watch_oom(move || events.publish(&container::oom_event(&cid)))
        {
            eprintln!("hull-agent: container {id}: {e}; OOM kills will not be reported");
        }
    }
}
